"""Speed: the GA on GELU, 8 entries, population 50, 500 generations, against the reference's 72 s.

Prints the median wall time of several runs (after one warm-up run that loads numba's
compiled kernels) and the ratio to the reference trainer's time. Also times the pieces: the
per-scale DP seeding and one generation's vectorised fitness.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

import gqa_lut
from gqa_lut.objective import Objective
from gqa_lut.search import per_scale_optima
from intsim import PWLDatapath, get_function

from _common import REFERENCE_TRAINER_S, machine


def timed(fn, repeats):
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main(repeats: int = 7):
    print(f"machine: {machine()}")
    gqa_lut.search("gelu", entries=8, generations=2, progress=False)  # warm-up: numba cache load
    full = timed(lambda: gqa_lut.search("gelu", entries=8, population=50, generations=500, progress=False), repeats)
    no_seed = timed(lambda: gqa_lut.search("gelu", entries=8, population=50, generations=500, dp_seed=False,
                                           progress=False), repeats)
    fn, dp = get_function("gelu"), PWLDatapath()
    seed_t = timed(lambda: per_scale_optima(fn, 8, dp, range(7)), repeats)
    obj = Objective(fn, 8, dp, range(7))
    pop = np.sort(np.random.default_rng(0).uniform(-4, 4, (50, 7)), axis=1)
    gen_t = timed(lambda: obj(pop), 200)
    print(f"GA gelu N=8 pop=50 gen=500 (with DP seeding): {full:.3f} s   "
          f"ratio reference/ours = {REFERENCE_TRAINER_S / full:.0f}x")
    print(f"GA without DP seeding:                        {no_seed:.3f} s   "
          f"ratio reference/ours = {REFERENCE_TRAINER_S / no_seed:.0f}x")
    print(f"  per-scale DP seeding (7 scales):            {seed_t * 1e3:.1f} ms")
    print(f"  fitness of one generation (50 tables, 7 scales, 765 codes): {gen_t * 1e6:.0f} us")
    print(f"reference trainer (DESIGN.md): {REFERENCE_TRAINER_S:.0f} s; target <= 0.3 s (>= 240x)")


if __name__ == "__main__":
    main()
