"""The integer-only Llama decoder (SmolLM2-135M-Instruct): int8 GEMMs, integer RMSNorm, RoPE,
causal softmax and SwiGLU, an int8 KV cache; the only float is the last step, logits = int32
accumulators times their scale.

Built offline from the FP32 reference (:mod:`intsim.llama`, names as there), a calibration of its
activations (:func:`intsim.calibration.calibrate_stream` over :data:`SITES`) and a datapath config
(:class:`intsim.config.SimConfig`), composed from the shared integer layers of :mod:`intsim.layers`.
Read top to bottom, one token row through one layer is::

    h                                 the residual stream: residual_bits codes at one scale s_h
    n8, t = attention_norm(h)         int8 GEMM operand (RMS kernel, gamma folded; per-token shifts t)
    q8, k8, v8 = requant(n8 @ Wqkv)   one GEMM; q, k at their pre-RoPE scales
    q8, k8 = rope(q8), rope(k8)       integer rotation at absolute positions -> post-RoPE scales
    cache: K, V = [K; k8], [V; v8]    int8 keys after RoPE and values (IntKVCache)
    p8 = softmax(q8 @ K^T, causal)    int32 scores -> UINT8 probabilities (2**-8); query h reads KV head h // 3
    c8 = requant(p8 @ V)              the context, int8 (per token)
    h = sat(requant(c8 @ Wo) + h)     the residual add fused into the requantizer
    m8, t = ffn_norm(h)
    a8 = requant(silu(requant(m8 @ W1)) * requant(m8 @ W3))   PWL SiLU, int64 gate product
    h = sat(requant(a8 @ W2) + h)

then ``norm`` (int8 operand) and the tied output layer (the token embedding, int8 per row): the
logits are the int32 accumulators times ``s_x * s_w`` (per row times ``2**t`` of a per-token
operand). The embedding is int8 per row, aligned by integer multipliers and requantized onto
the stream. Every operation is row-wise (per token), so decoding with the cache is bit for bit
the full forward's computation.

Weights: ``"w8"``, int8 per output channel from the dequantized GGUF weights (:class:`IntLinear`);
``"q4_1"`` (W4A8), the file's own Q4_1 codes of every linear layer and the Q8_0 codes of the tied
output layer (:class:`intsim.q4linear.IntQ4Linear`: exactly the weights the FP32 reference
dequantizes). SmoothQuant's column factors cannot multiply the file's codes, so in ``q4_1`` mode
smoothing is off (``outliers`` keeps its other methods); the embedding lookup is int8 per row in
both modes.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .calibration import Calibration, calibrate_stream
from .config import SimConfig
from .errors import GQAError
from .fixedpoint import RowScale, dequantize
from .gemm import Constant, int_gemm
from .layers import (fold_columns, ActivationSite, IntAttention, IntEmbedding, IntKVCache, IntLinear, ModelSites, NormSite,
                     OperandRequant, Scope, Site, act_scale, outlier_methods, quantize_weight)
from .llama import Llama, LlamaConfig, check_generation
from .registry import ACTIVATIONS, NORMS, OUTLIERS, WEIGHT_ROUNDINGS, WEIGHT_SCALES

__all__ = ["SITES", "IntLlama", "IntLogits", "build", "calibration", "default_config", "DECODER_DEFAULTS", "WEIGHTS",
           "CALIB_TEXT"]

WEIGHTS = ("w8", "q4_1")
# The decoder's datapath defaults where they differ from SimConfig's (the encoder's): SmolLM2's
# residual stream holds massive activations (~22,500 in one channel of the first token from layer
# 11 on, against ~1 elsewhere), so the stream is 24 bits wide (16 bits: a code of 0.77, the first
# layers drown; 32 bits: the stream scale is so fine that the fused residual requantizers shift
# their int32 accumulators left and saturate), and static operand ranges are the calibrated
# maxima (a 99.99th percentile clips exactly those massive values; per-token scales handle them).
# The SiLU table is searched over [-8, 8] (silu16_d8): the gate inputs reach ~50, where silu16's
# segments (searched over [-4, 4]) extrapolate off silu's asymptotes. The down projection's operand
# silu(g) * u is the largest single source of error (docs/llm.md, attribution): its channels are
# smoothed (SmoothQuant, alpha 0.7) in its own requantizer, W2's columns take the factors. The
# outlier methods are the encoder's, token_mantissa included: the down operand's and the context's
# per-token scales mu * 2**k lower the perplexity ratio on all four genre texts (docs/llm.md).
# The softmax probabilities are 12 bits (the context product's left operand, two bytes on an 8-bit
# MAC array): a causal row holds one large weight (the first token) beside many small ones, which
# UINT8 rounds to 0 or 2**-8 (FP32 with only the probabilities quantized, 1,024 technical tokens:
# ppl x1.081 at 8 bits, x1.001 at 12; the integer model: ratio -0.004 to -0.017 on three of four
# genre texts, docs/llm.md).
DECODER_DEFAULTS = {"residual_bits": 24, "calib_percentile": 100.0, "silu_table": "silu16_d8",
                    "ffn_smooth_alpha": 0.7, "prob_bits": 12,
                    # the encoder's defaults of 2026-12-03 (issue 15) stay off here: GPTQ codes and norm
                    # row mantissas measured no gain on the decoder (docs/llm.md); the 12-bit-coefficient
                    # exp unit and 10-bit embeddings are not measured on it
                    "weight_rounding": "nearest", "outliers": "smooth+per_token+act_offset+token_mantissa",
                    "exp_table": "exp16", "embed_bits": 8}
CALIB_TEXT = Path(__file__).resolve().parent / "data" / "sentences.txt"   # never an evaluation text
CALIB_TOKENS, CALIB_SEQ = 1024, 128

# The tensors calibration observes in the FP32 decoder (intsim.llama) and the builder reads, by name.
SITES = ModelSites(
    layer=Scope("layers.{i}", "layers.{i}", repeat="layers",
                h_in=Site("attention_norm", "in", residual=True),     # the residual stream entering the layer
                attn_norm_out=Site("attention_norm"),
                q_pre=Site("attention.wq"), k_pre=Site("attention.wk"),
                q=Site("attention.q_rope"), k=Site("attention.k_rope"),  # after RoPE: k is what the cache stores
                v=Site("attention.wv"),
                scores=Site("attention.softmax", "in"),               # scaled, masked scores (softmax input)
                ctx=Site("attention.wo", "in"), attn_out=Site("attention.wo"),
                h_mid=Site("ffn_norm", "in", residual=True),
                ffn_norm_out=Site("ffn_norm"),
                gate=Site("feed_forward.w1"),                         # = the SiLU input
                up=Site("feed_forward.w3"),
                act_out=Site("feed_forward.w2", "in"),                # SiLU(gate) * up: the down projection's operand
                ffn_out=Site("feed_forward.w2")),
    final=Scope("final", h_in=Site("norm", "in", residual=True), out=Site("norm")),
)


def _np(t) -> np.ndarray:
    return t.detach().numpy()


def default_config(**overrides) -> SimConfig:
    """The decoder's default config: SimConfig with :data:`DECODER_DEFAULTS`, then ``overrides``."""
    return SimConfig.from_dict({**DECODER_DEFAULTS, **overrides})


def _rope(cfg: SimConfig, c: LlamaConfig):
    """The RoPE stage's factory ``(in_scale, out_scale, bits) -> kernel`` (IntAttention's interface)."""
    from .rope import IntRoPE

    return lambda s_in, s_out, bits: IntRoPE(c.head_dim, c.rope_base, s_in, s_out, out_bits=bits,
                                             rope_bits=cfg.rope_bits, in_bits=cfg.act_bits)


class IntLogits:
    """The output layer: ``logits = (x8 @ W^T) * s_x * s_w`` per vocabulary row, ``2**t`` per token row.

    ``W``: int8 per row (the tied token embedding); the int32 accumulators are the integer result,
    the product with their scale (float64) the dequantization the sampler reads."""

    def __init__(self, w, in_scale: float, cfg: SimConfig, col_factor=None, layer=None):
        self.layer = layer                                    # a prebuilt linear (q4_1: the file's Q8_0 codes)
        if layer is not None:
            self.scale, self.wt = layer.acc_scale, None
            return
        w = np.asarray(w, np.float64)
        w, bias = fold_columns(w, None, col_factor)           # the final norm's outlier handling
        q, sw = quantize_weight(w, cfg.weight_bits, WEIGHT_SCALES.impl(cfg.weight_scales))
        self.wt = Constant(q.T)                               # (V, C) -> (C, V)
        self.scale = in_scale * sw                            # (V,) real value of one accumulator code
        # a channel shift's W z as accumulator codes (None when no shift: the plain GEMM result)
        self.bias = None if bias is None or not np.any(bias) else np.rint(bias / self.scale).astype(np.int64)
        self.backend = cfg.gemm_backend

    def __call__(self, x8, row_shift=None, stats=None, name="output"):
        """int8 (B, T, C) and per-token shifts (B, T) -> (int32 accumulators (B, T, V), float64 logits)."""
        lead = x8.shape[:-1]
        if self.layer is not None:
            _, acc = self.layer(x8.reshape(-1, x8.shape[-1]), stats, name)       # (B T, V) int32 values
            acc = np.asarray(acc).astype(np.int32)
        else:
            acc = int_gemm(x8.reshape(-1, x8.shape[-1]), self.wt, self.backend)  # (B T, C) @ (C, V) -> (B T, V) int32
        scale = self.scale[None, :]
        if isinstance(row_shift, RowScale):                 # mu * 2**(k - m): exact in float64 (a few-bit mantissa)
            bias = None if self.layer is not None or self.bias is None else self.bias
            if stats is not None and self.layer is None:
                stats.mac(name, acc.size * self.wt.shape[0])
                stats.accumulator(f"{name}.acc", int(np.abs(acc).max()) if acc.size else 0, 32)
            logits = dequantize(acc, self.scale, row_shift.factor(), bias)         # (acc g + bias) s
            return acc.reshape(*lead, -1), logits.reshape(*lead, -1)
        if self.layer is None and self.bias is not None:    # W z of a channel shift, in base-scale codes (int64)
            acc = acc.astype(np.int64)
            if row_shift is not None:                       # a per-token row at 2**t: exact left shift first
                acc, row_shift = acc << row_shift.reshape(-1, 1).astype(np.int64), None
            acc = acc + self.bias[None, :]
        if stats is not None and self.layer is None:
            stats.mac(name, acc.size * self.wt.shape[0])
            stats.accumulator(f"{name}.acc", int(np.abs(acc).max()) if acc.size else 0, 32)
        if acc.dtype == np.int64:                           # with a channel shift's W z (above)
            return acc.reshape(*lead, -1), (acc * scale).reshape(*lead, -1)
        # acc 2**t s: the power of two is exact, so (acc 2**t) s rounds once, as acc (2**t s) does
        g = None if row_shift is None else np.exp2(np.asarray(row_shift, np.float64).reshape(-1))
        return acc.reshape(*lead, -1), dequantize(acc, self.scale, g).reshape(*lead, -1)


class IntBlock:
    """One pre-norm decoder layer on integers (the module docstring's lines)."""

    def __init__(self, blk, i: int, c: LlamaConfig, calib: Calibration, cfg: SimConfig, norm_kernel, stream: float,
                 rope, linear=None):
        pc, rb = cfg.calib_percentile, cfg.residual_bits
        n, self.name = SITES.layer(i), f"layers.{i}."
        a, f = blk.attention, blk.feed_forward
        wq, wk, wv, wo = (_np(m.weight) for m in (a.wq, a.wk, a.wv, a.wo))
        w1, w2, w3 = (_np(m.weight) for m in (f.w1, f.w2, f.w3))
        self.attention_norm = NormSite(_np(blk.attention_norm.weight), None, norm_kernel, calib, n.attn_norm_out,
                                       cfg, None, consumers=[wq, wk, wv], percentile=pc)
        self.attention = IntAttention((wq, None, wk, None, wv, None, wo, None), c.n_heads, c.n_kv_heads,
                                      self.attention_norm.gemm_scale, self.attention_norm.factor, n, calib, cfg,
                                      stream, cfg.softmax, causal=True, rope=rope, layer=i, linear=linear)
        self.ffn_norm = NormSite(_np(blk.ffn_norm.weight), None, norm_kernel, calib, n.ffn_norm_out, cfg, None,
                                 consumers=[w1, w3], percentile=pc)
        silu = ACTIVATIONS.make(cfg.silu, cfg, calib.absmax(n.gate, pc), self.name + "silu", function="silu")
        self.feed_forward = ActivationSite(w1, None, self.ffn_norm.gemm_scale, self.ffn_norm.factor, silu, calib,
                                           n.act_out, [w2], cfg, name="silu", w_up=w3, up_site=n.up,
                                           in_proj="w1", up_proj="w3", token_input=True, linear=linear)
        make = linear or (lambda part, *a, **k: IntLinear(*a, **k))
        self.w2 = make("w2", w2, None, self.feed_forward.out_scale, cfg, stream, rb, col_factor=self.feed_forward.factor)

    def __call__(self, h, positions, cache, stats=None, trace=None):
        """Residual stream (B, T, C) at positions (T,) -> the stream after the layer."""
        p = self.name
        _, n8, t_n = self.attention_norm(h, stats)                                # (B, T, C) int8, (B, T) shifts
        h = self.attention(n8, t_n, h, None, stats, p, trace, positions, cache)   # h + attention(norm(h))
        _, m8, t_m = self.ffn_norm(h, stats)
        a8, t_a = self.feed_forward(m8, t_m, stats, p, trace)                     # (B, T, F) int8
        out, _ = self.w2(a8, stats, p + "w2", residual=h, row_shift=t_a)          # h + w2(silu(w1 m) * w3 m)
        if trace is not None:
            trace.update({p + "attn_norm": n8, p + "h_mid": h, p + "ffn_norm": m8, p + "h_out": out})
            trace.update({k: v for k, v in ((p + "attn_norm_shift", t_n), (p + "ffn_norm_shift", t_m)) if v is not None})
        return out


class IntLlama:
    """The integer decoder: ``logits(ids, cache)`` -> float64 (B, T, V); ``model(ids)`` as a torch model."""

    def __init__(self, model: Llama, calib: Calibration, cfg: SimConfig | None = None, weights: str = "w8"):
        cfg = cfg or default_config()
        if weights not in WEIGHTS:
            raise GQAError("weights", f"{weights!r} is not an option", f"use one of {', '.join(WEIGHTS)}")
        if weights == "q4_1":   # the file's codes cannot take smoothing's column factors
            kept = sorted(outlier_methods(cfg) - {"smooth"}, key=OUTLIERS.names().index)
            cfg = dataclasses.replace(cfg, outliers="+".join(kept) or OUTLIERS.NONE, ffn_smooth_alpha=0.0)
        self.cfg, self.config, self.weights = cfg, model.config, weights
        c, rb = model.config, cfg.residual_bits
        norm_kernel = NORMS.make(cfg.layernorm, cfg, center=False)          # RMSNorm
        # one scale for the whole residual stream: it never clips (its width is the outlier budget)
        self.stream = act_scale(max(calib.absmax(x) for x in calib.residual), rb, cfg.act_scales)
        emb = _np(model.tok_embeddings.weight)
        self.embeddings = IntEmbedding([emb], cfg.embed_bits, WEIGHT_SCALES.impl(cfg.weight_scales))
        self.to_stream = OperandRequant(self.embeddings.scale / self.stream, rb, per_token=False)
        rope = _rope(cfg, c)
        self.layers = [IntBlock(blk, i, c, calib, cfg, norm_kernel, self.stream, rope,
                                _q4_linears(i) if weights == "q4_1" else None)
                       for i, blk in enumerate(model.layers)]
        w_out = emb if model.output is None else _np(model.output.weight)
        self.norm = NormSite(_np(model.norm.weight), None, norm_kernel, calib, SITES.final().out, cfg, None,
                             consumers=[w_out], percentile=cfg.calib_percentile)
        head = None
        if weights == "q4_1":
            from .gguf_model import open_gguf
            from .q4linear import IntQ4Linear

            name = "token_embd.weight" if model.output is None else "output.weight"
            head = IntQ4Linear(open_gguf().quant_blocks(name), None, self.norm.gemm_scale, cfg, 1.0, 32)
        self.output = IntLogits(w_out, self.norm.gemm_scale, cfg, col_factor=self.norm.factor, layer=head)
        cfg.check_sites([blk.name + "silu" for blk in self.layers])           # pwl_input_exp names
        WEIGHT_ROUNDINGS.impl(cfg.weight_rounding)(self, calib, lambda ids, mask: self.logits(ids))

    def new_cache(self) -> IntKVCache:
        return IntKVCache(len(self.layers))

    def logits(self, ids, cache: IntKVCache | None = None, stats=None, trace=None) -> np.ndarray:
        """Token ids (B, T) -> next-token logits (B, T, V) float64; with a cache, T new tokens after the cached ones."""
        ids = np.asarray(ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise GQAError("ids", f"has shape {ids.shape} and dtype {ids.dtype}", "give (batch, tokens) integer ids")
        if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise GQAError("ids", f"holds ids outside [0, {self.config.vocab_size})", "tokenize with the model's tokenizer")
        B, T = ids.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.max_seq_len:
            raise GQAError("ids", f"{start + T} positions exceed the model's context of {self.config.max_seq_len}",
                           f"use at most {self.config.max_seq_len} tokens")
        positions = np.arange(start, start + T)
        x = self.embeddings(ids, stats=stats)                                  # (B, T, C) int32, aligned rows
        h, _, _ = self.to_stream(x, stats, "embeddings.to_stream")             # (B, T, C) residual codes
        if trace is not None:
            trace.update({"ids": ids, "positions": positions, "emb": x, "h": h})
        for blk in self.layers:
            h = blk(h, positions, cache, stats, trace)
        _, x8, t = self.norm(h, stats)                                         # (B, T, C) int8, (B, T) shifts
        acc, logits = self.output(x8, t, stats)                                # (B, T, V)
        if trace is not None:
            trace.update({"norm": x8, "logits_acc": acc})
            if t is not None:
                trace["norm_shift"] = t
        return logits

    def __call__(self, ids):
        """torch ids (B, T) -> torch logits (B, T, V) (what :func:`intsim.perplexity.perplexity` calls)."""
        return torch.from_numpy(self.logits(ids.numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)))

    def generate(self, prompt_ids, max_new_tokens: int, eos_id: int | None = None, progress: bool = False) -> list[int]:
        """Greedy decoding with the integer KV cache: the new token ids (stops after ``eos_id`` if given)."""
        ids = check_generation(prompt_ids, max_new_tokens, self.config.max_seq_len)
        cache = self.new_cache()
        logits = self.logits(np.array([ids]), cache)                           # prefill: (1, T, V)
        new: list[int] = []
        for _ in tqdm(range(max_new_tokens), desc="integer decode", unit="token", disable=not progress):
            nxt = int(logits[0, -1].argmax())
            new.append(nxt)
            if nxt == eos_id:
                break
            logits = self.logits(np.array([[nxt]]), cache)                     # one step: (1, 1, V)
        return new


def _q4_linears(i: int):
    """Layer ``i``'s projection factory on the GGUF's own Q4_1 blocks (IntAttention's ``linear``)."""
    from .gguf_model import open_gguf
    from .q4linear import IntQ4Linear

    g = open_gguf()
    names = {"qkv": ["attn_q", "attn_k", "attn_v"], "out": ["attn_output"], "in": ["ffn_gate"], "up": ["ffn_up"],
             "w2": ["ffn_down"]}

    def make(part, w, b, in_scale, cfg, out_scale, out_bits, col_factor=None):
        blocks = [g.quant_blocks(f"blk.{i}.{n}.weight") for n in names[part]]
        return IntQ4Linear(blocks if len(blocks) > 1 else blocks[0], b, in_scale, cfg, out_scale, out_bits,
                           col_factor=col_factor)
    return make


# --- building ------------------------------------------------------------------------------------------

def _trimmed(layers: int | None) -> Llama:
    """The FP32 decoder, only its first ``layers`` blocks when given (weights shared, never copied)."""
    from .llama import load_model

    model = load_model()
    if layers is None:
        return model
    if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= model.config.n_layers:
        raise GQAError("layers", f"is {layers!r}", f"give 1 .. {model.config.n_layers} (or None: all)")
    model.layers = model.layers[:layers]
    model.config = dataclasses.replace(model.config, n_layers=layers)
    return model


@functools.lru_cache(maxsize=4)
def _calibration(layers: int | None, calib_text: str | None, progress: bool) -> Calibration:
    from .gguf_model import load_tokenizer

    text = CALIB_TEXT.read_text() if calib_text is None else calib_text
    if not text.strip():
        raise GQAError("calib_text", "is empty or whitespace only", "give a calibration text")
    tok = load_tokenizer()
    ids = tok.encode(text)[:CALIB_TOKENS]
    return calibrate_stream(_trimmed(layers), tok, ids, CALIB_SEQ, SITES, progress=progress)


def calibration(layers: int | None = None, calib_text: str | None = None, progress: bool = False) -> Calibration:
    """The decoder's calibration (first :data:`CALIB_TOKENS` tokens of ``calib_text``, default
    :data:`CALIB_TEXT`, in windows of :data:`CALIB_SEQ`), computed once per process and arguments."""
    return _calibration(layers, calib_text, bool(progress))


def build(cfg: SimConfig | None = None, weights: str = "w8", layers: int | None = None, calib_text: str | None = None,
          progress: bool = False):
    """-> ``(int_model, fp32_model, tokenizer)``; ``layers=N``: the first N blocks only (both models).

    ``cfg``: a :class:`SimConfig` (default :func:`default_config`); ``calib_text``: the calibration
    text (default :data:`CALIB_TEXT`; never an evaluation text). The calibration is computed once
    per process and ``(layers, calib_text)``."""
    from .gguf_model import load_tokenizer

    if weights not in WEIGHTS:
        raise GQAError("weights", f"{weights!r} is not an option", f"use one of {', '.join(WEIGHTS)}")
    calib = calibration(layers, calib_text, progress)
    fp32 = _trimmed(layers)
    return IntLlama(fp32, calib, cfg, weights), fp32, load_tokenizer()
