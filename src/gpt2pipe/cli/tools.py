"""Tool subcommands: config (print/describe), export and import (HF / llm.c), bench, bench-tokenize."""

from __future__ import annotations

import argparse
from pathlib import Path

from gpt2pipe import Gpt2pipeError
from gpt2pipe import config as config_mod
from gpt2pipe import schema
from gpt2pipe.cli.options import add_subcommand


def cmd_config(args: argparse.Namespace) -> None:
    if args.describe:
        print(schema.describe())
        return
    import yaml

    from gpt2pipe.data.inputs import corpus_problem

    # beyond the schema: the corpus files a text/parquet run reads exist and hold text
    cfg = config_mod.load(args.configfile, args.overrides, checks=(corpus_problem,))
    print(yaml.safe_dump(cfg.raw, sort_keys=False), end="")


def cmd_export(args: argparse.Namespace) -> None:
    import torch

    from gpt2pipe.model.formats.hf import to_hf
    from gpt2pipe.model.formats.llmc import to_llmc
    from gpt2pipe.model.load import load_any

    model, _ = load_any(args.checkpoint)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    out = to_hf(model, args.out, dtype) if args.format == "hf" else to_llmc(model, args.out, dtype)
    print(f"export: {args.checkpoint} -> {out} ({args.format}, {args.dtype})")


def cmd_import(args: argparse.Namespace) -> None:
    from gpt2pipe.model import checkpoint
    from gpt2pipe.model.load import load_any

    model, meta = load_any(args.source)
    checkpoint.save(args.out, model, 0, imported_from=str(args.source), tokens_seen=0)
    print(f"import: {args.source} ({meta.get('source', 'gpt2pipe')}) -> {args.out}, "
          f"{model.num_params() / 1e6:.2f}M parameters, {model.config}")


def _bench_argv(args: argparse.Namespace) -> list[str]:
    """The bench options again, for the processes `--nproc` starts (everything but --nproc itself)."""
    argv = ["--size", args.size, "--seq-len", str(args.seq_len), "--total-batch", str(args.total_batch),
            "--modes", args.modes, "--steps", str(args.steps), "--warmup", str(args.warmup), "--no-kernel-table"]
    if args.micro_batch:
        argv += ["--micro-batch", *args.micro_batch]
    if args.out:
        argv += ["--out", str(args.out.resolve())]
    return argv


def cmd_bench(args: argparse.Namespace) -> None:
    import shlex

    import torch

    from gpt2pipe.bench import scaling, step_table
    from gpt2pipe.bench.modes import parse_micro_batch
    from gpt2pipe.model.gpt import GPT2_SIZES

    sizes = tuple(args.size.split(","))
    unknown = [s for s in sizes if s not in GPT2_SIZES]
    if unknown:
        raise Gpt2pipeError(f"--size: unknown {unknown}; choose from {', '.join(GPT2_SIZES)}")
    micro = parse_micro_batch(args.micro_batch)
    modes = tuple(m for m in args.modes.split(",") if m)
    scaling.check_modes(tuple(m for m in modes if m != "llmc"))
    if args.nproc > 1 or scaling.launched_by_torchrun():
        if len(sizes) > 1 or args.llmc or "llmc" in modes:
            raise Gpt2pipeError("--nproc: one --size at a time, and no llm.c mode")
        if any(size for size, _ in micro):
            raise Gpt2pipeError("--nproc: give --micro-batch as MODE=B")
    def _write(report: str) -> None:  # keep finished modes if a later one fails or the run is cut short
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(report + "\n")

    if args.nproc > 1 and not scaling.launched_by_torchrun():
        if not torch.cuda.is_available() or torch.cuda.device_count() < args.nproc:
            raise Gpt2pipeError(f"--nproc {args.nproc} needs {args.nproc} CUDA GPUs on this node")
        code = scaling.relaunch(_bench_argv(args), args.nproc)
        if code:
            raise Gpt2pipeError(f"bench under torchrun failed (exit status {code})")
        return
    if not torch.cuda.is_available():
        raise Gpt2pipeError("bench needs a CUDA GPU")
    if scaling.launched_by_torchrun():
        table = scaling.run(sizes[0], args.seq_len, args.total_batch, modes, {m: b for (_, m), b in micro.items()},
                            args.steps, args.warmup, _write)
        if table is None:  # processes other than 0 report nothing
            return
    else:
        table = step_table.run(sizes, args.seq_len, args.total_batch, modes, micro, args.steps, args.warmup,
                               not args.no_kernel_table, tuple(args.profile.split(",")) if args.profile else (),
                               args.llmc, tuple(shlex.split(args.llmc_args)), _write)
    print(table)
    _write(table)


def cmd_bench_tokenize(args: argparse.Namespace) -> None:
    from gpt2pipe.bench import tokenize as tokenize_bench

    parquet = args.parquet
    if parquet is None:
        parquet = tokenize_bench.sample_parquet(Path(args.sample_out), Path(args.sample_text), args.sample_mb)
    elif not parquet.is_file():
        raise Gpt2pipeError(f"{parquet}: not found")
    try:
        workers = [int(w) for w in args.workers.split(",")]
    except ValueError:
        raise Gpt2pipeError(f"--workers {args.workers}: expected comma-separated counts, e.g. 1,2") from None
    print(tokenize_bench.run(parquet, workers))


def register(sub) -> None:
    p = add_subcommand(sub, "config", "check a config (its keys, and that the corpus files exist and hold text) and "
                       "print it resolved (defaults filled in), or describe every key",
                       cmd_config)
    p.add_argument("--describe", action="store_true", help="list every key with its default and meaning")

    p = add_subcommand(sub, "export", "write a checkpoint as a Hugging Face directory or an llm.c model .bin",
                       cmd_export, config=False)
    p.add_argument("--checkpoint", required=True, type=Path, help="our .pt, an llm.c .bin or a Hugging Face directory")
    p.add_argument("--format", choices=["hf", "llmc"], required=True)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="tensor dtype (llm.c: float32 = version 3, bfloat16 = version 5)")
    p.add_argument("--out", type=Path, required=True, help="directory (hf) or .bin file (llmc)")

    p = add_subcommand(sub, "import", "turn a Hugging Face GPT-2 directory or llm.c .bin into our checkpoint",
                       cmd_import, config=False)
    p.add_argument("source", type=Path)
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write (usable by evaluate, sample, "
                   "or train.init_from)")

    p = add_subcommand(sub, "bench", "time a GPT-2 training step: our kernels vs torch.compile (nanoGPT's recipe, "
                       "max-autotune) and llm.c, on one GPU or data-parallel over several (--nproc, or under "
                       "torchrun)", cmd_bench, config=False)
    p.add_argument("--size", default="124M", metavar="SIZE[,SIZE...]",
                   help="GPT-2 size(s), comma-separated, one table each: 124M, 350M, 774M, 1558M (default: "
                   "%(default)s)")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--total-batch", type=int, default=524288, help="tokens per optimizer step (default: %(default)s)")
    p.add_argument("--modes", default="kernels,kernels-fp8,kernels-fp8-head,kernels-unfused,nanogpt,compile,compile-max",
                   help="comma-separated, in order: kernels, kernels-fp8, kernels-recompute, kernels-dw-bf16 "
                   "(classifier weight gradient summed in bf16, to show what fp32 costs), kernels-fp8-qkv and "
                   "kernels-fp8-head (fp8 also for the qkv GEMM's forward / the LM head's logits), kernels-unfused "
                   "(without the GELU epilogue and packed-qkv fusions), kernels-bgrad (the bias gradients in the "
                   "weight-gradient GEMMs' epilogue), eager, nanogpt (the project's reference nanoGPT step: its "
                   "own model and fused AdamW, bench/nanogpt_ref.py), compile (nanoGPT's recipe on our model: one "
                   "compiled graph from tokens to the loss), compile-max (mode max-autotune; without CUDA "
                   "graphs if they fail), compile-max-nocg, and the diagnostic variants compile-cudnn, "
                   "compile-sliced, compile-padded, compile-model, compile-model-drop "
                   "(bench/compiled.py). Ratios are against the fastest nanogpt, compile* or llmc row "
                   "(default: %(default)s)")
    p.add_argument("--micro-batch", nargs="*", default=[], metavar="[SIZE:]MODE=B",
                   help="micro-batch of a mode, for every size or one (compile=32 350M:kernels=32); defaults "
                   "per size in bench/modes.py's MICRO_BATCH; halves on out-of-memory")
    p.add_argument("--llmc", metavar="PATH", help="also time llm.c: a built train_gpt2cu, run on the same shape "
                   "over random-token shards it is given (mode llmc, before compile-max)")
    p.add_argument("--llmc-args", default="", metavar="ARGS",
                   help="extra train_gpt2cu arguments, after the bench's own (which include -r 0, no GELU "
                   "recompute), e.g. '-ge 2' (GELU in cuBLASLt's epilogues)")
    p.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation, autotuning)")
    p.add_argument("--no-kernel-table", action="store_true", help="skip the per-kernel table")
    p.add_argument("--profile", default="", help="comma-separated modes to profile for one extra step")
    p.add_argument("--out", type=Path, help="also write the tables to this file (rewritten after every mode)")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="data-parallel over N GPUs of this node: reruns this command under torchrun (as "
                   "`torchrun --nproc_per_node N -m gpt2pipe bench ...` does); process 0 first times each mode "
                   "alone (the 1-GPU baseline), then all N the same global batch: tokens/s, MFU per GPU, scaling "
                   "efficiency, peak memory per GPU, per-step losses of both, and the exposed communication time "
                   "of one profiled step = GPU time when an NCCL kernel runs and nothing else does. Kernels "
                   "modes use the ZeRO-1 flat AdamW, torch modes DDP")

    p = add_subcommand(sub, "bench-tokenize", "tokenization speed: ours end to end vs raw tiktoken on the same cores",
                       cmd_bench_tokenize, config=False)
    p.add_argument("parquet", nargs="?", type=Path, help="a parquet file with a 'text' column (default: build "
                   "a sample from --sample-text)")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts (default: %(default)s)")
    p.add_argument("--sample-text", default="data/demo/tiny_shakespeare.txt", help="text the sample is cut from")
    p.add_argument("--sample-mb", type=float, default=20, help="sample size, MB of text (default: %(default)s)")
    p.add_argument("--sample-out", default="/tmp/gpt2pipe_tokenize_sample.parquet")
