"""The model section's typed view and the shape rules a schema cannot say (ModelConfig.problem).

Checkpoints carry this dataclass too (model_config), so it is checked both after the schema and on its own."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gpt2pipe.schema import Problem, schema

@dataclass(frozen=True)
class ModelConfig:
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024
    vocab_size: int = 50257
    padded_vocab_size: int = 50304
    # architecture options (ARCH_KEYS); the defaults are GPT-2's, so older configs and checkpoints load unchanged
    pos_embedding: str = "learned"
    rope_theta: float = 10000.0
    norm: str = "layernorm"
    mlp: str = "gelu"
    mlp_hidden: int | None = None
    qk_norm: bool = False
    n_kv_head: int | None = None
    tie_embeddings: bool = True
    bias: bool = True

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def hidden(self) -> int:
        """The MLP's hidden width: mlp_hidden, else 4 * n_embd, or for SwiGLU LLaMA's 8/3 * n_embd rounded up
        to a multiple of 64 (two hidden matrices instead of one at about the same parameter count)."""
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        if self.mlp == "swiglu":
            return -(-8 * self.n_embd // 192) * 64  # ceil(8/3 * n_embd / 64) * 64
        return 4 * self.n_embd

    def arch_changes(self) -> dict:
        """The architecture options that make this model differ from GPT-2 ({} for GPT-2), judged by their
        effect: n_kv_head = n_head and the activation's default mlp_hidden spelled out change nothing, and
        rope_theta matters only with rotary positions."""
        def differs(k: str) -> bool:
            if k == "n_kv_head":
                return self.kv_heads != self.n_head
            if k == "mlp_hidden":  # against the activation's own default width
                return self.hidden != dataclasses.replace(self, mlp_hidden=None).hidden
            if k == "rope_theta":
                return self.pos_embedding == "rope" and self.rope_theta != _GPT2_ARCH[k]
            return getattr(self, k) != _GPT2_ARCH[k]

        return {k: getattr(self, k) for k in ARCH_KEYS if differs(k)}

    def resolved(self) -> ModelConfig:
        """The same model with n_kv_head and mlp_hidden spelled out: equal for equal shapes."""
        return dataclasses.replace(self, n_kv_head=self.kv_heads, mlp_hidden=self.hidden)

    def problem(self, fp8: bool = False) -> Problem | None:
        """The first rule this shape breaks, in one line (the schema cannot say these), or None."""
        H, G = self.n_head, self.kv_heads
        # a config read from a checkpoint has not been through the schema: its option values are checked here
        enums = {k: schema()["properties"]["model"]["properties"][k]["enum"] for k in ("pos_embedding", "norm", "mlp")}
        checks = [(getattr(self, k) in allowed, f"model.{k}: {getattr(self, k)!r} is not one of {allowed}", (f"model.{k}",))
                  for k, allowed in enums.items()]
        checks += [
            (self.n_embd % H == 0, f"model.n_embd must be divisible by model.n_head ({self.n_embd} % {H} != 0)",
             ("model.n_embd", "model.n_head")),
            (H % G == 0, f"model.n_head must be divisible by model.n_kv_head ({H} % {G} != 0)",
             ("model.n_head", "model.n_kv_head")),
            (self.pos_embedding != "rope" or self.head_dim % 2 == 0,
             f"model.pos_embedding rope rotates pairs of channels: the head dimension n_embd / n_head must be even "
             f"(got {self.n_embd} / {H} = {self.n_embd / H:g})", ("model.pos_embedding", "model.n_embd", "model.n_head")),
            (self.padded_vocab_size >= self.vocab_size,
             f"model.padded_vocab_size must be >= model.vocab_size ({self.padded_vocab_size} < {self.vocab_size})",
             ("model.padded_vocab_size", "model.vocab_size")),
            (not (fp8 and self.arch_changes()),
             f"train.fp8 runs GPT-2's LayerNorm/GELU blocks only, not model "
             f"{', '.join(f'{k} {v}' for k, v in self.arch_changes().items())}: set train.fp8 false",
             ("train.fp8", *(f"model.{k}" for k in self.arch_changes()))),
        ]
        return next((Problem(msg, keys) for ok, msg, keys in checks if not ok), None)


ARCH_KEYS = ("pos_embedding", "rope_theta", "norm", "mlp", "mlp_hidden", "qk_norm", "n_kv_head", "tie_embeddings",
             "bias")
_GPT2_ARCH = {k: getattr(ModelConfig, k) for k in ARCH_KEYS}
