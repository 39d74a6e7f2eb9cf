"""Exact integer GEMM: int8 x int8 -> int32, several backends, one result bit for bit.

Specification: ``C[m, n] = sum_k A[m, k] * B[k, n]`` over the integers, with A and B signed
8-bit (or A unsigned 8-bit: softmax probabilities) and C int32. The sum is exact whenever
``K * max|a| * max|b| < 2**31``; :func:`check_gemm` refuses anything else, so no backend ever
wraps.

Backends (``backend="auto"`` picks the fastest exact one):

- ``int_mm``: ``torch._int_mm`` (oneDNN int8 kernels, AVX-512 VNNI here); int8 x int8 only.
- ``f32``: float32 BLAS on the integer values. Every partial sum is an integer below
  ``K * max|a| * max|b|``; float32 represents all integers below ``2**24`` exactly, so the
  result is exact iff that bound is ``<= 2**24`` (``K * 2**14 <= 2**24``, K <= 1024, for
  int8 x int8). Used for batched attention products, where ``_int_mm`` has no batched form.
- ``f64``: float64 BLAS, exact below ``2**53`` (every K that fits int32).
- ``numpy``: int64 ``matmul``, the slow reference.
"""

from __future__ import annotations

import numpy as np

from .errors import GQAError

BACKENDS = ("auto", "int_mm", "f32", "f64", "numpy")
F32_EXACT = 2**24
F64_EXACT = 2**53


def _bound(a_dtype, b_dtype) -> int:
    """Largest |a*b| for the operand dtypes."""
    def mag(dt):
        info = np.iinfo(dt)
        return max(-int(info.min), int(info.max))
    return mag(a_dtype) * mag(b_dtype)


def _check_operand(x, name: str):
    if not isinstance(x, np.ndarray) or x.dtype not in (np.dtype(np.int8), np.dtype(np.uint8)):
        raise GQAError(name, f"is {type(x).__name__} of dtype {getattr(x, 'dtype', '?')}",
                       "GEMM operands are numpy int8 (or uint8) arrays")
    return x.dtype


def check_gemm(a, b) -> int:
    """Validate shapes and dtypes; return the exactness bound ``K * max|a*b|``."""
    da, db = _check_operand(a, "a"), _check_operand(b, "b")
    try:
        np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        ok = a.ndim >= 2 and b.ndim >= 2 and a.shape[-1] == b.shape[-2]
    except ValueError:
        ok = False
    if not ok:
        raise GQAError("b", f"shape {tuple(b.shape)} does not multiply a of shape {tuple(a.shape)}",
                       "a is (..., M, K) and b (..., K, N) with broadcastable leading (batch) dimensions")
    k = int(a.shape[-1])
    bound = k * _bound(da, db)
    if bound >= 2**31:
        raise GQAError("K", f"{k} products of |a*b| <= {_bound(da, db)} may exceed int32",
                       "split K or accumulate in a wider register")
    return bound


def pick_backend(a, b, bound: int) -> str:
    if a.ndim == 2 and b.ndim == 2 and a.dtype == b.dtype == np.int8:
        return "int_mm"
    return "f32" if bound <= F32_EXACT else "f64"


def _tensor(x: np.ndarray):
    """A torch view of a C-contiguous, writable copy when needed (torch refuses read-only memory)."""
    import torch

    return torch.from_numpy(np.require(x, requirements=("C", "W")))


def int_gemm(a: np.ndarray, b: np.ndarray, backend: str = "auto") -> np.ndarray:
    """``a @ b`` exactly: int8/uint8 arrays (..., M, K) and (..., K, N) -> int32 (..., M, N)."""
    if backend not in BACKENDS:
        raise GQAError("backend", f"{backend!r} is unknown", f"use one of {', '.join(BACKENDS)}")
    bound = check_gemm(a, b)
    if backend == "auto":
        backend = pick_backend(a, b, bound)
    if backend == "numpy":
        return np.matmul(a.astype(np.int64), b.astype(np.int64)).astype(np.int32)
    import torch

    if backend == "int_mm":
        if not (a.ndim == 2 and b.ndim == 2 and a.dtype == np.int8 and b.dtype == np.int8):
            raise GQAError("backend", "int_mm takes 2-D int8 x int8 operands", "use backend 'f32', 'f64' or 'auto'")
        ta, tb = _tensor(a), _tensor(b)
        return torch._int_mm(ta, tb).numpy()
    if backend == "f32":
        if bound > F32_EXACT:
            raise GQAError("backend", f"f32 is not exact for this K ({a.shape[-1]}: bound {bound} > 2**24)",
                           "use 'f64' or 'auto'")
        dt = torch.float32
    else:
        dt = torch.float64
    c = torch.matmul(_tensor(a).to(dt), _tensor(b).to(dt))
    return c.to(torch.int32).numpy()
