"""The outlier toolbox: methods of the literature folded offline into a GEMM operand's integer constants.

Every method here changes *constants only* (a norm's integer gamma/beta, the consuming weights and
biases, the operand's clipping range): the integer datapath runs the same kernels. The methods that
transform a norm's GEMM copy compose into one :class:`OperandTransform` of the operand ``x``
(``C`` channels) and its consumers ``y = x W^T + b``:

    x'  = repeat((x - z) / (g * T), T)          the operand the norm emits (K = sum T channels)
    W'  = repeat(W * g, T)                      columns scaled by g, each duplicated T_c times
    b'  = b + W z                               the shift's contribution, folded into the bias

so ``x' W'^T + b' = x W^T + b`` exactly in real arithmetic (``sum over the T_c copies of
(x_c - z_c) / (g_c T_c) * W_c g_c = (x_c - z_c) W_c``). In the norm, ``gamma x_hat + beta - z``
over ``s * g * T`` is one :class:`intsim.layernorm.LNOutput` with ``beta - z`` and per-channel
scale ``s * g * T``. The methods (``SimConfig.outliers``, :data:`intsim.registry.OUTLIERS`), each
computing its part from the statistics left by the previous ones, in this order:

- **gamma migration** (Outlier Suppression, Wei et al. 2022, "Outlier Suppression: Pushing the
  Limit of Low-bit Transformer Language Models"): the norm's gamma amplifies outlier channels; the
  GEMM copy is emitted without it, ``x_hat + beta / gamma``, and gamma moves into the weights:
  ``g_c = gamma_c`` (:func:`gamma_migration`).
- **channel-wise shifting** (Outlier Suppression+, Wei et al. 2023, "Outlier Suppression+:
  Accurate quantization of large language models by equivalent and optimal shifting and
  scaling"): ``z_c = (max_c + min_c) / 2`` centres each channel's range (:func:`channel_shift`);
  ``W z`` joins the bias.
- **channel-wise scaling** (Outlier Suppression+): ``s_c = max(1, max'_c / t, -min'_c / t)`` on the
  shifted range, ``t`` searched over the channel ranges to minimise the consuming block's output
  error on calibration rows, ``sum_W || Q(x'/s) Q(W s)^T - x' W^T ||^2`` (:func:`os_plus_scale`,
  :func:`search_os_plus_t`).
- **SmoothQuant** (Xiao et al. 2023; the existing ``smooth``): ``f_c = cmax_c**a / wmax_c**(1-a)``.
- **channel splitting** (in the spirit of QLLM's channel disassembly, Liu et al. 2024): a channel
  whose range exceeds ``theta = split_ratio * median channel range`` is split into
  ``T_c = ceil(range_c / theta)`` sub-channels of ``x_c / T_c``, its weight column duplicated
  (:func:`split_counts`); the GEMM's K grows by ``sum (T_c - 1)`` (reported: :attr:`OperandTransform.extra_k`).

An activation's output (``act_offset``, at an ungated site whose unit is element-wise, the GELU output as the FFN down-projection's operand): a
unit whose output is bounded below (GELU >= -0.17) emits ``a >= a_min``, so a symmetric int8 operand
spends almost half its codes on ``[-max, a_min)``, where nothing lies. The offset ``C = -a_min`` (the
least output code over every input code of the unit, :func:`activation_offset`) is added to the
unit's integer output, ``a + C >= 0`` is requantized to an UNSIGNED operand ``u`` (uint8,
``[0, 2**b - 1]``, per token or per tensor: twice the resolution over the same range), and the
consumer folds the real offset ``c = C * s_a`` into its bias, ``W (x + c) + b - W c = W x + b``
(an :class:`OperandTransform` with ``shift = -c``: ``b' = b + W z``). The GEMM is uint8 x int8
(as the softmax probabilities' already is). This is the asymmetric (zero-point) operand of
integer-only inference (Jacob et al. 2018, "Quantization and Training of Neural Networks for
Efficient Integer-Arithmetic-Only Inference", ``r = S (q - Z)``) with the zero point a per-tensor
constant taken from the unit itself: the zero-point correction ``Z * rowsum(W)`` is the bias fold.

Clipping ranges of static operands (``SimConfig.act_clip``, :data:`intsim.registry.CLIPS`):

- ``percentile``: the ``calib_percentile`` of |x| (the default; a transformed norm copy: its max);
- ``mse``: the clip ``c`` minimising the quantization MSE of the tensor, evaluated on a fine
  histogram of |x| (bin centres quantized at step ``c / (2**(b-1) - 1)``, clipped at ``c``; the
  histogram calibrator of NVIDIA's pytorch-quantization) (:func:`mse_clip`);
- ``token``: Outlier Suppression's token-wise clipping, coarse to fine: the candidates are
  quantiles ``alpha`` of the per-token maxima (coarse), the best one refined by a golden-section
  search between its neighbours (fine), both on the same quantization MSE (:func:`token_clip`;
  the paper's fine stage trains the range by gradient on the block output -- not done here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import GQAError

TOKEN_QUANTILES = (1.0, 0.9999, 0.999, 0.995, 0.99, 0.98, 0.95, 0.9, 0.8, 0.7, 0.5)   # coarse stage
OS_PLUS_CANDIDATES = 12     # values of t tried (quantiles of the channel ranges, median .. max)
MSE_CANDIDATES = 256        # clip candidates of the MSE search: fractions k / 256 of the tensor's max


# --- the operand transform ----------------------------------------------------------------------------

@dataclass
class OperandTransform:
    """``x' = repeat((x - shift) / (scale * repeats), repeats)``; the consumers' ``W' = repeat(W * scale,
    repeats)``, ``b' = b + W shift`` (module docstring). ``bits``: the operand's width.
    ``quantized_fold``: the shift folds with the weights the GEMM multiplies, ``b' = b + Q(W') z'``
    (:meth:`bias_quantized`; the zero-point correction: the weights' rounding error then never
    multiplies the shift)."""

    scale: np.ndarray        # (C,) g: the weight columns' factor
    shift: np.ndarray        # (C,) z, in the operand's real units
    repeats: np.ndarray      # (C,) T >= 1, integer
    bits: int = 8
    quantized_fold: bool = False

    @classmethod
    def identity(cls, channels: int, bits: int = 8) -> "OperandTransform":
        return cls(np.ones(channels), np.zeros(channels), np.ones(channels, np.int64), bits)

    @property
    def divisor(self) -> np.ndarray:
        """What the operand's channels are divided by: ``g * T``."""
        return self.scale * self.repeats

    @property
    def extra_k(self) -> int:
        """Channels channel splitting adds to every consuming GEMM's K."""
        return int((self.repeats - 1).sum())

    @property
    def splits(self) -> bool:
        return bool((self.repeats > 1).any())

    def weights(self, w: np.ndarray) -> np.ndarray:
        """``(out, C)`` FP32 weights -> ``(out, sum T)``: columns scaled by g, duplicated T times."""
        return np.repeat(np.asarray(w, np.float64) * self.scale[None, :], self.repeats, axis=1)

    def bias(self, w: np.ndarray, b) -> np.ndarray:
        """``b + W z`` (``b=None``: no bias, zeros)."""
        w = np.asarray(w, np.float64)
        b = np.zeros(w.shape[0]) if b is None else np.asarray(b, np.float64)
        return b + w @ self.shift

    def bias_quantized(self, wq: np.ndarray, b) -> np.ndarray:
        """``b + W'_q z'`` with ``W'_q`` the dequantized folded weights ``(out, sum T)`` and ``z'`` the
        shift as the transformed operand sees it (``repeat(z / (g T), T)``): ``x' W'_q^T + b'`` is
        then ``W'_q`` applied to the unshifted operand, plus ``b``."""
        wq = np.asarray(wq, np.float64)
        b = np.zeros(wq.shape[0]) if b is None else np.asarray(b, np.float64)
        return b + wq @ np.repeat(self.shift / self.divisor, self.repeats)

    def operand(self, x: np.ndarray) -> np.ndarray:
        """The transformed real operand ``(..., C) -> (..., sum T)`` (FP32 checks and the searches)."""
        return np.repeat((np.asarray(x, np.float64) - self.shift) / self.divisor, self.repeats, axis=-1)

    def expand(self, x8: np.ndarray) -> np.ndarray:
        """Integer operand codes ``(..., C) -> (..., sum T)``: each split channel's code read T times."""
        return np.repeat(x8, self.repeats, axis=-1) if self.splits else x8


# --- the methods, one function each --------------------------------------------------------------------

def smoothquant_factors(cmax, wmax, alpha: float) -> np.ndarray:
    """SmoothQuant's ``f_c = cmax_c**alpha / wmax_c**(1-alpha)`` (Xiao et al. 2023), float64.

    The powers are libm's ``pow`` element by element, not numpy's ``power``: numpy dispatches its
    array ``power`` to SIMD code chosen by the running CPU (SVML on AVX-512, libm otherwise), whose
    results differ in the last bits, and a factor one ulp off moves the integer constants folded
    from it: the same calibration must give the same integers on every machine."""
    libm_pow = np.vectorize(math.pow, otypes=[np.float64])      # one Python call per element: libm's pow
    return libm_pow(np.asarray(cmax, np.float64), alpha) / libm_pow(np.asarray(wmax, np.float64), 1 - alpha)


def gamma_migration(gamma) -> np.ndarray:
    """Outlier Suppression's gamma migration factor ``g_c = gamma_c`` (a zero gamma: 1, nothing to move)."""
    g = np.asarray(gamma, np.float64)
    return np.where(np.abs(g) > 1e-12, g, 1.0)


def channel_shift(hi, lo) -> np.ndarray:
    """Outlier Suppression+'s shift ``z_c = (max_c + min_c) / 2``: each channel's range centred on 0."""
    return (np.asarray(hi, np.float64) + np.asarray(lo, np.float64)) / 2


def os_plus_scale(hi, lo, t: float) -> np.ndarray:
    """Outlier Suppression+'s scale ``s_c = max(1, max_c / t, -min_c / t)`` (of a shifted range)."""
    return np.maximum(1.0, np.maximum(np.asarray(hi, np.float64) / t, -np.asarray(lo, np.float64) / t))


def split_counts(ranges, ratio: float) -> np.ndarray:
    """Channel splitting: ``T_c = max(1, ceil(range_c / theta))``, ``theta = ratio * median(range)``."""
    r = np.asarray(ranges, np.float64)
    theta = ratio * float(np.median(r))
    if theta <= 0:
        return np.ones(r.shape, np.int64)
    return np.maximum(1, np.ceil(r / theta - 1e-9)).astype(np.int64)


def fake_quant(x: np.ndarray, clip, bits: int) -> np.ndarray:
    """Symmetric round-to-nearest at step ``clip / (2**(b-1) - 1)``, saturating at ``clip`` (per tensor,
    or per row when ``clip`` has a trailing axis of 1)."""
    top = (1 << (bits - 1)) - 1
    step = np.maximum(np.asarray(clip, np.float64), 1e-12) / top
    return np.clip(np.rint(x / step), -top, top) * step


def block_output_error(x: np.ndarray, weights, scale: np.ndarray, bits: int, weight_bits: int,
                       per_channel: bool, per_token: bool, exact=None) -> float:
    """OS+'s objective: ``sum_W mean || Q(x / s) Q(W s)^T - x W^T ||^2`` over calibration rows ``x``
    (already shifted), the operand per tensor (or per token) at its max, ``W`` as the integer path
    quantizes it. ``exact``: the products ``x W^T`` if already computed (float32)."""
    from .layers import quantize_weight

    xs = x / scale
    clip = np.abs(xs).max(axis=1, keepdims=True) if per_token else np.abs(xs).max()
    xq = fake_quant(xs, clip, bits).astype(np.float32)
    err = 0.0
    for i, w in enumerate(weights):
        q, sw = quantize_weight(np.asarray(w, np.float64) * scale[None, :], weight_bits, per_channel)
        wq = (q.astype(np.float64) * sw[:, None]).astype(np.float32)
        y = exact[i] if exact is not None else x.astype(np.float32) @ np.asarray(w, np.float32).T
        err += float(np.mean((xq @ wq.T - y).astype(np.float64) ** 2))
    return err


def search_os_plus_t(x: np.ndarray, hi, lo, weights, bits: int, weight_bits: int, per_channel: bool = True,
                     per_token: bool = False) -> tuple[float, np.ndarray]:
    """OS+'s scaling search: ``t`` among quantiles (median .. max) of the shifted channel ranges
    ``max(max_c, -min_c)``, the one with the least :func:`block_output_error` on the rows ``x``
    (ties: the larger ``t``, less scaling). -> ``(t, s)``."""
    r = np.maximum(np.asarray(hi, np.float64), -np.asarray(lo, np.float64))
    cands = np.unique(np.quantile(r, np.linspace(0.5, 1.0, OS_PLUS_CANDIDATES)))
    exact = [x.astype(np.float32) @ np.asarray(w, np.float32).T for w in weights]
    best = None
    for t in cands[::-1]:
        t = max(float(t), 1e-12)
        s = os_plus_scale(hi, lo, t)
        e = block_output_error(x, weights, s, bits, weight_bits, per_channel, per_token, exact)
        if best is None or e < best[0]:
            best = (e, t, s)
    return best[1], best[2]


def hist_mse(hist: np.ndarray, top: float, clip: float, bits: int) -> float:
    """Quantization MSE of a tensor given as counts of |x| in linear bins over ``[0, top]``: every bin
    centre quantized at step ``clip / (2**(b-1) - 1)`` and saturated at ``clip``."""
    n = hist.size
    centres = (np.arange(n) + 0.5) * (top / n)
    q = fake_quant(centres, clip, bits)
    return float((hist * (q - centres) ** 2).sum() / max(hist.sum(), 1))


def mse_clip(hist: np.ndarray, top: float, bits: int) -> float:
    """The clip among ``k / MSE_CANDIDATES * top`` (k = 1 .. all) with the least :func:`hist_mse`
    (ties: the larger clip)."""
    if top <= 0:
        return 0.0
    cands = top * np.arange(1, MSE_CANDIDATES + 1) / MSE_CANDIDATES
    errs = np.array([hist_mse(hist, top, c, bits) for c in cands])
    return float(cands[len(errs) - 1 - np.argmin(errs[::-1])])


def token_clip(token_maxima: np.ndarray, hist: np.ndarray, top: float, bits: int, iters: int = 20) -> float:
    """Outlier Suppression's token-wise clipping, coarse to fine (module docstring): the quantile of the
    per-token maxima with the least :func:`hist_mse`, then a golden-section search between its
    neighbouring candidates."""
    if top <= 0:
        return 0.0
    cands = sorted({float(np.quantile(token_maxima, a)) for a in TOKEN_QUANTILES})
    cands = [max(c, top / MSE_CANDIDATES) for c in cands]
    errs = [hist_mse(hist, top, c, bits) for c in cands]
    k = int(np.argmin(errs))
    lo, hi = cands[max(k - 1, 0)], cands[min(k + 1, len(cands) - 1)]
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = hist_mse(hist, top, a, bits), hist_mse(hist, top, b, bits)
    for _ in range(iters):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = hist_mse(hist, top, a, bits)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = hist_mse(hist, top, b, bits)
    best = min([(errs[k], cands[k]), (fa, a), (fb, b)])
    return float(best[1])


def clip_of(kind: str, hist: np.ndarray, top: float, token_maxima: np.ndarray, bits: int) -> float:
    """The clipping range of ``kind`` (``mse`` or ``token``) of a tensor's statistics."""
    if kind == "mse":
        return mse_clip(hist, top, bits)
    if kind == "token":
        return token_clip(token_maxima, hist, top, bits)
    raise GQAError("act_clip", f"{kind!r} is not a searched clipping range", "use mse or token")


def sample_stats(x: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """``(fine histogram of |x|, max |x|, per-row max |x|)`` of rows ``x`` (a transformed sample)."""
    from .calibration import fine_hist

    a = np.abs(x)
    top = float(a.max()) if a.size else 0.0
    return fine_hist(a, top), top, a.max(axis=-1)


def activation_offset(kernel) -> int | None:
    """``act_offset``'s ``C = -min_q kernel(q)`` over every input code ``q`` of ``s{in_bits}`` (0 if the
    unit never goes below zero): ``a + C >= 0`` for every output ``a`` of ``kernel``, provably (no
    calibration involved). None where no such bound follows from the codes: a unit wider than 16
    input bits (not enumerated), or one that is not element-wise (its output depends on the rest of
    the row, as I-ViT's ShiftGELU does through the row maximum: the codes evaluated as one row and
    each alone disagree). Refused for a unit whose shifted output leaves int32."""
    bits = int(kernel.in_bits)
    if bits > 16:
        return None
    codes = np.arange(-(1 << (bits - 1)), 1 << (bits - 1), dtype=np.int64)
    y = np.asarray(kernel(codes), np.int64)
    if not np.array_equal(np.asarray(kernel(codes[:, None]), np.int64)[:, 0], y):
        return None
    c = max(0, -int(y.min()))
    if int(y.max()) + c >= 2**31:
        raise GQAError("outliers", "act_offset: the activation's output plus its offset exceeds int32",
                       "narrow the activation's output format")
    return c


# --- composition ---------------------------------------------------------------------------------------

def norm_transform(methods, calib, site: str, gamma, consumers, cfg, bits: int) -> OperandTransform:
    """The :class:`OperandTransform` of a norm's GEMM copy at calibration site ``site`` for the enabled
    ``methods`` (names of :data:`intsim.registry.OUTLIERS`), each computed on the statistics the
    previous ones leave (module docstring order). ``consumers``: the FP32 weights that read it."""
    hi, lo = extremes(calib, site, signed="os_shift" in methods)
    t = OperandTransform.identity(hi.size, bits)

    def ranges():  # signed range of every channel of the current transform (before splitting)
        a, b = (hi - t.shift) / t.scale, (lo - t.shift) / t.scale
        return np.maximum(a, b), np.minimum(a, b)

    if "gamma_migration" in methods:
        t.scale = gamma_migration(gamma)
    if "os_shift" in methods:
        t.shift = channel_shift(hi, lo)
    if "os_scale" in methods:
        x = (np.asarray(calib.extra(site, "sample"), np.float64) - t.shift) / t.scale
        h, l = ranges()
        w = [np.asarray(m, np.float64) * t.scale[None, :] for m in consumers]
        from .registry import WEIGHT_SCALES
        _, s = search_os_plus_t(x, h, l, w, bits, cfg.weight_bits, WEIGHT_SCALES.impl(cfg.weight_scales),
                                "per_token" in methods)
        t.scale = t.scale * s
    if "smooth" in methods:
        h, l = ranges()
        cmax = np.maximum(np.maximum(h, -l), 1e-6)
        # max_r |W_rc g_c| = |g_c| max_r |W_rc|; the weights' own dtype first (the bits of the first smooth)
        wmax = np.maximum(np.max([np.abs(m).max(0) for m in consumers], axis=0), 1e-6)
        if np.any(t.scale != 1):
            wmax = wmax * np.abs(t.scale)
        t.scale = t.scale * smoothquant_factors(cmax, wmax, cfg.smooth_alpha)
    if "split" in methods:
        h, l = ranges()
        t.repeats = split_counts(np.maximum(h, -l), cfg.split_ratio)
    return t


def extremes(calib, site: str, signed: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(max x, min x)``; without ``signed`` a calibration that predates them may answer
    ``(max |x|, -max |x|)`` (the same ranges for every method but the shift)."""
    s = calib.tensor(site)
    if s.channel_hi is None and not signed:
        return np.asarray(s.channel_max, np.float64), -np.asarray(s.channel_max, np.float64)
    return np.asarray(calib.extra(site, "channel_hi"), np.float64), np.asarray(calib.extra(site, "channel_lo"),
                                                                             np.float64)


def transformed_range(calib, site: str, t: OperandTransform) -> float:
    """Max |x'| of the transformed operand from the channel extremes (exact over the calibration)."""
    hi, lo = extremes(calib, site, signed=bool(np.any(t.shift)))
    return float((np.maximum(np.abs(hi - t.shift), np.abs(lo - t.shift)) / np.abs(t.divisor)).max())


def static_range(calib, site: str, cfg, bits: int, t: OperandTransform | None = None) -> float:
    """The clipping range of a static operand at ``site`` by ``cfg.act_clip`` (module docstring), of the
    transformed operand when ``t`` is given (searched on the calibration's sample rows)."""
    if cfg.act_clip == "percentile":
        return calib.absmax(site, cfg.calib_percentile) if t is None else transformed_range(calib, site, t)
    if t is None:
        s = calib.tensor(site)
        return clip_of(cfg.act_clip, calib.extra(site, "fine_hist"), s.absmax, calib.extra(site, "token_maxima"),
                       bits)
    hist, top, tmax = sample_stats(t.operand(calib.extra(site, "sample")))
    return clip_of(cfg.act_clip, hist, top, tmax, bits)
