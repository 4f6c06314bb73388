"""Evaluation subcommands: evaluate (val loss, HellaSwag), sample (text), report (notebook -> PNG)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from gpt2pipe import Gpt2pipeError, layout
from gpt2pipe import config as config_mod
from gpt2pipe.cli.options import add_subcommand, load_config


def _with_model_of(cfg: config_mod.Config, path: Path) -> config_mod.Config:
    """The run config with the model section of the model at `path` (read from its checkpoint, header or
    config.json): evaluation reads no more tokens per row than it takes."""
    from gpt2pipe.model.load import model_config_of

    model = dataclasses.asdict(model_config_of(path))
    seq_len = min(cfg.train.seq_len, model["block_size"])
    train = dict(cfg.raw["train"], seq_len=seq_len, total_batch_tokens=seq_len * cfg.train.micro_batch_size)
    return config_mod.from_dict(dict(cfg.raw, model=model, train=train))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from gpt2pipe.eval.evaluate import evaluate_checkpoint
    from gpt2pipe.model.load import is_foreign

    cfg = load_config(args)
    ckpt = Path(args.checkpoint)
    out = args.out or cfg.run_dir / "eval" / f"{ckpt.stem.replace('model', 'step')}.json"
    # foreign models, ours without -c, and with --own-shape (an RL policy, shaped as rl.init_from) bring their shape
    if is_foreign(ckpt) or args.configfile is None or args.own_shape:
        cfg = _with_model_of(cfg, ckpt)
    shards = None if args.skip_val else args.shards or layout.shard_dir(cfg.raw)
    result = evaluate_checkpoint(cfg, ckpt, shards, args.hellaswag, out)
    print(json.dumps(result))


def cmd_sample(args: argparse.Namespace) -> None:
    from gpt2pipe.device import pick_device
    from gpt2pipe.eval.sample import generate
    from gpt2pipe.files import atomic_path
    from gpt2pipe.model.load import load_any

    device = pick_device(args.device)
    model, meta = load_any(args.checkpoint)
    model.to(device)
    texts = generate(model, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.num_samples,
                     args.seed, device, min_tokens=args.min_tokens)
    body = "".join(f"--- sample {i} (step {meta.get('step')}, seed {args.seed}, temperature {args.temperature}, "
                   f"top-k {args.top_k})\n{args.prompt}{t}\n" for i, t in enumerate(texts))
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text(body)
    print(body, end="")


def cmd_report(args: argparse.Namespace) -> None:
    from gpt2pipe.report import run

    cfg = load_config(args)
    for path in (args.out, args.notebook_out, args.metrics, args.rl_samples):
        if path is not None:  # papermill refuses a missing output folder with a traceback: make it, as make would
            if path.parent.exists() and not path.parent.is_dir():
                raise Gpt2pipeError(f"{path.parent}: not a folder, cannot write {path.name} there")
            path.parent.mkdir(parents=True, exist_ok=True)
    run(cfg, evals=args.evals, out=args.out, notebook=args.notebook, notebook_out=args.notebook_out,
        metrics=args.metrics, train_log=args.train_log, configfile=args.configfile, overrides=list(args.overrides),
        rl_log=args.rl_log, rl_evaluated=args.rl_evaluated, rl_samples=args.rl_samples)


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def register(sub) -> None:
    p = add_subcommand(sub, "evaluate", "val loss and HellaSwag of one checkpoint, as JSON", cmd_evaluate)
    p.add_argument("--checkpoint", required=True,
                   help="model_NNNNNN.pt written by train, an llm.c model .bin, or a Hugging Face GPT-2 directory; "
                   "the model's shape is read from it (with -c, a .pt must match the config's model section)")
    p.add_argument("--shards", type=Path, help="shard folder with the val shard")
    p.add_argument("--hellaswag", type=Path, help="HellaSwag .bin or .jsonl (omit to skip HellaSwag)")
    p.add_argument("--skip-val", action="store_true", help="no validation loss (no shards needed), e.g. to "
                   "score a downloaded GPT-2 on HellaSwag alone")
    p.add_argument("--own-shape", action="store_true", help="take the model's shape from the checkpoint, not "
                   "the config's model section (an RL checkpoint: shaped as rl.init_from)")
    p.add_argument("--out", type=Path, help="result JSON (default: <results>/<run>/eval/step_NNNNNN.json)")

    p = add_subcommand(sub, "sample", "generate text from a checkpoint", cmd_sample, config=False)
    p.add_argument("--checkpoint", required=True, type=Path,
                   help="our .pt, an llm.c .bin or a Hugging Face directory")
    p.add_argument("--prompt", default="", help="text to continue (default: a fresh document)")
    p.add_argument("--max-new-tokens", type=_non_negative, default=64, help="tokens per sample (default: %(default)s)")
    p.add_argument("--min-tokens", type=_non_negative, default=None, metavar="N",
                   help="end a sample at the first <|endoftext|> after N tokens (default: never; every sample "
                   "is --max-new-tokens tokens, document ends shown as <|endoftext|>, as llm.c prints them)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 for greedy decoding")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k likeliest tokens (0: all)")
    p.add_argument("--num-samples", type=int, default=3, help="how many samples (default: %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="seed of the random sampling "
                   "(default: %(default)s)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where the model runs; auto: a CUDA GPU if there is one (default: %(default)s)")
    p.add_argument("--out", type=Path, help="also write the samples to this text file")

    p = add_subcommand(sub, "report", "execute the report notebook with papermill; renders the PNG", cmd_report)
    p.add_argument("--notebook", type=Path, default=None,
                   help="notebook with a `parameters` cell (default: the report notebook shipped with gpt2pipe)")
    p.add_argument("--train-log", type=Path, help="llm.c-format train log (default: <results>/<run>/train/train.log)")
    p.add_argument("--evals", nargs="*", help="eval JSON files (default: <results>/<run>/eval/step_*.json)")
    p.add_argument("--out", type=Path, help="PNG path (default: <results>/<run>/output.png); its folder is "
                   "created if missing")
    p.add_argument("--notebook-out", type=Path, help="executed notebook (default: next to the PNG)")
    p.add_argument("--metrics", type=Path, help="metrics table, TSV (default: metrics.tsv next to the PNG)")
    p.add_argument("--rl-log", type=Path, help="with an rl section: the RL stage's rl.log, its held-out results "
                   "(eval_NNNNNN.json) beside it (default: <results>/<run>/rl/rl.log, left out while it does not "
                   "exist)")
    p.add_argument("--rl-evaluated", nargs=2, type=Path, metavar=("START", "FINAL"),
                   help="evaluate results (val loss, HellaSwag) of the model RL started from and of its final policy "
                   "(default: the workflow's, <run>/eval/step_NNNNNN.json or rl/evaluate_000000.json, and "
                   "rl/evaluate_NNNNNN.json)")
    p.add_argument("--rl-samples", type=Path, help="with an rl section: the responses of the pre-trained model and "
                   "of the final policy side by side, markdown (default: rl_samples.md next to the PNG)")
