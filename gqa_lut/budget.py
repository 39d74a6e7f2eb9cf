"""What a search will cost, estimated before it starts, and the refusal of what will not fit.

The dominant terms (``n_e``: the input codes in the domain at scale ``e``, at most ``2**in_bits``):

- the exact per-scale optimum (method ``dp``, and ``ga`` with ``dp_seed``) holds an
  ``(n_e + 1)**2`` float64 segment-cost matrix (:mod:`gqa_lut.dp`): ``8 (n_e + 1)**2`` bytes, and
  does ``n_e**2 / 2`` segment fits plus ``entries * n_e**2 / 2`` recursion steps;
- evaluating a population (``ga``: ``population`` tables, every other method: a few) on every code
  of every scale: about ``4 * 8 * population * sum(n_e)`` bytes of working arrays.

A search whose estimate exceeds ``max_gb`` (default :data:`DEFAULT_MAX_GB`, or the environment's
``GQA_MAX_SEARCH_GB``; ``gqa search --max-memory-gb``) is refused with its estimate, before any
memory is taken: ``--in-bits 16 --scales 12 --method dp`` needs 8.6 GB, ``--in-bits 20
--scales 18`` petabytes.
"""

from __future__ import annotations

import math
import os

from intsim import GQAError, PWLDatapath

DEFAULT_MAX_GB = 4.0


def max_search_gb() -> float:
    v = os.environ.get("GQA_MAX_SEARCH_GB", "")
    if not v:
        return DEFAULT_MAX_GB
    try:
        gb = float(v)
    except ValueError:
        gb = float("nan")
    if not math.isfinite(gb) or gb <= 0:
        raise GQAError("GQA_MAX_SEARCH_GB", f"{v!r} is not a positive number of GB", f"e.g. {DEFAULT_MAX_GB:g}")
    return gb


def codes_in_domain(domain, e: int, dp: PWLDatapath) -> int:
    """How many signed ``in_bits`` codes ``q`` have ``q * 2**-e`` in ``domain`` (counted, not listed)."""
    lo, hi = float(domain[0]), float(domain[1])
    qmin, qmax = -(1 << (dp.in_bits - 1)), (1 << (dp.in_bits - 1)) - 1
    a = max(qmin, math.ceil(lo * 2.0**e))
    b = min(qmax, math.floor(hi * 2.0**e))
    return max(b - a + 1, 0)


def estimate(domain, entries: int, dp: PWLDatapath, scales, method: str, population: int = 50,
             dp_seed: bool = True) -> dict:
    """``{"bytes", "steps", "largest_scale", "codes"}``: the peak working memory and DP steps."""
    codes = {int(e): codes_in_domain(domain, int(e), dp) for e in scales}
    e_big = max(codes, key=codes.get)
    n_big = codes[e_big]
    exact = method == "dp" or (method == "ga" and dp_seed)
    pop = population if method == "ga" else 4
    mem = 4 * 8 * pop * sum(codes.values())
    steps = 0
    if exact:
        mem = max(mem, 8 * (n_big + 1) ** 2 + 16 * (entries + 1) * (n_big + 1))
        steps = sum((entries + 1) * n * n // 2 for n in codes.values())
    return {"bytes": mem, "steps": steps, "largest_scale": e_big, "codes": n_big}


def check_search_budget(domain, entries: int, dp: PWLDatapath, scales, method: str, population: int = 50,
                        dp_seed: bool = True, max_gb: float | None = None, field: str = "--max-memory-gb") -> dict:
    """Refuse, with the estimate, a search that needs more than ``max_gb`` GB; return the estimate."""
    limit = max_search_gb() if max_gb is None else float(max_gb)
    est = estimate(domain, entries, dp, scales, method, population, dp_seed)
    gb = est["bytes"] / 1e9
    if gb > limit:
        what = (f"the exact per-scale optimum's segment-cost matrix of {est['codes']:,} codes at scale "
                f"e={est['largest_scale']}" if est["steps"] else
                f"evaluating {population if method == 'ga' else 4} tables on every code")
        raise GQAError(field, f"this {method} search needs about {gb:,.3g} GB ({what}), more than the "
                       f"{limit:g} GB limit",
                       "use fewer input bits or smaller scales (or method uniform/nnlut/pwlf, or ga with "
                       "--no-dp-seed), or raise the limit with --max-memory-gb GB / GQA_MAX_SEARCH_GB")
    return est
