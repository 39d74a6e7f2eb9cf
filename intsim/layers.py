"""The integer layers every model composes: linear + requantization, attention, norm sites,
activation sites, embeddings, and the calibration-site declaration both calibration and the
builders read.

Built offline from FP32 weights, a :class:`~intsim.calibration.Calibration` and a
:class:`~intsim.config.SimConfig`: every real scale is folded into integer weights, biases,
dyadic multipliers (gemmlowp ``M0``, shift) and norm gamma/beta integers. At run time a layer
maps integer arrays to integer arrays.

Formats and scales (the conventions every layer keeps):

- activation scale ``s = absmax / (2**(b-1) - 1)`` (``act_scales="dyadic"``) or that rounded up
  to a power of two (``"pot"``; :data:`intsim.registry.ACT_SCALES`); weights symmetric per output
  channel (or per tensor), int8;
- a GEMM accumulates int8 x int8 (or uint8 probabilities x int8) in int32, then one
  requantization per output column to the consumer's format (:class:`IntLinear`);
- a *residual add* is fused into the requantization of the projection that feeds it: the
  residual operand is already at the sum's scale, so ``y = sat(requant(acc + b) + residual)``
  (``IntLinear(..., residual=x)``); one scale covers both operands and the sum;
- outliers (:data:`intsim.registry.OUTLIERS`): ``smooth`` divides a norm's GEMM copy by per-channel
  factors ``f_c = cmax_c**a / wmax_c**(1-a)`` (SmoothQuant) folded into its integer gamma/beta and
  multiplies the consuming weights' input columns by ``f_c``; ``per_token`` gives GEMM operands a
  dynamic power-of-two scale per token (row shifts ``t``) that the next requantizer subtracts.
  The other methods (gamma migration, OS+ shifting and scaling, channel splitting) and the searched
  clipping ranges (``act_clip``) are :mod:`intsim.outliers`: a norm's GEMM copy carries one
  :class:`~intsim.outliers.OperandTransform` (its ``factor``) that its consumers' :class:`IntLinear`
  folds into weights and bias; ``site_bits`` gives a norm's GEMM copy its own width.

Every layer takes ``stats`` (an :class:`~intsim.opstats.OpStats` or None) and names its
operations under a ``prefix`` (``"blocks.3."``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .calibration import Calibration
from .config import SimConfig
from .errors import GQAError
from .fixedpoint import dyadic_multiplier, requantize_channels, requantize_dynamic
from .gemm import Constant, int_gemm
from .layernorm import LNOutput
from .outliers import OperandTransform, norm_transform, static_range
from .registry import ACT_SCALES, OUTLIERS, SOFTMAXES, WEIGHT_SCALES

NORM_TRANSFORMS = frozenset({"smooth", "gamma_migration", "os_shift", "os_scale", "split"})  # fold into a norm

PROB_BITS = 8   # softmax probabilities: UINT8, scale 2**-8


# --- scales and integer constants --------------------------------------------------------------------

def act_scale(absmax: float, bits: int, kind: str = "dyadic") -> float:
    """The real scale of one code of a ``bits``-bit activation of range ``absmax`` (ACT_SCALES)."""
    return ACT_SCALES.make(kind, absmax, bits)


def quantize_weight(w: np.ndarray, bits: int, per_channel: bool):
    """Symmetric weights: rows are output channels. -> (int8/int16 codes, scale per row)."""
    top = (1 << (bits - 1)) - 1
    amax = np.abs(w).max(axis=1) if per_channel else np.full(w.shape[0], np.abs(w).max())
    scale = np.maximum(amax, 1e-12) / top
    q = np.clip(np.rint(w / scale[:, None]), -top, top).astype(np.int8 if bits <= 8 else np.int16)
    return q, scale


def multipliers(real) -> tuple[np.ndarray, np.ndarray]:
    """Dyadic multipliers ``(M0, n)`` of each real multiplier (scalar or per column)."""
    m = [dyadic_multiplier(float(r)) for r in np.atleast_1d(real)]
    return np.array([a for a, _ in m], np.int64), np.array([b for _, b in m], np.int64)


def outlier_methods(cfg: SimConfig) -> frozenset[str]:
    """The outlier methods ``cfg.outliers`` enables (``"none"``: the empty set)."""
    return OUTLIERS.parse(cfg.outliers)


def operand_bits(cfg: SimConfig, site: str) -> int:
    """The width of the GEMM operand at calibration site ``site``: the first ``cfg.site_bits`` pattern
    (``fnmatch``, e.g. ``"blocks.*.ln1_out"``) that matches it, else ``cfg.act_bits``."""
    from fnmatch import fnmatchcase

    return next((b for p, b in cfg.site_bits.items() if fnmatchcase(site, p)), cfg.act_bits)


def operand_scale(calib: Calibration, name: str, consumers, cfg: SimConfig, smooth: bool = True):
    """Scale of a GEMM operand and its per-channel smoothing factors (ones unless ``outliers`` has smooth).

    SmoothQuant: ``f_c = cmax_c**a / wmax_c**(1-a)`` over the calibrated channel maxima of the
    operand and the consuming weights' input columns; the operand is divided by ``f`` (folded into
    the integer constants that produce it), the weights' columns multiplied by ``f``.
    """
    if "smooth" not in outlier_methods(cfg) or not smooth:
        return act_scale(calib.absmax(name, cfg.calib_percentile), cfg.act_bits, cfg.act_scales), np.ones(1)
    cmax = np.maximum(calib.channel_max(name), 1e-6).astype(np.float64)
    wmax = np.maximum(np.max([np.abs(w).max(0) for w in consumers], axis=0), 1e-6)
    f = cmax**cfg.smooth_alpha / wmax ** (1 - cfg.smooth_alpha)
    return act_scale(float((cmax / f).max()), cfg.act_bits, cfg.act_scales), f


def requantized_operand_scale(calib: Calibration, name: str, consumers, cfg: SimConfig):
    """Scale of a GEMM operand made by a requantizer (context, activation output): never smoothed
    (measured to hurt there); per-token mode sizes the nominal scale for the median token (larger
    tokens shift at run time)."""
    if "per_token" in outlier_methods(cfg):
        return act_scale(calib.token_max(name), cfg.act_bits, cfg.act_scales), np.ones(1)
    return operand_scale(calib, name, consumers, cfg, smooth=False)


def _record(trace, prefix: str, **arrays) -> None:
    if trace is not None:
        trace.update({prefix + k: v for k, v in arrays.items() if v is not None})


# --- calibration sites ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Site:
    """One tensor the integer path quantizes, observed in the FP32 model: the input (``side="in"``)
    or output of the module at dotted path ``module`` (relative to its scope); ``residual``: a
    residual-stream tensor (covered by the calibration's outlier report)."""

    module: str
    side: str = "out"
    residual: bool = False


class Names:
    """The full calibration names of one scope instance: ``names.ln1_out == "blocks.3.ln1_out"``."""

    def __init__(self, prefix: str, sites: dict):
        self._prefix, self._sites = prefix, sites

    def __getattr__(self, key: str) -> str:
        sites = self.__dict__.get("_sites", {})
        if key not in sites:
            raise AttributeError(f"no calibration site {key!r} declared (declared: {', '.join(sites)})")
        return self._prefix + key


class Scope:
    """Named sites under a prefix; a prefix with ``{i}`` repeats over the model's module list ``repeat``."""

    def __init__(self, prefix: str, module_prefix: str = "", repeat: str | None = None, **sites: Site):
        self.prefix, self.module_prefix, self.repeat, self.sites = prefix, module_prefix, repeat, sites

    def __call__(self, i: int | None = None) -> Names:
        return Names(self.prefix.format(i=i) + ".", self.sites)

    def instances(self, model) -> range | list:
        return range(len(getattr(model, self.repeat))) if self.repeat else [None]


class ModelSites:
    """A model's calibration sites, declared once (the model module's ``SITES``).

    :func:`intsim.calibration.calibrate` hooks exactly these tensors (in declaration order, per
    scope instance), and the builder reads their statistics through the same names.
    """

    def __init__(self, **scopes: Scope):
        self.scopes = scopes

    def __getattr__(self, key: str) -> Scope:
        scopes = self.__dict__.get("scopes", {})
        if key not in scopes:
            raise AttributeError(key)
        return scopes[key]

    def hooks(self, model) -> list[tuple[object, str, str]]:
        """``(module, full name, side)`` of every site of ``model`` (an ``nn.Module``)."""
        out = []
        for scope in self.scopes.values():
            for i in scope.instances(model):
                names = scope(i)
                base = scope.module_prefix.format(i=i)
                for key, site in scope.sites.items():
                    path = f"{base}.{site.module}" if base else site.module
                    out.append((model.get_submodule(path), getattr(names, key), site.side))
        return out

    def residual(self, model) -> tuple[str, ...]:
        """Full names of the residual-stream sites (the outlier report's tensors)."""
        return tuple(getattr(scope(i), key) for scope in self.scopes.values() for i in scope.instances(model)
                     for key, site in scope.sites.items() if site.residual)


# --- linear layers -------------------------------------------------------------------------------------

class IntLinear:
    """``y = x @ W^T + b`` on int8 codes: int32 accumulator, then one requantization per column.

    ``out_scale`` (scalar or per column) and ``out_bits`` are the consumer's format; ``col_factor``
    the smoothing factors of the operand (``W`` columns are multiplied by them), or the operand's
    :class:`~intsim.outliers.OperandTransform` (``W' = repeat(W g, T)``, ``b' = b + W z``, split
    channels' codes read ``T`` times: K grows); ``b=None``: no bias.
    At run time ``residual`` (codes at the output scale) is added after the requantization
    (saturating), and ``row_shift`` (per token, from a per-token operand) shifts each row's
    requantization (see :func:`intsim.fixedpoint.requantize_channels`).
    """

    def __init__(self, w, b, in_scale, cfg: SimConfig, out_scale, out_bits: int, col_factor=None):
        w = np.asarray(w, np.float64)
        self.expand, self.in_bits = None, cfg.act_bits
        if isinstance(col_factor, OperandTransform):         # the outlier toolbox's fold (intsim.outliers)
            b, w = col_factor.bias(w, b), col_factor.weights(w)
            self.in_bits = col_factor.bits
            self.expand = col_factor.expand if col_factor.splits else None
        elif col_factor is not None and col_factor.size > 1:   # smoothing: x / f in the operand, W * f here
            w = w * col_factor[None, :]
        q, sw = quantize_weight(w, cfg.weight_bits, WEIGHT_SCALES.impl(cfg.weight_scales))
        self.wt = Constant(q.T)     # (out, in) -> (in, out): the GEMM's right operand, converted once per backend
        self.acc_scale = in_scale * sw
        b = np.zeros(w.shape[0]) if b is None else np.asarray(b, np.float64)
        self.bias = np.rint(b / self.acc_scale).astype(np.int64)
        if np.abs(self.bias).max() >= 2**31:
            raise GQAError("bias", "does not fit int32 at the accumulator's scale", "use coarser activation scales")
        self.m0, self.n = multipliers(self.acc_scale / np.broadcast_to(out_scale, self.acc_scale.shape))
        self.out_bits, self.backend = out_bits, cfg.gemm_backend

    def __call__(self, x8, stats=None, name="linear", residual=None, row_shift=None):
        lead = x8.shape[:-1]
        if self.expand is not None:                                   # split channels: (..., C) -> (..., K)
            x8 = self.expand(x8)
        x2 = x8.reshape(-1, x8.shape[-1])                            # (..., in) -> (M, in)
        # (M, out) int32 values; a float backend's exact float copy is read as is (no conversion pass)
        acc = int_gemm(x2, self.wt, self.backend, float_out=True)
        y, sat, ovf, peak = requantize_channels(acc, self.bias, self.m0, self.n, self.out_bits,
                                                residual=None if residual is None else residual.reshape(acc.shape),
                                                row_shift=row_shift)
        if stats is not None:
            stats.mac(name, acc.size * self.wt.shape[0], a_bits=self.in_bits)
            stats.count("mul", f"{name}.requant", acc.size, a_bits=32, b_bits=32)
            stats.count("add", f"{name}.bias", acc.size, bits=32)
            if residual is not None:
                stats.count("add", f"{name}.residual", acc.size, bits=self.out_bits)
            stats.accumulator(f"{name}.acc", peak, 32, ovf)
            stats.saturated(f"{name}.out", sat)
        return y.reshape(*lead, -1), acc    # (M, out) -> (..., out); acc: the int32 values (maybe their exact float copy)


class OperandRequant:
    """An int32 (or int64) register -> the int8 operand of the next GEMM: static per-tensor
    requantization by ``real_multiplier``, or (``per_token``) that followed by a per-token
    power-of-two shift (:func:`intsim.fixedpoint.requantize_dynamic`), whose shifts ``t`` the next
    GEMM's requantizer takes as ``row_shift``."""

    def __init__(self, real_multiplier: float, bits: int, per_token: bool):
        self.m0, self.n = multipliers(real_multiplier)
        self.bits, self.per_token = bits, per_token

    def __call__(self, acc, stats=None, name="operand"):
        """-> ``(codes, row shifts or None, saturations)``."""
        if self.per_token:
            y, t = requantize_dynamic(acc, self.m0, self.n, self.bits)
            if stats is not None:
                stats.count("compare", name + ".token_max", acc.size, bits=32)
                stats.count("shift", name + ".token_shift", acc.size, bits=32)
            return y, t, 0
        y, sat, _, _ = requantize_channels(acc, None, self.m0, self.n, self.bits)
        return y, None, sat


# --- norm sites ----------------------------------------------------------------------------------------

class NormSite:
    """One norm with its outputs: a GEMM copy (int8 at the calibrated scale of ``site``, maybe
    smoothed against ``consumers``, maybe per-token) and/or a residual copy (``residual_bits`` at
    ``res_scale``). ``kernel`` is any norm kernel with :class:`intsim.layernorm.IntLayerNorm`'s
    interface (:data:`intsim.registry.NORMS`); ``bias=None``: a norm without beta."""

    def __init__(self, weight, bias, kernel, calib: Calibration, site: str, cfg: SimConfig,
                 res_scale: float | None, consumers=(), percentile=100.0):
        gamma = np.asarray(weight, np.float64)
        beta = np.zeros_like(gamma) if bias is None else np.asarray(bias, np.float64)
        self.kernel, self.name = kernel, site
        self.factor = None
        self.gemm = None
        methods = outlier_methods(cfg)
        if consumers:
            bits = operand_bits(cfg, site)
            folded = methods & NORM_TRANSFORMS
            t = norm_transform(folded, calib, site, gamma, consumers, cfg, bits)
            self.gemm_scale = act_scale(static_range(calib, site, cfg, bits, t if folded else None), bits,
                                        cfg.act_scales)
            if folded or bits != cfg.act_bits:
                self.factor = t
            dynamic = "per_token" in methods
            if dynamic:
                # nominal scale for a typical token: the static range over the median token's range
                # (unsmoothed statistics; the per-row shift absorbs any error in this estimate)
                k = math.floor(math.log2(max(calib.absmax(site, percentile) / calib.token_max(site), 1.0)))
                self.gemm_scale *= 2.0**-k
            self.gemm = LNOutput(gamma, beta - t.shift, self.gemm_scale * t.divisor, bits, dynamic=dynamic)
        self.res_scale = res_scale
        self.res = None if res_scale is None else LNOutput(gamma, beta, res_scale, cfg.residual_bits)
        if self.gemm is None and self.res is None:
            raise GQAError(site, "a norm site needs an output", "give consumers (a GEMM copy) or a residual scale")

    def __call__(self, x, stats=None):
        """-> (residual copy or None, GEMM copy or None, per-token row shifts or None)."""
        if self.gemm is None:
            return self.kernel(x, self.res, stats=stats, name=self.name), None, None
        if self.res is None:
            x8, x_res = self.kernel(x, self.gemm, stats=stats, name=self.name), None
        else:
            x8, x_res = self.kernel(x, self.gemm, self.res, stats=stats, name=self.name)
        if self.gemm.dynamic:
            x8, t = x8
            return x_res, x8, t
        return x_res, x8, None


LayerNormSite = NormSite    # the name of the BERT encoder's first version


# --- attention -----------------------------------------------------------------------------------------

class IntAttention:
    """Multi-head attention on an int8 operand, its output projection and the residual add.

    ``q = x Wq^T``, ``k``, ``v`` in one GEMM (int8 out, per-column scales of the sites ``names.q``,
    ``.k``, ``.v``); per head ``scores = q k^T`` (int32), probabilities by the softmax kernel with
    the mask policy (key padding ``key_mask``; ``causal``), ``ctx = p v`` (uint8 x int8), requantized
    to the operand ``names.ctx``, then ``out(ctx) + residual``. Grouped KV heads: ``kv_heads``
    divides ``heads`` and query head ``h`` reads K/V head ``h // (heads // kv_heads)``.
    ``weights``: ``(wq, bq, wk, bk, wv, bv, wo, bo)`` (FP32 arrays; biases may be None).
    """

    def __init__(self, weights, heads: int, kv_heads: int, in_scale: float, in_factor, names: Names,
                 calib: Calibration, cfg: SimConfig, out_scale: float, softmax, causal: bool = False):
        wq, bq, wk, bk, wv, bv, wo, bo = weights
        if heads % kv_heads:
            raise GQAError("kv_heads", f"{kv_heads} does not divide {heads} query heads", "a divisor of heads")
        pc = cfg.calib_percentile
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, wq.shape[0] // heads
        self.causal, self.backend = causal, cfg.gemm_backend
        self.s_q, self.s_k, self.s_v = (act_scale(calib.absmax(n, pc), cfg.act_bits, cfg.act_scales)
                                        for n in (names.q, names.k, names.v))
        zeros = [np.zeros(w.shape[0]) if b is None else b for w, b in ((wq, bq), (wk, bk), (wv, bv))]
        out_s = np.concatenate([np.full(wq.shape[0], self.s_q), np.full(wk.shape[0], self.s_k),
                                np.full(wv.shape[0], self.s_v)])
        self.qkv = IntLinear(np.concatenate([wq, wk, wv]), np.concatenate(zeros), in_scale, cfg, out_s,
                             cfg.act_bits, col_factor=in_factor)
        self.softmax = SOFTMAXES.make(softmax, cfg, self.s_q * self.s_k / math.sqrt(self.head_dim))
        self.s_ctx, f_ctx = requantized_operand_scale(calib, names.ctx, [wo], cfg)
        self.ctx = OperandRequant(self.s_v * 2.0**-PROB_BITS / (self.s_ctx * f_ctx), cfg.act_bits,
                                  "per_token" in outlier_methods(cfg))
        self.out = IntLinear(wo, bo, self.s_ctx, cfg, out_scale, cfg.residual_bits, col_factor=f_ctx)

    def __call__(self, x8, t8, x_res, key_mask, stats=None, prefix="", trace=None):
        """int8 operand (B, T, C) with its row shifts, the residual (B, T, C) -> the sum (B, T, C)."""
        B, T, _ = x8.shape
        H, G, d = self.heads, self.kv_heads, self.head_dim
        qkv, _ = self.qkv(x8, stats, prefix + "qkv", row_shift=t8)                # (B, T, (H + 2G) d) int8
        q = qkv[..., :H * d].reshape(B, T, H, d).transpose(0, 2, 1, 3)            # (B, H, T, d)
        k = qkv[..., H * d:(H + G) * d].reshape(B, T, G, d).transpose(0, 2, 1, 3)  # (B, G, T, d)
        v = qkv[..., (H + G) * d:].reshape(B, T, G, d).transpose(0, 2, 1, 3)      # (B, G, T, d)
        if G != H:   # grouped KV: each K/V head serves H // G consecutive query heads
            k, v = np.repeat(k, H // G, axis=1), np.repeat(v, H // G, axis=1)     # (B, G, T, d) -> (B, H, T, d)
        kt = np.ascontiguousarray(k.transpose(0, 1, 3, 2))                        # (B, H, d, T)
        scores = int_gemm(np.ascontiguousarray(q), kt, self.backend)              # (B, H, T, T) int32
        probs = self.softmax(scores, key_mask, stats, prefix + "softmax", causal=self.causal)  # uint8
        ctx_acc = int_gemm(probs, np.ascontiguousarray(v), self.backend)          # (B, H, T, d) int32
        ctx_acc = np.ascontiguousarray(ctx_acc.transpose(0, 2, 1, 3)).reshape(B, T, H * d)  # (B, T, H d)
        ctx, t_ctx, sat = self.ctx(ctx_acc, stats, prefix + "context")
        s, _ = self.out(ctx, stats, prefix + "attn_out", residual=x_res, row_shift=t_ctx)   # (B, T, C)
        if stats is not None:
            stats.mac(prefix + "scores", B * H * T * T * d)
            stats.accumulator(prefix + "scores.acc", int(np.abs(scores).max()), 32)
            stats.mac(prefix + "context", B * H * T * T * d, a_bits=PROB_BITS)
            stats.accumulator(prefix + "context.acc", int(np.abs(ctx_acc).max()), 32)
            stats.count("mul", prefix + "context.requant", ctx_acc.size, a_bits=32, b_bits=32)
            stats.saturated(prefix + "context.out", sat)
        _record(trace, prefix, qkv=qkv, scores=scores, probs=probs, ctx_acc=ctx_acc, ctx=ctx)
        return s


# --- activation sites ----------------------------------------------------------------------------------

class ActivationSite:
    """The FFN's non-linearity between its in- and out-projections, on integers:

    - plain (BERT): ``a = act(requant(x W_in^T + b))`` -- the in-projection requantizes straight
      to the kernel's own input format (``kernel.in_bits`` at ``kernel.in_scale``);
    - gated (``w_up`` given; SwiGLU's ``silu(gate) * up``): ``a = act(gate) * u`` with
      ``u = requant(x W_up^T)`` int8 at the calibrated scale of ``up_site``: an int64 product of the
      kernel's int32 code and ``u`` at scale ``kernel.out_scale * s_u`` (a declared 32-bit register).

    Then ``a`` is requantized to the out-projection's int8 operand at the calibrated scale of
    ``out_site`` (:class:`OperandRequant`, per token if configured). ``kernel``: any activation
    kernel (:data:`intsim.registry.ACTIVATIONS`); ``name`` names its operations and trace entries
    (``{name}_in``, ``{name}_out``, ``{name}_q``).
    """

    def __init__(self, w_in, b_in, in_scale: float, in_factor, kernel, calib: Calibration, out_site: str,
                 consumers, cfg: SimConfig, name: str = "gelu", w_up=None, b_up=None, up_site: str | None = None,
                 in_proj: str = "ffn_in", up_proj: str = "ffn_up"):
        self.kernel, self.name, self.in_proj, self.up_proj = kernel, name, in_proj, up_proj
        self.proj = IntLinear(w_in, b_in, in_scale, cfg, kernel.in_scale, kernel.in_bits, col_factor=in_factor)
        self.up = None
        scale = kernel.out_scale
        if w_up is not None:
            s_u = act_scale(calib.absmax(up_site, cfg.calib_percentile), cfg.act_bits, cfg.act_scales)
            self.up = IntLinear(w_up, b_up, in_scale, cfg, s_u, cfg.act_bits, col_factor=in_factor)
            scale = scale * s_u
        self.out_scale, f = requantized_operand_scale(calib, out_site, consumers, cfg)
        self.factor = f
        self.requant = OperandRequant(scale / (self.out_scale * f), cfg.act_bits, "per_token" in outlier_methods(cfg))

    def __call__(self, x8, t8, stats=None, prefix="", trace=None):
        """int8 operand (B, T, C) and its row shifts -> the out-projection's operand (B, T, F) and row shifts."""
        p = prefix + self.name
        a_in, _ = self.proj(x8, stats, prefix + self.in_proj, row_shift=t8)       # (B, T, F) kernel input codes
        a = self.kernel(a_in, stats, p)                                           # (B, T, F) int32
        u = None
        if self.up is not None:
            u, _ = self.up(x8, stats, prefix + self.up_proj, row_shift=t8)         # (B, T, F) int8
            a = a.astype(np.int64) * u                                            # the gate: int64 product
            if stats is not None:
                stats.count("mul", p + ".gate", a.size, a_bits=32, b_bits=8)
        a_q, t_a, sat = self.requant(a, stats, p)
        if stats is not None:
            stats.count("mul", p + ".requant", a.size, a_bits=32, b_bits=32)
            stats.accumulator(p + ".out", int(np.abs(a).max()) if a.size else 0, 32)
            stats.saturated(p + ".requant", sat)
        _record(trace, prefix, **{f"{self.name}_in": a_in, f"{self.name}_up": u, f"{self.name}_out": a,
                                  f"{self.name}_q": a_q})
        return a_q, t_a


# --- embeddings ----------------------------------------------------------------------------------------

class IntEmbedding:
    """The sum of embedding tables, each int8 (``bits``) with per-row (or per-table) scales, at one
    aligned scale ``scale = min_row_scale / 256`` by integer multipliers ``round(s_row / scale)``
    (every multiplier >= 256: relative error < 2**-9). ``tables``: FP32 (rows, C) arrays."""

    def __init__(self, tables, bits: int, per_row: bool):
        self.bits = bits
        quantized = [quantize_weight(np.asarray(t, np.float64), bits, per_row) for t in tables]
        self.scale = min(s.min() for _, s in quantized) / 256
        self.codes = [q for q, _ in quantized]
        self.mults = [np.rint(s / self.scale).astype(np.int64) for _, s in quantized]

    def __call__(self, *indices, stats=None, name="embeddings"):
        """One index array per table (broadcasting, e.g. ids (B, T) and positions (T,)) -> int32 (..., C)."""
        x = sum(q[i].astype(np.int64) * m[i][..., None] for q, m, i in zip(self.codes, self.mults, indices))
        if np.abs(x).max() >= 2**31:
            raise GQAError("embed_bits", "the aligned embedding sum exceeds int32", "use fewer embedding bits")
        x = x.astype(np.int32)
        if stats is not None:
            n = x.size
            stats.count("mul", f"{name}.align", len(self.codes) * n, a_bits=self.bits, b_bits=16)
            if len(self.codes) > 1:
                stats.count("add", f"{name}.sum", (len(self.codes) - 1) * n, bits=32)
            stats.accumulator(f"{name}.sum", int(np.abs(x).max()), 32)
        return x
