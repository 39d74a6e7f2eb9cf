"""Fixed-point core: formats, rounding, saturation and dyadic requantization.

Specification (gemmlowp style: words and formulas first, the code follows exactly).

Format ``Q(bits, frac, signed)``: an integer code ``c`` stands for the real ``c * 2**-frac``.
Signed codes are two's complement in ``[-2**(bits-1), 2**(bits-1) - 1]``; unsigned codes in
``[0, 2**bits - 1]``.

Rounding a real ``v`` to an integer, or an integer ``x`` divided by ``2**s`` (an arithmetic
right shift with rounding), by one of four named modes:

- ``half_even``  nearest, ties to the even integer (IEEE default, numpy's ``rint``);
- ``half_up``    nearest, ties toward +inf:       ``floor(v + 1/2)``;
- ``half_away``  nearest, ties away from zero:    ``sign(v) * floor(|v| + 1/2)``;
- ``floor``      toward -inf (a plain arithmetic shift).

Saturation clips to the format's range and counts every clipped element; nothing is ever
silently wrapped.

Dyadic requantization (gemmlowp ``fixedpoint.h``): a real multiplier ``m`` in (0, 1) is held
as ``M0 * 2**-31 * 2**-n`` with int32 ``M0`` in ``[2**30, 2**31)``; an int32 accumulator
``a`` becomes ``RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(a, M0), n)``:

- ``SRDHM(a, b) = (a*b + nudge) / 2**31`` with C's truncating division and
  ``nudge = 2**30`` if ``a*b >= 0`` else ``1 - 2**30``; the single overflow case
  ``a == b == -2**31`` saturates to ``2**31 - 1``;
- ``RDBPOT(x, n) = (x >> n) + (r > t)`` with ``r = x & (2**n - 1)`` and
  ``t = (2**n - 1) >> 1`` plus one when ``x < 0`` (round half away from zero).

All arithmetic is on int64 numpy arrays; values that could exceed int64 are refused up front
by the callers' width checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from .errors import GQAError
from .jit import parallel_njit

ROUNDING_MODES = ("half_even", "half_up", "half_away", "floor")

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def check_rounding(mode: str, field: str = "rounding") -> str:
    if mode not in ROUNDING_MODES:
        raise GQAError(field, f"unknown rounding mode {mode!r}", f"use one of {', '.join(ROUNDING_MODES)}")
    return mode


@dataclass(frozen=True)
class QFormat:
    """A fixed-point format: ``bits`` wide, ``frac`` fractional bits, signed or not."""

    bits: int
    frac: int = 0
    signed: bool = True

    def __post_init__(self):
        if not isinstance(self.bits, (int, np.integer)) or self.bits <= 0:
            raise GQAError("bits", f"must be a positive integer, got {self.bits!r}")
        if self.bits > 62:
            raise GQAError("bits", f"{self.bits} is wider than the simulator's 62-bit limit")
        if not isinstance(self.frac, (int, np.integer)):
            raise GQAError("frac", f"must be an integer, got {self.frac!r}")

    @property
    def min_int(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def max_int(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def resolution(self) -> float:
        return 2.0 ** -self.frac

    def fits(self, codes) -> np.ndarray:
        codes = np.asarray(codes)
        return (codes >= self.min_int) & (codes <= self.max_int)

    def quantize(self, values, rounding: str = "half_even", counter: "SaturationCounter | None" = None,
                 name: str = "quantize") -> np.ndarray:
        """Real values -> saturated integer codes of this format."""
        codes = round_real(np.asarray(values, dtype=np.float64) * 2.0**self.frac, rounding)
        return saturate(codes, self, counter, name)

    def to_real(self, codes) -> np.ndarray:
        return np.asarray(codes, dtype=np.float64) * 2.0 ** -self.frac

    def __str__(self) -> str:
        return f"{'s' if self.signed else 'u'}{self.bits}.{self.frac}"


def round_real(values, mode: str = "half_even") -> np.ndarray:
    """Round real values to int64 by the named mode."""
    check_rounding(mode)
    v = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise GQAError("values", "contain NaN or infinity", "only finite reals can be rounded to a code")
    if np.any(np.abs(v) >= 2.0**63):
        raise GQAError("values", "exceed the int64 range", "scale the values down before rounding them to codes")
    if mode == "half_even":
        r = np.rint(v)
    elif mode == "floor":
        r = np.floor(v)
    else:
        # floor plus an exact comparison of the fraction: v + 0.5 would itself round in float
        a = v if mode == "half_up" else np.abs(v)
        fl = np.floor(a)
        r = fl + (a - fl >= 0.5)
        if mode == "half_away":
            r = np.sign(v) * r
    return r.astype(np.int64)


def round_shift(x, shift: int, mode: str = "half_even") -> np.ndarray:
    """``x / 2**shift`` rounded by ``mode``, exactly in integers; ``shift <= 0`` shifts left."""
    check_rounding(mode)
    x = np.asarray(x, dtype=np.int64)
    if shift <= 0:
        return x << np.int64(-shift)
    if shift >= 63:
        # numpy wraps shifts of 64 or more: exact Python-integer arithmetic instead (rare: the
        # quotient is then 0 or -1)
        return _round_shift_huge(x, shift, mode)
    s = np.int64(shift)
    floor_q = x >> s
    if mode == "floor":
        return floor_q
    half = np.int64(1) << (s - 1)
    rem = x & ((np.int64(1) << s) - 1)  # x - floor_q * 2**s, in [0, 2**s)
    if mode == "half_up":
        return floor_q + (rem >= half)
    if mode == "half_away":
        return floor_q + ((rem > half) | ((rem == half) & (x >= 0)))
    return floor_q + ((rem > half) | ((rem == half) & ((floor_q & 1) == 1)))


def _round_shift_huge(x: np.ndarray, shift: int, mode: str) -> np.ndarray:
    """``round_shift`` for shifts >= 63, exactly, via Python integers' floor division."""
    from fractions import Fraction

    d = 1 << shift
    out = np.empty(x.shape, dtype=np.int64)
    for i, v in np.ndenumerate(x):
        f = Fraction(int(v), d)
        fl = f.numerator // f.denominator
        rem = f - fl
        if mode == "floor":
            r = fl
        elif mode == "half_up":
            r = fl + (rem >= Fraction(1, 2))
        elif mode == "half_away":
            r = fl + (rem > Fraction(1, 2) or (rem == Fraction(1, 2) and v >= 0))
        else:
            r = fl + (rem > Fraction(1, 2) or (rem == Fraction(1, 2) and fl % 2 == 1))
        out[i] = r
    return out


class SaturationCounter:
    """Counts saturated elements per named site; never reset implicitly."""

    def __init__(self):
        self.counts: dict[str, int] = {}

    def add(self, name: str, n: int) -> None:
        self.counts[name] = self.counts.get(name, 0) + int(n)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __repr__(self) -> str:
        return f"SaturationCounter({self.counts})"


def saturate(x, fmt: QFormat, counter: SaturationCounter | None = None, name: str = "saturate") -> np.ndarray:
    """Clip integer codes to ``fmt``'s range, counting clipped elements in ``counter``."""
    x = np.asarray(x, dtype=np.int64)
    out = np.clip(x, fmt.min_int, fmt.max_int)
    if counter is not None:
        counter.add(name, int(np.count_nonzero(out != x)))
    return out


# --- dyadic requantization (gemmlowp) -------------------------------------------------------

def quantize_multiplier(real_multiplier: float) -> tuple[int, int]:
    """Real multiplier in (0, 1) -> (M0, n) with ``m ~= M0 * 2**-31 * 2**-n``, ``M0 in [2**30, 2**31)``.

    ``M0 = round_half_away(frac * 2**31)`` where ``m = frac * 2**-n``, ``frac in [0.5, 1)``;
    a mantissa that rounds up to ``2**31`` is halved and ``n`` decremented.
    """
    m = float(real_multiplier)
    if not np.isfinite(m) or not 0.0 < m < 1.0:
        raise GQAError("multiplier", f"{real_multiplier!r} is outside (0, 1)",
                       "fold larger factors into a left shift before requantizing")
    frac, exp = np.frexp(m)  # m = frac * 2**exp, frac in [0.5, 1)
    q = int(np.sign(frac) * np.floor(abs(frac) * 2.0**31 + 0.5))
    n = -int(exp)
    if q == 2**31:
        q //= 2
        n -= 1
    if n > 62:
        raise GQAError("multiplier", f"{real_multiplier!r} is too small for a 62-bit shift")
    return q, n


def dyadic_multiplier(real_multiplier: float) -> tuple[int, int]:
    """Any positive real multiplier -> ``(M0, n)``; ``n < 0`` for multipliers >= 1.

    As :func:`quantize_multiplier`, extended by gemmlowp's convention for multipliers >= 1:
    a negative ``n`` is a left shift by ``-n`` applied before the SRDHM (see :func:`requantize`).
    """
    m = float(real_multiplier)
    if not np.isfinite(m) or m <= 0.0:
        raise GQAError("multiplier", f"{real_multiplier!r} is not a positive real", "scales must be positive")
    if m < 1.0:
        return quantize_multiplier(m)
    frac, exp = np.frexp(m)
    if exp > 31:
        raise GQAError("multiplier", f"{real_multiplier!r} needs a left shift beyond 31 bits",
                       "the output scale is far too fine for this accumulator")
    m0, n = quantize_multiplier(float(frac))  # frac in [0.5, 1): n == 1 or 0
    return m0, n - int(exp)


def saturating_rounding_doubling_high_mul(a, b) -> np.ndarray:
    """gemmlowp's SRDHM on int32 values held in int64 arrays."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    ab = a * b
    nudge = np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    s = ab + nudge
    # C integer division truncates toward zero.
    high = np.where(s >= 0, s >> 31, -((-s) >> 31))
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    return np.where(overflow, np.int64(INT32_MAX), high)


def rounding_divide_by_pot(x, exponent: int) -> np.ndarray:
    """gemmlowp's RoundingDivideByPOT: ``x / 2**exponent``, ties away from zero."""
    if exponent < 0 or exponent > 62:
        raise GQAError("exponent", f"{exponent} is outside [0, 62]")
    x = np.asarray(x, dtype=np.int64)
    e = np.int64(exponent)
    mask = (np.int64(1) << e) - np.int64(1)
    remainder = x & mask
    threshold = (mask >> np.int64(1)) + (x < 0)
    return (x >> e) + (remainder > threshold)


def requantize(acc, multiplier: int, shift: int, out: QFormat | None = None,
               counter: SaturationCounter | None = None, name: str = "requantize") -> np.ndarray:
    """int32 accumulator -> ``RDBPOT(SRDHM(acc, M0), n)``, saturated to ``out`` if given.

    ``shift < 0`` is a left shift applied *before* the multiply (gemmlowp's convention for
    multipliers >= 1), saturating to int32 first.
    """
    if not INT32_MIN <= int(multiplier) <= INT32_MAX:
        raise GQAError("multiplier", f"M0={multiplier} does not fit int32")
    acc = np.asarray(acc, dtype=np.int64)
    if np.any(acc < INT32_MIN) or np.any(acc > INT32_MAX):
        raise GQAError("acc", "holds values outside int32", "requantize takes int32 accumulators; saturate them first")
    if shift < 0:
        # every non-zero value saturates once shifted by 31 or more: cap the shift, no int64 overflow
        acc = saturate(acc << np.int64(min(-shift, 31)), QFormat(32), counter, name + ".left_shift")
        shift = 0
    y = rounding_divide_by_pot(saturating_rounding_doubling_high_mul(acc, multiplier), shift)
    return saturate(y, out, counter, name) if out is not None else y


# --- the same requantizer as a fused numba kernel (the simulator's hot path) ----------------

@numba.njit(cache=True, inline="always")
def _srdhm1(a, b):
    if a == INT32_MIN and b == INT32_MIN:
        return INT32_MAX
    s = a * b
    s += (1 << 30) if s >= 0 else 1 - (1 << 30)
    return s >> 31 if s >= 0 else -((-s) >> 31)


@numba.njit(cache=True, inline="always")
def _rdbpot1(x, n):
    mask = (1 << n) - 1
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> n) + (1 if (x & mask) > threshold else 0)


@numba.njit(cache=True, inline="always")
def requantize1(acc, m0, n):
    """Scalar :func:`requantize` (no output saturation): ``n < 0`` shifts left first, int32-saturated."""
    if n < 0:
        acc = acc << min(-n, 31)
        acc = min(max(acc, INT32_MIN), INT32_MAX)
        n = 0
    return _rdbpot1(_srdhm1(acc, m0), n)


@numba.njit(cache=True, inline="always")
def _srdhm_bf(a, b):
    """SRDHM of two int32 values (held in int64), branch-free: C's truncating division by a mask
    of the product's sign; the one overflow (``a == b == -2**31``) clamped."""
    s = a * b
    s = s + (1 << 30) - ((s >> 63) & INT32_MAX)
    return min((s + ((s >> 63) & INT32_MAX)) >> 31, INT32_MAX)


@numba.njit(cache=True, inline="always")
def _left_shift_bf(ac, n):
    """Step 1 of :func:`_requantize_bf`: ``ac << min(-n, 32)`` for ``n < 0`` (else ``ac``), unsaturated."""
    return ac << min(max(-n, 0), 32)


@numba.njit(cache=True, inline="always")
def _requantize_bf(ac, m0, n):
    """:func:`requantize1` of an int32 value ``ac`` (held in int64), branch-free so it vectorises.

    A left shift (``n < 0``) by ``min(-n, 32)`` then int32 saturation (the same values as
    requantize1's ``min(-n, 31)``: any non-zero value saturates past 31; callers count the
    saturation as ``sat32(_left_shift_bf(ac, n)) != _left_shift_bf(ac, n)``); SRDHM's nudge and C's
    truncating division by masks of the product's sign, with ``m0`` an int32 so the product is a
    32 x 32 -> 64-bit multiply (one vpmuldq lane on AVX2, which has no 64-bit multiply); SRDHM's
    one overflow (``ac == m0 == -2**31``) clamped; RDBPOT's threshold likewise by masks.
    """
    a3 = min(max(_left_shift_bf(ac, n), INT32_MIN), INT32_MAX)
    nn = max(n, 0)
    q = _srdhm_bf(np.int64(np.int32(a3)), np.int64(m0))
    mask = (np.int64(1) << nn) - 1
    return (q >> nn) + ((q & mask) > ((mask >> 1) + ((q >> 63) & 1)))


@numba.njit(cache=True, inline="always")
def _add_residual_saturate(y, residual, r, c, has_res, lo, hi):
    """``y`` plus the residual (if any), saturated to ``[lo, hi]``: ``(code, 1 if it saturated)``."""
    if has_res:
        y += residual[r, c]
    yc = min(max(y, lo), hi)
    return yc, np.int64(yc != y)


@numba.njit(cache=True, inline="always")
def round_half_up_bf(x, s):
    """``round_shift(x, s, "half_up")`` for ``s >= 0``, branch-free: ``(x + 2**(s-1)) >> s``
    (``s = 0``: ``x``)."""
    return (x + ((np.int64(1) << s) >> 1)) >> s


@numba.njit(cache=True, inline="always")
def rdbpot_bf(x, t):
    """RDBPOT (round half away from zero) of ``x`` by ``t >= 0`` bits, branch-free; the same as
    ``round_shift(x, t, "half_away")``."""
    mask = (np.int64(1) << t) - 1
    return (x >> t) + ((x & mask) > ((mask >> 1) + ((x >> 63) & 1)))


@parallel_njit
def _requantize_channels(acc, bias, m0, n, row_shift, lo, hi, residual, has_res, out):
    """The per-element arithmetic of :func:`requantize_channels`: the bias add (int64, saturated to
    int32 and counted), then exactly :func:`requantize1` as :func:`_requantize_bf`; ``m0`` int32.

    The row-shifted bias ``RDBPOT(bias_c, t)`` is computed once per run of rows with the same
    shift ``t`` (not per element), and a row whose every ``n_c - t >= 0`` skips the left-shift
    overflow count (no left shift happens there: the count would add zeros).
    """
    rows, cols = acc.shape
    sat = np.zeros(rows, np.int64)
    ovf = np.zeros(rows, np.int64)
    peak = np.zeros(rows, np.int64)
    n_min = n.min() if cols else 0
    for blk in numba.prange((rows + ROW_BLOCK - 1) // ROW_BLOCK):
        bt = np.empty(cols, np.int64)      # RDBPOT(bias, t) for the current row shift t
        t_now = -1
        for r in range(blk * ROW_BLOCK, min(rows, (blk + 1) * ROW_BLOCK)):
            t = row_shift[r]
            if t != t_now:
                for c in range(cols):
                    bt[c] = rdbpot_bf(bias[c], t)
                t_now = t
            pk = np.int64(0)
            st = np.int64(0)
            ov = np.int64(0)
            left = n_min - t < 0
            for c in range(cols):
                a = np.int64(acc[r, c]) + bt[c]
                pk = max(pk, abs(a))
                ac = min(max(a, INT32_MIN), INT32_MAX)
                ov += ac != a
                nc = n[c] - t
                if left:                   # loop-invariant: the compiler unswitches the loop on it
                    a2 = _left_shift_bf(ac, nc)
                    ov += min(max(a2, INT32_MIN), INT32_MAX) != a2
                yc, hit = _add_residual_saturate(_requantize_bf(ac, m0[c], nc), residual, r, c, has_res, lo, hi)
                st += hit
                out[r, c] = yc
            sat[r] = st
            ovf[r] = ov
            peak[r] = pk
    return sat.sum(), ovf.sum(), peak.max() if rows else 0


def _per_column(v, cols: int, field: str) -> np.ndarray:
    v = np.asarray(v, np.int64)
    if v.ndim > 1 or (v.ndim == 1 and v.shape[0] not in (1, cols)):
        raise GQAError(field, f"has shape {v.shape}, the accumulator {cols} columns", "give one value or one per column")
    return np.broadcast_to(v, (cols,)).copy()


def _accumulator(acc) -> np.ndarray:
    """An integer accumulator array, or a float32/float64 one holding exact int32 integers (an
    ``int_gemm(..., float_out=True)`` result: read as integers, element by element, unconverted)."""
    acc = np.asarray(acc)
    if acc.dtype.kind not in "iuf" or acc.ndim < 1 or (acc.dtype.kind == "f" and acc.dtype.itemsize < 4):
        raise GQAError("acc", f"is {acc.dtype} of shape {acc.shape}", "give an integer accumulator array")
    return acc


def _requantize_channels_scaled(a2, shape, bias, m0, n, rs, lo, hi, res, has_res, out):
    """:func:`requantize_channels` with a :class:`RowScale` (its docstring)."""
    mant = np.asarray(rs.mantissa, np.int64).reshape(-1)
    k = np.asarray(rs.shift, np.int64).reshape(-1)
    m = int(rs.bits)
    if mant.shape[0] != a2.shape[0] or k.shape[0] != a2.shape[0]:
        raise GQAError("row_shift", f"has {k.shape[0]} row scales for {a2.shape[0]} rows")
    if not 0 <= m <= ROW_MANTISSA_MAX or np.any(mant < (1 << m)) or np.any(mant >= (1 << (m + 1))):
        raise GQAError("row_shift", f"mantissas must lie in [2**m, 2**(m+1)) with m = {m} in [0, {ROW_MANTISSA_MAX}]")
    if k.size and (int(n.max()) + m - int(k.min()) > 62 or m - int(k.max()) < -62):
        raise GQAError("row_shift", "a row's exponent leaves the final shift outside [-62, 62]",
                       "row exponents come from requantize_rows (k in [-8, 23])")
    if np.any(np.abs(bias) > INT32_MAX):
        raise GQAError("bias", "must fit int32 with per-row scales", "use coarser activation scales")
    bq = saturating_rounding_doubling_high_mul(bias, m0)
    sat, ovf, peak = _requantize_channels_rows(a2, bq, m0.astype(np.int32), n, mant, k, m, lo, hi, res, has_res, out)
    return out.reshape(shape), int(sat), int(ovf), int(peak)


def requantize_channels(acc, bias, multipliers, shifts, out_bits: int, residual=None, out_dtype=None,
                        row_shift=None):
    """Per-column requantization of a GEMM accumulator, optionally followed by a residual add.

    Formats: ``acc`` int32 (..., N) (or its exact float copy, see :func:`_accumulator`); ``bias`` int32 per column at the accumulator's scale;
    ``multipliers`` (int32 ``M0``) and ``shifts`` (``n``) per column as for :func:`requantize`;
    ``residual`` (optional) integer codes already at the output scale. Per element:

        a = acc + bias                      (int64; outside int32 -> counted overflow, saturated)
        y = RDBPOT(SRDHM(a, M0_c), n_c) + residual
        y = saturate(y, s{out_bits})        (counted)

    ``row_shift`` (optional, per row of the flattened accumulator): the operand of row ``r`` had
    the scale ``2**row_shift[r]`` times the nominal one (per-token dynamic scaling), so row ``r``
    uses ``n_c - row_shift[r]`` (negative: a left shift before the multiply, int32-saturated and
    counted as overflow) and the bias ``RDBPOT(bias_c, row_shift[r])`` (row shifts are >= 0).

    ``row_shift`` a :class:`RowScale` (``token_mantissa``: row ``r``'s operand at ``g_r = mu_r *
    2**(k_r - m)`` times the nominal scale): the row's accumulator is multiplied by ``g_r`` after
    the per-column multiply, and the bias joins it there, at the output's precision::

        x  = SRDHM(acc, M0_c)                      (acc int32; outside: counted overflow, saturated)
        Bq = SRDHM(bias_c, M0_c)                   (per column, offline; the bias must fit int32)
        s  = m - k_r
        z  = x * mu_r + Bq * 2**s                  (int64: 32 x (m+1)-bit product, <= 40 bits; for s < 0
                                                    the bias term is RDBPOT(Bq, -s))
        y  = RDBPOT(z, n_c + s) + residual         (n_c + s < 0: z int32-saturated, shifted left,
                                                    int32-saturated, counted as overflow)
        y  = saturate(y, s{out_bits})              (counted)

    so ``y = (acc * g_r + bias) * M0_c 2**(-31-n_c)`` with two roundings: SRDHM's, at
    ``2**-(n_c + s)`` of an output code, and RDBPOT's. The extra hardware per output is the
    ``x * mu_r`` multiply (32 x (m+1) bits) and the bias add moved after it; per row, ``s``.
    ``n_c + m - k_r`` must not exceed 62.

    Returns ``(y, saturated, overflowed, peak)``, ``peak`` the largest ``|acc + bias|`` (the
    accumulator's width report; with a :class:`RowScale` the largest ``|acc|``: the bias joins later).
    """
    acc = _accumulator(acc)
    if not 2 <= out_bits <= 32:
        raise GQAError("out_bits", f"{out_bits} is outside [2, 32]", "requantized outputs are at most int32")
    shape = acc.shape
    a2 = np.ascontiguousarray(acc.reshape(-1, shape[-1]))
    cols = shape[-1]
    bias = _per_column(0 if bias is None else bias, cols, "bias")
    m0 = _per_column(multipliers, cols, "multipliers")
    n = _per_column(shifts, cols, "shifts")
    if np.any(n > 62):
        raise GQAError("shifts", "exceed 62", "the multiplier is too small for this accumulator")
    if np.any(m0 < INT32_MIN) or np.any(m0 > INT32_MAX):
        raise GQAError("multipliers", "must fit int32", "use dyadic_multiplier / quantize_multiplier")
    lo, hi = -(1 << (out_bits - 1)), (1 << (out_bits - 1)) - 1
    if out_dtype is None:
        out_dtype = np.int8 if out_bits <= 8 else np.int16 if out_bits <= 16 else np.int32
    out = np.empty(a2.shape, out_dtype)
    if residual is None:
        # the placeholder has the output's dtype, the usual residual's: one compiled kernel for both
        res = np.zeros((1, 1), out.dtype)
    else:
        residual = np.asarray(residual)
        if residual.size != a2.size or residual.dtype.kind not in "iu":
            raise GQAError("residual", f"is {residual.dtype} of shape {residual.shape}, the accumulator {shape}",
                           "give integer codes of the accumulator's shape at the output scale")
        res = np.ascontiguousarray(residual.reshape(a2.shape))
    if isinstance(row_shift, RowScale):
        return _requantize_channels_scaled(a2, shape, bias, m0, n, row_shift, lo, hi, res, residual is not None, out)
    rs = np.zeros(a2.shape[0], np.int64) if row_shift is None else np.asarray(row_shift, np.int64).reshape(-1)
    if rs.shape[0] != a2.shape[0]:
        raise GQAError("row_shift", f"has {rs.shape[0]} entries for {a2.shape[0]} rows")
    if np.any(rs < 0) or np.any(rs > 62):
        raise GQAError("row_shift", "must lie in [0, 62]", "per-token shifts only coarsen a row's scale")
    sat, ovf, peak = _requantize_channels(a2, bias, m0.astype(np.int32), n, rs, lo, hi, res, residual is not None, out)
    return out.reshape(shape), int(sat), int(ovf), int(peak)


ROW_BLOCK = 64   # rows per parallel task of the row kernels: one scratch row allocated per block


@parallel_njit
def _requantize_dynamic(acc, m0, n, bits, out, shifts):
    rows, cols = acc.shape
    hi = (1 << (bits - 1)) - 1
    for blk in numba.prange((rows + ROW_BLOCK - 1) // ROW_BLOCK):
        v = np.empty(cols, np.int64)
        for r in range(blk * ROW_BLOCK, min(rows, (blk + 1) * ROW_BLOCK)):
            mx = np.int64(0)
            for c in range(cols):
                v[c] = _requantize_bf(np.int64(acc[r, c]), m0[c], n[c])
                mx = max(mx, abs(v[c]))
            t = 0
            while (mx >> t) > hi:        # the smallest shift that fits the row (a leading-one detector)
                t += 1
            shifts[r] = t
            for c in range(cols):        # round half away from zero, as RDBPOT
                out[r, c] = min(max(rdbpot_bf(v[c], t), -hi - 1), hi)


def requantize_dynamic(acc, multipliers, shifts, bits: int = 8):
    """Per-token (per-row) dynamic power-of-two scaling after a static requantization.

    ``v = RDBPOT(SRDHM(acc, M0_c), n_c)`` at the nominal scale ``s``; per row the smallest ``t >= 0``
    with ``max|v| >> t <= 2**(bits-1) - 1``; ``y = RDBPOT(v, t)`` (signed ``bits``, saturated;
    rounding can still reach ``2**(bits-1)``: clipped). Row ``r``'s real scale is ``s * 2**t_r``.
    Returns ``(y, t)`` with ``y`` int8 (bits <= 8) and ``t`` int64 per row.
    """
    acc = _accumulator(acc)
    if not 2 <= bits <= 16:
        raise GQAError("bits", f"{bits} is outside [2, 16]", "dynamic per-token operands are int8 or int16")
    shape = acc.shape
    a2 = np.ascontiguousarray(acc.reshape(-1, shape[-1]))
    cols = shape[-1]
    m0 = _per_column(multipliers, cols, "multipliers")
    n = _per_column(shifts, cols, "shifts")
    if np.any(n > 62) or np.any(m0 < INT32_MIN) or np.any(m0 > INT32_MAX):
        raise GQAError("multipliers", "need int32 M0 and shifts <= 62", "use dyadic_multiplier")
    out = np.empty(a2.shape, np.int8 if bits <= 8 else np.int16)
    t = np.empty(a2.shape[0], np.int64)
    _requantize_dynamic(a2, m0.astype(np.int32), n, bits, out, t)
    return out.reshape(shape), t.reshape(shape[:-1])


# --- per-row scales with a mantissa: ``mu * 2**(k - m)`` per token (outliers ``token_mantissa``) ----

ROW_GUARD = 8                 # G: fractional bits of a row's peak below the nominal code (the peak's register)
ROW_K_MIN, ROW_K_MAX = -ROW_GUARD, 31 - ROW_GUARD   # the row exponent k's range
ROW_FRAC = 8                  # the producer's final shift is at least this (a left shift first otherwise)
ROW_MANTISSA_MAX = 8          # m <= 8: the consumer's extra multiply is 32 x 9 bits at most


@dataclass(frozen=True)
class RowScale:
    """Per-row scales of a per-token operand: row ``r`` holds codes at ``g_r`` times the nominal
    scale, ``g_r = mantissa_r * 2**(shift_r - bits)`` with the mantissa an unsigned ``bits + 1``-bit
    integer in ``[2**bits, 2**(bits+1))`` (``1.m`` with ``m = bits`` fraction bits) and ``shift_r`` a
    signed exponent (the power-of-two row shift of ``per_token`` is ``bits = 0``, mantissa 1).

    ``RowScale + t`` (``t`` a power-of-two row shift, int per row) adds ``t`` to every exponent: the
    gated FFN's up operand's row scale multiplies in that way."""

    mantissa: np.ndarray
    shift: np.ndarray
    bits: int

    # ``ndarray + RowScale`` must reach ``__radd__`` whole, not be broadcast element by element
    __array_ufunc__ = None

    def __add__(self, t):
        return RowScale(self.mantissa, self.shift + np.asarray(t, np.int64).reshape(self.shift.shape), self.bits)

    __radd__ = __add__

    @classmethod
    def power_of_two(cls, shift):
        """Row scales ``2**shift`` (signed) as a RowScale: mantissa 1, no fraction bits."""
        shift = np.asarray(shift, np.int64)
        return cls(np.ones(shift.shape, np.int64), shift, 0)

    @property
    def exponent(self) -> np.ndarray:
        """``shift - bits``: the row scale is ``mantissa * 2**exponent``."""
        return self.shift - self.bits

    @property
    def shape(self):
        return self.shift.shape

    def reshape(self, *shape):
        return RowScale(self.mantissa.reshape(*shape), self.shift.reshape(*shape), self.bits)

    def factor(self) -> np.ndarray:
        """``g_r`` as float64 (exact: a small integer times a power of two)."""
        return self.mantissa.astype(np.float64) * np.exp2(self.shift.astype(np.float64) - self.bits)


def row_reciprocals(m: int) -> np.ndarray:
    """``R[mu - 2**m] = floor((2**(31+m) + mu) / (2 mu)) = round_half_up(2**(30+m) / mu)`` for every
    mantissa ``mu`` in ``[2**m, 2**(m+1))``: ``2**m / mu ~= R * 2**-30``, in ``(2**29, 2**30]`` (the
    producer's table of ``2**m`` int32 constants)."""
    mu = np.arange(1 << m, 1 << (m + 1), dtype=np.int64)
    return ((np.int64(1) << (31 + m)) + mu) // (2 * mu)


@numba.njit(cache=True, inline="always")
def _row_pick(peak, hi, m, guard, k_min, k_max):
    """The smallest ``g = mu * 2**(k - m)`` (``mu`` in ``[2**m, 2**(m+1))``, ``k`` in ``[k_min, k_max]``)
    with ``mu * hi * 2**(k - m + guard) >= peak``; none: ``k_max`` and the largest mantissa."""
    top = (1 << (m + 1)) - 1
    k = k_min
    while True:
        e = k - m + guard
        if e >= 0:
            d = hi << e
            need = (peak + d - 1) // d
        else:
            need = ((peak << -e) + hi - 1) // hi
        if need <= top or k == k_max:
            return min(max(need, 1 << m), top), k
        k += 1


@parallel_njit
def _requantize_rows(acc, offset, m0, n, bits, m, recip, floor, out, mant, shifts, sats):
    rows, cols = acc.shape
    hi = (1 << (bits - 1)) - 1
    uniform = True          # one (M0, n) for every column (a per-tensor nominal scale): see below
    for c in range(cols):
        uniform = uniform and m0[c] == m0[0] and n[c] == n[0]
    for blk in numba.prange((rows + ROW_BLOCK - 1) // ROW_BLOCK):
        for r in range(blk * ROW_BLOCK, min(rows, (blk + 1) * ROW_BLOCK)):
            peak = np.int64(0)
            if uniform:
                # the requantizer is non-decreasing in a, so max |f(a_c)| is |f| at the row's extreme
                # registers: two evaluations instead of one per element (the same peak)
                a_lo, a_hi = np.int64(INT32_MAX), np.int64(INT32_MIN)
                for c in range(cols):
                    a = min(max(np.int64(acc[r, c]) + offset, INT32_MIN), INT32_MAX)
                    a_lo, a_hi = min(a_lo, a), max(a_hi, a)
                if cols:
                    peak = max(abs(_requantize_bf(a_lo, m0[0], n[0] - ROW_GUARD)),
                               abs(_requantize_bf(a_hi, m0[0], n[0] - ROW_GUARD)))
            else:
                for c in range(cols):
                    a = min(max(np.int64(acc[r, c]) + offset, INT32_MIN), INT32_MAX)
                    peak = max(peak, abs(_requantize_bf(a, m0[c], n[c] - ROW_GUARD)))
            mu, k = _row_pick(peak, hi, m, ROW_GUARD, ROW_K_MIN, ROW_K_MAX)
            mant[r] = mu
            shifts[r] = k
            rr = recip[mu - (1 << m)]
            st = np.int64(0)
            if uniform and cols:        # the row's multiplier and shifts, once per row
                nr = n[0] + k - 1
                pre = max(ROW_FRAC - nr, 0)
                mr = _srdhm_bf(np.int64(m0[0]), rr)
                for c in range(cols):
                    a = min(max(np.int64(acc[r, c]) + offset, INT32_MIN), INT32_MAX)
                    a = min(max(a << min(pre, 32), INT32_MIN), INT32_MAX)
                    y = _requantize_bf(a, mr, nr + pre)
                    yc = min(max(y, -hi - 1), hi)
                    st += yc != y
                    out[r, c] = max(yc, floor)
                sats[r] = st
                continue
            for c in range(cols):
                a = min(max(np.int64(acc[r, c]) + offset, INT32_MIN), INT32_MAX)
                nr = n[c] + k - 1
                pre = max(ROW_FRAC - nr, 0)          # SRDHM's rounding 2**-ROW_FRAC of a code below the output's
                a = min(max(a << min(pre, 32), INT32_MIN), INT32_MAX)
                y = _requantize_bf(a, _srdhm_bf(np.int64(m0[c]), rr), nr + pre)
                yc = min(max(y, -hi - 1), hi)
                st += yc != y
                out[r, c] = max(yc, floor)
            sats[r] = st


def requantize_rows(acc, multipliers, shifts, bits: int = 8, mantissa_bits: int = 3, offset: int = 0,
                    unsigned: bool = False):
    """Per-token (per-row) scaling by a mantissa and an exponent: the row fills the operand's range.

    The nominal requantization ``(M0_c, n_c)`` maps the register ``a = acc + offset`` (the integer
    ``offset`` added exactly, in int64; then int32 values, wider ones saturating to int32 first,
    as in :func:`requantize1`) to codes at the nominal scale ``s``. Per row:

    1. the row's peak at ``G = ROW_GUARD`` (8) fractional bits below the nominal code (a 32-bit register):
       ``P = max_c |RDBPOT(SRDHM(a_c, M0_c), n_c - G)|`` (negative shift: left first, int32-saturated);
    2. the row scale ``g = mu * 2**(k - m)`` (``m = mantissa_bits``, ``mu`` an unsigned ``m + 1``-bit
       mantissa in ``[2**m, 2**(m+1))``, ``k`` in ``[ROW_K_MIN, ROW_K_MAX] = [-8, 23]``): the smallest
       with ``mu * hi * 2**(k - m + G) >= P``, ``hi = 2**(bits-1) - 1`` (a leading-one detector on ``P``
       and ``2**m`` comparisons against ``hi * mu``); ``P = 0``: ``k = -8``, ``mu = 2**m``; a peak
       beyond the largest ``g`` keeps it (its codes saturate, counted);
    3. the row's multiplier, the nominal one divided by ``g``: ``R = round_half_up(2**(30+m) / mu)``
       from a table of ``2**m`` int32 constants (:func:`row_reciprocals`; ``2**m / mu ~= R 2**-30``),
       ``M0_rc = SRDHM(M0_c, R)`` (in ``(2**28, 2**30]``: a 32 x 32 multiply per row for a scalar
       nominal multiplier), ``n_rc = n_c + k - 1`` (real: ``M0_c 2**-31-n_c / g``);
    4. ``p = max(ROW_FRAC - n_rc, 0)`` (``ROW_FRAC = 8``), ``a' = sat32(a * 2**p)``,
       ``y = saturate(RDBPOT(SRDHM(a', M0_rc), n_rc + p), s{bits})``: one requantization per element,
       whose SRDHM rounds at ``2**-8`` of an output code or finer (gemmlowp's double rounding made
       negligible; the left shift is exact for every element within the row's peak, which maps to
       at most ``hi`` codes, so ``|a'| < 2**20``).

    Row ``r``'s real scale is ``s * g_r``. Returns ``(y, RowScale(mu, k, m), saturated)``, ``y`` int8
    (bits <= 8) or int16; ``unsigned``: ``max(y, 0)`` as uint8 (``bits <= 9``: the unsigned operand of
    ``act_offset``, whose register the offset keeps non-negative; a negative code, not counted, is 0). ``mantissa_bits = 0`` is a power-of-two row scale (then ``k`` may be
    negative too: a token smaller than the nominal one gains resolution, unlike
    :func:`requantize_dynamic`). The consumer applies ``g_r``: :func:`requantize_channels` with
    ``row_shift=RowScale``.
    """
    acc = _accumulator(acc)
    if not 2 <= bits <= 16:
        raise GQAError("bits", f"{bits} is outside [2, 16]", "dynamic per-token operands are int8 or int16")
    if not isinstance(mantissa_bits, (int, np.integer)) or not 0 <= mantissa_bits <= ROW_MANTISSA_MAX:
        raise GQAError("token_mantissa_bits", f"{mantissa_bits!r} is outside [0, {ROW_MANTISSA_MAX}]",
                       "a row scale's mantissa has a few fraction bits (3 or 4)")
    shape = acc.shape
    a2 = np.ascontiguousarray(acc.reshape(-1, shape[-1]))
    cols = shape[-1]
    m0 = _per_column(multipliers, cols, "multipliers")
    n = _per_column(shifts, cols, "shifts")
    if np.any(n > 62 - ROW_K_MAX) or np.any(n < -31) or np.any(m0 < 1) or np.any(m0 > INT32_MAX):
        raise GQAError("multipliers", f"need positive int32 M0 and shifts in [-31, {62 - ROW_K_MAX}]",
                       "use dyadic_multiplier")
    if unsigned and bits > 9:
        raise GQAError("bits", f"{bits} signed bits have no uint8 half", "unsigned codes take bits <= 9")
    out = np.empty(a2.shape, np.uint8 if unsigned else np.int8 if bits <= 8 else np.int16)
    rows = a2.shape[0]
    mant, k, sats = np.empty(rows, np.int64), np.empty(rows, np.int64), np.zeros(rows, np.int64)
    floor = 0 if unsigned else -(1 << (bits - 1))
    _requantize_rows(a2, np.int64(offset), m0, n, bits, int(mantissa_bits), row_reciprocals(int(mantissa_bits)),
                     np.int64(floor), out, mant, k, sats)
    return out.reshape(shape), RowScale(mant.reshape(shape[:-1]), k.reshape(shape[:-1]), int(mantissa_bits)), \
        int(sats.sum())


@numba.njit(cache=True, inline="always")
def _scaled_register(acc, r, c, m0c, mu, btc):
    """Element ``(r, c)`` of :func:`_requantize_channels_rows`: ``(a, 1 if int32 saturation changed
    it, z = SRDHM(sat32(a), M0_c) * mu + Bt_c)``."""
    a = np.int64(acc[r, c])
    ac = min(max(a, INT32_MIN), INT32_MAX)
    return a, np.int64(ac != a), _srdhm_bf(ac, np.int64(m0c)) * mu + btc


@parallel_njit
def _requantize_channels_rows(acc, bq, m0, n, mant, k, m, lo, hi, residual, has_res, out):
    """The per-element arithmetic of :func:`requantize_channels` with a :class:`RowScale`."""
    rows, cols = acc.shape
    sat = np.zeros(rows, np.int64)
    ovf = np.zeros(rows, np.int64)
    peak = np.zeros(rows, np.int64)
    n_min = np.int64(62)
    for c in range(cols):
        n_min = min(n_min, np.int64(n[c]))
    for blk in numba.prange((rows + ROW_BLOCK - 1) // ROW_BLOCK):
        bt = np.empty(cols, np.int64)      # Bq_c * 2**s for the current row's s
        s_now = np.int64(1 << 40)
        for r in range(blk * ROW_BLOCK, min(rows, (blk + 1) * ROW_BLOCK)):
            s = m - k[r]
            mu = mant[r]
            if s != s_now:
                for c in range(cols):
                    bt[c] = bq[c] << s if s >= 0 else rdbpot_bf(bq[c], -s)
                s_now = s
            pk = np.int64(0)
            st = np.int64(0)
            ov = np.int64(0)
            if n_min + s >= 0:        # every column shifts right: the loop without the left-shift branch
                for c in range(cols):
                    a, o, z = _scaled_register(acc, r, c, m0[c], mu, bt[c])
                    pk = max(pk, abs(a))
                    ov += o
                    yc, hit = _add_residual_saturate(rdbpot_bf(z, n[c] + s), residual, r, c, has_res, lo, hi)
                    st += hit
                    out[r, c] = yc
            else:
                for c in range(cols):
                    a, o, z = _scaled_register(acc, r, c, m0[c], mu, bt[c])
                    pk = max(pk, abs(a))
                    ov += o
                    e = n[c] + s
                    if e >= 0:
                        y = rdbpot_bf(z, e)
                    else:                      # an output finer than the register: left shift, int32-saturated
                        zc = min(max(z, INT32_MIN), INT32_MAX)
                        z2 = zc << min(-e, 32)      # |zc| <= 2**31: fits int64; past 32 bits any non-zero saturates
                        y = min(max(z2, INT32_MIN), INT32_MAX)
                        ov += (y != z2) | (zc != z)
                    yc, hit = _add_residual_saturate(y, residual, r, c, has_res, lo, hi)
                    st += hit
                    out[r, c] = yc
            sat[r] = st
            ovf[r] = ov
            peak[r] = pk
    return sat.sum(), ovf.sum(), peak.max() if rows else 0


# --- dequantization of accumulators (a model's float output, e.g. a decoder's logits) ---------------

@parallel_njit
def _dequantize(acc, g, b, scale, out):
    rows, cols = acc.shape
    for r in numba.prange(rows):
        for c in range(cols):
            out[r, c] = (np.float64(acc[r, c]) * g[r] + b[c]) * scale[c]


def dequantize(acc, col_scale, row_factor=None, col_bias=None) -> np.ndarray:
    """``(acc * g_r + b_c) * s_c`` in float64, element by element in that order (numpy's expression
    of the same three arrays, bit for bit, in one pass and without its temporaries): integer
    accumulators (rows, cols), per-column scales ``s``, per-row factors ``g`` (a
    :class:`RowScale`'s, or ``2**t``: exact in float64; None: 1) and per-column integer biases ``b``
    in accumulator codes (None: 0)."""
    acc = np.ascontiguousarray(acc)
    if acc.ndim != 2 or acc.dtype.kind not in "iu":
        raise GQAError("acc", f"is {acc.dtype} of shape {acc.shape}", "give integer accumulators (rows, cols)")
    rows, cols = acc.shape
    g = np.ones(rows) if row_factor is None else np.asarray(row_factor, np.float64).reshape(rows)
    b = np.zeros(cols) if col_bias is None else np.asarray(col_bias, np.float64).reshape(cols)
    s = np.broadcast_to(np.asarray(col_scale, np.float64), (cols,)).copy()
    out = np.empty((rows, cols), np.float64)
    _dequantize(acc, g, b, s, out)
    return out
