"""The `gpt2pipe` command: one subcommand per pipeline stage, each usable without Snakemake.

    gpt2pipe corpus    -c config/config.yaml      # text/parquet/FineWeb -> parquet documents
    gpt2pipe tokenize  -c config/config.yaml      # documents -> llm.c shards (val first)
    gpt2pipe fineweb list / download, gpt2pipe encode, gpt2pipe shard   # FineWeb file by file (the workflow's way)
    gpt2pipe hellaswag -c config/config.yaml      # HellaSwag -> llm.c eval .bin
    gpt2pipe train     -c config/config.yaml      # shards -> checkpoints + llm.c log
    gpt2pipe evaluate  -c config/config.yaml --checkpoint results/demo/train/model_000050.pt
    gpt2pipe report    -c config/config.yaml      # papermill notebook -> results/<run>/output.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gpt2pipe import Gpt2pipeError, __version__
from gpt2pipe import config as config_mod


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--configfile", type=Path, default=None,
                   help="YAML run config (default: all schema defaults; see `gpt2pipe config --describe`)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set train.max_steps=100 (repeatable)")


def _config(args) -> config_mod.Config:
    return config_mod.load(args.configfile, args.overrides)


def cmd_config(args) -> None:
    if args.describe:
        print(config_mod.describe())
        return
    import yaml

    print(yaml.safe_dump(_config(args).raw, sort_keys=False), end="")


def cmd_corpus(args) -> None:
    from gpt2pipe.data.corpus import write_corpus

    cfg = _config(args)
    out = args.out or cfg.data_dir / "corpus"
    files = write_corpus(cfg.data, out)
    print(f"corpus: {len(files)} parquet file(s) in {out}")


def cmd_tokenize(args) -> None:
    from gpt2pipe.data.corpus import read_corpus
    from gpt2pipe.data.tokenize import tokenize_to_shards

    cfg = _config(args)
    corpus = args.corpus or cfg.data_dir / "corpus"
    out = args.out or cfg.data_dir / "shards"
    m = tokenize_to_shards(read_corpus(corpus), cfg.data, out)
    print(f"tokenize: {m['tokens']:,} tokens in {len(m['val'])} val + {len(m['train'])} train shard(s) in {out}")


def cmd_fineweb(args) -> None:
    from gpt2pipe.data import fineweb

    cfg = _config(args)
    listing_path = args.listing or cfg.data_dir / "fineweb" / "files.json"
    if args.action == "list":
        listing = fineweb.list_files(cfg.data.hf_repo, cfg.data.hf_subset, cfg.data.hf_revision)
        listing.save(listing_path)
        size = sum(f.size for f in listing.files)
        print(f"fineweb: {len(listing.files)} files, {size / 1e9:.2f} GB, in {listing.repo} {listing.subset} "
              f"@ {listing.commit} -> {listing_path}")
        return
    listing = fineweb.Listing.load(listing_path)
    wanted = (cfg.data.hf_repo, cfg.data.hf_subset, cfg.data.hf_revision)
    if (listing.repo, listing.subset, listing.revision) != wanted:
        raise Gpt2pipeError(f"{listing_path} lists {listing.repo} {listing.subset}@{listing.revision}, the config "
                            f"asks for {wanted[0]} {wanted[1]}@{wanted[2]}: run `gpt2pipe fineweb list` again")
    names = [f.stem for f in listing.files] if args.all else args.file
    if not names:
        raise Gpt2pipeError("fineweb download: name files with --file, or pass --all")
    if args.out and len(names) > 1:
        raise Gpt2pipeError("fineweb download: --out takes one --file")
    for name in names:
        out = args.out or cfg.data_dir / "fineweb" / "raw" / f"{listing.file(name).stem}.parquet"
        fineweb.download_file(listing, name, out)
        print(f"fineweb: {name} -> {out}")


def cmd_encode(args) -> None:
    from gpt2pipe.data.tokenize import encode_parquet

    cfg = _config(args)
    n = encode_parquet(args.input, args.out, cfg.data.workers, args.max_tokens)
    print(f"encode: {n:,} tokens from {args.input} -> {args.out}")


def cmd_shard(args) -> None:
    from gpt2pipe.data.tokenize import shards_from_token_files

    cfg = _config(args)
    out = args.out or cfg.data_dir / "shards"
    m = shards_from_token_files(args.tokens, cfg.data, out)
    print(f"shard: {m['tokens']:,} tokens in {len(m['val'])} val + {len(m['train'])} train shard(s) in {out}")


def cmd_hellaswag(args) -> None:
    from gpt2pipe.eval import hellaswag

    cfg = _config(args)
    src = args.source or cfg.eval.hellaswag
    out = args.out or Path(cfg.results_dir) / "data" / "hellaswag" / f"hellaswag_{Path(src).stem if src not in ('demo', 'full') else src}.bin"
    if src == "demo":
        path = hellaswag.demo_jsonl()
    elif src == "full":
        path = hellaswag.fetch_full(out.with_suffix(".jsonl"))
    else:
        path = Path(src)
    examples = hellaswag.load(path)
    hellaswag.write_bin(out, examples)
    print(f"hellaswag: {len(examples)} examples from {path} -> {out}")


def cmd_train(args) -> None:
    from gpt2pipe.train.loop import train

    cfg = _config(args)
    train(cfg, args.shards or cfg.data_dir / "shards", args.run_dir or cfg.run_dir, resume=args.resume,
          progress=not args.no_progress)


def cmd_evaluate(args) -> None:
    from gpt2pipe.eval.evaluate import evaluate_checkpoint

    cfg = _config(args)
    ckpt = Path(args.checkpoint)
    out = args.out or cfg.run_dir / "eval" / f"{ckpt.stem.replace('model', 'step')}.json"
    if ckpt.is_dir() or ckpt.suffix == ".bin":  # a model from elsewhere: its own shape, not the config's
        model = _model_section(ckpt)
        seq_len = min(cfg.train.seq_len, model["block_size"])  # evaluation reads no more than the model takes
        train = dict(cfg.raw["train"], seq_len=seq_len, total_batch_tokens=seq_len * cfg.train.micro_batch_size)
        cfg = config_mod.from_dict(dict(cfg.raw, model=model, train=train))
    shards = None if args.skip_val else args.shards or cfg.data_dir / "shards"
    result = evaluate_checkpoint(cfg, ckpt, shards, args.hellaswag, out)
    print(json.dumps(result))


def _model_section(path: Path) -> dict:
    import dataclasses

    from gpt2pipe.model import formats as export

    cfg, _ = export.from_hf(path) if path.is_dir() else export.from_llmc(path)
    return dataclasses.asdict(cfg)


def cmd_report(args) -> None:
    from gpt2pipe.report import run

    cfg = _config(args)
    run(cfg, evals=args.evals, out=args.out, notebook=args.notebook, notebook_out=args.notebook_out,
        metrics=args.metrics, train_log=args.train_log, configfile=args.configfile, overrides=list(args.overrides))


def cmd_export(args) -> None:
    import torch

    from gpt2pipe.model import formats as export

    model, _ = export.load_any(args.checkpoint)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    out = export.to_hf(model, args.out, dtype) if args.format == "hf" else export.to_llmc(model, args.out, dtype)
    print(f"export: {args.checkpoint} -> {out} ({args.format}, {args.dtype})")


def cmd_import(args) -> None:
    from gpt2pipe.model import checkpoint
    from gpt2pipe.model import formats as export

    model, meta = export.load_any(args.source)
    checkpoint.save(args.out, model, 0, imported_from=str(args.source), tokens_seen=0)
    print(f"import: {args.source} ({meta.get('source', 'gpt2pipe')}) -> {args.out}, "
          f"{model.num_params() / 1e6:.2f}M parameters, {model.config}")


def cmd_sample(args) -> None:
    from gpt2pipe.model import formats as export
    from gpt2pipe.device import pick_device
    from gpt2pipe.eval.sample import generate

    device = pick_device(args.device)
    model, meta = export.load_any(args.checkpoint)
    model.to(device)
    texts = generate(model, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.num_samples,
                     args.seed, device)
    body = "".join(f"--- sample {i} (step {meta.get('step')}, seed {args.seed}, temperature {args.temperature}, "
                   f"top-k {args.top_k})\n{args.prompt}{t}\n" for i, t in enumerate(texts))
    if args.out:
        from gpt2pipe.files import atomic_path

        with atomic_path(args.out) as tmp:
            tmp.write_text(body)
    print(body, end="")


def cmd_bench(args) -> None:
    import torch

    from gpt2pipe.bench import step as bench

    if not torch.cuda.is_available():
        raise Gpt2pipeError("bench needs a CUDA GPU")
    micro = dict(item.split("=") for item in args.micro_batch)
    table = bench.run(args.size, args.seq_len, args.total_batch, tuple(args.modes.split(",")),
                      {k: int(v) for k, v in micro.items()}, args.steps, args.warmup, not args.no_kernel_table,
                      tuple(args.profile.split(",")) if args.profile else ())
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


def cmd_bench_tokenize(args) -> None:
    from gpt2pipe.bench import tokenize as tokenize_bench

    parquet = args.parquet
    if parquet is None:
        parquet = tokenize_bench.sample_parquet(Path(args.sample_out), Path(args.sample_text), args.sample_mb)
    elif not parquet.is_file():
        raise Gpt2pipeError(f"{parquet}: not found")
    print(tokenize_bench.run(parquet, [int(w) for w in args.workers.split(",")]))


def _subcommand(sub, name: str, help: str, func, common: bool = True) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help)
    if common:
        _common(p)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpt2pipe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"gpt2pipe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _subcommand(sub, "config", "print the resolved config (defaults filled in) or describe every key", cmd_config)
    p.add_argument("--describe", action="store_true", help="list every key with its default and meaning")

    p = _subcommand(sub, "corpus", "gather the corpus into parquet documents", cmd_corpus)
    p.add_argument("--out", type=Path, help="output folder (default: <results>/data/<data.name>/corpus)")

    p = _subcommand(sub, "tokenize", "tokenize the corpus into llm.c shards (val shard first)", cmd_tokenize)
    p.add_argument("--corpus", type=Path, help="corpus folder (default: <results>/data/<data.name>/corpus)")
    p.add_argument("--out", type=Path, help="shard folder (default: <results>/data/<data.name>/shards)")

    p = _subcommand(sub, "fineweb", "list a FineWeb subset's files on the hub, or download some of them", cmd_fineweb)
    p.add_argument("action", choices=["list", "download"],
                   help="list: resolve data.hf_revision and write the file listing (sizes, sha256); "
                   "download: fetch listed files through the hub cache and verify them")
    p.add_argument("--listing", type=Path, help="file listing (default: <results>/data/<data.name>/fineweb/files.json)")
    p.add_argument("--file", action="append", default=[], metavar="NAME",
                   help="a listed file by stem (000_00000) or path (repeatable)")
    p.add_argument("--all", action="store_true", help="every listed file, one after another")
    p.add_argument("--out", type=Path, help="where to put the one --file (default: <data>/fineweb/raw/<stem>.parquet)")

    p = _subcommand(sub, "encode", "tokenize one parquet file into one llm.c-format token file (streaming)", cmd_encode)
    p.add_argument("--input", type=Path, required=True, help="parquet file with a 'text' column")
    p.add_argument("--out", type=Path, required=True, help="token file to write (.bin)")
    p.add_argument("--max-tokens", type=int, help="stop after this many tokens (default: the whole file; "
                   "`shard` applies data.max_tokens)")

    p = _subcommand(sub, "shard", "concatenate token files, in order, into llm.c shards (val first)", cmd_shard)
    p.add_argument("tokens", nargs="+", type=Path, help="token files written by `gpt2pipe encode`")
    p.add_argument("--out", type=Path, help="shard folder (default: <results>/data/<data.name>/shards)")

    p = _subcommand(sub, "hellaswag", "prepare HellaSwag as llm.c's eval .bin", cmd_hellaswag)
    p.add_argument("--source", help="demo, full or a .jsonl/.bin path (default: eval.hellaswag)")
    p.add_argument("--out", type=Path, help="output .bin (default: <results>/data/hellaswag/hellaswag_<source>.bin)")

    p = _subcommand(sub, "train", "train the model; writes checkpoints and an llm.c-format log", cmd_train)
    p.add_argument("--shards", type=Path, help="shard folder (default: <results>/data/<data.name>/shards)")
    p.add_argument("--run-dir", type=Path, help="run folder (default: <results>/<run_name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue from <run-dir>/train_state/state.pt if it matches this config and is unfinished")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines still written)")

    p = _subcommand(sub, "evaluate", "val loss and HellaSwag of one checkpoint, as JSON", cmd_evaluate)
    p.add_argument("--checkpoint", required=True,
                   help="model_NNNNNN.pt written by train, an llm.c model .bin, or a Hugging Face GPT-2 directory")
    p.add_argument("--shards", type=Path, help="shard folder with the val shard")
    p.add_argument("--hellaswag", type=Path, help="HellaSwag .bin or .jsonl (omit to skip HellaSwag)")
    p.add_argument("--skip-val", action="store_true", help="no validation loss (no shards needed), e.g. to "
                   "score a downloaded GPT-2 on HellaSwag alone")
    p.add_argument("--out", type=Path, help="result JSON (default: <results>/<run>/eval/step_NNNNNN.json)")

    p = _subcommand(sub, "report", "execute the report notebook with papermill; renders the PNG", cmd_report)
    p.add_argument("--notebook", type=Path, default=Path("workflow/notebooks/report.ipynb"),
                   help="notebook with a `parameters` cell (default: %(default)s)")
    p.add_argument("--train-log", type=Path, help="llm.c-format train log (default: <results>/<run>/train/train.log)")
    p.add_argument("--evals", nargs="*", help="eval JSON files (default: <results>/<run>/eval/step_*.json)")
    p.add_argument("--out", type=Path, help="PNG path (default: <results>/<run>/output.png)")
    p.add_argument("--notebook-out", type=Path, help="executed notebook (default: next to the PNG)")
    p.add_argument("--metrics", type=Path, help="metrics table, TSV (default: metrics.tsv next to the PNG)")

    p = _subcommand(sub, "export", "write a checkpoint as a Hugging Face directory or an llm.c model .bin", cmd_export, common=False)
    p.add_argument("--checkpoint", required=True, type=Path, help="our .pt, an llm.c .bin or a Hugging Face directory")
    p.add_argument("--format", choices=["hf", "llmc"], required=True)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="tensor dtype (llm.c: float32 = version 3, bfloat16 = version 5)")
    p.add_argument("--out", type=Path, required=True, help="directory (hf) or .bin file (llmc)")

    p = _subcommand(sub, "import", "turn a Hugging Face GPT-2 directory or llm.c .bin into our checkpoint", cmd_import, common=False)
    p.add_argument("source", type=Path)
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write (usable by evaluate, sample, "
                   "or train.init_from)")

    p = _subcommand(sub, "sample", "generate text from a checkpoint", cmd_sample, common=False)
    p.add_argument("--checkpoint", required=True, type=Path, help="our .pt, an llm.c .bin or a Hugging Face directory")
    p.add_argument("--prompt", default="", help="text to continue (default: a fresh document)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0, help="0 for greedy decoding")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k likeliest tokens (0: all)")
    p.add_argument("--num-samples", type=int, default=3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--out", type=Path, help="also write the samples to this text file")

    p = _subcommand(sub, "bench", "time a GPT-2 training step: our kernels vs torch eager vs torch.compile", cmd_bench, common=False)
    p.add_argument("--size", default="124M", choices=["124M", "350M", "774M", "1558M"])
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--total-batch", type=int, default=524288, help="tokens per optimizer step (default: %(default)s)")
    p.add_argument("--modes", default="kernels,eager,compile", help="comma-separated subset of kernels,kernels-fp8,kernels-recompute,eager,compile")
    p.add_argument("--micro-batch", nargs="*", default=[], metavar="MODE=B",
                   help="micro-batch per mode (defaults: kernels=64 eager=32 compile=64; halves on out-of-memory)")
    p.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation, autotuning)")
    p.add_argument("--no-kernel-table", action="store_true", help="skip the per-kernel table")
    p.add_argument("--profile", default="", help="comma-separated modes to profile for one extra step")
    p.add_argument("--out", type=Path, help="also write the tables to this file")

    p = _subcommand(sub, "bench-tokenize", "tokenization speed: ours end to end vs raw tiktoken on the same cores",
                    cmd_bench_tokenize, common=False)
    p.add_argument("parquet", nargs="?", type=Path, help="a parquet file with a 'text' column (default: build "
                   "a sample from --sample-text)")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts (default: %(default)s)")
    p.add_argument("--sample-text", default="data/demo/tiny_shakespeare.txt", help="text the sample is cut from")
    p.add_argument("--sample-mb", type=float, default=20, help="sample size, MB of text (default: %(default)s)")
    p.add_argument("--sample-out", default="/tmp/gpt2pipe_tokenize_sample.parquet")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except Gpt2pipeError as e:
        code = getattr(e, "exit_code", 2)
        print(f"gpt2pipe {args.command}: {'error: ' if code == 2 else ''}{e}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print(f"gpt2pipe {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
