"""Per-site error attribution: which quantized tensor or PWL unit of the integer encoder costs accuracy.

The integer encoder (:mod:`intsim.int_bert`) quantizes many tensors at once; its error against
FP32 is their joint effect. This module MIRRORS THE INTEGER KERNELS in torch (float64) so that
each *site* can be made integer or left exact on its own:

- the mirror is built from an :class:`~intsim.int_bert.IntBert` and reads every scale decision
  from it (activation scales, smoothing factors, per-token modes, the integer weight codes and
  their scales, the PWL kernels and tables): nothing is re-derived;
- a site that is *on* is fake-quantized at exactly those scales (codes rounded, saturated, and
  multiplied back), and a PWL site on evaluates intsim's own table on the codes
  (:meth:`intsim.table.PWLTable.evaluate`, the unit the kernels run); a site that is *off* is the
  FP32 operation;
- all sites off is the FP32 model (to 1e-5, tested); all sites on tracks the integer model (the
  bound is measured and tested: the mirror rounds where the kernels round, but its arithmetic
  between the rounding points is float64, not the kernels' integer registers).

Site classes (:data:`SITE_CLASSES`), per layer (``emb`` or block ``i``):

==============  ===========================================================================
class           what is integer when the site is on
==============  ===========================================================================
embed           word + position tables int8 per row, summed at the aligned scale (``emb``)
residual        the residual stream: every add ``s = sat(round((y + r) / s_add))`` at
                ``residual_bits`` and the norms' residual copies (the ``emb`` norm's too)
weights         the block's weights (int8 per channel, smoothing folded in) and biases at the
                accumulator's scale
qkv_in          the QKV GEMM's operand: the previous norm's int8 copy (smoothed, per token)
q, k, v         the int8 outputs of the QKV GEMM (static per-tensor scales)
exp_in          softmax: ``d = score - max`` as codes of the exp table's scale ``e_x``
                (saturating at ``q_min``)
exp_table       softmax: the exp PWL table instead of ``exp``
recip_in        softmax: the denominator's mantissa truncated to ``e_r`` fractional bits
recip_table     softmax: the reciprocal PWL table on the mantissa instead of ``1/m``
probs           softmax probabilities UINT8 at ``2**-8`` (round half up, saturated at 255)
ctx             the context (``probs @ v``) requantized to the out-projection's int8 operand
ffn_in          the FFN in-projection's operand: the first norm's int8 copy
gelu_in         the GELU unit's input codes (``in_bits`` at ``2**-e``, saturating)
gelu_table      the GELU PWL table instead of erf GELU
ffn_mid         the GELU output requantized to the out-projection's int8 operand (``act_offset``:
                ``a + c`` to its uint8 operand, the consumer's bias folding ``-W c``; ``token_mantissa``:
                per row at ``s mu 2**(k-m)``, one rounding, as ctx)
rsqrt_in        LayerNorm's integer normalisation: ``d = C x - S`` reduced to ``d_bits``, the
                variance's base-4 mantissa truncated to the rsqrt table's codes, ``z = d / sqrt(V)``
                held with ``Z_FRAC`` fractional bits
rsqrt_table     LayerNorm: the rsqrt PWL table on the mantissa instead of ``1/sqrt(m)``
==============  ===========================================================================

A PWL unit's two sites are independent: its table with exact input is the table's real
piecewise-linear function (breakpoints ``p_j``, slopes and intercepts as reals); exact table with
quantized input is the true function at the codes. Not mirrored (measured below one part in 1e5
of the error budget, see tests): the double rounding of static requantizers (``SRDHM`` then
``RDBPOT``), LayerNorm's integer gamma/beta, the integer pooling (a sum of the last residual
copy: the same direction as the mean).

:func:`attribute` measures, for each site class (aggregated over layers and, with
``per_layer``, each layer): the error with ONLY that site integer (everything else FP32) and with
ONLY that site exact (everything else integer), as ``1 - cos`` and nearest-neighbour agreement
against FP32. :func:`attach_costs` adds each site's energy per inference from an energy
breakdown by op name (``hw_models.model_energy``'s ``by_op``; intsim imports no other package, so
the caller passes it), from the op patterns of :data:`SITE_CLASSES`.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from .errors import GQAError
from .layernorm import Z_FRAC
from .layers import quantize_weight
from .metrics import cosine_rows, nearest_neighbours
from .outliers import OperandTransform


def _smoothing(factor, channels: int) -> np.ndarray:
    """The per-channel divisor of a norm's GEMM copy: the OperandTransform a norm site folds
    (SmoothQuant's ``f``; the mirror refuses the transforms that also shift or split), an
    array of factors, or ones."""
    if isinstance(factor, OperandTransform):
        return np.asarray(factor.divisor, np.float64)
    if factor is None or np.size(factor) == 1:
        return np.ones(channels)
    return np.asarray(factor, np.float64)


@dataclass(frozen=True)
class SiteClass:
    """One kind of site: where it exists (``emb``, ``block`` or both) and the op names (regexes
    over :class:`~intsim.opstats.OpStats` names, ``{p}`` the layer's prefix) that realise it."""

    name: str
    where: tuple[str, ...]
    ops: tuple[str, ...]
    doc: str


_LN_IN = r"(center|sum|dmax|square|var|leading_one)"
SITE_CLASSES = {c.name: c for c in (
    SiteClass("embed", ("emb",), (r"embeddings\.",), "embedding tables int8 per row"),
    SiteClass("residual", ("emb", "block"), (r"{p}(attn_out|ffn_out)\.residual$", r"{ln}\.(gamma|beta|out)$"),
              "residual stream adds and residual copies"),
    SiteClass("weights", ("block",), (r"{p}(qkv|attn_out|ffn_in|ffn_out)(\.bias)?$",), "int8 weights and biases"),
    SiteClass("qkv_in", ("block",), (r"{p}qkv$", r"{prev}\.token_max$"), "QKV GEMM operand (norm copy)"),
    SiteClass("q", ("block",), (r"{p}qkv\.requant$", r"{p}scores$"), "int8 queries"),
    SiteClass("k", ("block",), (r"{p}qkv\.requant$", r"{p}scores$"), "int8 keys"),
    SiteClass("v", ("block",), (r"{p}qkv\.requant$", r"{p}context$"), "int8 values"),
    SiteClass("exp_in", ("block",), (r"{p}softmax\.(max|sub_max|requant)$",), "exp input codes"),
    SiteClass("exp_table", ("block",), (r"{p}softmax\.exp$",), "exp PWL table"),
    SiteClass("recip_in", ("block",), (r"{p}softmax\.(sum|leading_one)$",), "reciprocal mantissa codes"),
    SiteClass("recip_table", ("block",), (r"{p}softmax\.reciprocal$",), "reciprocal PWL table"),
    SiteClass("probs", ("block",), (r"{p}softmax\.normalize$", r"{p}context$"), "UINT8 probabilities"),
    SiteClass("ctx", ("block",), (r"{p}context\.(requant|token_max|token_shift|row_\w+)$", r"{p}attn_out(\.row_scale)?$"),
              "context operand int8"),
    SiteClass("ffn_in", ("block",), (r"{p}ffn_in$", r"{p}ln1_out\.token_max$"), "FFN operand (norm copy)"),
    SiteClass("gelu_in", ("block",), (r"{p}ffn_in\.requant$",), "GELU input codes"),
    SiteClass("gelu_table", ("block",), (r"{p}gelu$",), "GELU PWL table"),
    SiteClass("ffn_mid", ("block",), (r"{p}gelu\.(requant|token_max|token_shift|row_\w+|offset)$",
                                      r"{p}ffn_out(\.row_scale)?$"),
              "FFN out-projection operand int8"),
    SiteClass("rsqrt_in", ("emb", "block"), (r"{ln}\." + _LN_IN + "$",), "rsqrt mantissa codes"),
    SiteClass("rsqrt_table", ("emb", "block"), (r"{ln}\.(rsqrt|normalize)$",), "rsqrt PWL table"),
)}


def layer_names(n_layers: int) -> list[str]:
    return ["emb"] + [f"blocks.{i}" for i in range(n_layers)]


def site_names(n_layers: int, classes=None) -> list[str]:
    """Every site ``"<layer>.<class>"`` of an encoder with ``n_layers`` blocks (or of ``classes``)."""
    classes = list(SITE_CLASSES) if classes is None else list(classes)
    out = []
    for layer in layer_names(n_layers):
        kind = "emb" if layer == "emb" else "block"
        out += [f"{layer}.{c}" for c in classes if kind in SITE_CLASSES[c].where]
    return out


def check_sites(sites, n_layers: int) -> frozenset[str]:
    known = set(site_names(n_layers))
    bad = sorted(set(sites) - known)
    if bad:
        raise GQAError("sites", f"{bad[0]!r} is not a site of this encoder",
                       f"sites are <layer>.<class>, layers {', '.join(layer_names(n_layers))}, "
                       f"classes {', '.join(SITE_CLASSES)}")
    return frozenset(sites)


# --- the quantizers (each the formula of the integer kernel it mirrors) -----------------------------

def round_half_away(x):
    return torch.sign(x) * torch.floor(torch.abs(x) + 0.5)


def fake_quant(x, scale, bits: int):
    """``sat(round(x / s), s{bits}) * s``: a static requantization to signed ``bits``."""
    top = 2 ** (bits - 1)
    return torch.clamp(round_half_away(x / scale), -top, top - 1) * scale


def _token_shift(v, top):
    """Per row the smallest ``t >= 0`` with ``floor(max|v| / 2**t) <= top`` (the kernels' shift test)."""
    peak = torch.amax(torch.abs(v), dim=-1, keepdim=True)
    return torch.clamp(torch.floor(torch.log2(torch.clamp(peak / (top + 1), min=1e-300))) + 1, min=0)


def fake_quant_norm_per_token(x, scale, bits: int):
    """A norm's dynamic output (:mod:`intsim.layernorm` step 4): one rounding of the row at
    ``s * 2**t``, ``t`` the smallest with ``floor(max|x / s| / 2**t) <= 2**(bits-1) - 2``."""
    t = _token_shift(x / scale, 2 ** (bits - 1) - 2)
    return fake_quant(x, scale * 2.0**t, bits)


def fake_quant_requant_per_token(x, scale, bits: int):
    """:func:`intsim.fixedpoint.requantize_dynamic`: ``v = round(x / s)`` at the nominal scale, ``t``
    the smallest with ``floor(max|v| / 2**t) <= 2**(bits-1) - 1``, then ``sat(round(v / 2**t))``
    (two roundings, as the kernel does them)."""
    top = 2 ** (bits - 1)
    v = round_half_away(x / scale)
    t = _token_shift(v, top - 1)
    return torch.clamp(round_half_away(v / 2.0**t), -top, top - 1) * scale * 2.0**t


def fake_quant_requant_row_mantissa(x, scale, bits: int, m: int):
    """:func:`intsim.fixedpoint.requantize_rows`: ``P`` the row's peak in nominal codes rounded to
    ``2**-G`` (``G = ROW_GUARD``), per row the smallest ``g = mu * 2**(k - m)`` (``mu`` in
    ``[2**m, 2**(m+1))``, ``k`` in ``[-8, 23]``) with ``mu * hi * 2**(k - m + G) >= P`` (in integers,
    as the kernel picks it), then ``sat(round(x / (s g)))``: one rounding, as the kernel."""
    from .fixedpoint import ROW_GUARD, ROW_K_MAX, ROW_K_MIN

    hi = 2 ** (bits - 1) - 1
    peak = round_half_away(torch.amax(torch.abs(x / scale), dim=-1, keepdim=True) * 2.0**ROW_GUARD)
    P = peak.to(torch.int64)
    ks = torch.arange(ROW_K_MIN, ROW_K_MAX + 1, dtype=torch.int64)
    e = ks - m + ROW_GUARD                                                 # (K,)
    d = hi * torch.pow(2, torch.clamp(e, min=0))
    up = P * torch.pow(2, torch.clamp(-e, min=0))                          # (..., K)
    need = (up + d - 1) // d                                              # ceil(P 2**(m-k-G) / hi)
    fits = need <= 2 ** (m + 1) - 1
    j = torch.where(fits.any(-1, keepdim=True), torch.argmax(fits.to(torch.int8), -1, keepdim=True),
                    torch.full_like(P, len(ks) - 1))
    k = ks[j]
    mu = torch.clamp(torch.gather(need, -1, j), 2**m, 2 ** (m + 1) - 1)
    g = scale * mu.to(x.dtype) * torch.pow(2.0, (k - m).to(x.dtype))
    return torch.clamp(round_half_away(x / g), -hi - 1, hi) * g


def pwl_real(table, x):
    """The table's piecewise-linear function of REAL ``x``: ``K_i x + B_i``, ``i = #{j : x >= p_j}``."""
    bp = torch.as_tensor(np.asarray(table.breakpoints, np.float64))
    i = torch.bucketize(x, bp, right=True)
    k = torch.as_tensor(table.slopes_real, dtype=torch.float64)
    b = torch.as_tensor(table.intercepts_real, dtype=torch.float64)
    return k[i] * x + b[i]


def pwl_codes(table, codes, e: int):
    """The unit's real output at integer ``codes`` (scale ``e``): intsim's own evaluation."""
    c = codes.detach().numpy().astype(np.int64)
    return torch.from_numpy(table.evaluate(c, e))


def mantissa_function(x, base_log2: int, table, e: int, quant_in: bool, use_table: bool, exact):
    """Range reduction: ``x = m * 2**(base_log2 * j)`` (``m`` in [1, 2**base_log2)), the mantissa
    truncated to ``e`` fractional bits if ``quant_in``, then the table (on codes, or its real PWL)
    or ``exact(m)``; returns ``f(m) * 2**-j``: ``1/x`` for the reciprocal (base 2, ``f = 1/m``) and
    ``1/sqrt(x)`` for rsqrt (base 4, ``f = m**-0.5``), as :mod:`intsim.rangereduce` specifies."""
    j = torch.floor(torch.log2(x) / base_log2)
    m = x / 2.0 ** (base_log2 * j)
    m = torch.clamp(m, 1.0, 2.0**base_log2 - 2.0**-40)    # log2 rounding at a power of the base
    if quant_in:
        code = torch.floor(m * 2.0**e)
        y = pwl_codes(table, code, e) if use_table else exact(code * 2.0**-e)
    else:
        y = pwl_real(table, m) if use_table else exact(m)
    return y * 2.0**-j


class Mirror:
    """The integer encoder's torch mirror with switchable sites (module docstring).

    ``Mirror(encoder, model)``: ``encoder`` the :class:`~intsim.int_bert.IntBert` (its scales),
    ``model`` the FP32 :class:`~intsim.bert.SentenceBert` it was built from.
    ``mirror(ids, mask, on)`` -> L2-normalised float64 embeddings (B, C); ``on`` a set of site
    names (:func:`site_names`); ``trace`` (a dict) receives every site's output tensor.
    """

    KERNELS = {"gelu": "pwl", "softmax": "pwl", "reciprocal": "pwl", "layernorm": "pwl"}   # what it mirrors
    OUTLIERS = frozenset({"smooth", "per_token", "act_offset", "token_mantissa", "norm_mantissa"})

    def __init__(self, encoder, model):
        from .layers import outlier_methods

        self.enc, self.model = encoder, model
        self.cfg = encoder.cfg
        for key, kind in self.KERNELS.items():
            if getattr(self.cfg, key) != kind:
                raise GQAError(key, f"{getattr(self.cfg, key)!r}: the attribution mirror covers the PWL kernels only",
                               f"attribute a config with {key} = {kind!r}")
        extra = sorted(outlier_methods(self.cfg) - self.OUTLIERS)
        if extra:
            raise GQAError("outliers", f"{extra[0]!r} is not mirrored (the mirror knows {', '.join(sorted(self.OUTLIERS))})",
                           "attribute a config without it")
        self.n_layers = len(encoder.blocks)
        self.heads = model.config.heads
        d = torch.float64
        emb = model.embeddings
        self.word = emb.word.weight.detach().to(d)
        self.pos = emb.position.weight.detach().to(d) + emb.token_type.weight.detach().to(d)[0]
        ie = encoder.embeddings
        self.word_q = torch.from_numpy(ie.codes[0].astype(np.float64) * ie.mults[0][:, None] * ie.scale)
        self.pos_q = torch.from_numpy(ie.codes[1].astype(np.float64) * ie.mults[1][:, None] * ie.scale)
        self.emb_scale = ie.scale
        self.norm_emb = self._norm(emb.ln, encoder.emb_ln)
        self.blocks = []
        prev = encoder.emb_ln
        for blk, ib in zip(model.blocks, encoder.blocks):
            a = ib.attn
            self.blocks.append(dict(
                qkv=self._linear(torch.cat([blk.attn.query.weight, blk.attn.key.weight, blk.attn.value.weight]),
                                 torch.cat([blk.attn.query.bias, blk.attn.key.bias, blk.attn.value.bias]),
                                 a.qkv, prev.gemm_scale, prev.factor),
                out=self._linear(blk.attn_out.weight, blk.attn_out.bias, a.out, a.s_ctx, None),
                ffn_in=self._linear(blk.ffn_in.weight, blk.ffn_in.bias, ib.ffn.proj, ib.ln1.gemm_scale, ib.ln1.factor),
                ffn_out=self._linear(blk.ffn_out.weight, blk.ffn_out.bias, ib.ffn_out, ib.ffn.out_scale, ib.ffn.factor),
                mid_shift=self._shift(ib.ffn.factor), mid_unsigned=ib.ffn.requant.unsigned,
                ln1=self._norm(blk.ln1, ib.ln1), ln2=self._norm(blk.ln2, ib.ln2),
                add1=prev.res_scale, add2=ib.ln1.res_scale,
                in_op=self._operand(prev), ffn_op=self._operand(ib.ln1),
                s_q=a.s_q, s_k=a.s_k, s_v=a.s_v, s_ctx=a.s_ctx, ctx_dynamic=a.ctx.per_token,
                ctx_mantissa=a.ctx.mantissa_bits, mid_mantissa=ib.ffn.requant.mantissa_bits,
                softmax=a.softmax, gelu=ib.ffn.kernel, s_mid=ib.ffn.out_scale, mid_dynamic=ib.ffn.requant.per_token))
            prev = ib.ln2

    # --- construction helpers: read the integer model's constants ------------------------------
    @staticmethod
    def _shift(factor):
        """The operand's shift ``z`` (an :class:`OperandTransform`'s; the operand is ``x - z``), or 0."""
        return torch.from_numpy(np.asarray(factor.shift, np.float64)) if isinstance(factor, OperandTransform) else 0.0

    @classmethod
    def _linear(cls, w, b, lin, in_scale, factor):
        """FP32 weights and the integer layer's dequantized ones: ``codes * s_w / f`` and the bias; an
        operand shift ``z`` is folded into the FP32 bias too (``b + W z``: the operand is ``x - z``)."""
        d = torch.float64
        w, b = w.detach().to(d), b.detach().to(d)
        b = b + w @ cls._shift(factor) if isinstance(factor, OperandTransform) else b
        codes = lin.wt.array.T.astype(np.float64)                         # (in, out) -> (out, in)
        s_w = lin.acc_scale / in_scale                                    # per output channel
        f = _smoothing(factor, codes.shape[1])
        wq = torch.from_numpy(codes * s_w[:, None] / f[None, :])
        bq = torch.from_numpy(lin.bias.astype(np.float64) * lin.acc_scale)
        return w, b, wq, bq

    @staticmethod
    def _operand(norm):
        """A norm's int8 GEMM copy: per-channel scale ``s * f`` and its per-token mode."""
        f = _smoothing(norm.factor, 1)
        return torch.from_numpy(norm.gemm_scale * f), bool(norm.gemm.dynamic), norm.gemm.mantissa_bits

    @staticmethod
    def _norm(ln, site):
        return dict(gamma=ln.weight.detach().to(torch.float64), beta=ln.bias.detach().to(torch.float64),
                    eps=ln.eps, res_scale=site.res_scale, kernel=site.kernel)

    # --- the forward ---------------------------------------------------------------------------
    def __call__(self, ids, mask, on=frozenset(), trace=None):
        on = check_sites(on, self.n_layers)
        rb, ab = self.cfg.residual_bits, self.cfg.act_bits
        ids_t = torch.as_tensor(np.asarray(ids), dtype=torch.long)
        mask_t = torch.as_tensor(np.asarray(mask), dtype=torch.float64)
        T = ids_t.shape[1]

        def rec(name, x):
            if trace is not None:
                trace[name] = x
            return x

        with torch.inference_mode():
            if "emb.embed" in on:
                x = self.word_q[ids_t] + self.pos_q[:T][None]
            else:
                x = self.word[ids_t] + self.pos[:T][None]
            rec("emb.embed", x)
            x_res, x_gemm = self._layernorm(x, self.norm_emb, self.emb_scale, "emb", on, rec)
            if "emb.residual" in on:
                x_res = fake_quant(x_res, self.norm_emb["res_scale"], rb)
            rec("emb.residual", x_res)
            for i, b in enumerate(self.blocks):
                x_res, x_gemm = self._block(i, b, x_res, x_gemm, mask_t, on, rec, ab, rb)
            m = mask_t[..., None]
            pooled = (x_res * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return F.normalize(pooled, p=2, dim=1).numpy()

    def _layernorm(self, x, n, in_scale, layer, on, rec):
        """LayerNorm with the rsqrt sites of ``layer``; returns the normalised real output twice
        (the residual and GEMM copies are quantized by their consumers' sites)."""
        q_in, tab = f"{layer}.rsqrt_in" in on, f"{layer}.rsqrt_table" in on
        if not (q_in or tab):
            y = F.layer_norm(x, x.shape[-1:], n["gamma"], n["beta"], n["eps"])
            return y, y
        C = x.shape[-1]
        kernel = n["kernel"]
        dc = C * (x - x.mean(-1, keepdim=True)) / in_scale                 # step 1: d = C x - S, in codes
        if q_in:                                                            # step 2: width reduction to d_bits
            r = torch.clamp(torch.floor(torch.log2(torch.amax(torch.abs(dc), -1, keepdim=True).clamp(min=1)))
                            + 2 - kernel.d_bits, min=0)
            dc = torch.floor(dc / 2.0**r + 0.5)
        v = (dc * dc).sum(-1, keepdim=True)                                 # step 3: V
        mt = kernel.table
        z = dc * mantissa_function(torch.clamp(v, min=1e-300), 2, mt.table, mt.e, q_in, tab, lambda m: m**-0.5)
        if q_in:                                                            # z held with Z_FRAC fractional bits
            z = torch.floor(z * 2.0**Z_FRAC + 0.5) * 2.0**-Z_FRAC
        y = rec(f"{layer}.rsqrt", z * math.sqrt(C)) * n["gamma"] + n["beta"]
        return y, y

    def _block(self, i, b, x_res, x_in, mask, on, rec, ab, rb):
        p = f"blocks.{i}."
        B, T, C = x_in.shape
        H = self.heads
        dh = C // H

        def lin(x, key):
            w, bias, wq, bq = b[key]
            return x @ (wq if p + "weights" in on else w).T + (bq if p + "weights" in on else bias)

        def operand(x, op, site):
            if p + site in on:
                scale, dynamic, mantissa = op
                if mantissa is not None:      # norm_mantissa: the row scale as requantize_rows picks it
                    x = fake_quant_requant_row_mantissa(x, scale, ab, mantissa)
                else:
                    x = fake_quant_norm_per_token(x, scale, ab) if dynamic else fake_quant(x, scale, ab)
            return rec(p + site, x)

        def requant_operand(x, scale, dynamic, site, unsigned=False, mantissa=None):
            if p + site in on:      # unsigned: the kernels at ab + 1 signed bits, the codes >= 0 (OperandRequant)
                bits = ab + unsigned
                if mantissa is not None:
                    x = fake_quant_requant_row_mantissa(x, scale, bits, mantissa)
                else:
                    x = fake_quant_requant_per_token(x, scale, bits) if dynamic else fake_quant(x, scale, bits)
                x = torch.clamp(x, min=0.0) if unsigned else x
            return rec(p + site, x)

        def static(x, scale, site):
            return rec(p + site, fake_quant(x, scale, ab) if p + site in on else x)

        def residual(x, scale, name):
            return rec(p + name, fake_quant(x, scale, rb) if p + "residual" in on else x)

        x8 = operand(x_in, b["in_op"], "qkv_in")
        qkv = lin(x8, "qkv")
        q, k, v = (static(qkv[..., j * C:(j + 1) * C], b[s], n)
                   for j, (s, n) in enumerate((("s_q", "q"), ("s_k", "k"), ("s_v", "v"))))
        q, k, v = (t.reshape(B, T, H, dh).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-2, -1) / math.sqrt(dh)
        probs = self._softmax(scores, mask, b["softmax"], p, on, rec)
        ctx = (probs @ v).transpose(1, 2).reshape(B, T, C)
        ctx = requant_operand(ctx, b["s_ctx"], b["ctx_dynamic"], "ctx", mantissa=b["ctx_mantissa"])
        s1 = residual(lin(ctx, "out") + x_res, b["add1"], "sum1")
        r1, h = self._layernorm(s1, b["ln1"], b["add1"], p.rstrip("."), on, rec)
        r1 = residual(r1, b["ln1"]["res_scale"], "ln1_res")
        h8 = operand(h, b["ffn_op"], "ffn_in")
        a = self._gelu(lin(h8, "ffn_in"), b["gelu"], p, on, rec)
        g8 = requant_operand(a - b["mid_shift"], b["s_mid"], b["mid_dynamic"], "ffn_mid", b["mid_unsigned"],
                             b["mid_mantissa"])
        s2 = residual(lin(g8, "ffn_out") + r1, b["add2"], "sum2")
        r2, x_next = self._layernorm(s2, b["ln2"], b["add2"], p.rstrip("."), on, rec)
        return residual(r2, b["ln2"]["res_scale"], "residual"), x_next          # the residual copy, and the real output the next block's operand quantizes

    @staticmethod
    def _gelu(h, kernel, p, on, rec):
        q_in, tab = p + "gelu_in" in on, p + "gelu_table" in on
        if q_in:
            top = 2 ** (kernel.in_bits - 1)
            code = torch.clamp(round_half_away(h / kernel.in_scale), -top, top - 1)
            rec(p + "gelu_in", code * kernel.in_scale)
            y = pwl_codes(kernel.table, code, kernel.e) if tab else F.gelu(code * kernel.in_scale)
        else:
            rec(p + "gelu_in", h)
            y = pwl_real(kernel.table, h) if tab else F.gelu(h)
        return rec(p + "gelu", y)

    @staticmethod
    def _softmax(scores, mask, sm, p, on, rec):
        names = [p + s for s in ("exp_in", "exp_table", "recip_in", "recip_table", "probs")]
        e_in, e_tab, r_in, r_tab, p_on = (n in on for n in names)
        bias = (1.0 - mask[:, None, None, :]) * torch.finfo(torch.float32).min
        if not any((e_in, e_tab, r_in, r_tab, p_on)):
            return rec(p + "probs", torch.softmax(scores + bias, dim=-1))
        keep = mask[:, None, None, :] > 0
        mx = torch.amax(scores + bias, dim=-1, keepdim=True)
        d = torch.clamp(scores - mx, max=0.0)
        table, e_x = sm.exp_table, sm.e_x
        if e_in:
            u = torch.clamp(round_half_away(d * 2.0**e_x), min=sm.q_min)
            E = pwl_codes(table, u, e_x) if e_tab else torch.exp(u * 2.0**-e_x)
        else:
            E = pwl_real(table, torch.clamp(d, min=sm.q_min * 2.0**-e_x)) if e_tab else torch.exp(d)
        E = rec(p + "exp", torch.where(keep, torch.clamp(E, min=0.0), torch.zeros_like(E)))
        Z = E.sum(-1, keepdim=True)
        if r_in or r_tab:
            rt = sm.recip_table
            inv = mantissa_function(torch.clamp(Z, min=1e-300), 1, rt.table, rt.e, r_in, r_tab, lambda m: 1.0 / m)
        else:
            inv = 1.0 / torch.clamp(Z, min=1e-300)
        P = E * inv
        if p_on:
            P = torch.clamp(torch.floor(P * 256 + 0.5), 0, 255) / 256
        return rec(p + "probs", P)


# --- the measurement ------------------------------------------------------------------------------

def error_of(emb: np.ndarray, ref: np.ndarray, ref_nn: np.ndarray | None = None) -> dict:
    """``1 - cos`` (mean) and nearest-neighbour agreement of ``emb`` against ``ref``."""
    cos = cosine_rows(emb, ref)
    ref_nn = nearest_neighbours(ref) if ref_nn is None else ref_nn
    nn = float((nearest_neighbours(emb) == ref_nn).mean()) if len(ref) >= 3 else None
    return {"one_minus_cos": float(1.0 - cos.mean()), "nn_agreement": nn}


def weight_only_model(model, bits: int = 8):
    """A copy of the FP32 model with only its Linear weights rounded to ``bits`` per output channel
    (:func:`intsim.layers.quantize_weight`; biases, embeddings and every activation stay FP32): the
    reference the issue's targets compare the integer model with."""
    import copy

    wo = copy.deepcopy(model)
    with torch.no_grad():
        for mod in wo.modules():
            if isinstance(mod, torch.nn.Linear):
                q, s = quantize_weight(mod.weight.detach().double().numpy(), bits, True)
                mod.weight.copy_(torch.from_numpy(q.astype(np.float64) * s[:, None]).to(mod.weight.dtype))
    return wo


def parse_classes(classes=None, field: str = "classes") -> list[str]:
    """Site classes from a list or a comma-separated string (None: every class), checked."""
    if classes is None:
        return list(SITE_CLASSES)
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",") if c.strip()]
    classes = list(classes)
    unknown = [c for c in classes if c not in SITE_CLASSES]
    if unknown or not classes:
        raise GQAError(field, f"{unknown[0]!r} is not a site class" if unknown else "names no site class",
                       f"classes: {', '.join(SITE_CLASSES)}")
    return classes


def attribute(encoder, model, tokenizer, sentences, per_layer: bool = False, classes=None, batch_size: int = 64,
              progress: bool = False, stats=None) -> dict:
    """Attribution of the integer encoder's error over ``sentences`` (module docstring).

    Returns ``{"sentences", "fp32_vs_int": error of the integer model, "mirror_all_on": error of
    the mirror with every site on, "mirror_vs_int": 1 - cos between mirror and integer model,
    "rows": [{"site", "class", "layer", "only_int": error, "only_exact": error}]}`` where a row's
    ``layer`` is ``"all"`` for the class aggregated over layers. ``stats`` (an
    :class:`~intsim.opstats.OpStats`) receives the integer model's operations over ``sentences``
    (for :func:`attach_costs`).
    """
    from tqdm import tqdm

    from .bert import embed_fp32, length_batches
    from .int_bert import embed_int

    sentences = list(sentences)
    if len(sentences) < 3:
        raise GQAError("sentences", f"{len(sentences)} are too few for nearest-neighbour agreement",
                       "give at least 3 sentences")
    classes = parse_classes(classes)
    mirror = Mirror(encoder, model)
    all_sites = frozenset(site_names(mirror.n_layers))
    batches = [(idx, tokenizer([sentences[i] for i in idx], warn=False))
               for idx in length_batches(tokenizer, sentences, batch_size)]

    def run(on):
        out = np.zeros((len(sentences), model.config.hidden))
        for idx, (ids, mask) in batches:
            out[idx] = mirror(ids, mask, on)
        return out

    ref = embed_fp32(model, tokenizer, sentences, batch_size).astype(np.float64)
    ref_nn = nearest_neighbours(ref)
    emb_int = embed_int(encoder, tokenizer, sentences, batch_size, stats)
    emb_on = run(all_sites)
    groups = [(c, "all", [s for s in all_sites if s.rsplit(".", 1)[1] == c]) for c in classes]
    if per_layer:
        groups += [(c, layer, [f"{layer}.{c}"]) for layer in layer_names(mirror.n_layers) for c in classes
                   if f"{layer}.{c}" in all_sites]
    rows = []
    for c, layer, sites in tqdm(groups, desc="attribution", unit="site", disable=not progress):
        rows.append({"site": c if layer == "all" else f"{layer}.{c}", "class": c, "layer": layer,
                     "only_int": error_of(run(frozenset(sites)), ref, ref_nn),
                     "only_exact": error_of(run(all_sites - set(sites)), ref, ref_nn)})
    return {"sentences": len(sentences), "config": encoder.cfg.describe(),
            "fp32_vs_int": error_of(emb_int, ref, ref_nn), "mirror_all_on": error_of(emb_on, ref, ref_nn),
            "mirror_vs_int": float(1.0 - cosine_rows(emb_on, emb_int).mean()), "rows": rows}


def site_ops(cls: str, layer: str, op_names) -> list[str]:
    """The op names (of an op-statistics dict) that realise site class ``cls`` in ``layer``."""
    c = SITE_CLASSES[cls]
    blocks = sorted({int(m.group(1)) for n in op_names if (m := re.match(r"blocks\.(\d+)\.", n))})
    layers = [layer] if layer != "all" else ["emb"] + [f"blocks.{i}" for i in blocks]
    out = set()
    for lay in layers:
        if lay == "emb":
            p, lns, prev = "emb.", ["emb.ln_out"], None
        else:
            i = int(lay.split(".")[1])
            p, lns = lay + ".", [f"{lay}.ln1_out", f"{lay}.ln2_out"]
            prev = "emb.ln_out" if i == 0 else f"blocks.{i - 1}.ln2_out"
        kind = "emb" if lay == "emb" else "block"
        if kind not in c.where:
            continue
        for pat in c.ops:
            for ln in lns:
                if "{prev}" in pat and prev is None:
                    continue
                rx = re.compile(pat.format(p=re.escape(p), ln=re.escape(ln), prev=re.escape(prev or "")))
                out |= {n for n in op_names if rx.match(n)}
    return sorted(out)


def attach_costs(result: dict, by_op_int: dict, by_op_fp32: dict) -> dict:
    """Add ``energy_int_pj`` / ``energy_fp32_pj`` (per inference of the priced run) to each row:
    the ops that realise the site (:func:`site_ops`; a GEMM's MACs are listed under each operand)."""
    names = list(by_op_int)
    for r in result["rows"]:
        ops = site_ops(r["class"], r["layer"], names)
        r["ops"] = ops
        r["energy_int_pj"] = float(sum(by_op_int[o] for o in ops))
        r["energy_fp32_pj"] = float(sum(by_op_fp32.get(o, 0.0) for o in ops))
    return result


def table_markdown(result: dict, layer: str = "all") -> str:
    """The attribution rows of ``layer`` as a markdown table (energy columns when attached)."""
    cost = any("energy_int_pj" in r for r in result["rows"])
    head = "| site | only this site integer: 1 - cos | NN % | only this site exact: 1 - cos | NN % |"
    if cost:
        head += " energy int / FP32 (nJ) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def nn(x):
        return "n/a" if x is None else f"{100 * x:.1f}"

    for r in result["rows"]:
        if r["layer"] != layer and not (layer == "blocks" and r["layer"] != "all"):
            continue
        a, b = r["only_int"], r["only_exact"]
        line = (f"| {r['site']} | {a['one_minus_cos']:.2e} | {nn(a['nn_agreement'])} | {b['one_minus_cos']:.2e} "
                f"| {nn(b['nn_agreement'])} |")
        if cost:
            line += f" {r['energy_int_pj'] * 1e-3:.1f} / {r['energy_fp32_pj'] * 1e-3:.1f} |"
        lines.append(line)
    f, m = result["fp32_vs_int"], result["mirror_all_on"]
    lines.append(f"\nInteger model: 1 - cos {f['one_minus_cos']:.2e}, NN {nn(f['nn_agreement'])}%; mirror with every "
                 f"site on: 1 - cos {m['one_minus_cos']:.2e}, NN {nn(m['nn_agreement'])}%; mirror vs integer "
                 f"model: 1 - cos {result['mirror_vs_int']:.1e} ({result['sentences']} sentences)")
    return "\n".join(lines)


def plot_attribution(result: dict, path, field: str = "figure"):
    """Bar chart of the aggregated rows: 1 - cos with only the site integer, and the improvement
    from making only that site exact (log scale), NN agreement beside; written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .fileio import atomic_write_bytes, check_writable

    check_writable(path, field)
    rows = [r for r in result["rows"] if r["layer"] == "all"]
    if not rows:
        raise GQAError(field, "the attribution has no aggregated rows", "run attribute() first")
    names = [r["site"] for r in rows]
    full = result["mirror_all_on"]["one_minus_cos"]
    only_int = [max(r["only_int"]["one_minus_cos"], 1e-9) for r in rows]
    gain = [max(full - r["only_exact"]["one_minus_cos"], 1e-9) for r in rows]
    y = np.arange(len(rows))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 0.35 * len(rows) + 1.8), sharey=True,
                                  gridspec_kw={"width_ratios": [3, 2]})
    ax.barh(y - 0.2, only_int, 0.4, label="only this site integer")
    ax.barh(y + 0.2, gain, 0.4, label="error removed by making only this site exact")
    ax.axvline(full, color="black", lw=0.8, ls="--", label=f"every site integer ({full:.1e})")
    ax.set_xscale("log")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("1 - cos against FP32 (mean)")
    ax.legend(fontsize=7, loc="lower right")
    nn1 = [100 * (r["only_int"]["nn_agreement"] or 0) for r in rows]
    nn2 = [100 * (r["only_exact"]["nn_agreement"] or 0) for r in rows]
    ax2.plot(nn1, y, "o", label="only this site integer")
    ax2.plot(nn2, y, "s", label="only this site exact")
    ax2.axvline(100 * (result["mirror_all_on"]["nn_agreement"] or 0), color="black", lw=0.8, ls="--")
    ax2.set_xlabel("nearest-neighbour agreement with FP32 (%)")
    ax2.legend(fontsize=7)
    fig.suptitle(f"Per-site attribution, {result['sentences']} sentences: {result['config']}", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue(), field)
