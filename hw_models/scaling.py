"""Component library for a technology node: the data of :mod:`hw_models.components`, scaled.

Estimators at the component level (Accelergy's "plug-in" layer): each method returns a
:class:`Cost` -- area in um^2 and dynamic energy in pJ per operation -- for one component of
given widths at this node. Published rows are used as they are; other widths follow the
derivation rules written down in :data:`hw_models.components.DERIVATION_RULES`.

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


def _check_bits(value, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise GQAError(field, f"must be a positive integer width, got {value!r}")
    return value


class ComponentLibrary:
    """Area and energy of datapath components at one technology node (uncalibrated).

    ``energy_pj`` is the dynamic energy of one operation with random operands; for registers
    (:meth:`dff`) it is the energy of one clock cycle.
    """

    def __init__(self, node=28):
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
        a_bits, b_bits = _check_bits(a_bits, "a_bits"), _check_bits(b_bits, "b_bits")
        rows = _rows("int_mult")
        pp = a_bits * b_bits
        area = _loglog(pp, [(r["bits"][0] * r["bits"][1], r["area_um2"]) for r in rows])
        energy = _loglog(pp, [(r["bits"][0] * r["bits"][1], r["energy_pj"]) for r in rows])
        return self._scaled(area, energy)

    def compare(self, bits: int, constant: bool = False) -> Cost:
        """``a >= b`` on ``bits``-bit signed values; ``constant``: ``b`` is hard-wired."""
        return self.int_add(bits) * (0.25 if constant else 0.5)

    def compare_fp(self, bits: int = 32) -> Cost:
        return self.compare(bits - 1) + self.cells("xor2", 2)

    def int_div(self, bits: int) -> Cost:
        return self.int_add(bits) * _check_bits(bits, "bits")

    # selection, shifting, storage --------------------------------------------------------------
    def mux(self, inputs: int, bits: int, constant: bool = False) -> Cost:
        """``inputs``-way multiplexer of ``bits``-bit words; ``constant``: the inputs are constants."""
        if inputs <= 1 or bits <= 0:
            return ZERO
        return self.cells("mux2", (inputs - 1) * bits * (0.5 if constant else 1.0))

    def barrel_shifter(self, bits: int, shift_range: int) -> Cost:
        """Variable shift of a ``bits``-bit word by 0..``shift_range``; a constant shift is free."""
        if shift_range <= 0 or bits <= 0:
            return ZERO
        return self.cells("mux2", bits * math.ceil(math.log2(shift_range + 1)))

    def lod(self, bits: int) -> Cost:
        bits = _check_bits(bits, "bits")
        return self.gates(bits * max(1, math.ceil(math.log2(bits))) / 2)

    def encoder(self, entries: int) -> Cost:
        return self.cells("xor2", max(entries - 1, 0))

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

    def round(self, out_bits: int, dropped_bits: int) -> Cost:
        """Round-to-nearest increment of an ``out_bits`` result with ``dropped_bits`` dropped."""
        if dropped_bits <= 0:
            return ZERO
        return self.int_add(out_bits) * 0.5 + self.gates(dropped_bits)

    def saturate(self, in_bits: int, out_bits: int) -> Cost:
        if in_bits <= out_bits:
            return ZERO
        return self.gates(2 * (in_bits - out_bits)) + self.cells("mux2", out_bits)

    # floating point --------------------------------------------------------------------------------
    def fp(self, fmt: str, op: str) -> Cost:
        """``fmt`` in fp32, fp16, bf16; ``op`` in add, mult (published rows), div (derived)."""
        if fmt not in ("fp32", "fp16", "bf16"):
            raise GQAError("format", f"unknown floating-point format {fmt!r}", "use fp32, fp16 or bf16")
        if op == "div":
            if fmt != "fp32":
                raise GQAError("op", f"no divider row for {fmt}", "fp32 only")
            return self.int_add(25) * 24 + self.int_add(8)
        if op == "compare":
            return self.compare_fp(32 if fmt == "fp32" else 16)
        rows = _rows(f"{fmt}_{op}")
        if not rows:
            raise GQAError("op", f"unknown floating-point operation {op!r}", "use add, mult, compare or div")
        return self._scaled(rows[0]["area_um2"], rows[0]["energy_pj"])

    # the table, for docs and the CLI ---------------------------------------------------------------
    def table(self) -> list[dict]:
        """Component rows at this node with their sources (the 45 nm rows, scaled)."""
        scale = node_source(self.node)
        rows = []

        suffix = "" if self.node == 45 else (
            "; x Stillmaker-Baas 2017" + (", 28 nm interpolated" if self.node in C.NODE_INTERPOLATION else ""))

        def row(component, params, cost, source, derived):
            if source.startswith("derived:"):
                cite = "derived (see source)"
            elif source.startswith(C.NANGATE):
                cite = "NanGate45 area, adder energy density"
            else:
                cite = "Horowitz 2014 energy, Han et al. 2016 area"
            rows.append({"component": component, "params": params, "area_um2": round(cost.area_um2, 3),
                         "energy_pj": round(cost.energy_pj, 5), "derived": bool(derived or self.node != 45),
                         "source": source if self.node == 45 else f"{source}; {scale}", "cite": cite + suffix})

        rules = C.DERIVATION_RULES
        for r in C.ARITHMETIC_45NM:
            params = "x".join(str(b) for b in r["bits"]) if isinstance(r["bits"], tuple) else str(r["bits"])
            row(r["component"], params, self._scaled(r["area_um2"], r["energy_pj"]), r["source"], r.get("derived"))
        for bits in (4, 12, 24, 48, 64):
            row("int_add", str(bits), self.int_add(bits), f"derived: {rules['int_add']}", True)
        for a, b in ((4, 4), (8, 10), (12, 12), (16, 16), (24, 24)):
            row("int_mult", f"{a}x{b}", self.int_mult(a, b), f"derived: {rules['int_mult']}", True)
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
        row("fp32_div", "32", self.fp("fp32", "div"), f"derived: {rules['fp32_div']}", True)
        return rows
