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


def profile_step(twin, prompts, new, attention="sdpa", compiled=False):
    """Where one decode step's GPU time goes: the kernels of 8 steps run outside the graph (compiled: the
    inductor-fused step RL uses), by total CUDA time; then one whole sample() call (graph replays), its wall
    time against the GPU time of its kernels (a gap is launch or host time)."""
    from torch.profiler import ProfilerActivity, profile

    run = lambda: sample(twin, prompts, new, 1.0, None, torch.Generator("cuda").manual_seed(0),  # noqa: E731
                         attention=attention, compiled=compiled)
    run()
    step = twin._decoders[next(k for k in reversed(twin._decoders) if k[-2:] == (attention, compiled))].decoder
    P = len(prompts[0])  # the bench's prompts are all one length: back to the first decode slot
    step.slot.fill_(P)
    step.pos.fill_(P)
    step.eager()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(8):
            step.eager()
        torch.cuda.synchronize()
    print(f"--- one decode step ({attention}{', compiled' if compiled else ''}), 8 steps' kernels:")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    gpu = sum(e.self_device_time_total for e in prof.key_averages()) / 1e3
    print(f"--- one sample() call ({attention}{', compiled' if compiled else ''}): wall {wall * 1e3:.1f} ms "
          f"(profiled), GPU kernels {gpu:.1f} ms")
    print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=15, max_name_column_width=70))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--prompt", type=int, default=20)
    p.add_argument("--new", type=int, default=48)
    p.add_argument("--variants", default="sdpa,matmul+c,reduce+c",
                   help="attention kinds of the recorded decode step, +c: compiled")
    p.add_argument("--profile", action="store_true", help="also print the GPU kernels of RL's decode step (reduce, compiled)")
    a = p.parse_args()
    model, _ = load_any(a.checkpoint)
    model = model.cuda().eval()
    torch.manual_seed(0)
    prompts = torch.randint(0, 50000, (a.batch, a.prompt)).tolist()
    tokens = a.batch * a.new
    twin = sampling_copy(model)
    gen = torch.Generator("cuda").manual_seed(0)
    rows = {}
    for variant in a.variants.split(","):
        attention, compiled = variant.removesuffix("+c"), variant.endswith("+c")
        name = f"gpt2pipe sampler (bf16, CUDA graph, {attention} attention{', compiled' if compiled else ''})"
        try:
            rows[name] = timed(lambda: sample(twin, prompts, a.new, 1.0, None, gen, attention=attention,
                                              compiled=compiled))
        except Exception as e:  # noqa: BLE001 - a variant that fails is reported, the others still run
            print(f"{name}: {type(e).__name__}: {str(e)[:300]}")
    rows["gpt2pipe sampler (bf16, eager)"] = timed(lambda: sample(twin, prompts, a.new, 1.0, None, gen,
                                                                  cuda_graph=False))
    if a.profile:
        for variant in (("reduce", True),):
            try:
                profile_step(twin, prompts, a.new, *variant)
            except Exception as e:  # noqa: BLE001 - a profile that fails leaves the timings standing
                print(f"profile {variant}: {type(e).__name__}: {e}")
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
