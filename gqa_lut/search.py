"""``search(func, entries, ...)``: one call, one :class:`~intsim.PWLTable`, whatever the method.

Methods:
- ``ga``: the GQA-LUT genetic search (:mod:`gqa_lut.ga`), seeded with the per-scale exact
  optima and equal-width breakpoints unless ``dp_seed=False``;
- ``dp``: the exact optimum of each scale (:mod:`gqa_lut.dp`) refitted as one shared table
  over the scale set; the best of them. With a single scale it *is* the exact optimum;
- ``uniform``, ``nnlut``, ``pwlf``: baselines (:mod:`gqa_lut.baselines`).

Every table's provenance records the method, seed, budget and its error per scale.
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from intsim import GQAError, PWLDatapath, PWLTable, get_function

from . import __version__
from .baselines import nnlut_table, pwlf_table, uniform_breakpoints
from .dp import dp_optimum
from .ga import evolve, make_toolbox
from .objective import Objective

METHODS = ("ga", "dp", "uniform", "nnlut", "pwlf")
DEFAULT_SCALES = tuple(range(7))


def _datapath(datapath, overrides: dict) -> PWLDatapath:
    if datapath is not None and overrides:
        raise GQAError(next(iter(overrides)), "given together with datapath", "pass one or the other")
    if datapath is not None:
        if not isinstance(datapath, PWLDatapath):
            raise GQAError("datapath", f"must be a PWLDatapath, got {type(datapath).__name__}")
        return datapath
    return PWLDatapath(**overrides)


def _finish(table: PWLTable, objective: Objective) -> PWLTable:
    err = table.error(objective.fn)
    table.provenance.update({"error": err.to_dict(), "metric": objective.metric, "tool": f"gqa-sim {__version__}"})
    return table


def per_scale_optima(fn, entries: int, dp: PWLDatapath, scales) -> dict[int, tuple[np.ndarray, float]]:
    """The DP optimum of every scale: ``{e: (breakpoints, MSE_e)}``."""
    return {e: dp_optimum(fn, entries, dp, e) for e in scales}


def search(func, entries: int = 8, method: str = "ga", *, datapath: PWLDatapath | None = None, scales=DEFAULT_SCALES,
           domain=None, metric: str = "mse", coeffs: str = "lsq", refine: bool = True, weights: dict | None = None,
           population: int = 50, generations: int = 500, seed: int = 0, dp_seed: bool = True,
           progress: bool | None = None, ga_options: dict | None = None, **datapath_fields) -> PWLTable:
    """Find a PWL table for ``func`` (a library name or a callable with ``domain``).

    ``datapath`` or its fields (``in_bits=8, slope_bits=8, slope_frac=6, ...``) fix the formats;
    ``scales`` the power-of-two input scales one table serves. ``progress``: a tqdm bar for
    the GA (``None``: shown when the search runs longer than a second on a terminal).
    """
    if method not in METHODS:
        raise GQAError("method", f"unknown method {method!r}", f"use one of {', '.join(METHODS)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise GQAError("seed", f"must be a non-negative integer, got {seed!r}")
    fn = get_function(func, domain)
    dp = _datapath(datapath, datapath_fields)
    objective = Objective(fn, entries, dp, scales, metric=metric, coeffs=coeffs, refine=refine, weights=weights)
    base = {"method": method, "seed": int(seed)}

    if method == "uniform":
        return _finish(objective.table(uniform_breakpoints(objective.entries, fn.domain), base), objective)
    if method == "nnlut":
        return _finish(nnlut_table(objective, int(seed)), objective)
    if method == "pwlf":
        return _finish(pwlf_table(objective, int(seed)), objective)

    optima = {}
    if method == "dp" or dp_seed:
        if weights is not None and method == "dp":
            raise GQAError("weights", "the dp method optimises the unweighted MSE", "use method='ga' for weighted error")
        optima = per_scale_optima(fn, objective.entries, dp, objective.scales)
    candidates = np.array([bp for bp, _ in optima.values()]).reshape(len(optima), objective.entries - 1)
    lower_bound = {str(e): mse for e, (_, mse) in optima.items()}

    if method == "dp":
        fit = objective(candidates)
        best = int(np.argmin(fit))
        prov = dict(base, budget={"per_scale_dp": list(objective.scales)}, per_scale_optimum=lower_bound,
                    chosen_scale=int(objective.scales[best]))
        return _finish(objective.table(candidates[best], prov), objective)

    seeds = np.vstack([candidates, uniform_breakpoints(objective.entries, fn.domain)[None, :]]) if dp_seed else None
    rng = np.random.default_rng(int(seed))
    tb = make_toolbox(objective, rng, **(ga_options or {}))
    with tqdm(total=generations, desc=f"ga {fn.name} N={objective.entries}", unit="gen", leave=False,
              delay=1.0, disable=progress is False) as bar:
        best_bp, _, _ = evolve(tb, population, generations, seeds, progress=bar.update)
    prov = dict(base, budget={"population": population, "generations": generations, "dp_seed": bool(dp_seed),
                              **(ga_options or {})})
    if optima:
        prov["per_scale_optimum"] = lower_bound
    table = objective.table(best_bp, prov)
    return _finish(table, objective)
