"""cuBLASLt GEMMs with fused epilogues, called through ctypes on the cuBLASLt library torch already loaded.

torch exposes the bias epilogue (F.linear) and, through `torch._addmm_activation`, bias+GELU without the
GELU input kept for backward; nothing in torch or CuPy exposes GELU_AUX_BIAS (the fc GEMM writes both
gelu(x W^T + b) and its input) or DGELU (the input-gradient GEMM of proj applies GELU's derivative to
its own output). Those two take the bias+GELU kernels' passes over the 4C-wide activation out of the MLP,
forward and backward (llm.c's `gelu_fusion`): on the H100, 737 -> 628 us forward and 946 -> 784 us
backward per 65,536-token micro-batch (dev/fusion_micro.py).

A row-major torch matrix is the column-major cuBLAS matrix of its transpose, so y = x W^T (x [N, K],
W [M, K]) is computed as the column-major y^T = op(W) x^T with W read transposed — llm.c's
matmul_cublaslt layouts. Everything runs on torch's current stream with a per-device workspace, so the
calls order with torch's kernels and are captured by CUDA graphs like them.

`available()` is False without a CUDA device or without the library; callers then use the unfused path.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os

import torch

# cublasLt.h (CUDA 12 / 13: stable values)
COMPUTE_32F = 68
R_32F, R_16BF = 0, 14
OP_N, OP_T = 0, 1
DESC_TRANSA, DESC_TRANSB, DESC_EPILOGUE, DESC_BIAS_POINTER = 3, 4, 7, 8
DESC_AUX_POINTER, DESC_AUX_LD, DESC_BIAS_DATA_TYPE = 11, 12, 26
PREF_MAX_WORKSPACE_BYTES = 1
PREF_MIN_ALIGNMENT = {"a": 5, "b": 6, "c": 7, "d": 8}  # bytes each pointer is aligned to (default: 256)
EPILOGUE = {"gelu_aux_bias": 164, "dgelu": 192, "bgradb": 512,
            "default": 1, "dgelu_bgrad": 208}  # the last two: dev/fusion_micro.py only
WORKSPACE_BYTES = 32 * 2**20  # what torch gives cuBLASLt on Hopper


class _Heuristic(ctypes.Structure):
    _fields_ = [("algo", ctypes.c_uint64 * 8), ("workspace_size", ctypes.c_size_t), ("state", ctypes.c_int),
                ("waves_count", ctypes.c_float), ("reserved", ctypes.c_int * 4)]


class CublasLtError(RuntimeError):
    pass


class NoAlgorithm(CublasLtError):
    """cuBLASLt's heuristic offers no algorithm for this shape and epilogue."""


def _library_paths() -> list[str]:
    """Where torch's cuBLASLt is: already mapped into this process (torch loads it with CUDA), else its wheel."""
    found = []
    try:
        with open("/proc/self/maps") as maps:
            found = sorted({line.split()[-1] for line in maps if "libcublasLt.so" in line})
    except OSError:
        pass
    root = os.path.dirname(os.path.dirname(torch.__file__))
    found += sorted(glob.glob(os.path.join(root, "nvidia", "**", "libcublasLt.so*"), recursive=True))
    return found + ["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"]


@functools.cache
def _lib():
    torch.cuda.init()  # maps torch's cuBLASLt, so the same copy is used
    torch.empty(1, device="cuda") @ torch.empty(1, device="cuda")
    for path in _library_paths():
        try:
            lib = ctypes.CDLL(path)
            lib.cublasLtMatmul  # noqa: B018 — the symbol must be there
        except (OSError, AttributeError):
            continue
        vp = ctypes.c_void_p
        lib.cublasLtCreate.argtypes = [ctypes.POINTER(vp)]
        lib.cublasLtMatmulDescCreate.argtypes = [ctypes.POINTER(vp), ctypes.c_int, ctypes.c_int]
        lib.cublasLtMatmulDescSetAttribute.argtypes = [vp, ctypes.c_int, vp, ctypes.c_size_t]
        lib.cublasLtMatrixLayoutCreate.argtypes = [ctypes.POINTER(vp), ctypes.c_int, ctypes.c_uint64,
                                                   ctypes.c_uint64, ctypes.c_int64]
        lib.cublasLtMatmulPreferenceCreate.argtypes = [ctypes.POINTER(vp)]
        lib.cublasLtMatmulPreferenceSetAttribute.argtypes = [vp, ctypes.c_int, vp, ctypes.c_size_t]
        lib.cublasLtMatmulAlgoGetHeuristic.argtypes = [vp, vp, vp, vp, vp, vp, vp, ctypes.c_int,
                                                       ctypes.POINTER(_Heuristic), ctypes.POINTER(ctypes.c_int)]
        lib.cublasLtMatmul.argtypes = [vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, ctypes.POINTER(_Heuristic),
                                       vp, ctypes.c_size_t, vp]
        return lib
    return None


@functools.cache
def available() -> bool:
    """cuBLASLt can be called here (a CUDA device, and the library torch uses)."""
    if not torch.cuda.is_available():
        return False
    try:
        return _lib() is not None
    except Exception:  # noqa: BLE001 — any failure to load means: use the unfused path
        return False


def _check(status: int, what: str) -> None:
    if status != 0:
        raise CublasLtError(f"cuBLASLt {what} failed with status {status}")


@functools.cache
def _handle(device: int) -> ctypes.c_void_p:
    handle = ctypes.c_void_p()
    _check(_lib().cublasLtCreate(ctypes.byref(handle)), "create")
    return handle


@functools.cache
def _workspace(device: int) -> torch.Tensor:
    return torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=f"cuda:{device}")


def _set(desc, attribute: int, value) -> None:
    _check(_lib().cublasLtMatmulDescSetAttribute(desc, attribute, ctypes.byref(value), ctypes.sizeof(value)),
           f"descriptor attribute {attribute}")


def _layout(rows: int, cols: int, ld: int) -> ctypes.c_void_p:
    layout = ctypes.c_void_p()
    _check(_lib().cublasLtMatrixLayoutCreate(ctypes.byref(layout), R_16BF, rows, cols, ld), "layout")
    return layout


def alignment(t: torch.Tensor) -> int:
    """The largest power of two up to 256 that t's address is a multiple of: cuBLASLt's heuristic assumes
    256 unless told, and an algorithm picked for 256 may fault on a 16-byte aligned view (a flat buffer's
    parameter at an odd offset, GPT-2 1558M's 1600-wide rows)."""
    ptr = t.data_ptr()
    return min(256, ptr & -ptr) if ptr else 256


@functools.lru_cache(maxsize=256)
def _plan(device: int, m: int, n: int, k: int, trans_a: bool, trans_b: bool, epilogue: str,
          aligned: tuple[int, int, int, int, int]):
    """(descriptor, A, B, D layouts, algorithm) of one bf16 GEMM shape, epilogue and pointer alignment
    (A, B, D, bias, aux; 0: no such pointer), made once: creating them and asking the heuristic costs more CPU
    than the GEMM call itself. Bias and aux pointers are set per call; the heuristic picks by their alignment,
    read from the pointer values on the descriptor, so it is shown stand-ins of the same alignment."""
    lib = _lib()
    desc = ctypes.c_void_p()
    _check(lib.cublasLtMatmulDescCreate(ctypes.byref(desc), COMPUTE_32F, R_32F), "descriptor")
    _set(desc, DESC_TRANSA, ctypes.c_int(OP_T if trans_a else OP_N))
    _set(desc, DESC_TRANSB, ctypes.c_int(OP_T if trans_b else OP_N))
    _set(desc, DESC_EPILOGUE, ctypes.c_int(EPILOGUE[epilogue]))
    _set(desc, DESC_BIAS_DATA_TYPE, ctypes.c_int(R_16BF))
    _set(desc, DESC_AUX_LD, ctypes.c_int64(m))  # the GELU epilogues' input (the others ignore it)
    for attribute, value in ((DESC_BIAS_POINTER, aligned[3]), (DESC_AUX_POINTER, aligned[4])):
        if value:  # a qkv block's bias gradient at C = 1600 is only 128-byte aligned
            _set(desc, attribute, ctypes.c_void_p(value))
    a = _layout(*((k, m) if trans_a else (m, k)), k if trans_a else m)
    b = _layout(*((n, k) if trans_b else (k, n)), n if trans_b else k)
    d = _layout(m, n, m)
    pref = ctypes.c_void_p()
    _check(lib.cublasLtMatmulPreferenceCreate(ctypes.byref(pref)), "preference")
    size = ctypes.c_size_t(WORKSPACE_BYTES)
    _check(lib.cublasLtMatmulPreferenceSetAttribute(pref, PREF_MAX_WORKSPACE_BYTES, ctypes.byref(size),
                                                    ctypes.sizeof(size)), "preference attribute")
    for which, value in zip("abcd", (*aligned[:3], aligned[2])):  # C is D (beta = 0)
        align = ctypes.c_uint32(value)
        _check(lib.cublasLtMatmulPreferenceSetAttribute(pref, PREF_MIN_ALIGNMENT[which], ctypes.byref(align),
                                                        ctypes.sizeof(align)), "alignment preference")
    heuristic, found = _Heuristic(), ctypes.c_int(0)
    _check(lib.cublasLtMatmulAlgoGetHeuristic(_handle(device), desc, a, b, d, d, pref, 1, ctypes.byref(heuristic),
                                              ctypes.byref(found)), "heuristic")
    if found.value == 0:
        raise NoAlgorithm(f"cuBLASLt has no algorithm for m={m} n={n} k={k} epilogue {epilogue}")
    return desc, a, b, d, heuristic


def _matmul(d: torch.Tensor, a: torch.Tensor, b: torch.Tensor, m: int, n: int, k: int, trans_a: bool,
            trans_b: bool, epilogue: str, bias: torch.Tensor | None = None, aux: torch.Tensor | None = None) -> None:
    """D (m x n, column-major) = op(A) op(B) with `epilogue`; all bf16, contiguous, on one device."""
    device = d.device.index if d.device.index is not None else torch.cuda.current_device()
    if device != torch.cuda.current_device():  # the heuristic and the handle answer for the current device
        with torch.cuda.device(device):
            return _matmul(d, a, b, m, n, k, trans_a, trans_b, epilogue, bias, aux)
    desc, la, lb, ld, heuristic = _plan(device, m, n, k, trans_a, trans_b, epilogue,
                                        (alignment(a), alignment(b), alignment(d),
                                         0 if bias is None else alignment(bias), 0 if aux is None else alignment(aux)))
    if bias is not None:
        _set(desc, DESC_BIAS_POINTER, ctypes.c_void_p(bias.data_ptr()))
    if aux is not None:
        _set(desc, DESC_AUX_POINTER, ctypes.c_void_p(aux.data_ptr()))
    alpha, beta = ctypes.c_float(1.0), ctypes.c_float(0.0)
    _check(_lib().cublasLtMatmul(_handle(device), desc, ctypes.byref(alpha), a.data_ptr(), la, b.data_ptr(), lb,
                                 ctypes.byref(beta), d.data_ptr(), ld, d.data_ptr(), ld, ctypes.byref(heuristic),
                                 _workspace(device).data_ptr(), WORKSPACE_BYTES,
                                 torch.cuda.current_stream(d.device).cuda_stream), "matmul")


def usable(*tensors: torch.Tensor) -> bool:
    """The fused GEMMs take bf16 CUDA tensors, 16-byte aligned, with every dimension a multiple of 8."""
    return (available() and all(t.is_cuda and t.dtype == torch.bfloat16 and t.is_contiguous()
                                and t.data_ptr() % 16 == 0 and t.shape[-1] % 8 == 0 for t in tensors))


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(gelu(x W^T + b), x W^T + b) in one GEMM (epilogue GELU_AUX_BIAS; GELU's tanh form, GPT-2's).
    x [N, K], W [M, K], b [M]; both outputs [N, M]."""
    N, K = x.shape
    M = weight.shape[0]
    out = torch.empty(N, M, dtype=x.dtype, device=x.device)
    pre = torch.empty(N, M, dtype=x.dtype, device=x.device)
    _matmul(out, weight, x, M, N, K, True, False, "gelu_aux_bias", bias=bias, aux=pre)
    return out, pre


def linear_dgelu(dy: torch.Tensor, weight: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """dpre = (dy W) * gelu'(pre), the gradient of pre through y = gelu(pre) @ W^T, in one GEMM (epilogue
    DGELU). dy [N, M], W [M, H], pre [N, H].

    Not DGELU_BGRAD, which would also sum the bias gradient: on the H100 (cuBLAS 13, 65,536 x 768 -> 3072)
    it runs as the GEMM plus a generic epilogue kernel, 1778 us against 784 us for DGELU plus our
    column-sum kernel, and 946 us for the plain GEMM plus our bias+GELU backward kernel (dev/fusion_micro.py)."""
    N, M = dy.shape
    H = weight.shape[1]
    dpre = torch.empty(N, H, dtype=dy.dtype, device=dy.device)
    _matmul(dpre, weight, dy, H, N, M, False, False, "dgelu", aux=pre)
    return dpre


def weight_bias_grad(dy: torch.Tensor, x: torch.Tensor, dw: torch.Tensor | None = None,
                     db: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(dW, db) of y = x W^T + b in one cuBLASLt call: dW = dy^T x, with cuBLASLt asked for the bias gradient
    (dy summed over its rows) in the epilogue (BGRADB) instead of our column-sum kernel reading dy again. Whether
    cuBLASLt sums inside the GEMM or adds a kernel of its own (as DGELU_BGRAD did, linear_dgelu) is what
    dev/fusion_micro.py measures. dy [N, M], x [N, K]; written into dw [M, K] and db [M] where given (blocks
    of larger tensors, as the qkv projection's)."""
    N, M = dy.shape
    K = x.shape[1]
    dw = torch.empty(M, K, dtype=dy.dtype, device=dy.device) if dw is None else dw
    db = torch.empty(M, dtype=dy.dtype, device=dy.device) if db is None else db
    _matmul(dw, x, dy, K, M, N, False, True, "bgradb", bias=db)
    return dw, db
