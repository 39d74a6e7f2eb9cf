"""intsim.layers on their own: grouped KV heads are full multi-head attention with repeated K/V
heads (bit for bit), under every mask policy; norm sites with one or two outputs."""

from __future__ import annotations

import numpy as np
import pytest

from intsim import GQAError
from intsim.calibration import Calibration, TensorStats
from intsim.config import SimConfig
from intsim.layers import IntAttention, ModelSites, NormSite, Scope, Site
from intsim.registry import NORMS

SCOPE = Scope("a", q=Site("q"), k=Site("k"), v=Site("v"), ctx=Site("o", "in"), x=Site("x"))


def fake_calibration(ranges: dict) -> Calibration:
    """Statistics with the given absmax per tensor (flat channel maxima, median token at half)."""
    stats = {n: TensorStats(absmax=r, percentiles={}, channel_max=np.full(C, r), hist=np.zeros(48, np.int64),
                            kurtosis=3.0, token_max_p50=r / 2) for n, r in ranges.items()}
    return Calibration(stats, 1, 1)


C, H, G, T = 24, 6, 2, 7
d = C // H


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("outliers", ["none", "per_token"])
def test_grouped_kv_heads_are_repeated_kv_heads(causal, outliers):
    rng = np.random.default_rng(0)
    wq, wo = rng.normal(0, 0.3, (C, C)), rng.normal(0, 0.3, (C, C))
    wk, wv = rng.normal(0, 0.3, (G * d, C)), rng.normal(0, 0.3, (G * d, C))
    bq, bk, bv, bo = (rng.normal(0, 0.1, n) for n in (C, G * d, G * d, C))
    # the same attention with H K/V heads: K/V head g repeated for its H/G query heads
    rep = lambda w: np.repeat(w.reshape(G, d, *w.shape[1:]), H // G, axis=0).reshape(H * d, *w.shape[1:])  # noqa: E731
    cfg = SimConfig(outliers=outliers)
    calib = fake_calibration({"a.q": 3.0, "a.k": 2.5, "a.v": 2.0, "a.ctx": 1.5, "a.x": 1.0})
    grouped = IntAttention((wq, bq, wk, bk, wv, bv, wo, bo), H, G, 1 / 64, None, SCOPE(), calib, cfg, 2.0**-9,
                           "pwl", causal=causal)
    full = IntAttention((wq, bq, rep(wk), rep(bk), rep(wv), rep(bv), wo, bo), H, H, 1 / 64, None, SCOPE(), calib,
                        cfg, 2.0**-9, "pwl", causal=causal)
    x8 = rng.integers(-127, 128, (3, T, C)).astype(np.int8)
    res = rng.integers(-3000, 3000, (3, T, C)).astype(np.int16)
    mask = np.ones((3, T), np.uint8)
    mask[1, 5:] = 0
    tg, tf = {}, {}
    a = grouped(x8, None, res, mask, trace=tg)
    b = full(x8, None, res, mask, trace=tf)
    assert a.dtype == np.int16 and np.array_equal(a, b)
    assert tg["qkv"].shape[-1] == (H + 2 * G) * d and np.array_equal(tg["probs"], tf["probs"])
    if causal:
        assert not tg["probs"][0, :, 0, 1:].any()          # the first query sees only itself
    with pytest.raises(GQAError, match="kv_heads"):
        IntAttention((wq, bq, wk, bk, wv, bv, wo, bo), H, 4, 1 / 64, None, SCOPE(), calib, cfg, 2.0**-9, "pwl")


@pytest.mark.parametrize("softmax", ["pwl", "ibert", "ivit", "illm"])
@pytest.mark.parametrize("prob_bits", [8, 12])
def test_attention_with_wide_probabilities(softmax, prob_bits):
    """``prob_bits`` reaches every softmax kernel; the fused kernel (no trace) and the unfused steps
    (trace: uint16 probabilities through int_gemm_unsigned) give the same sums; 12-bit codes are
    wider than UINT8 and the context requantizer reads them at 2**-12."""
    rng = np.random.default_rng(1)
    wq, wo = rng.normal(0, 0.3, (C, C)), rng.normal(0, 0.3, (C, C))
    wk, wv = rng.normal(0, 0.3, (G * d, C)), rng.normal(0, 0.3, (G * d, C))
    calib = fake_calibration({"a.q": 3.0, "a.k": 2.5, "a.v": 2.0, "a.ctx": 1.5, "a.x": 1.0})
    att = IntAttention((wq, None, wk, None, wv, None, wo, None), H, G, 1 / 64, None, SCOPE(), calib,
                       SimConfig(prob_bits=prob_bits, softmax=softmax), 2.0**-9, softmax, causal=True)
    assert att.softmax.out_bits == prob_bits
    x8 = rng.integers(-127, 128, (2, T, C)).astype(np.int8)
    res = np.zeros((2, T, C), np.int16)
    mask = np.ones((2, T), np.uint8)
    trace = {}
    unfused = att(x8, None, res, mask, trace=trace)
    assert np.array_equal(att(x8, None, res, mask), unfused)
    p = trace["probs"]
    assert p.dtype == (np.uint8 if prob_bits == 8 else np.uint16) and p.max() < 2**prob_bits
    assert (p.max() > 255) == (prob_bits > 8)
    with pytest.raises(GQAError, match="prob_bits"):
        SimConfig(prob_bits=17)


def test_norm_site_outputs():
    rng = np.random.default_rng(1)
    gamma, beta = rng.uniform(0.5, 1.5, C), rng.normal(0, 0.1, C)
    calib = fake_calibration({"a.x": 4.0})
    cfg = SimConfig(outliers="none")
    kernel = NORMS.make("pwl", cfg)
    x = rng.integers(-20000, 20000, (2, T, C)).astype(np.int32)
    both = NormSite(gamma, beta, kernel, calib, "a.x", cfg, 2.0**-10, consumers=[rng.normal(size=(5, C))])
    gemm_only = NormSite(gamma, beta, kernel, calib, "a.x", cfg, None, consumers=[rng.normal(size=(5, C))])
    res_only = NormSite(gamma, beta, kernel, calib, "a.x", cfg, 2.0**-10)
    r, g, t = both(x)
    assert r.dtype == np.int16 and g.dtype == np.int8 and t is None
    assert np.array_equal(gemm_only(x)[1], g) and gemm_only(x)[0] is None
    assert np.array_equal(res_only(x)[0], r) and res_only(x)[1] is None
    no_beta = NormSite(gamma, None, kernel, calib, "a.x", cfg, 2.0**-10)
    assert not np.array_equal(no_beta(x)[0], r)
    with pytest.raises(GQAError, match="needs an output"):
        NormSite(gamma, beta, kernel, calib, "a.x", cfg, None)


def test_site_declaration_names():
    sites = ModelSites(blk=Scope("blocks.{i}", "layers.{i}", repeat="layers", q=Site("attn.q"), x=Site("ln", "in",
                                                                                                      residual=True)))
    assert sites.blk(3).q == "blocks.3.q"
    with pytest.raises(AttributeError, match="no calibration site 'k'"):
        sites.blk(0).k


def test_a_site_the_calibration_did_not_observe_is_a_clear_error():
    with pytest.raises(GQAError, match="observed no tensor 'a.nope'"):
        fake_calibration({"a.x": 1.0}).absmax("a.nope")


# --- weight scales (WEIGHT_SCALES): each row's real range -----------------------------------------

def _row_error(row, rng, top):
    """A row's squared quantization error at range ``rng`` (Python floats; round half to even as np.rint)."""
    s = max(rng, 1e-12) / top
    return sum((x - s * max(-top, min(top, round(x / s)))) ** 2 for x in row)


def test_mse_weight_range_is_the_best_clip_of_its_grid():
    from intsim.layers import quantize_weight
    from intsim.registry import WEIGHT_MSE_GRID, WEIGHT_SCALES

    rng = np.random.default_rng(3)
    w = rng.standard_t(2.5, (12, 96))
    w[0] = rng.uniform(-1, 1, 96)
    w[0, 5] = 1.6                      # a lone large weight: at 4 bits clipping it serves the rest better
    w[1] = rng.integers(-127, 128, 96) * 0.01       # codes exactly on the unclipped grid: error 0, no clip
    w[1, 0] = 1.27
    for bits in (8, 4):
        top = (1 << (bits - 1)) - 1
        got = WEIGHT_SCALES.impl("mse")(w, bits)
        for r, row in enumerate(w.tolist()):
            amax = max(abs(x) for x in row)
            errs = [_row_error(row, c * amax, top) for c in WEIGHT_MSE_GRID]
            assert _row_error(row, got[r], top) <= min(errs) * (1 + 1e-9) + 1e-300, (bits, r)
            assert got[r] in [c * amax for c in WEIGHT_MSE_GRID]
        assert (got[0] < 1.6) == (bits == 4)      # at 8 bits the clip's error outweighs the resolution gained
        q, s = quantize_weight(w, bits, WEIGHT_SCALES.impl("mse"))
        assert np.array_equal(s, got / top) and np.abs(q).max() <= top
    assert WEIGHT_SCALES.impl("mse")(w, 8)[1] == 1.27


def test_weight_scale_flags_are_the_registered_ranges():
    from intsim.layers import quantize_weight
    from intsim.registry import WEIGHT_SCALES

    w = np.random.default_rng(0).normal(size=(5, 7))
    for flag, name in ((True, "per_channel"), (False, "per_tensor")):
        q, s = quantize_weight(w, 8, flag)
        q2, s2 = quantize_weight(w, 8, WEIGHT_SCALES.impl(name))
        assert np.array_equal(q, q2) and np.array_equal(s, s2)
    assert np.allclose(quantize_weight(w, 8, False)[1], np.abs(w).max() / 127)
    assert np.allclose(quantize_weight(w, 8, True)[1], np.abs(w).max(axis=1) / 127)
