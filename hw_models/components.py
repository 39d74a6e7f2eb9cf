"""Component data: published area and energy figures, each row with its source.

Data only, no estimators (Accelergy's split): :mod:`hw_models.scaling` turns these rows into a
component library for a technology node, :mod:`hw_models.pwl_unit` builds units from it.

Units: area in um^2, energy in pJ per operation (one evaluation with random operands), leakage
in nW per um^2. Widths in bits. A row whose value is not printed in its source says how it was
derived in ``source`` and carries ``"derived": True``.

Base node: 45 nm. Everything else is scaled from it with Stillmaker & Baas (2017); 28 nm is not
in their tables and is interpolated between 32 nm and 20 nm (see :data:`NODE_INTERPOLATION`).

Floating-point units are not taken from a table: they are built from the integer rows by the
``fp_mult``/``fp_add`` rules below. Horowitz's FP rows stay here (:data:`HOROWITZ_FP_45NM`) as a
cross-check. Energy per operation of a block = its area x its primitive class's energy per um^2
(:data:`LOGIC_ENERGY_PER_UM2_45NM`, :data:`MULT_ENERGY_PER_UM2_45NM`; adders: their own rows).
"""

from __future__ import annotations

BASE_NODE_NM = 45

HOROWITZ = ("Horowitz, 'Computing's energy problem (and what we can do about it)', ISSCC 2014, "
            "45 nm, 0.9 V: energy per operation")
HAN_AREA = ("area column of the same table as republished by Han et al. (EIE, ISCA 2016; Dally, NIPS 2015 "
            "tutorial): TSMC 45 nm, Design Compiler, DesignWare FP units")
NANGATE = "NanGate FreePDK45 Open Cell Library v1.3, typical corner: cell area"
STILLMAKER = ("Stillmaker & Baas, 'Scaling equations for the accurate prediction of CMOS device performance "
              "from 180 nm to 7 nm', Integration 58 (2017) 74-81")
GQA_LUT = ("Dong et al., 'Genetic Quantization-Aware Approximation for Non-Linear Operations in Transformers' "
           "(GQA-LUT), DAC 2024: synthesized units, TSMC 28 nm, 500 MHz, 8 entries")

# --- arithmetic at 45 nm (Horowitz energy, Han et al. area) --------------------------------------
# ``bits``: operand width; multipliers ``(a, b)``. Integer multipliers produce the full a+b bits.
# The model's integer primitives: adders are used as published (log-log in the width between
# the rows); multipliers take their AREA from the two rows (array + final adder, see
# DERIVATION_RULES["int_mult"]) and their ENERGY from the 8x8 row's energy per um^2
# (MULT_ENERGY_PER_UM2_45NM), so the 32x32 row's energy (3.1 pJ) is not reproduced (2.48 pJ).
ARITHMETIC_45NM = [
    {"component": "int_add", "bits": 8, "area_um2": 36.0, "energy_pj": 0.03, "source": f"{HOROWITZ}; {HAN_AREA}"},
    {"component": "int_add", "bits": 16, "area_um2": 67.0, "energy_pj": 0.05, "source": f"{HOROWITZ}; {HAN_AREA}"},
    {"component": "int_add", "bits": 32, "area_um2": 137.0, "energy_pj": 0.1, "source": f"{HOROWITZ}; {HAN_AREA}"},
    {"component": "int_mult", "bits": (8, 8), "area_um2": 282.0, "energy_pj": 0.2,
     "source": f"{HOROWITZ}; {HAN_AREA}"},
    {"component": "int_mult", "bits": (32, 32), "area_um2": 3495.0, "energy_pj": 3.1,
     "source": f"{HOROWITZ}; {HAN_AREA}"},
]

# --- floating-point units at 45 nm: CROSS-CHECK ONLY -----------------------------------------------
# The model does not use these rows: it builds FP adders and multipliers structurally from the
# integer primitives above (DERIVATION_RULES["fp_mult"], ["fp_add"]), the same primitives the
# integer unit is priced with. These monolithic DesignWare figures come from a different design
# point (the FP32 multiplier is 2.2x the 32x32 integer multiplier although its significand
# array is 24x24; the FP32 adder is 30x the 32-bit adder); docs/hw_models.md compares them with
# the structural estimates.
HOROWITZ_FP_45NM = [
    {"component": "fp16_add", "bits": 16, "area_um2": 1360.0, "energy_pj": 0.4, "source": f"{HOROWITZ}; {HAN_AREA}"},
    {"component": "fp16_mult", "bits": 16, "area_um2": 1640.0, "energy_pj": 1.1, "source": f"{HOROWITZ}; {HAN_AREA}"},
    {"component": "fp32_add", "bits": 32, "area_um2": 4184.0, "energy_pj": 0.9, "source": f"{HOROWITZ}; {HAN_AREA}"},
    {"component": "fp32_mult", "bits": 32, "area_um2": 7700.0, "energy_pj": 3.7, "source": f"{HOROWITZ}; {HAN_AREA}"},
    # bfloat16 is not in the table: the FP16 unit rescaled by its significand (8 bits with the
    # hidden one against FP16's 11): linear for the adder's alignment/add/normalise path,
    # quadratic for the multiplier's significand array.
    {"component": "bf16_add", "bits": 16, "area_um2": 1360.0 * 8 / 11, "energy_pj": 0.4 * 8 / 11,
     "derived": True, "source": "derived: FP16 add x 8/11 (significand width, BF16 8 vs FP16 11 bits)"},
    {"component": "bf16_mult", "bits": 16, "area_um2": 1640.0 * 64 / 121, "energy_pj": 1.1 * 64 / 121,
     "derived": True, "source": "derived: FP16 mult x (8/11)^2 (significand array, BF16 8 vs FP16 11 bits)"},
]

# Floating-point formats: exponent and stored fraction bits (significand p = frac_bits + 1).
FP_FORMATS = {
    "fp32": {"exp_bits": 8, "frac_bits": 23, "source": "IEEE 754-2008 binary32"},
    "fp16": {"exp_bits": 5, "frac_bits": 10, "source": "IEEE 754-2008 binary16"},
    "bf16": {"exp_bits": 8, "frac_bits": 7, "source": "bfloat16 (Google Brain; Intel BF16 specification 2018)"},
}

# --- standard cells at 45 nm (area); energy from the adder's energy density below ------------------
CELLS_45NM = [
    {"cell": "nand2", "area_um2": 0.798, "source": f"{NANGATE} (NAND2_X1); one gate equivalent (GE)"},
    {"cell": "xor2", "area_um2": 1.596, "source": f"{NANGATE} (XOR2_X1)"},
    {"cell": "mux2", "area_um2": 1.862, "source": f"{NANGATE} (MUX2_X1)"},
    {"cell": "dff", "area_um2": 4.522, "source": f"{NANGATE} (DFF_X1)"},
    {"cell": "fa", "area_um2": 4.256, "source": f"{NANGATE} (FA_X1): the index encoder's counter; 8 x FA = 34 um2 ~ the 8b adder's 36"},
]

# Energy per operation = switched capacitance x V^2 x activity; at one node and supply the
# switched capacitance of a block is proportional to its cell area, so each primitive class gets
# one energy per um^2 from Horowitz's rows, applied to the block's area (activity: random
# operands, one operation).
# Random-logic blocks built from cells (muxes, shifters, comparators, registers): the 32-bit
# adder's energy per unit area (0.1 pJ / 137 um^2).
LOGIC_ENERGY_PER_UM2_45NM = {"value_pj_per_um2": 0.1 / 137.0, "derived": True,
                             "source": f"derived: {HOROWITZ} 32b add energy / {HAN_AREA} 32b add area"}

# Multipliers (and the FP units' significand arrays): the 8x8 row's energy per unit area
# (0.2 pJ / 282 um^2 = 0.71 fJ/um^2, within 3% of the adders' 0.73). Horowitz's 32x32 row has
# 0.89 fJ/um^2: its 3.1 pJ is 15.5x the 8x8 energy for 12.4x the area, i.e. about the same
# energy per partial product (3.1 and 3.0 fJ) -- the extra transitions of a deeper array
# (glitches, from his simulation with random data). Synthesis power reports (the paper's)
# propagate switching probabilities without glitches, so the model keeps the shallow array's
# density for every width; keeping the 15.5x instead is reported as a variant in the docs.
MULT_ENERGY_PER_UM2_45NM = {"value_pj_per_um2": 0.2 / 282.0, "derived": True,
                            "source": f"derived: {HOROWITZ} 8b mult energy / {HAN_AREA} 8b mult area"}

# A flip-flop holding its value (clock toggles, data does not) spends about half of its
# per-cycle energy: the clock pin and the internal clock buffers.
DFF_CLOCK_ONLY_SHARE = {"value": 0.5, "derived": True,
                        "source": "assumption: clock-only share of a DFF's per-cycle energy"}

# Leakage: one density for all nodes (not in the sources above; small at 500 MHz).
LEAKAGE_NW_PER_UM2 = {"value": 10.0, "derived": True,
                      "source": "assumption: order of magnitude of standard-cell leakage density, all nodes"}

# --- structural rules: how components without a published row are built ------------------------
# Each is a derivation from the rows above, stated here (data) and applied in scaling.py.
DERIVATION_RULES = {
    "int_add": "log-log interpolation between the published 8/16/32-bit rows; beyond them the end "
               "segments' slopes",
    "int_mult": "array + final adder: area = c_pp * a*b + c_bit * (a + b), the two constants through the "
                "published 8x8 and 32x32 rows (3.08 um2 per partial product, 5.30 um2 per result bit at 45 nm); "
                "energy = area x the 8x8 row's energy per um2",
    "fixed_comparators": "hard-wired table: a comparator whose constant lies outside the input codes at every "
                         "served scale is a constant, and comparators with the same constants at every scale are "
                         "one (synthesis folds and merges them); one scale: compare(bits, constant); several: the "
                         "generator selects each comparator's constant by e, priced as a variable compare(bits) "
                         "(the selection folds into it: the split gelu 8 unit's front, 618 um2 on sky130)",
    "compare": "a >= comparison is a subtractor's carry chain without sum XORs: 0.5 x int_add(bits); "
               "against a constant the chain degenerates to one 2-input gate per bit: bits GE",
    "compare_fp": "sign-magnitude comparison: compare(bits - 1) plus 2 XOR2 for the sign cases",
    "mux": "(n - 1) MUX2 per bit (a mux tree); inputs that are constants: per output bit a Boolean function "
           "of the k = ceil(log2 n) select bits, 2**k / k GE (Lupanov's bound for a k-input function)",
    "barrel_shifter": "bits x stages MUX2, stages = ceil(log2(shift range + 1)); a constant shift is wiring",
    "lod": "leading-one detector: a log-depth priority tree, bits x ceil(log2 bits) / 2 GE",
    "encoder": "segment index = population count of the m = entries - 1 comparator outputs (the generator's "
               "sum): m - popcount(m) full adders (FA cell area, logic energy density)",
    "dff": "one DFF per bit; per-cycle energy = DFF area x logic energy density",
    "regfile": "depth x width DFF with a load-enable MUX2 each, a (depth - 1) x width read mux and a "
               "depth-way write decoder (depth GE)",
    "round": "rounding increment: a half-adder chain over the output, 0.5 x int_add(bits), plus a "
             "sticky OR tree over the dropped bits (1 GE per bit)",
    "saturate": "overflow detect over the dropped high bits (2 GE per bit) and an output MUX2 per bit",
    "int_div": "radix-2 restoring array divider: bits x int_add(bits)",
    "increment": "adding a constant (+1, -bias): a half-adder chain, 0.5 x int_add(bits)",
    "fp_mult": "structural, significand p = frac + 1 bits, exponent e bits: p x p int_mult (hidden one "
               "included); exponent e_a + e_b - bias on e + 2 bits (int_add + increment); normalisation "
               "(product in [1, 4)): a 1-bit right shift, (p + 1) MUX2, and an exponent increment; round to "
               "nearest even: round(p, p) (p-bit incrementer, sticky OR over the dropped bits); sign XOR2; "
               "special cases: operand classes 2 x (2e + frac) GE, over/underflow 2 x compare(e + 2, "
               "constant), result override w MUX2",
    "fp_add": "structural, single path: exponent difference both ways 2 x int_add(e + 1) and an e-bit MUX2 "
              "select; operand swap 2 x p MUX2 + e MUX2; alignment barrel_shifter(p + 3, 0..p + 2) with a "
              "p-bit sticky OR and a shift clamp compare(e, constant); significand add/subtract int_add(p + 4) "
              "with (p + 3) XOR2 inversion; negative result (equal exponents) (p + 3) XOR2 + increment(p + 3); "
              "leading-zero detector lod(p + 4); normalisation barrel_shifter(p + 4, 0..p + 3), a 1-bit right "
              "shift (p + 4) MUX2 and exponent adjust int_add(e + 2); round(p, 3) and an exponent "
              "increment(e + 2); sign 4 GE; special cases as fp_mult",
    "fp_div": "radix-2 restoring divider on the p-bit significand: p x int_add(p + 1) + int_add(e) for the "
              "exponent (fp32: 24 x int_add(25) + int_add(8))",
}

# --- Stillmaker & Baas node scaling ----------------------------------------------------------------
# Area: relative to 45 nm (their Table 3, row 45 nm).
AREA_FACTOR_FROM_45NM = {
    "values": {180: 19.0, 130: 6.4, 90: 2.8, 65: 1.5, 45: 1.0, 32: 0.46, 20: 0.21, 16: 0.19, 14: 0.17,
               10: 0.10, 7: 0.059},
    "source": f"{STILLMAKER}, area scaling table (row 45 nm)",
}

# Energy: E(node, V) proportional to a*V^2 + b*V + c (their Table 5, energy columns; 45/32 nm are
# the HP bulk rows, 20 nm and below the HP FinFET rows).
ENERGY_POLY = {
    "values": {180: (0.0, 24.64, -17.98), 130: (7.171, -6.709, 2.904), 90: (4.762, -4.781, 2.092),
               65: (3.755, -4.398, 1.975), 45: (1.018, -0.3107, 0.1539), 32: (0.8367, -0.4341, 0.1701),
               20: (0.373, -0.1582, 0.04104), 16: (0.2958, -0.1241, 0.03024), 14: (0.2363, -0.09675, 0.02239),
               10: (0.2068, -0.09311, 0.02375), 7: (0.1776, -0.09097, 0.02447)},
    "source": f"{STILLMAKER}, Table 5 energy fit coefficients (HP devices from 45 nm down)",
}

# Supply voltage of each node's figures: 45 nm at Horowitz's 0.9 V (so no rescaling at the base
# node); the others at the PTM nominal supply the Stillmaker & Baas fits are built on.
NOMINAL_VDD = {
    "values": {180: 1.8, 130: 1.3, 90: 1.2, 65: 1.1, 45: 0.9, 32: 0.9, 28: 0.9, 20: 0.9, 16: 0.85, 14: 0.8,
               10: 0.75, 7: 0.7},
    "source": "PTM nominal supplies (bulk 180-32 nm, multi-gate 20-7 nm); 45 nm at Horowitz's 0.9 V; "
              "28 nm at 0.9 V (TSMC 28HPM nominal)",
}

# 28 nm: not in Stillmaker & Baas. Linear interpolation in the node between its neighbours.
NODE_INTERPOLATION = {
    28: {"between": (32, 20), "weight_of_first": (28 - 20) / (32 - 20), "derived": True,
         "source": "derived: not tabulated by Stillmaker & Baas; linear interpolation between 32 nm and "
                   "20 nm (area factor and energy fit, each at 0.9 V)"},
}

SUPPORTED_NODES = tuple(sorted(set(AREA_FACTOR_FROM_45NM["values"]) | set(NODE_INTERPOLATION), reverse=True))

# --- the GQA-LUT paper's synthesized units (the fidelity reference) -------------------------------
PAPER_POINTS = {
    "node_nm": 28, "freq_mhz": 500.0, "entries": 8, "source": GQA_LUT,
    "units": {
        "int8": {"area_um2": 961.0, "power_mw": 0.40},
        "fp32": {"area_um2": 5135.0, "power_mw": 2.02},
        "int32": {"area_um2": 5243.0, "power_mw": 1.93},
    },
}

# --- SkyWater 130 nm (sky130_fd_sc_hd) against the model --------------------------------------------
# One area factor for the sky130 high-density cells relative to the model at 130 nm (Stillmaker &
# Baas scaling of the 45 nm data): the geometric mean of synthesized / model area over the
# training two thirds of benchmarks/bench_sky130.py's configurations (the other third held out).
SKY130_FIT = {"area": 0.634, "derived": True,
              "source": "derived: benchmarks/bench_sky130.py, geometric mean of sky130 synthesized / model area "
                        "over its 24 training configurations (yosys 0.23, sky130 0.15.3)"}
