"""A second model from the shared integer layers alone: a two-block pre-norm decoder with a causal
mask, grouped KV heads and a gated (SwiGLU) FFN, random FP32 weights, its own calibration-site
declaration; it runs integer-only and tracks its FP32 version."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from intsim.calibration import calibrate
from intsim.config import SimConfig
from intsim.layers import (ActivationSite, IntAttention, IntEmbedding, IntLinear, ModelSites, NormSite,
                           OperandRequant, Scope, Site, act_scale)
from intsim.opstats import OpStats
from intsim.registry import ACTIVATIONS, NORMS
from intsim.sentences import calibration_sentences, evaluation_sentences

VOCAB, C, HEADS, KV_HEADS, FFN, LAYERS, MAX_T = 96, 48, 6, 2, 96, 2, 40


# --- the FP32 model ------------------------------------------------------------------------------------

class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.d = C // HEADS
        self.q = nn.Linear(C, C, bias=False)
        self.k = nn.Linear(C, KV_HEADS * self.d, bias=False)
        self.v = nn.Linear(C, KV_HEADS * self.d, bias=False)
        self.o = nn.Linear(C, C, bias=False)

    def forward(self, x, mask):
        B, T, _ = x.shape
        q = self.q(x).view(B, T, HEADS, self.d).transpose(1, 2)                  # (B, H, T, d)
        k = self.k(x).view(B, T, KV_HEADS, self.d).transpose(1, 2)               # (B, G, T, d)
        v = self.v(x).view(B, T, KV_HEADS, self.d).transpose(1, 2)
        k, v = k.repeat_interleave(HEADS // KV_HEADS, 1), v.repeat_interleave(HEADS // KV_HEADS, 1)  # (B, H, T, d)
        allowed = torch.ones(T, T, dtype=torch.bool).tril()[None, None] & mask[:, None, None, :].bool()
        att = (q @ k.transpose(-2, -1) / math.sqrt(self.d)).masked_fill(~allowed, torch.finfo(torch.float32).min)
        ctx = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C)             # (B, H, T, d) -> (B, T, C)
        return self.o(ctx)


class GatedMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(C, FFN, bias=False), nn.Linear(C, FFN, bias=False), \
            nn.Linear(FFN, C, bias=False)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.down(self.act(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.attn, self.ln2, self.mlp = nn.LayerNorm(C), Attention(), nn.LayerNorm(C), GatedMLP()

    def forward(self, x, mask):
        x = x + self.attn(self.ln1(x), mask)
        return x + self.mlp(self.ln2(x))


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(VOCAB, C), nn.Embedding(MAX_T, C)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln_f = nn.LayerNorm(C)

    def forward(self, ids, mask):
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))[None]
        for b in self.blocks:
            x = b(x, mask)
        return self.ln_f(x)


class ByteTokenizer:
    """Bytes of the text (mod the vocabulary), right-padded; what calibrate expects of a tokenizer."""

    def __call__(self, sentences, warn=True):
        seqs = [[c % VOCAB for c in s.encode()[:MAX_T]] for s in sentences]
        T = max(len(s) for s in seqs)
        ids, mask = np.zeros((len(seqs), T), np.int64), np.zeros((len(seqs), T), np.int64)
        for i, s in enumerate(seqs):
            ids[i, :len(s)], mask[i, :len(s)] = s, 1
        return ids, mask

    def id_to_token(self, i):
        return str(int(i))


# --- its calibration sites and integer version ---------------------------------------------------------

SITES = ModelSites(
    block=Scope("blocks.{i}", "blocks.{i}", repeat="blocks",
                x_in=Site("ln1", "in", residual=True), ln1_out=Site("ln1"),
                q=Site("attn.q"), k=Site("attn.k"), v=Site("attn.v"), ctx=Site("attn.o", "in"),
                mid=Site("ln2", "in", residual=True), ln2_out=Site("ln2"),
                gate=Site("mlp.gate"), up=Site("mlp.up"), act_out=Site("mlp.down", "in")),
    final=Scope("final", x_in=Site("ln_f", "in", residual=True), out=Site("ln_f")),
)


def _np(t):
    return t.detach().numpy()


class IntDecoder:
    """The decoder on integers: one residual-stream scale, pre-norm blocks, a causal grouped-KV
    attention and a gated FFN, all from intsim.layers."""

    def __init__(self, model: Decoder, calib, cfg: SimConfig):
        rb, pc = cfg.residual_bits, cfg.calib_percentile
        norm = NORMS.make(cfg.layernorm, cfg)
        stream = act_scale(max(calib.absmax(n) for n in calib.residual), rb, cfg.act_scales)  # never clips
        self.emb = IntEmbedding([_np(model.wte.weight), _np(model.wpe.weight)], cfg.embed_bits, True)
        self.to_stream = OperandRequant(self.emb.scale / stream, rb, per_token=False)
        self.blocks = []
        for i, b in enumerate(model.blocks):
            n, p = SITES.block(i), f"blocks.{i}."
            wq, wk, wv, wo = (_np(m.weight) for m in (b.attn.q, b.attn.k, b.attn.v, b.attn.o))
            wg, wu, wd = (_np(m.weight) for m in (b.mlp.gate, b.mlp.up, b.mlp.down))
            ln1 = NormSite(_np(b.ln1.weight), _np(b.ln1.bias), norm, calib, n.ln1_out, cfg, None,
                           consumers=[wq, wk, wv], percentile=pc)
            attn = IntAttention((wq, None, wk, None, wv, None, wo, None), HEADS, KV_HEADS, ln1.gemm_scale,
                                ln1.factor, n, calib, cfg, stream, cfg.softmax, causal=True)
            ln2 = NormSite(_np(b.ln2.weight), _np(b.ln2.bias), norm, calib, n.ln2_out, cfg, None,
                           consumers=[wg, wu], percentile=pc)
            silu = ACTIVATIONS.make(cfg.activation, cfg, calib.absmax(n.gate, pc), p + "silu")
            mlp = ActivationSite(wg, None, ln2.gemm_scale, ln2.factor, silu, calib, n.act_out, [wd], cfg,
                                 name="silu", w_up=wu, up_site=n.up, in_proj="gate", up_proj="up")
            down = IntLinear(wd, None, mlp.out_scale, cfg, stream, rb, col_factor=mlp.factor)
            self.blocks.append((p, ln1, attn, ln2, mlp, down))
        self.out_scale = act_scale(calib.absmax(SITES.final().out), rb, cfg.act_scales)
        self.ln_f = NormSite(_np(model.ln_f.weight), _np(model.ln_f.bias), norm, calib, SITES.final().out, cfg,
                             self.out_scale)

    def __call__(self, ids, mask, stats=None, trace=None):
        """(B, T) ids and mask -> the final norm's codes (B, T, C) at ``out_scale``."""
        B, T = ids.shape
        x = self.emb(ids, np.arange(T), stats=stats)                              # (B, T, C) int32
        x, _, _ = self.to_stream(x, stats, "embeddings.to_stream")                # (B, T, C) residual codes
        for p, ln1, attn, ln2, mlp, down in self.blocks:
            _, h8, t = ln1(x, stats)
            x = attn(h8, t, x, mask, stats, p, trace)                             # x + attn(ln1(x))
            _, m8, t = ln2(x, stats)
            a8, ta = mlp(m8, t, stats, p, trace)
            x, _ = down(a8, stats, p + "down", residual=x, row_shift=ta)           # x + mlp(ln2(x))
            if trace is not None:
                trace.update({p + "ln1_gemm": h8, p + "ln2_gemm": m8, p + "out": x})
        y, _, _ = self.ln_f(x, stats)
        if trace is not None:
            trace["final"] = y
        return y


@pytest.fixture(scope="module")
def setup():
    import gqa_lut

    torch.manual_seed(0)
    model = Decoder().eval()
    with torch.no_grad():                      # non-trivial norm parameters
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    tok = ByteTokenizer()
    calib = calibrate(model, tok, calibration_sentences(48), sites=SITES)
    silu = gqa_lut.search("silu", 16, "dp", progress=False)
    return model, tok, calib, silu


def _cosines(model, enc, tok, sentences):
    ids, mask = tok(sentences)
    with torch.no_grad():
        ref = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy().astype(np.float64)
    got = enc(ids, mask).astype(np.float64) * enc.out_scale
    real = mask.astype(bool)
    a, b = got[real], ref[real]
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("over", [{}, dict(outliers="none"), dict(softmax="ibert", layernorm="newton"),
                                  dict(softmax="ivit", reciprocal="divider")])
def test_second_model_is_integer_only_and_tracks_fp32(setup, over):
    model, tok, calib, silu = setup
    cfg = SimConfig.from_dict({"activation_table": silu, **over})
    enc = IntDecoder(model, calib, cfg)
    ids, mask = tok(evaluation_sentences(6))
    trace, stats = {}, OpStats()
    y = enc(ids, mask, stats, trace)
    assert len(trace) >= LAYERS * 10
    bad = {k: v.dtype for k, v in trace.items() if not np.issubdtype(v.dtype, np.integer)}
    assert not bad, bad
    assert trace["blocks.0.qkv"].shape[-1] == (HEADS + 2 * KV_HEADS) * (C // HEADS)   # grouped KV heads
    assert trace["blocks.0.silu_up"].dtype == np.int8 and trace["blocks.0.silu_out"].dtype == np.int64
    assert y.dtype == np.int16
    assert stats.to_dict()["total_overflows"] == 0
    cos = _cosines(model, enc, tok, evaluation_sentences(24))
    assert cos.mean() > 0.999 and cos.min() > 0.99, (cos.mean(), cos.min())   # measured 0.99996+, 0.9995+


def test_second_model_is_causal(setup):
    """A token's integers do not depend on later tokens (causal mask; per-token scaling is per row)."""
    model, tok, calib, silu = setup
    enc = IntDecoder(model, calib, SimConfig.from_dict({"activation_table": silu}))
    ids, mask = tok(["integer only inference keeps every bit"])
    changed = ids.copy()
    changed[0, 10:] = (changed[0, 10:] + 7) % VOCAB
    a, b = enc(ids, mask), enc(changed, mask)
    assert np.array_equal(a[:, :10], b[:, :10]) and not np.array_equal(a[:, 10:], b[:, 10:])


def test_calibration_reads_the_declared_sites(setup):
    model, _, calib, _ = setup
    names = [name for _, name, _ in SITES.hooks(model)]
    assert list(calib.stats) == names and len(names) == LAYERS * 11 + 2
    assert set(calib.residual) == {"blocks.0.x_in", "blocks.0.mid", "blocks.1.x_in", "blocks.1.mid", "final.x_in"}
    assert {r["tensor"] for r in calib.outlier_report()} == set(calib.residual)
    with pytest.raises(AttributeError, match="no calibration site 'gelu_in'"):
        SITES.block(0).gelu_in
    # the FP32 model really computes what the integer one mirrors (a check of the test's model)
    x = torch.randn(2, 5, C)
    mlp = model.blocks[0].mlp
    assert torch.allclose(mlp(x), mlp.down(F.silu(mlp.gate(x)) * mlp.up(x)))
