"""``search(func, entries, ...)``: one call, one :class:`~intsim.PWLTable`, whatever the method.

Methods (the registry :data:`METHOD_REGISTRY`; :data:`METHODS`, the CLI's ``--method`` choices
and the sweep's keys derive from it):
- ``exact``: the global optimum of the shared-table objective (:mod:`gqa_lut.exact`); where its
  candidate set or time is beyond ``max_candidates`` / ``time_limit`` it refuses and says so;
- ``ga``: the GQA-LUT genetic search (:mod:`gqa_lut.ga`), seeded with the exact optimum where it
  exists (so it is never worse), the per-scale exact optima and equal-width breakpoints;
- ``dp``: the exact optimum of each scale (:mod:`gqa_lut.dp`) refitted as one shared table
  over the scale set; the best of them;
- ``uniform``, ``nnlut``, ``pwlf``: baselines (:mod:`gqa_lut.baselines`).

Every table's provenance also records, under ``binding`` (:func:`binding_report`), whether its
coefficient formats bind: per segment, whether its slope or intercept code sits on the format's
limit (a clipped code sits there too), and the error the same search reaches with one more bit of
that coefficient, measured by running it again.

Every table's provenance records the method, seed, budget, its error per scale and, under
``optimum``, the exact optimum of its objective (``status: exact``) or, where that is out of
reach, a certified lower bound (``status: lower_bound``, with the reason and the relaxation),
and the table's relative ``gap`` to it (against a bound: an upper bound of the true gap).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from intsim import GQAError, PWLDatapath, PWLTable, get_function
from intsim.datapath import MAX_COEFF_BITS
from intsim.functions import Function

from . import __version__
from .baselines import nnlut_table, pwlf_table, uniform_breakpoints
from .dp import dp_optimum
from .exact import MAX_CANDIDATES, ExactUnavailable, check_limits, exact_table, gap, lower_bound, objective_value
from .ga import evolve, make_toolbox
from .budget import check_search_budget
from .objective import Objective
from .segexp import SegmentExponents, segment_codes

DEFAULT_SCALES = tuple(range(7))


def _datapath(datapath, overrides: dict) -> PWLDatapath:
    if datapath is not None and overrides:
        raise GQAError(next(iter(overrides)), "given together with datapath", "pass one or the other")
    if datapath is not None:
        if not isinstance(datapath, PWLDatapath):
            raise GQAError("datapath", f"must be a PWLDatapath, got {type(datapath).__name__}")
        return datapath
    return PWLDatapath(**overrides)


def _segment_exponent_datapath(fmt, dp: PWLDatapath, method: str, fields: dict) -> PWLDatapath:
    if not isinstance(fmt, SegmentExponents):
        raise GQAError("segment_exponents", f"must be a SegmentExponents, got {type(fmt).__name__}")
    if method != "exact":
        raise GQAError("segment_exponents", f"method {method!r} does not search per-segment exponents",
                       "use method='exact'")
    coeff = ("slope_bits", "slope_frac", "icpt_bits", "icpt_frac")
    given = [k for k in coeff if k in fields or getattr(dp, k) != getattr(PWLDatapath(), k)]
    if given:
        raise GQAError(given[0], "given together with segment_exponents, which sets the coefficient formats",
                       "give the widths and exponent ranges in SegmentExponents")
    return fmt.wide_datapath(in_bits=dp.in_bits, out_bits=dp.out_bits, out_frac=dp.out_frac,
                             out_rounding=dp.out_rounding, segment_rule=dp.segment_rule)


def per_scale_optima(fn, entries: int, dp: PWLDatapath, scales) -> dict[int, tuple[np.ndarray, float]]:
    """The DP optimum of every scale: ``{e: (breakpoints, MSE_e)}``."""
    return {e: dp_optimum(fn, entries, dp, e) for e in scales}


@dataclass
class Request:
    """One search: the objective and every option a method may read."""

    fn: Function
    objective: Objective
    weights: dict | None
    seed: int
    population: int
    generations: int
    dp_seed: bool
    exact_seed: bool
    progress: bool | None
    ga_options: dict
    max_candidates: int
    time_limit: float | None
    want_optimum: bool
    segment_exponents: SegmentExponents | None = None
    provenance: dict = field(default_factory=dict)
    exact_error: ExactUnavailable | None = None

    @cached_property
    def exact(self) -> tuple[PWLTable | None, dict]:
        """``(optimal table or None, optimum record)``: the exact optimum, else a certified bound."""
        obj = self.objective
        try:
            formats = None if self.segment_exponents is None else self.segment_exponents.formats()
            table, res = exact_table(obj, None, self.max_candidates, self.time_limit, formats)
            return table, {"status": "exact", "metric": obj.metric, "value": objective_value(obj, table),
                           "candidates": res.candidates}
        except ExactUnavailable as exc:
            reason, self.exact_error = str(exc), exc
        try:
            lb = lower_bound(obj, self.weights, self.max_candidates, self.time_limit)
        except ExactUnavailable as exc:
            return None, {"status": "unavailable", "metric": obj.metric, "reason": f"{reason}; no bound: {exc}"}
        return None, {"status": "lower_bound", "metric": obj.metric, "value": lb.pop("value"), "reason": reason,
                      "relaxation": lb}

    def finish(self, table: PWLTable) -> PWLTable:
        """Record the error, the optimum (or bound) and the table's gap to it."""
        obj = self.objective
        err = table.error(obj.fn)
        table.provenance.update({"error": err.to_dict(), "metric": obj.metric, "tool": f"gqa-sim {__version__}"})
        if self.want_optimum:
            record = dict(self.exact[1])
            if "value" in record:
                record["gap"] = gap(objective_value(obj, table), record["value"])
            table.provenance["optimum"] = record
        return table


# --- binding formats ---------------------------------------------------------------------------
BINDING_GAIN = 0.01  # a format binds when one more bit lowers the search's error by at least 1%
COEFFICIENTS = {"slope": ("slopes", "slope_bits", "slope_fracs"), "intercept": ("intercepts", "icpt_bits", "icpt_fracs")}


def _at_limit(table: PWLTable, coeff: str, fmt: SegmentExponents | None) -> list[int]:
    """Segments whose ``coeff`` code sits on its format's limit (per-segment exponents: at the coarsest exponent)."""
    codes, bits_field, fracs_field = COEFFICIENTS[coeff]
    if fmt is None:
        q = table.datapath.slope_format if coeff == "slope" else table.datapath.icpt_format
        return [i for i, c in enumerate(getattr(table, codes)) if c in (q.min_int, q.max_int)]
    bits, lo = getattr(fmt, bits_field), getattr(fmt, fracs_field)[0]
    key = "slope" if coeff == "slope" else "icpt"
    return [i for i, g in enumerate(segment_codes(table, fmt))
            if g[key] in (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) and g[f"{key}_frac"] == lo]


def _one_more_bit(coeff: str, dp: PWLDatapath, fmt: SegmentExponents | None) -> dict | None:
    """The search options with one more bit of ``coeff`` (same fraction bits), or None past the widest code."""
    _, bits_field, fracs_field = COEFFICIENTS[coeff]
    if fmt is not None:
        lo, hi = getattr(fmt, fracs_field)
        if getattr(fmt, bits_field) + 1 + hi - lo > MAX_COEFF_BITS:
            return None
        return {"segment_exponents": dataclasses.replace(fmt, **{bits_field: getattr(fmt, bits_field) + 1})}
    name = "slope_bits" if coeff == "slope" else "icpt_bits"
    if getattr(dp, name) + 1 > MAX_COEFF_BITS:
        return None
    return {"datapath": dataclasses.replace(dp, **{name: getattr(dp, name) + 1})}


def binding_report(table: PWLTable, objective: Objective, fmt: SegmentExponents | None, rerun,
                   weights: dict | None = None) -> dict:
    """Whether the coefficient formats bind, measured.

    For each coefficient (slope, intercept): the segments whose code sits on the format's limit
    and, where any does, the objective's value of ``rerun(**options)``, the same search with one
    more bit of that coefficient (same fraction bits, so twice the range). The coefficient
    *binds* when that value is at least ``BINDING_GAIN`` (1%) below this table's.
    """
    value = objective_value(objective, table)
    report = {"metric": objective.metric, "value": value, "threshold": BINDING_GAIN, "binds": False,
              "clipped": int(table.provenance.get("coefficients", {}).get("clipped", 0))}
    for coeff in COEFFICIENTS:
        segs = _at_limit(table, coeff, fmt)
        entry = {"at_limit": segs, "binds": False}
        options = _one_more_bit(coeff, objective.dp, fmt) if segs else None
        if options is not None:
            wider = rerun(**options)
            wider_value = objective_value(Objective(objective.fn, objective.entries, wider.datapath, objective.scales,
                                                    metric=objective.metric, weights=weights), wider)
            fields = (options["segment_exponents"].to_dict() if "segment_exponents" in options
                      else options["datapath"].to_dict())
            entry.update(wider={"format": fields, "value": wider_value},
                         binds=bool(wider_value < value * (1 - BINDING_GAIN)))
        elif segs:
            entry["wider"] = None  # no wider code exists
        report[coeff] = entry
        report["binds"] = report["binds"] or entry["binds"]
    return report


def binding_hint(table: PWLTable) -> str | None:
    """One line for the CLI when a table's format binds (None when none does or nothing was recorded)."""
    rep = table.provenance.get("binding")
    if not isinstance(rep, dict) or not rep.get("binds"):
        return None
    dp, parts = table.datapath, []
    for coeff, flag in (("slope", "--slope-bits"), ("intercept", "--icpt-bits")):
        entry = rep.get(coeff, {})
        if not entry.get("binds"):
            continue
        w = entry["wider"]
        bits = w["format"]["slope_bits" if coeff == "slope" else "icpt_bits"]
        ratio = rep["value"] / w["value"] if w["value"] > 0 else float("inf")
        now = dp.slope_format if coeff == "slope" else dp.icpt_format
        parts.append(f"the {coeff} format binds ({len(entry['at_limit'])} of {table.entries} segments at the limit "
                     f"of s{now.bits}.{now.frac}): {flag} {bits} gives {rep['metric']} {w['value']:.3g} "
                     f"({ratio:.1f}x lower)")
    return "hint: " + "; ".join(parts)


# --- the methods ---------------------------------------------------------------------------------
def _exact(req: Request) -> PWLTable:
    obj = req.objective
    if obj.coeffs != "lsq" or not obj.refine:
        raise GQAError("coeffs", "the exact method chooses every slope and intercept code itself",
                       "drop coeffs / refine=False (--coeffs, --no-refine)")
    table, _ = req.exact
    if table is None:
        exc = req.exact_error
        raise GQAError(exc.field, f"no exact optimum: {str(exc).split(': ', 1)[1]}; method='ga' reports its gap "
                       "to a certified lower bound instead")
    table.provenance.update(dict(req.provenance, budget={"max_candidates": req.max_candidates,
                                                         "time_limit": req.time_limit}))
    table.provenance["coefficients"] = {"method": "exact", "refine": "exact", "clipped": 0}
    if req.segment_exponents is not None:
        table.provenance["coefficient_format"] = req.segment_exponents.to_dict()
        table.provenance["segments"] = segment_codes(table, req.segment_exponents)
    return req.finish(table)


def _dp(req: Request) -> PWLTable:
    obj = req.objective
    if req.weights is not None:
        raise GQAError("weights", "the dp method optimises the unweighted MSE",
                       "use method='exact' or 'ga' for weighted error")
    optima = per_scale_optima(req.fn, obj.entries, obj.dp, obj.scales)
    candidates = np.array([bp for bp, _ in optima.values()]).reshape(len(optima), obj.entries - 1)
    fit = obj(candidates)
    best = int(np.argmin(fit))
    prov = dict(req.provenance, budget={"per_scale_dp": list(obj.scales)},
                per_scale_optimum={str(e): mse for e, (_, mse) in optima.items()},
                chosen_scale=int(obj.scales[best]))
    return req.finish(obj.table(candidates[best], prov))


def _ga(req: Request) -> PWLTable:
    obj = req.objective
    rng = np.random.default_rng(req.seed)
    tb = make_toolbox(obj, rng, **req.ga_options)  # validates the options before any search
    rows = []
    exact = req.exact[0] if req.exact_seed else None
    if exact is not None:
        rows.append(exact.breakpoints)
    optima = per_scale_optima(req.fn, obj.entries, obj.dp, obj.scales) if req.dp_seed else {}
    rows += [bp for bp, _ in optima.values()]
    if req.dp_seed:
        rows.append(uniform_breakpoints(obj.entries, req.fn.domain))
    seeds = np.array(rows).reshape(len(rows), obj.entries - 1) if rows else None
    with tqdm(total=req.generations, desc=f"ga {req.fn.name} N={obj.entries}", unit="gen", leave=False,
              delay=1.0, disable=req.progress is False) as bar:
        best_bp, _, _ = evolve(tb, req.population, req.generations, seeds, progress=bar.update)
    prov = dict(req.provenance, budget={"population": req.population, "generations": req.generations,
                                        "dp_seed": bool(req.dp_seed), "exact_seed": bool(req.exact_seed),
                                        **req.ga_options})
    if optima:
        prov["per_scale_optimum"] = {str(e): mse for e, (_, mse) in optima.items()}
    table = obj.table(best_bp, prov)
    if exact is not None:
        # the GA's fitness snaps breakpoints to the 2**-e_max grid and fits least-squares lines,
        # so it may not reproduce its exact seed (a 2**-(e_max+1) breakpoint, a minimax or
        # rounded-output fit): the seed is kept whenever the search found nothing better
        own = objective_value(obj, table)
        prov["ga_own"] = {"value": own, "gap": gap(own, req.exact[1]["value"])}
        if objective_value(obj, exact) < own:
            table = PWLTable(function=exact.function, domain=exact.domain, datapath=exact.datapath,
                             scales=exact.scales, breakpoints=exact.breakpoints, slopes=exact.slopes,
                             intercepts=exact.intercepts, provenance=dict(prov, kept="exact seed",
                                                                          coefficients=exact.provenance["coefficients"]))
    return req.finish(table)


def _uniform(req: Request) -> PWLTable:
    return req.finish(req.objective.table(uniform_breakpoints(req.objective.entries, req.fn.domain), req.provenance))


def _nnlut(req: Request) -> PWLTable:
    table = nnlut_table(req.objective, req.seed)
    table.provenance.update(req.provenance)
    return req.finish(table)


def _pwlf(req: Request) -> PWLTable:
    table = pwlf_table(req.objective, req.seed)
    table.provenance.update(req.provenance)
    return req.finish(table)


METHOD_REGISTRY: dict[str, Callable[[Request], PWLTable]] = {
    "ga": _ga,
    "exact": _exact,
    "dp": _dp,
    "uniform": _uniform,
    "nnlut": _nnlut,
    "pwlf": _pwlf,
}
METHODS = tuple(METHOD_REGISTRY)


def search(func, entries: int = 8, method: str = "ga", *, datapath: PWLDatapath | None = None, scales=DEFAULT_SCALES,
           domain=None, metric: str = "mse", coeffs: str = "lsq", refine: bool = True, weights: dict | None = None,
           population: int = 50, generations: int = 500, seed: int = 0, dp_seed: bool = True,
           exact_seed: bool = True, max_candidates: int = MAX_CANDIDATES, time_limit: float | None = None,
           optimum: bool = True, segment_exponents: SegmentExponents | None = None, progress: bool | None = None,
           ga_options: dict | None = None, binding: bool = True, max_memory_gb: float | None = None,
           **datapath_fields) -> PWLTable:
    """Find a PWL table for ``func`` (a library name or a callable with ``domain``).

    ``datapath`` or its fields (``in_bits=8, slope_bits=8, slope_frac=6, ...``) fix the formats;
    ``scales`` the power-of-two input scales one table serves. ``max_candidates`` and
    ``time_limit`` (seconds, per exact solve) bound the exact search; ``optimum=False`` skips
    recording the optimum (and the GA's exact seed). ``segment_exponents``
    (:class:`~gqa_lut.segexp.SegmentExponents`, method ``exact`` only): every segment picks
    its own coefficient exponents; the table lives on the format's wide datapath (the given
    datapath's input and output fields are kept). ``binding``: record whether the coefficient
    formats bind (:func:`binding_report`; runs the search again with one more bit of a
    coefficient whose code sits on its limit). ``progress``: a tqdm bar for the GA
    (``None``: shown when the search runs longer than a second on a terminal). A search whose
    estimated memory exceeds ``max_memory_gb`` (default: ``GQA_MAX_SEARCH_GB`` or 4 GB) is refused
    before it starts (:mod:`gqa_lut.budget`).
    """
    if method not in METHOD_REGISTRY:
        raise GQAError("method", f"unknown method {method!r}", f"use one of {', '.join(METHODS)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise GQAError("seed", f"must be a non-negative integer, got {seed!r}")
    check_limits(max_candidates, time_limit)
    fn = get_function(func, domain)
    dp = _datapath(datapath, datapath_fields)
    if segment_exponents is not None:
        dp = _segment_exponent_datapath(segment_exponents, dp, method, datapath_fields)
    objective = Objective(fn, entries, dp, scales, metric=metric, coeffs=coeffs, refine=refine, weights=weights)
    check_search_budget(fn.domain, objective.entries, dp, objective.scales, method, population, dp_seed,
                        max_memory_gb, field="max_memory_gb")
    req = Request(fn=fn, objective=objective, weights=weights, seed=int(seed), population=population,
                  generations=generations, dp_seed=bool(dp_seed), exact_seed=bool(exact_seed) and bool(optimum),
                  progress=progress, ga_options=dict(ga_options or {}), max_candidates=max_candidates,
                  time_limit=time_limit, want_optimum=bool(optimum) or method == "exact",
                  segment_exponents=segment_exponents,
                  provenance={"method": method, "seed": int(seed)})
    table = METHOD_REGISTRY[method](req)
    if binding:
        def rerun(**wider):
            options = dict(datapath=dp if segment_exponents is None else datapath, segment_exponents=segment_exponents)
            options.update(wider)
            if options["datapath"] is None:
                options["datapath"] = _datapath(None, datapath_fields)
            return search(fn, entries, method, scales=scales, metric=metric, coeffs=coeffs, refine=refine,
                          weights=weights, population=population, generations=generations, seed=seed,
                          dp_seed=dp_seed, exact_seed=exact_seed, max_candidates=max_candidates,
                          time_limit=time_limit, optimum=optimum, progress=False, ga_options=ga_options,
                          binding=False, **options)
        table.provenance["binding"] = binding_report(table, objective, segment_exponents, rerun, weights)
    return table
