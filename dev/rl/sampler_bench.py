"""Rollout speed on one GPU: our KV-cache sampler (bf16, CUDA-graph decode) against Hugging Face `generate`
(bf16, dynamic and static cache) on the same model, batch and lengths. Usage:
    python dev/rl/sampler_bench.py CHECKPOINT [--batch 256 --prompt 20 --new 48]"""

import argparse
import tempfile
import time

import torch

from gpt2pipe.model.decode import sample, sampling_copy
from gpt2pipe.model.load import load_any


def timed(fn, reps=3):
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def profile_step(twin, prompts, new):
    """Where one decode step's GPU time goes: the kernels of 8 eager steps, by total CUDA time."""
    from torch.profiler import ProfilerActivity, profile

    sample(twin, prompts, new, 1.0, None, torch.Generator("cuda").manual_seed(0))
    step = next(reversed(twin._decoders.values())).decoder
    P = len(prompts[0])  # the bench's prompts are all one length: back to the first decode slot
    step.slot.fill_(P)
    step.pos.fill_(P)
    step.eager()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(8):
            step.eager()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--prompt", type=int, default=20)
    p.add_argument("--new", type=int, default=48)
    p.add_argument("--profile", action="store_true", help="also print the GPU kernels of one eager decode step")
    a = p.parse_args()
    model, _ = load_any(a.checkpoint)
    model = model.cuda().eval()
    torch.manual_seed(0)
    prompts = torch.randint(0, 50000, (a.batch, a.prompt)).tolist()
    tokens = a.batch * a.new
    twin = sampling_copy(model)
    gen = torch.Generator("cuda").manual_seed(0)
    rows = {}
    for attention in ("sdpa", "matmul"):
        for compiled in (False, True):
            name = f"gpt2pipe sampler (bf16, CUDA graph, {attention} attention{', compiled' if compiled else ''})"
            try:
                rows[name] = timed(lambda: sample(twin, prompts, a.new, 1.0, None, gen, attention=attention,
                                                  compiled=compiled))
            except Exception as e:  # noqa: BLE001 - a variant that fails is reported, the others still run
                print(f"{name}: {type(e).__name__}: {str(e)[:300]}")
    rows["gpt2pipe sampler (bf16, eager)"] = timed(lambda: sample(twin, prompts, a.new, 1.0, None, gen,
                                                                  cuda_graph=False))
    same = [sample(twin, prompts, a.new, 0.0, None, None, attention=v, compiled=c).tokens
            for v, c in (("sdpa", False), ("matmul", False), ("matmul", True))]
    print("greedy tokens equal to sdpa's: matmul", (same[1] == same[0]).float().mean().item(),
          "matmul compiled", (same[2] == same[0]).float().mean().item())
    if a.profile:
        profile_step(twin, prompts, a.new)
    from transformers import GPT2LMHeadModel

    from gpt2pipe.model.formats.hf import to_hf

    with tempfile.TemporaryDirectory() as d:
        to_hf(model.cpu(), d)
        hf = GPT2LMHeadModel.from_pretrained(d, torch_dtype=torch.bfloat16).cuda().eval()
    ids = torch.tensor(prompts, device="cuda")
    kw = dict(max_new_tokens=a.new, min_new_tokens=a.new, do_sample=True, top_k=0, pad_token_id=50256)
    rows["HF generate (bf16, dynamic cache)"] = timed(lambda: hf.generate(ids, **kw))
    try:
        rows["HF generate (bf16, static cache)"] = timed(lambda: hf.generate(ids, cache_implementation="static", **kw))
    except Exception as e:  # noqa: BLE001 - a transformers version without it: say so
        print(f"static cache: {type(e).__name__}: {e}")
    fastest_hf = min(v for k, v in rows.items() if k.startswith("HF"))
    print(f"| sampler | s | new tokens/s | vs fastest HF |\n|---|---:|---:|---:|")
    for k, v in rows.items():
        print(f"| {k} | {v:.3f} | {tokens / v:,.0f} | {fastest_hf / v:.2f}x |")


if __name__ == "__main__":
    main()
