"""I-BERT's integer-only GELU and softmax (Kim et al., ICML 2021), behind intsim's kernel interfaces.

Baselines written from the paper's algorithms ("I-BERT: Integer-only BERT Quantization",
Algorithms 1-3) with the interfaces of the PWL kernels: :class:`IBertGelu` is a GELU kernel
as :mod:`intsim.gelu` describes, :class:`IBertSoftmax` a softmax kernel as
:class:`intsim.softmax.IntSoftmax`. I-BERT's LayerNorm (integer Newton square root) is
:class:`intsim.layernorm.IntLayerNorm` with ``rsqrt="newton"``.

Specification (gemmlowp style: the code follows these formulas exactly). Real numbers appear
only offline, in float64, to derive integer constants; every run-time operation is on
integers held in int64 registers whose declared widths are checked. ``floor`` is toward -inf,
``>>`` is an arithmetic (flooring) right shift, ``//`` a flooring division.

I-POLY (Algorithm 1): ``a (x + b)**2 + c`` of ``x = q S`` is, on integers,
``q_b = floor(b / S)``, ``q_c = floor(c / (a S**2))``, ``q_L = (q + q_b)**2 + q_c`` at scale
``S_L = a S**2``.

i-GELU (Algorithm 2). Input: codes ``q`` in ``s{in_bits}`` (``[-2**(in_bits-1),
2**(in_bits-1) - 1]``; codes outside raise) at the real scale
``S = in_absmax / (2**(in_bits-1) - 1)`` (I-BERT needs no power-of-two scale; this is the
symmetric scale at which the calibrated ``in_absmax`` is the largest code -- our choice, the
paper takes ``S`` from its quantizer). Per element:

1. i-erf of ``x / sqrt(2)``: ``S' = S / sqrt(2)`` (float64, ``S / math.sqrt(2.0)``), ``a = -0.2888``,
   ``b = -1.769``, ``c = 1``;  ``q_b = floor(b / S') <= -1``, ``q_c = floor(c / (a * S' * S')) <= -1``;
   ``L = (min(|q|, -q_b) + q_b)**2 + q_c`` (the clip at ``-b/S'`` is taken at the integer
   ``-q_b``, as I-BERT's code does, so a clipped ``|q|`` gives exactly ``L = q_c``: erf ~ 1);
   ``q_erf = floor(sgn(q) * L / 2**t)``, ``S_erf = a * S' * S' * 2**t`` (negative: ``a < 0``).
2. ``q_1 = floor(1 / S_erf)``; ``y = q * (q_erf + q_1)`` at scale ``S * S_erf / 2``.
3. Output: the int32 code ``-y`` at ``out_scale = -S * S_erf / 2 > 0``: the same real value
   ``y * S * S_erf / 2``, negated so that the interface's scale is positive (in hardware the
   sign folds into the constants; it is not counted as an operation).

``t`` is the smallest shift ``>= 0`` with ``2**(in_bits-1) * ((Lmax >> t) + 1 + |q_1(t)|) <=
2**31 - 1``, ``Lmax = max(|q_c|, |q_b**2 + q_c|)`` the largest ``|L|``: the output then fits
int32. ``t = 0`` (Algorithm 2 exactly) for ``in_bits = 8`` whenever ``in_absmax > ~0.12``;
``t > 0`` generalises the reference implementation's ``floor(y / 2**14)`` ("avoid overflow",
a fixed 14 there, for 32-bit inputs). Registers: ``|q| + q_b`` in ``bits(q_b) + 1``, ``L`` in
``bits(Lmax) + 1`` (signed), ``y`` in 32 bits.

i-softmax. Input: int32 scores ``a`` (B, H, Tq, Tk) at the real scale ``S = in_scale`` (the
value of one score code, fixed offline; ``S < ln 2`` is required so that ``q_ln2 >= 1``), a
key mask (B, Tk). Per row:

1. ``mx = max_t a_t`` over unmasked keys (the mask policy of :func:`intsim.softmax.score_rows`:
   padding and/or causal); ``d_t = max(a_t - mx, -2**31)`` (``<= 0``; int64, the
   clamp as in :mod:`intsim.softmax`).
2. i-exp (Algorithm 3): ``q_ln2 = floor(ln2 / S)``; ``z = floor(-d / q_ln2)`` (``>= 0``);
   ``q_p = d + z * q_ln2`` in ``(-q_ln2, 0]``; I-POLY with ``a = 0.3585``, ``b = 1.353``,
   ``c = 0.344``: ``q_b = floor(b / S)``, ``q_c = floor(c / (a * S * S))``,
   ``L = (q_p + q_b)**2 + q_c > 0`` at ``S_L = a S**2``; then ``exp(d S) ~ L S_L 2**-z``.
3. width of the exponentials: ``E = L >> min(z + s, 62)`` (one flooring shift: Algorithm 3's
   ``>> z`` plus a static ``s``; ``L < 2**62`` so the cap only stands for "zero"), at scale
   ``S_L 2**s``. ``s`` is the smallest shift ``>= 0`` with ``Lmax >> s <= 2**(exp_bits-1) - 1``,
   ``Lmax`` the larger of ``L`` at ``q_p = 0`` and ``q_p = 1 - q_ln2`` (``L`` is convex in
   ``q_p``). This stands for the reference implementation's 16-bit requantization of the
   exponentials before the sum (``QuantAct(16)``), here as a power-of-two shift chosen offline
   so it stays integer-only; ``exp_bits=None`` gives ``s = 0``, Algorithm 3 literally.
   Masked keys: ``E = 0``. ``Z = sum_t E_t``.
4. probabilities, unsigned ``out_bits`` (8: UINT8) at scale ``2**-out_bits``, saturated at
   ``2**out_bits - 1`` (counted): ``p_t = floor((E_t * 2**out_bits + floor(Z / 2)) / Z)``, the
   round-half-up integer divider of :mod:`intsim.softmax` (``recip="divider"``). A row with
   every key masked (``Z = 0``) gives zeros.

Deviations from the paper. Forced by the interfaces: the scales are positive (GELU's output
code negated, value unchanged); the normalisation is :mod:`intsim.softmax`'s divider to UINT8
at ``2**-8`` (the reference implementation computes ``floor(2**32 / Z)`` once per row and
``floor(E * that / 2**24)``). Our choices: the input scale of GELU; the exponentials narrowed to
``exp_bits`` by a shift (``exp_bits=None`` disables it); the constants are the paper's (its
released code refits exp's polynomial and pre-shifts by ``2**30``; its i-GELU divides ``x`` by
1.4142 rather than ``sqrt(2)``).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .errors import GQAError
from .fixedpoint import INT32_MAX, INT32_MIN
from .jit import parallel_njit
from .softmax import check_prob_bits, prob_dtype, score_rows, visible_row

GELU_A, GELU_B, GELU_C = -0.2888, -1.769, 1.0
EXP_A, EXP_B, EXP_C = 0.3585, 1.353, 0.344
LN2 = math.log(2.0)
CHUNK = 1 << 14          # elements per parallel work item of the elementwise kernel
INT_DTYPES = (np.int8, np.int16, np.int32, np.int64)


def signed_width(v: int) -> int:
    """Signed width of a register holding values up to ``|v|``."""
    return int(abs(int(v))).bit_length() + 1


def int_codes(q):
    """A contiguous array of integer codes in a dtype the numba kernels are compiled for."""
    q = np.asarray(q)
    q = np.ascontiguousarray(q).reshape(q.shape)      # (ascontiguousarray alone makes 0-d 1-d)
    if q.dtype.kind not in "iu":
        raise GQAError("codes", f"have dtype {q.dtype}", "pass an integer array")
    if q.dtype.type not in INT_DTYPES:
        q = q.astype(np.int64)
    return q


def check_codes(bad: int, in_bits: int, name: str) -> None:
    if bad:
        raise GQAError(name, f"{bad} input codes lie outside s{in_bits}",
                       "requantize the input to the kernel's in_bits first")


# --- i-GELU ----------------------------------------------------------------------------------

@parallel_njit
def _ibert_gelu(q, lo, hi, q_b, q_c, t, q_1, out, peaks):
    n = q.shape[0]
    chunks = peaks.shape[0]
    for ch in numba.prange(chunks):
        pl = np.int64(0)
        py = np.int64(0)
        bad = 0
        for i in range(ch * CHUNK, min(n, (ch + 1) * CHUNK)):
            x = np.int64(q[i])
            if x < lo or x > hi:
                bad += 1
            a = -x if x < 0 else x
            if a > -q_b:
                a = -q_b
            L = (a + q_b) * (a + q_b) + q_c
            sl = L if x > 0 else (-L if x < 0 else np.int64(0))
            y = x * ((sl >> t) + q_1)
            out[i] = -y
            pl = max(pl, abs(L))
            py = max(py, abs(y))
        peaks[ch, 0] = pl
        peaks[ch, 1] = py
        peaks[ch, 2] = bad


class IBertGelu:
    """I-BERT's i-GELU for codes in ``s{in_bits}`` (module docstring)."""

    name = "ibert"

    def __init__(self, in_absmax: float, in_bits: int = 8):
        if not (np.isfinite(in_absmax) and in_absmax > 0):
            raise GQAError("gelu.in_absmax", f"{in_absmax!r} is not a positive number")
        if not 2 <= in_bits <= 24:
            raise GQAError("gelu.in_bits", f"{in_bits} is outside [2, 24]")
        self.in_bits = int(in_bits)
        self.code_min, self.code_max = -(1 << (in_bits - 1)), (1 << (in_bits - 1)) - 1
        self.in_scale = float(in_absmax) / self.code_max
        s1 = self.in_scale / math.sqrt(2.0)
        self.q_b = math.floor(GELU_B / s1)
        self.q_c = math.floor(GELU_C / (GELU_A * s1 * s1))
        if -self.q_b >= 1 << 30 or -self.q_c >= 1 << 61:
            raise GQAError("gelu.in_absmax", f"{in_absmax!r} is too small for s{in_bits}: the erf polynomial's "
                           "constants exceed int64", "raise in_absmax or lower in_bits")
        self.l_max = max(abs(self.q_c), abs(self.q_b * self.q_b + self.q_c))
        top = 1 << (in_bits - 1)
        for t in range(63):
            s_erf = GELU_A * s1 * s1 * 2.0**t
            q_1 = math.floor(1.0 / s_erf)
            if top * ((self.l_max >> t) + 1 + abs(q_1)) <= INT32_MAX:
                break
        else:  # pragma: no cover - 62 bits of shift always suffice for in_bits <= 24
            raise GQAError("gelu.in_bits", "no shift fits the output in int32")
        self.t, self.q_1, self.s_erf = t, q_1, s_erf
        self.out_scale = -self.in_scale * s_erf / 2.0

    def __call__(self, q, stats=None, name="gelu"):
        q = int_codes(q)
        if q.size == 0:
            return np.zeros(q.shape, np.int32)
        flat = q.reshape(-1)
        out = np.empty(flat.shape, np.int32)
        peaks = np.zeros(((flat.size + CHUNK - 1) // CHUNK, 3), np.int64)
        _ibert_gelu(flat, self.code_min, self.code_max, self.q_b, self.q_c, self.t, self.q_1, out, peaks)
        check_codes(int(peaks[:, 2].sum()), self.in_bits, name)
        if stats is not None:
            self._count(stats, name, flat.size, peaks)
        return out.reshape(q.shape)

    def _count(self, stats, name, n, peaks):
        b = self.in_bits
        p_bits = signed_width(self.q_b)
        l_bits = signed_width(self.l_max)
        s_bits = max(l_bits - self.t, signed_width(self.q_1)) + 1
        stats.count("compare", f"{name}.sign", n, bits=b)
        stats.count("compare", f"{name}.clip", n, bits=p_bits)
        stats.count("add", f"{name}.poly_b", n, bits=p_bits)
        stats.count("mul", f"{name}.poly_square", n, a_bits=p_bits, b_bits=p_bits)
        stats.count("add", f"{name}.poly_c", n, bits=l_bits)
        stats.count("add", f"{name}.erf_sign", n, bits=l_bits)
        if self.t:
            stats.count("shift", f"{name}.erf_shift", n, bits=l_bits)
        stats.count("add", f"{name}.add_one", n, bits=s_bits)
        stats.count("mul", f"{name}.out", n, a_bits=b, b_bits=s_bits)
        if n:
            stats.accumulator(f"{name}.erf_poly", int(peaks[:, 0].max()), l_bits)
            stats.accumulator(f"{name}.out", int(peaks[:, 1].max()), 32)


# --- i-softmax -------------------------------------------------------------------------------

@parallel_njit
def _ibert_softmax(scores, mask, rows_per_batch, q_len, key_offset, q_ln2, q_b, q_c, s, out_bits, out, peaks):
    rows, T = scores.shape
    top = (np.int64(1) << out_bits) - 1
    for r in numba.prange(rows):
        b, last, mx = visible_row(scores, mask, r, rows_per_batch, q_len, key_offset)
        e = np.zeros(T, np.int64)
        z = np.int64(0)
        lmax = np.int64(0)
        for t in range(T):
            if mask[b, t] and t <= last:
                d = max(np.int64(scores[r, t]) - mx, INT32_MIN)
                k = (-d) // q_ln2
                qp = d + k * q_ln2
                L = (qp + q_b) * (qp + q_b) + q_c
                lmax = max(lmax, L)
                e[t] = L >> min(k + s, 62)
                z += e[t]
        sat = 0
        if z == 0:
            for t in range(T):
                out[r, t] = 0
        else:
            for t in range(T):
                p = ((e[t] << out_bits) + (z >> 1)) // z
                if p > top:
                    sat += 1
                    p = top
                out[r, t] = p
        peaks[r, 0] = z
        peaks[r, 1] = lmax
        peaks[r, 2] = sat


class IBertSoftmax:
    """I-BERT's i-exp softmax for int32 scores at real scale ``in_scale`` (module docstring)."""

    name = "ibert"

    def __init__(self, in_scale: float, out_bits: int = 8, exp_bits: int | None = 16):
        if not (np.isfinite(in_scale) and 0 < in_scale < LN2):
            raise GQAError("softmax.in_scale", f"{in_scale!r} is outside (0, ln 2)",
                           "i-exp needs at least one code per ln 2")
        out_bits = check_prob_bits(out_bits)
        if exp_bits is not None and not 2 <= exp_bits <= 40:
            raise GQAError("softmax.exp_bits", f"{exp_bits} is outside [2, 40]", "16 follows I-BERT's QuantAct(16)")
        S = float(in_scale)
        self.in_scale, self.out_bits, self.exp_bits = S, int(out_bits), exp_bits
        self.out_scale = 2.0**-out_bits
        self.q_ln2 = math.floor(LN2 / S)
        self.q_b = math.floor(EXP_B / S)
        self.q_c = math.floor(EXP_C / (EXP_A * S * S))
        self.l_max = max((p + self.q_b) ** 2 + self.q_c for p in (0, 1 - self.q_ln2))
        if self.l_max >= 1 << 62:
            raise GQAError("softmax.in_scale", f"{in_scale!r} is too small: the exp polynomial exceeds int64",
                           "requantize the scores to a coarser scale")
        s = 0
        if exp_bits is not None:
            while self.l_max >> s > (1 << (exp_bits - 1)) - 1:
                s += 1
        self.s = s
        self.e_max = self.l_max >> s
        self.exp_scale = EXP_A * S * S * 2.0**s

    def __call__(self, scores, key_mask=None, stats=None, name="softmax", causal=False):
        """int32 scores (B, H, Tq, Tk), key mask (B, Tk) or None, causal -> probabilities at 2**-out_bits."""
        s2, mask, rows_per_batch, q_len, key_offset = score_rows(scores, key_mask, causal)
        Tk = s2.shape[1]
        if scores.size == 0:
            return np.zeros(scores.shape, prob_dtype(self.out_bits))
        if self.e_max * ((1 << self.out_bits) + Tk) >= 1 << 63:
            raise GQAError("softmax.exp_bits", f"the divider's dividend exceeds int64 for {Tk} keys",
                           "set exp_bits (16 follows I-BERT)")
        out = np.empty(s2.shape, prob_dtype(self.out_bits))
        peaks = np.empty((s2.shape[0], 3), np.int64)
        _ibert_softmax(s2, mask, rows_per_batch, q_len, key_offset, self.q_ln2, self.q_b, self.q_c,
                       self.s, self.out_bits, out, peaks)
        if stats is not None and out.size:
            self._count(stats, name, *s2.shape, peaks)
        return out.reshape(scores.shape)

    def _count(self, stats, name, rows, T, peaks):
        n = rows * T
        z_max = self.e_max * T
        l_bits = signed_width(self.l_max)
        p_bits = signed_width(self.q_b)
        k_bits = signed_width((1 << 31) // self.q_ln2 + 1)
        div_bits = max(32, int(self.e_max * ((1 << self.out_bits) + T)).bit_length())
        stats.count("compare", f"{name}.max", n, bits=32)
        stats.count("add", f"{name}.sub_max", n, bits=32)
        stats.count("div", f"{name}.exp_quotient", n, bits=32)
        stats.count("mul", f"{name}.exp_remainder", n, a_bits=k_bits, b_bits=signed_width(self.q_ln2))
        stats.count("add", f"{name}.exp_remainder", n, bits=32)
        stats.count("add", f"{name}.poly_b", n, bits=p_bits)
        stats.count("mul", f"{name}.poly_square", n, a_bits=p_bits, b_bits=p_bits)
        stats.count("add", f"{name}.poly_c", n, bits=l_bits)
        stats.count("shift", f"{name}.exp_shift", n, bits=l_bits)
        stats.count("add", f"{name}.sum", n, bits=signed_width(z_max))
        stats.count("div", f"{name}.divide", n, bits=div_bits)
        stats.accumulator(f"{name}.exp_poly", int(peaks[:, 1].max()), l_bits)
        stats.accumulator(f"{name}.sum", int(peaks[:, 0].max()), max(32, signed_width(z_max)))
        stats.saturated(f"{name}.prob_max", int(peaks[:, 2].sum()))
