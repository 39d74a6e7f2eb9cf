"""A linear layer on the GGUF file's own block-quantized weights: Q4_1 (W4A8) and Q8_0 codes, natively.

Specification (words and formulas first; the code follows exactly).

Weights. A GGUF Q4_1 matrix of ``N`` rows (output channels) and ``K`` columns holds, per row ``n``
and 32-column block ``b``, uint4 codes ``q[n, 32b + i]`` and two FP16 numbers ``d[n, b]``,
``m[n, b]``; the weight is ``W[n, 32b + i] = d[n, b] * q[n, 32b + i] + m[n, b]`` (Q8_0: int8 codes,
``m = 0``). FP16 numbers are dyadic rationals, so each row has an exponent ``E_n`` (the most
fractional bits any of its ``d``, ``m`` has) at which both are integers, exactly:

    D[n, b] = d[n, b] * 2**E_n,   M[n, b] = m[n, b] * 2**E_n       (int64, |D|, |M| < 2**20 in SmolLM2)

so ``W[n, k] = (D q + M) * 2**-E_n`` with no rounding anywhere (checked on every Q4_1 tensor of
SmolLM2-135M: the integers equal the FP32 dequantized weights bit for bit).

Product. On int8 activation codes ``x`` (real ``x * s_in``), per token ``r``:

    G[r, n, b] = sum_{i<32} x[r, 32b+i] * q[n, 32b+i]    group accumulation, x int8 * q uint4:
                                                          |G| <= 32 * 128 * 15 < 2**16 (17-bit register)
    S[r, b]    = sum_{i<32} x[r, 32b+i]                   block sums of x, shared by every row n:
                                                          |S| <= 32 * 128 = 2**12 (14-bit register)
    A[r, n]    = sum_b D[n, b] * G[r, n, b] + M[n, b] * S[r, b]        exact, int64
               = sum_k x[r, k] * (D q + M)[n, k]         (so sum_k x W = A * 2**-E_n exactly)

``A`` is declared :data:`ACC_BITS` wide: per row the worst case ``bound_n = 128 * sum_k |D q + M|``
must stay below ``2**(ACC_BITS - 1)`` (refused at construction otherwise; SmolLM2: below 2**39).
Then one static rounding shift per row brings ``A`` into the int32 register of the shared
requantizer:

    A32[r, n] = RDBPOT(A[r, n], t_n),  t_n the smallest t >= 0 with RDBPOT(bound_n, t) <= 2**31 - 1

(round half away from zero; ``|A32| <= 2**31 - 1`` for every input, so nothing overflows; the
rounding error is at most half a unit of ``2**t_n``, i.e. below ``2**-31`` of the row's range).
``A32`` has the real scale ``s_in * 2**(t_n - E_n)`` per output column, and is requantized exactly as
:class:`intsim.layers.IntLinear` does (:func:`intsim.fixedpoint.requantize_channels`: bias at that
scale, dyadic multiplier per column, ``residual`` and per-token ``row_shift``).

Computation (three methods, the same integers; :data:`METHODS`):

- ``group``: the hardware's order. ``G`` as one batched GEMM over the blocks through
  :func:`intsim.gemm.int_gemm` (exact backends: ``(nb, M, 32) @ (nb, 32, N)``), ``S`` by a sum, then
  the combination, the shift and the peaks in one numba kernel;
- ``folded``: ``A = x @ (D q + M)^T`` as one float64 GEMM. Exact: every product and partial sum is
  an integer of magnitude at most ``bound_n < 2**(ACC_BITS-1) <= 2**53``, which float64 holds
  exactly in any summation order. Distributivity over the integers makes it equal to ``group``.
  The shift is numpy's exact :func:`~intsim.fixedpoint.round_shift` per group of equal ``t_n``
  (none at all when every ``t_n = 0``: the requantizer reads the exact float64 values as they are);
- ``sliced``: the folded weights in base-128 digits, ``D q + M = sum_j W_j 2**(7j)`` (``W_j`` in
  [0, 127] below the top digit, the top one signed int8; 3 digits for SmolLM2's 20-bit weights), each
  digit an int8 GEMM through :func:`intsim.gemm.int_gemm` (exact: ``K * 128 * 128 < 2**31`` for
  ``K <= 2**17``), ``A = sum_j C_j 2**(7j)`` summed in float64 (exact below ``2**53``). It runs on the
  machine's fastest exact int8 backend (oneDNN's VNNI/AMX kernels where they are exact).

Operation statistics (what the hardware executes): ``M N K`` MACs at 8 x 4 bits (Q8_0: 8 x 8) into
the group register, ``M K`` adds for the block sums (shared by all rows), ``2 M N K/32`` rescale
multiplies (G by D, S by M) and adds into the ``ACC_BITS`` register, ``M N`` shifts to int32, then
the requantizer's multiply and bias add as in IntLinear.
"""

from __future__ import annotations

import numba
import numpy as np

from .config import SimConfig
from .errors import GQAError
from .fixedpoint import INT32_MAX, RowScale, rdbpot_bf, requantize_channels, round_shift
from .gemm import Constant, int_gemm
from .jit import parallel_njit
from .layers import multipliers
from .outliers import OperandTransform

BLOCK = 32                  # weights per block (GGUF Q4_1 and Q8_0)
ACC_BITS = 48               # the declared width of the combination register A
X_MAX = 128                 # largest |x| of an int8 activation code
METHODS = ("auto", "group", "folded", "sliced")
DIGIT = 7                   # bits per weight digit of the sliced method
AUTO_METHOD = "folded"      # measured 1.5-2.9x faster than group at 256 tokens (benchmarks/bench_llm.py)


def _frac_bits(v: np.ndarray) -> np.ndarray:
    """The fewest fractional bits ``F`` with ``v * 2**F`` an integer, per FP16 value (0 for zeros)."""
    v = np.asarray(v, np.float64)
    _, ex = np.frexp(v)                         # v = mant * 2**ex, mant in [0.5, 1): 11 significant bits
    f = 11 - ex.astype(np.int64)
    i = np.abs(v) * np.exp2(f)                  # an integer < 2**11 (exact: a power-of-two scaling)
    i = i.astype(np.int64)
    tz = np.zeros_like(f)
    for _ in range(11):                         # strip trailing zero bits (at most 11)
        even = (i != 0) & (i % 2 == 0)
        i = np.where(even, i // 2, i)
        tz += even
    return np.where(v == 0, np.iinfo(np.int64).min // 2, f - tz)   # zeros never decide a maximum


def integer_blocks(blocks):
    """``(codes, D, M, E)`` of one or more :class:`~intsim.gguf_model.QuantBlocks` stacked by rows.

    ``codes`` (N, K) uint8 (Q4_1) or int8 (Q8_0); ``D``, ``M`` (N, K/32) int64 and ``E`` (N,) int64
    with ``d = D * 2**-E``, ``m = M * 2**-E`` exactly (see the module docstring).
    """
    blocks = list(blocks) if isinstance(blocks, (list, tuple)) else [blocks]
    kinds = {b.qtype for b in blocks}
    if len(kinds) != 1 or not kinds <= {"Q4_1", "Q8_0"}:
        raise GQAError("weights", f"block types {sorted(kinds)} cannot be stacked into one layer",
                       "give Q4_1 (or Q8_0) QuantBlocks of one type (intsim.gguf_model.GGUFModel.quant_blocks)")
    if len({b.codes.shape[1] for b in blocks}) != 1:
        raise GQAError("weights", "the stacked matrices have different column counts", "stack matrices of one input width")
    codes = np.concatenate([b.codes for b in blocks])
    if codes.shape[1] % BLOCK:
        raise GQAError("weights", f"{codes.shape[1]} columns are not whole {BLOCK}-blocks", "give GGUF block weights")
    d = np.concatenate([b.scale for b in blocks]).astype(np.float64)
    m = np.concatenate([np.zeros(b.scale.shape) if b.minimum is None else b.minimum for b in blocks]).astype(np.float64)
    if not (np.isfinite(d).all() and np.isfinite(m).all()):
        raise GQAError("weights", "a block scale or minimum is not finite", "give a valid GGUF file")
    e = np.maximum(_frac_bits(d).max(1), _frac_bits(m).max(1))
    e = np.where((d == 0).all(1) & (m == 0).all(1), 0, e)    # an all-zero row: any exponent; 0
    D, M = d * np.exp2(e)[:, None], m * np.exp2(e)[:, None]
    if np.abs(D).max(initial=0) >= 2**52 or np.abs(M).max(initial=0) >= 2**52:
        raise GQAError("weights", "block scales span more than 52 bits within a row", "give FP16 block scales")
    return codes, D.astype(np.int64), M.astype(np.int64), e.astype(np.int64)


def weight_digits(wint: np.ndarray) -> list[np.ndarray]:
    """Base-``2**DIGIT`` digits of integer weights: ``wint = sum_j digit_j * 2**(DIGIT j)``, each
    int8; every digit but the last in [0, 2**DIGIT), the last signed (whatever the sign of ``wint``)."""
    rest, digits = np.asarray(wint, np.int64), []
    while rest.min(initial=0) < -128 or rest.max(initial=0) > 127:
        low = rest & ((1 << DIGIT) - 1)
        digits.append(low.astype(np.int8))
        rest = (rest - low) >> DIGIT
    digits.append(rest.astype(np.int8))
    return digits


def _shift_for(bound: np.ndarray) -> np.ndarray:
    """Per row the smallest ``t >= 0`` with ``RDBPOT(bound, t) <= 2**31 - 1`` (RDBPOT: half away from zero)."""
    fits = np.stack([round_shift(bound, t, "half_away") <= INT32_MAX for t in range(ACC_BITS)])   # (t, N)
    return np.argmax(fits, axis=0).astype(np.int64)    # the first t that fits (t = ACC_BITS - 32 always does)


@parallel_njit
def _combine(g, s, dd, mm, t, out):
    """``group``: ``A = sum_b D G + M S`` per (row, column), then ``A32 = RDBPOT(A, t_c)``.

    ``g`` (nb, R, N) the group accumulations (int32 values, maybe as exact floats), ``s`` (nb, R)
    int64, ``dd``/``mm`` (nb, N) int64, ``t`` (N,). Returns the peaks ``(max |G|, max |A|)``.
    """
    nb, rows, cols = g.shape
    peak_g = np.zeros(rows, np.int64)
    peak_a = np.zeros(rows, np.int64)
    for r in numba.prange(rows):
        acc = np.zeros(cols, np.int64)
        pg = np.int64(0)
        for b in range(nb):
            sb = s[b, r]
            for c in range(cols):
                gv = np.int64(g[b, r, c])
                pg = max(pg, abs(gv))
                acc[c] += dd[b, c] * gv + mm[b, c] * sb
        pa = np.int64(0)
        for c in range(cols):
            pa = max(pa, abs(acc[c]))
            out[r, c] = rdbpot_bf(acc[c], t[c])
        peak_g[r] = pg
        peak_a[r] = pa
    return peak_g.max() if rows else 0, peak_a.max() if rows else 0


def shift_columns(a: np.ndarray, t: np.ndarray):
    """``RDBPOT(A, t_c)`` per column of an exact-integer ``A`` (R, N), grouped by equal shifts; with
    every ``t_c = 0`` (SmolLM2's rows: they fit int32 as they are) ``A`` itself, unconverted."""
    if not t.any():
        return a
    out = np.empty(a.shape, np.int64)
    for v in np.unique(t):
        cols = np.flatnonzero(t == v)
        out[:, cols] = round_shift(a[:, cols].astype(np.int64), int(v), "half_away")
    return out


class IntQ4Linear:
    """``y = x @ W^T + b`` with ``W`` exactly the file's Q4_1 (or Q8_0) weights, on int8 codes.

    Same constructor spirit and call as :class:`intsim.layers.IntLinear`: ``blocks`` is one
    :class:`~intsim.gguf_model.QuantBlocks` or a list of them stacked by rows (a fused QKV);
    ``b`` FP32 bias or None; ``in_scale`` the operand's real scale; ``out_scale`` (scalar or per
    column) and ``out_bits`` the consumer's format. ``col_factor`` (SmoothQuant's per-column
    weight factors) cannot apply: the weights are the file's codes, so anything but None/ones is
    refused. ``method``: one of :data:`METHODS` (the same integers; ``auto`` is the faster).
    """

    def __init__(self, blocks, b, in_scale, cfg: SimConfig, out_scale, out_bits: int, col_factor=None,
                 method: str = "auto"):
        if method not in METHODS:
            raise GQAError("method", f"{method!r} is unknown", f"use one of {', '.join(METHODS)}")
        if isinstance(col_factor, OperandTransform):          # the outlier toolbox's fold changes W too
            identity = (np.all(col_factor.scale == 1) and not np.any(col_factor.shift)
                        and not col_factor.splits)
            if not identity:
                raise GQAError("outliers", "the norm-output transforms (smooth, gamma migration, OS+, split) "
                               "rewrite weight columns, but q4_1 weights are the file's own codes",
                               "use outliers without them (e.g. per_token) with weights='q4_1'")
            col_factor = None
        if col_factor is not None and np.size(col_factor) > 1 and not np.all(np.asarray(col_factor) == 1):
            raise GQAError("outliers", "smoothing rescales weight columns, but q4_1 weights are the file's own codes",
                           "use outliers without 'smooth' (e.g. per_token) with weights='q4_1'")
        codes, D, M, E = integer_blocks(blocks)
        self.qtype = "Q8_0" if codes.dtype == np.int8 else "Q4_1"
        n, k = codes.shape
        self.nb = k // BLOCK
        self.in_features, self.out_features = k, n
        self.method = AUTO_METHOD if method == "auto" else method
        self.code_bits = 8 if self.qtype == "Q8_0" else 4
        qmax = 128 if self.qtype == "Q8_0" else 15
        self.group_bits = (BLOCK * X_MAX * qmax).bit_length() + 1
        self.sum_bits = (BLOCK * X_MAX).bit_length() + 1
        self.scale_bits = int(max(np.abs(D).max(initial=0), np.abs(M).max(initial=0))).bit_length() + 1
        wint = D.repeat(BLOCK, axis=1) * codes.astype(np.int64) + M.repeat(BLOCK, axis=1)   # (N, K): (D q + M)
        bound = X_MAX * np.abs(wint).sum(axis=1)                                           # (N,) worst |A|
        if bound.max(initial=0) >= 2 ** (ACC_BITS - 1):
            raise GQAError("weights", f"a row's worst-case sum needs {int(bound.max()).bit_length() + 1} bits "
                           f"(the combination register holds {ACC_BITS})", "give FP16 block scales of one row's range")
        self.acc_bits_used = int(bound.max(initial=0)).bit_length() + 1
        self.t = _shift_for(bound)
        self.E = E
        self.D, self.M = np.ascontiguousarray(D.T), np.ascontiguousarray(M.T)                # (nb, N)
        if self.method == "group":
            self.qt = Constant(codes.reshape(n, self.nb, BLOCK).transpose(1, 2, 0))           # (nb, 32, N)
        elif self.method == "sliced":
            self.digits = [Constant(d.T) for d in weight_digits(wint)]                         # each (K, N) int8
        else:
            import torch

            self.wt = torch.from_numpy(np.ascontiguousarray(wint.T).astype(np.float64))       # (K, N), exact
        self.acc_scale = in_scale * np.exp2((self.t - E).astype(np.float64))                  # A32's scale per column
        b = np.zeros(n) if b is None else np.asarray(b, np.float64)
        self.bias = np.rint(b / self.acc_scale).astype(np.int64)
        if np.abs(self.bias).max(initial=0) >= 2**31:
            raise GQAError("bias", "does not fit int32 at the accumulator's scale", "use coarser activation scales")
        self.m0, self.n = multipliers(self.acc_scale / np.broadcast_to(out_scale, self.acc_scale.shape))
        self.out_bits, self.backend = out_bits, cfg.gemm_backend

    @property
    def shape(self) -> tuple[int, int]:
        return self.out_features, self.in_features

    def accumulate(self, x2: np.ndarray, peaks: bool = False):
        """int8 (R, K) -> ``(A32 (R, N), max |G|, max |A|)`` by :attr:`method`; ``A32`` holds int32
        values (``folded``: maybe as exact float64); the peaks are None unless measured (``peaks``;
        ``group`` always measures them)."""
        if x2.dtype != np.int8 or x2.ndim != 2 or x2.shape[1] != self.in_features:
            raise GQAError("x8", f"is {x2.dtype} of shape {x2.shape}",
                           f"give int8 activation codes with {self.in_features} features")
        rows = x2.shape[0]
        if self.method == "group":
            out = np.empty((rows, self.out_features), np.int32)
            xb = np.ascontiguousarray(x2.reshape(rows, self.nb, BLOCK).transpose(1, 0, 2))   # (nb, R, 32)
            g = int_gemm(xb, self.qt, self.backend, float_out=True)                          # (nb, R, N)
            s = xb.sum(axis=2, dtype=np.int64)                                               # (nb, R)
            peak_g, peak_a = _combine(g, s, self.D, self.M, self.t, out)
            return out, int(peak_g), int(peak_a)
        if self.method == "sliced":
            a = np.zeros((rows, self.out_features), np.float64)
            for j, w in enumerate(self.digits):                    # exact float64 sums of exact int32 products
                a += np.asarray(int_gemm(x2, w, self.backend, float_out=True), np.float64) * float(1 << (DIGIT * j))
        else:
            import torch

            a = torch.matmul(torch.from_numpy(x2).to(torch.float64), self.wt).numpy()        # (R, N) exact integers
        peak_a = int(np.abs(a).max(initial=0)) if peaks else None
        return shift_columns(a, self.t), None, peak_a

    def _count_gemm(self, stats, name, rows, peak_g, peak_a):
        n, k = self.out_features, self.in_features
        stats.mac(name, rows * n * k, a_bits=8, b_bits=self.code_bits, acc_bits=self.group_bits)
        stats.count("add", f"{name}.block_sum", rows * k, bits=self.sum_bits)
        stats.count("mul", f"{name}.block_scale", rows * n * self.nb, a_bits=self.group_bits, b_bits=self.scale_bits)
        stats.count("mul", f"{name}.block_min", rows * n * self.nb, a_bits=self.sum_bits, b_bits=self.scale_bits)
        stats.count("add", f"{name}.block_acc", 2 * rows * n * self.nb, bits=ACC_BITS)
        stats.count("shift", f"{name}.to_int32", rows * n, bits=ACC_BITS)
        if peak_g is not None:
            stats.accumulator(f"{name}.group", peak_g, self.group_bits)
        stats.accumulator(f"{name}.block_acc", peak_a, ACC_BITS)

    def accumulator(self, x8, stats=None, name="linear", row_shift=None):
        """The GEMM alone: ``A32`` (..., N), no bias and no requantization (as
        :meth:`intsim.layers.IntLinear.accumulator`; ``row_shift`` is not read: the file's codes are
        never re-rounded, so no observer watches them)."""
        x2 = x8.reshape(-1, x8.shape[-1])                                      # (..., K) -> (R, K)
        acc, peak_g, peak_a = self.accumulate(x2, peaks=stats is not None)
        if stats is not None:
            self._count_gemm(stats, name, x2.shape[0], peak_g, peak_a)
            stats.accumulator(f"{name}.acc", int(np.abs(acc).max(initial=0)), 32)
        return acc.reshape(*x8.shape[:-1], -1)                                 # (R, N) -> (..., N)

    def __call__(self, x8, stats=None, name="linear", residual=None, row_shift=None):
        x2 = x8.reshape(-1, x8.shape[-1])                                      # (..., K) -> (R, K)
        acc, peak_g, peak_a = self.accumulate(x2, peaks=stats is not None)
        y, sat, ovf, peak = requantize_channels(acc, self.bias, self.m0, self.n, self.out_bits,
                                                residual=None if residual is None else residual.reshape(acc.shape),
                                                row_shift=row_shift)
        if stats is not None:
            self._count_gemm(stats, name, x2.shape[0], peak_g, peak_a)
            stats.count("mul", f"{name}.requant", acc.size, a_bits=32, b_bits=32)
            if isinstance(row_shift, RowScale):     # token_mantissa: the row's mantissa multiply per output
                stats.count("mul", f"{name}.row_scale", acc.size, a_bits=32, b_bits=row_shift.bits + 1)
            stats.count("add", f"{name}.bias", acc.size, bits=32)
            if residual is not None:
                stats.count("add", f"{name}.residual", acc.size, bits=self.out_bits)
            stats.accumulator(f"{name}.acc", peak, 32, ovf)
            stats.saturated(f"{name}.out", sat)
        return y.reshape(*x8.shape[:-1], -1), acc
