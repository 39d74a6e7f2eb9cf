"""intsim.outliers: every transform leaves the FP32 model's outputs unchanged before quantization,
the integer layers that fold it equal their Python-integer references, the clipping searches find
what they say, and the choices come from the registry (config validation, `gqa sim --options`)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import reference_int as ref
from intsim import GQAError
from intsim.config import SimConfig
from intsim.layers import IntLinear, quantize_weight
from intsim.outliers import (OperandTransform, channel_shift, fake_quant, gamma_migration, hist_mse, mse_clip,
                             norm_transform, os_plus_scale, search_os_plus_t, smoothquant_factors, split_counts,
                             token_clip)
from intsim.registry import CLIPS, OUTLIERS, choices, describe

METHODS = ("gamma_migration", "os_shift+os_scale", "split", "smooth+gamma_migration+os_shift+os_scale+split")


@pytest.fixture(scope="module")
def calib(model, tok):
    from intsim.calibration import calibrate
    from intsim.sentences import calibration_sentences
    return calibrate(model, tok, calibration_sentences(24))


@pytest.fixture(scope="module")
def sentences():
    from intsim.sentences import evaluation_sentences
    return evaluation_sentences(12)


def _np(t):
    return t.detach().numpy()


def norm_consumers(model):
    """``(site, gamma, [consumer Linear modules])`` of every norm GEMM copy of the FP32 MiniLM."""
    b = model.blocks
    out = [("emb.ln_out", _np(model.embeddings.ln.weight), [b[0].attn.query, b[0].attn.key, b[0].attn.value])]
    for i, blk in enumerate(b):
        out.append((f"blocks.{i}.ln1_out", _np(blk.ln1.weight), [blk.ffn_in]))
        if i + 1 < len(b):
            nxt = b[i + 1].attn
            out.append((f"blocks.{i}.ln2_out", _np(blk.ln2.weight), [nxt.query, nxt.key, nxt.value]))
    return out


def transformed_linear(t: OperandTransform, lin):
    """A forward hook computing ``lin`` as the folded integer path would: ``x' W'^T + b'`` (float64)."""
    w, b = _np(lin.weight).astype(np.float64), _np(lin.bias).astype(np.float64)
    w2, b2 = t.weights(w), t.bias(w, b)

    def hook(mod, inp, out):
        x = inp[0].detach().numpy().astype(np.float64)
        return torch.from_numpy((t.operand(x) @ w2.T + b2).astype(np.float32))
    return hook


@pytest.mark.parametrize("methods", METHODS)
def test_transform_leaves_fp32_model_unchanged(methods, model, tok, calib, sentences):
    """Every norm copy of the FP32 MiniLM transformed and folded into its consumers: the sentence
    embeddings equal the untransformed model's to 1e-5 (and the transform really changes the operand)."""
    from intsim.bert import embed_fp32

    cfg = SimConfig(outliers=methods, split_ratio=3.0)
    ms = OUTLIERS.parse(methods)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = embed_fp32(model, tok, sentences)
        handles, moved, split = [], 0.0, 0
        try:
            for site, gamma, lins in norm_consumers(model):
                t = norm_transform(ms, calib, site, gamma, [_np(m.weight) for m in lins], cfg, 8)
                moved = max(moved, float(np.abs(t.divisor - 1).max()), float(np.abs(t.shift).max()))
                split += t.extra_k
                handles += [m.register_forward_hook(transformed_linear(t, m)) for m in lins]
            got = embed_fp32(model, tok, sentences)
        finally:
            for h in handles:
                h.remove()
    assert moved > 1e-3, "the transform is the identity: the test would test nothing"
    if methods == "split":
        assert split > 0
    else:
        assert "split" in ms or split == 0
    assert np.abs(got - want).max() <= 1e-5


def test_gemm_fold_is_exact_on_calibration_rows(calib, model):
    """``x' W'^T + b' = x W^T + b`` on the calibration's own rows of a norm output (float64, to 1e-9)."""
    site, gamma, lins = norm_consumers(model)[1]
    x = calib.extra(site, "sample").astype(np.float64)
    t = norm_transform(OUTLIERS.parse("gamma_migration+os_shift+split"), calib, site, gamma,
                       [_np(m.weight) for m in lins], SimConfig(split_ratio=2.0), 8)
    w, b = _np(lins[0].weight).astype(np.float64), _np(lins[0].bias).astype(np.float64)
    assert t.extra_k > 0 and t.operand(x).shape[1] == x.shape[1] + t.extra_k
    assert np.abs(t.operand(x) @ t.weights(w).T + t.bias(w, b) - (x @ w.T + b)).max() <= 1e-9 * np.abs(x @ w.T).max()


def test_method_formulas():
    hi, lo = np.array([3.0, 1.0, -0.5, 10.0]), np.array([-1.0, -1.0, -2.5, 2.0])
    z = channel_shift(hi, lo)
    assert np.array_equal(z, [1.0, 0.0, -1.5, 6.0])
    s = os_plus_scale(hi - z, lo - z, t=1.5)              # shifted ranges +-2, +-1, +-1, +-4
    assert np.allclose(s, [2 / 1.5, 1.0, 1.0, 4 / 1.5])
    assert np.array_equal(gamma_migration([0.5, -2.0, 0.0]), [0.5, -2.0, 1.0])
    assert np.array_equal(split_counts([1.0, 1.0, 2.0, 9.0, 1.0], ratio=2.0), [1, 1, 1, 5, 1])   # theta = 2


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(1e-6, 1e4), st.floats(1e-6, 1e4)), min_size=1, max_size=40),
       st.sampled_from([0.5, 0.7, 0.8, 0.3]))
def test_smoothquant_factors_are_python_float_powers(pairs, alpha):
    """The factors are libm's pow in float64, the same bits on every CPU (numpy's array power is SIMD
    code chosen by the CPU: measured, 5% of 200,000 x**0.7 differ by an ulp on an AVX-512 Xeon)."""
    cmax = np.array([c for c, _ in pairs])
    wmax = np.array([w for _, w in pairs], np.float32)          # a weight matrix's own dtype: widened
    f = smoothquant_factors(cmax, wmax, alpha)
    assert f.dtype == np.float64
    assert f.tolist() == [math.pow(c, alpha) / math.pow(float(np.float32(w)), 1 - alpha) for c, w in pairs]


def test_os_plus_search_beats_no_scaling():
    """On rows with two outlier channels the searched t lowers the block output error below t = max."""
    from intsim.outliers import block_output_error

    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 32))
    x[:, 3] *= 40
    x[:, 17] *= 15
    w = rng.normal(size=(24, 32))
    hi, lo = x.max(0), x.min(0)
    t, s = search_os_plus_t(x, hi, lo, [w], 8, 8)
    r = np.maximum(hi, -lo)
    assert t < r.max() and s[3] > 1 and np.array_equal(s, os_plus_scale(hi, lo, t))
    e = block_output_error(x, [w], s, 8, 8, True, False)
    assert e < 0.5 * block_output_error(x, [w], np.ones(32), 8, 8, True, False)


def _raw_mse(a, clip, bits):
    return float(np.mean((fake_quant(a, clip, bits) - a) ** 2))


def test_mse_clip_finds_the_least_error():
    """The histogram search's clip is within 2% of the best raw-data MSE over a fine grid."""
    from intsim.calibration import fine_hist

    rng = np.random.default_rng(1)
    a = np.abs(rng.standard_t(3, size=200_000))
    top = float(a.max())
    c = mse_clip(fine_hist(a, top), top, 8)
    grid = top * np.arange(1, 513) / 512
    best = min(_raw_mse(a, g, 8) for g in grid)
    assert c < top and _raw_mse(a, c, 8) <= 1.02 * best
    assert _raw_mse(a, c, 8) < _raw_mse(a, top, 8)


def test_token_clip_coarse_to_fine():
    """Token-wise clipping: not worse than any coarse candidate (a quantile of the token maxima)."""
    from intsim.calibration import fine_hist
    from intsim.outliers import TOKEN_QUANTILES

    rng = np.random.default_rng(2)
    x = np.abs(rng.normal(size=(500, 64)))
    x[rng.integers(0, 500, 5), 7] = 60.0                  # a few outlier tokens
    tmax, top = x.max(1), float(x.max())
    h = fine_hist(x, top)
    c = token_clip(tmax, h, top, 8)
    coarse = [hist_mse(h, top, float(np.quantile(tmax, q)), 8) for q in TOKEN_QUANTILES]
    assert hist_mse(h, top, c, 8) <= min(coarse) + 1e-15
    assert tmax.min() <= c < top


def test_hist_mse_counts_every_value():
    h = np.zeros(4, np.int64)
    h[3] = 2                                               # two values at the centre 3.5 of [0, 4]
    assert hist_mse(h, 4.0, 1.0, 8) == pytest.approx(2.5**2)   # saturated at 1
    assert hist_mse(h, 4.0, 3.5, 8) == pytest.approx(0.0)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 4), residual=st.booleans(), quantized_fold=st.booleans())
def test_int_linear_with_transform_equals_reference(seed, rows, residual, quantized_fold):
    """IntLinear folding a shift, a scale and splits: bit for bit the Python-integer reference
    (expanded codes, the folded weights quantized per channel, the bias ``b + W z`` -- or, with
    ``quantized_fold``, ``b + Q(W') z'`` -- at the accumulator's scale, reference requantization)."""
    rng = np.random.default_rng(seed)
    C, out = 6, 5
    w, b = rng.normal(size=(out, C)), rng.normal(size=out)
    t = OperandTransform(scale=rng.uniform(0.5, 3, C), shift=rng.normal(size=C), repeats=np.array([1, 3, 1, 2, 1, 1]),
                         quantized_fold=quantized_fold)
    cfg = SimConfig()
    in_scale, out_scale = 0.05, rng.uniform(0.01, 0.1, out)
    lin = IntLinear(w, b, in_scale, cfg, out_scale, 16, col_factor=t)
    x8 = rng.integers(-127, 128, size=(rows, C)).astype(np.int8)
    res = rng.integers(-1000, 1000, size=(rows, out)).astype(np.int16) if residual else None
    got, _ = lin(x8, residual=res)
    q, sw = quantize_weight(t.weights(w), 8, True)
    acc_scale = in_scale * sw
    if quantized_fold:      # the zero-point correction with the weights the GEMM multiplies, term by term
        wq = q.astype(np.float64) * sw[:, None]
        zq = np.repeat(t.shift / t.divisor, t.repeats)
        folded = [b[o] + sum(wq[o, k] * zq[k] for k in range(wq.shape[1])) for o in range(out)]
    else:
        folded = t.bias(w, b)
    bias = [int(v) for v in np.rint(np.asarray(folded) / acc_scale)]
    xe = [[int(v) for v in np.repeat(r, t.repeats)] for r in x8]
    acc = ref.matmul(xe, q.T.tolist())
    want, _, _, _ = ref.requantize_channels(acc, bias, lin.m0, lin.n, 16,
                                            residual_rows=None if res is None else res.tolist())
    assert got.tolist() == want
    assert lin.wt.shape[0] == C + t.extra_k == 9


def test_norm_copy_codes_are_the_transformed_operand(model, tok, calib, sentences):
    """The integer encoder's norm GEMM copy with every fold dequantizes to the transformed FP32 operand
    (within the integer LayerNorm's own error), and the consuming GEMM's K grew by the splits."""
    from intsim.int_bert import IntBert

    cfg = SimConfig(outliers="gamma_migration+os_shift+split", split_ratio=3.0)
    enc = IntBert(model, calib, cfg)
    ln = enc.blocks[0].ln1
    t = ln.factor
    assert isinstance(t, OperandTransform) and t.extra_k > 0
    assert enc.blocks[0].ffn.proj.wt.shape[0] == 384 + t.extra_k
    ids, mask = tok(sentences[:4])
    trace = {}
    enc.hidden(ids, mask, trace=trace)
    sel = mask.astype(bool)
    x = trace["blocks.0.sum1"][sel].astype(np.float64)              # the integer LayerNorm's input rows
    xhat = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    blk = model.blocks[0].ln1
    want = (xhat * _np(blk.weight) + _np(blk.bias) - t.shift) / t.divisor   # emitted once; a split is read T times
    got = trace["blocks.0.ln1_gemm"][sel].astype(np.float64) * ln.gemm_scale
    err = np.abs(got - want) / ln.gemm_scale                           # in codes (LSB)
    assert np.percentile(err, 99) <= 0.75 and err.max() <= 1.5


@pytest.mark.parametrize("over", [dict(outliers="gamma_migration+os_shift+os_scale+split", split_ratio=3.0),
                                  dict(outliers="none", act_clip="mse"), dict(outliers="none", act_clip="token"),
                                  dict(site_bits={"blocks.*.ln1_out": 6})])
def test_integer_encoder_runs_each_option(over, model, tok, calib, sentences):
    """Each option builds and keeps the integer encoder close to FP32 (a floor, not a benchmark)."""
    from intsim.bert import embed_fp32
    from intsim.int_bert import IntBert, embed_int
    from intsim.metrics import compare
    from intsim.opstats import OpStats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = IntBert(model, calib, SimConfig(**over))
        c = compare(embed_int(enc, tok, sentences), embed_fp32(model, tok, sentences))
    assert c["mean_cosine"] > 0.95
    if "site_bits" in over:
        stats = OpStats()
        ids, mask = tok(sentences[:2])
        enc.pooled(ids, mask, stats)
        macs = {(e["op"], e["a_bits"]) for e in stats.to_dict()["mac"]}
        assert ("blocks.0.ffn_in", 6) in macs and ("blocks.0.qkv", 8) in macs
        assert enc.blocks[0].ln1.gemm.bits == 6 and enc.blocks[0].ln1.gemm.hi == 31


def test_choices_come_from_the_registry():
    assert {"gamma_migration", "os_shift", "os_scale", "split", "act_offset"} <= set(OUTLIERS.names())
    assert "smooth+per_token" in OUTLIERS.choices() and "os_shift+os_scale" in OUTLIERS.choices()
    assert choices()["act_clip"] == CLIPS.names() == ("percentile", "mse", "token")
    text = describe()
    for name in (*OUTLIERS.names(), *CLIPS.names()):
        assert name in text
    assert SimConfig(outliers="os_shift+os_scale", act_clip="mse").act_clip == "mse"
    with pytest.raises(GQAError) as ei:
        SimConfig(act_clip="aciq")
    assert ei.value.field == "act_clip" and "percentile, mse, token" in str(ei.value)
    assert SimConfig(outliers="split+os_shift").outliers == "os_shift+split"   # kept in registration order
    with pytest.raises(GQAError) as ei:
        SimConfig(outliers="split+aciq")
    assert ei.value.field == "outliers"
    for bad in ({"blocks.*.ln1_out": 12}, {"blocks.*": "6"}, ["x"]):
        with pytest.raises(GQAError) as ei:
            SimConfig(site_bits=bad)
        assert ei.value.field == "site_bits"
    with pytest.raises(GQAError) as ei:
        SimConfig(split_ratio=0.5)
    assert ei.value.field == "split_ratio"


def test_shift_needs_the_new_statistics(model, calib):
    """A calibration without signed channel extremes (an old file) is refused for the shift, by name."""
    import copy

    old = copy.deepcopy(calib)
    old.stats["emb.ln_out"].channel_hi = None
    site, gamma, lins = norm_consumers(model)[0]
    with pytest.raises(GQAError, match="channel_hi"):
        norm_transform({"os_shift"}, old, site, gamma, [_np(m.weight) for m in lins], SimConfig(), 8)
    t = norm_transform({"smooth"}, old, site, gamma, [_np(m.weight) for m in lins], SimConfig(), 8)
    assert math.isfinite(float(t.scale.max()))


# --- kurtosis regularization and input QAT (gqa_lut.nn) -------------------------------------------

def test_kurtosis_penalty_is_the_formula():
    from gqa_lut.nn import KurtosisRegularizer, kurtosis

    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 5, 16))
    x[0, 1, 4] = 30.0
    d = x - x.mean(-1, keepdims=True)
    want = (d**4).mean(-1) / (d**2).mean(-1) ** 2                  # m4 / m2^2 per token, in float64
    assert np.allclose(kurtosis(torch.tensor(x)).numpy(), want, rtol=1e-10)
    lin = torch.nn.Linear(16, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    with KurtosisRegularizer([lin], weight=0.5, side="in") as reg:
        lin(torch.tensor(x, dtype=torch.float32))
        got = float(reg.penalty(mask).detach())
        assert got == pytest.approx(0.5 * want[mask.numpy()].mean(), rel=1e-5)
        lin(torch.tensor(x, dtype=torch.float32))
        got = float(reg.penalty().detach())
        assert got == pytest.approx(0.5 * want.mean(), rel=1e-5)
    with KurtosisRegularizer([lin], weight=1.0, target=1.8) as reg:
        y = lin(torch.tensor(x, dtype=torch.float32))
        k = kurtosis(y.double()).detach().numpy()
        assert float(reg.penalty().detach()) == pytest.approx(((k - 1.8) ** 2).mean(), rel=1e-4)
    with pytest.raises(GQAError, match="seen no forward"):
        KurtosisRegularizer([lin]).penalty()
    with pytest.raises(GQAError) as ei:
        KurtosisRegularizer([lin], weight=-1.0)
    assert ei.value.field == "weight"


def test_kurtosis_penalty_reduces_kurtosis_on_a_toy_layer():
    """A linear layer trained on a task that tolerates it, plus the penalty on its output: the output's
    kurtosis falls well below the unregularized run's, which keeps the outlier channel."""
    from gqa_lut.nn import KurtosisRegularizer, kurtosis

    def train(weight):
        torch.manual_seed(0)
        lin = torch.nn.Linear(32, 32)
        with torch.no_grad():
            lin.weight.mul_(0.1)
            lin.weight[5] *= 60.0                            # an outlier output channel
        x = torch.randn(256, 32, generator=torch.Generator().manual_seed(1))
        target = lin(x).detach()
        opt = torch.optim.Adam(lin.parameters(), lr=1e-2)
        with KurtosisRegularizer([lin], weight=weight) as reg:
            for _ in range(150):
                y = lin(x)
                loss = ((y - target) ** 2).mean() * 1e-3 + (reg.penalty() if weight else 0.0)
                reg._seen = []
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            return float(kurtosis(lin(x)).mean())

    plain, reg = train(0.0), train(0.05)
    assert plain > 10 and reg < 0.5 * plain


def test_input_qat_quantizes_and_learns_its_clip():
    from gqa_lut.nn import InputQuantizer, quantize_inputs, remove_input_quantizers

    q = InputQuantizer(bits=4, init=1.4)                       # step 0.2, codes -7 .. 7
    x = torch.tensor([0.05, 0.11, -0.29, 2.0, -5.0], requires_grad=True)
    y = q(x)
    assert torch.allclose(y, torch.tensor([0.0, 0.2, -0.2, 1.4, -1.4]))
    y.sum().backward()
    assert torch.allclose(x.grad, torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0]))      # straight through, 0 clipped
    xs = x.detach() / 0.2
    want = ((torch.round(xs) - xs)[:3].sum() / 7 + 1.0 - 1.0).item()          # LSQ inside, +1 and -1 outside
    assert q.clip.grad.item() == pytest.approx(want, abs=1e-6)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    z = torch.randn(8, 4)
    ref_out = net(z)
    qs = quantize_inputs(net, bits=8)
    assert set(qs) == {"0", "2"}
    out = net(z)
    assert not torch.equal(out, ref_out) and torch.allclose(out, ref_out, atol=0.05)
    assert remove_input_quantizers(net) == 2 and torch.equal(net(z), ref_out)


# --- act_offset: the activation output as an unsigned operand -------------------------------------------

@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 5), per_token=st.booleans(),
       real=st.floats(1e-4, 0.5), top=st.integers(1, 2**24))
def test_unsigned_operand_requant_equals_reference(seed, rows, per_token, real, top):
    """OperandRequant(unsigned=True) on a non-negative register: uint8 codes equal to the Python-integer
    reference requantizers at bits + 1 signed bits (which a non-negative register keeps in
    [0, 2**bits - 1]); per token, the smallest shift whose row fits 255."""
    from intsim.layers import OperandRequant

    rng = np.random.default_rng(seed)
    acc = rng.integers(0, top + 1, size=(rows, 7)).astype(np.int64)
    op = OperandRequant(real, 8, per_token, unsigned=True)
    y, t, sat = op(acc)
    assert y.dtype == np.uint8
    if per_token:
        want, ts = ref.requantize_dynamic(acc.tolist(), [int(op.m0[0])] * 7, [int(op.n[0])] * 7, 9)
        assert t.tolist() == ts
    else:
        want, s, _, _ = ref.requantize_channels(acc.tolist(), [0] * 7, [int(op.m0[0])] * 7, [int(op.n[0])] * 7, 9)
        assert sat == s
    assert y.astype(np.int64).tolist() == want
    assert min(min(r) for r in want) >= 0


@pytest.mark.parametrize("table", ["gelu16", "gelu16_in12", "gelu8"])
def test_activation_offset_is_the_units_least_output(table):
    """``C`` is minus the least output code over EVERY input code (the reference unit, Python
    integers): the offset register ``a + C`` is never negative, whatever the input."""
    from intsim.gelu import PWLActivation
    from intsim.outliers import activation_offset

    k = PWLActivation(4.0, SimConfig(gelu_table=table).gelu_table)
    codes = range(-(1 << (k.in_bits - 1)), 1 << (k.in_bits - 1))
    least = min(ref.table_output(q, k.e, k.table) for q in codes)
    assert activation_offset(k) == -least > 0
    assert abs(least * k.out_scale + 0.17) < 0.005          # GELU's minimum, -0.170 at x = -0.75


def test_act_offset_integer_ffn_equals_reference(model, tok, calib, sentences):
    """The encoder's FFN middle with act_offset, bit for bit against the Python-integer reference on
    real activations: ``u = requantize_dynamic(a + C)`` (9 signed bits, >= 0, uint8), then the
    out-projection ``u @ W_q`` (uint8 x int8) with the bias folding ``-W_q c`` and the residual add;
    the FP32 identity of the fold holds (``W (x + c) + b - W c = W x + b``, to 1e-5)."""
    from intsim.int_bert import IntBert

    enc = IntBert(model, calib, SimConfig(outliers="smooth+per_token+act_offset"))
    blk = enc.blocks[2]
    ffn, lin = blk.ffn, blk.ffn_out
    assert ffn.offset > 0 and isinstance(ffn.factor, OperandTransform) and ffn.factor.quantized_fold
    ids, mask = tok(sentences[:3])
    trace = {}
    enc.hidden(ids, mask, trace=trace)
    p = "blocks.2."
    a, u, t_u = trace[p + "gelu_out"], trace[p + "gelu_q"], trace[p + "gelu_q_shift"]
    assert u.dtype == np.uint8
    rows = (a.reshape(-1, a.shape[-1]).astype(np.int64) + ffn.offset)[:6]              # the first six tokens
    cols = rows.shape[1]
    want_u, want_t = ref.requantize_dynamic(rows.tolist(), [int(ffn.requant.m0[0])] * cols,
                                            [int(ffn.requant.n[0])] * cols, 9)
    assert u.reshape(-1, cols)[:6].astype(np.int64).tolist() == want_u
    assert t_u.reshape(-1)[:6].tolist() == want_t
    wq = lin.wt.array.astype(np.int64).tolist()                                          # (in, out)
    acc = ref.matmul([[int(v) for v in r] for r in want_u], wq)
    res = trace[p + "ln1_res"].reshape(-1, lin.wt.shape[1])[:6].tolist()
    want, _, _, _ = ref.requantize_channels(acc, lin.bias.tolist(), lin.m0.tolist(), lin.n.tolist(), 16,
                                            residual_rows=res, row_shifts=want_t)
    assert trace[p + "sum2"].reshape(-1, lin.wt.shape[1])[:6].tolist() == want
    # the fold in real arithmetic: the consumer of a + c with bias b - W c is the consumer of a
    w, b = _np(model.blocks[2].ffn_out.weight).astype(np.float64), _np(model.blocks[2].ffn_out.bias)
    x = np.random.default_rng(0).normal(size=(8, w.shape[1]))
    t = ffn.factor
    assert np.abs(t.operand(x) @ t.weights(w).T + t.bias(w, b) - (x @ w.T + b)).max() < 1e-5
    wdq = lin.wt.array.T.astype(np.float64) * (lin.acc_scale / ffn.out_scale)[:, None]
    assert np.abs(t.operand(x) @ wdq.T + t.bias_quantized(wdq, b) - (x @ wdq.T + b)).max() < 1e-5


def test_token_mantissa_integer_ffn_and_context_equal_reference(model, tok, calib, sentences):
    """The default (``token_mantissa``) on real activations, bit for bit against the Python-integer
    references: the GELU output ``a + C`` requantized per row at ``mu * 2**(k - 3)`` times the nominal
    scale (uint8 codes, the rows' mantissas and exponents), then the out-projection with the row
    scales, bias and residual; the context operand likewise (int8) and its out-projection."""
    from intsim.fixedpoint import RowScale
    from intsim.int_bert import IntBert

    enc = IntBert(model, calib, SimConfig())
    assert "token_mantissa" in enc.cfg.outliers and enc.cfg.token_mantissa_bits == 3
    blk = enc.blocks[1]
    ffn, lin = blk.ffn, blk.ffn_out
    ids, mask = tok(sentences[:3])
    trace = {}
    enc.hidden(ids, mask, trace=trace)
    p = "blocks.1."
    for reg, codes, g, req, out, res, sum_, bits in (
            ((trace[p + "gelu_out"].astype(np.int64) + ffn.offset), trace[p + "gelu_q"],
             RowScale(trace[p + "gelu_q_mantissa"], trace[p + "gelu_q_shift"], 3), ffn.requant, lin,
             trace[p + "ln1_res"], trace[p + "sum2"], 9),
            (trace[p + "ctx_acc"], trace[p + "ctx"], RowScale(trace[p + "ctx_mantissa"], trace[p + "ctx_shift"], 3),
             blk.attn.ctx, blk.attn.out, None, trace[p + "sum1"], 8)):
        assert req.mantissa_bits == 3
        cols = reg.shape[-1]
        rows = reg.reshape(-1, cols)[:6].tolist()                                        # the first six tokens
        want_y, want_mu, want_k, want_sat = ref.requantize_rows(rows, [int(req.m0[0])] * cols, [int(req.n[0])] * cols,
                                                               bits, 3)
        assert codes.reshape(-1, cols)[:6].astype(np.int64).tolist() == want_y and want_sat == 0
        assert g.mantissa.reshape(-1)[:6].tolist() == want_mu and g.shift.reshape(-1)[:6].tolist() == want_k
        assert len(set(want_k)) > 1 and len(set(want_mu)) > 1                            # the rows' scales differ
        if res is None:                                                                  # attention: the residual is the block input
            continue
        acc = ref.matmul(want_y, out.wt.array.astype(np.int64).tolist())
        r = res.reshape(-1, out.wt.shape[1])[:6].tolist()
        want, _, _, _ = ref.requantize_channels_rows(acc, out.bias.tolist(), out.m0.tolist(), out.n.tolist(), 16,
                                                     want_mu, want_k, 3, residual_rows=r)
        assert sum_.reshape(-1, out.wt.shape[1])[:6].tolist() == want


def test_token_mantissa_config_and_gated_site():
    """token_mantissa refines per_token (alone: refused, the fix named), its width is checked; on a
    gated site (SwiGLU) the up operand's power-of-two row shifts add to the row exponents."""
    from intsim.errors import GQAError
    from intsim.fixedpoint import RowScale
    from intsim.layers import ActivationSite
    from intsim.registry import ACTIVATIONS

    with pytest.raises(GQAError, match=r"refines per_token.*give per_token\+token_mantissa") as ei:
        SimConfig(outliers="token_mantissa")
    assert ei.value.field == "outliers"
    for bad in (-1, 9, 2.5):
        with pytest.raises(GQAError) as ei:
            SimConfig(token_mantissa_bits=bad)
        assert ei.value.field == "token_mantissa_bits"
    assert "(m=3)" in SimConfig().describe() and "(m=" not in SimConfig(outliers="per_token").describe()

    class Calib:
        def absmax(self, name, pc=100.0):
            return 2.0

        def token_max(self, name):
            return 1.0

    cfg = SimConfig(outliers="per_token+token_mantissa", silu_table="silu16", token_mantissa_bits=2)
    kernel = ACTIVATIONS.make("pwl", cfg, 4.0, "blocks.0.silu", function="silu")
    rng = np.random.default_rng(0)
    site = ActivationSite(rng.normal(size=(6, 4)), None, 0.05, None, kernel, Calib(), "out", [rng.normal(size=(4, 6))],
                          cfg, name="silu", w_up=rng.normal(size=(6, 4)), up_site="up", token_input=True)
    x8 = rng.integers(-127, 128, (2, 5, 4)).astype(np.int8)
    trace = {}
    a8, g = site(x8, None, trace=trace)
    assert isinstance(g, RowScale) and g.bits == 2 and g.shape == (2, 5)
    t_u = trace["silu_up_shift"]
    # the row scale without the up operand's shift is the requantizer's own (a + u: a RowScale + shifts)
    own = site.requant(trace["silu_out"], None)[1]                       # silu_out: the gated product
    assert np.array_equal(g.shift, own.shift + t_u) and np.array_equal(g.mantissa, own.mantissa)


def test_act_offset_leaves_a_gated_site_signed():
    """A gated activation (SwiGLU: silu(gate) * up, signed and unbounded) keeps its int8 operand under
    act_offset: no offset, no transform."""
    from intsim.layers import ActivationSite

    class Calib:                                   # the two statistics a gated site reads
        def absmax(self, name, pc=100.0):
            return 2.0

        def token_max(self, name):
            return 1.0

    from intsim.registry import ACTIVATIONS
    cfg = SimConfig(outliers="per_token+act_offset", silu_table="silu16")
    kernel = ACTIVATIONS.make("pwl", cfg, 4.0, "blocks.0.silu", function="silu")
    rng = np.random.default_rng(0)
    site = ActivationSite(rng.normal(size=(6, 4)), None, 0.05, None, kernel, Calib(), "out", [rng.normal(size=(4, 6))],
                          cfg, name="silu", w_up=rng.normal(size=(6, 4)), up_site="up")
    assert site.offset == 0 and not site.requant.unsigned and not isinstance(site.factor, OperandTransform)


def test_act_offset_needs_an_element_wise_unit():
    """No bound per code for a row-wise unit (I-ViT's ShiftGELU reads its row's maximum): no offset,
    the site keeps int8; I-BERT's element-wise i-GELU gets one."""
    from intsim.ibert import IBertGelu as IGelu
    from intsim.ivit import ShiftGelu
    from intsim.outliers import activation_offset

    assert activation_offset(ShiftGelu(5.0)) is None
    c = activation_offset(IGelu(5.0))
    assert c is not None and abs(c * IGelu(5.0).out_scale - 0.171) < 0.005
