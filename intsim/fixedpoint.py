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

import numpy as np

from .errors import GQAError

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
