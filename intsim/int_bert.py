"""The integer-only BERT encoder: int8 GEMMs, integer softmax, LayerNorm and GELU, integer pooling.

Built offline from the FP32 model (``intsim.bert``), a calibration (``intsim.calibration``) and a
datapath config (``intsim.config``) out of the shared integer layers of :mod:`intsim.layers`
(every real scale folded into integer weights, biases, dyadic multipliers and LayerNorm
gamma/beta integers); the forward holds integer arrays only. The calibration sites are declared
once, in :data:`SITES`. Read top to bottom, one layer is:

    x_res, x8                      residual copy (residual_bits) and GEMM operand (int8) of a LayerNorm
    q8, k8, v8 = requant(x8 @ Wqkv + b)                         one int8 GEMM, per-column M0
    p8 = softmax(q8 @ k8^T)        int32 scores -> UINT8 probabilities (2**-8)
    c8 = requant(p8 @ v8)                                       uint8 x int8 GEMM
    s1 = sat(requant(c8 @ Wo + b) + x_res)                      residual add at the add's scale
    x_res, x8 = layernorm1(s1)                                  two integer outputs
    g8 = requant(gelu(requant(x8 @ Wi + b)))                    the GELU kernel's own input format
    s2 = sat(requant(g8 @ Wf + b) + x_res)
    x_res, x8 = layernorm2(s2)

Embeddings: int8 word (per-row scales) and position (+ token type 0) tables, summed at an aligned
scale by integer multipliers. Pooling: the integer sum of the last residual copy over real
tokens; the L2 normalisation of that vector is the output's dequantization (scale invariant).

Scales and outlier handling follow the conventions of :mod:`intsim.layers`; the residual stream
(``residual_bits``) never clips: each add's scale covers the largest calibrated value of both
operands and the sum.
"""

from __future__ import annotations

import numpy as np

from .calibration import Calibration
from .config import SimConfig
from .errors import GQAError
from .layers import (ActivationSite, IntAttention, IntEmbedding, IntLinear, ModelSites, NormSite,
                     Scope, Site, act_scale, multipliers, operand_scale, quantize_weight)
from .registry import ACTIVATIONS, NORMS, WEIGHT_ROUNDINGS, WEIGHT_SCALES

__all__ = ["SITES", "IntBert", "IntBlock", "build", "embed_int", "IntLinear", "act_scale",
           "multipliers", "operand_scale", "quantize_weight"]

# The tensors calibration observes in the FP32 model (intsim.bert) and the builder reads, by name.
SITES = ModelSites(
    emb=Scope("emb", "embeddings", ln_out=Site("ln", residual=True)),   # the residual stream's start
    block=Scope("blocks.{i}", "blocks.{i}", repeat="blocks",
                q=Site("attn.query"), k=Site("attn.key"), v=Site("attn.value"),
                ctx=Site("attn"),                                        # softmax @ V, before attn_out
                attn_out=Site("attn_out"),
                ln1_in=Site("ln1", "in", residual=True), ln1_out=Site("ln1", residual=True),
                gelu_in=Site("ffn_in"), gelu_out=Site("gelu"),
                ffn_out=Site("ffn_out"),
                ln2_in=Site("ln2", "in", residual=True), ln2_out=Site("ln2", residual=True)),
)


def _np(t) -> np.ndarray:
    return t.detach().numpy()


def attention_weights(attn) -> tuple:
    """(wq, bq, wk, bk, wv, bv) of a BERT self-attention module (FP32 arrays)."""
    return tuple(_np(getattr(lin, p)) for lin in (attn.query, attn.key, attn.value) for p in ("weight", "bias"))


def qkv_weights(blk) -> list:
    """The weights that consume a block's input (its QKV projections): the smoothing partners."""
    return [_np(blk.attn.query.weight), _np(blk.attn.key.weight), _np(blk.attn.value.weight)]


class IntBlock:
    """One post-LN BERT layer: ``x = LN1(x + attn(x)); x = LN2(x + ffn(x))`` on integers."""

    def __init__(self, blk, i: int, calib: Calibration, cfg: SimConfig, norm_kernel, in_site: NormSite,
                 add1_scale: float, add2_scale: float, next_res_scale: float, next_consumers, heads: int):
        n, pc = SITES.block(i), cfg.calib_percentile
        self.name = f"blocks.{i}."
        w_o, w_i, w_f = _np(blk.attn_out.weight), _np(blk.ffn_in.weight), _np(blk.ffn_out.weight)
        self.attn = IntAttention(attention_weights(blk.attn) + (w_o, _np(blk.attn_out.bias)), heads, heads,
                                 in_site.gemm_scale, in_site.factor, n, calib, cfg, add1_scale, cfg.softmax)
        self.ln1 = NormSite(_np(blk.ln1.weight), _np(blk.ln1.bias), norm_kernel, calib, n.ln1_out, cfg, add2_scale,
                            consumers=[w_i], percentile=pc)
        gelu = ACTIVATIONS.make(cfg.gelu, cfg, calib.absmax(n.gelu_in, pc), self.name + "gelu")
        self.ffn = ActivationSite(w_i, _np(blk.ffn_in.bias), self.ln1.gemm_scale, self.ln1.factor, gelu, calib,
                                  n.gelu_out, [w_f], cfg, name="gelu")
        self.ffn_out = IntLinear(w_f, _np(blk.ffn_out.bias), self.ffn.out_scale, cfg, add2_scale, cfg.residual_bits,
                                 col_factor=self.ffn.factor)
        self.ln2 = NormSite(_np(blk.ln2.weight), _np(blk.ln2.bias), norm_kernel, calib, n.ln2_out, cfg,
                            next_res_scale, consumers=next_consumers, percentile=pc)

    @property
    def gelu(self):
        return self.ffn.kernel

    def __call__(self, x_res, x8, t8, key_mask, stats=None, trace=None):
        """Residual copy (B, T, C), its int8 GEMM copy and row shifts -> the same after the layer."""
        p = self.name
        s1 = self.attn(x8, t8, x_res, key_mask, stats, p, trace)                # (B, T, C) residual sum
        r1, h8, t_h = self.ln1(s1, stats)
        g8, t_g = self.ffn(h8, t_h, stats, p, trace)                            # (B, T, F) int8
        s2, _ = self.ffn_out(g8, stats, p + "ffn_out", residual=r1, row_shift=t_g)  # (B, T, C)
        r2, x8, t8 = self.ln2(s2, stats)
        if trace is not None:
            trace.update({p + k: v for k, v in dict(sum1=s1, ln1_res=r1, ln1_gemm=h8, sum2=s2, ln2_res=r2,
                                                    ln2_gemm=x8).items() if v is not None})
        return r2, x8, t8


class IntBert:
    """The integer encoder: ``embed(ids, mask)`` -> L2-normalised float32 sentence embeddings."""

    def __init__(self, model, calib: Calibration, cfg: SimConfig | None = None):
        cfg = cfg or SimConfig()
        self.cfg, self.config = cfg, model.config
        pc, rb = cfg.calib_percentile, cfg.residual_bits
        norm_kernel = NORMS.make(cfg.layernorm, cfg)
        blocks = list(model.blocks)
        n = len(blocks)
        b = [SITES.block(i) for i in range(n)]

        def res_scale(*names):  # the residual stream never clips: its width is the outlier budget
            return act_scale(max(calib.absmax(x) for x in names), rb, cfg.act_scales)

        add1 = [res_scale(SITES.emb().ln_out if i == 0 else b[i - 1].ln2_out, b[i].ln1_in) for i in range(n)]
        add2 = [res_scale(b[i].ln1_out, b[i].ln2_in) for i in range(n)]
        self.out_scale = res_scale(b[n - 1].ln2_out)
        emb = model.embeddings
        pos = emb.position.weight.detach().double().numpy() + emb.token_type.weight.detach().double().numpy()[0]
        self.embeddings = IntEmbedding([emb.word.weight.detach().double().numpy(), pos], cfg.embed_bits,
                                       WEIGHT_SCALES.impl(cfg.weight_scales))
        self.emb_ln = NormSite(_np(emb.ln.weight), _np(emb.ln.bias), norm_kernel, calib, SITES.emb().ln_out, cfg,
                               add1[0], consumers=qkv_weights(blocks[0]), percentile=pc)
        self.blocks, site = [], self.emb_ln
        for i, blk in enumerate(blocks):
            last = i == n - 1
            blk_int = IntBlock(blk, i, calib, cfg, norm_kernel, site, add1[i], add2[i],
                               self.out_scale if last else add1[i + 1], [] if last else qkv_weights(blocks[i + 1]),
                               model.config.heads)
            self.blocks.append(blk_int)
            site = blk_int.ln2
        cfg.check_sites([blk.name + "gelu" for blk in self.blocks], activation="gelu")   # names, table
        WEIGHT_ROUNDINGS.impl(cfg.weight_rounding)(self, calib, lambda ids, mask: self.hidden(ids, mask))

    def hidden(self, ids, mask, stats=None, trace=None):
        """Integer forward: (B, T) token ids and mask -> last residual copy (B, T, C), integer codes."""
        ids = np.asarray(ids)
        mask = np.asarray(mask).astype(np.uint8)
        B, T = ids.shape
        if T > self.config.max_position:
            raise GQAError("ids", f"{T} positions exceed the model's {self.config.max_position}", "truncate")
        x = self.embeddings(ids, np.arange(T), stats=stats)                        # (B, T, C) int32
        x_res, x8, t8 = self.emb_ln(x, stats)
        if trace is not None:
            trace.update({"ids": ids, "mask": mask, "emb.sum": x, "emb.ln_res": x_res, "emb.ln_gemm": x8})
        for blk in self.blocks:
            x_res, x8, t8 = blk(x_res, x8, t8, mask, stats, trace)
        return x_res

    def pooled(self, ids, mask, stats=None, trace=None):
        """Integer sum of the last hidden states over real tokens: (B, C) int64."""
        h = self.hidden(ids, mask, stats, trace)
        m = np.asarray(mask).astype(np.int64)
        pooled = np.einsum("btc,bt->bc", h.astype(np.int64), m)                    # (B, T, C) -> (B, C)
        if stats is not None:
            stats.count("add", "pooling.sum", h.size, bits=self.cfg.residual_bits + 9)
        if trace is not None:
            trace["pooled"] = pooled
        return pooled

    def embed(self, ids, mask, stats=None, trace=None) -> np.ndarray:
        v = self.pooled(ids, mask, stats, trace).astype(np.float64)
        n = np.linalg.norm(v, axis=1, keepdims=True)
        return (v / np.maximum(n, 1e-300)).astype(np.float32)


def embed_int(encoder: IntBert, tokenizer, sentences, batch_size: int = 64, stats=None, progress=False) -> np.ndarray:
    """Integer-path sentence embeddings (float32, rows in input order; batched by length)."""
    from .bert import embed_batched

    return embed_batched(lambda ids, mask: encoder.embed(ids, mask, stats), tokenizer, sentences, batch_size,
                         encoder.config.hidden, progress, desc="integer forward")


def build(cfg: SimConfig | None = None, model_dir=None, calib_sentences=None):
    """FP32 model, tokenizer, calibration and the integer encoder, in one call.

    Calibration sentences default to :func:`intsim.sentences.calibration_sentences` (generated,
    disjoint from the evaluation text).
    """
    from .bert import Tokenizer, load_model
    from .calibration import calibrate
    from .sentences import calibration_sentences

    model = load_model(model_dir)
    tok = Tokenizer(model_dir, max_len=model.config.max_seq_len)
    calib = calibrate(model, tok, calib_sentences if calib_sentences is not None else calibration_sentences())
    return model, tok, calib, IntBert(model, calib, cfg)
