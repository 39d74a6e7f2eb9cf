"""GPTQ rounding (intsim.gptq) against OBQ's explicit downdates, round to nearest and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intsim import GQAError
from intsim.gptq import gptq_round, gptq_round_reference, output_error


def _problem(seed, N, K, T, corr=0.8):
    rng = np.random.default_rng(seed)
    w = rng.standard_t(4, (N, K))
    mix = np.eye(K) + corr * rng.normal(size=(K, K)) / np.sqrt(K)      # correlated input features
    X = mix @ rng.normal(size=(K, T))
    return w, X @ X.T


def _rtn(w, scale, bits):
    top = (1 << (bits - 1)) - 1
    return np.clip(np.rint(w / scale[:, None]), -top, top).astype(np.int64)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 4), st.integers(1, 9), st.sampled_from([3, 4, 8]),
       st.sampled_from([0.0, 0.01, 0.5]))
def test_gptq_equals_the_obq_downdates(seed, N, K, bits, damp):
    w, H = _problem(seed, N, K, T=max(K // 2, 1) if damp else 3 * K)   # damp 0: a full-rank H
    top = (1 << (bits - 1)) - 1
    scale = np.abs(w).max(axis=1) / top
    assert np.array_equal(gptq_round(w, H, scale, bits, damp), gptq_round_reference(w, H, scale, bits, damp))


def test_uncorrelated_inputs_give_round_to_nearest():
    """A diagonal H: no column's error can be absorbed by another, GPTQ is round to nearest."""
    rng = np.random.default_rng(1)
    w = rng.normal(size=(6, 10))
    H = np.diag(rng.uniform(0.5, 2.0, 10))
    s = np.abs(w).max(axis=1) / 127
    assert np.array_equal(gptq_round(w, H, s), _rtn(w, s, 8))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("bits", [4, 8])
def test_gptq_lowers_the_output_error(seed, bits):
    w, H = _problem(seed, 16, 48, T=400)
    s = np.abs(w).max(axis=1) / ((1 << (bits - 1)) - 1)
    q = gptq_round(w, H, s, bits)
    assert np.abs(q).max() <= (1 << (bits - 1)) - 1
    e_gptq, e_rtn = output_error(w, q, s, H), output_error(w, _rtn(w, s, bits), s, H)
    assert e_gptq < 0.8 * e_rtn, (e_gptq, e_rtn)


def test_a_dead_input_gets_zero_codes():
    w, H = _problem(0, 3, 6, T=50)
    H[2, :] = H[:, 2] = 0.0
    s = np.abs(w).max(axis=1) / 127
    q = gptq_round(w, H, s)
    assert np.all(q[:, 2] == 0) and np.array_equal(q, gptq_round_reference(w, H, s))


def test_bad_input_names_the_field():
    w, H = _problem(0, 3, 4, T=20)
    s = np.ones(3)
    for args, field in [((w[0], H, s), "w"), ((w, H[:3], s), "H"), ((w, H, s[:2]), "scale"),
                        ((w, H, -s), "scale"), ((w, H * np.nan, s), "H")]:
        with pytest.raises(GQAError, match=field):
            gptq_round(*args)
    with pytest.raises(GQAError, match="bits"):
        gptq_round(w, H, s, bits=1)
    with pytest.raises(GQAError, match="positive definite"):
        gptq_round(w, -np.eye(4), s, damp=0.0)
