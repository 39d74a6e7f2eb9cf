"""gqa_lut.fitting: the exact integer line fit and the rounded least-squares fit.

``_best_integer_line`` / ``fit_lines(exact=True)`` are checked against a brute force over
every ``(K, B)`` pair of small formats; ``fit_lines(exact=False)`` against an independent
weighted least-squares solve rounded half-even.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gqa_lut.fitting import _best_integer_line, fit_lines, point_stats
from intsim import PWLDatapath

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- helpers --------------------------------------------------------------------------------
def _grid(dp: PWLDatapath):
    kf, bf = dp.slope_format, dp.icpt_format
    K = np.arange(kf.min_int, kf.max_int + 1)
    B = np.arange(bf.min_int, bf.max_int + 1)
    return K, B, kf.resolution, bf.resolution


def direct_cost(K, B, x, y, w, dp: PWLDatapath) -> float:
    """Weighted squared error of the integer pair, from the residuals (no algebraic expansion)."""
    ks, bs = dp.slope_format.resolution, dp.icpt_format.resolution
    r = K * ks * x + B * bs - y
    return float(np.sum(w * r * r))


def brute_force(x, y, w, dp: PWLDatapath) -> float:
    """Minimum over every (K, B) pair of the formats."""
    K, B, ks, bs = _grid(dp)
    pred = (K[:, None, None] * ks) * x[None, None, :] + (B[None, :, None] * bs)
    cost = np.sum(w * (pred - y) ** 2, axis=-1)
    return float(cost.min())


def magnitude(K, B, x, y, w, dp: PWLDatapath) -> float:
    """Size of the terms of the expanded cost: bounds its cancellation error."""
    ks, bs = dp.slope_format.resolution, dp.icpt_format.resolution
    return float(np.sum(w * (np.abs(K * ks * x) + abs(B * bs) + np.abs(y)) ** 2)) + 1e-300


def costs_agree(a: float, b: float, scale: float) -> bool:
    """Relative tolerance 1e-9; an absolute floor of 1e-12 of the problem's size for exact fits."""
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12 * scale)


def call_best(x, y, w, dp: PWLDatapath, k_fallback: float = 0.0):
    s = point_stats(x, y, w).sum(axis=0)
    K, B, ks, bs = _grid(dp)
    return _best_integer_line(*(float(v) for v in s), ks, bs, int(K[0]), int(K[-1]), int(B[0]), int(B[-1]),
                              float(k_fallback))


# --- strategies -------------------------------------------------------------------------------
datapaths = st.builds(lambda sb, sf, ib, bf: PWLDatapath(slope_bits=sb, slope_frac=sf, icpt_bits=ib, icpt_frac=bf),
                      st.integers(4, 6), st.integers(0, 4), st.integers(4, 6), st.integers(0, 4))


@st.composite
def segments(draw, dp: PWLDatapath, min_distinct: int = 2):
    """A small weighted point set: x on a dyadic grid (like q * 2**-e), y random or near a line."""
    e = draw(st.integers(0, 3))
    q = draw(st.lists(st.integers(-12, 12), min_size=max(min_distinct, 1), max_size=8)
             .filter(lambda v: len(set(v)) >= min_distinct))
    x = np.array(q, dtype=np.float64) * 2.0**-e
    n = x.size
    mode = draw(st.sampled_from(["random", "line", "near-line"]))
    if mode == "random":
        y = np.array(draw(st.lists(st.floats(-6, 6, allow_nan=False, allow_subnormal=False),
                                   min_size=n, max_size=n)))
    else:
        K, B, ks, bs = _grid(dp)
        k0 = draw(st.integers(int(K[0]) - 3, int(K[-1]) + 3)) * ks  # may lie outside the format
        b0 = draw(st.integers(int(B[0]) - 3, int(B[-1]) + 3)) * bs
        y = k0 * x + b0
        if mode == "near-line":
            y = y + np.array(draw(st.lists(st.floats(-0.05, 0.05, allow_nan=False, allow_subnormal=False),
                                           min_size=n, max_size=n)))
    w = np.array(draw(st.lists(st.floats(0.05, 2.0), min_size=n, max_size=n)))
    return x, y, w


@st.composite
def problems(draw, min_distinct: int = 2, max_segments: int = 1):
    dp = draw(datapaths)
    segs = draw(st.lists(segments(dp, min_distinct), min_size=1, max_size=max_segments))
    return dp, segs


# --- _best_integer_line -------------------------------------------------------------------------
@SETTINGS
@given(problems(), st.floats(-50, 50, allow_nan=False))
def test_best_integer_line_matches_brute_force(problem, k_fallback):
    dp, [(x, y, w)] = problem
    K, B, cost = call_best(x, y, w, dp, k_fallback)
    kf, bf = dp.slope_format, dp.icpt_format
    assert kf.min_int <= K <= kf.max_int and bf.min_int <= B <= bf.max_int
    best = brute_force(x, y, w, dp)
    mag = magnitude(K, B, x, y, w, dp)
    # the returned pair is optimal (ties may pick another pair: compare costs only) ...
    assert costs_agree(direct_cost(K, B, x, y, w, dp), best, mag)
    # ... and the reported cost is that pair's cost
    assert costs_agree(cost, best, mag)


def test_best_integer_line_empty_segment():
    K, B, cost = _best_integer_line(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0**-6, 2.0**-6, -128, 127, -128, 127, 3.0)
    assert (K, B, cost) == (0, 0, 0.0)


def test_best_integer_line_exact_fit_is_found():
    dp = PWLDatapath()
    x = np.arange(-5, 6) * 0.25
    y = 37 * 2.0**-6 * x - 101 * 2.0**-6
    K, B, cost = call_best(x, y, np.ones_like(x), dp)
    assert (K, B) == (37, -101)
    assert abs(cost) < 1e-12


def test_best_integer_line_saturates_to_the_format():
    # the real optimum (slope 3, intercept 5) lies outside s8.6: the best pair is on the border
    dp = PWLDatapath()
    x = np.linspace(-1, 1, 9)
    y = 3.0 * x + 5.0
    K, B, cost = call_best(x, y, np.ones_like(x), dp)
    assert costs_agree(direct_cost(K, B, x, y, np.ones_like(x), dp), brute_force(x, y, np.ones_like(x), dp),
                       magnitude(K, B, x, y, np.ones_like(x), dp))
    assert K == 127 and B == 127


def test_best_integer_line_single_point_is_exact():
    # one point x = 0.5, y = 19.4/64 on the default s8.6 formats:
    # K=0 gives B=19 (error 0.4/64); K=-127, B=83 gives 83/64 - 63.5/64 = 19.5/64 (error 0.1/64)
    dp = PWLDatapath()
    x, y, w = np.array([0.5]), np.array([19.4 / 64]), np.array([1.0])
    K, B, cost = call_best(x, y, w, dp)
    assert costs_agree(direct_cost(K, B, x, y, w, dp), brute_force(x, y, w, dp), magnitude(K, B, x, y, w, dp))


def test_best_integer_line_one_distinct_x_matches_brute_force():
    # many points at one x: every K is feasible, the best B for each K must be searched
    rng = np.random.default_rng(3)
    bad = []
    for trial in range(60):
        dp = PWLDatapath(slope_bits=int(rng.integers(4, 7)), slope_frac=int(rng.integers(0, 5)),
                         icpt_bits=int(rng.integers(4, 7)), icpt_frac=int(rng.integers(0, 5)))
        n = int(rng.integers(1, 5))
        x = np.full(n, int(rng.integers(1, 12)) * 2.0 ** -int(rng.integers(0, 4)))
        y, w = rng.uniform(-3, 3, n), rng.uniform(0.1, 2, n)
        K, B, _ = call_best(x, y, w, dp)
        if not costs_agree(direct_cost(K, B, x, y, w, dp), brute_force(x, y, w, dp), magnitude(K, B, x, y, w, dp)):
            bad.append(trial)
    assert not bad


# --- fit_lines(exact=True) -----------------------------------------------------------------------
@SETTINGS
@given(problems(max_segments=4))
def test_fit_lines_exact_matches_brute_force(problem):
    dp, segs = problem
    stats = np.stack([point_stats(x, y, w).sum(axis=0) for x, y, w in segs])[None]
    K, B, clipped = fit_lines(stats, dp, exact=True)
    assert K.shape == B.shape == (1, len(segs)) and K.dtype == np.int64 and B.dtype == np.int64
    assert clipped.tolist() == [0]
    assert np.all(dp.slope_format.fits(K)) and np.all(dp.icpt_format.fits(B))
    for i, (x, y, w) in enumerate(segs):
        got = direct_cost(K[0, i], B[0, i], x, y, w, dp)
        assert costs_agree(got, brute_force(x, y, w, dp), magnitude(K[0, i], B[0, i], x, y, w, dp))


def test_fit_lines_population_rows_are_independent():
    dp = PWLDatapath(slope_bits=5, slope_frac=3, icpt_bits=5, icpt_frac=2)
    rng = np.random.default_rng(7)
    segs = []
    for _ in range(6):
        x = np.unique(rng.integers(-10, 10, 5)) * 0.5
        segs.append((x, rng.normal(0, 1.5, x.size), rng.uniform(0.1, 1, x.size)))
    stats = np.stack([point_stats(x, y, w).sum(axis=0) for x, y, w in segs])
    K, B, _ = fit_lines(stats.reshape(2, 3, 6), dp, exact=True)
    K1, B1, _ = fit_lines(stats.reshape(6, 1, 6), dp, exact=True)
    assert np.array_equal(K.ravel(), K1.ravel()) and np.array_equal(B.ravel(), B1.ravel())


# --- fit_lines(exact=False) ----------------------------------------------------------------------
def _far_from_tie(v: float) -> bool:
    return abs(abs(v - math.floor(v)) - 0.5) > 1e-6 * max(1.0, abs(v))


@SETTINGS
@given(problems(max_segments=3))
def test_fit_lines_rounded_is_half_even_least_squares(problem):
    dp, segs = problem
    kf, bf = dp.slope_format, dp.icpt_format
    stats = np.stack([point_stats(x, y, w).sum(axis=0) for x, y, w in segs])[None]
    K, B, clipped = fit_lines(stats, dp, exact=False)
    expected_clipped = 0
    for i, (x, y, w) in enumerate(segs):
        sw = np.sqrt(w)
        (k, b), *_ = np.linalg.lstsq(np.stack([x, np.ones_like(x)], axis=1) * sw[:, None], y * sw, rcond=None)
        kq, bq = k / kf.resolution, b / bf.resolution
        assume(_far_from_tie(kq) and _far_from_tie(bq))
        kr, br = np.rint(kq), np.rint(bq)
        expected_clipped += int(not kf.min_int <= kr <= kf.max_int) + int(not bf.min_int <= br <= bf.max_int)
        assert K[0, i] == np.clip(kr, kf.min_int, kf.max_int)
        assert B[0, i] == np.clip(br, bf.min_int, bf.max_int)
    assert clipped.tolist() == [expected_clipped]


@pytest.mark.parametrize("half, expected", [(2.5, 2), (3.5, 4), (-2.5, -2), (-3.5, -4), (0.5, 0), (1.5, 2)])
def test_fit_lines_rounded_ties_go_to_even(half, expected):
    dp = PWLDatapath()
    ks, bs = dp.slope_format.resolution, dp.icpt_format.resolution
    x, w = np.array([0.0, 1.0]), np.ones(2)
    # slope exactly half-way between two codes, intercept 0
    K, B, clipped = fit_lines(point_stats(x, half * ks * x, w).sum(axis=0)[None, None], dp, exact=False)
    assert (K[0, 0], B[0, 0], clipped[0]) == (expected, 0, 0)
    # intercept exactly half-way, slope 0
    K, B, clipped = fit_lines(point_stats(x, np.full(2, half * bs), w).sum(axis=0)[None, None], dp, exact=False)
    assert (K[0, 0], B[0, 0], clipped[0]) == (0, expected, 0)


def test_fit_lines_rounded_counts_clipping_per_individual():
    dp = PWLDatapath()  # s8.6: codes [-128, 127], reals [-2, 1.984375]
    x, w = np.linspace(-1, 1, 5), np.ones(5)
    steep = point_stats(x, 3.0 * x, w).sum(axis=0)                # slope clipped
    high = point_stats(x, np.full(5, -5.0), w).sum(axis=0)        # intercept clipped
    both = point_stats(x, 3.0 * x + 5.0, w).sum(axis=0)           # both clipped
    fine = point_stats(x, 0.5 * x - 0.25, w).sum(axis=0)          # neither
    stats = np.array([[steep, high, fine], [both, fine, fine], [fine, fine, fine]])
    K, B, clipped = fit_lines(stats, dp, exact=False)
    assert clipped.tolist() == [2, 2, 0]
    assert (K[0, 0], B[0, 1]) == (127, -128)
    assert (K[1, 0], B[1, 0]) == (127, 127)
    assert (K[2, 0], B[2, 0]) == (32, -16)
