"""Compile our CUDA sources at run time with NVRTC (through CuPy), cache them, and launch on torch tensors.

Launches go on torch's current stream (so they order correctly with torch's own kernels and can be
captured in CUDA graphs) and take raw device pointers: no copies, no CuPy arrays.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources
from pathlib import Path

import torch

from gpt2pipe import Gpt2pipeError

OPTIONS = ("-std=c++17", "--use_fast_math")


def kernel_dir() -> Path:
    return Path(str(resources.files("gpt2pipe.ops") / "kernels"))


def sources() -> list[Path]:
    return sorted(kernel_dir().glob("*.cu"))


def _include_options() -> tuple[str, ...]:
    import cupy

    return (f"-I{kernel_dir()}", f"-I{Path(cupy.cuda.get_cuda_path()) / 'include'}")


@functools.cache
def module(name: str):
    """The compiled RawModule of kernels/<name>.cu (CuPy caches the binary on disk across runs)."""
    import cupy

    path = kernel_dir() / f"{name}.cu"
    if not path.is_file():
        raise Gpt2pipeError(f"{path}: kernel source not found")
    # includes are resolved by NVRTC, so edits to the headers must change the cache key too
    headers = hashlib.sha256(b"".join(h.read_bytes() for h in sorted(kernel_dir().glob("*.cuh")))).hexdigest()
    code = path.read_text() + f"\n// headers sha256 {headers}\n"
    return cupy.RawModule(code=code, options=OPTIONS + _include_options())


@functools.cache
def function(name: str, kernel: str):
    return module(name).get_function(kernel)


def launch(name: str, kernel: str, grid, block, *args, shared_mem: int = 0) -> None:
    """Run kernels/<name>.cu's `kernel` on torch's current stream. Tensors go in as device pointers,
    Python ints as int32, floats as float32; pass numpy scalars for other widths."""
    import numpy as np

    converted = []
    for a in args:
        if isinstance(a, torch.Tensor):
            converted.append(np.uint64(a.data_ptr()))
        elif a is None:
            converted.append(np.uint64(0))
        elif isinstance(a, bool):
            converted.append(np.int32(a))
        elif isinstance(a, int):
            converted.append(np.int32(a))
        elif isinstance(a, float):
            converted.append(np.float32(a))
        else:
            converted.append(a)
    fn = function(name, kernel)
    if shared_mem > 48 * 1024 and fn.max_dynamic_shared_size_bytes < shared_mem:
        fn.max_dynamic_shared_size_bytes = shared_mem
    stream = _stream(torch.cuda.current_stream().cuda_stream)
    fn(tuple(grid) if isinstance(grid, (tuple, list)) else (grid,),
       tuple(block) if isinstance(block, (tuple, list)) else (block,),
       tuple(converted), stream=stream, shared_mem=shared_mem)


@functools.lru_cache(maxsize=64)
def _stream(pointer: int):
    """CuPy's handle on a torch stream, made once per stream."""
    import warnings

    import cupy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ExternalStream still works in CuPy 14
        return cupy.cuda.ExternalStream(pointer)


def aligned(*tensors) -> bool:
    """All tensors start on a 16-byte boundary (the vectorised kernels' requirement)."""
    return all(t is None or t.data_ptr() % 16 == 0 for t in tensors)


def compile_check(path: Path, arch: str = "compute_90") -> None:
    """Compile one source with NVRTC without a GPU (CI): raises with the compiler log on any error."""
    from cupy.cuda import nvrtc

    prog = nvrtc.createProgram(path.read_text(), path.name, [], [])
    try:
        nvrtc.compileProgram(prog, [f"-arch={arch}", *OPTIONS, *_include_options()])
    except nvrtc.NVRTCError as e:
        raise Gpt2pipeError(f"{path}: NVRTC failed ({e}):\n{nvrtc.getProgramLog(prog)}") from None
    finally:
        nvrtc.destroyProgram(prog)


def sm_count() -> int:
    return torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
