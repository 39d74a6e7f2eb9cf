"""Component library for a technology node: the data of :mod:`hw_models.components`, scaled.

Estimators at the component level (Accelergy's "plug-in" layer): each method returns a
:class:`Cost` -- area in um^2 and dynamic energy in pJ per operation -- for one component of
given widths at this node. Published rows are used as they are; other widths follow the
derivation rules written down in :data:`hw_models.components.DERIVATION_RULES`.

Floating-point adders and multipliers are built structurally from the integer primitives
(significand array multiplier, exponent adders, alignment and normalisation shifters, leading-zero
detector, rounding incrementer, special cases: :meth:`ComponentLibrary.fp_parts`), the way FP units
are built and with the same primitives as the integer unit. Horowitz's monolithic FP rows are kept
for comparison (:meth:`ComponentLibrary.fp_horowitz`) and can be selected with
``fp_model="horowitz"`` (the model before the structural FP units, for the docs' ablation).

Energy follows the structure: every primitive's energy is its area times its class's energy per
um^2 from Horowitz's rows (adders: the rows themselves; multipliers: the 8x8 row; random logic and
registers: the 32-bit adder). ``mult_energy="horowitz"`` instead interpolates the two multiplier
rows' energies (15.5x from 8x8 to 32x32), again for the ablation.

Node scaling (Stillmaker & Baas 2017), from the 45 nm base (Horowitz, 0.9 V):

- area:   ``A(node) = A(45) * area_factor(node)``;
- energy: ``E(node) = E(45) * p(node, Vdd(node)) / p(45, 0.9 V)`` with ``p(V) = a V^2 + b V + c``;
- 28 nm is interpolated linearly in the node between 32 nm and 20 nm (area factor and the
  energy polynomial's value), as the docs say.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from intsim import GQAError

from . import components as C


@dataclass(frozen=True)
class Cost:
    """Area (um^2) and dynamic energy per operation (pJ) of one component or a sum of them."""

    area_um2: float = 0.0
    energy_pj: float = 0.0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.area_um2 + other.area_um2, self.energy_pj + other.energy_pj)

    def __mul__(self, k: float) -> "Cost":
        return Cost(self.area_um2 * k, self.energy_pj * k)

    __rmul__ = __mul__


ZERO = Cost()


# --- node scaling ---------------------------------------------------------------------------------

def check_node(node) -> int:
    """A technology node in nm that the tables cover (28 nm interpolated)."""
    if isinstance(node, bool) or not isinstance(node, (int, float)) or not math.isfinite(node) \
            or node != int(node) or int(node) not in C.SUPPORTED_NODES:
        raise GQAError("node", f"{node!r} nm is not in the component tables",
                       f"use one of {', '.join(str(n) for n in C.SUPPORTED_NODES)} (nm)")
    return int(node)


def _poly(node: int, vdd: float) -> float:
    a, b, c = C.ENERGY_POLY["values"][node]
    return a * vdd * vdd + b * vdd + c


def area_factor(node) -> float:
    """Area at ``node`` relative to 45 nm."""
    node = check_node(node)
    if node in C.NODE_INTERPOLATION:
        it = C.NODE_INTERPOLATION[node]
        hi, lo = it["between"]
        w = it["weight_of_first"]
        return w * area_factor(hi) + (1 - w) * area_factor(lo)
    return C.AREA_FACTOR_FROM_45NM["values"][node]


def _energy_poly_value(node: int) -> float:
    vdd = C.NOMINAL_VDD["values"][node]
    if node in C.NODE_INTERPOLATION:
        it = C.NODE_INTERPOLATION[node]
        hi, lo = it["between"]
        w = it["weight_of_first"]
        return w * _poly(hi, vdd) + (1 - w) * _poly(lo, vdd)
    return _poly(node, vdd)


def energy_factor(node) -> float:
    """Dynamic energy per operation at ``node`` (its nominal supply) relative to 45 nm at 0.9 V."""
    node = check_node(node)
    return _energy_poly_value(node) / _poly(C.BASE_NODE_NM, C.NOMINAL_VDD["values"][C.BASE_NODE_NM])


def node_source(node) -> str:
    node = check_node(node)
    if node == C.BASE_NODE_NM:
        return "45 nm base data, no scaling"
    if node in C.NODE_INTERPOLATION:
        return C.NODE_INTERPOLATION[node]["source"]
    return f"scaled from 45 nm: {C.STILLMAKER}"


# --- interpolation helpers --------------------------------------------------------------------------

def _rows(component: str) -> list[dict]:
    return [r for r in C.ARITHMETIC_45NM if r["component"] == component]


def _loglog(x: float, pts: list[tuple[float, float]]) -> float:
    """Piecewise-linear interpolation in log-log; the end segments extrapolate."""
    pts = sorted(pts)
    if len(pts) == 1:
        return pts[0][1] * x / pts[0][0]
    i = 0
    while i < len(pts) - 2 and x > pts[i + 1][0]:
        i += 1
    (x0, y0), (x1, y1) = pts[i], pts[i + 1]
    slope = math.log(y1 / y0) / math.log(x1 / x0)
    return y0 * (x / x0) ** slope


def _array_fit(key: str) -> tuple[float, float]:
    """``(c_pp, c_bit)`` with ``c_pp * a*b + c_bit * (a + b)`` through the two published multiplier rows."""
    (a0, b0, y0), (a1, b1, y1) = sorted((r["bits"][0], r["bits"][1], r[key]) for r in _rows("int_mult"))
    det = a0 * b0 * (a1 + b1) - a1 * b1 * (a0 + b0)
    c_pp = (y0 * (a1 + b1) - y1 * (a0 + b0)) / det
    c_bit = (a0 * b0 * y1 - a1 * b1 * y0) / det
    return c_pp, c_bit


_MULT_AREA = _array_fit("area_um2")
_MULT_ENERGY = _array_fit("energy_pj")

FP_MODELS = ("structural", "horowitz")
MULT_ENERGY_MODELS = ("area", "horowitz")


def fp_format(fmt) -> tuple[int, int]:
    """``(exp_bits, frac_bits)`` of a floating-point format."""
    if fmt not in C.FP_FORMATS:
        raise GQAError("format", f"unknown floating-point format {fmt!r}", f"use one of {', '.join(C.FP_FORMATS)}")
    f = C.FP_FORMATS[fmt]
    return f["exp_bits"], f["frac_bits"]


def _check_bits(value, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise GQAError(field, f"must be a positive integer width, got {value!r}")
    return value


class ComponentLibrary:
    """Area and energy of datapath components at one technology node (uncalibrated).

    ``energy_pj`` is the dynamic energy of one operation with random operands; for registers
    (:meth:`dff`) it is the energy of one clock cycle.
    """

    def __init__(self, node=28, fp_model: str = "structural", mult_energy: str = "area"):
        if fp_model not in FP_MODELS:
            raise GQAError("fp_model", f"unknown FP model {fp_model!r}", f"use one of {', '.join(FP_MODELS)}")
        if mult_energy not in MULT_ENERGY_MODELS:
            raise GQAError("mult_energy", f"unknown multiplier energy model {mult_energy!r}",
                           f"use one of {', '.join(MULT_ENERGY_MODELS)}")
        self.fp_model, self.mult_energy = fp_model, mult_energy
        self.node = check_node(node)
        self.area_factor = area_factor(self.node)
        self.energy_factor = energy_factor(self.node)
        self._density = C.LOGIC_ENERGY_PER_UM2_45NM["value_pj_per_um2"]
        self._cells = {c["cell"]: c["area_um2"] for c in C.CELLS_45NM}

    # scaling of 45 nm figures -------------------------------------------------------------
    def _scaled(self, area45: float, energy45: float) -> Cost:
        return Cost(area45 * self.area_factor, energy45 * self.energy_factor)

    def _logic(self, area45: float) -> Cost:
        """Random logic of a given 45 nm cell area, energy by the adder's density."""
        return self._scaled(area45, area45 * self._density)

    def cells(self, cell: str, count: float) -> Cost:
        return self._logic(self._cells[cell] * count)

    def gates(self, ge: float) -> Cost:
        """``ge`` gate equivalents (NAND2)."""
        return self.cells("nand2", ge)

    @property
    def nand2_area_45nm(self) -> float:
        return self._cells["nand2"]

    @property
    def leakage_nw_per_um2(self) -> float:
        return C.LEAKAGE_NW_PER_UM2["value"]

    # integer arithmetic ---------------------------------------------------------------------
    def int_add(self, bits: int) -> Cost:
        bits = _check_bits(bits, "bits")
        rows = _rows("int_add")
        area = _loglog(bits, [(r["bits"], r["area_um2"]) for r in rows])
        energy = _loglog(bits, [(r["bits"], r["energy_pj"]) for r in rows])
        return self._scaled(area, energy)

    def int_mult(self, a_bits: int, b_bits: int) -> Cost:
        """``a_bits`` x ``b_bits`` multiplier with the full product: array + final adder.

        Area ``c_pp * a*b + c_bit * (a + b)`` through the published 8x8 and 32x32 rows; energy the
        area times the 8x8 row's energy per um^2 (``mult_energy="area"``, the default) or the same
        two-term form through the rows' energies (``mult_energy="horowitz"``).
        """
        a_bits, b_bits = _check_bits(a_bits, "a_bits"), _check_bits(b_bits, "b_bits")
        pp, width = a_bits * b_bits, a_bits + b_bits
        c_pp, c_bit = _MULT_AREA
        area = c_pp * pp + c_bit * width
        if self.mult_energy == "area":
            energy = area * C.MULT_ENERGY_PER_UM2_45NM["value_pj_per_um2"]
        else:
            e_pp, e_bit = _MULT_ENERGY
            energy = e_pp * pp + e_bit * width
        return self._scaled(area, energy)

    def compare(self, bits: int, constant: bool = False) -> Cost:
        """``a >= b`` on ``bits``-bit signed values; ``constant``: ``b`` is hard-wired.

        Against a constant the carry chain degenerates to one 2-input gate per bit (AND where the
        constant's bit is 1, OR where it is 0): ``bits`` gate equivalents.
        """
        if constant:
            return self.gates(_check_bits(bits, "bits"))
        return self.int_add(bits) * 0.5

    def compare_fp(self, bits: int = 32) -> Cost:
        return self.compare(bits - 1) + self.cells("xor2", 2)

    def int_div(self, bits: int) -> Cost:
        return self.int_add(bits) * _check_bits(bits, "bits")

    # selection, shifting, storage --------------------------------------------------------------
    def mux(self, inputs: int, bits: int, constant: bool = False) -> Cost:
        """``inputs``-way multiplexer of ``bits``-bit words; ``constant``: the inputs are constants.

        A mux of constants is, per output bit, a Boolean function of the ``k = ceil(log2 inputs)``
        select bits, which synthesis builds as logic, not as a mux tree: Lupanov's bound,
        ``2**k / k`` gate equivalents per bit.
        """
        if inputs <= 1 or bits <= 0:
            return ZERO
        if constant:
            k = math.ceil(math.log2(inputs))
            return self.gates(bits * 2 ** k / k)
        return self.cells("mux2", (inputs - 1) * bits)

    def barrel_shifter(self, bits: int, shift_range: int) -> Cost:
        """Variable shift of a ``bits``-bit word by 0..``shift_range``; a constant shift is free."""
        if shift_range <= 0 or bits <= 0:
            return ZERO
        return self.cells("mux2", bits * math.ceil(math.log2(shift_range + 1)))

    def lod(self, bits: int) -> Cost:
        bits = _check_bits(bits, "bits")
        return self.gates(bits * max(1, math.ceil(math.log2(bits))) / 2)

    def encoder(self, entries: int) -> Cost:
        """The segment index ``#{j : x >= P_j}`` of ``entries - 1`` comparator outputs: a population
        count, as the Verilog generator writes it (a sum), built from ``m - popcount(m)`` full
        adders for ``m`` inputs (the counter-tree count)."""
        m = max(entries - 1, 0)
        return self.cells("fa", m - bin(m).count("1"))

    def dff(self, bits: int, clock_only: bool = False) -> Cost:
        """``bits`` flip-flops; energy per clock cycle (``clock_only``: the data holds)."""
        if bits <= 0:
            return ZERO
        c = self.cells("dff", bits)
        return Cost(c.area_um2, c.energy_pj * (C.DFF_CLOCK_ONLY_SHARE["value"] if clock_only else 1.0))

    def load_register(self, bits: int) -> Cost:
        """A programmable register: DFF plus a load-enable MUX2 per bit, holding its value."""
        if bits <= 0:
            return ZERO
        hold = self.cells("mux2", bits)
        return self.dff(bits, clock_only=True) + Cost(hold.area_um2, 0.0)

    def regfile(self, depth: int, width: int) -> Cost:
        """A small register file: ``depth`` words of ``width`` bits, one read port, one write port."""
        return self.load_register(depth * width) + self.mux(depth, width) + Cost(self.gates(depth).area_um2, 0.0)

    def increment(self, bits: int) -> Cost:
        """Adding a constant (+1, -bias) to a ``bits``-bit value: a half-adder chain."""
        return self.int_add(bits) * 0.5

    def round(self, out_bits: int, dropped_bits: int) -> Cost:
        """Round-to-nearest increment of an ``out_bits`` result with ``dropped_bits`` dropped."""
        if dropped_bits <= 0:
            return ZERO
        return self.increment(out_bits) + self.gates(dropped_bits)

    def saturate(self, in_bits: int, out_bits: int) -> Cost:
        if in_bits <= out_bits:
            return ZERO
        return self.gates(2 * (in_bits - out_bits)) + self.cells("mux2", out_bits)

    # floating point --------------------------------------------------------------------------------
    def fp_parts(self, fmt: str, op: str) -> list[tuple[str, Cost, str]]:
        """The structure of an FP ``add`` or ``mult`` unit: ``(block, cost, detail)`` rows.

        Built from this library's integer primitives (rules ``fp_mult`` and ``fp_add`` of
        :data:`hw_models.components.DERIVATION_RULES`); ``fmt`` in fp32, fp16, bf16.
        """
        e, f = fp_format(fmt)
        p, w = f + 1, 1 + e + f
        special = (self.gates(2 * (2 * e + f)) + self.compare(e + 2, constant=True) * 2 + self.mux(2, w),
                   f"operand classes (2 x {2 * e + f} GE), over/underflow, {w}-bit result override")
        if op == "mult":
            return [
                ("significand_multiplier", self.int_mult(p, p), f"{p} x {p} array (hidden one included)"),
                ("exponent_add", self.int_add(e + 2) + self.increment(e + 2), f"e_a + e_b - bias, {e + 2} bits"),
                ("normalise", self.mux(2, p + 1) + self.increment(e + 2),
                 f"product in [1, 4): 1-bit right shift of {p + 1} bits, exponent + 1"),
                ("round", self.round(p, p), f"nearest even: {p}-bit incrementer, sticky over {p} dropped bits"),
                ("sign", self.cells("xor2", 1), "XOR2"),
                ("special_cases", *special),
            ]
        if op == "add":
            return [
                ("exponent_compare", self.int_add(e + 1) * 2 + self.mux(2, e),
                 f"e_a - e_b both ways on {e + 1} bits, select the shift"),
                ("swap", self.mux(2, p) * 2 + self.mux(2, e), f"larger operand first: 2 x {p}-bit + {e}-bit MUX2"),
                ("align", self.barrel_shifter(p + 3, p + 2) + self.gates(p) + self.compare(e, constant=True),
                 f"right shift 0..{p + 2} of {p + 3} bits (guard, round, sticky), sticky OR, clamp"),
                ("significand_add", self.int_add(p + 4) + self.cells("xor2", p + 3),
                 f"{p + 4}-bit add/subtract with operand inversion"),
                ("complement", self.cells("xor2", p + 3) + self.increment(p + 3),
                 "negative result (equal exponents): two's complement"),
                ("leading_zeros", self.lod(p + 4), f"{p + 4}-bit leading-zero detector"),
                ("normalise", self.barrel_shifter(p + 4, p + 3) + self.mux(2, p + 4) + self.int_add(e + 2),
                 f"left shift 0..{p + 3}, 1-bit right shift on carry out, exponent adjust"),
                ("round", self.round(p, 3) + self.increment(e + 2),
                 f"nearest even: {p}-bit incrementer over guard/round/sticky, exponent + 1"),
                ("sign", self.gates(4), "effective operation and result sign"),
                ("special_cases", *special),
            ]
        raise GQAError("op", f"no structure for FP operation {op!r}", "use add or mult")

    def fp_horowitz(self, fmt: str, op: str) -> Cost:
        """Horowitz/Han's monolithic FP ``add``/``mult`` row (cross-check; BF16 derived from FP16)."""
        fp_format(fmt)
        rows = [r for r in C.HOROWITZ_FP_45NM if r["component"] == f"{fmt}_{op}"]
        if not rows:
            raise GQAError("op", f"no published row for {fmt} {op!r}", "use add or mult")
        return self._scaled(rows[0]["area_um2"], rows[0]["energy_pj"])

    def fp(self, fmt: str, op: str) -> Cost:
        """``fmt`` in fp32, fp16, bf16; ``op`` in add, mult (structural, or Horowitz's rows with
        ``fp_model="horowitz"``), compare, div (derived)."""
        e, f = fp_format(fmt)
        if op == "div":
            return self.int_add(f + 2) * (f + 1) + self.int_add(e)
        if op == "compare":
            return self.compare_fp(1 + e + f)
        if op not in ("add", "mult"):
            raise GQAError("op", f"unknown floating-point operation {op!r}", "use add, mult, compare or div")
        if self.fp_model == "horowitz":
            return self.fp_horowitz(fmt, op)
        total = ZERO
        for _, cost, _ in self.fp_parts(fmt, op):
            total = total + cost
        return total

    # the table, for docs and the CLI ---------------------------------------------------------------
    def table(self) -> list[dict]:
        """Component rows at this node with their sources (the 45 nm rows, scaled)."""
        scale = node_source(self.node)
        rows = []

        suffix = "" if self.node == 45 else (
            "; x Stillmaker-Baas 2017" + (", 28 nm interpolated" if self.node in C.NODE_INTERPOLATION else ""))

        def row(component, params, cost, source, derived, note=""):
            if source.startswith("derived:"):
                cite = "derived (see source)"
            elif source.startswith(C.NANGATE):
                cite = "NanGate45 area, adder energy density"
            else:
                cite = "Horowitz 2014 energy, Han et al. 2016 area"
            cite += note
            rows.append({"component": component, "params": params, "area_um2": round(cost.area_um2, 3),
                         "energy_pj": round(cost.energy_pj, 5), "derived": bool(derived or self.node != 45),
                         "source": source if self.node == 45 else f"{source}; {scale}", "cite": cite + suffix})

        rules = C.DERIVATION_RULES
        for r in C.ARITHMETIC_45NM + C.HOROWITZ_FP_45NM:
            params = "x".join(str(b) for b in r["bits"]) if isinstance(r["bits"], tuple) else str(r["bits"])
            note = "; cross-check only" if r in C.HOROWITZ_FP_45NM else (
                "; as published (the model: the 'model' rows)" if r["component"] == "int_mult" else "")
            row(r["component"], params, self._scaled(r["area_um2"], r["energy_pj"]), r["source"], r.get("derived"),
                note)
        for bits in (4, 12, 24, 48, 64):
            row("int_add", str(bits), self.int_add(bits), f"derived: {rules['int_add']}", True)
        for a, b in ((4, 4), (8, 8), (8, 10), (12, 12), (16, 16), (24, 24), (32, 32)):
            row("int_mult", f"{a}x{b} model", self.int_mult(a, b), f"derived: {rules['int_mult']}", True)
        for fmt in C.FP_FORMATS:
            for op in ("add", "mult"):
                row(f"{fmt}_{op}", "structural", sum((c for _, c, _ in self.fp_parts(fmt, op)), ZERO),
                    f"derived: {rules[f'fp_{op}']}", True)
        for bits in (9, 17, 33):
            row("compare", str(bits), self.compare(bits), f"derived: {rules['compare']}", True)
            row("compare_const", str(bits), self.compare(bits, constant=True), f"derived: {rules['compare']}", True)
        row("fp32_compare", "32", self.compare_fp(32), f"derived: {rules['compare_fp']}", True)
        for c in C.CELLS_45NM:
            row(f"cell_{c['cell']}", "1", self.cells(c["cell"], 1),
                f"{c['source']}; energy: {C.LOGIC_ENERGY_PER_UM2_45NM['source']}", False)
        row("dff", "per bit", self.dff(1), f"derived: {rules['dff']}", True)
        row("mux", "8:1 x 16", self.mux(8, 16), f"derived: {rules['mux']}", True)
        row("barrel_shifter", "16 bits, 0..7", self.barrel_shifter(16, 7), f"derived: {rules['barrel_shifter']}", True)
        row("lod", "16", self.lod(16), f"derived: {rules['lod']}", True)
        row("lod", "32", self.lod(32), f"derived: {rules['lod']}", True)
        row("regfile", "8x16", self.regfile(8, 16), f"derived: {rules['regfile']}", True)
        row("int_div", "16", self.int_div(16), f"derived: {rules['int_div']}", True)
        row("fp32_div", "32", self.fp("fp32", "div"), f"derived: {rules['fp_div']}", True)
        return rows
