"""gqa_lut.exact: the shared-table optimum against brute force, the per-scale DP and its own tables.

Brute force (independent of the candidate argument): breakpoints on a grid four times finer than
the candidates' (``2**-(e_max+3)``, over a range past both domain ends), distinct by the
datapath's segment starts; every sorted choice of ``N-1`` of them; each code's segment by
the unit's rule ``#{j : q >= S_j}`` (``S_j = P_j`` under "ge", ``P_j + 1`` under "gt"); every integer ``(K, B)`` per segment through intsim's
accumulator and output stage. Given the breakpoints the objective is a sum (max) of per-segment
terms, each depending on that segment's coefficients only, so minimising each segment over all
its ``(K, B)`` is the joint minimum over every coefficient of the table.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

import gqa_lut
from gqa_lut.dp import dp_optimum
from gqa_lut.exact import (MAX_POSITIONS, ExactProblem, ExactTooLarge, ExactUnavailable, _no_saturation, _two_adic, candidate_bound,
                           candidates, exact_optimum, exact_table, gap, lower_bound, objective_value, segment_starts)
from gqa_lut.objective import Objective
from intsim import GQAError, PWLDatapath, get_function, scale_points
from intsim.pwl import pwl_output


def brute_force(fn, entries, dp, scales, metric="mse", weights=None, slope_codes=None, icpt_codes=None):
    """The best objective value over every table (breakpoints, slopes, intercepts).

    ``slope_codes`` / ``icpt_codes``: the codes a segment may use (default: every code of the formats).
    """
    scales = sorted(scales)
    lo, hi = fn.domain
    step = 2.0 ** -(max(scales) + 3)
    reach = 2.0 ** -min(scales) + step
    grid = np.arange(math.floor((lo - reach) / step), math.ceil((hi + reach) / step) + 1) * step
    codes = np.stack([dp.segment_starts(grid, e) for e in scales], axis=1)
    placements = np.unique(codes, axis=0)  # distinct comparator constants, ascending in every column
    kf, bf = dp.slope_format, dp.icpt_format
    K = np.arange(kf.min_int, kf.max_int + 1) if slope_codes is None else np.asarray(slope_codes, np.int64)
    B = np.arange(bf.min_int, bf.max_int + 1) if icpt_codes is None else np.asarray(icpt_codes, np.int64)
    pts_err, pts_scale, pts_q = [], [], []
    for s, e in enumerate(scales):
        q = scale_points(fn.domain, e, dp)
        acc = (K[:, None, None] * q << dp.slope_shift(e)) + (B[None, :, None] << dp.icpt_shift(e))
        out = pwl_output(acc.reshape(-1, q.size), e, dp).reshape(acc.shape)
        frac = dp.acc_frac(e) if dp.out_bits is None else dp.out_frac
        d = out * 2.0**-frac - fn(q * 2.0**-e)
        h = np.ones(q.size) if weights is None else np.asarray(weights[e], float)[q - dp.code_min]
        w = h / h.sum() / len(scales) if h.sum() > 0 else h
        pts_err.append(w * d * d if metric == "mse" else np.abs(d))
        pts_scale.append(np.full(q.size, s)), pts_q.append(q)
    err = np.concatenate(pts_err, axis=2)  # (K, B, point)
    p_scale, p_q = np.concatenate(pts_scale), np.concatenate(pts_q)
    memo = {}
    best = np.inf
    for choice in itertools.combinations_with_replacement(range(len(placements)), entries - 1):
        P = placements[list(choice)]  # (N-1, S) segment starts, rows non-decreasing
        seg = (p_q[None, :] >= P[:, p_scale]).sum(axis=0)
        total = 0.0
        for i in range(entries):
            mask = seg == i
            key = mask.tobytes()
            if key not in memo:
                sub = err[:, :, mask]
                memo[key] = 0.0 if not mask.any() else float((sub.sum(-1) if metric == "mse" else sub.max(-1)).min())
            total = total + memo[key] if metric == "mse" else max(total, memo[key])
        best = min(best, total)
    return best


def small(func, lo, hi, **dp_fields):
    return get_function(func).with_domain((lo, hi)), PWLDatapath(**dp_fields)


# (function, domain, scales, entries, datapath fields, metric)
CASES = [
    ("gelu", (-1.0, 1.0), [0, 1, 2], 3, dict(in_bits=4, slope_bits=4, slope_frac=2, icpt_bits=4, icpt_frac=2), "mse"),
    ("exp", (-2.0, 0.0), [0, 1, 2], 4, dict(in_bits=4, slope_bits=4, slope_frac=3, icpt_bits=4, icpt_frac=3), "mse"),
    ("silu", (-1.0, 1.5), [1, 2], 4, dict(in_bits=4, slope_bits=3, slope_frac=1, icpt_bits=4, icpt_frac=2), "mse"),
    ("tanh", (-1.0, 1.0), [-1, 0, 1], 3, dict(in_bits=4, slope_bits=4, slope_frac=3, icpt_bits=4, icpt_frac=3),
     "mse"),
    ("hswish", (-1.0, 1.0), [0, 1, 2], 3, dict(in_bits=4, slope_bits=4, slope_frac=2, icpt_bits=4, icpt_frac=2),
     "max_abs"),
    ("sigmoid", (-2.0, 2.0), [0, 1], 4, dict(in_bits=4, slope_bits=3, slope_frac=2, icpt_bits=4, icpt_frac=3),
     "max_abs"),
    ("gelu", (-1.0, 1.0), [0, 1, 2], 3, dict(in_bits=4, slope_bits=4, slope_frac=2, icpt_bits=4, icpt_frac=2,
                                             out_bits=8, out_frac=3), "mse"),
    ("exp", (-2.0, 0.0), [0, 2], 3, dict(in_bits=4, slope_bits=4, slope_frac=3, icpt_bits=4, icpt_frac=3,
                                         out_bits=8, out_frac=2, out_rounding="floor"), "mse"),
    ("tanh", (-1.0, 1.0), [0, 1, 2], 3, dict(in_bits=4, slope_bits=4, slope_frac=3, icpt_bits=4, icpt_frac=3,
                                             out_bits=8, out_frac=3, out_rounding="half_away"), "max_abs"),
    # coarse outputs (out_frac below the accumulator's): where the output rounding's allowance
    # (dmax, half an output LSB) decides which slopes and intercepts the bounds may skip (found by
    # searching random datapaths for ones where half that allowance loses the optimum)
    ("silu", (-1.5, 2.0), [0, 1], 3, dict(in_bits=4, slope_bits=3, slope_frac=2, icpt_bits=3, icpt_frac=1,
                                          out_bits=9, out_frac=1, out_rounding="half_away"), "max_abs"),
    ("exp", (-1.5, 1.0), [1, 2], 4, dict(in_bits=4, slope_bits=5, slope_frac=1, icpt_bits=3, icpt_frac=3,
                                         out_bits=7, out_frac=2, out_rounding="half_up"), "mse"),
    # outputs one bit coarser than the accumulator (a one-bit rounding shift also rounds)
    ("exp", (-1.0, 1.5), [1], 4, dict(in_bits=4, slope_bits=5, slope_frac=3, icpt_bits=5, icpt_frac=0,
                                      out_bits=10, out_frac=3, out_rounding="half_up"), "max_abs"),
    ("hswish", (-1.5, 1.5), [0, 1], 2, dict(in_bits=4, slope_bits=4, slope_frac=3, icpt_bits=5, icpt_frac=0,
                                            out_bits=10, out_frac=3, out_rounding="half_up"), "mse"),
    # a segment whose best slope code lies two below the rounded least-squares slope: the MSE scan
    # walks down one code at a time (found by searching random datapaths with the scan stepping by 2)
    ("sigmoid", (-1.5, 1.5), [2], 2, dict(in_bits=4, slope_bits=5, slope_frac=2, icpt_bits=5, icpt_frac=0,
                                          out_bits=11, out_frac=2, out_rounding="half_away"), "mse"),
    # the same for the max |err| scan outward from the half-range's minimiser
    ("tanh", (1.0, 4.0), [-1, 0], 3, dict(in_bits=4, slope_bits=3, slope_frac=3, icpt_bits=3, icpt_frac=0),
     "max_abs"),
    # an output 16x coarser than the intercept: the best intercept code lies two below the rounded
    # real one (the intercept scan walks down one code at a time)
    ("exp", (1.0, 3.5), [1], 3, dict(in_bits=4, slope_bits=5, slope_frac=0, icpt_bits=6, icpt_frac=3,
                                     out_bits=6, out_frac=-1, out_rounding="half_even"), "mse"),
    # floor: the allowance is a whole output LSB (without it these lose their optimum)
    ("tanh", (-1.5, 2.0), [0, 1], 4, dict(in_bits=4, slope_bits=3, slope_frac=3, icpt_bits=4, icpt_frac=3,
                                          out_bits=10, out_frac=2, out_rounding="floor"), "max_abs"),
    ("tanh", (-2.0, 1.0), [0, 1], 2, dict(in_bits=4, slope_bits=4, slope_frac=1, icpt_bits=4, icpt_frac=2,
                                          out_bits=6, out_frac=0, out_rounding="floor"), "mse"),
]


@pytest.mark.parametrize("rule", ["ge", "gt"])
@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{c[0]}-{c[5]}-{i}" for i, c in enumerate(CASES)])
def test_exact_equals_brute_force(case, rule):
    func, dom, scales, entries, fields, metric = CASES[case]
    fn, dp = small(func, *dom, **fields, segment_rule=rule)
    obj = Objective(fn, entries, dp, scales, metric=metric)
    res = exact_optimum(obj)
    assert res.value == pytest.approx(brute_force(fn, entries, dp, scales, metric), rel=1e-9, abs=1e-15)


def test_exact_equals_brute_force_with_histogram_weights():
    fn, dp = small("gelu", -1.0, 1.0, in_bits=4, slope_bits=4, slope_frac=2, icpt_bits=4, icpt_frac=2)
    rng = np.random.default_rng(5)
    weights = {e: rng.integers(0, 5, 16).astype(float) for e in (0, 1, 2)}
    obj = Objective(fn, 3, dp, [0, 1, 2], weights=weights)
    res = exact_optimum(obj)
    assert res.value == pytest.approx(brute_force(fn, 3, dp, [0, 1, 2], weights=weights), rel=1e-9, abs=1e-15)
    table = gqa_lut.search(fn, 3, "exact", datapath=dp, scales=[0, 1, 2], weights=weights)
    assert table.error(weights=weights).mean_mse == pytest.approx(res.value, rel=1e-9, abs=1e-15)


FUNCS = ["gelu", "exp", "silu", "tanh", "sigmoid", "hswish", "softplus"]


@settings(max_examples=int(os.environ.get("GQA_HYPOTHESIS_EXAMPLES", "25")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(func=st.sampled_from(FUNCS), lo=st.integers(-6, 2), width=st.integers(2, 6), e0=st.integers(-1, 2),
       n_scales=st.integers(1, 3), entries=st.integers(2, 4), sb=st.integers(2, 4), sf=st.integers(0, 3),
       ib=st.integers(2, 5), bf=st.integers(0, 3), metric=st.sampled_from(["mse", "max_abs"]),
       out=st.sampled_from([None, (10, 3, "half_even"), (10, 2, "floor"), (12, 4, "half_up")]),
       rule=st.sampled_from(["ge", "gt"]))
def test_exact_equals_brute_force_hypothesis(func, lo, width, e0, n_scales, entries, sb, sf, ib, bf, metric, out,
                                             rule):
    fields = dict(in_bits=4, slope_bits=sb, slope_frac=sf, icpt_bits=ib, icpt_frac=bf, segment_rule=rule)
    if out is not None:
        fields.update(out_bits=out[0], out_frac=out[1], out_rounding=out[2])
    fn, dp = small(func, lo * 0.5, (lo + width) * 0.5, **fields)
    scales = list(range(e0, e0 + n_scales))
    try:
        obj = Objective(fn, entries, dp, scales, metric=metric)
    except GQAError as exc:  # a scale without a code in the domain: not a problem to solve
        assume(exc.field != "scales")
        raise
    try:
        res = exact_optimum(obj)
    except ExactUnavailable as exc:  # an output that can saturate is refused, never solved wrongly
        assert exc.field == "out_bits"
        assume(False)
    assert res.value == pytest.approx(brute_force(fn, entries, dp, scales, metric), rel=1e-9, abs=1e-14)
    table, _ = exact_table(obj)
    assert objective_value(obj, table) == pytest.approx(res.value, rel=1e-9, abs=1e-14)


@pytest.mark.parametrize("func, entries, e", [("gelu", 8, 3), ("exp", 8, 5), ("hswish", 4, 0), ("rsqrt", 8, 4),
                                              ("gelu", 16, 6), ("silu", 5, 2)])
def test_exact_with_one_scale_equals_the_per_scale_optimum(func, entries, e):
    fn, dp = get_function(func), PWLDatapath()
    _, mse = dp_optimum(fn, entries, dp, e)
    res = exact_optimum(Objective(fn, entries, dp, [e]))
    assert res.value == pytest.approx(mse, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("func, entries, metric, fields", [
    ("gelu", 8, "mse", {}), ("exp", 16, "mse", {}), ("rsqrt", 8, "max_abs", {}),
    ("hswish", 8, "mse", dict(out_bits=16, out_frac=8)), ("reciprocal", 4, "max_abs", dict(out_bits=12, out_frac=6)),
])
def test_the_tables_error_is_the_reported_optimum(func, entries, metric, fields):
    scales = range(6) if func == "rsqrt" else range(7)
    table = gqa_lut.search(func, entries, "exact", metric=metric, scales=scales, **fields)
    err = table.error()
    got = err.mean_mse if metric == "mse" else err.max_max_abs
    opt = table.provenance["optimum"]
    assert opt["status"] == "exact" and opt["metric"] == metric
    assert got == pytest.approx(opt["value"], rel=1e-9)
    assert opt["gap"] == pytest.approx(0.0, abs=1e-9)
    # the candidate count respects its bound, and no other method beats the optimum
    assert opt["candidates"] <= 1 + sum(scale_points(table.domain, e, table.datapath).size for e in table.scales)
    for method in ("dp", "uniform"):
        other = gqa_lut.search(func, entries, method, metric=metric, scales=scales, **fields).error()
        assert (other.mean_mse if metric == "mse" else other.max_max_abs) >= got * (1 - 1e-9)


@pytest.mark.parametrize("func, domain, scales", [("gelu", (-1.0, 1.0), [-1, 0]), ("gelu", (-4.0, 4.0), range(7)),
                                                   ("exp", (-3.0, 0.0), [0, 2, 3]), ("tanh", (-2.0, 1.5), [1, 3]),
                                                   ("gelu", (-4.0, 4.0), [-2, 0])])
def test_candidates_are_complete_and_represented(func, domain, scales):
    fn = get_function(func).with_domain(domain)
    dp = PWLDatapath(in_bits=6)
    obj = Objective(fn, 4, dp, scales)
    cand = candidates(obj)
    assert cand.reals.size <= candidate_bound(obj)
    assert np.all(np.diff(cand.reals) > 0)
    q_lo, top = obj.q_lo, obj.q_lo + obj.n

    def clipped(p):
        return np.stack([np.clip(segment_starts(dp, p, e), q_lo[s], top[s]) for s, e in enumerate(obj.scales)], 1)

    # each representative has its candidate's behaviour, and candidates are distinct and ordered
    assert np.array_equal(clipped(cand.reals), cand.starts)
    assert np.all(np.any(np.diff(cand.starts, axis=0) > 0, axis=1)) and np.all(np.diff(cand.starts, axis=0) >= 0)
    # every breakpoint on a grid 8 times finer, and far outside, behaves like some candidate
    step = 2.0 ** -(max(obj.scales) + 4)
    far = 2.0 ** -min(obj.scales) + 3  # past the coarsest input step beyond each end
    p = np.arange(math.floor((domain[0] - far) / step), math.ceil((domain[1] + far) / step)) * step
    seen = {r.tobytes() for r in cand.starts}
    assert all(r.tobytes() in seen for r in clipped(p))
    # the representative: a breakpoint in the domain when its behaviour has one there, then the
    # coarsest dyadic (fewest fraction bits), then the smallest magnitude (on that grid)
    def coarseness(x):  # 2-adic valuation of x / step
        t = int(round(x / step))
        return math.inf if t == 0 else (t & -t).bit_length() - 1

    behaviour = clipped(p)
    for rep, row in zip(cand.reals, cand.starts):
        same = p[np.all(behaviour == row, axis=1)]
        inside = same[(same >= domain[0]) & (same <= domain[1])]
        if inside.size:
            assert domain[0] <= rep <= domain[1]
            best = max(coarseness(x) for x in inside)
            assert coarseness(rep) == best
            assert abs(rep) == min(abs(x) for x in inside if coarseness(x) == best)


def test_a_cell_only_a_midpoint_reaches_is_a_candidate():
    # scales {-1, 0}: p = 1 gives (0, 1), p = 1.5 gives (1, 2); only (1, 1.5) gives (1, 1)
    fn = get_function("gelu").with_domain((-4.0, 4.0))
    obj = Objective(fn, 3, PWLDatapath(in_bits=6), [-1, 0])
    cand = candidates(obj)
    row = [i for i, r in enumerate(cand.starts) if list(r) == [1, 1]]
    assert len(row) == 1 and 1.0 < cand.reals[row[0]] < 1.5


def test_exact_is_never_worse_than_the_ga_and_the_ga_keeps_it():
    ga = gqa_lut.search("gelu", 8, "ga", population=20, generations=20, progress=False)
    ex = gqa_lut.search("gelu", 8, "exact")
    assert ex.error().mean_mse <= ga.error().mean_mse * (1 + 1e-12)
    assert ga.provenance["optimum"]["status"] == "exact"
    assert ga.provenance["optimum"]["value"] == pytest.approx(ex.error().mean_mse, rel=1e-9)
    assert ga.provenance["optimum"]["gap"] >= -1e-9


def test_too_large_raises_and_the_lower_bound_is_certified():
    fn, dp = get_function("gelu"), PWLDatapath()
    obj = Objective(fn, 6, dp, range(5))
    with pytest.raises(ExactTooLarge) as exc:
        exact_optimum(obj, max_candidates=100)
    assert exc.value.field == "max_candidates"
    m, pairs = map(int, re.search(r"needs (\d+) breakpoint candidates \((\d+) segment costs\)", str(exc.value)).groups())
    assert m == candidates(obj).reals.size and pairs == m * (m - 1) // 2  # segments [a, b) over m candidates
    # past 4x the limit the (nearly tight) bound decides, without enumerating the candidates
    bound = candidate_bound(obj)
    with pytest.raises(ExactTooLarge) as exc:
        exact_optimum(obj, max_candidates=(bound - 1) // 4)
    assert f"needs up to {bound} breakpoint candidates" in str(exc.value)
    m4 = -(-bound // 4)                    # the bound within 4x the limit: the candidates are counted
    assert 3 * m4 < bound
    with pytest.raises(ExactTooLarge) as exc:
        exact_optimum(obj, max_candidates=m4)
    assert f"needs {candidates(obj).reals.size} breakpoint candidates" in str(exc.value)
    opt = exact_optimum(obj).value
    lb = lower_bound(obj, max_candidates=100)
    assert 0 < lb["value"] <= opt * (1 + 1e-9)
    assert lb["exact_scales"] and len(lb["exact_scales"]) < 5
    L = len(lb["exact_scales"])      # the longest prefix of the scales that fits: one more does not
    assert lb["exact_scales"] == list(range(L))
    with pytest.raises(ExactTooLarge):
        exact_optimum(Objective(fn, 6, dp, range(L + 1)), max_candidates=100)
    # the GA falls back honestly: no exact optimum, a bound and a gap against it
    t = gqa_lut.search("gelu", 6, "ga", scales=range(5), population=10, generations=5, max_candidates=100,
                       progress=False)
    o = t.provenance["optimum"]
    assert o["status"] == "lower_bound" and o["value"] == pytest.approx(lb["value"])
    assert o["gap"] == pytest.approx(t.error().mean_mse / lb["value"] - 1)
    assert "max_candidates" in o["reason"]
    with pytest.raises(GQAError) as exc:
        gqa_lut.search("gelu", 6, "exact", scales=range(5), max_candidates=100)
    assert exc.value.field == "max_candidates"


def test_the_lower_bound_takes_one_scale_when_only_it_fits():
    """The exact prefix may be the first scale alone: a candidate limit between one scale's and
    two scales' candidate counts certifies scale 0 exactly and bounds the others separately."""
    fn, dp = get_function("gelu"), PWLDatapath()
    c0 = candidates(Objective(fn, 6, dp, [0])).reals.size
    assert candidates(Objective(fn, 6, dp, [0, 1])).reals.size > c0
    lb = lower_bound(Objective(fn, 6, dp, range(3)), max_candidates=c0)
    assert lb["exact_scales"] == [0] and sorted(lb["per_scale"]) == ["1", "2"]
    assert lb["subset_optimum"] == pytest.approx(exact_optimum(Objective(fn, 6, dp, [0])).value, rel=1e-12)


@pytest.mark.parametrize("entries", [4, 6])
def test_more_entries_than_segment_candidates_leave_empty_segments(entries):
    """A 4-bit input on [-1, 1] at scale 0 reaches 3 codes: 4 breakpoint candidates, at most 3
    non-empty segments. Six entries (allowed: the input has 16 codes) leave segments empty (from a
    candidate to itself, anywhere in the table) and the optimum still equals brute force."""
    fn, dp = small("gelu", -1.0, 1.0, in_bits=4, slope_bits=4, slope_frac=2, icpt_bits=4, icpt_frac=2)
    r = exact_optimum(Objective(fn, entries, dp, [0]))
    assert r.candidates == 4 and math.isfinite(r.value)
    assert r.value == pytest.approx(brute_force(fn, entries, dp, [0]), rel=1e-9, abs=1e-15)


def test_a_scale_out_of_reach_adds_nothing_to_the_lower_bound():
    # max |err| (no DP shortcut): with 2 candidates allowed no scale's own problem fits, so each
    # term is 0 and nothing is certified
    obj = Objective(get_function("gelu"), 4, PWLDatapath(), [0, 1], metric="max_abs")
    lb = lower_bound(obj, max_candidates=2)
    assert lb["exact_scales"] == [] and lb["per_scale"] == {"0": 0.0, "1": 0.0} and lb["value"] == 0.0


def test_lower_bound_without_any_exact_subset():
    # no scale alone fits 2 candidates: the bound is the mean of the per-scale optima (the DP's)
    fn, dp = get_function("gelu"), PWLDatapath()
    obj = Objective(fn, 6, dp, range(5))
    lb = lower_bound(obj, max_candidates=2)
    assert lb["exact_scales"] == [] and lb["subset_optimum"] == 0.0
    per = [dp_optimum(fn, 6, dp, e)[1] for e in range(5)]
    assert lb["value"] == pytest.approx(np.mean(per), rel=1e-12)
    assert lb["per_scale"] == {str(e): pytest.approx(v, rel=1e-12) for e, v in zip(range(5), per)}


def test_wide_inputs_say_so():
    obj = Objective(get_function("gelu"), 8, PWLDatapath(in_bits=12), range(11))
    with pytest.raises(ExactTooLarge) as exc:
        exact_optimum(obj)
    assert "candidates" in str(exc.value)


def grid_positions(domain, e: int) -> int:
    """The breakpoint grid of one scale ``e`` (candidates' docstring): steps of 2**-(e+1) from
    lo - reach to hi + reach (reach 2**-e, the input step), one cell more each side, a grid point
    and a midpoint per cell."""
    u, reach = 2.0 ** -(e + 1), 2.0 ** -e
    return 2 * (round((domain[1] - domain[0] + 2 * reach) / u) + 2)


def test_a_grid_past_the_position_limit_says_so():
    # at e = 18 the breakpoint grid 2**-19 over gelu's [-4, 4] (plus one input step each side) has
    # just over 2**23 positions: refused before anything that large is allocated
    fn = get_function("gelu")
    with pytest.raises(ExactTooLarge) as exc:
        candidates(Objective(fn, 4, PWLDatapath(), [18]))
    assert exc.value.field == "scales" and "the breakpoint grid 2**-19 over the domain" in str(exc.value)
    n = int(re.search(r"has (\d+) positions", str(exc.value)).group(1))
    assert n == grid_positions(fn.domain, 18)
    assert MAX_POSITIONS == 2**23 < n < 2**24


def test_the_position_limit_is_inclusive(monkeypatch):
    """A grid of exactly MAX_POSITIONS positions is built; one position fewer allowed refuses it."""
    import gqa_lut.exact as exact

    obj = Objective(get_function("gelu"), 4, PWLDatapath(), [3])
    n = grid_positions(obj.fn.domain, 3)
    monkeypatch.setattr(exact, "MAX_POSITIONS", n)
    assert len(candidates(obj).reals) > 0
    monkeypatch.setattr(exact, "MAX_POSITIONS", n - 1)
    with pytest.raises(ExactTooLarge):
        candidates(obj)


def saturating_codes(fn, dp, scales) -> bool:
    """Whether some slope, intercept and input code of the domain saturate the unit's output: every
    combination through intsim's output stage, against the same stage 16 bits wider."""
    wide = dataclasses.replace(dp, out_bits=dp.out_bits + 16)
    kf, bf = dp.slope_format, dp.icpt_format
    K = np.arange(kf.min_int, kf.max_int + 1)[:, None, None]
    B = np.arange(bf.min_int, bf.max_int + 1)[None, :, None]
    for e in scales:
        q = scale_points(fn.domain, e, dp)
        acc = ((K * q) << dp.slope_shift(e)) + (B << dp.icpt_shift(e))
        if np.any(pwl_output(acc, e, dp) != pwl_output(acc, e, wide)):
            return True
    return False


# each saturates through one code the check must count: the slope format's most negative code
# ((-8)(-8) + 1 = 65 > 63), or the intercept's (-2*3 - 8*8 = -70 < -64: intercept LSB 8 output LSBs)
@pytest.mark.parametrize("domain, fields", [
    ((-8.0, 7.0), dict(in_bits=4, slope_bits=4, slope_frac=0, icpt_bits=2, icpt_frac=0, out_bits=7, out_frac=0)),
    ((-3.0, 3.0), dict(in_bits=4, slope_bits=2, slope_frac=3, icpt_bits=4, icpt_frac=0, out_bits=7, out_frac=3)),
])
def test_saturation_through_the_most_negative_code_is_refused(domain, fields):
    fn, dp = small("gelu", *domain, **fields)
    assert saturating_codes(fn, dp, [0])
    with pytest.raises(ExactUnavailable) as exc:
        exact_optimum(Objective(fn, 2, dp, [0]))
    assert exc.value.field == "out_bits"
    fn, dp = small("gelu", *domain, **{**fields, "out_bits": 8})  # one bit wider: no code saturates
    assert not saturating_codes(fn, dp, [0]) and _no_saturation(Objective(fn, 2, dp, [0]))


def test_the_saturation_bound_is_tight_on_the_larger_end_of_the_inputs():
    # codes -3..7: the largest |q| is the top code, 7, so no product passes 8 * 7 = 56, and 56 + 2 + 1
    # rounding LSB fits a 7-bit output (63): accepted (counting one code more, 8 * 8 + 3 > 63, is not)
    fn, dp = small("gelu", -3.0, 7.0, in_bits=4, slope_bits=4, slope_frac=0, icpt_bits=2, icpt_frac=0, out_bits=7,
                   out_frac=0)
    assert _no_saturation(Objective(fn, 2, dp, [0])) and not saturating_codes(fn, dp, [0])
    assert exact_optimum(Objective(fn, 2, dp, [0])).value >= 0
    # a datapath that saturates and that a bound one code short of the top one would accept (found
    # by searching random datapaths): the check counts the top code itself
    fn, dp = small("gelu", -2.0, 8.0, in_bits=4, slope_bits=3, slope_frac=-1, icpt_bits=4, icpt_frac=4, out_bits=8,
                   out_frac=1, out_rounding="floor")
    assert saturating_codes(fn, dp, [-1]) and not _no_saturation(Objective(fn, 2, dp, [-1]))


@pytest.mark.parametrize("domain, scale, fields", [
    ((-3.5, 0.5), 2, dict(in_bits=5, slope_bits=2, slope_frac=0, icpt_bits=3, icpt_frac=4, out_bits=3, out_frac=-1,
                          out_rounding="half_up")),
    ((-3.5, 0.0), 1, dict(in_bits=4, slope_bits=5, slope_frac=4, icpt_bits=4, icpt_frac=1, out_bits=3, out_frac=-1,
                          out_rounding="half_even")),
])
def test_the_saturation_bound_allows_for_the_output_rounding(domain, scale, fields):
    # the largest accumulator's floor is exactly the output's largest code, and rounding takes some
    # code one higher (found by searching random datapaths for bounds that are met with equality)
    fn, dp = small("tanh", *domain, **fields)
    assert saturating_codes(fn, dp, [scale])
    assert not _no_saturation(Objective(fn, 2, dp, [scale]))


def test_segment_costs_of_an_exact_line_are_zero_not_negative():
    # hswish is the identity on [3, 7]: every segment fits exactly, and the closed-form SSE's float
    # cancellation (about -9e-16 here) is clipped, so no cost and no optimum is below zero
    obj = Objective(get_function("hswish").with_domain((3.0, 7.0)), 2, PWLDatapath(), [0])
    c = ExactProblem(obj).costs(relaxed=True)
    assert c[np.triu_indices_from(c, 1)].min() == 0.0
    assert exact_optimum(obj).value == 0.0


@pytest.mark.parametrize("out", [{}, dict(out_bits=8, out_frac=2)])
def test_a_weightless_segment_gets_the_zero_line(out):
    # histogram weights zero on every code of gelu at e = 0 above 1.0: a segment there costs 0 and
    # gets K = B = 0, the convention of gqa_lut.fitting (any line is optimal there), with or without
    # an output stage; max |err| takes no weights, so there the segment keeps its error
    fn, dp = small("gelu", -2.0, 4.0, in_bits=4, slope_bits=4, slope_frac=2, icpt_bits=4, icpt_frac=2, **out)
    q = np.arange(dp.code_min, dp.code_max + 1)
    probs = {m: ExactProblem(Objective(fn, 3, dp, [0], weights={0: (q <= 1).astype(float)}, metric=m))
             for m in ("mse", "max_abs")}
    prob = probs["mse"]
    starts = prob.cand.starts[:, 0]
    a, b = int(np.searchsorted(starts, 2)), prob.size - 1     # the segment from code 2 up
    assert starts[a] == 2 and starts[b] > starts[a]
    assert prob.segment(a, b) == (0, 0, 0.0)
    unweighted = ExactProblem(Objective(fn, 3, dp, [0], metric="max_abs")).segment(a, b)
    assert probs["max_abs"].segment(a, b) == unweighted and unweighted[2] > 0


def test_one_scale_meets_the_candidate_bound():
    # one scale: the clipped start takes each of its n + 1 values once, so the bound is exact
    for e in (0, 2):
        obj = Objective(get_function("gelu"), 4, PWLDatapath(in_bits=6), [e])
        assert candidates(obj).reals.size == candidate_bound(obj) == 1 + scale_points((-4.0, 4.0), e, obj.dp).size


def test_a_time_limit_too_short_says_how_much_was_asked():
    obj = Objective(get_function("gelu"), 4, PWLDatapath(), range(3))
    with pytest.raises(ExactTooLarge) as exc:
        exact_optimum(obj, time_limit=1e-9)   # any machine takes longer than a nanosecond
    assert exc.value.field == "time_limit"
    pairs, m = map(int, re.search(r"the (\d+) segment costs of (\d+) candidates", str(exc.value)).groups())
    assert m == candidates(obj).reals.size and pairs == m * (m - 1) // 2


@pytest.mark.parametrize("metric, fields", [("max_abs", {}), ("mse", dict(out_bits=10, out_frac=5))])
def test_the_fast_optimum_caps_the_exact_costs(monkeypatch, metric, fields):
    """Rounded outputs or max |err|: the full-precision MSE optimum is a feasible table, so its
    error caps every segment of an optimal one; costs above the cap are never computed (inf), and
    the optimum is unchanged (brute force)."""
    import gqa_lut.exact as ex

    fn, dp = small("gelu", -1.0, 1.0, in_bits=4, slope_bits=4, slope_frac=2, icpt_bits=4, icpt_frac=2, **fields)
    solved = []
    solve = ex.ExactProblem.solve
    monkeypatch.setattr(ex.ExactProblem, "solve", lambda self, cost, *a, **k: solved.append(cost) or
                        solve(self, cost, *a, **k))
    res = exact_optimum(Objective(fn, 3, dp, [0, 1, 2], metric=metric))
    assert len(solved) == 2 and not np.isinf(solved[0]).any()      # the relaxed pass, then the capped one
    assert np.isinf(solved[1][np.triu_indices_from(solved[1], 1)]).mean() > 0.1   # 14-20% here
    assert res.value == pytest.approx(brute_force(fn, 3, dp, [0, 1, 2], metric), rel=1e-9, abs=1e-15)
    solved.clear()                                                 # MSE at full precision: the fast pass is exact
    exact_optimum(Objective(fn, 3, dataclasses.replace(dp, out_bits=None, out_frac=None), [0, 1, 2]))
    assert len(solved) == 1 and not np.isinf(solved[0]).any()


def test_an_exact_tables_provenance():
    obj = Objective(get_function("gelu"), 4, PWLDatapath(), [0, 1])
    table, res = exact_table(obj, {"search": "kept"})
    assert table.provenance["search"] == "kept"
    assert table.provenance["coefficients"] == {"method": "exact", "refine": "exact", "clipped": 0}
    assert objective_value(obj, table) == pytest.approx(res.value, rel=1e-12)


def test_two_adic_valuation():
    t = np.array([0, 1, -1, 2, -4, 12, -12, 1 << 40, 3])
    with np.errstate(all="raise"):  # no log2(0) behind the mask
        v = _two_adic(t)
    assert v.tolist() == [64, 0, 0, 1, 2, 2, 2, 40, 0]


def test_gap():
    assert gap(3.0, 2.0) == 0.5 and gap(2.0, 2.0) == 0.0
    assert gap(0.0, 0.0) == 0.0  # both zero: no gap
    assert gap(1e-9, 0.0) is None  # a nonzero value over a zero optimum: no finite ratio


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(3, 5), st.integers(2, 5), st.integers(0, 3), st.integers(2, 5), st.integers(0, 3),
       st.integers(2, 9), st.integers(-1, 4), st.sampled_from(["half_even", "half_away", "half_up", "floor"]),
       st.lists(st.integers(-1, 2), min_size=1, max_size=2, unique=True))
def test_an_accepted_output_never_saturates(in_bits, slope_bits, slope_frac, icpt_bits, icpt_frac, out_bits,
                                             out_frac, rounding, scales):
    """The saturation check is sound: when it lets the exact search run, no code combination saturates."""
    fn, dp = small("tanh", -2.0, 2.0, in_bits=in_bits, slope_bits=slope_bits, slope_frac=slope_frac,
                   icpt_bits=icpt_bits, icpt_frac=icpt_frac, out_bits=out_bits, out_frac=out_frac,
                   out_rounding=rounding)
    obj = Objective(fn, 2, dp, scales)
    if _no_saturation(obj):
        assert not saturating_codes(fn, dp, obj.scales)


def test_a_saturating_output_is_refused():
    fn, dp = small("gelu", -1.0, 1.0, in_bits=4, slope_bits=4, slope_frac=2, icpt_bits=4, icpt_frac=2,
                   out_bits=4, out_frac=2)
    with pytest.raises(ExactUnavailable) as exc:
        exact_optimum(Objective(fn, 3, dp, [0, 1]))
    assert exc.value.field == "out_bits"


@pytest.mark.parametrize("kw, field", [(dict(max_candidates=1), "max_candidates"),
                                       (dict(max_candidates=2.5), "max_candidates"),
                                       (dict(time_limit=0), "time_limit"), (dict(time_limit="1"), "time_limit")])
def test_bad_limits(kw, field):
    with pytest.raises(GQAError) as exc:
        exact_optimum(Objective(get_function("gelu"), 4, PWLDatapath(), [0]), **kw)
    assert exc.value.field == field and "must be" in str(exc.value)     # refused before the search runs


def brute_segment_costs(fn, dp, scales, starts, metric="mse", slope_codes=None, icpt_codes=None):
    """Every segment's cost between candidate rows ``starts`` (M, S) by brute force: the best over every
    ``(K, B)`` code pair, each through intsim's accumulator and output stage, on the codes
    ``[starts[a, s], starts[b, s])`` of each scale (unweighted: ``1/(S n_e)`` per code)."""
    kf, bf = dp.slope_format, dp.icpt_format
    K = np.arange(kf.min_int, kf.max_int + 1) if slope_codes is None else np.asarray(slope_codes, np.int64)
    B = np.arange(bf.min_int, bf.max_int + 1) if icpt_codes is None else np.asarray(icpt_codes, np.int64)
    per = []
    for e in scales:
        q = scale_points(fn.domain, e, dp)
        acc = (K[:, None, None] * q << dp.slope_shift(e)) + (B[None, :, None] << dp.icpt_shift(e))
        out = pwl_output(acc.reshape(-1, q.size), e, dp).reshape(acc.shape)
        frac = dp.acc_frac(e) if dp.out_bits is None else dp.out_frac
        d = out * 2.0**-frac - fn(q * 2.0**-e)
        per.append((q[0], d * d / q.size / len(scales) if metric == "mse" else np.abs(d)))
    M = starts.shape[0]
    cost = np.zeros((M, M))
    for a in range(M):
        for b in range(a + 1, M):
            err = np.concatenate([e[:, :, starts[a, s] - q0:starts[b, s] - q0] for s, (q0, e) in enumerate(per)], axis=2)
            cost[a, b] = (err.sum(-1) if metric == "mse" else err.max(-1)).min()
    return cost


def exponent_codes(bits, lo, hi):
    """The wide codes a per-segment exponent format reaches: every ``bits``-bit code shifted by 0..hi-lo."""
    narrow = np.arange(-(1 << (bits - 1)), 1 << (bits - 1))
    return np.unique(np.concatenate([narrow << (hi - f) for f in range(lo, hi + 1)]))


# (function, domain, scales, metric, datapath fields, per-segment exponents (slope bits, fracs, icpt bits, fracs)
# or None); each found by searching random problems for segment costs that a mutant of a scan changes
SEGMENT_CASES = [
    # one-x segments far from the prefix sums' origin: the exact one-x statistics (without them the
    # prefix differences leave ~1e-14 of noise in costs near 1e-9)
    ("sigmoid", (-2.5, 0.0), [2, 3], "mse", dict(in_bits=6, slope_bits=4, slope_frac=-1, icpt_bits=7, icpt_frac=5,
                                                 segment_rule="gt"), None),
    # three scales, a segment empty at two of them: only the non-empty scales' codes give its x range
    ("sigmoid", (0.0, 1.0), [-1, 0, 1], "mse", dict(in_bits=4, slope_bits=5, slope_frac=1, icpt_bits=3, icpt_frac=3),
     None),
    # rounded outputs, MSE: the intercept scan's bound (the squared norm of the line minus f)
    ("gelu", (-0.5, 1.5), [0], "mse", dict(in_bits=4, slope_bits=2, slope_frac=1, icpt_bits=2, icpt_frac=-1,
                                            out_bits=8, out_frac=3, out_rounding="half_even"), None),
    # the intercept scan upward from the rounded real minimiser, downward from the code below it
    ("hswish", (-2.0, -0.5), [0], "mse", dict(in_bits=4, slope_bits=2, slope_frac=0, icpt_bits=3, icpt_frac=4,
                                               out_bits=11, out_frac=0, out_rounding="floor"), None),
    # several formats: a later format's slope scan starts from its own rounded optimum, with the best of
    # the earlier formats as the bound to beat
    ("gelu", (1.0, 2.0), [0], "mse", dict(in_bits=4, out_bits=12, out_frac=4, out_rounding="half_up",
                                           segment_rule="gt"), (4, (1, 2), 4, (2, 2))),
    # several formats, max |err|: the outward scan starts at the half-range's integer minimiser
    ("gelu", (-0.5, 1.0), [1, 2], "max_abs", dict(in_bits=4), (3, (2, 4), 3, (2, 4))),
    # ... there the walk to that minimiser goes both ways, one code at a time, to the end (from a start
    # that is not the minimiser the scan can stop at the earlier formats' best before reaching it)
    ("exp", (-1.0, 1.5), [0, 1], "max_abs", dict(in_bits=4), (6, (2, 4), 5, (2, 3))),
    ("tanh", (-1.5, 0.5), [0, 1], "max_abs", dict(in_bits=4, segment_rule="gt"), (5, (3, 4), 3, (3, 4))),
    # floor: a whole output LSB of allowance
    ("exp", (-2.5, -0.5), [2], "max_abs", dict(in_bits=4, out_bits=8, out_frac=2, out_rounding="floor"),
     (4, (1, 3), 2, (2, 4))),
]


@pytest.mark.parametrize("case", range(len(SEGMENT_CASES)),
                         ids=[f"{c[0]}-{c[3]}-{i}" for i, c in enumerate(SEGMENT_CASES)])
def test_segment_costs_equal_brute_force(case):
    """Every segment cost (module docstring, step 3: the minimum over every slope and intercept code) equals
    brute force over every code pair, with one coefficient format or several (per-segment exponents)."""
    from gqa_lut.segexp import SegmentExponents

    func, domain, scales, metric, fields, spec = SEGMENT_CASES[case]
    fn = get_function(func).with_domain(domain)
    formats, codes = None, {}
    if spec is None:
        dp = PWLDatapath(**fields)
    else:
        fmt = SegmentExponents(*spec)
        dp, formats = fmt.wide_datapath(**fields), fmt.formats()
        codes = dict(slope_codes=exponent_codes(spec[0], *spec[1]), icpt_codes=exponent_codes(spec[2], *spec[3]))
    obj = Objective(fn, 3, dp, scales, metric=metric)
    prob = ExactProblem(obj, formats=formats)
    cost = prob.costs()
    ref = brute_segment_costs(fn, dp, obj.scales, prob.cand.starts, metric, **codes)
    iu = np.triu_indices_from(cost, 1)
    assert cost[iu] == pytest.approx(ref[iu], rel=1e-9, abs=1e-15)


def test_the_default_candidate_limit_is_3000():
    """docs/datapath.md: the exact search takes up to 3000 breakpoint candidates by default. One scale with
    n codes in the domain has n + 1 candidates: 2999 codes fit the default, 3000 do not."""
    import inspect

    dp = PWLDatapath(in_bits=12)
    fits = Objective(get_function("gelu").with_domain((-1000.0, 1998.0)), 4, dp, [0])
    assert ExactProblem(fits).size == 3000
    with pytest.raises(ExactTooLarge) as exc:
        ExactProblem(Objective(get_function("gelu").with_domain((-1000.0, 1999.0)), 4, dp, [0]))
    assert exc.value.field == "max_candidates" and "needs 3001 breakpoint candidates" in str(exc.value)
    for f in (exact_optimum, exact_table, lower_bound, gqa_lut.search):
        assert inspect.signature(f).parameters["max_candidates"].default == 3000


@pytest.mark.parametrize("domain, scales", [((-1.0, 0.9), [0, 1]), ((-2.0, 1.9), [0, 1, 2])])
def test_candidates_of_a_domain_ending_between_grid_points(domain, scales):
    """A domain whose top end is no grid point: the top candidate's behaviour (every scale past its last
    code) is reached inside the domain (0.75 and 0.875 for [-1, 0.9] at scales 0, 1), so its
    representative is in the domain, not the coarser 1.0 just past its end."""
    test_candidates_are_complete_and_represented("gelu", domain, scales)
    cand = candidates(Objective(get_function("gelu").with_domain(domain), 3, PWLDatapath(in_bits=6), scales))
    assert cand.reals[-1] <= domain[1]


@pytest.mark.parametrize("metric", ["mse", "max_abs"])
@pytest.mark.parametrize("out", [{}, dict(out_bits=10, out_frac=3)])
def test_segment_costs_are_zero_on_the_diagonal(metric, out):
    """``costs``: the segment from a candidate to itself holds no code and costs 0 (the DP's empty
    segment), for both metrics, with and without an output stage."""
    fn, dp = small("gelu", -1.0, 1.0, in_bits=4, slope_bits=4, slope_frac=2, icpt_bits=4, icpt_frac=2, **out)
    cost = ExactProblem(Objective(fn, 3, dp, [0, 1], metric=metric)).costs()
    assert np.array_equal(np.diag(cost), np.zeros(cost.shape[0]))
    assert np.all(cost[np.triu_indices_from(cost, 1)] >= 0)


def test_the_relaxed_costs_are_the_full_precision_mse_ones():
    """``relaxed``: full-precision output and the MSE metric (the fast pass that caps the exact one): the
    relaxed costs of a max |err| problem with rounded outputs are the costs of the same problem as MSE
    without an output stage."""
    fn, dp = small("tanh", -1.0, 1.0, in_bits=4, slope_bits=4, slope_frac=3, icpt_bits=4, icpt_frac=3, out_bits=8,
                   out_frac=3, out_rounding="half_away")
    prob = ExactProblem(Objective(fn, 3, dp, [0, 1, 2], metric="max_abs"))
    plain = ExactProblem(Objective(fn, 3, dataclasses.replace(dp, out_bits=None, out_frac=None), [0, 1, 2]))
    assert np.array_equal(prob.cand.starts, plain.cand.starts)
    assert np.array_equal(prob.costs(relaxed=True), plain.costs())
    assert not np.array_equal(prob.costs(), plain.costs())
    a, b = 0, prob.size - 1
    assert prob.segment(a, b, relaxed=True) == plain.segment(a, b)


def test_the_cost_time_limit_counts_from_its_start(monkeypatch):
    """``costs(time_limit, t0)``: the clock starts at ``t0`` (the exact search's own start), or at the call
    without one. A fake clock (1 ms per reading), so nothing depends on the machine's speed."""
    import gqa_lut.exact as exact_mod

    now = [1000.0]

    def clock():
        now[0] += 1e-3
        return now[0]

    monkeypatch.setattr(exact_mod.time, "perf_counter", clock)
    prob = ExactProblem(Objective(get_function("gelu"), 4, PWLDatapath(), [0]))
    with pytest.raises(ExactTooLarge) as exc:
        prob.costs(time_limit=1e-6)                                   # from the call: the first check is past it
    assert exc.value.field == "time_limit"
    with pytest.raises(ExactTooLarge):
        prob.costs(time_limit=60.0, t0=now[0] - 3600.0)               # a search that started an hour ago
    assert prob.costs(time_limit=60.0).shape == (prob.size, prob.size)   # far fewer than 60,000 readings


def test_the_lower_bound_takes_the_longest_prefix_that_fits():
    """With three scales and a limit that two coarsest scales fit but three do not, the exact prefix is the
    first two scales (not one): every prefix length is tried, longest first."""
    fn, dp = get_function("gelu"), PWLDatapath()
    c01 = candidates(Objective(fn, 6, dp, [0, 1])).reals.size
    assert candidates(Objective(fn, 6, dp, [0, 1, 2])).reals.size > c01
    lb = lower_bound(Objective(fn, 6, dp, range(3)), max_candidates=c01)
    assert lb["exact_scales"] == [0, 1] and sorted(lb["per_scale"]) == ["2"]
    assert lb["subset_optimum"] == pytest.approx(exact_optimum(Objective(fn, 6, dp, [0, 1])).value, rel=1e-12)
