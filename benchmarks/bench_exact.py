"""The exact shared-table optimum: its speed, and every method's quality measured against it.

Speed: ``gqa_lut.search("gelu", entries, method="exact")`` for 8 and 16 entries (scales 0..6,
s8.6 coefficients), median of ``repeats`` runs after one warm-up (numba's cached kernels);
the CPU is shared, so the minimum is printed too. Targets: <= 1 s (8 entries), <= 2 s (16).

Quality: mean integer-datapath MSE over the scale set (0..6; rsqrt 0..5) for gelu, hswish,
exp, silu, reciprocal and rsqrt at 8 and 16 entries: the GQA-LUT reference tables (where the
reference publishes one; its rsqrt tables need s9.6 coefficients, so they are measured on
that wider datapath), the default GA (seeded with the exact optimum), the GA without the exact
seed (the previous default: per-scale optima and equal-width seeds), the ``dp`` method, the
exact optimum, and the per-scale optimum (each scale its own table: a lower bound of any
shared table). Every method's ratio to the exact optimum is printed; the seeded GA's must be 1.

Per-segment exponents (``--segexp``): the exact optimum with s8 slope and intercept codes whose
fraction bits each segment picks (5..7 and 4..8) against the fixed s8.6 format, the same
functions, entries and scales.
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np

import gqa_lut
from gqa_lut.search import per_scale_optima
from intsim import PWLDatapath, get_function

from _common import machine
from bench_quality import reference_mse

FUNCS = ["gelu", "hswish", "exp", "silu", "reciprocal", "rsqrt"]
ENTRIES = [8, 16]
TARGETS = {8: 1.0, 16: 2.0}


def scales_of(fn: str):
    return tuple(range(6)) if fn == "rsqrt" else tuple(range(7))


def once(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def times(fn, repeats):
    runs = [once(fn) for _ in range(repeats)]
    return statistics.median(runs), min(runs)


def speed(repeats: int):
    print("| entries | candidates | median | min | target |")
    print("|---|---|---|---|---|")
    for n in ENTRIES:
        table = gqa_lut.search("gelu", entries=n, method="exact")  # warm-up
        med, low = times(lambda: gqa_lut.search("gelu", entries=n, method="exact"), repeats)
        cand = table.provenance["optimum"]["candidates"]
        ok = "met" if med <= TARGETS[n] else "MISSED"
        print(f"| {n} | {cand} | {med:.3f} s | {low:.3f} s | <= {TARGETS[n]:g} s: {ok} |")


def quality():
    print("| function | entries | reference | GA (seeded) | GA (no exact seed) | dp | exact | per-scale optimum "
          "| ref / exact | GA / exact | GA no-seed / exact | dp / exact | per-scale / exact |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    worst_seeded = 0.0
    for fn in FUNCS:
        scales = scales_of(fn)
        for n in ENTRIES:
            ref = reference_mse(fn, n)
            ga = gqa_lut.search(fn, entries=n, scales=scales, progress=False).error().mean_mse
            raw = gqa_lut.search(fn, entries=n, scales=scales, exact_seed=False, optimum=False,
                                 progress=False).error().mean_mse
            dp = gqa_lut.search(fn, entries=n, method="dp", scales=scales, optimum=False).error().mean_mse
            ex = gqa_lut.search(fn, entries=n, method="exact", scales=scales).error().mean_mse
            lower = float(np.mean([m for _, m in per_scale_optima(get_function(fn), n, PWLDatapath(),
                                                                  scales).values()]))
            worst_seeded = max(worst_seeded, ga / ex)
            ref_txt = "-" if ref is None else f"{ref:.3e}"
            ref_ratio = "-" if ref is None else f"{ref / ex:.2f}"
            print(f"| {fn} | {n} | {ref_txt} | {ga:.3e} | {raw:.3e} | {dp:.3e} | {ex:.3e} | {lower:.3e} "
                  f"| {ref_ratio} | {ga / ex:.4f} | {raw / ex:.2f} | {dp / ex:.2f} | {lower / ex:.2f} |", flush=True)
    print()
    print(f"largest seeded-GA / exact ratio: {worst_seeded:.6f} (must be <= 1)")


def segment_exponents():
    fmts = [gqa_lut.SegmentExponents(8, (5, 7), 8, (5, 7)), gqa_lut.SegmentExponents(8, (4, 8), 8, (4, 8))]
    print("| function | entries | exact s8.6 | s8, exponents 5..7 | ratio | s8, exponents 4..8 | ratio | time (4..8) |")
    print("|---|---|---|---|---|---|---|---|")
    for fn in FUNCS:
        for n in ENTRIES:
            base = gqa_lut.search(fn, entries=n, method="exact", scales=scales_of(fn)).error().mean_mse
            cells = []
            for fmt in fmts:
                t = time.perf_counter()
                v = gqa_lut.search(fn, entries=n, method="exact", scales=scales_of(fn),
                                   segment_exponents=fmt).error().mean_mse
                cells.append((v, time.perf_counter() - t))
            print(f"| {fn} | {n} | {base:.3e} | {cells[0][0]:.3e} | {cells[0][0] / base:.3f} | {cells[1][0]:.3e} "
                  f"| {cells[1][0] / base:.3f} | {cells[1][1]:.2f} s |", flush=True)


def main(repeats: int = 7):
    print(f"machine: {machine()}")
    if "--segexp" in sys.argv:
        segment_exponents()
        return
    speed(repeats)
    print()
    if "--speed" not in sys.argv:
        quality()


if __name__ == "__main__":
    main()
