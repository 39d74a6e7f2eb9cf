"""The canonical PWL datapath (DESIGN.md, "Canonical PWL semantics").

Every part of gqa-sim -- the search's fitness, the simulator, the cost model, the Verilog
generator and the torch module -- derives its arithmetic from :class:`PWLDatapath`.

For one power-of-two input scale ``e``:

- input code ``q``: signed ``in_bits`` two's complement, real value ``x = q * 2**-e``;
- integer breakpoints ``P_j(e) = round_half_even(p_j * 2**e)`` clamped to
  ``[-2**(in_bits-1), 2**(in_bits-1)]``. The top value is one past the largest code, so a
  breakpoint beyond the code range sends no code to the segments above it (the same segment
  index as the unclamped value); the comparator constant is ``in_bits + 1`` bits wide.
  This clamp reproduces the DESIGN.md figures of the reference tables;
- segment index ``i(q) = #{j : q >= P_j(e)}``;
- accumulator with ``F(e) = max(e + slope_frac, icpt_frac)`` fractional bits:
  ``A = K_i * q * 2**(F - e - slope_frac) + B_i * 2**(F - icpt_frac)`` (exact, int64);
- output: ``A * 2**-F`` at full precision, or, with ``out_bits``, the code
  ``saturate(round_shift(A, F - out_frac, out_rounding))`` of format ``s{out_bits}.{out_frac}``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from .errors import GQAError
from .fixedpoint import QFormat, check_rounding, round_real

MAX_IN_BITS = 20
MAX_COEFF_BITS = 24
MAX_SCALE = 24


def _check_int(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise GQAError(name, f"must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise GQAError(name, f"{value} is outside [{lo}, {hi}]")
    return int(value)


@dataclass(frozen=True)
class PWLDatapath:
    """Widths and formats of one PWL unit; defaults reproduce the GQA-LUT reference."""

    in_bits: int = 8
    slope_bits: int = 8
    slope_frac: int = 6
    icpt_bits: int = 8
    icpt_frac: int = 6
    out_bits: int | None = None
    out_frac: int | None = None
    out_rounding: str = "half_even"

    def __post_init__(self):
        _check_int("in_bits", self.in_bits, 2, MAX_IN_BITS)
        _check_int("slope_bits", self.slope_bits, 1, MAX_COEFF_BITS)
        _check_int("icpt_bits", self.icpt_bits, 1, MAX_COEFF_BITS)
        _check_int("slope_frac", self.slope_frac, -MAX_COEFF_BITS, 2 * MAX_COEFF_BITS)
        _check_int("icpt_frac", self.icpt_frac, -MAX_COEFF_BITS, 2 * MAX_COEFF_BITS)
        if (self.out_bits is None) != (self.out_frac is None):
            raise GQAError("out_bits", "out_bits and out_frac go together",
                           "give both for a rounded output, or neither for full precision")
        if self.out_bits is not None:
            _check_int("out_bits", self.out_bits, 2, 48)
            _check_int("out_frac", self.out_frac, -48, 48)
        check_rounding(self.out_rounding, "out_rounding")

    # formats ---------------------------------------------------------------------------
    @property
    def in_format(self) -> QFormat:
        return QFormat(self.in_bits, 0)

    @property
    def slope_format(self) -> QFormat:
        return QFormat(self.slope_bits, self.slope_frac)

    @property
    def icpt_format(self) -> QFormat:
        return QFormat(self.icpt_bits, self.icpt_frac)

    @property
    def out_format(self) -> QFormat | None:
        return None if self.out_bits is None else QFormat(self.out_bits, self.out_frac)

    @property
    def code_min(self) -> int:
        return -(1 << (self.in_bits - 1))

    @property
    def code_max(self) -> int:
        return (1 << (self.in_bits - 1)) - 1

    def codes(self) -> np.ndarray:
        """Every input code, ascending."""
        return np.arange(self.code_min, self.code_max + 1, dtype=np.int64)

    # per-scale arithmetic ------------------------------------------------------------------
    def check_scale(self, e, field: str = "scales") -> int:
        return _check_int(field, e, -MAX_SCALE, MAX_SCALE)

    def acc_frac(self, e: int) -> int:
        """``F(e)``: fractional bits of the accumulator at scale ``e``."""
        return max(e + self.slope_frac, self.icpt_frac)

    def slope_shift(self, e: int) -> int:
        """Left shift applied to ``K*q``: ``F - e - slope_frac`` (>= 0)."""
        return self.acc_frac(e) - e - self.slope_frac

    def icpt_shift(self, e: int) -> int:
        """Left shift applied to ``B``: ``F - icpt_frac`` (>= 0)."""
        return self.acc_frac(e) - self.icpt_frac

    def acc_bits(self, e: int) -> int:
        """Signed width that holds every accumulator value at scale ``e`` (worst case)."""
        kq = (1 << (self.slope_bits - 1)) * (1 << (self.in_bits - 1)) << self.slope_shift(e)
        b = (1 << (self.icpt_bits - 1)) << self.icpt_shift(e)
        return int(kq + b).bit_length() + 1

    def breakpoint_codes(self, breakpoints, e: int) -> np.ndarray:
        """``P_j(e)``: real breakpoints -> integer comparator constants at scale ``e``."""
        p = np.asarray(breakpoints, dtype=np.float64)
        # clip before rounding: far-away breakpoints must not overflow int64 on the way
        codes = round_real(np.clip(p * 2.0**e, self.code_min - 1, self.code_max + 2), "half_even")
        return np.clip(codes, self.code_min, self.code_max + 1)

    # files ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, field: str = "datapath") -> "PWLDatapath":
        if not isinstance(d, dict):
            raise GQAError(field, f"must be an object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise GQAError(f"{field}.{unknown[0]}", "unknown key", f"known keys: {', '.join(sorted(known))}")
        return cls(**d)

    def describe(self) -> str:
        out = "full precision" if self.out_bits is None else f"{self.out_format} ({self.out_rounding})"
        return (f"in s{self.in_bits}, slope {self.slope_format}, intercept {self.icpt_format}, "
                f"output {out}")
