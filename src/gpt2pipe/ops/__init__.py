"""The model's operations two ways: our CUDA kernels (through CuPy) and plain-torch references.

`ops: kernels` in the config runs the kernels on a CUDA device; everywhere else the torch references run.
"""

from __future__ import annotations

import functools


@functools.cache
def kernels_available() -> bool:
    """True when a CUDA device, CuPy and every kernel source are there (a broken install says no here,
    rather than failing at the first launch with "kernel source not found")."""
    import torch

    if not torch.cuda.is_available():
        return False
    try:
        import cupy  # noqa: F401  (importable is all this checks)
    except ImportError:
        return False
    from gpt2pipe.ops.cuda import missing_sources

    return not missing_sources()
