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
  dynamic power-of-two scale per token (row shifts ``t``) that the next requantizer subtracts;
  ``token_mantissa`` makes that scale ``mu * 2**(k - m)`` for the requantizer-made operands (the
  activation output and the context; :func:`intsim.fixedpoint.requantize_rows`, a
  :class:`~intsim.fixedpoint.RowScale` the next requantizer multiplies by).
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
from .fixedpoint import (RowScale, dyadic_multiplier, requantize_channels, requantize_dynamic, requantize_rows,
                         rounding_divide_by_pot)
from .fused_attention import fused_attention, supports as supports_fused
from .gemm import Constant, int_gemm, int_gemm_unsigned
from .layernorm import LNOutput
from .outliers import OperandTransform, activation_offset, norm_transform, smoothquant_factors, static_range
from .registry import ACT_SCALES, OUTLIERS, SOFTMAXES, WEIGHT_SCALES

NORM_TRANSFORMS = frozenset({"smooth", "gamma_migration", "os_shift", "os_scale", "split"})  # fold into a norm



# --- scales and integer constants --------------------------------------------------------------------

def act_scale(absmax: float, bits: int, kind: str = "dyadic") -> float:
    """The real scale of one code of a ``bits``-bit activation of range ``absmax`` (ACT_SCALES)."""
    return ACT_SCALES.make(kind, absmax, bits)


def quantize_weight(w: np.ndarray, bits: int, scales=True):
    """Symmetric weights: rows are output channels. -> (int8/int16 codes, scale per row).

    ``scales``: a weight scale of the registry (``WEIGHT_SCALES.impl(name)``: each row's real
    range from ``(w, bits)``), or ``True`` / ``False`` for its ``per_channel`` / ``per_tensor``."""
    top = (1 << (bits - 1)) - 1
    if not callable(scales):
        scales = WEIGHT_SCALES.impl("per_channel" if scales else "per_tensor")
    amax = scales(w, bits)
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
    cmax, f = smooth_factors(calib, name, consumers, cfg.smooth_alpha)
    return act_scale(float((cmax / f).max()), cfg.act_bits, cfg.act_scales), f


def smooth_factors(calib: Calibration, name: str, consumers, alpha: float):
    """SmoothQuant's ``f_c = cmax_c**alpha / wmax_c**(1-alpha)``: ``(cmax, f)``, the operand's calibrated
    channel maxima and the factors (``wmax``: the consuming weights' input-column maxima)."""
    cmax = np.maximum(calib.channel_max(name), 1e-6).astype(np.float64)
    wmax = np.maximum(np.max([np.abs(np.asarray(w)).max(0) for w in consumers], axis=0), 1e-6)
    return cmax, smoothquant_factors(cmax, wmax, alpha)


def smoothed_requantized_scale(calib: Calibration, name: str, consumers, cfg: SimConfig, alpha: float):
    """Scale and per-channel factors of a requantizer-made GEMM operand smoothed at ``alpha``
    (``cfg.ffn_smooth_alpha``: the activation output of a gated FFN, SmolLM2's down operand).

    SmoothQuant's ``f_c = cmax_c**a / wmax_c**(1-a)`` (the operand's calibrated channel maxima,
    the consumers' input-column maxima); the requantizer divides column ``c`` by ``f_c`` (one
    dyadic multiplier per column, no new operation) and the consumer's weight columns are multiplied
    by ``f_c`` (:func:`fold_columns`). The static range is ``max_c cmax_c / f_c``; per-token mode
    divides it by the power of two ``2**floor(log2(absmax / median token max))`` of the unsmoothed
    tensor (the nominal scale of a typical token, as :class:`NormSite` does; larger tokens shift)."""
    cmax, f = smooth_factors(calib, name, consumers, alpha)
    s = act_scale(float((cmax / f).max()), cfg.act_bits, cfg.act_scales)
    if "per_token" in outlier_methods(cfg):
        s *= 2.0**-math.floor(math.log2(max(calib.absmax(name) / calib.token_max(name), 1.0)))
    return s, f


def requantized_operand_scale(calib: Calibration, name: str, consumers, cfg: SimConfig):
    """Scale of a GEMM operand made by a requantizer (context, activation output): never smoothed
    (measured to hurt there); per-token mode sizes the nominal scale for the median token (larger
    tokens shift at run time)."""
    if "per_token" in outlier_methods(cfg):
        return act_scale(calib.token_max(name), cfg.act_bits, cfg.act_scales), np.ones(1)
    return operand_scale(calib, name, consumers, cfg, smooth=False)


def token_mantissa(cfg: SimConfig) -> int | None:
    """The per-token row scale's mantissa bits of a requantized operand (``outliers`` ``token_mantissa``:
    ``cfg.token_mantissa_bits``), or None (``per_token``'s power-of-two row shift)."""
    return cfg.token_mantissa_bits if "token_mantissa" in outlier_methods(cfg) else None


def _record(trace, prefix: str, **arrays) -> None:
    """Integer arrays into ``trace`` under ``prefix``; a :class:`~intsim.fixedpoint.RowScale` under
    ``..._shift`` as its exponents there and its mantissas under ``..._mantissa``."""
    if trace is not None:
        for k, v in arrays.items():
            if isinstance(v, RowScale):
                trace[prefix + k.removesuffix("_shift") + "_mantissa"] = v.mantissa
                v = v.shift
            if v is not None:
                trace[prefix + k] = v


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

def fold_columns(w, b, col_factor):
    """The consumer's side of an operand's outlier handling: ``(W, b)`` with the operand's
    :class:`~intsim.outliers.OperandTransform` folded in (``W' = repeat(W g, T)``, ``b' = b + W z``),
    or SmoothQuant's column factors (``W * f``); unchanged without either."""
    if isinstance(col_factor, OperandTransform):
        return col_factor.weights(w), col_factor.bias(w, b)
    if col_factor is not None and col_factor.size > 1:   # smoothing: x / f in the operand, W * f here
        return w * col_factor[None, :], b
    return w, b


def _int_linear(part, *args, **kwargs):
    """The default projection factory of the composite layers: an :class:`IntLinear` whatever the part."""
    return IntLinear(*args, **kwargs)


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
        self.in_scale, self.weight_bits, self.col_factor = in_scale, cfg.weight_bits, col_factor
        self._b_given = b
        w, self._b_folded = fold_columns(w, b, col_factor)
        if isinstance(col_factor, OperandTransform):
            self.in_bits = col_factor.bits
            self.expand = col_factor.expand if col_factor.splits else None
        q, self.weight_scale = quantize_weight(w, cfg.weight_bits, WEIGHT_SCALES.impl(cfg.weight_scales))
        self.acc_scale = in_scale * self.weight_scale
        # the folded real weights, kept only for a rounding that re-chooses the codes (intsim.gptq)
        self.folded_weights = w if cfg.weight_rounding != "nearest" else None
        self.observer = None        # observer(x2, row_shift) of every operand (intsim.gptq's Hessians)
        self.set_codes(q)
        self.m0, self.n = multipliers(self.acc_scale / np.broadcast_to(out_scale, self.acc_scale.shape))
        self.out_bits, self.backend = out_bits, cfg.gemm_backend

    def set_codes(self, q) -> None:
        """Weight codes ``q`` (out, in) at the fixed per-row scales: the GEMM operand and the integer bias
        (a zero-point shift folds with these codes, :meth:`~intsim.outliers.OperandTransform.bias_quantized`)."""
        q = np.asarray(q)
        b = self._b_folded
        if isinstance(self.col_factor, OperandTransform) and self.col_factor.quantized_fold:
            b = self.col_factor.bias_quantized(q.astype(np.float64) * self.weight_scale[:, None], self._b_given)
        self.wt = Constant(q.T.astype(np.int8 if self.weight_bits <= 8 else np.int16))   # (out, in) -> (in, out)
        b = np.zeros(q.shape[0]) if b is None else np.asarray(b, np.float64)
        self.bias = np.rint(b / self.acc_scale).astype(np.int64)
        if np.abs(self.bias).max() >= 2**31:
            raise GQAError("bias", "does not fit int32 at the accumulator's scale", "use coarser activation scales")

    def operand_shift(self) -> np.ndarray | float:
        """What the weights multiply beyond the operand's real value (in K): a zero-point shift folded with
        the codes (``repeat(z / (g T), T)``, :meth:`set_codes`), else 0."""
        f = self.col_factor
        if isinstance(f, OperandTransform) and f.quantized_fold:
            return np.repeat(f.shift / f.divisor, f.repeats)
        return 0.0

    def _gemm(self, x8, row_shift=None):
        if self.expand is not None:                                   # split channels: (..., C) -> (..., K)
            x8 = self.expand(x8)
        x2 = x8.reshape(-1, x8.shape[-1])                            # (..., in) -> (M, in)
        if self.observer is not None:
            self.observer(x2, row_shift)
        # (M, out) int32 values; a float backend's exact float copy is read as is (no conversion pass)
        return int_gemm(x2, self.wt, self.backend, float_out=True)

    def accumulator(self, x8, stats=None, name="linear", row_shift=None):
        """The GEMM alone: the int32 ``x @ W^T`` (..., out), no bias and no requantization (for a
        consumer that requantizes it its own way, e.g. per token; ``row_shift``: the operand's row
        scales, which only an observer reads)."""
        acc = self._gemm(x8, row_shift)
        if stats is not None:
            stats.mac(name, acc.size * self.wt.shape[0], a_bits=self.in_bits)
            stats.accumulator(f"{name}.acc", int(np.abs(acc).max(initial=0)), 32)
        return acc.reshape(*x8.shape[:-1], -1)                      # (M, out) -> (..., out)

    def __call__(self, x8, stats=None, name="linear", residual=None, row_shift=None):
        acc = self._gemm(x8, row_shift)
        y, sat, ovf, peak = requantize_channels(acc, self.bias, self.m0, self.n, self.out_bits,
                                                residual=None if residual is None else residual.reshape(acc.shape),
                                                row_shift=row_shift)
        if stats is not None:
            stats.mac(name, acc.size * self.wt.shape[0], a_bits=self.in_bits)
            stats.count("mul", f"{name}.requant", acc.size, a_bits=32, b_bits=32)
            count_row_scale(stats, name, row_shift, acc.size)
            stats.count("add", f"{name}.bias", acc.size, bits=32)
            if residual is not None:
                stats.count("add", f"{name}.residual", acc.size, bits=self.out_bits)
            stats.accumulator(f"{name}.acc", peak, 32, ovf)
            stats.saturated(f"{name}.out", sat)
        return y.reshape(*x8.shape[:-1], -1), acc    # (M, out) -> (..., out); acc: the int32 values (maybe their exact float copy)


def count_row_scale(stats, name: str, row_shift, n: int) -> None:
    """The consumer's extra multiply per output of a :class:`~intsim.fixedpoint.RowScale` operand
    (``x * mu_r``, 32 x (m+1) bits; :func:`intsim.fixedpoint.requantize_channels`)."""
    if stats is not None and isinstance(row_shift, RowScale):
        stats.count("mul", f"{name}.row_scale", n, a_bits=32, b_bits=row_shift.bits + 1)


class OperandRequant:
    """An int32 (or int64) register -> the int8 operand of the next GEMM: static per-tensor
    requantization by ``real_multiplier``, or (``per_token``) that followed by a per-token
    power-of-two shift (:func:`intsim.fixedpoint.requantize_dynamic`), whose shifts ``t`` the next
    GEMM's requantizer takes as ``row_shift``; or (``per_token`` with ``mantissa_bits``, outliers
    ``token_mantissa``) one requantization per element by the row's own multiplier, the row scale
    ``mu * 2**(k - m)`` (:func:`intsim.fixedpoint.requantize_rows`; a
    :class:`~intsim.fixedpoint.RowScale` as ``row_shift``).

    ``unsigned`` (``act_offset``): the register is never negative (the caller added its offset) and
    the codes are uint8, ``[0, 2**bits - 1]``: the same kernels at ``bits + 1`` signed bits, whose
    negative half a non-negative register never reaches (both roundings keep ``v >= 0``), so the
    row shift is the smallest with ``max v >> t <= 2**bits - 1``."""

    def __init__(self, real_multiplier: float, bits: int, per_token: bool, unsigned: bool = False,
                 mantissa_bits: int | None = None):
        self.m0, self.n = multipliers(real_multiplier)
        self.bits, self.per_token, self.unsigned = bits, per_token, unsigned
        self.mantissa_bits = mantissa_bits if per_token else None

    def __call__(self, acc, stats=None, name="operand", offset: int = 0):
        """-> ``(codes, row shifts (or a RowScale) or None, saturations)`` of the register ``acc + offset``."""
        bits = self.bits + self.unsigned
        if self.mantissa_bits is not None:      # the offset and the unsigned codes in the kernel's one pass
            y, g, sat = requantize_rows(acc, self.m0, self.n, bits, self.mantissa_bits, offset=offset,
                                        unsigned=self.unsigned)
            if stats is not None:
                rows = acc.size // max(acc.shape[-1], 1)
                m = self.mantissa_bits
                stats.count("compare", name + ".token_max", acc.size, bits=32)
                stats.count("mul", name + ".row_peak", rows, a_bits=32, b_bits=32)        # the peak's requantization
                stats.count("shift", name + ".row_lod", rows, bits=32)                   # leading one of the peak
                stats.count("compare", name + ".row_pick", rows << m, bits=bits + m + 1)  # P against hi * mu
                stats.count("mul", name + ".row_mult", rows * self.m0.size, a_bits=32, b_bits=32)  # SRDHM(M0, R)
            return y, g, sat
        if offset:
            acc = np.asarray(acc).astype(np.int64) + offset
        if self.per_token:
            y, t = requantize_dynamic(acc, self.m0, self.n, bits)
            if stats is not None:
                stats.count("compare", name + ".token_max", acc.size, bits=32)
                stats.count("shift", name + ".token_shift", acc.size, bits=32)
            return self._codes(y), t, 0
        y, sat, _, _ = requantize_channels(acc, None, self.m0, self.n, bits)
        return self._codes(y), None, sat

    def _codes(self, y):
        # unsigned: a register below zero (not reached when the offset bounds the unit) saturates at 0
        return np.maximum(y, 0).astype(np.uint8) if self.unsigned else y


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
            mantissa = cfg.token_mantissa_bits if dynamic and "norm_mantissa" in methods else None
            self.gemm = LNOutput(gamma, beta - t.shift, self.gemm_scale * t.divisor, bits, dynamic=dynamic,
                                 mantissa_bits=mantissa)
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

class IntKVCache:
    """The integer KV cache of a decoder: per layer, int8 keys (after RoPE) and values of every
    position decoded so far, (B, kv_heads, S, head_dim), with their real scales ``(s_k, s_v)``.

    The scales are the layer's static calibrated ones (the QKV requantizer removes any per-token
    operand shift), so a cached code means the same real value at every later step, and a step's
    attention over the cache is the same integer computation as over a full recomputation.
    """

    def __init__(self, n_layers: int):
        self.k: list = [None] * n_layers
        self.v: list = [None] * n_layers
        self.scales: list = [None] * n_layers

    @property
    def length(self) -> int:
        """Positions held (the next token's position)."""
        return 0 if self.k[0] is None else self.k[0].shape[2]

    def update(self, layer: int, k, v, scales):
        """Append this step's codes (B, kv_heads, T, head_dim); return all of them (B, kv_heads, S, head_dim)."""
        if self.k[layer] is not None:
            if self.scales[layer] != scales:
                raise GQAError("cache", f"layer {layer} holds codes at scales {self.scales[layer]}, not {scales}",
                               "use one cache per integer model (model.new_cache())")
            k = np.concatenate((self.k[layer], k), axis=2)
            v = np.concatenate((self.v[layer], v), axis=2)
        self.k[layer], self.v[layer], self.scales[layer] = k, v, scales
        return k, v

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.k + self.v if a is not None)


class IntAttention:
    """Multi-head attention on an int8 operand, its output projection and the residual add.

    ``q = x Wq^T``, ``k``, ``v`` in one GEMM (int8 out, per-column scales of the sites ``names.q``,
    ``.k``, ``.v``); per head ``scores = q k^T`` (int32), probabilities by the softmax kernel with
    the mask policy (key padding ``key_mask``; ``causal``), ``ctx = p v`` (``prob_bits``-bit unsigned x int8), requantized
    to the operand ``names.ctx``, then ``out(ctx) + residual``. Grouped KV heads: ``kv_heads``
    divides ``heads`` and query head ``h`` reads K/V head ``h // (heads // kv_heads)``.
    ``weights``: ``(wq, bq, wk, bk, wv, bv, wo, bo)`` (FP32 arrays; biases may be None).

    Rotary position embeddings (``rope``: a factory ``rope(in_scale, out_scale, bits) -> kernel``,
    ``kernel(x, positions, stats, name)`` on (B, heads, T, head_dim) codes at absolute positions):
    the GEMM then produces q and k at the scales of the sites ``names.q_pre`` / ``.k_pre`` (before
    RoPE), the kernel rotates them into int8 at the scales of ``names.q`` / ``.k`` (after RoPE).
    A :class:`IntKVCache` (``cache``, this layer's slot ``layer``) keeps k after RoPE and v: the
    step's T queries attend to every cached key (the causal mask places them last).
    ``linear``: the factory of the two projections, ``linear(part, w, b, in_scale, cfg, out_scale,
    out_bits, col_factor=...)`` with ``part`` ``"qkv"`` or ``"out"`` (default: :class:`IntLinear`;
    a decoder's W4A8 mode passes the file's Q4_1 layers).
    """

    def __init__(self, weights, heads: int, kv_heads: int, in_scale: float, in_factor, names: Names,
                 calib: Calibration, cfg: SimConfig, out_scale: float, softmax, causal: bool = False,
                 rope=None, layer: int = 0, linear=None):
        wq, bq, wk, bk, wv, bv, wo, bo = weights
        linear = linear or _int_linear
        if heads % kv_heads:
            raise GQAError("kv_heads", f"{kv_heads} does not divide {heads} query heads", "a divisor of heads")
        pc = cfg.calib_percentile
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, wq.shape[0] // heads
        self.causal, self.backend, self.layer = causal, cfg.gemm_backend, layer

        def scale(site):
            return act_scale(calib.absmax(site, pc), cfg.act_bits, cfg.act_scales)

        # the GEMM's q and k: before RoPE when there is a rotation, else the scores' operands
        s_q, s_k = (scale(names.q_pre), scale(names.k_pre)) if rope is not None else (scale(names.q), scale(names.k))
        self.s_v = scale(names.v)
        zeros = [np.zeros(w.shape[0]) if b is None else b for w, b in ((wq, bq), (wk, bk), (wv, bv))]
        out_s = np.concatenate([np.full(wq.shape[0], s_q), np.full(wk.shape[0], s_k),
                                np.full(wv.shape[0], self.s_v)])
        self.qkv = linear("qkv", np.concatenate([wq, wk, wv]), np.concatenate(zeros), in_scale, cfg, out_s,
                          cfg.act_bits, col_factor=in_factor)
        self.rope_q = self.rope_k = None
        self.s_q, self.s_k = s_q, s_k          # the scores' operands
        if rope is not None:
            self.s_q, self.s_k = scale(names.q), scale(names.k)
            self.rope_q = rope(s_q, self.s_q, cfg.act_bits)
            self.rope_k = rope(s_k, self.s_k, cfg.act_bits)
        self.softmax = SOFTMAXES.make(softmax, cfg, self.s_q * self.s_k / math.sqrt(self.head_dim))
        self.s_ctx, f_ctx = requantized_operand_scale(calib, names.ctx, [wo], cfg)
        self.ctx = OperandRequant(self.s_v * self.softmax.out_scale / (self.s_ctx * f_ctx), cfg.act_bits,
                                  "per_token" in outlier_methods(cfg), mantissa_bits=token_mantissa(cfg))
        self.out = linear("out", wo, bo, self.s_ctx, cfg, out_scale, cfg.residual_bits, col_factor=f_ctx)
        # the fused kernel runs the same integer arithmetic as the three steps, so it needs only an
        # exact float backend's freedom: any backend but an explicitly requested one of the others
        self.fused = cfg.gemm_backend in ("auto", "f32") and supports_fused(self.softmax, self.head_dim)

    def __call__(self, x8, t8, x_res, key_mask, stats=None, prefix="", trace=None, positions=None, cache=None):
        """int8 operand (B, T, C) with its row shifts, the residual (B, T, C) -> the sum (B, T, C).

        ``positions`` (T,): the tokens' absolute positions (RoPE); ``cache``: an :class:`IntKVCache`
        to read earlier keys and values from and append this step's to (``key_mask`` then covers
        every cached position)."""
        B, T, _ = x8.shape
        H, G, d = self.heads, self.kv_heads, self.head_dim
        qkv, _ = self.qkv(x8, stats, prefix + "qkv", row_shift=t8)                # (B, T, (H + 2G) d) int8
        q = qkv[..., :H * d].reshape(B, T, H, d).transpose(0, 2, 1, 3)            # (B, H, T, d)
        k = qkv[..., H * d:(H + G) * d].reshape(B, T, G, d).transpose(0, 2, 1, 3)  # (B, G, T, d)
        v = qkv[..., (H + G) * d:].reshape(B, T, G, d).transpose(0, 2, 1, 3)      # (B, G, T, d)
        if self.rope_q is not None:
            positions = np.arange(T) if positions is None else np.asarray(positions)
            q = self.rope_q(np.ascontiguousarray(q), positions, stats, prefix + "rope_q")   # (B, H, T, d) int8
            k = self.rope_k(np.ascontiguousarray(k), positions, stats, prefix + "rope_k")   # (B, G, T, d) int8
            _record(trace, prefix, q_rope=q, k_rope=k)
        if cache is not None:
            k, v = cache.update(self.layer, k, v, (self.s_k, self.s_v))           # (B, G, S, d): cached + new
        S = k.shape[2]
        if self.fused and trace is None:      # one pass per (b, h), bit-identical (intsim.fused_attention)
            ctx_acc, peaks, score_peak = fused_attention(self.softmax, q, k, v, key_mask, self.causal)
            if stats is not None and peaks.size:
                self.softmax.count(stats, prefix + "softmax", B * H * T, S, peaks)
            scores = probs = None
        else:
            if G != H:   # grouped KV: each K/V head serves H // G consecutive query heads
                k, v = np.repeat(k, H // G, axis=1), np.repeat(v, H // G, axis=1)     # (B, G, S, d) -> (B, H, S, d)
            kt = np.ascontiguousarray(k.transpose(0, 1, 3, 2))                        # (B, H, d, S)
            scores = int_gemm(np.ascontiguousarray(q), kt, self.backend)              # (B, H, T, S) int32
            probs = self.softmax(scores, key_mask, stats, prefix + "softmax", causal=self.causal)  # uint8/16
            ctx_acc = int_gemm_unsigned(probs, np.ascontiguousarray(v), self.softmax.out_bits,
                                        self.backend)                                 # (B, H, T, d) int32
            ctx_acc = np.ascontiguousarray(ctx_acc.transpose(0, 2, 1, 3)).reshape(B, T, H * d)  # (B, T, H d)
            score_peak = int(np.abs(scores).max()) if scores.size else 0
        ctx, t_ctx, sat = self.ctx(ctx_acc, stats, prefix + "context")
        s, _ = self.out(ctx, stats, prefix + "attn_out", residual=x_res, row_shift=t_ctx)   # (B, T, C)
        if stats is not None:
            stats.mac(prefix + "scores", B * H * T * S * d)
            stats.accumulator(prefix + "scores.acc", score_peak, 32)
            stats.mac(prefix + "context", B * H * T * S * d, a_bits=self.softmax.out_bits)
            stats.accumulator(prefix + "context.acc", int(np.abs(ctx_acc).max()), 32)
            stats.count("mul", prefix + "context.requant", ctx_acc.size, a_bits=32, b_bits=32)
            stats.saturated(prefix + "context.out", sat)
        _record(trace, prefix, qkv=qkv, scores=scores, probs=probs, ctx_acc=ctx_acc, ctx=ctx, ctx_shift=t_ctx)
        return s


# --- activation sites ----------------------------------------------------------------------------------

class TokenScaledActivation:
    """A PWL activation whose input scale ``2**-e`` is chosen per token from its table's scale set.

    The in-projection requantizes to an int32 register ``v`` at the table's finest scale
    ``2**-e_max``; per row the smallest shift ``t`` in ``[0, e_max - e_min]`` with
    ``max|v| >> t <= 2**(in_bits-1) - 1`` (a leading-one detector) gives the unit's codes
    ``q = saturate(RDBPOT(v, t))`` at scale ``2**-(e_max - t)`` (rows beyond the coarsest scale
    saturate, counted), evaluated by the unit at that scale (one table serves every scale: the
    GQA-LUT datapath); each output is aligned to the finest output scale ``2**-F(e_max)`` by a left
    shift ``F(e_max) - F(e)`` (exact). So a token of small activations keeps ``in_bits`` of
    resolution while a token with a massive one still fits. ``kernel``: a PWL activation
    (:class:`intsim.gelu.PWLActivation`) of the site.
    """

    def __init__(self, kernel):
        table = kernel.table
        self.table, self.in_bits = table, kernel.in_bits
        self.e_max, self.e_min = max(table.scales), min(table.scales)
        self.kernels = {e: type(kernel)(0.0, table, e=e) for e in table.scales}
        self.in_scale, self.out_scale = self.kernels[self.e_max].in_scale, self.kernels[self.e_max].out_scale
        self.frac_max = table.output_frac(self.e_max)

    def __call__(self, v, stats=None, name="activation"):
        """int32 register (..., F) at ``in_scale`` -> (int64 outputs at ``out_scale``, the unit's codes, row shifts)."""
        v2 = np.asarray(v, np.int64).reshape(-1, v.shape[-1])                     # (..., F) -> (M, F)
        hi = (1 << (self.in_bits - 1)) - 1
        peak = np.abs(v2).max(1) if v2.size else np.zeros(v2.shape[0], np.int64)
        bits = np.frexp(peak.astype(np.float64))[1]                               # bit length of each row's peak
        t = np.clip(bits - (self.in_bits - 1), 0, self.e_max - self.e_min).astype(np.int64)
        q = np.empty(v2.shape, np.int8 if self.in_bits <= 8 else np.int16)
        out = np.empty(v2.shape, np.int64)
        sat = 0
        for shift in np.unique(t):
            rows = t == shift
            r = rounding_divide_by_pot(v2[rows], int(shift))
            qc = np.clip(r, -hi - 1, hi)
            sat += int((qc != r).sum())
            e = self.e_max - int(shift)
            q[rows] = qc
            out[rows] = self.kernels[e](qc, None).astype(np.int64) << (self.frac_max - self.table.output_frac(e))
        if stats is not None:
            stats.count("compare", f"{name}.token_max", v2.size, bits=32)
            stats.count("shift", f"{name}.token_shift", v2.size, bits=32)
            stats.lut(name, v2.size, table=self.table.function, entries=self.table.entries, in_bits=self.in_bits)
            stats.count("shift", f"{name}.align", v2.size, bits=32)
            stats.saturated(f"{name}.in", sat)
        return out.reshape(v.shape), q.reshape(v.shape), t.reshape(v.shape[:-1])


class ActivationSite:
    """The FFN's non-linearity between its in- and out-projections, on integers:

    - plain (BERT): ``a = act(requant(x W_in^T + b))`` -- the in-projection requantizes straight
      to the kernel's own input format (``kernel.in_bits`` at ``kernel.in_scale``);
    - gated (``w_up`` given; SwiGLU's ``silu(gate) * up``): ``a = act(gate) * u`` with
      ``u = requant(x W_up^T)`` int8 at the calibrated scale of ``up_site``: an int64 product of the
      kernel's int32 code and ``u`` at scale ``kernel.out_scale * s_u`` (a declared 32-bit register).
    - gated with ``per_token`` outliers and a PWL kernel (``token_input=True``): the kernel's input
      scale is chosen per token (:class:`TokenScaledActivation`), and ``u`` is a per-token operand
      (nominal scale for the median token, :func:`intsim.fixedpoint.requantize_dynamic`; its row
      shifts, plus the operand's, add to the output's row shifts). The up projection has no bias then.

    Then ``a`` is requantized to the out-projection's int8 operand at the calibrated scale of
    ``out_site`` (:class:`OperandRequant`, per token if configured). With ``act_offset`` (an ungated
    site with an element-wise unit only: a gated product is signed and unbounded, and a row-wise
    unit such as I-ViT's ShiftGELU has no bound per code; those keep the int8 operand) the unit's offset ``C``
    (:func:`intsim.outliers.activation_offset`) is added first and the operand is uint8 over
    ``[0, max + c]`` (``c = C * kernel.out_scale``), the consumer's ``(W, b)`` folding the shift
    (:attr:`factor`, an :class:`~intsim.outliers.OperandTransform` with ``shift = -c``). ``kernel``: any activation
    kernel (:data:`intsim.registry.ACTIVATIONS`); ``name`` names its operations and trace entries
    (``{name}_in``, ``{name}_out``, ``{name}_q``). ``linear``: the projections' factory as for
    :class:`IntAttention` (``part`` ``"in"`` or ``"up"``).
    """

    def __init__(self, w_in, b_in, in_scale: float, in_factor, kernel, calib: Calibration, out_site: str,
                 consumers, cfg: SimConfig, name: str = "gelu", w_up=None, b_up=None, up_site: str | None = None,
                 in_proj: str = "ffn_in", up_proj: str = "ffn_up", token_input: bool = False, linear=None):
        linear = linear or _int_linear
        per_token = "per_token" in outlier_methods(cfg)
        self.token_input = token_input and per_token and w_up is not None and hasattr(kernel, "table")
        if self.token_input:
            if b_up is not None:
                raise GQAError(up_proj, "has a bias; a per-token gate operand is built without one",
                               "use token_input=False for a biased up projection")
            kernel = TokenScaledActivation(kernel)
        self.kernel, self.name, self.in_proj, self.up_proj = kernel, name, in_proj, up_proj
        in_bits = 32 if self.token_input else kernel.in_bits     # token_input: an int32 register at the finest scale
        self.proj = linear("in", w_in, b_in, in_scale, cfg, kernel.in_scale, in_bits, col_factor=in_factor)
        self.up = None
        scale = kernel.out_scale
        if w_up is not None:
            pick = calib.token_max(up_site) if self.token_input else calib.absmax(up_site, cfg.calib_percentile)
            s_u = act_scale(pick, cfg.act_bits, cfg.act_scales)
            self.up = linear("up", w_up, b_up, in_scale, cfg, s_u, cfg.act_bits, col_factor=in_factor)
            scale = scale * s_u
        self.act_bits = cfg.act_bits
        self.offset = 0            # act_offset's C: added to the unit's output, the operand uint8
        offset = activation_offset(kernel) if "act_offset" in outlier_methods(cfg) and w_up is None else None
        if offset is not None:
            self.offset = offset
            c = self.offset * kernel.out_scale
            pick = calib.token_max(out_site) if per_token else calib.absmax(out_site, cfg.calib_percentile)
            self.out_scale = act_scale(pick + c, cfg.act_bits + 1, cfg.act_scales)   # 2**b - 1 codes over [0, max + c]
            channels = np.asarray(w_in).shape[0]
            self.factor = OperandTransform(np.ones(channels), np.full(channels, -c), np.ones(channels, np.int64),
                                           cfg.act_bits, quantized_fold=True)
            self.requant = OperandRequant(scale / self.out_scale, cfg.act_bits, per_token, unsigned=True,
                                          mantissa_bits=token_mantissa(cfg))
            return
        if cfg.ffn_smooth_alpha > 0 and w_up is not None:      # gated FFN: the down operand smoothed
            self.out_scale, f = smoothed_requantized_scale(calib, out_site, consumers, cfg, cfg.ffn_smooth_alpha)
        else:
            self.out_scale, f = requantized_operand_scale(calib, out_site, consumers, cfg)
        self.factor = f
        self.requant = OperandRequant(scale / (self.out_scale * f), cfg.act_bits, per_token,
                                      mantissa_bits=token_mantissa(cfg))

    def _up_per_token(self, x8, t8, stats, name):
        """u int8 per token: the up projection's int32 accumulator requantized dynamically (the same
        multipliers, then a per-row shift); its row shifts include the operand's."""
        acc = self.up.accumulator(x8, stats, name, row_shift=t8)                  # (B, T, F) int32 values
        u, t_u = requantize_dynamic(acc, self.up.m0, self.up.n, self.act_bits)
        if stats is not None:
            stats.count("mul", f"{name}.requant", acc.size, a_bits=32, b_bits=32)
            stats.count("compare", f"{name}.token_max", acc.size, bits=32)
            stats.count("shift", f"{name}.token_shift", acc.size, bits=32)
        return u, t_u if t8 is None else t_u + t8

    def __call__(self, x8, t8, stats=None, prefix="", trace=None):
        """int8 operand (B, T, C) and its row shifts -> the out-projection's operand (B, T, F) and row shifts."""
        p = prefix + self.name
        a_in, _ = self.proj(x8, stats, prefix + self.in_proj, row_shift=t8)       # (B, T, F) kernel input codes
        t_in = t_u = None
        if self.token_input:
            a, a_in, t_in = self.kernel(a_in, stats, p)                           # (B, T, F) int64, codes, (B, T) shifts
        else:
            a = self.kernel(a_in, stats, p)                                       # (B, T, F) int32
        u = None
        if self.up is not None:
            if self.token_input:
                u, t_u = self._up_per_token(x8, t8, stats, prefix + self.up_proj)  # (B, T, F) int8, (B, T)
            else:
                u, _ = self.up(x8, stats, prefix + self.up_proj, row_shift=t8)     # (B, T, F) int8
            a = a.astype(np.int64) * u                                            # the gate: int64 product
            if stats is not None:
                stats.count("mul", p + ".gate", a.size, a_bits=32, b_bits=8)
        r = a
        if self.offset and stats is not None:                                    # r = a + C >= 0 for every input code
            stats.count("add", p + ".offset", a.size, bits=32)
        if isinstance(t_u, RowScale):
            # norm_mantissa: u's row mantissa multiplies the product, only its exponent carries over
            r = r.astype(np.int64) * t_u.mantissa[..., None]                    # (B, T, F) int64, <= 45 bits
            if stats is not None:
                stats.count("mul", p + ".up_mantissa", a.size, a_bits=40, b_bits=t_u.bits + 1)
            t_u = t_u.exponent                                                    # (B, T) signed
        a_q, t_a, sat = self.requant(r, stats, p, offset=self.offset)            # of r + C (no offset: r)
        if t_u is not None:                                                       # u's row scales carry over
            t_a = t_u if t_a is None else t_a + t_u
            if not isinstance(t_a, RowScale) and t_a.size and t_a.min() < 0:     # signed: a RowScale
                t_a = RowScale.power_of_two(t_a)
        if stats is not None:
            stats.count("mul", p + ".requant", a.size, a_bits=32, b_bits=32)
            stats.accumulator(p + ".out", int(np.abs(a).max()) if a.size else 0, 32)
            stats.saturated(p + ".requant", sat)
        _record(trace, prefix, **{f"{self.name}_in": a_in, f"{self.name}_up": u, f"{self.name}_out": a,
                                  f"{self.name}_q": a_q, f"{self.name}_in_shift": t_in,
                                  f"{self.name}_up_shift": t_u, f"{self.name}_q_shift": t_a})
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
