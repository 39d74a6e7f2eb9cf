"""Structural cost model of the PWL unit: integer (any datapath), FP32/FP16/BF16, INT32.

The integer unit (:class:`UnitConfig`, widths from :mod:`hw_models.plan`, i.e. from intsim's
datapath) is priced component by component (:class:`hw_models.scaling.ComponentLibrary`):

================== ===========================================================================
comparators        ``N-1`` comparisons ``x >= P_j`` on ``in_bits + 1`` bits (constants when the
                   coefficients are fixed and one scale is served; fixed: only the comparators
                   whose constant is inside the codes at some scale, once per distinct column of
                   constants, :meth:`~hw_models.plan.UnitPlan.live_comparators`)
index_encoder      comparator outputs -> segment index (their count)
breakpoint_storage programmable: ``N-1`` load registers of ``in_bits + 1`` bits holding the
                   active scale's constants (fixed: folded into the comparators)
coefficient_storage programmable: ``N`` x (``slope_bits + icpt_bits``) load registers (per-segment
                   exponents: the narrow codes and both shift amounts)
coefficient_mux    ``N``-way select of ``K_i`` and ``B_i`` (of constants when fixed; per-segment
                   exponents: of the narrow codes and the shift amounts)
multiplier         ``slope_bits`` x ``in_bits`` signed (per-segment exponents: the narrow code)
segment_shifters   per-segment exponents only: ``k*x`` left by ``0..s_hi-s_lo``, ``b`` by
                   ``0..t_hi-t_lo`` (the segment's own amounts), onto the wide grid
shifters           variable shifts of ``K*x`` and ``B`` when they differ between scales
scale_control      the ``e`` register and the per-scale shift amounts (several scales)
adder              ``acc_bits``
rounding           out_bits: the variable right shift, the rounding increment
saturation         out_bits: overflow detection and clamp
pipeline_registers ``pipeline`` stages between the multiplier and the adder
io_registers       registered input and output (a unit synthesized at a clock frequency)
================== ===========================================================================

The FP counterpart stores FP breakpoints and coefficients and uses one FP multiplier and one
FP adder (no scale shifts: the exponent carries the scale), each built structurally from the
same integer primitives (:meth:`hw_models.scaling.ComponentLibrary.fp_parts`: significand array,
exponent adders, shifters, leading-zero detector, rounding, special cases); the INT32
counterpart is the integer unit with input, coefficients (and a rounded output) 32 bits wide.

Energy per evaluation = the combinational components' energy (one operation each) plus every
register's energy for one clock cycle (programmable storage holds its value: clock only); each
primitive's energy is its area times its class's energy per um^2 (Horowitz), so the energy
follows the structure.
Power at ``freq_mhz`` and ``activity`` (fraction of cycles that evaluate):
``P = f * (activity * E_logic + E_registers) + leakage``, leakage proportional to area.

Paper fit (:class:`PaperFit`): one area factor and one energy factor, fitted on one of
the GQA-LUT paper's synthesized units (:func:`fit_to_paper`; by default the INT8 unit) and applied
to every estimate; ``PaperFit.none()`` leaves the component data as published.

``variant`` (a dict of :class:`~hw_models.scaling.ComponentLibrary` options, e.g.
``{"fp_model": "horowitz", "mult_energy": "horowitz"}``, the model before the structural FP
units) selects an alternative component model for the ablation in the docs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

from intsim import GQAError, PWLDatapath
from intsim.segexp import segment_codes

from . import components as C
from .plan import UnitPlan, plan_datapath, plan_table
from .scaling import ComponentLibrary, Cost, ZERO

FP_FORMATS = {k: 1 + v["exp_bits"] + v["frac_bits"] for k, v in C.FP_FORMATS.items()}  # total bits


@dataclass(frozen=True)
class UnitConfig:
    """An integer PWL unit: its plan (widths, scales) and how it is built."""

    plan: UnitPlan
    programmable: bool = True
    pipeline: int = 0
    io_registers: bool = True
    label: str = "int"
    # fixed coefficients only: how many bit positions of the slope and intercept codes differ
    # between entries (the others are the same constant in every entry, so synthesis folds them:
    # the coefficient mux and the multiplier only see the varying bits); None: every bit varies.
    # With per-segment exponents: the bits of the narrow codes
    varying_bits: tuple[int, int] | None = None
    # fixed coefficients, per-segment exponents: the bits of the slope and intercept shift amounts that
    # differ between entries (None: every bit varies)
    varying_shift_bits: tuple[int, int] | None = None

    def __post_init__(self):
        if isinstance(self.pipeline, bool) or self.pipeline not in (0, 1):
            raise GQAError("pipeline", f"must be 0 or 1, got {self.pipeline!r}",
                           "0: combinational, 1: one register stage after the multiplier")

    @classmethod
    def from_datapath(cls, dp: PWLDatapath, entries: int, scales=range(7), **kw) -> "UnitConfig":
        return cls(plan_datapath(dp, entries, scales, align=kw.pop("align", False),
                                 segment_exponents=kw.pop("segment_exponents", None)), **kw)

    @classmethod
    def from_table(cls, table, scale=None, **kw) -> "UnitConfig":
        plan = plan_table(table, scale, align=kw.pop("align", False))
        if not kw.get("programmable", True) and "varying_bits" not in kw:
            kw["varying_bits"], shifts = stored_varying_bits(table, plan)
            kw.setdefault("varying_shift_bits", shifts)
        return cls(plan, **kw)

    def describe(self) -> str:
        p = self.plan
        out = "full precision" if p.out_bits is None else f"s{p.out_bits}.{p.out_frac} ({p.rounding})"
        if p.segexp is None:
            coeff = f"slope {p.slope_bits} b, intercept {p.icpt_bits} b"
        else:
            f = p.segexp
            coeff = (f"slope {f.slope_bits} b exp {f.slope_fracs[0]}..{f.slope_fracs[1]}, intercept {f.icpt_bits} b "
                     f"exp {f.icpt_fracs[0]}..{f.icpt_fracs[1]} (per segment; wide {p.slope_bits}/{p.icpt_bits} b)")
        return (f"{p.entries} entries, in s{p.in_bits}, {coeff}, "
                f"acc {p.acc_bits} b, output {out}, {len(p.scales)} scale(s), "
                f"{'programmable' if self.programmable else 'fixed'} coefficients, pipeline {self.pipeline}, "
                f"{'registered' if self.io_registers else 'unregistered'} I/O")


def varying_bits(codes, bits: int) -> int:
    """Bit positions of ``bits``-bit two's complement ``codes`` that are not the same in every code."""
    mask = (1 << bits) - 1
    words = [int(c) & mask for c in codes]
    differ = 0
    for w in words:
        differ |= w ^ words[0]
    return bin(differ).count("1")


def stored_varying_bits(table, plan: UnitPlan) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((slope, intercept), (slope shift, intercept shift))``: the bits of what each entry stores
    (:attr:`UnitPlan.stored_bits`) that differ between the table's entries."""
    if plan.segexp is None:
        return (varying_bits(table.slopes, plan.slope_bits), varying_bits(table.intercepts, plan.icpt_bits)), (0, 0)
    f = plan.segexp
    segs = segment_codes(table, f)
    return ((varying_bits([g["slope"] for g in segs], f.slope_bits), varying_bits([g["icpt"] for g in segs], f.icpt_bits)),
            (varying_bits([f.slope_fracs[1] - g["slope_frac"] for g in segs], max(plan.ks_bits, 1)),
             varying_bits([f.icpt_fracs[1] - g["icpt_frac"] for g in segs], max(plan.bs_bits, 1))))


@dataclass(frozen=True)
class PaperFit:
    """Multiplicative factors on area and dynamic energy, and where they come from."""

    area: float = 1.0
    energy: float = 1.0
    name: str = "none"
    note: str = "component data as published, no fit"

    @classmethod
    def none(cls) -> "PaperFit":
        return cls()

    def to_dict(self) -> dict:
        return {"name": self.name, "area_factor": self.area, "energy_factor": self.energy, "note": self.note}


@dataclass(frozen=True)
class Part:
    """One line of a breakdown: a component's area and per-evaluation energy (raw, uncalibrated)."""

    name: str
    cost: Cost
    clocked: bool = False   # energy spent every cycle (registers), not scaled by activity
    detail: str = ""


@dataclass
class UnitCost:
    """Area, energy and power of one unit, with its breakdown."""

    label: str
    node_nm: int
    freq_mhz: float
    activity: float
    calibration: PaperFit
    parts: list[Part]
    leakage_nw_per_um2: float
    description: str = ""
    extra: dict = field(default_factory=dict)

    def _area(self, p: Part) -> float:
        return p.cost.area_um2 * self.calibration.area

    def _energy(self, p: Part) -> float:
        return p.cost.energy_pj * self.calibration.energy

    @property
    def area_um2(self) -> float:
        return sum(self._area(p) for p in self.parts)

    @property
    def energy_pj(self) -> float:
        """Energy of one evaluation (one cycle of a unit that evaluates every cycle), pJ."""
        return sum(self._energy(p) for p in self.parts)

    @property
    def dynamic_mw(self) -> float:
        e = sum(self._energy(p) * (1.0 if p.clocked else self.activity) for p in self.parts)
        return e * self.freq_mhz * 1e-3  # pJ * MHz = 1e-6 W

    @property
    def leakage_mw(self) -> float:
        return self.area_um2 * self.leakage_nw_per_um2 * 1e-6

    @property
    def power_mw(self) -> float:
        return self.dynamic_mw + self.leakage_mw

    def breakdown(self) -> dict:
        return {p.name: {"area_um2": self._area(p), "energy_pj": self._energy(p), "detail": p.detail}
                for p in self.parts if p.cost.area_um2 > 0 or p.cost.energy_pj > 0}

    def to_dict(self) -> dict:
        return {"label": self.label, "description": self.description, "area_um2": self.area_um2,
                "power_mw": self.power_mw, "energy_pj": self.energy_pj, "dynamic_mw": self.dynamic_mw,
                "leakage_mw": self.leakage_mw, "breakdown": self.breakdown(), **self.extra}


# --- structural models ----------------------------------------------------------------------------

def _check_common(freq_mhz, activity):
    if isinstance(freq_mhz, bool) or not isinstance(freq_mhz, (int, float)) or not math.isfinite(freq_mhz) \
            or freq_mhz <= 0:
        raise GQAError("freq_mhz", f"must be a positive number of MHz, got {freq_mhz!r}")
    if isinstance(activity, bool) or not isinstance(activity, (int, float)) or not 0 <= activity <= 1:
        raise GQAError("activity", f"must be in [0, 1] (fraction of cycles that evaluate), got {activity!r}")


def int_parts(cfg: UnitConfig, lib: ComponentLibrary) -> list[Part]:
    """The integer unit's components (raw costs at ``lib``'s node)."""
    p = cfg.plan
    n, nb = p.entries, p.entries - 1
    coeff_bits = p.stored_bits
    if cfg.programmable:
        live = nb
        parts = [Part("comparators", lib.compare(p.bp_bits) * nb, detail=f"{nb} x {p.bp_bits}-bit >=")]
    else:
        # fixed constants: only the comparators whose constant is inside the codes at some scale,
        # once per distinct column of constants (the others fold to constants). One scale: each
        # compares x with a constant. Several: with the active scale's constant, which the
        # generator selects by e (a case on e per breakpoint): a comparator whose operand varies,
        # priced as the variable comparator (the selection of constants folds into its carry
        # logic: docs/hw_models.md, the split units)
        live = p.live_comparators()
        folded = "" if live == nb else f" ({nb - live} folded: constant or shared)"
        parts = [Part("comparators", lib.compare(p.bp_bits, constant=not p.multi) * live,
                      detail=f"{live} x {p.bp_bits}-bit >= " + ("constant" if not p.multi else "the active scale's "
                                                                 "constant (selected by e)") + folded)]
    parts.append(Part("index_encoder", lib.encoder(live + 1), detail=f"{live} -> {p.idx_bits} bits"))
    if cfg.programmable:
        parts.append(Part("breakpoint_storage", lib.load_register(nb * p.bp_bits), clocked=True,
                          detail=f"{nb} x {p.bp_bits}-bit registers (active scale)"))
        shifts = "" if p.segexp is None else f"+{p.ks_bits}+{p.bs_bits}"
        parts.append(Part("coefficient_storage", lib.load_register(n * coeff_bits), clocked=True,
                          detail=f"{n} x ({p.k_bits}+{p.b_bits}{shifts})-bit registers"))
    kb, bb = cfg.varying_bits if cfg.varying_bits is not None else (p.k_bits, p.b_bits)
    vk, vb = cfg.varying_shift_bits if cfg.varying_shift_bits is not None else (p.ks_bits, p.bs_bits)
    vk, vb = min(vk, p.ks_bits), min(vb, p.bs_bits)
    parts.append(Part("coefficient_mux", lib.mux(n, kb + bb + vk + vb, constant=not cfg.programmable),
                      detail=f"{n}:1 x {kb + bb + vk + vb} bits" + ("" if cfg.varying_bits is None else " (varying)")))
    parts.append(Part("multiplier", lib.int_mult(max(kb, 1), p.in_bits) if kb else ZERO,
                      detail=f"{kb} x {p.in_bits}" + ("" if cfg.varying_bits is None else " (varying slope bits)")))
    if p.segexp is not None:
        # a shifter of 2**v - 1 positions has v MUX2 stages: one per varying bit of the amount
        seg = lib.barrel_shifter(p.narrow_prod_bits + p.segexp.slope_span, (1 << vk) - 1) + \
            lib.barrel_shifter(p.b_bits + p.segexp.icpt_span, (1 << vb) - 1)
        parts.append(Part("segment_shifters", seg, detail=f"k*x by 0..{p.segexp.slope_span} ({vk} stages), "
                          f"b by 0..{p.segexp.icpt_span} ({vb} stages)"))
    lo_k, hi_k = p.shift_range("sk")
    lo_b, hi_b = p.shift_range("sb")
    shifters = lib.barrel_shifter(p.prod_bits + hi_k, hi_k - lo_k) + lib.barrel_shifter(p.icpt_bits + hi_b, hi_b - lo_b)
    parts.append(Part("shifters", shifters, detail=f"K*x by {lo_k}..{hi_k}, B by {lo_b}..{hi_b}"))
    if p.multi:
        amount_bits = sum(max(1, math.ceil(math.log2(v + 1))) for v in (hi_k, hi_b, p.round_shift_max))
        parts.append(Part("scale_control", lib.mux(len(p.scales), amount_bits, constant=True),
                          detail=f"per-scale shift amounts ({amount_bits} bits) selected by the {p.e_bits}-bit e"))
    parts.append(Part("adder", lib.int_add(p.acc_bits), detail=f"{p.acc_bits} bits"))
    if p.out_bits is not None:
        lo_t = min(s.t for s in p.scales) + p.round_pre_shift
        rounding = lib.barrel_shifter(p.round_width, p.round_shift_max - lo_t) + \
            (lib.round(p.rounded_bits, p.round_shift_max) if p.rounding != "floor" else ZERO)
        parts.append(Part("rounding", rounding, detail=f"shift {lo_t}..{p.round_shift_max}, {p.rounding}"))
        parts.append(Part("saturation", lib.saturate(p.rounded_bits, p.out_bits),
                          detail=f"{p.rounded_bits} -> {p.out_bits} bits"))
    if cfg.pipeline:
        bits = p.prod_bits + p.icpt_bits + p.e_bits
        parts.append(Part("pipeline_registers", lib.dff(bits) * cfg.pipeline, clocked=True, detail=f"{bits} bits"))
    if cfg.io_registers:
        bits = p.in_bits + p.e_bits + p.y_bits
        parts.append(Part("io_registers", lib.dff(bits), clocked=True, detail=f"{bits} bits"))
    return parts


def fp_parts(cfg: UnitConfig, lib: ComponentLibrary, fmt: str = "fp32") -> list[Part]:
    """The FP counterpart of ``cfg``: same entries, storage style and registers, FP arithmetic."""
    if fmt not in FP_FORMATS:
        raise GQAError("format", f"unknown floating-point format {fmt!r}", f"use one of {', '.join(FP_FORMATS)}")
    w = FP_FORMATS[fmt]
    n, nb = cfg.plan.entries, cfg.plan.entries - 1
    parts = [Part("comparators", lib.fp(fmt, "compare") * nb, detail=f"{nb} x {fmt} compare"),
             Part("index_encoder", lib.encoder(n), detail=f"{nb} -> {cfg.plan.idx_bits} bits")]
    if cfg.programmable:
        parts.append(Part("breakpoint_storage", lib.load_register(nb * w), clocked=True,
                          detail=f"{nb} x {w}-bit registers"))
        parts.append(Part("coefficient_storage", lib.load_register(n * 2 * w), clocked=True,
                          detail=f"{n} x 2 x {w}-bit registers"))
    parts.append(Part("coefficient_mux", lib.mux(n, 2 * w, constant=not cfg.programmable), detail=f"{n}:1 x {2 * w} bits"))
    how = "structural" if lib.fp_model == "structural" else "Horowitz row"
    parts.append(Part("multiplier", lib.fp(fmt, "mult"), detail=f"{fmt} multiplier ({how})"))
    parts.append(Part("adder", lib.fp(fmt, "add"), detail=f"{fmt} adder ({how})"))
    if cfg.pipeline:
        parts.append(Part("pipeline_registers", lib.dff(2 * w) * cfg.pipeline, clocked=True, detail=f"{2 * w} bits"))
    if cfg.io_registers:
        parts.append(Part("io_registers", lib.dff(2 * w), clocked=True, detail=f"{2 * w} bits"))
    return parts


def int_counterpart(cfg: UnitConfig, bits: int = 32) -> UnitConfig:
    """The integer unit with input, coefficients (and a rounded output) ``bits`` wide."""
    return UnitConfig(cfg.plan.widened(bits), cfg.programmable, cfg.pipeline, cfg.io_registers, label=f"int{bits}")


# --- estimates -------------------------------------------------------------------------------------

def _resolve_calibration(calibration, variant=None) -> PaperFit:
    if calibration is None or calibration == "none":
        return PaperFit.none()
    if isinstance(calibration, PaperFit):
        return calibration
    if calibration == "paper":
        return fit_to_paper("int8", variant)
    raise GQAError("calibration", f"unknown calibration {calibration!r}", "use 'paper', 'none' or a PaperFit")


def _cost(label, parts, cfg_desc, node, freq_mhz, activity, calibration, lib) -> UnitCost:
    return UnitCost(label=label, node_nm=node, freq_mhz=float(freq_mhz), activity=float(activity),
                    calibration=calibration, parts=parts, leakage_nw_per_um2=lib.leakage_nw_per_um2,
                    description=cfg_desc)


def _variant(variant) -> tuple:
    """A hashable form of ``variant`` (dict of ComponentLibrary options, or pairs, or None)."""
    if variant is None:
        return ()
    if isinstance(variant, dict):
        variant = variant.items()
    try:
        return tuple(sorted((str(k), v) for k, v in variant))
    except (TypeError, ValueError):
        raise GQAError("variant", f"must be a dict of component-model options, got {variant!r}",
                       "e.g. {'fp_model': 'horowitz', 'mult_energy': 'horowitz'}") from None


def _library(node, variant) -> ComponentLibrary:
    kw = dict(_variant(variant))
    unknown = sorted(set(kw) - {"fp_model", "mult_energy"})
    if unknown:
        raise GQAError("variant", f"unknown option {unknown[0]!r}", "use fp_model and/or mult_energy")
    return ComponentLibrary(node, **kw)


def estimate(cfg: UnitConfig, node=28, freq_mhz=500.0, activity=1.0, calibration="paper",
             variant=None) -> UnitCost:
    """Area, energy and power of the integer unit ``cfg``."""
    _check_common(freq_mhz, activity)
    lib = _library(node, variant)
    return _cost(cfg.label, int_parts(cfg, lib), cfg.describe(), lib.node, freq_mhz, activity,
                 _resolve_calibration(calibration, variant), lib)


def estimate_fp(cfg: UnitConfig, fmt: str = "fp32", node=28, freq_mhz=500.0, activity=1.0,
                calibration="paper", variant=None) -> UnitCost:
    """Area, energy and power of the FP counterpart of ``cfg``."""
    _check_common(freq_mhz, activity)
    lib = _library(node, variant)
    desc = (f"{cfg.plan.entries} entries, {fmt} breakpoints/coefficients/arithmetic, "
            f"{'programmable' if cfg.programmable else 'fixed'}, pipeline {cfg.pipeline}")
    return _cost(fmt, fp_parts(cfg, lib, fmt), desc, lib.node, freq_mhz, activity,
                 _resolve_calibration(calibration, variant), lib)


def compare(cfg: UnitConfig, node=28, freq_mhz=500.0, activity=1.0, calibration="paper") -> dict:
    """The integer unit against its FP32 and INT32 counterparts, with the savings in percent."""
    units = {"int": estimate(cfg, node, freq_mhz, activity, calibration),
             "fp32": estimate_fp(cfg, "fp32", node, freq_mhz, activity, calibration),
             "int32": estimate(int_counterpart(cfg, 32), node, freq_mhz, activity, calibration)}
    savings = {}
    for ref in ("fp32", "int32"):
        savings[ref] = {k: 100.0 * (1 - getattr(units["int"], k) / getattr(units[ref], k))
                        for k in ("area_um2", "power_mw", "energy_pj")}
    return {"units": units, "savings_pct": savings}


# --- calibration on the GQA-LUT paper ----------------------------------------------------------

def paper_int8_config() -> UnitConfig:
    """Our reading of the paper's INT8 unit: 8 entries on the default datapath (s8 input, s8.6
    coefficients, full-precision output), scales 0..6, programmable table, registered I/O."""
    return UnitConfig.from_datapath(PWLDatapath(), C.PAPER_POINTS["entries"], range(7), programmable=True,
                                    pipeline=0, io_registers=True, label="int8")


def paper_units(calibration=None, variant=None) -> dict[str, UnitCost]:
    """Our estimates of the paper's three units at its node and frequency."""
    cfg = paper_int8_config()
    node, f = C.PAPER_POINTS["node_nm"], C.PAPER_POINTS["freq_mhz"]
    cal = _resolve_calibration(calibration, variant)
    return {"int8": estimate(cfg, node, f, 1.0, cal, variant),
            "fp32": estimate_fp(cfg, "fp32", node, f, 1.0, cal, variant),
            "int32": estimate(int_counterpart(cfg, 32), node, f, 1.0, cal, variant)}


def fit_to_paper(on: str = "int8", variant=None) -> PaperFit:
    """Fit one area factor and one energy factor on one of the paper's units (``int8``, ``fp32``, ``int32``).

    ``area = paper_area / model_area``; ``energy = (paper_power - leakage) / model_dynamic_power``
    at the paper's node and frequency (activity 1), leakage at the calibrated area.
    """
    return _fit_to_paper(on, _variant(variant))


@lru_cache(maxsize=None)
def _fit_to_paper(on: str, variant: tuple) -> PaperFit:
    points = C.PAPER_POINTS["units"]
    if on not in points:
        raise GQAError("calibration", f"no paper point {on!r}", f"use one of {', '.join(points)}")
    raw = paper_units(PaperFit.none(), variant)[on]
    ka = points[on]["area_um2"] / raw.area_um2
    leak = raw.leakage_mw * ka
    ke = (points[on]["power_mw"] - leak) / raw.dynamic_mw
    tag = "" if not variant else " [" + ", ".join(f"{k}={v}" for k, v in variant) + "]"
    return PaperFit(area=ka, energy=ke, name=f"paper-{on}",
                       note=f"fitted on the GQA-LUT {on.upper()} unit (28 nm, 500 MHz, 8 entries){tag}")


def fidelity(on: str = "int8", variant=None) -> list[dict]:
    """Calibrate on one paper point, predict all three: rows of model vs paper with % error."""
    cal = fit_to_paper(on, variant)
    ours = paper_units(cal, variant)
    rows = []
    for unit, ref in C.PAPER_POINTS["units"].items():
        est = ours[unit]
        rows.append({"unit": unit, "calibrated_on": on, "fitted": unit == on,
                     "area_um2": est.area_um2, "paper_area_um2": ref["area_um2"],
                     "area_err_pct": 100.0 * (est.area_um2 / ref["area_um2"] - 1),
                     "power_mw": est.power_mw, "paper_power_mw": ref["power_mw"],
                     "power_err_pct": 100.0 * (est.power_mw / ref["power_mw"] - 1)})
    return rows


def model_gate_equivalents(cfg: UnitConfig) -> float:
    """The raw 45 nm model area in NAND2 gate equivalents (for comparison with yosys counts)."""
    lib = ComponentLibrary(45)
    return sum(p.cost.area_um2 for p in int_parts(cfg, lib)) / lib.nand2_area_45nm


# --- tables for the docs and the benchmark ---------------------------------------------------------

def _pct(x: float) -> str:
    return f"{round(x, 1) + 0.0:+.1f}%"


def fidelity_markdown(ons=("int8", "fp32", "int32"), variant=None) -> str:
    """The fidelity table: for each calibration point, every unit's estimate against the paper."""
    lines = ["| calibrated on | unit | area um2 (model) | area um2 (paper) | area error | power mW (model) "
             "| power mW (paper) | power error |",
             "|---|---|---|---|---|---|---|---|"]
    for on in ons:
        for r in fidelity(on, variant):
            tag = "fit" if r["fitted"] else "prediction"
            lines.append(f"| {on.upper()} | {r['unit'].upper()} ({tag}) | {r['area_um2']:.0f} | {r['paper_area_um2']:.0f} "
                         f"| {_pct(r['area_err_pct'])} | {r['power_mw']:.3f} | {r['paper_power_mw']:.2f} "
                         f"| {_pct(r['power_err_pct'])} |")
    return "\n".join(lines)


def trends_markdown(node=28, freq_mhz=500.0) -> str:
    """Area and power of the programmable integer unit (calibrated on the paper's INT8 point) for
    entries 4..64 at s8 and for widths 4..16 (input = slope = intercept) at 8 entries, with the
    savings against the FP32 counterpart."""
    def row(label, cfg):
        r = compare(cfg, node, freq_mhz)
        u, s = r["units"]["int"], r["savings_pct"]["fp32"]
        bd = u.breakdown()
        storage = sum(bd.get(k, {}).get("area_um2", 0.0) for k in ("breakpoint_storage", "coefficient_storage"))
        return (f"| {label} | {u.area_um2:.0f} | {u.power_mw:.3f} | {u.energy_pj:.3f} | {100 * storage / u.area_um2:.0f}% "
                f"| {s['area_um2']:.1f}% | {s['power_mw']:.1f}% |")

    head = ["| {} | area um2 | power mW | energy pJ/eval | storage share | area saved vs FP32 | power saved vs FP32 |",
            "|---|---|---|---|---|---|---|"]
    out = [head[0].format("entries (s8, s8.6, s8.6)"), head[1]]
    for n in (4, 8, 16, 32, 64):
        out.append(row(str(n), UnitConfig.from_datapath(PWLDatapath(), n, range(7))))
    out += ["", head[0].format("width (8 entries)"), head[1]]
    for w in (4, 6, 8, 10, 12, 16):
        dp = PWLDatapath(in_bits=w, slope_bits=w, icpt_bits=w, slope_frac=w - 2, icpt_frac=w - 2)
        out.append(row(str(w), UnitConfig.from_datapath(dp, 8, range(7))))
    return "\n".join(out)


# --- the structural FP units against Horowitz's rows, and the ablation -------------------------------

VARIANTS = (
    ("Horowitz FP rows, Horowitz multiplier energies (previous model)",
     {"fp_model": "horowitz", "mult_energy": "horowitz"}),
    ("Horowitz FP rows, multiplier energy = area x 8x8 density", {"fp_model": "horowitz"}),
    ("structural FP, Horowitz multiplier energies (32x32 = 15.5 x 8x8)", {"mult_energy": "horowitz"}),
    ("structural FP, multiplier energy = area x 8x8 density (the model)", {}),
)


def ablation_markdown() -> str:
    """Calibrated on INT8, the FP32 and INT32 prediction errors of each component-model variant,
    and the worst prediction error over all three calibration points."""
    lines = ["| component model | FP32 area | FP32 power | INT32 area | INT32 power | worst of the 3x3 |",
             "|---|---|---|---|---|---|"]
    for label, variant in VARIANTS:
        rows = {r["unit"]: r for r in fidelity("int8", variant)}
        worst = max(abs(r[k]) for on in ("int8", "fp32", "int32") for r in fidelity(on, variant) if not r["fitted"]
                    for k in ("area_err_pct", "power_err_pct"))
        lines.append(f"| {label} | {_pct(rows['fp32']['area_err_pct'])} | {_pct(rows['fp32']['power_err_pct'])} "
                     f"| {_pct(rows['int32']['area_err_pct'])} | {_pct(rows['int32']['power_err_pct'])} "
                     f"| {worst:.1f}% |")
    return "\n".join(lines)


def fp_crosscheck_markdown(node=45) -> str:
    """Structural FP adders and multipliers against Horowitz/Han's monolithic rows (uncalibrated)."""
    lib = ComponentLibrary(node)
    lines = ["| unit | structural um2 | Horowitz/Han um2 | ratio | structural pJ | Horowitz pJ | ratio |",
             "|---|---|---|---|---|---|---|"]
    for fmt in C.FP_FORMATS:
        for op in ("mult", "add"):
            s, h = lib.fp(fmt, op), lib.fp_horowitz(fmt, op)
            star = " (BF16 row derived from FP16)" if fmt == "bf16" else ""
            lines.append(f"| {fmt.upper()} {op}{star} | {s.area_um2:.0f} | {h.area_um2:.0f} | "
                         f"{s.area_um2 / h.area_um2:.2f} | {s.energy_pj:.2f} | {h.energy_pj:.2f} | "
                         f"{s.energy_pj / h.energy_pj:.2f} |")
    return "\n".join(lines)


def fp_structure_markdown(fmt="fp32", node=45) -> str:
    """The blocks of the structural ``fmt`` multiplier and adder (uncalibrated, ``node``)."""
    lib = ComponentLibrary(node)
    lines = ["| unit | block | um2 | pJ | structure |", "|---|---|---|---|---|"]
    for op in ("mult", "add"):
        for name, cost, detail in lib.fp_parts(fmt, op):
            lines.append(f"| {fmt.upper()} {op} | {name} | {cost.area_um2:.0f} | {cost.energy_pj:.3f} | {detail} |")
        total = lib.fp(fmt, op)
        lines.append(f"| {fmt.upper()} {op} | **total** | **{total.area_um2:.0f}** | **{total.energy_pj:.3f}** | |")
    return "\n".join(lines)
