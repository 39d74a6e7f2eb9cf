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


# --- the integer models' linears re-rounded against their own operands ---------------------------

def _linear(rounding="gptq", shift=False, repeats=None, seed=0, N=5, C=6):
    from intsim.config import SimConfig
    from intsim.layers import IntLinear
    from intsim.outliers import OperandTransform

    rng = np.random.default_rng(seed)
    w, b = rng.normal(size=(N, C)), rng.normal(size=N)
    f = None
    if shift or repeats is not None:
        f = OperandTransform(np.ones(C), rng.uniform(-1, 0, C) if shift else np.zeros(C),
                             np.ones(C, np.int64) if repeats is None else np.asarray(repeats), quantized_fold=shift)
    return IntLinear(w, b, 0.05, SimConfig(weight_rounding=rounding), 0.1, 8, col_factor=f)


def _explicit_hessian(lin, codes, factors, rows):
    """sum over real rows of x x^T, x_k = code_k * s_in * g_r + z'_k, by Python floats (the reference)."""
    shift = np.broadcast_to(lin.operand_shift(), (codes.shape[1],))
    K = codes.shape[1]
    H = [[0.0] * K for _ in range(K)]
    for r in range(codes.shape[0]):
        if not rows[r]:
            continue
        x = [int(codes[r, k]) * lin.in_scale * float(factors[r]) + float(shift[k]) for k in range(K)]
        for i in range(K):
            for j in range(K):
                H[i][j] += x[i] * x[j]
    return np.array(H)


@pytest.mark.parametrize("kind", ["plain", "shift", "split"])
@pytest.mark.parametrize("scales", ["none", "pot", "mantissa"])
def test_observed_hessian_is_the_real_operand_over_real_rows(kind, scales):
    from intsim.fixedpoint import RowScale
    from intsim.gptq import HessianObserver

    lin = _linear(shift=kind == "shift", repeats=[1, 2, 1, 1, 3, 1] if kind == "split" else None)
    rng = np.random.default_rng(1)
    x8 = rng.integers(0 if kind == "shift" else -128, 128, (2, 4, 6)).astype(np.uint8 if kind == "shift" else np.int8)
    row_shift, factors = None, np.ones(8)
    if scales == "pot":
        row_shift = rng.integers(0, 4, (2, 4))
        factors = 2.0 ** row_shift.reshape(-1)
    elif scales == "mantissa":
        row_shift = RowScale(rng.integers(8, 16, (2, 4)), rng.integers(-3, 4, (2, 4)), 3)
        factors = (row_shift.mantissa * 2.0 ** (row_shift.shift - 3)).reshape(-1)
    rows = np.array([1, 1, 0, 1, 1, 0, 0, 1], bool)          # padding rows left out
    obs = HessianObserver(lin)
    obs.rows, lin.observer = rows, obs
    lin(x8, row_shift=row_shift)
    codes = np.repeat(x8.reshape(-1, 6), [1, 2, 1, 1, 3, 1], axis=1) if kind == "split" else x8.reshape(-1, 6)
    ref = _explicit_hessian(lin, codes, factors, rows)
    # the observer's products are float32 (relative error ~1e-7 each): a wrong row, scale or shift is far off
    assert np.allclose(obs.H, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())


def test_gptq_model_rerounds_each_linear_against_its_hessian():
    from intsim.gptq import gptq_model, operand_hessians
    from intsim.layers import IntLinear
    from intsim.outliers import OperandTransform

    lins = [_linear(shift=True, seed=s) for s in range(3)]
    rng = np.random.default_rng(2)
    batches = [(None, rng.integers(0, 2, (3, 4))) for _ in range(2)]
    xs = [rng.integers(0, 128, (3, 4, 6)).astype(np.uint8) for _ in batches]
    calls = iter(xs * 2)

    def forward(ids, mask):
        x = next(calls)
        for lin in lins:
            lin(x)

    before = [(lin.wt.array.copy(), lin.m0.copy(), lin.n.copy(), lin.folded_weights.copy()) for lin in lins]
    H = [h for _, h in operand_hessians(lins, batches, forward)]
    assert all(lin.observer is None for lin in lins)
    assert gptq_model(lins, batches, forward) == 3
    for lin, h, (wt, m0, n, w) in zip(lins, H, before):
        q = gptq_round(w, h, lin.weight_scale, 8)
        assert np.array_equal(lin.wt.array.T, q) and not np.array_equal(wt, lin.wt.array)
        assert np.array_equal(lin.m0, m0) and np.array_equal(lin.n, n) and lin.folded_weights is None
        f: OperandTransform = lin.col_factor      # the zero point folds with the new codes
        b = f.bias_quantized(q * lin.weight_scale[:, None], lin._b_given)
        assert np.array_equal(lin.bias, np.rint(b / lin.acc_scale).astype(np.int64))
    assert isinstance(lins[0], IntLinear)


def test_nearest_keeps_no_weights_and_gptq_needs_them():
    from intsim.gptq import gptq_model

    lin = _linear("nearest")
    assert lin.folded_weights is None
    with pytest.raises(GQAError, match="weight_rounding"):
        gptq_model([lin], [(None, np.ones((1, 2)))], lambda ids, mask: lin(np.ones((1, 2, 6), np.int8)))


def test_a_calibration_without_batches_says_how_to_get_them():
    from intsim.calibration import Calibration

    with pytest.raises(GQAError, match="calibration"):
        Calibration({}, 1, 1).batches()


def test_gptq_encoder_rerounds_every_linear_and_lowers_its_output_error(model, tok, monkeypatch):
    """The encoder built with ``weight_rounding = "gptq"``: every linear's codes are GPTQ's against the
    Hessian of its operands over the calibration batches (the same codes as computing them here from
    the round-to-nearest model), each linear's output error below round to nearest's, multipliers unchanged."""
    from intsim import registry
    from intsim.calibration import calibrate
    from intsim.config import SimConfig
    from intsim.gptq import linears, operand_hessians
    from intsim.int_bert import IntBert
    from intsim.sentences import calibration_sentences

    calib = calibrate(model, tok, calibration_sentences(12), batch_size=4)
    cfg = SimConfig(weight_rounding="gptq")
    built = IntBert(model, calib, cfg)
    with monkeypatch.context() as m:       # the same build, its rounding step left out: round to nearest
        m.setitem(registry.WEIGHT_ROUNDINGS._entries, "gptq",
                  registry.WEIGHT_ROUNDINGS.get("nearest"))
        rtn = IntBert(model, calib, cfg)
    pairs = operand_hessians(rtn, calib.batches(), lambda ids, mask: rtn.hidden(ids, mask))
    assert len(pairs) == 6 * 4 == len(linears(built))
    for (lin, H), g in zip(pairs, linears(built)):
        q = gptq_round(lin.folded_weights, H, lin.weight_scale, 8)
        assert np.array_equal(g.wt.array.T, q)
        assert np.array_equal(g.m0, lin.m0) and np.array_equal(g.n, lin.n)
        e_gptq = output_error(lin.folded_weights, q, lin.weight_scale, H)
        e_rtn = output_error(lin.folded_weights, lin.wt.array.T, lin.weight_scale, H)
        assert e_gptq < e_rtn, (e_gptq, e_rtn)
