"""I-LLM's integer-only non-linear operators (Hu et al. 2024, arXiv 2405.17849), behind intsim's
kernel interfaces: DI-Exp, DI-ClippedSoftmax (a softmax kernel), DI-Norm (an rsqrt mode of
:class:`intsim.layernorm.IntLayerNorm`, LayerNorm and RMSNorm form) and the sigmoid of DI-SwiGLU
(a SiLU activation kernel).

Written from the paper's description of the operators (dynamic clipping of the softmax input
range, a shift-based exponential ``2**-(q+f) ~ (1 - f/2) >> q``, integer normalisation, the bit-wise
integer square root, sigmoid by the exponential and an integer divider); the paper's public code
computes them in float, so the integer formats, widths and roundings below are ours and are the
specification this module follows exactly. Where a choice was ours it says so.
``>>`` is an arithmetic (flooring) right shift, ``//`` a flooring division.

DI-Exp(u; m, k). Input: an integer ``u <= 0`` at the dyadic real scale ``m * 2**-k`` (``m >= 1``).
``L = 23637`` (``log2 e * 2**14``, rounded: our choice of a 15-bit constant multiply; I-ViT's
``x + (x >> 1) - (x >> 4)`` form is 1.4375, a 0.4 % error in the exponent)::

    t = (-u) * m * L                 -u * scale * log2(e), n = k + 14 fractional bits
    q = t >> n ;  f = t - (q << n)   integer and fractional part, f in [0, 2**n)
    y = 2**n - (f >> 1)              2**-f ~ 1 - f/2, in (2**(n-1), 2**n]
    E = y >> (q + n - B)             (a left shift by B - n - q when q + n < B; shifts >= 63 give 0)

``E`` approximates ``exp(u * scale)`` at ``2**-B`` (``B = exp_bits``, 16): ``E(0) = 2**B``.
``t < 2**62`` is required (checked offline by each kernel from its largest ``-u`` and ``m``).

DI-ClippedSoftmax. Input: int32 scores ``a`` (B, H, Tq, Tk) at the static real scale ``S``, the
mask policy of :func:`intsim.softmax.score_rows` (padding and/or causal). Offline:
``S ~ M_s 2**-k_s`` with ``M_s`` in ``[2**15, 2**16)`` (round half even), and the clip range in
score codes ``C = max(1, floor(clip / S))`` (``clip = 15``: exp(-15) ~ 3e-7, the value the paper
recommends). Per row, over its visible keys:

1. ``mx``, ``mn``: their largest and smallest score; ``d_t = max(a_t - mx, -2**31)``.
2. dynamic clipping: ``R = max(1, min(mx - mn, C))``, the row's clipped range (a row spanning less
   than ``clip`` is quantized finer: the "dynamic" of DI-ClippedSoftmax).
3. ``u_t = max(-2**I, (d_t * Q) >> 22)`` with ``Q = floor(2**(I + 22) / R)`` (one divider per
   row): the difference in ``I = in_bits`` (8) bit codes of the clipped range, real scale
   ``S R 2**-I`` (``m = M_s R``, ``k = k_s + I``); keys below ``mx - R`` clip to ``-2**I``.
4. ``E_t = DI-Exp(u_t; M_s R, k_s + I)`` (B = 16); masked keys ``E_t = 0``; ``Z = sum_t E_t``.
5. ``F = floor(2**(P + 32) / Z)`` (one divider per row), ``p_t = min(2**P - 1,
   round_half_up(E_t F / 2**32))``: unsigned ``P = out_bits`` (8) at scale ``2**-P`` (saturations
   counted). A row with every key masked gives zeros.

DI-Norm (``IntLayerNorm(rsqrt="bitwise")``, registered as the norm ``illm``): the integer norm of
:mod:`intsim.layernorm` (centred for LayerNorm, uncentred for RMSNorm) whose square root is the
paper's bit-wise check: ``s = isqrt_bitwise(V)`` decides one result bit per step from the top
(``b = 2**j`` for ``j = floor(msb(V)/2)`` down to 0: ``s + b`` is kept iff ``(s + b)**2 <= V``),
``floor(sqrt V)`` in ``floor(msb(V)/2) + 1`` compare/shift steps with no divider; then the integer
division ``z = floor((d' 2**(Z+1) + s) / (2 s))`` and per-token (dynamic) output scaling as there.
Its values equal the Newton mode's (both are ``floor(sqrt V)``); the hardware differs (fixed
steps, no iterative divider), which the op statistics record.

DI-SiLU (DI-SwiGLU's sigmoid; the gate product is :class:`intsim.layers.ActivationSite`'s).
Input: codes ``x`` in ``s{in_bits}`` at the real scale ``S = M_s 2**-k_s``, the dyadic rounding
(16-bit ``M_s``, half even) of ``in_absmax / (2**(in_bits-1) - 1)`` (the requantizer before it
targets exactly ``S``). Per element, ``K = sig_bits`` (15)::

    E   = DI-Exp(-|x|; M_s, k_s)                 exp(-|x| S) at 2**-16
    num = 2**16 if x >= 0 else E ;  den = 2**16 + E
    s   = floor((num 2**(K+1) + den) / (2 den))  sigmoid(x S) at 2**-K, round half up (a divider)
    y   = x * s                                  int32 at out_scale = S 2**-K

(``sigmoid(x) = 1 / (1 + exp(-x))`` and ``exp(x) / (1 + exp(x))`` for negative ``x``: the
exponential only ever sees ``-|x|``, so it never exceeds 1.)
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .errors import GQAError
from .fixedpoint import INT32_MIN, round_half_up_bf
from .ibert import check_codes, int_codes, signed_width
from .jit import parallel_njit
from .rangereduce import msb
from .softmax import check_prob_bits, prob_dtype, score_rows, visible_row

LOG2E_FRAC = 14
LOG2E_M = 23637            # round(log2(e) * 2**14)
EXP_BITS = 16
RANGE_GUARD = 22           # fractional bits of the per-row range reciprocal Q
NORM_GUARD = 32            # fractional bits of the per-row normalisation F


# --- DI-Exp ------------------------------------------------------------------------------------

@numba.njit(cache=True, inline="always")
def di_exp1(u, m, k, b):
    """DI-Exp of one integer ``u <= 0`` at scale ``m 2**-k``, at ``2**-b`` (module docstring)."""
    n = k + LOG2E_FRAC
    t = (-u) * m * LOG2E_M
    q = t >> n
    f = t - (q << n)
    y = (np.int64(1) << n) - (f >> 1)
    sh = q + n - b
    if sh >= 0:
        return y >> min(sh, 63)
    return y << (-sh)


def dyadic_scale(s: float, field: str) -> tuple[int, int]:
    """``(M, k)`` with ``M * 2**-k`` the rounding of ``s > 0`` to a 16-bit mantissa ``M`` in
    ``[2**15, 2**16)`` (half even)."""
    if not (math.isfinite(s) and s > 0):
        raise GQAError(field, f"{s!r} is not a positive number")
    k = 15 - math.frexp(s)[1] + 1                  # s = f 2**e, f in [0.5, 1): s 2**k in [2**15, 2**16)
    m = round(s * 2.0**k)
    if m == 1 << 16:
        m, k = m // 2, k - 1
    if k < 0 or k > 48:
        raise GQAError(field, f"{s!r} needs a shift of {k}", "use a scale within [2**-32, 2**15]")
    return m, k


def check_exp_range(max_neg_u: int, m: int, field: str) -> None:
    """DI-Exp's register ``t = (-u) m L`` must stay below ``2**62``."""
    if max_neg_u * m * LOG2E_M >= 1 << 62:
        raise GQAError(field, f"DI-Exp's product {max_neg_u} x {m} x {LOG2E_M} exceeds 62 bits",
                       "use a coarser input scale or a smaller clip range")


def _count_di_exp(stats, op, n, u_bits, m_bits, k):
    stats.count("mul", f"{op}.log2e", n, a_bits=u_bits, b_bits=m_bits + LOG2E_FRAC + 1)
    stats.count("shift", f"{op}.split", n, bits=u_bits + m_bits + LOG2E_FRAC + 1)
    stats.count("add", f"{op}.linear", n, bits=k + LOG2E_FRAC + 1)
    stats.count("shift", f"{op}.pow2", n, bits=k + LOG2E_FRAC + 1)


# --- DI-ClippedSoftmax -------------------------------------------------------------------------

@parallel_njit
def _clipped_softmax(scores, mask, rows_per_batch, q_len, key_offset, m_s, k_s, c_clip, in_bits, out_bits,
                     out, peaks):
    rows, T = scores.shape
    top = (np.int64(1) << out_bits) - 1
    u_min = -(np.int64(1) << in_bits)
    for r in numba.prange(rows):
        b, last, mx = visible_row(scores, mask, r, rows_per_batch, q_len, key_offset)
        mn = mx
        for t in range(min(T, last + 1)):
            if mask[b, t] and scores[r, t] < mn:
                mn = np.int64(scores[r, t])
        rng = max(np.int64(1), min(mx - mn, c_clip))
        qr = (np.int64(1) << (in_bits + RANGE_GUARD)) // rng
        m = m_s * rng
        e = np.zeros(T, np.int64)
        z = np.int64(0)
        for t in range(T):
            if mask[b, t] and t <= last:
                d = max(np.int64(scores[r, t]) - mx, INT32_MIN)
                u = max(u_min, (d * qr) >> RANGE_GUARD)
                e[t] = di_exp1(u, m, k_s + in_bits, EXP_BITS)
                z += e[t]
        f = (np.int64(1) << (out_bits + NORM_GUARD)) // z if z > 0 else np.int64(0)   # every key masked: 0
        sat = 0
        for t in range(T):
            p = round_half_up_bf(e[t] * f, NORM_GUARD)
            sat += p > top
            out[r, t] = min(p, top)
        peaks[r, 0] = z
        peaks[r, 1] = sat
        peaks[r, 2] = rng


class DIClippedSoftmax:
    """I-LLM's DI-ClippedSoftmax for int32 scores at real scale ``in_scale`` (module docstring)."""

    name = "illm"

    def __init__(self, in_scale: float, clip: float = 15.0, in_bits: int = 8, out_bits: int = 8):
        if not (math.isfinite(clip) and clip > 0):
            raise GQAError("softmax_clip", f"{clip!r} is not a positive number", "I-LLM recommends 15")
        if not 2 <= in_bits <= 16:
            raise GQAError("softmax.in_bits", f"{in_bits} is outside [2, 16]", "8 as in I-LLM")
        out_bits = check_prob_bits(out_bits)
        self.in_scale, self.clip, self.in_bits, self.out_bits = float(in_scale), float(clip), in_bits, out_bits
        self.out_scale = 2.0**-out_bits
        self.m_s, self.k_s = dyadic_scale(self.in_scale, "softmax.in_scale")
        self.c_clip = max(1, math.floor(self.clip / self.in_scale))
        if self.c_clip >= 1 << 31:
            raise GQAError("softmax_clip", f"{clip!r} spans more than 2**31 score codes at scale {in_scale:g}",
                           "use a smaller clip")
        check_exp_range(1 << in_bits, self.m_s * self.c_clip, "softmax_clip")

    def __call__(self, scores, key_mask=None, stats=None, name="softmax", causal=False):
        """int32 scores (B, H, Tq, Tk), key mask (B, Tk) or None, causal -> probabilities at 2**-out_bits."""
        s2, mask, rows_per_batch, q_len, key_offset = score_rows(scores, key_mask, causal)
        dtype = prob_dtype(self.out_bits)
        if scores.size == 0:
            return np.zeros(scores.shape, dtype)
        out = np.empty(s2.shape, dtype)
        peaks = np.empty((s2.shape[0], 3), np.int64)
        _clipped_softmax(s2, mask, rows_per_batch, q_len, key_offset, self.m_s, self.k_s, self.c_clip,
                         self.in_bits, self.out_bits, out, peaks)
        if stats is not None:
            self._count(stats, name, *s2.shape, peaks)
        return out.reshape(scores.shape)

    def _count(self, stats, name, rows, T, peaks):
        n = rows * T
        m_bits = (self.m_s * self.c_clip).bit_length()
        z_bits = signed_width((1 << EXP_BITS) * T)
        stats.count("compare", f"{name}.max", n, bits=32)
        stats.count("compare", f"{name}.min", n, bits=32)
        stats.count("add", f"{name}.sub_max", n, bits=32)
        stats.count("div", f"{name}.range_reciprocal", rows, bits=self.in_bits + RANGE_GUARD + 1)
        stats.count("mul", f"{name}.range_scale", rows, a_bits=16, b_bits=32)
        stats.count("mul", f"{name}.clip", n, a_bits=32, b_bits=self.in_bits + RANGE_GUARD + 1)
        _count_di_exp(stats, f"{name}.exp", n, self.in_bits + 1, m_bits, self.k_s + self.in_bits)
        stats.count("add", f"{name}.sum", n, bits=z_bits)
        stats.count("div", f"{name}.normalize_div", rows, bits=self.out_bits + NORM_GUARD + 1)
        stats.count("mul", f"{name}.normalize", n, a_bits=EXP_BITS + 1, b_bits=self.out_bits + NORM_GUARD - EXP_BITS + 1)
        stats.count("shift", f"{name}.normalize", n, bits=self.out_bits + NORM_GUARD + 1)
        stats.accumulator(f"{name}.sum", int(peaks[:, 0].max()), max(32, z_bits))
        stats.saturated(f"{name}.prob_max", int(peaks[:, 1].sum()))


# --- DI-Norm's square root ---------------------------------------------------------------------

@numba.njit(cache=True, inline="always")
def isqrt_bitwise(v):
    """``(floor(sqrt v), steps)`` by the bit-wise check (module docstring, DI-Norm); ``v >= 0``."""
    if v <= 0:
        return np.int64(0), 0
    j = msb(v) // 2
    s = np.int64(0)
    steps = 0
    while j >= 0:
        c = s + (np.int64(1) << j)
        if c * c <= v:
            s = c
        steps += 1
        j -= 1
    return s, steps


# --- DI-SiLU -----------------------------------------------------------------------------------

@parallel_njit
def _di_silu(x, lo, hi, m_s, k_s, k_sig, out, peaks):
    n = x.shape[0]
    chunks = peaks.shape[0]
    one = np.int64(1) << EXP_BITS
    for ch in numba.prange(chunks):
        bad = 0
        for i in range(ch * n // chunks, (ch + 1) * n // chunks):
            v = np.int64(x[i])
            if v < lo or v > hi:
                bad += 1
            e = di_exp1(-abs(v), m_s, k_s, EXP_BITS)
            num = one if v >= 0 else e
            den = one + e
            s = (num * (np.int64(1) << (k_sig + 1)) + den) // (2 * den)
            out[i] = v * s
        peaks[ch, 0] = bad


class DISiLU:
    """I-LLM's SiLU (DI-SwiGLU's sigmoid by DI-Exp and an integer divider), codes in ``s{in_bits}``."""

    name = "illm"

    def __init__(self, in_absmax: float, in_bits: int = 8, sig_bits: int = 15):
        if not 2 <= in_bits <= 16:
            raise GQAError("silu.in_bits", f"{in_bits} is outside [2, 16]", "the GEMM operand width (8)")
        if not 1 <= sig_bits or in_bits + sig_bits > 31:
            raise GQAError("silu.sig_bits", f"{sig_bits} with {in_bits}-bit inputs overflows the int32 output",
                           f"use sig_bits <= {31 - in_bits}")
        top = (1 << (in_bits - 1)) - 1
        self.m_s, self.k_s = dyadic_scale(max(float(in_absmax), 1e-8) / top, "silu.in_absmax")
        check_exp_range(top + 1, self.m_s, "silu.in_absmax")
        self.in_bits, self.sig_bits = in_bits, sig_bits
        self.in_scale = self.m_s * 2.0**-self.k_s
        self.out_scale = self.in_scale * 2.0**-sig_bits

    def __call__(self, q, stats=None, name="silu"):
        q = int_codes(q)
        flat = q.reshape(-1)
        out = np.empty(flat.shape, np.int32)
        chunks = max(1, min(64, flat.size // 4096))
        peaks = np.zeros((chunks, 1), np.int64)
        lo, hi = -(1 << (self.in_bits - 1)), (1 << (self.in_bits - 1)) - 1
        _di_silu(flat, lo, hi, self.m_s, self.k_s, self.sig_bits, out, peaks)
        check_codes(int(peaks[:, 0].sum()), self.in_bits, name)
        if stats is not None and flat.size:
            n = flat.size
            _count_di_exp(stats, f"{name}.exp", n, self.in_bits, 16, self.k_s)
            stats.count("add", f"{name}.den", n, bits=EXP_BITS + 2)
            stats.count("div", f"{name}.sigmoid", n, bits=EXP_BITS + self.sig_bits + 3)
            stats.count("mul", f"{name}.gate", n, a_bits=self.in_bits, b_bits=self.sig_bits + 1)
        return out.reshape(q.shape)
