"""Compile our CUDA sources at run time with NVRTC (through CuPy), cache them, and launch on torch tensors.

Launches go on torch's current stream (so they order correctly with torch's own kernels and can be
captured in CUDA graphs) and take raw device pointers: no copies, no CuPy arrays.
"""

from __future__ import annotations

import functools
import hashlib
import re
from importlib import resources
from pathlib import Path

import torch

from gpt2pipe import Gpt2pipeError
from gpt2pipe.ops.signature import KernelArgumentError, KernelParam, bind_arguments, read_signatures

OPTIONS = ("-std=c++17", "--use_fast_math")


def kernel_dir() -> Path:
    return Path(str(resources.files("gpt2pipe.ops") / "kernels"))


# every file the kernels are compiled from: a wheel or install without one of them cannot run the kernels
SOURCES = ("activation.cu", "adamw.cu", "bias_grad.cu", "classifier.cu", "encoder.cu", "fp8.cu", "gelu.cu",
           "global_norm.cu", "layernorm.cu", "rmsnorm.cu", "rope.cu", "common.cuh", "fp8.cuh", "typed.cuh")


def sources() -> list[Path]:
    return sorted(kernel_dir().glob("*.cu"))


def missing_sources() -> list[str]:
    """The kernel files this installation lacks (none, unless packaging went wrong)."""
    return [name for name in SOURCES if not (kernel_dir() / name).is_file()]


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


@functools.cache
def signatures(name: str) -> dict[str, tuple[KernelParam, ...]]:
    """{kernel: parameters} of kernels/<name>.cu, read from its extern "C" signatures (ops/signature.py)."""
    path = kernel_dir() / f"{name}.cu"
    if not path.is_file():
        raise Gpt2pipeError(f"{path}: kernel source not found")
    return read_signatures(path)


def kernel_arguments(name: str, kernel: str, args: tuple, kwargs: dict, require_cuda: bool = True) -> tuple:
    """The checked launch arguments of kernels/<name>.cu's `kernel` (see signature.bind_arguments)."""
    params = signatures(name).get(kernel)
    if params is None:
        raise KernelArgumentError(f"{name}.cu has no kernel {kernel!r} (it has {', '.join(signatures(name))})")
    return bind_arguments(kernel, params, args, kwargs, require_cuda)


def launch(name: str, kernel: str, grid, block, *args, shared_mem: int = 0, **kwargs) -> None:
    """Run kernels/<name>.cu's `kernel` on torch's current stream.

    Arguments go by position or by the parameter names of the kernel's C signature, and are checked
    against it (count, pointer dtypes, integer ranges): tensors become device pointers, None a null pointer,
    numbers the declared int/long long/float. A mismatch raises KernelArgumentError before anything runs."""
    converted = kernel_arguments(name, kernel, args, kwargs)
    fn = function(name, kernel)
    if shared_mem > 48 * 1024 and fn.max_dynamic_shared_size_bytes < shared_mem:
        fn.max_dynamic_shared_size_bytes = shared_mem
    stream = _stream(torch.cuda.current_stream().cuda_stream)
    fn(tuple(grid) if isinstance(grid, (tuple, list)) else (grid,),
       tuple(block) if isinstance(block, (tuple, list)) else (block,),
       converted, stream=stream, shared_mem=shared_mem)


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


def compile_check(path: Path, arch: str = "compute_90") -> str:
    """Compile one source with NVRTC without a GPU (CI): its PTX, or an error with the compiler log."""
    from cupy.cuda import nvrtc

    prog = nvrtc.createProgram(path.read_text(), path.name, [], [])
    try:
        nvrtc.compileProgram(prog, [f"-arch={arch}", *OPTIONS, *_include_options()])
        ptx = nvrtc.getPTX(prog)
    except nvrtc.NVRTCError as e:
        raise Gpt2pipeError(f"{path}: NVRTC failed ({e}):\n{nvrtc.getProgramLog(prog)}") from None
    finally:
        nvrtc.destroyProgram(prog)
    return ptx.decode() if isinstance(ptx, bytes) else ptx


def ptx_entries(ptx: str) -> dict[str, list[int]]:
    """{kernel: byte size of each parameter} of every entry point in PTX: what the compiler really built,
    to hold the parsed C signatures against."""
    sizes = {"8": 1, "16": 2, "32": 4, "64": 8}
    entries = {}
    for m in re.finditer(r"\.entry\s+(\w+)\s*\(([^)]*)\)", ptx):
        entries[m.group(1)] = [sizes[b] for b in re.findall(r"\.param\s+\.[busf](\d+)", m.group(2))]
    return entries


def blocks(n: int, threads: int = 256, cap: int = 65535 * 8) -> int:
    """Blocks of `threads` for n elements, one per thread, at most `cap` (the kernels then stride)."""
    return max(1, min((n + threads - 1) // threads, cap))


def sm_count() -> int:
    return torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
