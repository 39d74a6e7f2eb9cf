"""Calibration statistics: the one-partition percentiles are numpy's to the last bit."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from intsim.calibration import PERCENTILES, percentiles


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 30000), st.sampled_from([np.float32, np.float64]), st.integers(0, 2**32 - 1),
       st.sampled_from(["t", "ties", "constant"]))
def test_percentiles_equal_numpy(n, dtype, seed, kind):
    rng = np.random.default_rng(seed)
    a = np.abs(rng.standard_t(3, n)).astype(dtype)
    if kind == "ties":
        a = np.round(a, 1).astype(dtype)
    elif kind == "constant":
        a[:] = a[0]
    ps = PERCENTILES + (50.0, 99.999)
    got = percentiles(a.reshape(-1, 1) if n % 2 else a, ps)
    assert got == {p: float(np.percentile(a, p)) for p in ps}


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 5000), st.integers(0, 8), st.integers(0, 2**32 - 1), st.sampled_from(["t", "ties", "constant"]))
def test_top_indices_are_the_largest_values_largest_first_ties_by_index(n, k, seed, kind):
    """The outlier report's top values: from the percentiles' sorted top, the k largest (every k, even
    past the sorted part), ordered by value then by position -- a sort of all values, deterministic."""
    from intsim.calibration import _kurtosis, top_indices

    rng = np.random.default_rng(seed)
    a = np.abs(rng.standard_t(3, n)).astype(np.float32)
    if kind == "ties":
        a = np.round(a, 1).astype(np.float32)
    elif kind == "constant":
        a[:] = a[0]
    _, top = percentiles(a, sorted_top=True)
    k = min(k, n)
    expect = sorted(range(n), key=lambda i: (-float(a[i]), i))[:k]
    assert top_indices(a, k, top).tolist() == expect
    x = a - np.float32(1.0)
    d = x - x.mean(dtype=np.float64)                 # the kurtosis' definition, written out
    d2 = d * d
    assert _kurtosis(x) == (float((d2 * d2).mean() / d2.mean() ** 2) if d2.mean() > 0 else 0.0)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3000), st.integers(0, 2**32 - 1), st.floats(-7, 4), st.sampled_from([np.float32, np.float64]),
       st.floats(0.25, 2.0))
def test_histograms_equal_their_numpy_expressions(n, seed, magnitude, dtype, top_factor):
    """The one-pass histogram kernels count exactly what numpy's expressions count (bins, clipping)."""
    from intsim.calibration import FINE_BINS, HIST_BINS, _hist, fine_hist

    rng = np.random.default_rng(seed)
    a = np.abs(rng.standard_t(2, n) * 10.0**magnitude).astype(dtype)
    a[: min(n, 3)] = np.array([0.0, 2.0**-20, 2.0**9], dtype)[: min(n, 3)]
    top = float(a.max()) * top_factor
    pos = a.astype(np.float64) * (FINE_BINS / top) if top > 0 else np.zeros(n)
    assert np.array_equal(fine_hist(a, top), np.bincount(np.minimum(pos.astype(np.intp), FINE_BINS - 1),
                                                         minlength=FINE_BINS))
    lg = (np.log2(np.maximum(a.astype(np.float32), np.float32(2.0**-16))) + np.float32(16)) * np.float32(HIST_BINS / 24)
    assert np.array_equal(_hist(a), np.bincount(np.clip(lg, 0, HIST_BINS - 1).astype(np.intp), minlength=HIST_BINS))
