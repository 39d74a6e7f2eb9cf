"""I-ViT's integer-only softmax and GELU (Li & Gu, ICCV 2023), behind intsim's kernel interfaces.

Baselines written from the paper's algorithms ("I-ViT: Integer-only Quantization for Efficient
Vision Transformer Inference", Algorithm 1 Shiftmax, Algorithm 2 ShiftGELU) with the
interfaces of the PWL kernels: :class:`Shiftmax` is a softmax kernel as
:class:`intsim.softmax.IntSoftmax`, :class:`ShiftGelu` a GELU kernel as :mod:`intsim.gelu`
describes. Everything is shifts, adds, integer multiplies and integer divisions.

Specification (gemmlowp style: the code follows these formulas exactly). Real numbers appear
only offline, to derive integer constants; run-time registers are int64 with declared widths.
``>>`` is an arithmetic (flooring) right shift, ``//`` a flooring division.

ShiftExp_N(I) of an integer ``I <= 0`` at real scale ``S`` (``exp(I S)``, Algorithm 1):

- ``I_p = I + (I >> 1) - (I >> 4)``                  (``I log2(e)``, ``log2 e ~ 1.4375``; ``I_p <= 0``)
- ``I_0 = floor(1/S + 1/2)``                           (the code of 1, rounded; ``>= 1`` required)
- ``q = floor(I_p / -I_0) = (-I_p) // I_0 >= 0``       (integer part of ``-I_p S``)
- ``r = -(I_p - q * (-I_0))`` in ``[0, I_0)``          (``-r S`` is the fractional part)
- ``I_b = ((-r) >> 1) + I_0`` in ``[I_0/2, I_0]``     (``2**(-r S) ~ 1 - r S/2``)
- ``E = floor(I_b * 2**(N - q))``: ``I_b << (N - q)`` when ``q <= N``, else
  ``I_b >> min(q - N, 62)`` (``I_b < 2**62``: the cap only stands for "zero"); scale ``S 2**-N``.

The paper writes ``I_b << (N - q)`` with "N a sufficiently large integer" and its code clamps
``q <= N``; here ``q > N`` shifts right instead (``E`` underflows to 0: a faithful exp) and
``N`` is chosen below (it may be negative).

Shiftmax. Input: int32 scores ``a`` (B, H, Tq, Tk) at real scale ``S = in_scale`` (``S <= 2``),
a key mask (B, Tk). Per row:

1. ``mx = max_t a_t`` over unmasked keys (the mask policy of :func:`intsim.softmax.score_rows`:
   padding and/or causal); ``d_t = max(a_t - mx, -2**31) <= 0`` (int64; the
   clamp as in :mod:`intsim.softmax`).
2. ``E_t = ShiftExp_N(d_t)``; masked keys ``E_t = 0``; ``Z = sum_t E_t``.
   ``N = exp_bits - 1 - bits(I_0)`` (``bits`` = ``int.bit_length``): the largest ``N`` with
   ``E <= floor(I_0 2**N) <= 2**(exp_bits-1) - 1``, so every exponential fits ``exp_bits``
   (16: the same 15-bit magnitude as :class:`intsim.ibert.IBertSoftmax`).
3. IntDiv: ``F = floor(2**M / Z)`` once per row, ``p_t = min((E_t * F) >> (M - out_bits),
   2**out_bits - 1)`` (saturations counted): unsigned ``out_bits`` (8: UINT8) at scale
   ``2**-out_bits``. ``M = div_bits`` (31, after the reference implementation's ``2**31 - 1``
   numerator; the paper leaves ``M`` open); ``Z <= 2**M`` is required (checked per call:
   ``Tk * floor(I_0 2**N) <= 2**M``). A row with every key masked (``Z = 0``) gives zeros.

The paper's IntDiv shifts by ``M - (k_out - 1)`` for a signed ``k_out``-bit output at scale
``2**-(k_out-1)``; our interface's output is unsigned at ``2**-out_bits``, hence
``M - out_bits``. Truncation throughout (every step floors), as in the paper.

ShiftGELU (Algorithm 2). Input: codes ``x`` in ``s{in_bits}`` (codes outside raise) at real
scale ``S = in_absmax / (2**(in_bits-1) - 1)`` (our choice: the symmetric scale at which the
calibrated ``in_absmax`` is the largest code). The rows are the last axis (a token's channels;
a 0-d or 1-d input is one row). Per element, ``k = sig_bits``:

1. ``I_p = x + (x >> 1) + (x >> 3) + (x >> 4)``       (``1.702 x ~ 1.6875 x``)
2. ``m = max(0, max_row I_p)``: the paper's row max, floored at 0 (our choice) so that both
   exponentials below are ``<= 1`` (an all-negative row would otherwise need ``exp(+|m| S)``).
3. ``E = ShiftExp_N(I_p - m)``, ``E_m = ShiftExp_N(-m)`` (once per row), both at scale ``S``;
   ``sigmoid(1.702 x S) = E / (E + E_m)``.
4. IntDiv with ``Z = E + E_m``: ``F = floor(2**M / Z)``, ``s = (E * F) >> (M - (k - 1))`` in
   ``[0, 2**(k-1)]`` at scale ``2**-(k-1)`` (``k`` = the paper's ``k_out``, 8 by default, as in
   the paper and its code); ``Z = 0`` (both exponentials underflowed) gives ``s = 0``.
5. Output: the int32 code ``x * s`` at ``out_scale = S 2**-(k-1)`` (``in_bits + k <= 32``).

``N`` and ``M`` (the paper: "sufficiently large"; its code uses N = 23, M = 31) are chosen
offline from the largest row max ``m_max = I_p(2**(in_bits-1) - 1)``: ``N`` is the smallest
``N >= 0`` with ``ShiftExp_N(-m_max) >= 2**(k+2)`` (``exp(-m)`` keeps ``k + 2`` bits at the
largest row max), ``M = max(31, bits(I_0) + N + 1 + k + 7)`` (``Z < 2**(bits(I_0) + N + 1)``, so
``F`` carries ``k + 7`` bits: its truncation costs at most ``2**-8`` of an output code). If that
``M`` exceeds 62 (int64; ``in_absmax`` above about ``(51 - 2k) / 2.43``: ~15 for ``k = 8``),
``M = 62`` and ``N = 62 - k - 8 - bits(I_0)``: ``exp(-m)`` then loses bits at large row maxima
and the kernel's accuracy degrades there (a property of the algorithm at finite width).
Registers: ``E, E_m, Z`` in ``bits(I_0) + N + 1`` bits (unsigned), ``E * F`` in ``M + 1``.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .errors import GQAError
from .fixedpoint import INT32_MIN
from .ibert import check_codes, int_codes, signed_width
from .jit import parallel_njit
from .softmax import check_prob_bits, prob_dtype, score_rows, visible_row

REF_DIV_BITS = 31


@numba.njit(cache=True, inline="always")
def shift_exp1(i, i0, n):
    """ShiftExp_N of one integer ``i <= 0`` (module docstring)."""
    ip = i + (i >> 1) - (i >> 4)
    q = (-ip) // i0
    r = -(ip + q * i0)
    ib = ((-r) >> 1) + i0
    if q <= n:
        return ib << (n - q)
    return ib >> min(q - n, 62)


def shift_exp(i: int, i0: int, n: int) -> int:
    """Python-integer ShiftExp_N (the offline parameter choice uses it)."""
    ip = i + (i >> 1) - (i >> 4)
    q = (-ip) // i0
    r = -(ip + q * i0)
    ib = ((-r) >> 1) + i0
    return ib << (n - q) if q <= n else ib >> min(q - n, 62)


def code_of_one(S: float, field: str) -> int:
    i0 = math.floor(1.0 / S + 0.5)
    if i0 < 1:
        raise GQAError(field, f"{S!r} is coarser than 2: ShiftExp needs I_0 = round(1/S) >= 1")
    if i0 >= 1 << 40:
        raise GQAError(field, f"{S!r} is too fine: I_0 = round(1/S) exceeds 40 bits", "use a coarser scale")
    return i0


def _count_shift_exp(stats, op, n, in_bits, i0, e_bits):
    """Operations of ``n`` ShiftExp evaluations on ``in_bits``-bit inputs."""
    p_bits = in_bits + 1
    stats.count("shift", f"{op}.log2e", 2 * n, bits=in_bits)
    stats.count("add", f"{op}.log2e", 2 * n, bits=p_bits)
    stats.count("div", f"{op}.quotient", n, bits=p_bits)
    stats.count("mul", f"{op}.remainder", n, a_bits=p_bits, b_bits=signed_width(i0))
    stats.count("add", f"{op}.remainder", n, bits=p_bits)
    stats.count("shift", f"{op}.linear", n, bits=signed_width(i0))
    stats.count("add", f"{op}.linear", n, bits=signed_width(i0))
    stats.count("shift", f"{op}.pow2", n, bits=e_bits)


# --- Shiftmax --------------------------------------------------------------------------------

@parallel_njit
def _shiftmax(scores, mask, rows_per_batch, q_len, key_offset, i0, n_exp, m_div, out_bits, out, peaks):
    rows, T = scores.shape
    top = (np.int64(1) << out_bits) - 1
    for r in numba.prange(rows):
        b, last, mx = visible_row(scores, mask, r, rows_per_batch, q_len, key_offset)
        e = np.zeros(T, np.int64)
        z = np.int64(0)
        for t in range(T):
            if mask[b, t] and t <= last:
                d = max(np.int64(scores[r, t]) - mx, INT32_MIN)
                e[t] = shift_exp1(d, i0, n_exp)
                z += e[t]
        sat = 0
        f = np.int64(0)
        if z == 0:
            for t in range(T):
                out[r, t] = 0
        else:
            f = (np.int64(1) << m_div) // z
            for t in range(T):
                p = (e[t] * f) >> (m_div - out_bits)
                if p > top:
                    sat += 1
                    p = top
                out[r, t] = p
        peaks[r, 0] = z
        peaks[r, 1] = f
        peaks[r, 2] = sat


class Shiftmax:
    """I-ViT's Shiftmax for int32 scores at real scale ``in_scale`` (module docstring)."""

    name = "ivit"

    def __init__(self, in_scale: float, out_bits: int = 8, exp_bits: int = 16, div_bits: int = REF_DIV_BITS):
        if not (np.isfinite(in_scale) and in_scale > 0):
            raise GQAError("softmax.in_scale", f"{in_scale!r} is not a positive number")
        out_bits = check_prob_bits(out_bits)
        if not 2 <= exp_bits <= 40:
            raise GQAError("softmax.exp_bits", f"{exp_bits} is outside [2, 40]")
        if not max(out_bits, exp_bits) <= div_bits <= 62:
            raise GQAError("softmax.div_bits", f"{div_bits} is outside [{max(out_bits, exp_bits)}, 62]",
                           "31 follows I-ViT's reference implementation")
        self.in_scale, self.out_bits, self.exp_bits, self.div_bits = float(in_scale), int(out_bits), exp_bits, div_bits
        self.out_scale = 2.0**-out_bits
        self.i0 = code_of_one(self.in_scale, "softmax.in_scale")
        self.n = exp_bits - 1 - self.i0.bit_length()
        self.e_max = self.i0 << self.n if self.n >= 0 else self.i0 >> -self.n
        self.exp_scale = self.in_scale * 2.0**-self.n

    def __call__(self, scores, key_mask=None, stats=None, name="softmax", causal=False):
        """int32 scores (B, H, Tq, Tk), key mask (B, Tk) or None, causal -> probabilities at 2**-out_bits."""
        s2, mask, rows_per_batch, q_len, key_offset = score_rows(scores, key_mask, causal)
        Tk = s2.shape[1]
        if scores.size == 0:
            return np.zeros(scores.shape, prob_dtype(self.out_bits))
        if Tk * self.e_max > 1 << self.div_bits:
            raise GQAError("softmax.div_bits", f"{Tk} keys of up to {self.e_max} overflow the {self.div_bits}-bit "
                           "IntDiv numerator", "raise div_bits or lower exp_bits")
        out = np.empty(s2.shape, prob_dtype(self.out_bits))
        peaks = np.empty((s2.shape[0], 3), np.int64)
        _shiftmax(s2, mask, rows_per_batch, q_len, key_offset, self.i0, self.n, self.div_bits,
                  self.out_bits, out, peaks)
        if stats is not None and out.size:
            self._count(stats, name, *s2.shape, peaks)
        return out.reshape(scores.shape)

    def _count(self, stats, name, rows, T, peaks):
        n = rows * T
        e_bits = signed_width(self.e_max) - 1                            # unsigned
        z_bits = signed_width(self.e_max * T)                            # signed, as OpStats measures
        f_bits = ((1 << self.div_bits) // self.e_max).bit_length()  # Z >= E at the row max = e_max
        stats.count("compare", f"{name}.max", n, bits=32)
        stats.count("add", f"{name}.sub_max", n, bits=32)
        _count_shift_exp(stats, f"{name}.exp", n, 32, self.i0, e_bits)
        stats.count("add", f"{name}.sum", n, bits=z_bits)
        stats.count("div", f"{name}.intdiv", rows, bits=self.div_bits + 1)
        stats.count("mul", f"{name}.normalize", n, a_bits=e_bits, b_bits=f_bits)
        stats.count("shift", f"{name}.normalize", n, bits=self.div_bits + 1)
        stats.accumulator(f"{name}.sum", int(peaks[:, 0].max()), max(32, z_bits))
        stats.accumulator(f"{name}.reciprocal", int(peaks[:, 1].max()), f_bits + 1)
        stats.saturated(f"{name}.prob_max", int(peaks[:, 2].sum()))


# --- ShiftGELU -------------------------------------------------------------------------------

@parallel_njit
def _shift_gelu(x, lo, hi, i0, n_exp, m_div, k, out, peaks):
    rows, C = x.shape
    for r in numba.prange(rows):
        bad = 0
        m = np.int64(0)
        for c in range(C):
            v = np.int64(x[r, c])
            if v < lo or v > hi:
                bad += 1
            ip = v + (v >> 1) + (v >> 3) + (v >> 4)
            if ip > m:
                m = ip
        em = shift_exp1(-m, i0, n_exp)
        zmax = np.int64(0)
        underflow = 0
        for c in range(C):
            v = np.int64(x[r, c])
            ip = v + (v >> 1) + (v >> 3) + (v >> 4)
            e = shift_exp1(ip - m, i0, n_exp)
            z = e + em
            if z == 0:
                s = np.int64(0)
                underflow += 1
            else:
                s = (e * ((np.int64(1) << m_div) // z)) >> (m_div - k + 1)
            out[r, c] = v * s
            zmax = max(zmax, z)
        peaks[r, 0] = zmax
        peaks[r, 1] = underflow
        peaks[r, 2] = bad


class ShiftGelu:
    """I-ViT's ShiftGELU for codes in ``s{in_bits}`` (module docstring)."""

    name = "ivit"

    def __init__(self, in_absmax: float, in_bits: int = 8, sig_bits: int = 8):
        if not (np.isfinite(in_absmax) and in_absmax > 0):
            raise GQAError("gelu.in_absmax", f"{in_absmax!r} is not a positive number")
        if not 2 <= in_bits <= 24:
            raise GQAError("gelu.in_bits", f"{in_bits} is outside [2, 24]")
        if not 2 <= sig_bits <= 32 - in_bits:
            raise GQAError("gelu.sig_bits", f"{sig_bits} is outside [2, {32 - in_bits}]",
                           "in_bits + sig_bits <= 32 keeps the output in int32")
        self.in_bits, self.sig_bits = int(in_bits), int(sig_bits)
        self.code_min, self.code_max = -(1 << (in_bits - 1)), (1 << (in_bits - 1)) - 1
        self.in_scale = float(in_absmax) / self.code_max
        self.i0 = code_of_one(self.in_scale, "gelu.in_absmax")
        k, b0 = self.sig_bits, self.i0.bit_length()
        x = self.code_max
        self.m_max = x + (x >> 1) + (x >> 3) + (x >> 4)
        n = 0
        while n < 62 and shift_exp(-self.m_max, self.i0, n) < 1 << (k + 2):
            n += 1
        m_div = max(REF_DIV_BITS, b0 + n + 1 + k + 7)
        if m_div > 62:
            m_div, n = 62, 62 - k - 8 - b0
        self.n, self.div_bits = n, m_div
        self.out_scale = self.in_scale * 2.0 ** -(k - 1)

    def __call__(self, q, stats=None, name="gelu"):
        q = int_codes(q)
        if q.size == 0:
            return np.zeros(q.shape, np.int32)
        x2 = q.reshape(1, -1) if q.ndim <= 1 else q.reshape(-1, q.shape[-1])
        out = np.empty(x2.shape, np.int32)
        peaks = np.zeros((x2.shape[0], 3), np.int64)
        _shift_gelu(x2, self.code_min, self.code_max, self.i0, self.n, self.div_bits, self.sig_bits, out, peaks)
        check_codes(int(peaks[:, 2].sum()), self.in_bits, name)
        if stats is not None and out.size:
            self._count(stats, name, x2.shape[0], out.size, peaks)
        return out.reshape(q.shape)

    def _count(self, stats, name, rows, n, peaks):
        b, k = self.in_bits, self.sig_bits
        z_bits = self.i0.bit_length() + self.n + 1
        stats.count("shift", f"{name}.mul_1702", 3 * n, bits=b)
        stats.count("add", f"{name}.mul_1702", 3 * n, bits=b + 1)
        stats.count("compare", f"{name}.max", n, bits=b + 1)
        stats.count("add", f"{name}.sub_max", n, bits=b + 2)
        _count_shift_exp(stats, f"{name}.exp", n + rows, b + 2, self.i0, z_bits - 1)
        stats.count("add", f"{name}.sum", n, bits=z_bits)
        stats.count("div", f"{name}.intdiv", n, bits=self.div_bits + 1)
        stats.count("mul", f"{name}.normalize", n, a_bits=z_bits - 1, b_bits=self.div_bits + 1)
        stats.count("shift", f"{name}.normalize", n, bits=self.div_bits + 1)
        stats.count("mul", f"{name}.out", n, a_bits=b, b_bits=k + 1)
        stats.accumulator(f"{name}.sum", int(peaks[:, 0].max()), z_bits + 1)
        stats.saturated(f"{name}.exp_underflow", int(peaks[:, 1].sum()))
