"""Batched sampling with a KV cache: one prefill over left-padded prompts, then one token a step.

The model's own modules and weights are run here with two things GPT.forward does not take: per-row positions
(a left-padded prompt starts at position 0 after its padding, as the N implementation details of RLHF ask)
and a key mask (padding is never attended to). Every cache slot exists from the start, so a decode step has
fixed shapes and, on CUDA, is recorded once as a CUDA graph and replayed: a 124M decode step is ~200 small
kernels, whose launches cost more than their work when run one by one from Python.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gpt2pipe.model.gpt import GPT, RMS_EPS
from gpt2pipe.ops import reference


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """reference.rope with per-row tables: x [B, H, T, D], cos/sin [B, 1, T, D/2] (gathered at positions)."""
    half = x.shape[-1] // 2
    x1, x2 = x.float()[..., :half], x.float()[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class CachedGPT:
    """A GPT run over a KV cache of `slots` positions for `batch` rows. `forward(idx, pos, start)` writes the
    keys and values of idx [B, T] into slots start..start+T-1 and returns the final norm's output there."""

    def __init__(self, model: GPT, batch: int, slots: int, attention: str = "sdpa"):
        cfg = model.config
        # "sdpa"; "matmul": written out; "reduce": decode steps as broadcast products summed (for the compiled
        # step), a prefill as "matmul"
        self.attention = attention
        p = next(model.parameters())
        self.model, self.cfg, self.slots = model, cfg, slots
        self.decoder: Decoder | None = None  # sample()'s recorded decode step over this cache, kept with it
        # one tensor per layer: under autograd (RL's padded forward) each is written once, then read
        shape = (batch, cfg.kv_heads, slots, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(cfg.n_layer)]
        self.key_valid = torch.zeros(batch, slots, dtype=torch.bool, device=p.device)
        self.slot_ids = torch.arange(slots, device=p.device)
        self.rope = None
        if cfg.pos_embedding == "rope":
            self.rope = reference.rope_tables(cfg.block_size, cfg.head_dim, cfg.rope_theta, p.device)

    def forward(self, idx: torch.Tensor, pos: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """idx, pos [B, T]; start: 0-d long tensor (a tensor, so that a recorded graph reads it anew)."""
        tr = self.model.transformer
        x = tr.wte(idx)
        if "wpe" in tr:
            x = x + tr.wpe(pos)
        rope = None
        if self.rope is not None:
            rope = tuple(t[pos].unsqueeze(1) for t in self.rope)  # [B, 1, T, D/2]
        T = idx.shape[1]
        written = start + torch.arange(T, device=idx.device)
        # attend to the real tokens (key_valid, which the caller keeps) at or before one's own slot, and to
        # oneself: a padding row that sees nothing would turn to NaN, and its values with it
        own = self.slot_ids[None, :] == written[:, None]
        mask = (self.key_valid[:, None, None, :] | own) & (self.slot_ids[None, :] <= written[:, None])
        for layer, block in enumerate(tr.h):
            x = x + self._attend(block.attn, block.ln_1(x), layer, written, mask, rope)
            x = x + block.mlp(block.ln_2(x))
        return tr.ln_f(x)

    def _attend(self, attn, x, layer, written, mask, rope) -> torch.Tensor:
        B, T, _ = x.shape
        H, G, D = attn.n_head, attn.n_kv_head, self.cfg.head_dim
        q, k, v = (t.view(B, T, -1, D).transpose(1, 2) for t in attn.c_attn(x).split([H * D, G * D, G * D], 2))
        if attn.qk_norm:
            q, k = reference.rmsnorm(q, None, RMS_EPS), reference.rmsnorm(k, None, RMS_EPS)
        if rope is not None:
            q, k = _rope(q, *rope), _rope(k, *rope)
        self.k[layer].index_copy_(2, written, k.to(self.k[layer].dtype))
        self.v[layer].index_copy_(2, written, v.to(self.v[layer].dtype))
        K, V = self.k[layer], self.v[layer]
        if G != H:
            K, V = K.repeat_interleave(H // G, 1), V.repeat_interleave(H // G, 1)
        if self.attention == "reduce" and T == 1:
            # one query a row: q.K and p.V as broadcast products summed over D and over the slots, which the
            # compiled step fuses into one pass over each cache tensor (batched matmuls of one row ran as
            # slow small-GEMM and GEMV kernels: 40% of a decode step's GPU time on the H200)
            att = (q.float() * K.float()).sum(-1).unsqueeze(2) * D ** -0.5  # [B, H, 1, slots]
            p = att.masked_fill(~mask, float("-inf")).softmax(-1)
            y = (p.transpose(-2, -1) * V.float()).sum(-2, keepdim=True).to(q.dtype)  # [B, H, 1, D]
        elif self.attention in ("matmul", "reduce"):
            att = (q @ K.transpose(-2, -1)).float() * D ** -0.5
            y = (att.masked_fill(~mask, float("-inf")).softmax(-1).to(V.dtype) @ V)
        else:
            y = F.scaled_dot_product_attention(q, K.to(q.dtype), V.to(q.dtype), attn_mask=mask)
        return attn.c_proj(y.transpose(1, 2).reshape(B, T, H * D))


@dataclass
class Rollout:
    """Sampled continuations: tokens [B, N] (N = max_new_tokens; after a stop token, padding) and lengths [B]
    (the tokens up to and with the first stop token, or N), after the left-padded prompts [B, P] and their mask
    of real tokens."""
    tokens: torch.Tensor
    lengths: torch.Tensor
    prompts: torch.Tensor
    prompt_valid: torch.Tensor


def left_pad(prompts: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx [B, P], valid [B, P]) with each prompt at the right end of its row."""
    P = max(len(p) for p in prompts)
    idx = torch.full((len(prompts), P), pad, dtype=torch.long)
    valid = torch.zeros(len(prompts), P, dtype=torch.bool)
    for i, p in enumerate(prompts):
        if p:
            idx[i, P - len(p):] = torch.tensor(p)
            valid[i, P - len(p):] = True
    return idx.to(device), valid.to(device)


def positions(valid: torch.Tensor) -> torch.Tensor:
    """Per-row positions of a left-padded batch: 0 at each row's first real token (padding gets 0 too)."""
    return (valid.long().cumsum(1) - 1).clamp(min=0)


def choose(logits: torch.Tensor, temperature: float, top_k: int | None, noise: torch.Tensor | None) -> torch.Tensor:
    """One token per row from logits [B, V] (fp32): greedy at temperature 0, else a draw from softmax(logits /
    T) over the top_k likeliest (all: None or 0), made as argmax(p / E) = argmax(logits / T - log E) with
    E ~ Exp(1) in `noise` [B, V] (the exponential race: the same distribution as torch.multinomial, in
    kernels that a CUDA graph can hold, since the noise is drawn outside it)."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return (logits - noise.log()).argmax(-1)  # = argmax(softmax / E), without the softmax's passes


def _logits(h: torch.Tensor, head: torch.Tensor, vocab: int) -> torch.Tensor:
    """fp32 logits [B, vocab] of the last hidden states h [B, C] under the (padded) head."""
    return F.linear(h, head)[:, :vocab].float()


def pick(logits: torch.Tensor, temperature: float, top_k: int | None, gen: torch.Generator) -> torch.Tensor:
    """choose() with fresh noise from gen."""
    noise = None if temperature == 0 else torch.empty_like(logits).exponential_(generator=gen)
    return choose(logits, temperature, top_k, noise)


def sampling_copy(model: GPT, twin: GPT | None = None) -> GPT:
    """The model as the sampler runs it: in bf16 on CUDA (no autocast casts in the recorded graph; the sampled
    tokens' log-probabilities are recomputed by the trainer's own forward), itself on the CPU. Given the twin
    of an earlier call, its weights are refreshed in place, which keeps its recorded decode graphs valid."""
    if next(model.parameters()).device.type != "cuda":
        return model
    if twin is not None:
        with torch.no_grad():
            for mine, theirs in zip(twin.parameters(), model.parameters()):
                mine.copy_(theirs)
        return twin
    twin = plain_copy(model).to(torch.bfloat16)
    twin.ops = "torch"
    return twin.eval()


def plain_copy(model: GPT) -> GPT:
    """A deep copy without the sampler's caches and recorded graphs (which cannot be copied, and belong to
    the original's memory)."""
    decoders = model.__dict__.pop("_decoders", None)
    try:
        return copy.deepcopy(model)
    finally:
        if decoders is not None:
            model._decoders = decoders


@torch.no_grad()
def sample(model: GPT, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
           top_k: int | None = None, gen: torch.Generator | None = None, stop_token: int | None = None,
           pad: int = 0, cuda_graph: bool = True, attention: str = "sdpa", compiled: bool = False,
           rows: slice | None = None, global_batch: int | None = None) -> Rollout:
    """Continue each prompt (token lists, any lengths, at least one token each) by max_new_tokens tokens.
    Rows that emitted stop_token keep running (fixed shapes) and are cut by `lengths`.
    rows, global_batch: these prompts are rows `rows` of a batch of global_batch spread over processes; each
    step's noise is drawn for the whole batch from gen (seeded alike everywhere) and these rows' kept, so a
    row's tokens do not depend on how the batch is split (an Exp(1) fill of 256 x 50304 is ~20 us on a GPU)."""
    device = next(model.parameters()).device
    if any(len(p) == 0 for p in prompts):
        raise ValueError("sample: every prompt needs at least one token")
    idx, valid = left_pad(prompts, pad, device)
    B, P = idx.shape
    if P + max_new_tokens > model.config.block_size:
        raise ValueError(f"sample: {P} prompt + {max_new_tokens} new tokens exceed block_size {model.config.block_size}")
    gen = gen or torch.Generator(device).manual_seed(0)
    V = model.config.vocab_size
    whole = None
    if global_batch is not None and temperature:
        if len(range(global_batch)[rows]) != B:
            raise ValueError(f"sample: rows {rows} of {global_batch} are not the {B} prompts given")
        whole = torch.empty(global_batch, V, device=device)

    def fill(noise: torch.Tensor) -> torch.Tensor:  # the step's Exp(1) noise, in place (outside any graph)
        if whole is None:
            return noise.exponential_(generator=gen)
        return noise.copy_(whole.exponential_(generator=gen)[rows])

    # a model keeps its last few caches and recorded decode steps: the next call of the same shape (the next
    # RL rollout, a benchmark's repeat) replays the graph instead of recording it again
    cached = model.__dict__.setdefault("_decoders", {})
    key = (B, P, max_new_tokens, temperature, top_k, str(device), attention, compiled)
    net = cached[key] = cached.pop(key, None) or CachedGPT(model, B, P + max_new_tokens, attention)
    while len(cached) > 4:
        cached.pop(next(iter(cached)))
    net.key_valid.zero_()
    net.key_valid[:, :P] = valid  # padding slots stay False for good
    pos = positions(valid)
    # the whole padded head (50304 rows): its GEMM runs on aligned tiles; the 50257 rows alone fell to a
    # slow unaligned kernel on the H200 (214 of 1,770 us a decode step). Padding columns are cut in _logits
    head = model.lm_head.weight
    h = net.forward(idx, pos, torch.zeros((), dtype=torch.long, device=device))
    out = torch.empty(B, max_new_tokens, dtype=torch.long, device=device)
    logits = _logits(h[:, -1], head, model.config.vocab_size)
    out[:, 0] = choose(logits, temperature, top_k, fill(torch.empty_like(logits)) if temperature else None)
    if max_new_tokens > 1:
        if net.decoder is None:
            net.decoder = Decoder(net, head, model.config.vocab_size, temperature, top_k, out[:, :1],
                                  pos[:, -1:] + 1, P, compiled)
        else:
            net.decoder.reset(out[:, :1], pos[:, -1:] + 1, P)
        step = net.decoder
        run = step.replay if cuda_graph and device.type == "cuda" else step.eager
        for i in range(1, max_new_tokens):
            if temperature:
                fill(step.noise)
            out[:, i] = run()
    lengths = torch.full((B,), max_new_tokens, dtype=torch.long, device=device)
    if stop_token is not None:
        hit = out == stop_token
        lengths = torch.where(hit.any(1), hit.float().argmax(1) + 1, lengths)
    return Rollout(out, lengths, idx, valid)


class Decoder:
    """One decode step over fixed buffers: the last token in, the next token out, then the position and the
    cache slot move on by one. Every step is the same kernels on the same memory, so on CUDA it is recorded
    once as a graph and replayed (the noise of each draw is filled in before)."""

    def __init__(self, net: CachedGPT, head, vocab: int, temperature: float, top_k: int | None,
                 first: torch.Tensor, pos: torch.Tensor, slot: int, compiled: bool = False):
        self.net, self.head, self.vocab, self.temperature, self.top_k = net, head, vocab, temperature, top_k
        # compiled: the step's elementwise work fused by torch.compile (inductor) before the graph records it
        self._step = torch.compile(self._next, dynamic=False) if compiled else self._next
        self.tok, self.pos = first.clone(), pos.clone()
        self.slot = torch.tensor(slot, device=first.device)
        self.noise = torch.empty(first.shape[0], vocab, device=first.device)
        self.graph = None

    def reset(self, first: torch.Tensor, pos: torch.Tensor, slot: int) -> None:
        """Start again from `first` at `pos`, cache slot `slot`: the same buffers, so a recorded graph holds."""
        self.tok.copy_(first)
        self.pos.copy_(pos)
        self.slot.fill_(slot)

    def _next(self) -> torch.Tensor:
        self.net.key_valid.index_fill_(1, self.slot.view(1), True)
        h = self.net.forward(self.tok, self.pos, self.slot)
        return choose(_logits(h[:, -1], self.head, self.vocab), self.temperature, self.top_k, self.noise)

    def eager(self) -> torch.Tensor:
        nxt = self._step()
        self.tok.copy_(nxt[:, None])
        self.pos += 1
        self.slot += 1
        return self.tok[:, 0]

    def replay(self) -> torch.Tensor:
        if self.graph is None:
            # record the first step (warmed up on a side stream, as torch.cuda.graphs asks); capture does not
            # run it, so the recorded graph's first replay below is that step
            state = (self.tok.clone(), self.pos.clone(), self.slot.clone(), self.net.key_valid.clone())
            side = torch.cuda.Stream(self.tok.device)
            side.wait_stream(torch.cuda.current_stream(self.tok.device))
            with torch.cuda.stream(side):
                try:
                    self.eager()  # compiles the step when it is to be compiled
                except Exception as e:  # noqa: BLE001 - inductor cannot build it here: the plain step still can
                    if self._step == self._next:
                        raise
                    warnings.warn(f"sampler: the compiled decode step failed ({type(e).__name__}: {e}); "
                                  "recording the plain one")
                    self._step = self._next
                    if self.net.attention == "reduce":  # uncompiled, its broadcast products are fp32 [B, H, S, D]
                        self.net.attention = "matmul"
                    self.eager()
            torch.cuda.current_stream(self.tok.device).wait_stream(side)
            for buf, saved in zip((self.tok, self.pos, self.slot, self.net.key_valid), state):
                buf.copy_(saved)  # the warm-up's cache writes are rewritten by the same step
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self.eager()
        self.graph.replay()
        return self.out
