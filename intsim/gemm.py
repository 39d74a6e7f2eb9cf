"""Exact integer GEMM: int8 x int8 -> int32, several backends, one result bit for bit.

Specification: ``C[m, n] = sum_k A[m, k] * B[k, n]`` over the integers, with A and B signed
8-bit (or A unsigned 8-bit: softmax probabilities) and C int32. The sum is exact whenever
``K * max|a| * max|b| < 2**31``; :func:`check_gemm` refuses anything else, so no backend ever
wraps.

Backends (the registry :data:`REGISTRY`; ``backend="auto"`` picks one by measurement):

- ``int_mm``: ``torch._int_mm`` (oneDNN int8 kernels); 2-D int8 x int8 (a uint8 left operand
  shifted to int8 and corrected by the right operand's column sums). Fast with
  AVX-512 VNNI, but 40x slower than float32 BLAS on CPUs without VNNI (Zen 3, many laptops).
- ``f32``: float32 BLAS on the integer values, K split into chunks. Every partial sum of a
  chunk of ``Kc`` products is an integer of magnitude ``<= Kc * max|a*b|``; float32 holds every
  integer up to ``2**24`` exactly, so with ``Kc = floor(2**24 / max|a*b|)`` (1024 for
  int8 x int8, 514 for uint8 x int8) each chunk's product is exact whatever order BLAS sums in;
  the chunks' int32 results are then added exactly. Any K, batched (attention) included. A
  longer K takes one product when the operands' own bound allows it: every partial sum of row
  ``i`` is at most ``sum_k |a_ik| * max|b|``, so ``max_i sum_k |a_ik| * max|b| <= 2**24`` is exact
  too (a row-sum pass costs far less than a second product; typical activations pass it).
- ``f64``: float64 BLAS, exact below ``2**53`` (every K that fits int32).
- ``numpy``: int64 ``matmul``, the slow reference; never picked by ``auto``.

``auto``: for each operand class (:func:`operand_class`: 2-D or batched, the dtypes, whether K
needs f32 chunking, the size), the first call times every candidate backend on a bounded slice of
its real operands (about ``PROBE_MACS`` multiply-adds, best of ``PROBE_REPEATS``) and keeps the
fastest. The choice is cached per process and on disk (:func:`cache_path`), keyed by a
fingerprint of the machine (CPU model, torch version and CPU capability, the ISA-limiting
environment variables, thread count), so one machine's choice is never reused on another.
Set ``GQA_GEMM_CACHE=off`` to keep choices in memory only.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import GQAError
from .fileio import user_cache_dir

F32_EXACT = 2**24
F64_EXACT = 2**53
PROBE_MACS = 2**26      # a probe multiplies about this many pairs per backend and round
PROBE_REPEATS = 3       # rounds, each timing every backend once (a burst of load hits them all)
SMALL_MACS = 2**20      # operand size classes: below this, between, and at or above LARGE_MACS
LARGE_MACS = 2**26
ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "DNNL_MAX_CPU_ISA", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _mag(dt) -> int:
    info = np.iinfo(dt)
    return max(-int(info.min), int(info.max))


def _bound(a_dtype, b_dtype) -> int:
    """Largest |a*b| for the operand dtypes."""
    return _mag(a_dtype) * _mag(b_dtype)


def f32_chunk(a_dtype, b_dtype) -> int:
    """Largest K whose float32 partial sums stay exact: ``floor(2**24 / max|a*b|)``."""
    return F32_EXACT // _bound(a_dtype, b_dtype)


def _check_operand(x, name: str):
    if not isinstance(x, np.ndarray) or x.dtype not in (np.dtype(np.int8), np.dtype(np.uint8)):
        raise GQAError(name, f"is {type(x).__name__} of dtype {getattr(x, 'dtype', '?')}",
                       "GEMM operands are numpy int8 (or uint8) arrays")
    return x.dtype


def check_gemm(a, b) -> int:
    """Validate shapes and dtypes; return the exactness bound ``K * max|a*b|``."""
    a, b = _array(a), _array(b)
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


def _tensor(x: np.ndarray):
    """A torch view of a C-contiguous, writable copy when needed (torch refuses read-only memory)."""
    import torch

    return torch.from_numpy(np.require(x, requirements=("C", "W")))


class Constant:
    """A GEMM operand fixed offline (weights): read-only, so its torch copies (the int8 view, the
    float32 and float64 conversions) are made once and reused by every product."""

    def __init__(self, x):
        arr = np.array(x, copy=True, order="C")
        _check_operand(arr, "constant")
        arr.setflags(write=False)
        self.array, self._tensors = arr, {}

    shape = property(lambda self: self.array.shape)
    dtype = property(lambda self: self.array.dtype)
    ndim = property(lambda self: self.array.ndim)
    size = property(lambda self: self.array.size)

    def tensor(self, dtype=None):
        if dtype not in self._tensors:
            if dtype is not None and self.array.ndim == 2:
                # a float copy of a (K, N) weight is kept as the transposed view of its (N, K) rows, the
                # layout of torch's own linear layers: BLAS's "NT" product is ~10% faster than "NN" for
                # the encoder's shapes with AVX2 (the same exact integers either way)
                self._tensors[dtype] = _tensor(np.ascontiguousarray(self.array.T)).to(dtype).t()
            else:
                t = _tensor(self.array)
                self._tensors[dtype] = t if dtype is None else t.to(dtype)
        return self._tensors[dtype]


def _array(x) -> np.ndarray:
    return x.array if isinstance(x, Constant) else x


def _as(x, dtype=None):
    """A torch tensor of ``x`` (converted to ``dtype``), cached for constants."""
    if isinstance(x, Constant):
        return x.tensor(dtype)
    t = _tensor(x)
    return t if dtype is None else t.to(dtype)


# backends ------------------------------------------------------------------------------------
def _run_int_mm(a, b, float_out=False):
    """``torch._int_mm`` on int8 x int8; a uint8 ``a`` (an unsigned operand: ``act_offset``) as
    ``a - 128`` in int8 (its bytes with the top bit flipped), the product corrected by
    ``128 * sum_k b[k, n]`` per column. Exact: ``|(a - 128) b|`` stays within the int8 x int8 bound,
    the correction within ``128 * 128 * K``, and their sum is the int32 result ``check_gemm`` admitted."""
    import torch

    if _array(a).dtype == np.uint8:
        a8 = (_array(a) ^ np.uint8(0x80)).view(np.int8)                    # a - 128, bit for bit
        return (torch._int_mm(_as(a8), _as(b)) + _column_sums(b) * 128).numpy()
    return torch._int_mm(_as(a), _as(b)).numpy()


def _column_sums(b):
    """``sum_k b[k, n]`` as an int32 tensor (computed once for a constant)."""
    import torch

    if isinstance(b, Constant):
        if "colsum" not in b._tensors:
            b._tensors["colsum"] = torch.from_numpy(b.array.sum(axis=0, dtype=np.int64).astype(np.int32))
        return b._tensors["colsum"]
    return torch.from_numpy(b.sum(axis=0, dtype=np.int64).astype(np.int32))


def _abs_max(b) -> int:
    """``max |b|`` (computed once for a constant)."""
    if isinstance(b, Constant):
        if "absmax" not in b._tensors:
            b._tensors["absmax"] = int(np.abs(b.array.astype(np.int16)).max(initial=0))
        return b._tensors["absmax"]
    return int(np.abs(b.astype(np.int16)).max(initial=0))


def _run_f32(a, b, float_out=False):
    import torch

    ta, tb = _as(a, torch.float32), _as(b, torch.float32)
    k, kc = a.shape[-1], f32_chunk(a.dtype, b.dtype)
    if k > kc and ta.numel():
        # the operands' own bound: every partial sum of row i is at most sum_k |a_ik| * max|b| (exact
        # float32 sums of integers below 2**24), so one product is exact whenever that stays <= 2**24
        l1 = float(ta.abs().sum(-1).max()) if _array(a).dtype != np.uint8 else float(ta.sum(-1).max())
        if l1 * _abs_max(b) <= F32_EXACT:
            kc = k
    if k <= kc:
        c = torch.matmul(ta, tb)
        return (c if float_out else c.to(torch.int32)).numpy()
    n = -(-k // kc)
    step = -(-k // n)       # equal chunks (K=1536: 2 x 768), each <= kc
    out = None
    for k0 in range(0, k, step):
        part = torch.matmul(ta[..., k0:k0 + step], tb[..., k0:k0 + step, :]).to(torch.int32)
        out = part if out is None else out.add_(part)
    return out.numpy()


def _run_f64(a, b, float_out=False):
    import torch

    c = torch.matmul(_as(a, torch.float64), _as(b, torch.float64))
    return (c if float_out else c.to(torch.int32)).numpy()


def _run_numpy(a, b, float_out=False):
    return np.matmul(_array(a).astype(np.int64), _array(b).astype(np.int64)).astype(np.int32)


def _is_2d_8bit(a, b, bound) -> bool:
    return a.ndim == 2 and b.ndim == 2 and a.dtype in (np.int8, np.uint8) and b.dtype == np.int8


@dataclass(frozen=True)
class Backend:
    """One exact GEMM implementation: ``run(a, b) -> int32`` on operands that ``accepts``."""

    name: str
    run: Callable
    accepts: Callable          # (a, b, bound) -> bool: shapes/dtypes it takes, exactly
    requirement: str           # what ``accepts`` asks, for the error message
    auto: bool = True          # a candidate of the measured pick


REGISTRY: dict[str, Backend] = {b.name: b for b in (
    Backend("int_mm", _run_int_mm, _is_2d_8bit, "2-D int8 or uint8 x int8 operands"),
    Backend("f32", _run_f32, lambda a, b, bound: True, "any operands (K chunked for exactness)"),
    Backend("f64", _run_f64, lambda a, b, bound: bound < F64_EXACT, "K * max|a*b| < 2**53"),
    Backend("numpy", _run_numpy, lambda a, b, bound: True, "any operands", auto=False),
)}
BACKENDS = ("auto", *REGISTRY)


# the measured choice -------------------------------------------------------------------------
def operand_class(a, b) -> str:
    """The class a measured choice holds for: layout, dtypes, K range and size."""
    batch = int(np.prod(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]), dtype=np.int64))
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    macs = batch * m * k * n
    size = "small" if macs < SMALL_MACS else ("large" if macs >= LARGE_MACS else "medium")
    layout = "2d" if a.ndim == b.ndim == 2 else "batched"
    krange = f"K<={f32_chunk(a.dtype, b.dtype)}" if k <= f32_chunk(a.dtype, b.dtype) else \
        f"K>{f32_chunk(a.dtype, b.dtype)}"
    return f"{layout} {a.dtype}x{b.dtype} {krange} {size}"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def machine_fingerprint() -> dict:
    """What a measured choice depends on; another machine (or ISA limit) gets its own choices."""
    import torch

    return {"cpu": _cpu_model(), "torch": torch.__version__,
            "capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "numpy": np.__version__, "env": {k: os.environ[k] for k in ISA_ENV if k in os.environ}}


def cache_path(fingerprint: dict | None = None) -> Path | None:
    """The on-disk cache of this machine's choices, or None when ``GQA_GEMM_CACHE=off``."""
    if os.environ.get("GQA_GEMM_CACHE", "").lower() in ("off", "0", "no"):
        return None
    fp = fingerprint or machine_fingerprint()
    digest = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]
    return user_cache_dir() / f"gemm_backends-{digest}.json"


_CHOICES: dict[str, dict] = {}     # operand class -> {"backend": name, "seconds": {name: s}}
_USED: set[str] = set()             # the classes this process has multiplied
_DISK_LOADED = False


def _load_disk() -> None:
    global _DISK_LOADED
    _DISK_LOADED = True
    fp = machine_fingerprint()
    path = cache_path(fp)
    if path is None or not path.is_file():
        return
    try:
        data = json.loads(path.read_text())
        if data.get("machine") != json.loads(json.dumps(fp)):   # a hash collision or a stale file
            return
        for cls, choice in data.get("choices", {}).items():
            if choice.get("backend") in REGISTRY:
                _CHOICES.setdefault(cls, choice)
    except (OSError, ValueError, AttributeError):
        return      # an unreadable cache is re-measured and rewritten


def _save_disk() -> None:
    fp = machine_fingerprint()
    path = cache_path(fp)
    if path is None:
        return
    from .fileio import atomic_write_json

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"machine": fp, "choices": _CHOICES}, field="GQA_CACHE_DIR")
    except (OSError, GQAError):
        pass        # a read-only home keeps the choice for this process only


def clear_choices(disk: bool = False) -> None:
    """Forget the measured choices and self-tests (and the on-disk cache with ``disk=True``)."""
    global _DISK_LOADED
    _CHOICES.clear()
    _EXACT.clear()
    _USED.clear()
    _DISK_LOADED = False
    path = cache_path() if disk else None
    if path is not None and path.is_file():
        path.unlink()


def machine_report() -> dict:
    """The machine fingerprint and the backend chosen for each operand class so far."""
    return dict(machine_fingerprint(), gemm_backends=chosen_backends())


def chosen_backends() -> dict[str, str]:
    """Operand class -> backend, for every class this process has multiplied (measured or cached)."""
    return {cls: c["backend"] for cls, c in sorted(_CHOICES.items()) if cls in _USED}


def _probe_slice(a, b):
    """Leading rows (or batch items) of the operands, about ``PROBE_MACS`` multiply-adds."""
    k, n = a.shape[-1], b.shape[-1]
    if a.ndim == 2 and b.ndim == 2:
        rows = max(1, min(a.shape[0], PROBE_MACS // max(1, k * n)))
        return _array(a)[:rows], b          # a constant b keeps its cached conversions
    a, b = _array(a), _array(b)
    shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a_, b_ = np.broadcast_to(a, (*shape, *a.shape[-2:])), np.broadcast_to(b, (*shape, *b.shape[-2:]))
    batch = int(np.prod(shape, dtype=np.int64))
    a_, b_ = a_.reshape(batch, *a.shape[-2:]), b_.reshape(batch, *b.shape[-2:])
    items = max(1, min(a_.shape[0], PROBE_MACS // max(1, a.shape[-2] * k * n)))
    return a_[:items], b_[:items]


def _adversarial_operands():
    """Known-answer operands that expose a non-exact kernel: all extremes (every int16 pair sum of
    u8*s8 products saturates), alternating signs, and random full-range values."""
    rng = np.random.default_rng(20240601)
    k = 256
    cases = [(np.full((17, k), v, np.int8), np.full((k, 9), w, np.int8)) for v, w in
             ((127, 127), (-128, -128), (127, -128), (-128, 127))]
    alt = np.where(np.arange(k) % 2 == 0, 127, -128).astype(np.int8)
    cases.append((np.tile(alt, (17, 1)), np.tile(alt[:, None], (1, 9))))
    cases.append((rng.integers(-128, 128, (33, k)).astype(np.int8), rng.integers(-128, 128, (k, 24)).astype(np.int8)))
    cases.append((rng.integers(0, 256, (5, 3, k)).astype(np.uint8), rng.integers(-128, 128, (5, k, 7)).astype(np.int8)))
    cases += [(np.full((17, k), v, np.uint8), np.full((k, 9), w, np.int8)) for v, w in ((255, 127), (255, -128), (0, -128))]
    cases.append((rng.integers(0, 256, (33, k)).astype(np.uint8), rng.integers(-128, 128, (k, 24)).astype(np.int8)))
    return cases


_EXACT: dict[str, bool] = {}        # backend -> passed its known-answer self-test in this process


def is_exact(name: str) -> bool:
    """Whether backend ``name`` multiplies exactly on this machine (a known-answer self-test, once).

    Not a formality: with oneDNN limited to AVX2 (no VNNI), ``torch._int_mm`` sums pairs of u8*s8
    products in saturating int16 (vpmaddubsw) and returns wrong integers.
    """
    if name not in _EXACT:
        be = REGISTRY[name]
        ok = True
        for a, b in _adversarial_operands():
            if be.accepts(a, b, check_gemm(a, b)):
                ok = ok and np.array_equal(be.run(a, b).astype(np.int64), np.matmul(a.astype(np.int64), b.astype(np.int64)))
        _EXACT[name] = bool(ok)
    return _EXACT[name]


def candidates(a, b, bound: int | None = None) -> list[str]:
    """Backends ``auto`` may pick for these operands: they accept them and passed the self-test."""
    bound = check_gemm(a, b) if bound is None else bound
    return [n for n, be in REGISTRY.items() if be.auto and be.accepts(a, b, bound) and is_exact(n)]


def measure(a, b, names=None, repeats: int = PROBE_REPEATS) -> dict[str, float]:
    """Best-of-``repeats`` seconds of each candidate backend on a bounded slice of ``a @ b``.

    Every candidate must return the integers of the exact int64 product of the slice; one that
    does not is left out (and remembered as inexact).
    """
    names = list(names or candidates(a, b))
    pa, pb = _probe_slice(a, b)
    expect = np.matmul(pa.astype(np.int64), _array(pb).astype(np.int64))
    best = dict.fromkeys(names, float("inf"))
    for _ in range(repeats):        # interleaved rounds: a burst of load slows every backend alike
        for name in list(best):
            t0 = time.perf_counter()
            out = REGISTRY[name].run(pa, pb)
            best[name] = min(best[name], time.perf_counter() - t0)
            if not np.array_equal(out.astype(np.int64), expect):
                _EXACT[name] = False
                del best[name]
    seconds = best
    if not seconds:
        raise GQAError("backend", "no exact GEMM backend on this machine", "report this with `gqa sim-bench`")
    return seconds


def pick_backend(a, b, bound: int | None = None) -> str:
    """The measured fastest exact backend for the operands' class (measured once, then cached)."""
    if a.size == 0 or b.size == 0:
        return "f32"        # nothing to multiply: any exact backend, and nothing worth measuring
    if not _DISK_LOADED:
        _load_disk()
    cls = operand_class(a, b)
    _USED.add(cls)
    choice = _CHOICES.get(cls)
    if choice is not None and set(candidates(a, b, bound)) - set(choice.get("seconds", {})):
        choice = None           # measured before a backend took this class (an older version): measure again
    if choice is None:
        seconds = measure(a, b)
        choice = {"backend": min(seconds, key=seconds.get), "seconds": seconds}
        _CHOICES[cls] = choice
        _save_disk()
    return choice["backend"]


def unsigned_terms(bits: int, b_dtype=np.int8) -> int:
    """The most products of a ``bits``-bit unsigned operand and ``b_dtype`` values one int32
    accumulator sums without the chance of overflow: the largest ``K`` with
    ``K * (2**bits - 1) * max|b| < 2**31`` (:func:`check_gemm`'s bound for wider operands)."""
    return (2**31 - 1) // (((1 << bits) - 1) * _mag(b_dtype))


def int_gemm_unsigned(a: np.ndarray, b, bits: int, backend: str = "auto") -> np.ndarray:
    """``a @ b`` exactly for an unsigned left operand of ``bits`` bits (9 to 16: uint16 codes below
    ``2**bits``; up to 8: :func:`int_gemm`) and int8 ``b`` -> int32, as an 8-bit MAC array computes it:
    ``a = hi * 2**8 + lo`` (bytes), ``a @ b = (hi @ b) * 2**8 + lo @ b``, two exact 8-bit products
    added in int64. The int32 result needs ``K * (2**bits - 1) * max|b| < 2**31`` (refused otherwise,
    as :func:`check_gemm` refuses 8-bit operands)."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 16:
        raise GQAError("bits", f"{bits!r} is outside [1, 16]", "an unsigned operand of 1 to 16 bits")
    if bits <= 8:
        return int_gemm(np.asarray(a, np.uint8) if getattr(a, "dtype", None) != np.uint8 else a, b, backend)
    if not isinstance(a, np.ndarray) or a.dtype != np.uint16:
        raise GQAError("a", f"is {type(a).__name__} of dtype {getattr(a, 'dtype', '?')}",
                       f"a {bits}-bit unsigned operand is a numpy uint16 array")
    k, k_max = int(a.shape[-1]) if a.ndim else 0, unsigned_terms(bits, _array(b).dtype)
    if k > k_max:
        raise GQAError("K", f"{k} products of a {bits}-bit unsigned operand and int8 may exceed int32",
                       f"fewer than {k_max + 1} terms, or fewer bits")
    if a.size and int(a.max()) >> bits:
        raise GQAError("a", f"holds values of more than {bits} bits", f"codes below 2**{bits}")
    hi = (a >> 8).astype(np.uint8)
    lo = (a & 0xFF).astype(np.uint8)
    out = int_gemm(hi, b, backend).astype(np.int64) * 256 + int_gemm(lo, b, backend)
    return out.astype(np.int32)


def int_gemm(a: np.ndarray, b, backend: str = "auto", float_out: bool = False) -> np.ndarray:
    """``a @ b`` exactly: int8/uint8 arrays (..., M, K) and (..., K, N) -> int32 (..., M, N).

    ``b`` may be a :class:`Constant` (weights): the same product, without converting it each call.
    ``float_out=True``: a float backend may return its float32/float64 result, which holds the
    same int32 integers exactly, saving a conversion pass when the consumer converts anyway (the
    requantizers of :mod:`intsim.fixedpoint` read such accumulators element by element).
    """
    if backend not in BACKENDS:
        raise GQAError("backend", f"{backend!r} is unknown", f"use one of {', '.join(BACKENDS)}")
    bound = check_gemm(a, b)
    if backend == "auto":
        backend = pick_backend(a, b, bound)
    be = REGISTRY[backend]
    if not be.accepts(a, b, bound):
        raise GQAError("backend", f"{backend} takes {be.requirement}", "use backend 'f32', 'f64' or 'auto'")
    if not is_exact(backend):
        raise GQAError("backend", f"{backend} is not exact on this machine (it failed its known-answer test)",
                       "use backend 'auto', 'f32' or 'f64'")
    return be.run(a, b, float_out) if float_out else be.run(a, b)
