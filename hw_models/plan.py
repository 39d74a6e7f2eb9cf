"""The integer PWL unit's structure for one scale or a scale set, from intsim's datapath.

Shared by the cost model (:mod:`hw_models.pwl_unit`) and the Verilog generator
(:mod:`hw_models.verilog`) so that what is priced is what is emitted. Every number comes from
intsim's canonical definitions (:class:`intsim.PWLDatapath`): comparator constants
``table.breakpoint_codes(e)``, shifts ``slope_shift(e)``/``icpt_shift(e)``, accumulator
``acc_frac(e)``/``acc_bits(e)``, output ``out_bits``/``out_frac``/``out_rounding``.

Per scale ``e`` the unit computes, with ``i = #{j : x >= P_j(e)}`` (``segment_rule`` "ge") or
``i = #{j : x > P_j(e)}`` ("gt"), ``x`` signed ``in_bits``: the comparator bank compares with
the constants ``P_j(e)`` by the datapath's rule, which is the segment index of
:meth:`intsim.PWLDatapath.segment_starts`. A ``>`` and a ``>=`` comparator against a constant
cost the same (one is the other's complement with swapped operands), so the cost model prices
both rules alike:

    prod = K_i * x                                  (signed, slope_bits + in_bits bits)
    acc  = prod << sk(e) + B_i << sb(e)             (signed, acc_bits bits, exact)
    y    = acc                                      (full precision)
         | saturate(round_shift(acc, t(e)))         (out_bits, t(e) = F(e) - out_frac)

Per-segment exponents (:mod:`intsim.segexp`, a table whose provenance declares the format):
the unit stores each segment's *narrow* codes ``k_i`` (``slope_bits`` of the format) and
``b_i`` with the shifts ``ds_i = s_hi - s_i``, ``db_i = t_hi - t_i``, multiplies the narrow
code and shifts each by its segment's amount onto the wide grid before the scale shifts:

    prod = (k_i * x) << ds_i                        (narrow multiplier, small shifter)
    bw   = b_i << db_i

which is the wide unit's ``K_i * x`` and ``B_i`` exactly (``K_i = k_i << ds_i``), so the rest
of the unit (``slope_bits``/``icpt_bits`` below are the wide widths) is unchanged.

Output alignment: a single-scale unit outputs ``A`` with ``F(e)`` fractional bits, exactly
``table.output_codes``. A unit serving a whole scale set at full precision aligns every scale
to the common ``Fc = max_e F(e)`` by folding ``Fc - F(e)`` into both shifts, so ``y`` always
has ``Fc`` fractional bits (``y = output_codes << (Fc - F(e))``); with ``out_bits`` the output
format is ``s{out_bits}.{out_frac}`` at every scale already.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from intsim import GQAError, PWLDatapath
from intsim.datapath import acc_width  # intsim's accumulator rule, for the INT32 counterpart too
from intsim.segexp import SegmentExponents, table_format


@dataclass(frozen=True)
class ScalePlan:
    """One scale's constants: comparator codes, shifts, widths."""

    e: int
    sk: int                 # left shift of K*x
    sb: int                 # left shift of B
    acc_bits: int           # worst-case accumulator width at this scale
    acc_frac: int           # fractional bits of acc (F(e), or Fc when aligned)
    t: int | None           # output rounding shift (None: full precision)
    y_shift: int            # y = output_codes(e) << y_shift
    bp: tuple[int, ...] | None = None  # comparator constants P_j(e) (None: not known, cost only)


@dataclass(frozen=True)
class UnitPlan:
    """Widths and per-scale constants of one integer PWL unit."""

    entries: int
    in_bits: int
    slope_bits: int
    icpt_bits: int
    out_bits: int | None
    out_frac: int | None
    rounding: str
    scales: tuple[ScalePlan, ...]
    aligned: bool
    segment_rule: str = "ge"   # comparators: "ge" x >= P_j, "gt" x > P_j (PWLDatapath.segment_rule)
    segexp: SegmentExponents | None = None  # per-segment exponents (slope_bits/icpt_bits: the wide codes)

    # widths -------------------------------------------------------------------------------
    @property
    def prod_bits(self) -> int:
        return self.slope_bits + self.in_bits

    @property
    def k_bits(self) -> int:
        """Width of the stored slope code (the multiplier's coefficient operand): narrow with per-segment
        exponents, else ``slope_bits``."""
        return self.slope_bits if self.segexp is None else self.segexp.slope_bits

    @property
    def b_bits(self) -> int:
        """Width of the stored intercept code."""
        return self.icpt_bits if self.segexp is None else self.segexp.icpt_bits

    @property
    def ks_bits(self) -> int:
        """Width of a segment's stored slope shift ``ds_i`` in ``0..s_hi-s_lo`` (0: no per-segment shift)."""
        return 0 if self.segexp is None or not self.segexp.slope_span else int(self.segexp.slope_span).bit_length()

    @property
    def bs_bits(self) -> int:
        return 0 if self.segexp is None or not self.segexp.icpt_span else int(self.segexp.icpt_span).bit_length()

    @property
    def stored_bits(self) -> int:
        """Bits one entry stores: slope and intercept codes and their per-segment shifts."""
        return self.k_bits + self.b_bits + self.ks_bits + self.bs_bits

    @property
    def narrow_prod_bits(self) -> int:
        """The multiplier's product width ``k_bits + in_bits`` (``prod_bits`` without per-segment exponents)."""
        return self.k_bits + self.in_bits

    @property
    def bp_bits(self) -> int:
        """Comparator width: one past the largest code ("ge") or one below the smallest ("gt") needs
        ``in_bits + 1`` bits."""
        return self.in_bits + 1

    @property
    def acc_bits(self) -> int:
        return max(s.acc_bits for s in self.scales)

    @property
    def multi(self) -> bool:
        return len(self.scales) > 1

    @property
    def e_bits(self) -> int:
        """Width of the scale-index input ``e`` of a multi-scale unit (0 for a single scale)."""
        return max(1, math.ceil(math.log2(len(self.scales)))) if self.multi else 0

    @property
    def idx_bits(self) -> int:
        return max(1, math.ceil(math.log2(self.entries)))

    @property
    def y_bits(self) -> int:
        return self.acc_bits if self.out_bits is None else self.out_bits

    @property
    def y_frac(self) -> int:
        return self.scales[0].acc_frac if self.out_bits is None else self.out_frac

    def live_comparators(self) -> int:
        """Comparators a hard-wired table needs: those whose constant is inside the input codes at
        some served scale, counted once per distinct column of constants ``(P_j(e))_e``.

        ``x >= P`` ("ge") with ``P <= code_min`` is always true and with ``P > code_max`` never
        (``x > P``, "gt": ``P < code_min``, ``P >= code_max``); synthesis folds those to
        constants, and merges comparators that compare against the same constants at every
        scale. Without constants (a plan from a datapath alone): every breakpoint.
        """
        nb = self.entries - 1
        if any(s.bp is None for s in self.scales):
            return nb
        lo, hi = -(1 << (self.in_bits - 1)), (1 << (self.in_bits - 1)) - 1
        # clamp each constant to the one that gives the same outputs: then equal columns are equal
        # comparator functions, and a column of "always"/"never" constants is a constant
        lo, hi = (lo, hi + 1) if self.segment_rule == "ge" else (lo - 1, hi)
        cols = {tuple(min(max(int(s.bp[j]), lo), hi) for s in self.scales) for j in range(nb)}
        return sum(1 for c in cols if any(lo < v < hi for v in c))

    def shift_range(self, which: str) -> tuple[int, int]:
        vals = [getattr(s, which) for s in self.scales]
        return min(vals), max(vals)

    # the output rounding stage ----------------------------------------------------------------
    @property
    def round_pre_shift(self) -> int:
        """``L``: a constant left shift making every scale's rounding shift ``t + L >= 0``."""
        if self.out_bits is None:
            return 0
        return max(0, -min(s.t for s in self.scales))

    @property
    def round_shift_max(self) -> int:
        return 0 if self.out_bits is None else max(s.t for s in self.scales) + self.round_pre_shift

    @property
    def round_width(self) -> int:
        """Signed width of ``acc << L`` with room for every right shift (at least ``t + 2`` bits)."""
        return max(self.acc_bits + self.round_pre_shift, self.round_shift_max + 2)

    @property
    def rounded_bits(self) -> int:
        """Width of the rounded value before saturation (floor quotient plus the increment)."""
        return self.round_width - (min(s.t for s in self.scales) + self.round_pre_shift) + 1

    # counterparts ----------------------------------------------------------------------------------
    def widened(self, bits: int) -> "UnitPlan":
        """The same unit with input, coefficients (and a rounded output) ``bits`` wide (INT32)."""
        scales = tuple(replace(s, bp=None, acc_bits=acc_width(bits, bits, bits, s.sk, s.sb)) for s in self.scales)
        return replace(self, in_bits=bits, slope_bits=bits, icpt_bits=bits, scales=scales,
                       out_bits=None if self.out_bits is None else bits, segexp=None)


def check_entries(entries) -> int:
    if isinstance(entries, bool) or not isinstance(entries, (int, np.integer)):
        raise GQAError("entries", f"must be an integer, got {entries!r}")
    if entries < 2:
        raise GQAError("entries", f"{entries} is too few", "a PWL unit has at least 2 entries (1 breakpoint)")
    if entries > 4096:
        raise GQAError("entries", f"{entries} is too many for a comparator-bank unit", "use at most 4096")
    return int(entries)


def _scale_plans(dp: PWLDatapath, scales, align: bool, bps: dict | None) -> tuple[ScalePlan, ...]:
    fc = max(dp.acc_frac(e) for e in scales)
    plans = []
    for e in scales:
        f = dp.acc_frac(e)
        d = fc - f if (align and dp.out_bits is None) else 0
        t = None if dp.out_bits is None else f - dp.out_frac
        plans.append(ScalePlan(e=e, sk=dp.slope_shift(e) + d, sb=dp.icpt_shift(e) + d, acc_bits=dp.acc_bits(e) + d,
                               acc_frac=f + d, t=t, y_shift=d, bp=None if bps is None else bps[e]))
    return tuple(plans)


def plan_datapath(dp: PWLDatapath, entries: int, scales, align: bool = False,
                  segment_exponents: SegmentExponents | None = None) -> UnitPlan:
    """The unit for a datapath, entry count and scale set (no comparator constants: cost only).

    ``segment_exponents``: the unit stores narrow codes with per-segment exponents; ``dp`` is
    then the format's wide datapath (:meth:`intsim.segexp.SegmentExponents.wide_datapath`).
    """
    if not isinstance(dp, PWLDatapath):
        raise GQAError("datapath", f"must be a PWLDatapath, got {type(dp).__name__}")
    if segment_exponents is not None:
        if not isinstance(segment_exponents, SegmentExponents):
            raise GQAError("segment_exponents", f"must be a SegmentExponents, got {type(segment_exponents).__name__}")
        if not segment_exponents.matches(dp):
            raise GQAError("datapath", f"{dp.slope_format} / {dp.icpt_format} is not the wide datapath of "
                           f"{segment_exponents}", "use segment_exponents.wide_datapath(in_bits, ...)")
    entries = check_entries(entries)
    scales = tuple(sorted({dp.check_scale(e) for e in scales}))
    if not scales:
        raise GQAError("scales", "is empty", "give at least one scale exponent")
    return UnitPlan(entries=entries, in_bits=dp.in_bits, slope_bits=dp.slope_bits, icpt_bits=dp.icpt_bits,
                    out_bits=dp.out_bits, out_frac=dp.out_frac, rounding=dp.out_rounding,
                    scales=_scale_plans(dp, scales, align, None), aligned=align and len(scales) > 1,
                    segment_rule=dp.segment_rule, segexp=segment_exponents)


def check_table_fits(table) -> None:
    """Refuse a table whose codes do not fit its declared widths (a hand-edited or mutated one)."""
    dp = table.datapath
    for name, codes, fmt in (("slopes", table.slopes, dp.slope_format), ("intercepts", table.intercepts, dp.icpt_format)):
        codes = np.asarray(codes)
        bad = np.flatnonzero(~fmt.fits(codes))
        if bad.size:
            i = int(bad[0])
            need = int(abs(int(codes[i])) if codes[i] < 0 else int(codes[i]) + 1).bit_length() + 1
            raise GQAError(f"{name}[{i}]", f"code {int(codes[i])} does not fit the declared {fmt.bits}-bit width",
                           f"declare at least {need} bits or refit the table")


def plan_table(table, scale=None, align: bool = True) -> UnitPlan:
    """The unit of a table: one scale ``scale``, or (``None``) every scale of the table's set
    (per-segment exponents when its provenance declares them, :func:`intsim.segexp.table_format`)."""
    check_table_fits(table)
    dp = table.datapath
    if scale is None:
        scales = tuple(table.scales)
    else:
        e = dp.check_scale(scale, "scale")
        if e not in table.scales:
            raise GQAError("scale", f"e={e} is not among the table's scales {list(table.scales)}",
                           "pick one of them, or leave --scale out for the unit serving the whole set")
        scales = (e,)
    bps = {e: tuple(int(c) for c in table.breakpoint_codes(e)) for e in scales}
    for e in scales:
        if dp.acc_bits(e) > 62:
            raise GQAError("scale", f"e={e} needs a {dp.acc_bits(e)}-bit accumulator",
                           "intsim and the testbench hold values in int64; narrow the formats or the scale")
    return UnitPlan(entries=table.entries, in_bits=dp.in_bits, slope_bits=dp.slope_bits, icpt_bits=dp.icpt_bits,
                    out_bits=dp.out_bits, out_frac=dp.out_frac, rounding=dp.out_rounding,
                    scales=_scale_plans(dp, scales, align, bps), aligned=align and len(scales) > 1,
                    segment_rule=dp.segment_rule, segexp=table_format(table))
