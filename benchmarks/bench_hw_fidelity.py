"""Fidelity of the PWL unit cost model against the GQA-LUT paper's synthesized units.

The paper (DAC 2024, TSMC 28 nm, 500 MHz, 8 entries) gives three points: INT8 961 um2 /
0.40 mW, FP32 5135 um2 / 2.02 mW, INT32 5243 um2 / 1.93 mW. The model is calibrated on one
point (one area factor and one energy factor) and predicts the other two; the headline is
calibration on INT8, the other two choices are printed as well, each prediction marked within
or outside +-15%. Then the ablation (monolithic Horowitz FP rows and per-row multiplier
energies against the structural FP units and area-proportional multiplier energy), the
structural FP units against Horowitz's rows, the trends (entries 4 to 64, widths 4 to 16), the
raw (uncalibrated) breakdown of the three units, and, when yosys is installed, yosys' cell and
transistor counts of the generated Verilog beside the model's estimate for gelu, exp and rsqrt
tables at 8 and 16 entries.

Prints markdown; docs/hw_models.md holds the output (tests check the fidelity table is current).
"""

from __future__ import annotations

import time

import gqa_lut
from hw_models.pwl_unit import (UnitConfig, ablation_markdown, fit_to_paper, fidelity, fidelity_markdown,
                                fp_crosscheck_markdown, fp_structure_markdown, model_gate_equivalents, paper_units,
                                trends_markdown)
from hw_models.synth import missing_tools, synthesize, tool_version
from hw_models.verilog import generate

from _common import machine

TARGET_PCT = 15.0
SYNTH_CASES = [("gelu", 8, {}), ("gelu", 16, {}), ("exp", 8, {}), ("exp", 16, {}),
               ("rsqrt", 8, dict(slope_bits=10, icpt_bits=10, scales=range(6))),
               ("rsqrt", 16, dict(slope_bits=10, icpt_bits=10, scales=range(6)))]


def headline():
    for on in ("int8", "fp32", "int32"):
        cal = fit_to_paper(on)
        print(f"calibrated on the {on.upper()} point: area x{cal.area:.3f}, energy x{cal.energy:.3f}")
        misses = []
        for r in fidelity(on):
            if r["fitted"]:
                continue
            for key in ("area", "power"):
                err = r[f"{key}_err_pct"]
                verdict = "within" if abs(err) <= TARGET_PCT else "OUTSIDE"
                print(f"  {r['unit'].upper():>5} {key:<5} predicted {err:+6.1f}%  ({verdict} +-{TARGET_PCT:.0f}%)")
                if abs(err) > TARGET_PCT:
                    misses.append(f"{r['unit']} {key}")
        print(f"  predictions outside +-{TARGET_PCT:.0f}%: {', '.join(misses) if misses else 'none'}")


def raw_breakdown():
    print("| component | INT8 um2 | FP32 um2 | INT32 um2 |")
    print("|---|---|---|---|")
    units = paper_units("none")
    names = []
    for u in units.values():
        names += [n for n in u.breakdown() if n not in names]
    for n in names:
        cells = [f"{u.breakdown().get(n, {}).get('area_um2', 0.0):.0f}" for u in units.values()]
        print(f"| {n} | {' | '.join(cells)} |")
    print(f"| total | {' | '.join(f'{u.area_um2:.0f}' for u in units.values())} |")


def synth_table():
    missing = missing_tools("yosys")
    if missing:
        print("(yosys not installed: skipped)")
        return
    print(f"{tool_version('yosys')}: `synth -top; stat -tech cmos` on the all-scales combinational unit "
          "(fixed coefficients); model: the same structure in NAND2 gate equivalents x 4 transistors")
    print()
    print("| table | yosys cells | yosys transistors | model transistors | model / yosys | synth time |")
    print("|---|---|---|---|---|---|")
    for fn, n, kw in SYNTH_CASES:
        t = gqa_lut.search(fn, entries=n, method="dp", **kw)
        u = generate(t, None)
        t0 = time.perf_counter()
        s = synthesize(u.text, u.name)
        dt = time.perf_counter() - t0
        model = 4 * model_gate_equivalents(UnitConfig.from_table(t, None, programmable=False, io_registers=False,
                                                                 align=True))
        print(f"| {fn} {n} | {s.cells} | {s.transistors} | {model:.0f} | {model / s.transistors:.2f} | {dt:.1f} s |")


def main():
    print(f"machine: {machine()}")
    print()
    print("## Fidelity (28 nm, 500 MHz, 8 entries)")
    print()
    print(fidelity_markdown())
    print()
    headline()
    print()
    print("## Ablation (calibrated on INT8; prediction errors)")
    print()
    print(ablation_markdown())
    print()
    print("## Structural FP units against Horowitz/Han (45 nm, uncalibrated)")
    print()
    print(fp_crosscheck_markdown())
    print()
    print(fp_structure_markdown())
    print()
    print("## Raw model (no calibration), 28 nm: area by component")
    print()
    raw_breakdown()
    print()
    print("## Trends (calibrated on INT8; 28 nm, 500 MHz, programmable, scales 0..6)")
    print()
    print(trends_markdown())
    print()
    print("## yosys against the model")
    print()
    synth_table()


if __name__ == "__main__":
    main()
