"""The integer-only BERT encoder: int8 GEMMs, integer softmax, LayerNorm and GELU, integer pooling.

Built offline from the FP32 model (``intsim.bert``), a calibration (``intsim.calibration``) and a
datapath config (``intsim.config``): every real scale is folded into integer weights, biases,
dyadic multipliers (gemmlowp ``M0``, shift) and LayerNorm gamma/beta integers. The forward then
holds integer arrays only. Read top to bottom, one layer is:

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

Scales: activation ``s = absmax / (2**(b-1) - 1)`` ("dyadic") or that rounded up to a power of
two ("pot"); weights symmetric per output channel (or per tensor); each residual add has one
scale covering both operands and the sum. Outliers: ``outliers="smooth"`` divides LayerNorm's
GEMM copy by per-channel factors ``f_c = cmax_c**a / wmax_c**(1-a)`` (SmoothQuant) folded into its
integer gamma/beta, and multiplies the consuming weights' input columns by ``f_c``.
"""

from __future__ import annotations

import math

import numpy as np

from .calibration import Calibration
from .config import SimConfig
from .errors import GQAError
from .fixedpoint import dyadic_multiplier, requantize_channels, requantize_dynamic
from .gelu import PWLGelu
from .gemm import Constant, int_gemm
from .layernorm import IntLayerNorm, LNOutput
from .softmax import IntSoftmax

PROB_BITS = 8   # softmax probabilities: UINT8, scale 2**-8


def act_scale(absmax: float, bits: int, kind: str = "dyadic") -> float:
    s = max(float(absmax), 1e-8) / ((1 << (bits - 1)) - 1)
    return 2.0 ** math.ceil(math.log2(s)) if kind == "pot" else s


def quantize_weight(w: np.ndarray, bits: int, per_channel: bool):
    """Symmetric weights: rows are output channels. -> (int8/int16 codes, scale per row)."""
    top = (1 << (bits - 1)) - 1
    amax = np.abs(w).max(axis=1) if per_channel else np.full(w.shape[0], np.abs(w).max())
    scale = np.maximum(amax, 1e-12) / top
    q = np.clip(np.rint(w / scale[:, None]), -top, top).astype(np.int8 if bits <= 8 else np.int16)
    return q, scale


def multipliers(real) -> tuple[np.ndarray, np.ndarray]:
    m = [dyadic_multiplier(float(r)) for r in np.atleast_1d(real)]
    return np.array([a for a, _ in m], np.int64), np.array([b for _, b in m], np.int64)


def operand_scale(calib: Calibration, name: str, consumers, cfg: SimConfig, smooth: bool = True):
    """Scale of a GEMM operand and its per-channel smoothing factors (ones unless ``outliers="smooth"``).

    SmoothQuant: ``f_c = cmax_c**a / wmax_c**(1-a)`` over the calibrated channel maxima of the
    operand and the consuming weights' input columns; the operand is divided by ``f`` (folded into
    the integer constants that produce it), the weights' columns multiplied by ``f``.
    """
    if "smooth" not in cfg.outliers or not smooth:
        return act_scale(calib.absmax(name, cfg.calib_percentile), cfg.act_bits, cfg.act_scales), np.ones(1)
    cmax = np.maximum(calib.channel_max(name), 1e-6).astype(np.float64)
    wmax = np.maximum(np.max([np.abs(w).max(0) for w in consumers], axis=0), 1e-6)
    f = cmax**cfg.smooth_alpha / wmax ** (1 - cfg.smooth_alpha)
    return act_scale(float((cmax / f).max()), cfg.act_bits, cfg.act_scales), f


class IntLinear:
    """``y = x @ W^T + b`` on int8 codes: int32 accumulator, then one requantization per column."""

    def __init__(self, w, b, in_scale, cfg: SimConfig, out_scale, out_bits: int, col_factor=None):
        w = np.asarray(w, np.float64)
        if col_factor is not None and col_factor.size > 1:   # smoothing: x / f in the operand, W * f here
            w = w * col_factor[None, :]
        q, sw = quantize_weight(w, cfg.weight_bits, cfg.weight_scales == "per_channel")
        self.wt = Constant(q.T)     # (in, out): the GEMM's right operand, converted once per backend
        self.acc_scale = in_scale * sw
        self.bias = np.rint(np.asarray(b, np.float64) / self.acc_scale).astype(np.int64)
        if np.abs(self.bias).max() >= 2**31:
            raise GQAError("bias", "does not fit int32 at the accumulator's scale", "use coarser activation scales")
        self.m0, self.n = multipliers(self.acc_scale / np.broadcast_to(out_scale, self.acc_scale.shape))
        self.out_bits, self.backend = out_bits, cfg.gemm_backend

    def __call__(self, x8, stats=None, name="linear", residual=None, row_shift=None):
        lead = x8.shape[:-1]
        acc = int_gemm(x8.reshape(-1, x8.shape[-1]), self.wt, self.backend)
        y, sat, ovf, peak = requantize_channels(acc, self.bias, self.m0, self.n, self.out_bits,
                                                residual=None if residual is None else residual.reshape(acc.shape),
                                                row_shift=row_shift)
        if stats is not None:
            stats.mac(name, acc.size * self.wt.shape[0])
            stats.count("mul", f"{name}.requant", acc.size, a_bits=32, b_bits=32)
            stats.count("add", f"{name}.bias", acc.size, bits=32)
            if residual is not None:
                stats.count("add", f"{name}.residual", acc.size, bits=self.out_bits)
            stats.accumulator(f"{name}.acc", peak, 32, ovf)
            stats.saturated(f"{name}.out", sat)
        return y.reshape(*lead, -1), acc


def _gelu_kernel(cfg: SimConfig, absmax: float, name: str):
    if cfg.gelu == "pwl":
        return PWLGelu(absmax, cfg.gelu_table, e=cfg.pwl_input_exp.get(name))
    if cfg.gelu == "ibert":
        from .ibert import IBertGelu
        return IBertGelu(absmax, in_bits=cfg.act_bits)
    from .ivit import ShiftGelu
    return ShiftGelu(absmax, in_bits=cfg.act_bits)


def _softmax_kernel(cfg: SimConfig, in_scale: float):
    if cfg.softmax == "pwl":
        return IntSoftmax(in_scale, cfg.exp_table, cfg.reciprocal, cfg.recip_table)
    if cfg.softmax == "ibert":
        from .ibert import IBertSoftmax
        return IBertSoftmax(in_scale)
    from .ivit import Shiftmax
    return Shiftmax(in_scale)


class LayerNormSite:
    """One LayerNorm with its GEMM copy (int8, maybe smoothed) and residual copy (residual_bits)."""

    def __init__(self, ln, kernel: IntLayerNorm, calib: Calibration, name: str, cfg: SimConfig,
                 res_scale: float, consumers=(), percentile=100.0):
        gamma, beta = ln.weight.detach().double().numpy(), ln.bias.detach().double().numpy()
        self.kernel, self.name = kernel, name
        self.factor = None
        self.gemm = None
        if consumers:
            self.gemm_scale, f = operand_scale(calib, name, consumers, cfg)
            self.factor = f if "smooth" in cfg.outliers else None
            dynamic = "per_token" in cfg.outliers
            if dynamic:
                # nominal scale for a typical token: the static range over the median token's range
                # (unsmoothed statistics; the per-row shift absorbs any error in this estimate)
                k = math.floor(math.log2(max(calib.absmax(name, percentile) / calib.token_max(name), 1.0)))
                self.gemm_scale *= 2.0**-k
            self.gemm = LNOutput(gamma, beta, self.gemm_scale * f, cfg.act_bits, dynamic=dynamic)
        self.res_scale = res_scale
        self.res = LNOutput(gamma, beta, res_scale, cfg.residual_bits)

    def __call__(self, x, stats=None):
        """-> (residual copy, GEMM copy or None, per-token row shifts or None)."""
        if self.gemm is None:
            return self.kernel(x, self.res, stats=stats, name=self.name), None, None
        x8, x_res = self.kernel(x, self.gemm, self.res, stats=stats, name=self.name)
        if self.gemm.dynamic:
            x8, t = x8
            return x_res, x8, t
        return x_res, x8, None


class IntBlock:
    def __init__(self, blk, i: int, calib: Calibration, cfg: SimConfig, ln_kernel, in_site: LayerNormSite,
                 add1_scale: float, add2_scale: float, next_res_scale: float, next_consumers, heads: int):
        p, pc = f"blocks.{i}.", cfg.calib_percentile
        a = lambda n: calib.absmax(p + n, pc)  # noqa: E731
        s_x = in_site.gemm_scale
        f_in = in_site.factor
        self.heads, self.name = heads, p
        att = blk.attn
        self.s_q, self.s_k, self.s_v = (act_scale(a(n), cfg.act_bits, cfg.act_scales) for n in "qkv")
        w_qkv = np.concatenate([att.query.weight.detach().numpy(), att.key.weight.detach().numpy(),
                                att.value.weight.detach().numpy()])
        b_qkv = np.concatenate([att.query.bias.detach().numpy(), att.key.bias.detach().numpy(),
                                att.value.bias.detach().numpy()])
        C = w_qkv.shape[1]
        out_s = np.concatenate([np.full(C, self.s_q), np.full(C, self.s_k), np.full(C, self.s_v)])
        self.qkv = IntLinear(w_qkv, b_qkv, s_x, cfg, out_s, cfg.act_bits, col_factor=f_in)
        self.head_dim = C // heads
        self.softmax = _softmax_kernel(cfg, self.s_q * self.s_k / math.sqrt(self.head_dim))
        w_o = blk.attn_out.weight.detach().numpy()
        self.per_token = "per_token" in cfg.outliers
        self.s_ctx, f_ctx = self._operand(calib, p + "ctx", [w_o], cfg)
        self.ctx_m0, self.ctx_n = multipliers(self.s_v * 2.0**-PROB_BITS / (self.s_ctx * f_ctx))
        self.attn_out = IntLinear(w_o, blk.attn_out.bias.detach().numpy(), self.s_ctx, cfg, add1_scale,
                                  cfg.residual_bits, col_factor=f_ctx)
        self.ln1 = LayerNormSite(blk.ln1, ln_kernel, calib, p + "ln1_out", cfg, add2_scale,
                                 consumers=[blk.ffn_in.weight.detach().numpy()], percentile=pc)
        self.gelu = _gelu_kernel(cfg, a("gelu_in"), p + "gelu")
        self.ffn_in = IntLinear(blk.ffn_in.weight.detach().numpy(), blk.ffn_in.bias.detach().numpy(),
                                self.ln1.gemm_scale, cfg, self.gelu.in_scale, self.gelu.in_bits,
                                col_factor=self.ln1.factor)
        w_f = blk.ffn_out.weight.detach().numpy()
        self.s_g, f_g = self._operand(calib, p + "gelu_out", [w_f], cfg)
        self.g_m0, self.g_n = multipliers(self.gelu.out_scale / (self.s_g * f_g))
        self.ffn_out = IntLinear(w_f, blk.ffn_out.bias.detach().numpy(), self.s_g, cfg, add2_scale,
                                 cfg.residual_bits, col_factor=f_g)
        self.ln2 = LayerNormSite(blk.ln2, ln_kernel, calib, p + "ln2_out", cfg, next_res_scale,
                                 consumers=next_consumers, percentile=pc)
        self.act_bits, self.backend = cfg.act_bits, cfg.gemm_backend

    def _operand(self, calib, name, consumers, cfg):
        """Per-token mode: the nominal scale fits the median token; larger tokens shift at run time."""
        if self.per_token:
            return act_scale(calib.token_max(name), cfg.act_bits, cfg.act_scales), np.ones(1)
        return operand_scale(calib, name, consumers, cfg, smooth=False)

    def _requant_operand(self, acc, m0, n, stats, name):
        if self.per_token:
            y, t = requantize_dynamic(acc, m0, n, self.act_bits)
            if stats is not None:
                stats.count("compare", name + ".token_max", acc.size, bits=32)
                stats.count("shift", name + ".token_shift", acc.size, bits=32)
            return y, t, 0
        y, sat, _, _ = requantize_channels(acc, None, m0, n, self.act_bits)
        return y, None, sat

    def __call__(self, x_res, x8, t8, key_mask, stats=None, trace=None):
        p = self.name
        B, T, C = x8.shape
        H, d = self.heads, self.head_dim
        qkv, _ = self.qkv(x8, stats, p + "qkv", row_shift=t8)
        q, k, v = (qkv[..., j * C:(j + 1) * C].reshape(B, T, H, d).transpose(0, 2, 1, 3) for j in range(3))
        scores = int_gemm(np.ascontiguousarray(q), np.ascontiguousarray(k.transpose(0, 1, 3, 2)), self.backend)
        probs = self.softmax(scores, key_mask, stats, p + "softmax")
        ctx_acc = int_gemm(probs, np.ascontiguousarray(v), self.backend)
        ctx_acc = np.ascontiguousarray(ctx_acc.transpose(0, 2, 1, 3)).reshape(B, T, C)
        ctx, t_ctx, sat = self._requant_operand(ctx_acc, self.ctx_m0, self.ctx_n, stats, p + "context")
        s1, _ = self.attn_out(ctx, stats, p + "attn_out", residual=x_res, row_shift=t_ctx)
        x_res, h8, t_h = self.ln1(s1, stats)
        gelu_in, _ = self.ffn_in(h8, stats, p + "ffn_in", row_shift=t_h)
        g = self.gelu(gelu_in, stats, p + "gelu")
        g8, t_g, gsat = self._requant_operand(g, self.g_m0, self.g_n, stats, p + "gelu")
        s2, _ = self.ffn_out(g8, stats, p + "ffn_out", residual=x_res, row_shift=t_g)
        x_res, x8, t8 = self.ln2(s2, stats)
        if stats is not None:
            self._count(stats, B, T, C, H, d, scores, ctx_acc, sat, gsat, g)
        if trace is not None:
            trace.update({p + k_: v_ for k_, v_ in dict(
                qkv=qkv, scores=scores, probs=probs, ctx_acc=ctx_acc, ctx=ctx, sum1=s1, ln1_res=x_res, ln1_gemm=h8,
                gelu_in=gelu_in, gelu_out=g, gelu_q=g8, sum2=s2, ln2_res=x_res, ln2_gemm=x8).items()
                if v_ is not None})
        return x_res, x8, t8

    def _count(self, stats, B, T, C, H, d, scores, ctx_acc, ctx_sat, gsat, g):
        p = self.name
        stats.mac(p + "scores", B * H * T * T * d)
        stats.accumulator(p + "scores.acc", int(np.abs(scores).max()), 32)
        stats.mac(p + "context", B * H * T * T * d, a_bits=PROB_BITS)
        stats.accumulator(p + "context.acc", int(np.abs(ctx_acc).max()), 32)
        stats.count("mul", p + "context.requant", B * T * C, a_bits=32, b_bits=32)
        stats.saturated(p + "context.out", ctx_sat)
        stats.count("mul", p + "gelu.requant", g.size, a_bits=32, b_bits=32)
        stats.accumulator(p + "gelu.out", int(np.abs(g).max()), 32)
        stats.saturated(p + "gelu.requant", gsat)


class IntBert:
    """The integer encoder: ``embed(ids, mask)`` -> L2-normalised float32 sentence embeddings."""

    def __init__(self, model, calib: Calibration, cfg: SimConfig | None = None):
        cfg = cfg or SimConfig()
        self.cfg, self.config = cfg, model.config
        pc, rb = cfg.calib_percentile, cfg.residual_bits
        ln_kernel = IntLayerNorm(cfg.layernorm, cfg.rsqrt_table, cfg.ln_d_bits)
        blocks = list(model.blocks)
        n = len(blocks)

        def res_scale(*names):  # the residual stream never clips: its width is the outlier budget
            return act_scale(max(calib.absmax(x) for x in names), rb, cfg.act_scales)

        def qkv_weights(blk):
            return [blk.attn.query.weight.detach().numpy(), blk.attn.key.weight.detach().numpy(),
                    blk.attn.value.weight.detach().numpy()]

        add1 = [res_scale("emb.ln_out" if i == 0 else f"blocks.{i-1}.ln2_out", f"blocks.{i}.ln1_in") for i in range(n)]
        add2 = [res_scale(f"blocks.{i}.ln1_out", f"blocks.{i}.ln2_in") for i in range(n)]
        self.out_scale = res_scale(f"blocks.{n-1}.ln2_out")
        self._embeddings(model.embeddings, cfg)
        self.emb_ln = LayerNormSite(model.embeddings.ln, ln_kernel, calib, "emb.ln_out", cfg, add1[0],
                                    consumers=qkv_weights(blocks[0]), percentile=pc)
        self.blocks, site = [], self.emb_ln
        for i, blk in enumerate(blocks):
            last = i == n - 1
            b = IntBlock(blk, i, calib, cfg, ln_kernel, site, add1[i], add2[i],
                         self.out_scale if last else add1[i + 1], [] if last else qkv_weights(blocks[i + 1]),
                         model.config.heads)
            self.blocks.append(b)
            site = b.ln2

    def _embeddings(self, emb, cfg: SimConfig):
        word = emb.word.weight.detach().double().numpy()
        pos = emb.position.weight.detach().double().numpy() + emb.token_type.weight.detach().double().numpy()[0]
        per_row = cfg.weight_scales == "per_channel"
        self.word_q, s_w = quantize_weight(word, cfg.embed_bits, per_row)
        self.pos_q, s_p = quantize_weight(pos, cfg.embed_bits, per_row)
        s_e = min(s_w.min(), s_p.min()) / 256   # aligned scale: every multiplier >= 256 (error < 2**-9)
        self.word_m = np.rint(s_w / s_e).astype(np.int64)
        self.pos_m = np.rint(s_p / s_e).astype(np.int64)

    def hidden(self, ids, mask, stats=None, trace=None):
        """Integer forward: (B, T) token ids and mask -> last residual copy (B, T, C), integer codes."""
        ids = np.asarray(ids)
        mask = np.asarray(mask).astype(np.uint8)
        B, T = ids.shape
        if T > self.config.max_position:
            raise GQAError("ids", f"{T} positions exceed the model's {self.config.max_position}", "truncate")
        x = (self.word_q[ids].astype(np.int64) * self.word_m[ids][..., None]
             + self.pos_q[:T].astype(np.int64) * self.pos_m[:T, None])
        if np.abs(x).max() >= 2**31:
            raise GQAError("embed_bits", "the aligned embedding sum exceeds int32", "use fewer embedding bits")
        x = x.astype(np.int32)
        if stats is not None:
            C = x.shape[-1]
            stats.count("mul", "embeddings.align", 2 * B * T * C, a_bits=self.cfg.embed_bits, b_bits=16)
            stats.count("add", "embeddings.sum", B * T * C, bits=32)
            stats.accumulator("embeddings.sum", int(np.abs(x).max()), 32)
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
        pooled = np.einsum("btc,bt->bc", h.astype(np.int64), m)
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
    """Integer-path sentence embeddings (float32, rows in input order)."""
    from tqdm import tqdm

    out = []
    starts = range(0, len(sentences), batch_size)
    for i in tqdm(starts, desc="integer forward", unit="batch", disable=not progress):
        ids, mask = tokenizer(sentences[i: i + batch_size])
        out.append(encoder.embed(ids, mask, stats))
    return np.concatenate(out) if out else np.zeros((0, encoder.config.hidden), np.float32)


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
