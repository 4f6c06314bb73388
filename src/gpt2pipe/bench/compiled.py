"""The torch.compile baselines of `gpt2pipe bench`: the recipe a user writes (nanoGPT's), not only what
`train.ops: compile` runs.

The old `compile` mode compiled `GPT.forward`, which returns the logits with the loss, and the step held
them as the training loop does (`_, loss = model(x, y)` keeps them until the next micro-batch's forward has
returned). So the compiled graph had the bf16 logits, B x T x 50304 (6.6 GB at B=64), as an output the
caller keeps alive, and a slice `[..., :vocab_size]` of them as a view output (AOTAutograd regenerates such
views outside the graph). What users time instead (nanoGPT, the issue's 1041.7 ms / 29 GiB): one compiled
function from tokens to the scalar loss — nothing but the loss leaves the graph, so inductor decides alone
what to keep for backward and fuses the fp32 upcast and the softmax into the loss kernels.

Recipes (bench modes):
- `compile`: the loss-only graph, the loss over all 50304 columns with the padded ones set to -inf inside
  the graph (the model's loss; every tensor keeps the aligned padded width), torch.compile's default mode,
  torch's default attention backend (flash first). On the H100 it times as nanoGPT's own loss
  (`compile-padded`, 1121.8 vs 1118.2 ms), where slicing the logits to the real vocabulary
  (`compile-sliced`, what this mode did before) takes 1179.1 ms: the unaligned 50257-wide slice slows
  every kernel after it. `compile-cudnn`: the same with cuDNN attention first.
- `compile-max`: the same with mode="max-autotune" (Triton GEMM templates, CUDA graphs). CUDA graphs with
  gradient accumulation have crashed or summed wrongly in some torch releases (pytorch issues 96693,
  169545): the bench first tries CUDA graphs with accumulation on a tiny model (seconds), times
  "max-autotune-no-cudagraphs" when they fail there or raise here, and checks the first step's loss and
  gradient norm against `compile` (same weights and data) when both ran. The loop gives CUDA graphs what
  accumulation needs (start_cudagraph_step), and inductor autotunes the GEMM templates in a subprocess.
- `compile-max-nocg`: "max-autotune-no-cudagraphs" straight away.
- `compile-sliced`: the model's own forward (logits sliced to the real vocabulary) and its `.float()`
  cross-entropy in the loss-only graph.
- `compile-padded`: nanoGPT exactly — cross-entropy over the padded vocabulary as if it were real. Not our
  loss (the padded columns take part in the softmax), shown because it is what nanoGPT times.
- `compile-model`: the first `compile` mode — `torch.compile(GPT)` called as the training loop calls it,
  logits held, cuDNN attention first; `compile-model-drop`: the same with the logits dropped at once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

CUDAGRAPH_FALLBACK = "max-autotune-no-cudagraphs"


@dataclass(frozen=True)
class Recipe:
    loss: str                  # "sliced" | "masked" | "padded": a LossOnly graph; "model": torch.compile(GPT)
    mode: str = "default"      # torch.compile mode
    hold_logits: bool = True   # loss "model" only: keep the logits until the next forward returns (the loop)
    cudnn_attention: bool = False  # SDPA with cuDNN first (else torch's default order: flash first)
    note: str = ""

    @property
    def cudagraphs(self) -> bool:
        return uses_cudagraphs(self.mode)


def error_line(e: BaseException) -> str:
    """An exception as one line for the bench's notes: its type and the first line of its message (200
    characters at most)."""
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"


def uses_cudagraphs(mode: str) -> bool:
    """Whether a torch.compile mode replays CUDA graphs (inductor's cudagraph trees)."""
    return mode in ("reduce-overhead", "max-autotune")


def start_cudagraph_step(params) -> None:
    """What a loop that replays CUDA graphs and accumulates gradients owes them at the start of each step,
    before its first micro-batch (the optimizer left .grad None): a zeroed gradient buffer per parameter.
    Left None, the first micro-batch's backward hands a buffer of the graphs' own memory pool to .grad, and
    the next replay overwrites it while it is still summing (torch: "accessing tensor output of CUDAGraphs that has been overwritten"); given a buffer,
    autograd adds into it (allocating and zeroing them costs ~0.2 ms a step at 124M). Each micro-batch then
    starts with torch.compiler.cudagraph_mark_step_begin()."""
    for p in params:
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            else:
                p.grad.zero_()


RECIPES = {
    "compile": Recipe("masked"),
    "compile-cudnn": Recipe("masked", cudnn_attention=True, note="SDPA cuDNN first"),
    "compile-max": Recipe("masked", "max-autotune"),
    "compile-max-nocg": Recipe("masked", CUDAGRAPH_FALLBACK),
    "compile-sliced": Recipe("sliced", note="logits sliced to the real vocabulary"),
    "compile-padded": Recipe("padded", note="loss over the padded vocabulary (nanoGPT's; not the model's loss)"),
    "compile-model": Recipe("model", cudnn_attention=True,
                            note="the first compile mode: torch.compile(GPT), logits held, SDPA cuDNN first"),
    "compile-model-drop": Recipe("model", hold_logits=False, cudnn_attention=True,
                                 note="torch.compile(GPT), logits dropped at once, SDPA cuDNN first"),
}


def hidden_states(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """ln_f of the last block's output: GPT.forward up to the LM head (torch path)."""
    tr = model.transformer
    pos = torch.arange(idx.shape[1], device=idx.device)
    x = tr.wte(idx) + tr.wpe(pos)
    for block in tr.h:
        x = block(x)
    return tr.ln_f(x)


class LossOnly(nn.Module):
    """The GPT's mean cross-entropy as its only output, so compiling this module puts the forward and the
    loss in one graph that returns a scalar. The GPT is a submodule (same parameters, DDP can wrap this)."""

    def __init__(self, model: nn.Module, loss: str = "sliced"):
        super().__init__()
        if loss not in ("sliced", "masked", "padded"):
            raise ValueError(f"loss {loss!r}: expected sliced, masked or padded")
        self.model, self.loss = model, loss

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.loss == "sliced":  # the model's own forward and loss expression
            logits, _ = self.model(idx)
            return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        logits = self.model.lm_head(hidden_states(self.model, idx)).float()
        if self.loss == "masked":  # exp(-inf) = 0: the softmax over the real columns only
            vocab = self.model.config.vocab_size
            padded = torch.arange(logits.shape[-1], device=logits.device) >= vocab
            logits = logits.masked_fill(padded, float("-inf"))
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def build(model: nn.Module, recipe: Recipe, wrap=lambda m: m, mode: str | None = None):
    """(runner, returns_logits): the compiled callable for `recipe`; wrap(module) puts DDP around what is
    compiled on several processes. mode overrides the recipe's torch.compile mode (the CUDA-graph fallback)."""
    module = model if recipe.loss == "model" else LossOnly(model, recipe.loss)
    if (mode or recipe.mode).startswith("max-autotune"):
        # benchmark the GEMM templates in a child process: on torch 2.11 some Triton templates for the LM
        # head's shapes hit an illegal memory access, which in-process poisons this CUDA context for good
        import torch._inductor.config as inductor_config

        inductor_config.autotune_in_subproc = True
    return torch.compile(wrap(module), mode=mode or recipe.mode), recipe.loss == "model"


@functools.cache
def cudagraph_accumulation_problem(device: torch.device) -> str | None:
    """Why CUDA graphs (inductor's cudagraph trees) fail, or sum gradients wrongly, under gradient
    accumulation on this torch and device; None when they agree with eager. A tiny GPT's loss-only graph
    compiled with mode="reduce-overhead" (CUDA graphs without autotuning: seconds, not minutes) runs three
    steps of three accumulated micro-batches, gradients cleared between steps as the optimizer clears them;
    its last step's gradients are compared with eager's (fp32, so the two differ by rounding only)."""
    from gpt2pipe.config import ModelConfig
    from gpt2pipe.model.gpt import GPT

    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=64, block_size=32)
    torch.manual_seed(0)
    model = GPT(cfg).to(device)
    data = torch.randint(0, cfg.vocab_size, (3, 2, cfg.block_size + 1), device=device)
    loss_of = LossOnly(model)

    def last_step_grads(fn, graphs: bool) -> list[torch.Tensor]:  # the bench's loop (step.py's _Step)
        for _ in range(3):
            for p in model.parameters():
                p.grad = None  # what the optimizer step leaves
            if graphs:
                start_cudagraph_step(model.parameters())
            for k in range(len(data)):
                if graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                (fn(data[k, :, :-1], data[k, :, 1:]) / len(data)).backward()
        return [p.grad.detach().clone() for p in model.parameters()]

    try:
        ref = last_step_grads(loss_of, False)
        graphed = last_step_grads(torch.compile(loss_of, mode="reduce-overhead"), True)
    except Exception as e:  # noqa: BLE001 — what CUDA graphs raise is the answer
        return error_line(e)
    finally:
        reset()
    worst = max(((a - b).norm() / b.norm().clamp_min(1e-30)).item() for a, b in zip(graphed, ref))
    return None if worst < 1e-2 else f"accumulated gradients differ from eager's by {worst:.2g} (relative)"


def cudagraph_skips() -> int:
    """How often inductor has declined CUDA graphs for a graph in this process so far (it logs why)."""
    try:
        from torch._dynamo.utils import counters

        return int(counters["inductor"].get("cudagraph_skips", 0))
    except (ImportError, AttributeError):
        return 0


def reset() -> None:
    """Forget every compiled graph (and CUDA-graph pool), so the next mode compiles afresh."""
    import torch._dynamo as dynamo

    dynamo.reset()
    try:
        from torch._inductor import cudagraph_trees

        cudagraph_trees.reset_cudagraph_trees()
    except (ImportError, AttributeError):
        pass
