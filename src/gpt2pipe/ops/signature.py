"""Each kernel's parameter types, read once from its `extern "C" __global__` signature, and the check of
every launch against them.

A CUDA kernel launched through CuPy gets raw bytes: an int where the kernel reads `long long`, a float32
tensor where it reads `bf16*`, or one argument too few all run without complaint and compute garbage. So
the C signature in the .cu file is the single declaration: `parse_signatures` reads it (following the
file's `#include "..."` headers for typedefs such as `bf16` and expanding the one-parameter macros that
stamp out kernel variants), and `bind_arguments` turns a launch's Python arguments into exactly the
values the kernel declares, or raises one `KernelArgumentError` naming the kernel and the parameter.
Both are pure functions: the checks are tested on CPU, without a GPU or a compiler.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gpt2pipe import Gpt2pipeError


class KernelArgumentError(Gpt2pipeError):
    """A launch whose arguments do not match the kernel's C signature."""


# base C type (typedefs resolved, qualifiers dropped) -> torch dtypes a pointer of it may point to
POINTER_DTYPES: dict[str, tuple[torch.dtype, ...]] = {
    "__nv_bfloat16": (torch.bfloat16,),
    "float": (torch.float32,),
    "double": (torch.float64,),
    "int": (torch.int32,),
    "unsigned int": (torch.int32, torch.uint32) if hasattr(torch, "uint32") else (torch.int32,),
    "long long": (torch.int64,),
    "unsigned long long": (torch.int64,),
    # fp8 bytes: our kernels write e4m3 or e5m2 through `unsigned char*` (fp8.cuh's `fp8`)
    "unsigned char": (torch.uint8, torch.float8_e4m3fn, torch.float8_e5m2),
    "__nv_fp8_e4m3": (torch.float8_e4m3fn,),
    "__nv_fp8_e5m2": (torch.float8_e5m2,),
    "void": (),  # any dtype
}
# scalar C type -> (numpy type it is passed as, smallest and largest value)
SCALARS: dict[str, tuple[type, int | None, int | None]] = {
    "int": (np.int32, -(2**31), 2**31 - 1),
    "unsigned int": (np.uint32, 0, 2**32 - 1),
    "long long": (np.int64, -(2**63), 2**63 - 1),
    "unsigned long long": (np.uint64, 0, 2**64 - 1),
    "float": (np.float32, None, None),
    "double": (np.float64, None, None),
}
ANY_DTYPE = tuple(v for v in vars(torch).values() if isinstance(v, torch.dtype))
QUALIFIERS = {"const", "__restrict__", "volatile", "struct"}


@dataclass(frozen=True)
class KernelParam:
    """One parameter of a kernel: its name, its base C type and whether it is a pointer; with what a launch
    argument for it may be (worked out once here, since every launch checks every argument)."""

    name: str
    ctype: str
    pointer: bool
    dtypes: tuple = ()  # pointer: the dtypes its tensor may have
    numpy: type | None = None  # scalar: the numpy type it is passed as
    low: int | None = None  # integer scalar: its C range
    high: int | None = None

    @classmethod
    def of(cls, name: str, ctype: str, pointer: bool) -> KernelParam:
        if pointer:
            return cls(name, ctype, True, POINTER_DTYPES[ctype] or ANY_DTYPE)
        kind, low, high = SCALARS[ctype]
        return cls(name, ctype, False, (), kind, low, high)

    def describe(self) -> str:
        return f"{self.ctype}{'*' if self.pointer else ''} {self.name}"


def _strip_comments(code: str) -> str:
    code = re.sub(r"/\*.*?\*/", " ", code, flags=re.S)
    return re.sub(r"//[^\n]*", "", code)


def _typedefs(code: str) -> dict[str, str]:
    return {alias: " ".join(base.split()) for base, alias in re.findall(r"\btypedef\s+([\w\s]+?)\s+(\w+)\s*;", code)}


def _expand_macros(code: str) -> str:
    """Expand the one-parameter function-like macros whose body defines kernels (LN_VEC_ENTRY(V) ...)."""
    code = code.replace("\\\n", " ")
    macros = {m.group(1): (m.group(2), m.group(3))
              for m in re.finditer(r"^[ \t]*#define\s+(\w+)\((\w+)\)(.*)$", code, flags=re.M) if "extern" in m.group(3)}
    code = re.sub(r"^[ \t]*#define[^\n]*$", "", code, flags=re.M)
    for name, (param, body) in macros.items():
        def expand(m, param=param, body=body):
            arg = m.group(1).strip()
            text = re.sub(rf"\s*##\s*{param}\b", arg, body)
            return re.sub(rf"\b{param}\b", arg, text)

        code = re.sub(rf"^[ \t]*{name}\(([^)]*)\)", expand, code, flags=re.M)
    return code


def _parse_param(text: str, typedefs: dict[str, str], where: str) -> KernelParam:
    pointer = text.count("*")
    words = [w for w in re.split(r"[\s*]+", text) if w and w not in QUALIFIERS]
    if pointer > 1 or len(words) < 2:
        raise Gpt2pipeError(f"{where}: cannot read parameter {text.strip()!r}")
    name, ctype = words[-1], " ".join(words[:-1])
    while ctype in typedefs:
        ctype = typedefs[ctype]
    known = POINTER_DTYPES if pointer else SCALARS
    if ctype not in known:
        raise Gpt2pipeError(f"{where}: parameter {text.strip()!r} has a type launch() does not know ({ctype})")
    return KernelParam.of(name, ctype, bool(pointer))


def parse_signatures(code: str, headers: dict[str, str] | None = None,
                     where: str = "kernel source") -> dict[str, tuple[KernelParam, ...]]:
    """{kernel name: its parameters} for every `extern "C" __global__` function in `code`. `headers` maps
    an include name to its text (for typedefs); includes not in it are ignored (system headers)."""
    headers = headers or {}
    included, pending, seen = [], re.findall(r'#include\s+"([^"]+)"', code), set()
    while pending:  # headers of headers, each once
        name = pending.pop()
        if name in seen or name not in headers:
            continue
        seen.add(name)
        included.append(headers[name])
        pending += re.findall(r'#include\s+"([^"]+)"', headers[name])
    typedefs = _typedefs(_strip_comments("\n".join(included + [code])))
    typedefs = {**typedefs, "bf16": typedefs.get("bf16", "__nv_bfloat16")}
    body = _expand_macros(_strip_comments(code))
    body = re.sub(r"__launch_bounds__\s*\((?:[^()]|\([^()]*\))*\)", " ", body)
    kernels = {}
    for m in re.finditer(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', body):
        name, params = m.group(1), m.group(2).strip()
        parts = [] if params in ("", "void") else params.split(",")
        kernels[name] = tuple(_parse_param(p, typedefs, f"{where}: {name}") for p in parts)
    return kernels


def read_signatures(path: Path) -> dict[str, tuple[KernelParam, ...]]:
    """parse_signatures of one kernel file, with the headers beside it."""
    headers = {h.name: h.read_text() for h in path.parent.glob("*.cuh")}
    return parse_signatures(path.read_text(), headers, where=str(path.name))


def bind_arguments(kernel: str, params: tuple[KernelParam, ...], args: tuple = (), kwargs: dict | None = None,
                   require_cuda: bool = True) -> tuple:
    """The launch arguments of `kernel` as the values it declares, or a KernelArgumentError.

    Positional arguments fill the parameters in order, keyword arguments by name (Python's rules).
    Pointers take a contiguous tensor of a matching dtype (on CUDA unless require_cuda is False) or None
    (a null pointer); integer parameters take ints within their C range, float parameters numbers."""
    if kwargs or len(args) != len(params):
        args = _order(kernel, params, args, kwargs or {})
    return tuple(_convert(kernel, p, value, require_cuda) for p, value in zip(params, args))


def _signature(kernel: str, params: tuple[KernelParam, ...]) -> str:
    return f"{kernel}({', '.join(p.describe() for p in params)})"


def _order(kernel: str, params: tuple[KernelParam, ...], args: tuple, kwargs: dict) -> tuple:
    """Positional and keyword arguments as one tuple in parameter order."""
    names = [p.name for p in params]
    if len(args) > len(params):
        raise KernelArgumentError(f"kernel {kernel}: {len(args)} positional arguments for {len(params)} "
                                  f"parameters: {_signature(kernel, params)}")
    values = dict(zip(names, args))
    for key, value in kwargs.items():
        if key not in names:
            raise KernelArgumentError(f"kernel {kernel}: no parameter named {key!r}: {_signature(kernel, params)}")
        if key in values:
            raise KernelArgumentError(f"kernel {kernel}: parameter {key!r} given twice: {_signature(kernel, params)}")
        values[key] = value
    missing = [n for n in names if n not in values]
    if missing:
        raise KernelArgumentError(f"kernel {kernel}: missing argument(s) {', '.join(missing)}: "
                                  f"{_signature(kernel, params)}")
    return tuple(values[n] for n in names)


def _convert(kernel: str, param: KernelParam, value, require_cuda: bool):
    if param.pointer:
        if value is None:
            return np.uint64(0)
        if (type(value) is torch.Tensor or isinstance(value, torch.Tensor)) and value.dtype in param.dtypes \
                and (value.is_cuda or not require_cuda) and value.is_contiguous():
            return np.uint64(value.data_ptr())  # the common case, checked in one go
    elif param.low is not None:
        if isinstance(value, (int, np.integer)) and param.low <= value <= param.high:
            return param.numpy(value)
    elif isinstance(value, (float, int, np.floating, np.integer)) and not isinstance(value, bool):
        return param.numpy(value)
    raise _mismatch(kernel, param, value, require_cuda)


def _mismatch(kernel: str, param: KernelParam, value, require_cuda: bool) -> KernelArgumentError:
    """Why `value` does not fit `param`, as the error launch() raises."""
    def fail(why: str):
        return KernelArgumentError(f"kernel {kernel}, parameter {param.describe()}: {why}")

    if param.pointer:
        if not isinstance(value, torch.Tensor):
            return fail(f"needs a tensor or None, got {type(value).__name__}")
        if value.dtype not in param.dtypes:
            return fail(f"needs a tensor of {' or '.join(str(d) for d in param.dtypes)}, got {value.dtype}")
        if require_cuda and not value.is_cuda:
            return fail(f"needs a CUDA tensor, got one on {value.device}")
        return fail(f"needs a contiguous tensor (shape {tuple(value.shape)}, strides {value.stride()})")
    if isinstance(value, torch.Tensor):
        return fail("needs a number, got a tensor (pass a pointer parameter or .item())")
    if param.low is not None:
        if not isinstance(value, (int, np.integer)):
            return fail(f"needs an integer, got {type(value).__name__} {value!r}")
        return fail(f"{int(value)} is outside the range of {param.ctype} [{param.low}, {param.high}]")
    return fail(f"needs a number, got {type(value).__name__} {value!r}")
