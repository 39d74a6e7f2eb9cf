"""gqa_lut.objective: the search's fitness is the error of the table it returns.

The population-wide fitness is compared, individual by individual, with the error report of
``Objective.table(bp)`` (intsim's PWLTable, the simulator's path), for MSE, max |error| and
histogram-weighted MSE.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gqa_lut.objective import Objective
from intsim import GQAError
from intsim import PWLDatapath, get_function, scale_points

CONFIGS = {
    "gelu-8-default": ("gelu", 8, PWLDatapath(), tuple(range(7)), {}),
    "hswish-16-default": ("hswish", 16, PWLDatapath(), tuple(range(7)), {}),
    "exp-4-narrow": ("exp", 4, PWLDatapath(slope_bits=6, slope_frac=4, icpt_bits=7, icpt_frac=5), (1, 3, 5), {}),
    "silu-6-out8": ("silu", 6, PWLDatapath(out_bits=8, out_frac=5), (0, 2, 4, 6), {}),
    "gelu-8-norefine": ("gelu", 8, PWLDatapath(), tuple(range(7)), {"refine": False}),
    "gelu-8-chord": ("gelu", 8, PWLDatapath(), tuple(range(7)), {"coeffs": "chord"}),
    "rsqrt-8-wide": ("rsqrt", 8, PWLDatapath(slope_bits=9, icpt_bits=9), tuple(range(6)), {}),
}


def population(fn, entries, n, seed):
    lo, hi = fn.domain
    rng = np.random.default_rng(seed)
    pop = rng.uniform(lo, hi, (n, entries - 1))
    # a few individuals with breakpoints outside the domain or repeated
    pop[0, 0] = lo - 1.0
    pop[1, -1] = hi + 1.0
    pop[2, 1:3] = pop[2, 1]
    return pop


def has_single_x_segment(table) -> bool:
    """Whether some segment serves points (over all scales) that all share one real x."""
    xs = [set() for _ in range(table.entries)]
    for e in table.scales:
        q = scale_points(table.domain, e, table.datapath)
        seg = np.searchsorted(table.breakpoint_codes(e), q, side="right")
        for i, x in zip(seg, q * 2.0**-e):
            xs[i].add(float(x))
    return any(len(s) == 1 for s in xs)


def direct_weighted_mse(table, fn, weights) -> float:
    """Mean over scales of sum(h * err**2) / sum(h), unweighted where a scale has no histogram."""
    per_scale = []
    for e in table.scales:
        q = scale_points(table.domain, e, table.datapath)
        err = table.evaluate(q, e) - fn(q * 2.0**-e)
        h = np.asarray(weights[e], dtype=np.float64)[q - table.datapath.code_min] if e in weights else np.ones(q.size)
        per_scale.append(np.sum(h * err**2) / np.sum(h))
    return float(np.mean(per_scale))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fitness_equals_table_mean_mse(name):
    func, entries, dp, scales, opts = CONFIGS[name]
    fn = get_function(func)
    obj = Objective(fn, entries, dp, scales, **opts)
    pop = population(fn, entries, 80, seed=11)
    fit = obj(pop)
    assert fit.shape == (pop.shape[0],)
    single_x = 0
    for bp, f in zip(pop, fit):
        table = obj.table(bp)
        single_x += has_single_x_segment(table)
        assert f == pytest.approx(table.error().mean_mse, rel=1e-12, abs=0), bp
    if name == "gelu-8-norefine":
        assert single_x > 0  # the case that once mismatched (fitness 0.166, table 0.036) is in the set


@pytest.mark.parametrize("name", ["gelu-8-default", "exp-4-narrow", "silu-6-out8"])
def test_max_abs_metric_equals_table_max_over_scales(name):
    func, entries, dp, scales, opts = CONFIGS[name]
    fn = get_function(func)
    obj = Objective(fn, entries, dp, scales, metric="max_abs", **opts)
    pop = population(fn, entries, 60, seed=5)
    fit = obj(pop)
    for bp, f in zip(pop, fit):
        err = obj.table(bp).error()
        assert f == pytest.approx(np.max(err.max_abs), rel=1e-12, abs=0)
        assert f == pytest.approx(err.max_max_abs, rel=1e-12, abs=0)


def test_max_abs_and_mse_objectives_share_coefficients():
    fn = get_function("gelu")
    pop = population(fn, 8, 10, seed=2)
    a = Objective(fn, 8, PWLDatapath(), range(7))
    b = Objective(fn, 8, PWLDatapath(), range(7), metric="max_abs")
    for bp in pop:
        ta, tb = a.table(bp), b.table(bp)
        assert np.array_equal(ta.slopes, tb.slopes) and np.array_equal(ta.intercepts, tb.intercepts)


def test_histogram_weights_change_the_mse_as_computed_directly():
    fn = get_function("gelu")
    dp = PWLDatapath()
    scales = tuple(range(7))
    rng = np.random.default_rng(4)
    codes = dp.codes()
    # histograms of a model's codes for some scales (peaked around 0, every code seen at least once)
    weights = {e: np.round(1 + 500 * np.exp(-0.5 * (codes / (4.0 * 2**e)) ** 2) * rng.uniform(0.5, 1.5, codes.size))
               for e in (0, 2, 3, 6)}
    weighted = Objective(fn, 8, dp, scales, weights=weights)
    plain = Objective(fn, 8, dp, scales)
    pop = population(fn, 8, 60, seed=9)
    fw, fp = weighted(pop), plain(pop)
    for bp, f in zip(pop, fw):
        table = weighted.table(bp)
        assert f == pytest.approx(direct_weighted_mse(table, fn, weights), rel=1e-12, abs=0)
        assert f == pytest.approx(table.error(weights=weights).mean_mse, rel=1e-12, abs=0)
    # the weights do change the error
    assert not np.allclose(fw, fp, rtol=1e-3)


def test_histogram_on_two_codes_measures_those_codes():
    fn = get_function("exp")
    dp = PWLDatapath()
    e, codes = 3, np.array([-13, -10])  # both in the segment [-3, -1)
    hist = np.zeros(2**dp.in_bits)
    hist[codes - dp.code_min] = [7.0, 2.0]
    obj = Objective(fn, 4, dp, [e], weights={e: hist})
    bp = np.array([-6.0, -3.0, -1.0])
    table = obj.table(bp)
    err = table.evaluate(codes, e) - fn(codes * 2.0**-e)
    expected = (7.0 * err[0] ** 2 + 2.0 * err[1] ** 2) / 9.0
    assert obj(bp[None])[0] == pytest.approx(expected, rel=1e-12, abs=1e-30)
    # two points fit by a line: the integer optimum is close to exact
    assert expected < (2.0**-6) ** 2


def test_weights_fit_the_coefficients_too():
    # with all weight on the right half, the weighted fit of one segment hugs that half
    fn = get_function("gelu")
    dp = PWLDatapath()
    hist = np.where(dp.codes() >= 0, 1.0, 0.0)
    obj_w = Objective(fn, 2, dp, [4], weights={4: hist})
    obj = Objective(fn, 2, dp, [4])
    bp = np.array([3.5])
    tw, t = obj_w.table(bp), obj.table(bp)
    assert tw.error(weights={4: hist}).mean_mse < t.error(weights={4: hist}).mean_mse


def test_fitness_equals_table_error_with_a_single_x_segment():
    # the last segment [255/64, 4] holds only x = 4.0 (codes at e = 0..4; empty at e = 5, 6):
    # fitness 0.13 (K = 0, B saturates at 127) against the table's 0.0029 (K = 64)
    fn = get_function("gelu")
    obj = Objective(fn, 8, PWLDatapath(), range(7))
    bp = np.array([-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 255 / 64])
    table = obj.table(bp)
    assert has_single_x_segment(table)
    assert obj(bp[None])[0] == pytest.approx(table.error().mean_mse, rel=1e-12)


def test_fitness_equals_table_error_with_a_single_x_segment_without_refine():
    # the audit's case: gelu 8, refine=False, a last segment holding only x = 4.0; the fitness once
    # fitted it with slope 0 (B saturating) while the table used the chord slope
    fn = get_function("gelu")
    obj = Objective(fn, 8, PWLDatapath(), range(7), refine=False)
    bp = np.array([-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 255 / 64])
    table = obj.table(bp)
    assert has_single_x_segment(table)
    assert obj(bp[None])[0] == pytest.approx(table.error().mean_mse, rel=1e-12)


# --- the property: over random individuals, configurations, segment rules and refine settings ---
PROPERTY_FUNCS = {"gelu": 8, "exp": 4, "hswish": 6, "silu": 6, "rsqrt": 5}
DATAPATHS = [dict(), dict(slope_bits=6, slope_frac=4, icpt_bits=7, icpt_frac=5), dict(out_bits=8, out_frac=5),
             dict(slope_bits=9, icpt_bits=9)]


@st.composite
def objective_cases(draw):
    func = draw(st.sampled_from(sorted(PROPERTY_FUNCS)))
    fn = get_function(func)
    entries = draw(st.integers(2, PROPERTY_FUNCS[func]))
    rule = draw(st.sampled_from(["ge", "gt"]))
    dp = PWLDatapath(segment_rule=rule, **draw(st.sampled_from(DATAPATHS)))
    scales = draw(st.lists(st.integers(0, 6 if func != "rsqrt" else 5), min_size=1, max_size=4, unique=True))
    opts = dict(refine=draw(st.booleans()), coeffs=draw(st.sampled_from(["lsq", "lsq", "chord"])),
                metric=draw(st.sampled_from(["mse", "max_abs"])))
    lo, hi = fn.domain
    # breakpoints: anywhere in and a little outside the domain, on dyadic grids (ties with codes),
    # repeated, or at the domain ends (empty and one-x segments)
    gene = st.one_of(st.floats(lo - 1.0, hi + 1.0),
                     st.integers(int(lo * 64) - 8, int(hi * 64) + 8).map(lambda k: k / 64),
                     st.sampled_from([lo, hi, hi - 1 / 64, lo + 1 / 64]))
    bp = np.array(draw(st.lists(gene, min_size=entries - 1, max_size=entries - 1)))
    if entries > 2 and draw(st.booleans()):
        bp[1] = bp[0]
    return fn, entries, dp, sorted(scales), opts, bp


@settings(max_examples=60, deadline=None)
@given(objective_cases())
def test_property_fitness_is_the_returned_tables_error(case):
    fn, entries, dp, scales, opts, bp = case
    obj = Objective(fn, entries, dp, scales, **opts)
    f = obj(bp[None])[0]
    err = obj.table(bp).error()
    want = err.mean_mse if opts["metric"] == "mse" else err.max_max_abs
    assert f == pytest.approx(want, rel=1e-12, abs=1e-300)


# --- bad input: a GQAError naming the field -------------------------------------------------------
@pytest.mark.parametrize("kwargs, field", [
    ({"metric": "l1"}, "metric"), ({"entries": 1}, "entries"), ({"entries": True}, "entries"),
    ({"entries": 4.0}, "entries"), ({"entries": 257}, "entries"), ({"coeffs": "spline"}, "coeffs"),
    ({"weights": {0: np.ones(10)}}, "weights.0"), ({"weights": {0: -np.ones(256)}}, "weights.0"),
    ({"weights": {0: np.full(256, np.nan)}}, "weights.0"),
])
def test_objective_refuses_bad_input(kwargs, field):
    kw = dict(fn=get_function("gelu"), entries=4, dp=PWLDatapath(), scales=[0])
    kw.update(kwargs)
    with pytest.raises(GQAError) as exc:
        Objective(**kw)
    assert exc.value.field == field
    if field == "weights.0" or kwargs.get("entries") == 257:
        assert "256" in str(exc.value)      # the message names the code count of s8


def test_objective_accepts_the_entries_edges():
    fn, dp = get_function("gelu"), PWLDatapath(in_bits=4)
    assert Objective(fn, 2, dp, [0]).entries == 2
    assert Objective(fn, 16, dp, [0]).entries == 16   # 2**in_bits entries: one per code
    assert Objective(fn, np.int64(3), dp, [0]).entries == 3


def test_objective_refuses_a_function_not_finite_on_the_codes():
    from intsim.functions import Function
    f = Function("inv", lambda x: 1.0 / x, (-1.0, 1.0))
    with pytest.raises(GQAError) as exc, np.errstate(divide="ignore"):
        Objective(f, 4, PWLDatapath(), [0, 3])
    assert exc.value.field == "domain"


def test_a_histogram_of_zeros_weighs_nothing():
    # a scale whose codes were never seen has weight 0 everywhere: its error is 0, not NaN
    fn = get_function("gelu")
    zero = Objective(fn, 4, PWLDatapath(), [2], weights={2: np.zeros(256)})
    fit = zero(population(fn, 4, 6, seed=1))
    assert np.array_equal(fit, np.zeros(6))


def test_snap_rounds_to_the_finest_grid_and_sorts():
    obj = Objective(get_function("gelu"), 4, PWLDatapath(), [1, 3])
    got = obj.snap(np.array([[0.07, -1.01, 0.5625]]))
    # the 1/8 grid: -8.08 -> -8, 0.56 -> 1, 4.5 -> 4 (half-even), then sorted
    assert got.tolist() == [[-1.0, 0.125, 0.5]]


def test_chord_lines_pass_through_the_segment_ends():
    fn = get_function("gelu")
    obj = Objective(fn, 3, PWLDatapath(), [3], coeffs="chord")
    bp = np.array([[-1.0, 2.0]])
    k, b = obj.chord_lines(bp)
    ends = [(-4.0, -1.0), (-1.0, 2.0), (2.0, 4.0)]
    for i, (lo, hi) in enumerate(ends):
        assert k[0, i] * lo + b[0, i] == pytest.approx(fn(lo)) and k[0, i] * hi + b[0, i] == pytest.approx(fn(hi))
    # breakpoints outside the domain are clipped to it; a zero-width segment has slope 0
    k2, b2 = obj.chord_lines(np.array([[-9.0, -9.0]]))
    assert k2[0, 0] == 0.0 and k2[0, 1] == 0.0 and b2[0, 0] == pytest.approx(fn(-4.0))
    assert k2[0, 2] == pytest.approx((fn(4.0) - fn(-4.0)) / 8)


# --- the pieces against direct computations ---------------------------------------------------------
def direct_segment_stats(obj, fn, dp, scales, bp, weights=None):
    """Each segment's summed ``(w, wx, wx^2, wy, wxy, wy^2)`` by looping over every code of every
    scale: its segment is ``#{j : q >= S_j(e)}`` and its weight ``h_q / (S * sum(h))``."""
    out = np.zeros((len(bp) + 1, 6))
    for e in scales:
        q = scale_points(fn.domain, e, dp)
        h = np.ones(q.size) if weights is None or e not in weights else weights[e][q - dp.code_min]
        w = h / h.sum() / len(scales) if h.sum() > 0 else h
        starts = dp.segment_starts(bp, e)
        for qi, wi in zip(q, w):
            x = qi * 2.0**-e
            y = float(fn(np.array(x)))
            i = int(np.count_nonzero(qi >= starts))
            out[i] += [wi, wi * x, wi * x * x, wi * y, wi * x * y, wi * y * y]
    return out


@st.composite
def stats_cases(draw):
    fn, entries, dp, scales, _, bp = draw(objective_cases())
    weights = None
    if draw(st.booleans()):
        # a histogram on a few scales; totals below 1 too (the MSE weights are normalised, so a
        # histogram's scale does not matter)
        total = draw(st.sampled_from([1e-3, 0.5, 1.0, 37.0]))
        weights = {}
        for e in scales[:draw(st.integers(1, len(scales)))]:
            h = np.array(draw(st.lists(st.integers(0, 3), min_size=256, max_size=256)), dtype=np.float64)
            h[draw(st.integers(0, 255))] += 1
            weights[e] = h / h.sum() * total
    return fn, entries, dp, scales, bp, weights


@settings(max_examples=40, deadline=None)
@given(stats_cases())
def test_segment_stats_are_the_direct_sums_over_each_segments_codes(case):
    fn, entries, dp, scales, bp, weights = case
    obj = Objective(fn, entries, dp, scales, weights=weights)
    snapped = obj.snap(bp[None])
    got = obj.segment_stats(obj.segment_starts(snapped))
    want = direct_segment_stats(obj, fn, dp, scales, snapped[0], weights)
    assert got.shape == (1, entries, 6)
    np.testing.assert_allclose(got[0], want, rtol=1e-9, atol=1e-12)


def test_a_histograms_total_does_not_change_the_fitness():
    fn, dp = get_function("gelu"), PWLDatapath()
    h = np.where(dp.codes() >= 0, 2.0, 1.0)
    pop = population(fn, 6, 8, seed=5)
    fits = [Objective(fn, 6, dp, [3, 5], weights={3: h * t})(pop) for t in (1.0, 0.25, 1e-6)]
    np.testing.assert_allclose(fits[1], fits[0], rtol=1e-12)
    np.testing.assert_allclose(fits[2], fits[0], rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.floats(-4.5, 4.5), st.integers(-260, 260).map(lambda k: k / 64)),
                min_size=1, max_size=7))
def test_chord_lines_property_narrow_and_empty_segments(genes):
    # segments of every width, most below 1 (the chord slope divides by the width)
    fn = get_function("gelu")
    obj = Objective(fn, len(genes) + 1, PWLDatapath(), [6], coeffs="chord")
    bp = np.sort(np.array(genes))[None]
    k, b = obj.chord_lines(bp)
    ends = np.concatenate([[-4.0], np.clip(bp[0], -4.0, 4.0), [4.0]])
    for i, (lo, hi) in enumerate(zip(ends[:-1], ends[1:])):
        if hi > lo:
            assert k[0, i] == pytest.approx((fn(hi) - fn(lo)) / (hi - lo), rel=1e-12, abs=1e-12)
            assert k[0, i] * hi + b[0, i] == pytest.approx(fn(hi), abs=1e-9)
        else:
            assert k[0, i] == 0.0
        assert k[0, i] * lo + b[0, i] == pytest.approx(fn(lo), abs=1e-9)


def test_a_single_x_segment_takes_the_chord_slope_without_refine():
    # the last segment [255/64, 4] holds only x = 4.0: without refinement its slope is the
    # chord's, rounded to the slope format. (With refinement every K is tried with its best B;
    # many pairs give the same output 4K + B at x = 4, and the chord slope only breaks ties.)
    fn, dp = get_function("gelu"), PWLDatapath()
    obj = Objective(fn, 8, dp, range(7), refine=False)
    bp = np.array([-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 255 / 64])
    table = obj.table(bp)
    assert has_single_x_segment(table)
    chord = (fn(4.0) - fn(255 / 64)) * 64
    assert table.slopes[-1] == int(np.rint(chord * 2.0**dp.slope_format.frac))


@pytest.mark.parametrize("opts, refine", [({}, "exact"), ({"refine": False}, "none"), ({"coeffs": "chord"}, "none"),
                                          ({"coeffs": "chord", "refine": True}, "none")])
def test_table_provenance_names_the_coefficient_method(opts, refine):
    fn = get_function("gelu")
    table = Objective(fn, 4, PWLDatapath(), [3], **opts).table(np.array([-1.0, 0.0, 1.0]), provenance={"seed": 7})
    assert table.provenance["seed"] == 7
    assert table.provenance["coefficients"]["method"] == opts.get("coeffs", "lsq")
    assert table.provenance["coefficients"]["refine"] == refine
