"""The per-op table of `gpt2pipe bench` times every kernel we own (GPU)."""

import re

import pytest
import torch

pytest.importorskip("cupy", reason="CuPy is not installed")


@pytest.mark.gpu
def test_the_kernel_table_launches_every_kernel_we_own(monkeypatch):
    """Every extern "C" kernel of every .cu file in ops/kernels (a new file too) is launched while the table
    is made (the `_vecV` instances of one templated kernel count as one: a GPT-2 width picks one of them)."""
    from gpt2pipe.bench import kernels as table
    from gpt2pipe.bench import timing
    from gpt2pipe.config import ModelConfig
    from gpt2pipe.ops import cuda
    from gpt2pipe.ops.fp8 import has_fp8_gemms

    if not has_fp8_gemms():
        pytest.skip("the fp8 rows need an H100 or newer")
    # the `_vecV` instances of one templated kernel count as one (a GPT-2 width picks one of them), and so do
    # its `_bf16`/`_f32` instances (ops/arch.py's kernels: the table times bf16, what the model runs)
    family = lambda name: re.sub(r"_vec\d+$", "_vec", re.sub(r"_(bf16|f32)$", "", name))  # noqa: E731
    launched = set()
    original = cuda.function

    def recording(name, kernel):
        launched.add((name, family(kernel)))
        return original(name, kernel)

    monkeypatch.setattr(cuda, "function", recording)
    monkeypatch.setattr(timing, "time_ms", lambda fn, reps=1, warmup=0: (fn(), torch.cuda.synchronize(), 1.0)[-1])
    rows = table.kernel_table(ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=64), tokens=2048)
    owned = {(path.stem, family(k)) for path in cuda.sources() for k in cuda.signatures(path.stem)}
    assert owned - launched == set()
    assert len(rows) == len({name for name, *_ in rows})  # one row per op, each named once
    assert all(ours > 0 and nbytes > 0 for _, ours, _, nbytes in rows)
