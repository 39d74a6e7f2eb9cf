"""The cheapest unit that meets an error target: ``cheapest(func, max_mse=..., ...)`` (``gqa cheapest``).

The question an architect brings: the smallest PWL unit (entries, input bits, slope and
intercept widths and fractions, optionally per-segment exponents) whose table keeps the error
of ``func`` under a target over a scale set, and what it costs. It lives here, beside the sweep
library, because it needs both :mod:`gqa_lut` (the searches) and :mod:`hw_models` (the cost),
and DESIGN.md's layers let only the top layer import both; so the API is
``gqa_sweep.cheapest``, not ``gqa_lut.cheapest``.

The space is the product ``entries x in_bits x slope formats x intercept formats`` (plus, per
``segment_exponents``, units whose segments pick their own exponents). Every configuration's
cost (``objective``: area, power or energy of its integer unit, :func:`hw_models.estimate`) is
computed first: it needs no search. Then, in increasing cost, each configuration's table is the
*exact* optimum of the target's metric (:func:`gqa_lut.search` with ``method="exact"``), so a
configuration meets the target exactly when its optimum does. The winner is the first that
meets it; the next ``runners_up`` that do are reported too.

Pruning (a pruned configuration is never searched; every bound is certified):

- *hull bound*: for each entry count and input width, the exact optimum on the "hull" datapath
  (the finest fraction and the most integer bits of every format in the space, and of every
  per-segment format's wide code) is at most the optimum of every configuration of that entry
  count and input width, since its coefficient grid contains theirs. A configuration whose
  hull bound misses the target is pruned.
- *dominance*: a searched configuration whose optimum misses the target bounds every
  configuration with no more entries, the same input width and a coefficient grid inside its
  own (fraction and integer bits no larger), which is pruned.
- where the exact optimum is out of reach (``max_candidates``), the certified
  :func:`gqa_lut.lower_bound` decides: a configuration whose bound misses is pruned, the others
  are reported as unresolved, never as winners.

With both ``max_mse`` and ``max_abs``, the searched table is the MSE optimum and, if that misses
``max_abs``, the max-abs optimum; a configuration meets the targets when one of the two tables
meets both (a table that meets both but is neither optimum is not looked for).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from intsim import GQAError, PWLDatapath, PWLTable
from intsim.datapath import MAX_COEFF_BITS

from .executors import InlineExecutor, dask_client, executor_slots, process_pool
from .spec import is_int

OBJECTIVES = ("area", "power", "energy")
_COST_ATTR = {"area": "area_um2", "power": "power_mw", "energy": "energy_pj"}
DEFAULT_ENTRIES = (4, 8, 16)
# (bits, frac): widths 6..10 with 2 or 3 integer bits (sign included): s8.6 is the paper's
DEFAULT_FORMATS = tuple((b, b - i) for b in range(6, 11) for i in (2, 3))
MAX_CONFIGS = 2000


@dataclass(frozen=True)
class UnitChoice:
    """One configuration of the space: entries, input width and coefficient formats."""

    entries: int
    in_bits: int
    slope: tuple[int, int]            # (bits, frac)
    icpt: tuple[int, int]
    segment_exponents: object = None  # gqa_lut.SegmentExponents (then slope/icpt are its wide formats)

    @property
    def datapath(self) -> PWLDatapath:
        return PWLDatapath(in_bits=self.in_bits, slope_bits=self.slope[0], slope_frac=self.slope[1],
                           icpt_bits=self.icpt[0], icpt_frac=self.icpt[1])

    def grid(self) -> tuple[int, int, int, int]:
        """(slope frac, slope integer bits, intercept frac, intercept integer bits) of the coefficient grid."""
        (sb, sf), (ib, jf) = self.slope, self.icpt
        return sf, sb - sf, jf, ib - jf

    def within(self, other: "UnitChoice") -> bool:
        """Every table of ``self`` is a table of ``other`` (``other`` a plain format)."""
        if other.segment_exponents is not None or self.in_bits != other.in_bits or self.entries > other.entries:
            return False
        return all(a <= b for a, b in zip(self.grid(), other.grid()))

    def describe(self) -> str:
        if self.segment_exponents is not None:
            f = self.segment_exponents
            coeff = (f"slope s{f.slope_bits} exp {f.slope_fracs[0]}..{f.slope_fracs[1]}, "
                     f"intercept s{f.icpt_bits} exp {f.icpt_fracs[0]}..{f.icpt_fracs[1]} (per segment)")
        else:
            coeff = f"slope s{self.slope[0]}.{self.slope[1]}, intercept s{self.icpt[0]}.{self.icpt[1]}"
        return f"{self.entries} entries, in s{self.in_bits}, {coeff}"

    def to_dict(self) -> dict:
        d = {"entries": self.entries, "in_bits": self.in_bits, "slope": list(self.slope), "icpt": list(self.icpt)}
        if self.segment_exponents is not None:
            d["segment_exponents"] = self.segment_exponents.to_dict()
        return d


@dataclass
class Candidate:
    """A configuration with its cost and, once searched, its table and errors."""

    choice: UnitChoice
    cost: float
    area_um2: float
    power_mw: float
    energy_pj: float
    status: str = "pending"   # pending | met | missed | pruned | unresolved
    mean_mse: float | None = None
    max_abs: float | None = None
    bound: float | None = None  # the certified bound that pruned it (or the out-of-reach one)
    pruned_by: str | None = None
    table: PWLTable | None = None

    def row(self) -> dict:
        return {**self.choice.to_dict(), "cost": self.cost, "area_um2": self.area_um2, "power_mw": self.power_mw,
                "energy_pj": self.energy_pj, "status": self.status, "mean_mse": self.mean_mse,
                "max_abs": self.max_abs, "bound": self.bound, "pruned_by": self.pruned_by}


@dataclass
class CheapestResult:
    """The winner, runners-up, every candidate and the search's counts."""

    function: str
    target: dict
    objective: str
    winner: Candidate
    runners_up: list[Candidate]
    candidates: list[Candidate]
    fp32: dict
    paper_int8: dict
    elapsed_s: float
    counts: dict = field(default_factory=dict)

    def summary(self) -> str:
        w, unit = self.winner, {"area": "um2", "power": "mW", "energy": "pJ"}[self.objective]
        tgt = ", ".join(f"{k} <= {v:g}" for k, v in self.target.items() if v is not None)
        c = self.counts
        lines = [f"cheapest {self.function} unit with {tgt} (objective: {self.objective}, 28 nm model):",
                 f"  winner: {w.choice.describe()}",
                 f"    mean MSE {w.mean_mse:.3e}, max |err| {w.max_abs:.3e}; area {w.area_um2:.0f} um2, "
                 f"power {w.power_mw:.3f} mW, energy {w.energy_pj:.3f} pJ",
                 f"    against the FP32 unit of the same entries ({self.fp32['area_um2']:.0f} um2, "
                 f"{self.fp32['power_mw']:.3f} mW): {100 * (1 - w.area_um2 / self.fp32['area_um2']):.1f}% less area, "
                 f"{100 * (1 - w.power_mw / self.fp32['power_mw']):.1f}% less power",
                 f"    the GQA-LUT paper's INT8 8-entry unit (s8 in, s8.6 coefficients) in the same model: {self.paper_int8['area_um2']:.0f} um2, "
                 f"{self.paper_int8['power_mw']:.3f} mW (published: 961 um2, 0.40 mW)"]
        if self.runners_up:
            lines.append("  runners-up:")
            lines += [f"    {r.cost:>10.3f} {unit}  MSE {r.mean_mse:.3e}  max {r.max_abs:.3e}  {r.choice.describe()}"
                      for r in self.runners_up]
        lines.append(f"  {c['configs']} configurations: {c['searched']} searched, {c['pruned']} pruned by certified "
                     f"bounds ({c['pruned_hull']} hull, {c['pruned_dominated']} dominated, {c['pruned_bound']} lower "
                     f"bound), {c['unresolved']} unresolved, {c['not_needed']} not needed; {self.elapsed_s:.1f} s")
        return "\n".join(lines)

    def front(self) -> list[Candidate]:
        """The searched candidates no other beats on both area and the target's error."""
        key = "mean_mse" if self.target.get("max_mse") is not None else "max_abs"
        done = sorted((c for c in self.candidates if getattr(c, key) is not None),
                      key=lambda c: (c.area_um2, getattr(c, key)))
        out, best = [], math.inf
        for c in done:
            if getattr(c, key) < best:
                out.append(c)
                best = getattr(c, key)
        return out

    def plot(self, path) -> None:
        """Error against area of every searched unit, the front, the winner and the target line."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        import io

        from intsim.fileio import atomic_write_bytes

        key = "mean_mse" if self.target.get("max_mse") is not None else "max_abs"
        target = self.target["max_mse" if key == "mean_mse" else "max_abs"]
        done = [c for c in self.candidates if getattr(c, key) is not None]
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        ax.scatter([c.area_um2 for c in done], [getattr(c, key) for c in done], s=14, c="0.6", label="searched")
        fr = self.front()
        ax.step([c.area_um2 for c in fr], [getattr(c, key) for c in fr], where="post", c="C0", label="front")
        ax.axhline(target, c="C3", ls="--", label=f"target {target:g}")
        ax.scatter([self.winner.area_um2], [getattr(self.winner, key)], s=60, c="C2", marker="*", zorder=3,
                   label=f"winner: {self.winner.choice.describe()}")
        ax.set_yscale("log")
        ax.set_xlabel("integer unit area (um2, 28 nm model)")
        ax.set_ylabel("mean MSE over the scale set" if key == "mean_mse" else "max |error|")
        ax.set_title(f"{self.function}: cheapest unit under the target")
        ax.legend(fontsize=7)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120, metadata={"Software": None})  # same inputs, same bytes
        plt.close(fig)
        atomic_write_bytes(path, buf.getvalue(), "plot")


# --- validation -----------------------------------------------------------------------------------
def _target(value, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise GQAError(name, f"must be a positive finite error, got {value!r}", f"e.g. {name}=1e-4")
    return float(value)


def _int_list(values, name: str, lo: int) -> tuple[int, ...]:
    if is_int(values):
        values = (values,)
    try:
        out = tuple(sorted(set(values)))
    except TypeError:
        raise GQAError(name, f"must be integers, got {values!r}") from None
    if not out:
        raise GQAError(name, "is empty", "give at least one value")
    for v in out:
        if not is_int(v) or v < lo:
            raise GQAError(name, f"must be integers >= {lo}, got {v!r}")
    return out


def _formats(values, name: str) -> tuple[tuple[int, int], ...]:
    try:
        out = tuple(sorted({(int(b), int(f)) for b, f in values}))
    except (TypeError, ValueError):
        raise GQAError(name, f"must be (bits, frac) pairs, got {values!r}", "e.g. [(8, 6), (9, 6)]") from None
    if not out:
        raise GQAError(name, "is empty", "give at least one (bits, frac) pair")
    for b, f in out:
        if not 2 <= b <= MAX_COEFF_BITS or not 0 <= f <= 2 * MAX_COEFF_BITS:
            raise GQAError(name, f"({b}, {f}) is no coefficient format", f"bits in 2..{MAX_COEFF_BITS}, frac >= 0")
    return out


def space(entries=DEFAULT_ENTRIES, in_bits=(8,), slope_formats=DEFAULT_FORMATS, icpt_formats=DEFAULT_FORMATS,
          segment_exponents=()) -> list[UnitChoice]:
    """Every configuration of the product (``segment_exponents``: extra per-segment formats, per entries and input)."""
    entries = _int_list(entries, "entries", 1)
    in_bits = _int_list(in_bits, "in_bits", 2)
    sfs, ifs = _formats(slope_formats, "slope_formats"), _formats(icpt_formats, "icpt_formats")
    out = [UnitChoice(n, q, s, i) for n in entries for q in in_bits for s in sfs for i in ifs]
    for fmt in segment_exponents or ():
        wide = fmt.wide_datapath()
        out += [UnitChoice(n, q, (wide.slope_bits, wide.slope_frac), (wide.icpt_bits, wide.icpt_frac), fmt)
                for n in entries for q in in_bits]
    return out


# --- one search (runs on a worker) ------------------------------------------------------------------
def _solve(func, domain, choice: UnitChoice, scales, metrics, max_candidates, time_limit) -> dict:
    """The exact optimum of ``metrics[0]`` for ``choice`` (then ``metrics[1]``'s if asked); or its certified bound."""
    import gqa_lut
    from gqa_lut.exact import ExactUnavailable

    out = []
    for metric in metrics:
        kw = dict(segment_exponents=choice.segment_exponents,
                  datapath=PWLDatapath(in_bits=choice.in_bits)) if choice.segment_exponents is not None \
            else dict(datapath=choice.datapath)
        try:
            table = gqa_lut.search(func, choice.entries, "exact", scales=scales, domain=domain, metric=metric,
                                   max_candidates=max_candidates, time_limit=time_limit, binding=False,
                                   progress=False, **kw)
        except ExactUnavailable as exc:
            bound = _lower_bound(func, domain, choice, scales, metric, max_candidates, time_limit)
            return {"unresolved": str(exc), "bound": bound}
        err = table.error()
        out.append({"table": table, "mean_mse": float(err.mean_mse), "max_abs": err.max_max_abs})
    return {"tables": out}


def _lower_bound(func, domain, choice, scales, metric, max_candidates, time_limit) -> float | None:
    from gqa_lut import get_function, lower_bound
    from gqa_lut.exact import ExactUnavailable
    from gqa_lut.objective import Objective

    try:
        obj = Objective(get_function(func, domain), choice.entries, choice.datapath, scales, metric=metric)
        return float(lower_bound(obj, None, max_candidates, time_limit)["value"])
    except ExactUnavailable:
        return None


# --- the search -----------------------------------------------------------------------------------
def _hull(choices: list[UnitChoice]) -> UnitChoice | None:
    """The plain configuration whose coefficient grid contains every one of ``choices`` (same entries, input)."""
    sf, si, jf, ji = (max(c.grid()[k] for c in choices) for k in range(4))
    if si + sf > MAX_COEFF_BITS or ji + jf > MAX_COEFF_BITS:
        return None
    c0 = choices[0]
    return UnitChoice(c0.entries, c0.in_bits, (si + sf, sf), (ji + jf, jf))


def _executor(executor, workers, scheduler):
    if sum(x is not None for x in (executor, workers, scheduler)) > 1:
        raise GQAError("workers", "executor, workers and scheduler given together", "pass one of them")
    if executor is not None:
        return executor, False
    if scheduler is not None:
        return dask_client(scheduler).get_executor(), True
    if workers:
        return process_pool(workers), True
    if workers is not None and (not is_int(workers) or workers < 0):
        raise GQAError("workers", f"must be an integer >= 0, got {workers!r}", "0 runs in this process")
    return InlineExecutor(), False


def cheapest(func, max_mse: float | None = None, max_abs: float | None = None, *, scales=tuple(range(7)),
             domain=None, entries=DEFAULT_ENTRIES, in_bits=(8,), slope_formats=DEFAULT_FORMATS,
             icpt_formats=DEFAULT_FORMATS, segment_exponents=(), objective: str = "area", runners_up: int = 3,
             node=28, freq_mhz: float = 500.0, max_configs: int = MAX_CONFIGS, prune: bool = True,
             max_candidates: int | None = None, time_limit: float | None = None, executor=None,
             workers: int | None = None, scheduler: str | None = None, progress: bool | None = None) -> CheapestResult:
    """The configuration of least ``objective`` cost whose exact-optimal table meets the target.

    ``max_mse`` (mean MSE over the scale set) and/or ``max_abs`` (largest |error| over every
    scale and code). The space: ``entries`` x ``in_bits`` x ``slope_formats`` x ``icpt_formats``
    ((bits, frac) pairs) plus each :class:`gqa_lut.SegmentExponents` of ``segment_exponents``;
    more than ``max_configs`` configurations is refused. ``prune=False`` searches every
    configuration (the brute force the tests compare against). ``executor`` / ``workers`` /
    ``scheduler`` as :func:`gqa_sweep.run_sweep`'s (default: in this process).
    Raises :class:`GQAError` when no configuration meets the target, with the best error found.
    """
    from gqa_lut.exact import MAX_CANDIDATES, check_limits
    from hw_models import UnitConfig, estimate, estimate_fp
    from hw_models.pwl_unit import paper_int8_config
    from intsim import get_function
    from intsim.table import parse_scales

    t0 = time.perf_counter()
    max_mse, max_abs = _target(max_mse, "max_mse"), _target(max_abs, "max_abs")
    if max_mse is None and max_abs is None:
        raise GQAError("max_mse", "no error target given", "give max_mse (and/or max_abs)")
    if objective not in OBJECTIVES:
        raise GQAError("objective", f"unknown objective {objective!r}", f"use one of {', '.join(OBJECTIVES)}")
    if not is_int(runners_up) or runners_up < 0:
        raise GQAError("runners_up", f"must be an integer >= 0, got {runners_up!r}")
    if not is_int(max_configs) or max_configs < 1:
        raise GQAError("max_configs", f"must be a positive integer, got {max_configs!r}")
    max_candidates = MAX_CANDIDATES if max_candidates is None else max_candidates
    check_limits(max_candidates, time_limit)
    scales = tuple(parse_scales(scales) if isinstance(scales, str) else scales)
    fn = get_function(func, domain)
    choices = space(entries, in_bits, slope_formats, icpt_formats, segment_exponents)
    if len(choices) > max_configs:
        raise GQAError("max_configs", f"the space has {len(choices)} configurations, over the budget of {max_configs}",
                       "give fewer entries/formats, or raise max_configs (--max-configs)")
    func_arg, dom = (func, domain) if isinstance(func, str) else (fn, None)  # names travel to workers cheaply
    metrics = ("mse",) if max_abs is None else ("max_abs",) if max_mse is None else ("mse", "max_abs")
    key = "mean_mse" if metrics[0] == "mse" else "max_abs"
    limit = max_mse if metrics[0] == "mse" else max_abs

    def meets(r: dict) -> bool:
        return (max_mse is None or r["mean_mse"] <= max_mse) and (max_abs is None or r["max_abs"] <= max_abs)

    def priced(c: UnitChoice) -> Candidate:
        u = estimate(UnitConfig.from_datapath(c.datapath, c.entries, scales, segment_exponents=c.segment_exponents),
                     node, freq_mhz)
        return Candidate(c, getattr(u, _COST_ATTR[objective]), u.area_um2, u.power_mw, u.energy_pj)

    cands = sorted((priced(c) for c in choices), key=lambda c: (c.cost, c.area_um2, repr(c.choice)))
    ex, own = _executor(executor, workers, scheduler)
    window = executor_slots(ex, 1) if not isinstance(ex, InlineExecutor) else 1
    counts = dict(configs=len(cands), searched=0, pruned=0, pruned_hull=0, pruned_dominated=0, pruned_bound=0,
                  unresolved=0, not_needed=0, hull_solves=0)
    hull_bound: dict = {}
    met: list[Candidate] = []
    missed: list[Candidate] = []
    bar = tqdm(total=len(cands), desc=f"cheapest {fn.name}", unit="cfg", leave=False, delay=1.0,
               disable=progress is False)
    try:
        if prune:  # one exact solve per (entries, input width) on the hull of its formats
            groups: dict = {}
            for c in cands:
                groups.setdefault((c.choice.entries, c.choice.in_bits), []).append(c.choice)
            hulls = {g: _hull(v) for g, v in groups.items()}
            futs = {g: ex.submit(_solve, func_arg, dom, h, scales, metrics[:1], max_candidates, time_limit)
                    for g, h in hulls.items() if h is not None}
            for g, f in futs.items():
                r = f.result()
                counts["hull_solves"] += 1
                hull_bound[g] = r["tables"][0][key] if "tables" in r else r.get("bound")

        def bound_of(c: Candidate):
            g = (c.choice.entries, c.choice.in_bits)
            if hull_bound.get(g) is not None and hull_bound[g] > limit:
                return "hull", hull_bound[g]
            for d in missed:
                if c.choice.within(d.choice) and d.table is not None and getattr(d, key) > limit:
                    return "dominated", getattr(d, key)
            return None

        i = 0
        while i < len(cands) and len(met) < 1 + runners_up:
            batch = []
            while i < len(cands) and len(batch) < window:
                c = cands[i]
                i += 1
                b = bound_of(c) if prune else None
                if b is not None:
                    c.status, c.pruned_by, c.bound = "pruned", b[0], b[1]
                    counts["pruned"] += 1
                    counts[f"pruned_{b[0]}"] += 1
                    bar.update()
                    continue
                batch.append((c, ex.submit(_solve, func_arg, dom, c.choice, scales, metrics, max_candidates,
                                           time_limit)))
            for c, f in batch:
                r = f.result()
                bar.update()
                if "unresolved" in r:
                    c.bound = r["bound"]
                    if prune and c.bound is not None and c.bound > limit:
                        c.status, c.pruned_by = "pruned", "bound"
                        counts["pruned"] += 1
                        counts["pruned_bound"] += 1
                    else:
                        c.status = "unresolved"
                        counts["unresolved"] += 1
                    continue
                counts["searched"] += 1
                tabs = r["tables"]
                best = next((t for t in tabs if meets(t)), tabs[0])
                c.table, c.mean_mse, c.max_abs = best["table"], best["mean_mse"], best["max_abs"]
                c.status = "met" if meets(best) else "missed"
                (met if c.status == "met" else missed).append(c)
        counts["not_needed"] = sum(c.status == "pending" for c in cands)
    finally:
        bar.close()
        if own:
            ex.shutdown(wait=True)
    target = {"max_mse": max_mse, "max_abs": max_abs}
    if not met:
        searched = [c for c in cands if c.table is not None]
        if not searched and hull_bound:
            # every configuration was pruned: search the widest one of the best group, to say what is reachable
            g = min((g for g, v in hull_bound.items() if v is not None), key=lambda g: hull_bound[g])
            c = max((c for c in cands if (c.choice.entries, c.choice.in_bits) == g),
                    key=lambda c: (sum(c.choice.grid()), -c.cost))
            r = _solve(func_arg, dom, c.choice, scales, metrics[:1], max_candidates, time_limit)
            if "tables" in r:
                t = r["tables"][0]
                c.table, c.mean_mse, c.max_abs = t["table"], t["mean_mse"], t["max_abs"]
                searched = [c]
        if searched:
            b = min(searched, key=lambda c: (getattr(c, key), c.cost))
            best = (f"the best error found is {key} {getattr(b, key):.3e} ({b.choice.describe()}, "
                    f"{objective} {b.cost:.3g})")
        else:
            best = "every configuration was pruned"
        lb = min((v for v in hull_bound.values() if v is not None), default=None)
        lb_txt = f"; no configuration can do better than {key} {lb:.3e} (certified hull bound)" if lb is not None else ""
        raise GQAError("max_mse" if metrics[0] == "mse" else "max_abs",
                       f"no configuration of the {len(cands)} meets the target ({best}{lb_txt}; "
                       f"{counts['pruned']} pruned, {counts['unresolved']} unresolved)",
                       "relax the target, or allow more entries / wider formats")
    win = met[0]
    cfg = UnitConfig.from_datapath(win.choice.datapath, win.choice.entries, scales,
                                   segment_exponents=win.choice.segment_exponents)
    fp = estimate_fp(cfg, "fp32", node, freq_mhz)
    paper = estimate(paper_int8_config(), node, freq_mhz)
    return CheapestResult(function=fn.name, target=target, objective=objective, winner=win, runners_up=met[1:1 + runners_up],
                          candidates=cands, fp32={"area_um2": fp.area_um2, "power_mw": fp.power_mw,
                                                  "energy_pj": fp.energy_pj},
                          paper_int8={"area_um2": paper.area_um2, "power_mw": paper.power_mw},
                          elapsed_s=time.perf_counter() - t0, counts=counts)
