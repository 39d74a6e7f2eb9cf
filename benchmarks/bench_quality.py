"""Quality: mean integer-datapath MSE of our tables against the GQA-LUT reference tables.

Reference formats (s8.6 slopes and intercepts, one table for scales 0..6); gelu, hswish and
exp at 8 and 16 entries. Columns: the reference table (loaded from shared/reference and
measured on our datapath), our GA (default budget, seed 0), the ratio GA/reference, the
DP-seeded shared-table optimum of a single scale (`dp`), the baselines, and the per-scale
exact optimum (a lower bound for any shared table). Prints a markdown table and the
geometric mean of the GA/reference ratios.
"""

from __future__ import annotations

import math
import time

import gqa_lut

from _common import REFERENCE_DIR, machine

CASES = [("gelu", 8), ("gelu", 16), ("hswish", 8), ("hswish", 16), ("exp", 8), ("exp", 16)]
BASELINES = ("uniform", "nnlut", "pwlf")


def reference_mse(fn: str, n: int) -> float | None:
    """Mean MSE of the GQA-LUT reference table for ``fn`` with ``n`` entries (None where none exists)."""
    name = {"rsqrt": "sqrt_reci"}.get(fn, fn)
    path = REFERENCE_DIR / f"{name}_pwl_{n - 1}.json"
    return gqa_lut.load_gqa_json(path).error().mean_mse if path.is_file() else None


def main():
    print(f"machine: {machine()}")
    if not REFERENCE_DIR.is_dir():
        raise SystemExit(f"reference tables not found at {REFERENCE_DIR}")
    rows, ratios = [], []
    for fn, n in CASES:
        ref = reference_mse(fn, n)
        t = time.perf_counter()
        ga = gqa_lut.search(fn, entries=n, progress=False)
        ga_t = time.perf_counter() - t
        ga_mse = ga.error().mean_mse
        dp_mse = gqa_lut.search(fn, entries=n, method="dp").error().mean_mse
        base = {m: gqa_lut.search(fn, entries=n, method=m).error().mean_mse for m in BASELINES}
        opt = ga.provenance["per_scale_optimum"]
        lower = sum(opt.values()) / len(opt)
        ratios.append(ga_mse / ref)
        rows.append((fn, n, ref, ga_mse, ga_mse / ref, dp_mse, base, lower, ga_t))
    print()
    print("| function | entries | reference | GA (ours) | GA / ref | dp (shared) | uniform | NN-LUT | pwlf "
          "| per-scale optimum | GA time |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for fn, n, ref, ga_mse, r, dp_mse, base, lower, ga_t in rows:
        print(f"| {fn} | {n} | {ref:.3e} | {ga_mse:.3e} | {r:.3f} | {dp_mse:.3e} | {base['uniform']:.3e} "
              f"| {base['nnlut']:.3e} | {base['pwlf']:.3e} | {lower:.3e} | {ga_t:.2f} s |")
    geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    print()
    print(f"geometric mean GA/reference: {geo:.3f} (target <= 0.5); worst case {max(ratios):.3f} (target <= 1)")


if __name__ == "__main__":
    main()
