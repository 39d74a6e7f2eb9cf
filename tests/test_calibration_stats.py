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
