"""The GQA-LUT genetic search, on DEAP's toolbox, with population-wide operators.

An individual is a vector of ``N-1`` real breakpoints in the domain; a population is a
``(pop, N-1)`` array. One generation, as DEAP's ``eaSimple`` with an elite of one:

1. ``select``: tournament selection (``tournsize`` aspirants, the fittest wins), ``pop`` times;
2. ``mate``: consecutive pairs cross with probability ``cxpb`` by two-point crossover (DEAP's
   ``cxTwoPoint`` cut rule: genes ``[c1, c2)`` swap);
3. ``mutate``: each child with probability ``mutpb``; each of its genes, independently,
   snaps to the grid ``2**-e`` of a scale ``e`` drawn from the scale set (the paper's
   "rounding mutation", probability ``snap_pb``) or moves by Gaussian noise of std ``sigma``
   (probability ``gauss_pb``); genes are clipped to the domain and each vector sorted;
4. ``evaluate``: the whole population in one call of :class:`~gqa_lut.objective.Objective`;
5. the best individual ever seen replaces the worst child (the hall of fame of one).

The operators are registered on a ``deap.base.Toolbox`` exactly as DEAP's per-individual
ones would be (compose, don't subclass), but each acts on the whole population array at
once: DEAP's list-of-individuals operators cost ~10 us per individual in Python, more than
the vectorised fitness of the whole population. All randomness comes from one
``numpy.random.Generator`` seeded by ``seed``: same seed, same table, same bytes.
"""

from __future__ import annotations

import numpy as np
from deap import base, tools

from intsim import GQAError


def init_uniform(n: int, genes: int, domain, rng: np.random.Generator) -> np.ndarray:
    lo, hi = domain
    return np.sort(rng.uniform(lo, hi, (n, genes)), axis=1)


def sel_tournament(pop: np.ndarray, fit: np.ndarray, k: int, tournsize: int, rng: np.random.Generator):
    """``k`` tournaments of ``tournsize`` aspirants drawn with replacement; the fittest wins."""
    aspirants = rng.integers(0, pop.shape[0], (k, tournsize))
    winners = aspirants[np.arange(k), np.argmin(fit[aspirants], axis=1)]
    return pop[winners].copy()


def cx_two_point(pop: np.ndarray, cxpb: float, rng: np.random.Generator) -> np.ndarray:
    """DEAP's ``cxTwoPoint`` on consecutive pairs, each pair crossing with probability ``cxpb``."""
    n, size = pop.shape
    pairs = n // 2
    if size < 2 or pairs == 0:
        return pop
    c1 = rng.integers(1, size + 1, pairs)
    c2 = rng.integers(1, size, pairs)
    c2 = np.where(c2 >= c1, c2 + 1, c2)
    lo, hi = np.minimum(c1, c2), np.maximum(c1, c2)
    cross = rng.random(pairs) < cxpb
    j = np.arange(size)
    swap = cross[:, None] & (j >= lo[:, None]) & (j < hi[:, None])
    a, b = pop[0:2 * pairs:2], pop[1:2 * pairs:2]
    a_new, b_new = np.where(swap, b, a), np.where(swap, a, b)
    out = pop.copy()
    out[0:2 * pairs:2], out[1:2 * pairs:2] = a_new, b_new
    return out


def mut_gaussian_round(pop: np.ndarray, mutpb: float, snap_pb: float, gauss_pb: float, sigma: float,
                       scales, domain, rng: np.random.Generator) -> np.ndarray:
    """Rounding mutation: per gene, snap to a random scale's grid, or add Gaussian noise."""
    n, size = pop.shape
    lo, hi = domain
    chosen = (rng.random(n) < mutpb)[:, None]
    u = rng.random((n, size))
    grid = 2.0 ** np.asarray(scales, dtype=np.float64)[rng.integers(0, len(scales), (n, size))]
    noise = rng.normal(0.0, sigma, (n, size))
    snapped = np.rint(pop * grid) / grid
    moved = np.where(u < snap_pb, snapped, np.where(u >= 1.0 - gauss_pb, pop + noise, pop))
    out = np.where(chosen, np.clip(moved, lo, hi), pop)
    return np.sort(out, axis=1)


def make_toolbox(objective, rng: np.random.Generator, *, cxpb: float = 0.7, mutpb: float = 0.2,
                 snap_pb: float = 0.35, gauss_pb: float = 0.1, sigma: float | None = None,
                 tournsize: int = 3) -> base.Toolbox:
    """Register the GQA-LUT operators (defaults: the reference trainer's) and the fitness."""
    for name, v in (("cxpb", cxpb), ("mutpb", mutpb), ("snap_pb", snap_pb), ("gauss_pb", gauss_pb)):
        if not 0.0 <= v <= 1.0:
            raise GQAError(name, f"{v} is not a probability in [0, 1]")
    if snap_pb + gauss_pb > 1.0:
        raise GQAError("snap_pb", f"snap_pb + gauss_pb = {snap_pb + gauss_pb} exceeds 1")
    if isinstance(tournsize, bool) or not isinstance(tournsize, int) or tournsize < 1:
        raise GQAError("tournsize", f"must be a positive integer, got {tournsize!r}")
    domain = objective.fn.domain
    if sigma is None:
        sigma = 0.025 * (domain[1] - domain[0])  # the reference's 0.2 on its [-4, 4] range
    if not sigma > 0:
        raise GQAError("sigma", f"must be positive, got {sigma}")
    tb = base.Toolbox()
    tb.register("population", init_uniform, genes=objective.entries - 1, domain=domain, rng=rng)
    tb.register("select", sel_tournament, tournsize=tournsize, rng=rng)
    tb.register("mate", cx_two_point, cxpb=cxpb, rng=rng)
    tb.register("mutate", mut_gaussian_round, mutpb=mutpb, snap_pb=snap_pb, gauss_pb=gauss_pb, sigma=sigma,
                scales=objective.scales, domain=domain, rng=rng)
    tb.register("evaluate", objective)
    return tb


def evolve(tb: base.Toolbox, population: int, generations: int, seeds: np.ndarray | None = None,
           progress=None):
    """Run the GA; returns ``(best breakpoints, best fitness, logbook)``.

    ``seeds`` (rows of breakpoints) replace the first rows of the random initial population.
    ``progress`` is called with the number of generations just finished.
    """
    if isinstance(population, bool) or not isinstance(population, int) or population < 2:
        raise GQAError("population", f"must be an integer >= 2, got {population!r}")
    if isinstance(generations, bool) or not isinstance(generations, int) or generations < 0:
        raise GQAError("generations", f"must be a non-negative integer, got {generations!r}")
    pop = tb.population(population)
    if seeds is not None and len(seeds):
        seeds = np.sort(np.asarray(seeds, dtype=np.float64), axis=1)
        seeds = seeds[np.argsort(tb.evaluate(seeds), kind="stable")]  # the best seeds survive a small population
        m = min(len(seeds), population)
        pop[:m] = seeds[:m]
    fit = tb.evaluate(pop)
    best = int(np.argmin(fit))
    hof, hof_fit = pop[best].copy(), float(fit[best])
    logbook = tools.Logbook()
    logbook.header = ("gen", "min", "avg")
    logbook.record(gen=0, min=hof_fit, avg=float(np.mean(fit)))
    for gen in range(1, generations + 1):
        children = tb.mutate(tb.mate(tb.select(pop, fit, population)))
        child_fit = tb.evaluate(children)
        worst = int(np.argmax(child_fit))
        children[worst], child_fit[worst] = hof, hof_fit
        pop, fit = children, child_fit
        best = int(np.argmin(fit))
        if fit[best] < hof_fit:
            hof, hof_fit = pop[best].copy(), float(fit[best])
        logbook.record(gen=gen, min=hof_fit, avg=float(np.mean(fit)))
        if progress is not None:
            progress(1)
    return hof, hof_fit, logbook
