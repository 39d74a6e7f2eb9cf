"""The canonical PWL datapath (DESIGN.md, "Canonical PWL semantics").

Every part of gqa-sim -- the search's fitness, the simulator, the cost model, the Verilog
generator and the torch module -- derives its arithmetic from :class:`PWLDatapath`.

For one power-of-two input scale ``e``:

- input code ``q``: signed ``in_bits`` two's complement, real value ``x = q * 2**-e``;
- integer breakpoints (comparator constants) ``P_j(e) = round_half_even(p_j * 2**e)``;
- the comparator, ``segment_rule`` (the registry :data:`SEGMENT_RULES`): ``"ge"`` (default;
  the GQA-LUT reference trainer's ``np.digitize(x, split_points) - 1``) sends a code equal to a breakpoint
  to the segment above, ``i(q) = #{j : q >= P_j(e)}``; ``"gt"`` (the reference torch
  operator's ``torch.bucketize(q, breakpoints / scale)``, ``right=False``) keeps it in the
  segment below, ``i(q) = #{j : q > P_j(e)}``. Both are one formula over the *segment starts*
  ``S_j(e)`` (:meth:`PWLDatapath.segment_starts`), the smallest code of the segment above
  breakpoint ``j``: ``S_j = P_j`` ("ge") or ``P_j + 1`` ("gt"), and ``i(q) = #{j : q >= S_j(e)}``.
  Every kernel computes segment indices from the starts;
- ``P_j(e)`` is clamped so that ``S_j(e)`` lies in ``[-2**(in_bits-1), 2**(in_bits-1)]``:
  ``[code_min, code_max + 1]`` ("ge") or ``[code_min - 1, code_max]`` ("gt"). A start one past
  the largest code sends no code to the segments above it (the same segment index as the
  unclamped value), and one at the smallest code sends every code there; the comparator
  constant is ``in_bits + 1`` bits wide. This clamp reproduces the DESIGN.md figures of the
  reference tables;
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

@dataclass(frozen=True)
class SegmentRule:
    """A comparator convention: how a code equal to a breakpoint code is segmented."""

    name: str
    comparator: str     # the comparison q <cmp> P_j that selects the segments above P_j
    start_offset: int   # S_j - P_j: the segment start relative to the comparator constant
    meaning: str


SEGMENT_RULES = {r.name: r for r in (
    SegmentRule("ge", ">=", 0, "a code equal to a breakpoint starts the segment above "
                "(the GQA-LUT trainer's np.digitize(x, split_points) - 1)"),
    SegmentRule("gt", ">", 1, "a code equal to a breakpoint stays in the segment below "
                "(the GQA-LUT torch operator's torch.bucketize(q, breakpoints / scale))"),
)}


def _check_int(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise GQAError(name, f"must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise GQAError(name, f"{value} is outside [{lo}, {hi}]")
    return int(value)


def check_segment_rule(rule, field: str = "segment_rule") -> str:
    if not isinstance(rule, str) or rule not in SEGMENT_RULES:
        raise GQAError(field, f"unknown segment rule {rule!r}",
                       "use " + " or ".join(f"'{r.name}' (q {r.comparator} P_j)" for r in SEGMENT_RULES.values()))
    return rule


def acc_width(in_bits: int, slope_bits: int, icpt_bits: int, slope_shift: int, icpt_shift: int) -> int:
    """Signed width holding every accumulator ``K*q << slope_shift + B << icpt_shift`` (worst case).

    The rule of :meth:`PWLDatapath.acc_bits`; hw_models prices units intsim does not simulate
    (the INT32 counterpart) with it too.
    """
    kq = (1 << (slope_bits - 1)) * (1 << (in_bits - 1)) << slope_shift
    b = (1 << (icpt_bits - 1)) << icpt_shift
    return int(kq + b).bit_length() + 1


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
    segment_rule: str = "ge"

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
        check_segment_rule(self.segment_rule)

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
        return acc_width(self.in_bits, self.slope_bits, self.icpt_bits, self.slope_shift(e), self.icpt_shift(e))

    def input_exponent(self, absmax: float, scales) -> int:
        """The input scale ``2**-e`` for inputs up to ``absmax``: the largest ``e`` in ``scales`` with
        ``absmax * 2**e <= code_max`` (clipping nothing), else the smallest ``e``."""
        ok = [e for e in scales if absmax * 2.0**e <= self.code_max]
        return max(ok) if ok else min(scales)

    # segments ------------------------------------------------------------------------------
    @property
    def rule(self) -> SegmentRule:
        return SEGMENT_RULES[self.segment_rule]

    @property
    def start_offset(self) -> int:
        """``S_j - P_j``: 0 ("ge") or 1 ("gt")."""
        return self.rule.start_offset

    @property
    def breakpoint_code_range(self) -> tuple[int, int]:
        """Inclusive range of the comparator constants ``P_j(e)``: their starts span
        ``[code_min, code_max + 1]``."""
        return self.code_min - self.start_offset, self.code_max + 1 - self.start_offset

    def breakpoint_codes(self, breakpoints, e) -> np.ndarray:
        """``P_j(e)``: real breakpoints -> integer comparator constants at scale ``e`` (any shape;
        ``e`` an exponent or an integer array broadcasting against ``breakpoints``)."""
        lo, hi = self.breakpoint_code_range
        p = np.asarray(breakpoints, dtype=np.float64)
        scale = np.exp2(np.asarray(e, dtype=np.float64))  # exact powers of two
        # clip before rounding: far-away breakpoints must not overflow int64 on the way
        codes = round_real(np.clip(p * scale, lo - 1, hi + 1), "half_even")
        return np.clip(codes, lo, hi)

    def segment_starts(self, breakpoints, e) -> np.ndarray:
        """``S_j(e)``: per breakpoint, the smallest input code of the segment above it (int64, any
        shape), in ``[code_min, code_max + 1]``: ``P_j(e)`` ("ge") or ``P_j(e) + 1`` ("gt").
        ``e``: an exponent, or an integer array broadcasting against ``breakpoints`` (every
        scale of a population at once).

        The one segment primitive: everywhere ``i(q) = #{j : q >= S_j(e)}``.
        """
        return self.breakpoint_codes(breakpoints, e) + np.int64(self.start_offset)

    def breakpoints_for_starts(self, starts, e: int) -> np.ndarray:
        """Real breakpoints (on the ``2**-e`` grid) whose :meth:`segment_starts` at ``e`` are
        ``starts`` (integers in ``[code_min, code_max + 1]``): the inverse of the primitive."""
        s = np.asarray(starts, dtype=np.int64)
        if s.size and (s.min() < self.code_min or s.max() > self.code_max + 1):
            raise GQAError("starts", f"leave [{self.code_min}, {self.code_max + 1}]")
        return (s - self.start_offset).astype(np.float64) * 2.0**-e

    # files ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The fields, with ``segment_rule`` only when it is not the default "ge": files and sweep
        specs written before the field existed stay byte-identical and read as "ge"."""
        d = asdict(self)
        if d["segment_rule"] == "ge":
            del d["segment_rule"]
        return d

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
        # the default comparator is not named, so that existing reports read as before
        rule = "" if self.segment_rule == "ge" else f", segments q {self.rule.comparator} P_j ({self.segment_rule})"
        return (f"in s{self.in_bits}, slope {self.slope_format}, intercept {self.icpt_format}, "
                f"output {out}{rule}")
