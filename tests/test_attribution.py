"""Per-site attribution: the torch mirror of the integer datapath against FP32 and the integer model,
site switches, costs, the figure and the CLI's bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from intsim import attribution as A
from intsim.errors import GQAError
from intsim.genres import genre_sentences
from intsim.metrics import cosine_rows

SENTS = genre_sentences("news", 10) + genre_sentences("technical", 10)


@pytest.fixture(scope="module")
def calib(model, tok):
    from intsim.calibration import calibrate
    from intsim.sentences import calibration_sentences

    return calibrate(model, tok, calibration_sentences(24))


@pytest.fixture(scope="module")
def mirror(model, calib):
    """The mirror of the default encoder (``mirror.enc``: the integer model itself)."""
    from intsim.int_bert import IntBert

    return A.Mirror(IntBert(model, calib), model)


@pytest.fixture(scope="module")
def batch(tok):
    return tok(SENTS)


def test_all_sites_off_is_fp32(mirror, model, batch):
    ids, mask = batch
    with torch.inference_mode():
        ref = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    assert np.abs(mirror(ids, mask, frozenset()) - ref).max() < 1e-5


def test_all_sites_on_tracks_the_integer_model(mirror, model, batch):
    ids, mask = batch
    with torch.inference_mode():
        ref = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    on = mirror(ids, mask, frozenset(A.site_names(mirror.n_layers)))
    emb_int = mirror.enc.embed(ids, mask)
    int_err = 1 - cosine_rows(emb_int, ref).mean()
    gap = 1 - cosine_rows(on, emb_int).mean()
    on_err = 1 - cosine_rows(on, ref).mean()
    print(f"integer 1-cos {int_err:.3e}, mirror {on_err:.3e}, mirror vs integer {gap:.3e}")
    # the mirror reproduces the integer model's error LEVEL (what attribution divides up) closely;
    # its rounding decisions are not all the kernels' (float64 between the roundings), and a flipped
    # int8 code propagates, so the two realisations differ by about as much as each differs from FP32
    assert abs(on_err - int_err) < 0.15 * int_err
    assert gap < 1.2 * int_err


def test_one_site_changes_only_its_tensor(mirror, batch):
    ids, mask = batch
    off, one = {}, {}
    mirror(ids, mask, frozenset(), trace=off)
    mirror(ids, mask, frozenset({"blocks.2.q"}), trace=one)
    assert set(off) == set(one)
    upstream = [k for k in off if k.startswith(("emb.", "blocks.0.", "blocks.1."))] + ["blocks.2.qkv_in",
                                                                                       "blocks.2.k", "blocks.2.v"]
    for k in upstream:
        assert torch.equal(off[k], one[k]), k
    s_q = mirror.enc.blocks[2].attn.s_q
    assert torch.equal(one["blocks.2.q"], A.fake_quant(off["blocks.2.q"], s_q, 8))
    assert not torch.equal(one["blocks.2.q"], off["blocks.2.q"])
    assert not torch.equal(one["blocks.2.probs"], off["blocks.2.probs"])     # downstream follows


def test_pwl_sites_use_the_tables(mirror, batch):
    ids, mask = batch
    t_in, t_tab = {}, {}
    mirror(ids, mask, frozenset({"blocks.1.gelu_in"}), trace=t_in)
    mirror(ids, mask, frozenset({"blocks.1.gelu_in", "blocks.1.gelu_table"}), trace=t_tab)
    k = mirror.enc.blocks[1].ffn.kernel
    codes = torch.round(t_tab["blocks.1.gelu_in"] / k.in_scale)
    expect = k.table.evaluate(codes.numpy().astype(np.int64), k.e)
    assert np.array_equal(t_tab["blocks.1.gelu"].numpy(), expect)          # intsim's own unit on the codes
    assert torch.allclose(t_in["blocks.1.gelu"], torch.nn.functional.gelu(t_in["blocks.1.gelu_in"]))


def test_mantissa_function_reduces_the_range():
    x = torch.tensor([0.3, 1.0, 5.0, 1000.0], dtype=torch.float64)
    r = A.mantissa_function(x, 1, None, 0, False, False, lambda m: 1.0 / m)
    assert torch.allclose(r, 1.0 / x)
    s = A.mantissa_function(x, 2, None, 0, False, False, lambda m: m**-0.5)
    assert torch.allclose(s, x**-0.5)


def test_per_token_quantizers_follow_the_kernels():
    from intsim.fixedpoint import requantize_dynamic
    from intsim.layers import multipliers

    rng = np.random.default_rng(0)
    acc = rng.integers(-40000, 40000, size=(6, 50)).astype(np.int64)
    acc[0] //= 100                                                        # one row without a shift
    s = 0.013
    m0, n = multipliers(s)
    y, t = requantize_dynamic(acc, m0, n, 8)
    fq = A.fake_quant_requant_per_token(torch.from_numpy(acc.astype(np.float64)), 1 / s, 8).numpy()
    expect = y.astype(np.float64) * 2.0 ** t[:, None] / s
    assert np.mean(np.abs(fq - expect) > 1e-9) < 0.01                      # ties of the first rounding only


def test_row_mantissa_quantizer_follows_the_kernel():
    """token_mantissa's mirror: the same row scales (mantissa, exponent) as requantize_rows, and the
    same codes but for ties of the kernel's SRDHM (one rounding, 2**-8 of a code below)."""
    from intsim.fixedpoint import requantize_rows
    from intsim.layers import multipliers

    rng = np.random.default_rng(0)
    acc = (rng.gamma(0.6, 1, (40, 96)) * 2.0 ** rng.integers(6, 18, (40, 1))).astype(np.int64)
    acc[0] = 0                                                            # a zero row: the finest scale
    s = 0.013
    m0, n = multipliers(s)
    for m in (0, 3):
        y, g, _ = requantize_rows(acc, m0, n, 9, m)
        fq = A.fake_quant_requant_row_mantissa(torch.from_numpy(acc.astype(np.float64)), 1 / s, 9, m).numpy()
        expect = y.astype(np.float64) * g.factor()[:, None] / s
        # measured: 0 (m = 0) and 0.16% (m = 3) of the codes, each a tie within the SRDHM's 2**-8
        assert np.mean(np.abs(fq - expect) > 1e-9 * np.abs(expect).max()) < 0.01


def test_weight_only_model_rounds_only_linear_weights(model):
    from intsim.layers import quantize_weight

    wo = A.weight_only_model(model)
    w = model.blocks[0].ffn_in.weight.detach().double().numpy()
    q, s = quantize_weight(w, 8, True)
    assert np.allclose(wo.blocks[0].ffn_in.weight.detach().double().numpy(), q * s[:, None], atol=1e-7)
    assert not torch.equal(wo.blocks[0].ffn_in.weight, model.blocks[0].ffn_in.weight)
    assert torch.equal(wo.blocks[0].ffn_in.bias, model.blocks[0].ffn_in.bias)
    assert torch.equal(wo.embeddings.word.weight, model.embeddings.word.weight)


def test_site_ops_cover_every_site(mirror, tok):
    encoder = mirror.enc
    from intsim.opstats import OpStats

    stats = OpStats()
    ids, mask = tok(SENTS[:3])
    encoder.embed(ids, mask, stats)
    d = stats.to_dict()
    names = sorted({e["op"] for k in ("mac", "lut", "add", "mul", "shift", "compare", "div") for e in d[k]})
    for site in A.site_names(len(encoder.blocks)):
        layer, cls = site.rsplit(".", 1)
        assert A.site_ops(cls, layer, names), site
    assert set(A.site_ops("gelu_table", "all", names)) == {f"blocks.{i}.gelu" for i in range(6)}


def test_attribute_rows_costs_table_and_figure(mirror, model, tok, tmp_path):
    encoder = mirror.enc
    from hw_models.model_energy import model_energy
    from intsim.opstats import OpStats

    stats = OpStats()
    r = A.attribute(encoder, model, tok, SENTS[:8], classes=["gelu_in", "recip_table"], stats=stats)
    assert [x["site"] for x in r["rows"]] == ["gelu_in", "recip_table"]
    gelu, recip = r["rows"]
    assert gelu["only_int"]["one_minus_cos"] > 10 * recip["only_int"]["one_minus_cos"]
    # exact GELU inputs with every other site integer: the error without the GELU input's own, which the
    # sites' errors may cancel in either direction (over 8 sentences 0.99x all sites integer on Intel,
    # 1.009x on Zen 4, 1.12x on Zen 3 since the smoothing factors are float64). To first order the
    # embedding error is the sum of the sites' errors and sqrt(1 - cos) its norm (the chord between
    # unit vectors), so Minkowski bounds it: sqrt(only_exact) <= sqrt(all on) + sqrt(GELU input alone)
    bound = math.sqrt(r["mirror_all_on"]["one_minus_cos"]) + math.sqrt(gelu["only_int"]["one_minus_cos"])
    assert math.sqrt(gelu["only_exact"]["one_minus_cos"]) < 1.05 * bound
    e = model_energy(stats.to_dict())
    A.attach_costs(r, e["int"]["by_op"], e["fp32"]["by_op"])
    assert gelu["energy_int_pj"] > 0 and gelu["energy_fp32_pj"] > 0 and gelu["ops"] == [
        f"blocks.{i}.ffn_in.requant" for i in range(6)]
    md = A.table_markdown(r)
    assert "| gelu_in |" in md and "energy" in md
    fig = tmp_path / "a.png"
    A.plot_attribution(r, fig)
    assert fig.read_bytes()[:4] == b"\x89PNG"
    json.dumps(r)                                                          # the CLI writes it as JSON


def test_bad_input_names_the_field(mirror, model, tok):
    encoder = mirror.enc
    with pytest.raises(GQAError, match="sentences"):
        A.attribute(encoder, model, tok, SENTS[:2])
    with pytest.raises(GQAError, match="classes: 'nope' is not a site class"):
        A.parse_classes("gelu_in,nope")
    with pytest.raises(GQAError, match="sites: 'blocks.9.q'"):
        A.check_sites({"blocks.9.q"}, 6)


def test_configs_the_mirror_does_not_cover_are_refused(model, calib):
    from intsim.config import SimConfig
    from intsim.int_bert import IntBert

    for kw, field in ((dict(gelu="ibert"), "gelu"), (dict(reciprocal="divider"), "reciprocal")):
        other = IntBert(model, calib, SimConfig(**kw))
        with pytest.raises(GQAError, match=f"{field}: .*PWL kernels only"):
            A.Mirror(other, model)


def test_cli_attribute_bad_input(tmp_path, capsys):
    from gqa_cli.main import main

    text = tmp_path / "s.txt"
    text.write_text("One sentence here.\nAnother one.\n", encoding="utf-8")
    assert main(["sim", "--text", str(text), "--attribute-figure", str(tmp_path / "f.png")]) != 0
    assert "give --attribute" in capsys.readouterr().err
    assert main(["sim", "--text", str(text), "--attribute", str(tmp_path / "a.json"),
                 "--attribute-classes", "bogus"]) != 0
    assert "--attribute-classes: 'bogus' is not a site class" in capsys.readouterr().err
    assert main(["sim", "--text", str(text), "--attribute", str(tmp_path / "a.json"), "--calib", "4", "-q"]) != 0
    assert "too few for an attribution" in capsys.readouterr().err
    assert not (tmp_path / "a.json").exists()


@pytest.fixture(scope="module")
def mirror_offset(model, calib):
    """The mirror of the encoder with the unsigned GELU-output operand (``act_offset``)."""
    from intsim.config import SimConfig
    from intsim.int_bert import IntBert

    return A.Mirror(IntBert(model, calib, SimConfig(outliers="smooth+per_token+act_offset")), model)


def test_act_offset_mirror_off_is_fp32_and_on_tracks_the_integer_model(mirror_offset, model, batch):
    """The mirror follows the uint8 operand: every site off is still FP32 (the shift's fold ``b - W c``
    cancels), every site on tracks the integer model as the default's does, and the ffn_mid site
    alone puts ``a + c`` on the unsigned grid (no negative code)."""
    ids, mask = batch
    with torch.inference_mode():
        ref = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    assert np.abs(mirror_offset(ids, mask, frozenset()) - ref).max() < 1e-5
    on = mirror_offset(ids, mask, frozenset(A.site_names(mirror_offset.n_layers)))
    emb_int = mirror_offset.enc.embed(ids, mask)
    int_err, on_err = 1 - cosine_rows(emb_int, ref).mean(), 1 - cosine_rows(on, ref).mean()
    assert abs(on_err - int_err) < 0.15 * int_err
    assert 1 - cosine_rows(on, emb_int).mean() < 1.2 * int_err
    off, one = {}, {}
    mirror_offset(ids, mask, frozenset(), trace=off)
    mirror_offset(ids, mask, frozenset({"blocks.1.ffn_mid"}), trace=one)
    ffn = mirror_offset.enc.blocks[1].ffn
    c = ffn.offset * ffn.kernel.out_scale
    assert ffn.requant.unsigned and c > 0.1
    assert torch.allclose(off["blocks.1.ffn_mid"], off["blocks.1.gelu"] + c)     # the operand is a + c
    codes = one["blocks.1.ffn_mid"] / ffn.out_scale                             # code * 2**t
    assert codes.min() >= 0 and not torch.equal(one["blocks.1.ffn_mid"], off["blocks.1.ffn_mid"])


def test_norm_mantissa_mirror_tracks_the_integer_model_and_its_row_scales(model, calib, batch):
    """``norm_mantissa``: every site off is FP32, every site on tracks the integer model, and the
    qkv_in site alone holds each token at its own scale ``s * mu * 2**(k - m)``: the kernel's row
    scales, for almost every token (float64 before the pick can move a row at a boundary)."""
    from intsim.config import SimConfig
    from intsim.int_bert import IntBert

    enc = IntBert(model, calib, SimConfig(outliers="smooth+per_token+act_offset+token_mantissa+norm_mantissa"))
    mirror = A.Mirror(enc, model)
    ids, mask = batch
    with torch.inference_mode():
        ref = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    assert np.abs(mirror(ids, mask, frozenset()) - ref).max() < 1e-5
    on = mirror(ids, mask, frozenset(A.site_names(mirror.n_layers)))
    emb_int = enc.embed(ids, mask)
    int_err, on_err = 1 - cosine_rows(emb_int, ref).mean(), 1 - cosine_rows(on, ref).mean()
    assert abs(on_err - int_err) < 0.15 * int_err
    trace = {}
    mirror(ids, mask, frozenset({"blocks.0.qkv_in"}), trace=trace)
    real = trace["blocks.0.qkv_in"].numpy()                                # (B, T, C)
    x = enc.embeddings(ids, np.arange(ids.shape[1]))
    _, x8, g = enc.emb_ln(x)
    scale = enc.emb_ln.gemm_scale * np.asarray(A._smoothing(enc.emb_ln.factor, 1))
    step = scale * g.factor()[..., None]                                   # the kernel's per-token step
    codes = real / step
    same = np.all(np.abs(codes - np.rint(codes)) < 1e-6, axis=-1)[mask.astype(bool)]
    assert same.mean() > 0.9, same.mean()
