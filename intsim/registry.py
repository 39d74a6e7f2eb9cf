"""Every choice of the integer datapath in one place: kernel kind -> implementations, outlier methods.

A registry maps names to implementations (and a one-line description). The config's validation
(:data:`intsim.config.CHOICES`), the sweep's MiniLM config axis, the CLI's listings and the docs
all read these, so adding a kernel is one registration here (plus its module)::

    ACTIVATIONS.register("mine", "my integer GELU", lambda cfg, absmax, site: MyGelu(absmax, cfg.act_bits))

Kinds and the interface of their implementations:

- ``ACTIVATIONS`` (``SimConfig.gelu``, the encoder's FFN slot; ``SimConfig.silu``, the decoder's
  SwiGLU gate): ``make(name, cfg, in_absmax, site, function="gelu") -> kernel`` with the
  interface of :mod:`intsim.gelu` (``in_bits``, ``in_scale``, ``out_scale``, ``kernel(q, stats, name)``);
  ``site`` names the activation (``pwl_input_exp`` keys). An entry declares the functions it
  computes (``functions=``, default GELU only); the ``gelu`` slot's factory is called
  ``(cfg, in_absmax, site)`` with the table ``cfg.gelu_table``, any other function's with
  ``function=`` added (the PWL entry then runs ``cfg.{function}_table``, e.g. ``cfg.silu_table``).
- ``SOFTMAXES`` (``SimConfig.softmax``): ``make(cfg, in_scale) -> kernel`` with
  ``kernel(scores, key_mask, stats, name, causal=False)`` (:func:`intsim.softmax.score_rows`).
- ``RECIPROCALS`` (``SimConfig.reciprocal``): the PWL softmax's normalisation.
- ``NORMS`` (``SimConfig.layernorm``): ``make(cfg, center=True) -> kernel`` with the interface of
  :class:`intsim.layernorm.IntLayerNorm` (``kernel(x, out1, out2=None, stats, name)``);
  ``center=False`` is the same entry's RMSNorm (the decoder's norms).
- ``OUTLIERS`` (``SimConfig.outliers``): composable methods; a config names ``none`` or
  methods joined by ``+`` in registration order (``smooth+per_token``).
- ``CLIPS`` (``SimConfig.act_clip``): how a static GEMM operand's clipping range is chosen
  (:func:`intsim.outliers.static_range`).
- ``ACT_SCALES`` (``SimConfig.act_scales``): ``scale(absmax, bits) -> real scale`` of an activation.
- GEMM backends: :data:`intsim.gemm.BACKENDS` (the GEMM module owns its list).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from .errors import GQAError


@dataclass(frozen=True)
class Entry:
    name: str
    doc: str
    impl: object        # a factory (kernels) or a value (flags)


class Registry:
    """Names -> implementations of one kind of choice, in registration order."""

    def __init__(self, kind: str, field: str):
        self.kind, self.field = kind, field
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, doc: str, impl=None):
        """Register ``impl`` under ``name`` (or use as a decorator: ``@REG.register(name, doc)``)."""
        if impl is None:
            return lambda f: self.register(name, doc, f)
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = Entry(name, doc, impl)
        return impl

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests, experiments); unknown names raise as :meth:`get` does."""
        self.get(name)
        del self._entries[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(self._entries.values())

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            raise GQAError(self.field, f"{name!r} is not an option", f"use one of {', '.join(self._entries)}")
        return self._entries[name]

    def impl(self, name: str):
        """What ``name`` is registered with (a factory or a value)."""
        return self.get(name).impl

    def make(self, name: str, *args, **kwargs):
        """Call the factory registered as ``name``."""
        return self.get(name).impl(*args, **kwargs)


class ActivationRegistry(Registry):
    """Activation kernels, each declaring the functions it computes (``gelu``, ``silu``, ...)."""

    def __init__(self, kind: str, field: str):
        super().__init__(kind, field)
        self._functions: dict[str, tuple[str, ...]] = {}

    def register(self, name: str, doc: str, impl=None, functions=("gelu",)):
        if impl is None:
            return lambda f: self.register(name, doc, f, functions)
        super().register(name, doc, impl)
        self._functions[name] = tuple(functions)
        return impl

    def unregister(self, name: str) -> None:
        super().unregister(name)
        del self._functions[name]

    def functions(self, name: str) -> tuple[str, ...]:
        self.get(name)
        return self._functions[name]

    def names_for(self, function: str) -> tuple[str, ...]:
        """The entries that compute ``function``."""
        return tuple(n for n in self.names() if function in self._functions[n])

    def make(self, name: str, cfg, in_absmax: float, site: str, function: str = "gelu"):
        """The kernel ``name`` for ``function`` at ``site`` (the ``gelu`` slot's PWL table may hold
        any activation: :meth:`intsim.config.SimConfig.check_sites` checks it is the model's)."""
        impl = self.impl(name)
        if function not in self._functions[name]:
            raise GQAError(function, f"{name!r} does not compute {function}",
                           f"use one of {', '.join(self.names_for(function))}")
        if function == "gelu":
            return impl(cfg, in_absmax, site)
        return impl(cfg, in_absmax, site, function=function)


class Composable(Registry):
    """A registry whose choices are ``none`` or any of its entries joined by ``+`` (registration order);
    an entry registered with ``requires=`` (names) refines those and is a choice only with them."""

    NONE = "none"

    def __init__(self, kind: str, field: str):
        super().__init__(kind, field)
        self._requires: dict[str, tuple[str, ...]] = {}

    def register(self, name: str, doc: str, impl=None, requires=()):
        if impl is None:
            return lambda f: self.register(name, doc, f, requires)
        unknown = [r for r in requires if r not in self._entries]
        if unknown:
            raise ValueError(f"{self.kind} {name!r} requires {unknown[0]!r}, which is not registered (before it)")
        super().register(name, doc, impl)
        self._requires[name] = tuple(requires)
        return impl

    def unregister(self, name: str) -> None:
        super().unregister(name)
        del self._requires[name]

    def requires(self, name: str) -> tuple[str, ...]:
        self.get(name)
        return self._requires[name]

    def choices(self) -> tuple[str, ...]:
        names = self.names()
        combos = [c for r in range(1, len(names) + 1) for c in itertools.combinations(names, r)
                  if all(q in c for n in c for q in self._requires[n])]
        return (self.NONE, *("+".join(c) for c in sorted(combos, key=len)))

    def canonical(self, choice) -> str:
        """``choice`` with its methods in registration order (``per_token+smooth`` -> ``smooth+per_token``),
        or a GQAError naming the field and the methods (the combinations are too many to list)."""
        parts = [p.strip() for p in str(choice).split("+")]
        if parts == [self.NONE]:
            return self.NONE
        names = self.names()
        if any(p not in names for p in parts) or len(set(parts)) != len(parts):
            raise GQAError(self.field, f"{choice!r} is not an option",
                           f"give {self.NONE} or methods joined by '+', each once, from: {', '.join(names)}")
        missing = [(p, q) for p in parts for q in self._requires[p] if q not in parts]
        if missing:
            p, q = missing[0]
            fixed = "+".join(n for n in names if n in parts or n in {m for _, m in missing})
            raise GQAError(self.field, f"{choice!r}: {p} refines {q}, which it lacks", f"give {fixed}")
        return "+".join(n for n in names if n in parts)

    def parse(self, choice: str) -> frozenset[str]:
        """The set of methods a choice enables (``none``: the empty set)."""
        choice = self.canonical(choice)
        return frozenset() if choice == self.NONE else frozenset(choice.split("+"))


# --- the registrations ------------------------------------------------------------------------------

ACTIVATIONS = ActivationRegistry("activation", "gelu")
SOFTMAXES = Registry("softmax", "softmax")
RECIPROCALS = Registry("reciprocal", "reciprocal")
NORMS = Registry("norm", "layernorm")
OUTLIERS = Composable("outlier method", "outliers")
CLIPS = Registry("clipping range", "act_clip")
ACT_SCALES = Registry("activation scale", "act_scales")
WEIGHT_SCALES = Registry("weight scale", "weight_scales")
WEIGHT_ROUNDINGS = Registry("weight rounding", "weight_rounding")


@ACTIVATIONS.register("pwl", "the PWL unit on the slot's table (power-of-two input scale)",
                      functions=("gelu", "silu"))
def _pwl_activation(cfg, in_absmax: float, site: str, function: str = "gelu"):
    from .gelu import PWLActivation
    return PWLActivation(in_absmax, getattr(cfg, f"{function}_table"), e=cfg.pwl_input_exp.get(site))


@ACTIVATIONS.register("ibert", "I-BERT's i-GELU (second-order polynomial erf)")
def _ibert_activation(cfg, in_absmax: float, site: str):
    from .ibert import IBertGelu
    return IBertGelu(in_absmax, in_bits=cfg.act_bits)


@ACTIVATIONS.register("ivit", "I-ViT's ShiftGELU (shift-based sigmoid)")
def _ivit_activation(cfg, in_absmax: float, site: str):
    from .ivit import ShiftGelu
    return ShiftGelu(in_absmax, in_bits=cfg.act_bits)


@ACTIVATIONS.register("illm", "I-LLM's DI-SiLU: sigmoid by DI-Exp and an integer divider (DI-SwiGLU)",
                      functions=("silu",))
def _illm_activation(cfg, in_absmax: float, site: str, function: str = "silu"):
    from .illm import DISiLU
    return DISiLU(in_absmax, in_bits=cfg.act_bits)


@SOFTMAXES.register("pwl", "PWL exp, integer sum, reciprocal (see RECIPROCALS)")
def _pwl_softmax(cfg, in_scale: float):
    from .softmax import IntSoftmax
    return IntSoftmax(in_scale, cfg.exp_table, cfg.reciprocal, cfg.recip_table, out_bits=cfg.prob_bits)


@SOFTMAXES.register("ibert", "I-BERT's i-exp softmax with an integer divider")
def _ibert_softmax(cfg, in_scale: float):
    from .ibert import IBertSoftmax
    return IBertSoftmax(in_scale, out_bits=cfg.prob_bits)


@SOFTMAXES.register("ivit", "I-ViT's Shiftmax (ShiftExp, IntDiv)")
def _ivit_softmax(cfg, in_scale: float):
    from .ivit import Shiftmax
    return Shiftmax(in_scale, out_bits=cfg.prob_bits)


@SOFTMAXES.register("illm", "I-LLM's DI-ClippedSoftmax (dynamic clipped range, DI-Exp, integer normalisation)")
def _illm_softmax(cfg, in_scale: float):
    from .illm import DIClippedSoftmax
    return DIClippedSoftmax(in_scale, cfg.softmax_clip, out_bits=cfg.prob_bits)


RECIPROCALS.register("pwl", "leading one, PWL table on the mantissa, shift", "pwl")
RECIPROCALS.register("divider", "an integer divider", "divider")


@NORMS.register("pwl", "LayerNorm/RMSNorm, rsqrt by leading one, PWL table on the mantissa, shift")
def _pwl_norm(cfg, center: bool = True):
    from .layernorm import IntLayerNorm
    return IntLayerNorm("pwl", cfg.rsqrt_table, cfg.ln_d_bits, center=center)


@NORMS.register("newton", "LayerNorm/RMSNorm, I-BERT's Newton integer square root and a divider")
def _newton_norm(cfg, center: bool = True):
    from .layernorm import IntLayerNorm
    return IntLayerNorm("newton", cfg.rsqrt_table, cfg.ln_d_bits, center=center)


@NORMS.register("illm", "I-LLM's DI-Norm: bit-wise integer square root, a divider (LayerNorm/RMSNorm)")
def _illm_norm(cfg, center: bool = True):
    from .layernorm import IntLayerNorm
    return IntLayerNorm("bitwise", None, cfg.ln_d_bits, center=center)


OUTLIERS.register("smooth", "SmoothQuant: norm-output channel outliers migrate into the consuming weights", "smooth")
OUTLIERS.register("per_token", "a dynamic power-of-two scale per token for GEMM operands", "per_token")
OUTLIERS.register("gamma_migration", "Outlier Suppression: a norm's gamma moves into the consuming weights",
                  "gamma_migration")
OUTLIERS.register("os_shift", "Outlier Suppression+: channel shift (max+min)/2 into the norm's beta and the next bias",
                  "os_shift")
OUTLIERS.register("os_scale", "Outlier Suppression+: channel scale max(1, max/t, -min/t), t searched on the block "
                  "output error", "os_scale")
OUTLIERS.register("split", "channel splitting (QLLM): outlier channels into sub-channels, weight columns duplicated",
                  "split")
OUTLIERS.register("act_offset", "an ungated activation's output offset by its unit's minimum into an unsigned (uint8) "
                  "operand, the offset folded into the next bias", "act_offset")

OUTLIERS.register("token_mantissa", "per_token's row scale of a requantized operand (the activation output, the "
                  "context) as mu * 2**k, mu with token_mantissa_bits fraction bits: the row fills the range; the next "
                  "requantizer multiplies by mu", "token_mantissa", requires=("per_token",))

OUTLIERS.register("norm_mantissa", "per_token's row scale of a norm's GEMM copy as mu * 2**k (token_mantissa_bits "
                  "fraction bits) instead of a power of two, picked inside the norm kernel", "norm_mantissa",
                  requires=("per_token",))

CLIPS.register("percentile", "the calib_percentile of |x| (a transformed norm copy: its max)", "percentile")
CLIPS.register("mse", "the clip minimising the tensor's quantization MSE (fine histogram)", "mse")
CLIPS.register("token", "Outlier Suppression's token-wise clipping: quantiles of the token maxima, refined", "token")


@ACT_SCALES.register("dyadic", "absmax / (2**(b-1) - 1), applied by dyadic multipliers")
def _dyadic_scale(absmax: float, bits: int) -> float:
    return max(float(absmax), 1e-8) / ((1 << (bits - 1)) - 1)


@ACT_SCALES.register("pot", "the dyadic scale rounded up to a power of two")
def _pot_scale(absmax: float, bits: int) -> float:
    return 2.0 ** math.ceil(math.log2(_dyadic_scale(absmax, bits)))


# a weight scale: the real range each output channel's (each row's) symmetric codes span, from the
# float weights (rows, K) and the code width; intsim.layers.quantize_weight divides it by 2**(b-1) - 1
@WEIGHT_SCALES.register("per_channel", "symmetric, one scale per output channel: the row's max |w|")
def _per_channel_range(w: np.ndarray, bits: int) -> np.ndarray:
    return np.abs(w).max(axis=1)


@WEIGHT_SCALES.register("per_tensor", "symmetric, one scale per weight matrix: its max |w|")
def _per_tensor_range(w: np.ndarray, bits: int) -> np.ndarray:
    return np.full(w.shape[0], np.abs(w).max())


WEIGHT_MSE_GRID = np.linspace(0.5, 1.0, 51)   # clipping ratios of the row's max |w| tried by "mse"


@WEIGHT_SCALES.register("mse", "per output channel, the clip in [0.5, 1] x max |w| minimising the row's squared error")
def _mse_range(w: np.ndarray, bits: int) -> np.ndarray:
    """The clipping range minimising each row's quantization error ``sum_k (w_k - s q_k)**2``,
    ``q_k = clip(round(w_k / s), +-(2**(b-1) - 1))``, ``s = c max|w| / (2**(b-1) - 1)``, over the
    ratios ``c`` of :data:`WEIGHT_MSE_GRID` (0.5 to 1 in steps of 0.01; the first of equal errors,
    so a row no clip improves keeps ``c = 1``). Clipping the rare largest weights of a row buys
    resolution for all the others: the MSE-optimal clipping of Banner et al. 2019 (ACIQ) and
    Sung et al. 2015, here searched per channel as for the activations' ``act_clip = "mse"``."""
    top = (1 << (bits - 1)) - 1
    amax = np.abs(w).max(axis=1)
    best, best_err = amax.copy(), np.full(w.shape[0], np.inf)
    for c in WEIGHT_MSE_GRID:
        s = np.maximum(c * amax, 1e-12) / top
        err = ((w - np.clip(np.rint(w / s[:, None]), -top, top) * s[:, None]) ** 2).sum(axis=1)
        better = err < best_err
        best_err[better], best[better] = err[better], c * amax[better]
    return best


# a weight rounding: (integer model, its calibration, forward(ids, mask)) -> re-chooses the codes of its
# linears after the build (intsim.gptq); the scales, hence every multiplier, stay
@WEIGHT_ROUNDINGS.register("nearest", "round to nearest at the per-row scales (the codes quantize_weight gives)")
def _nearest(model, calib, forward) -> None:
    return None


@WEIGHT_ROUNDINGS.register("gptq", "GPTQ (Frantar et al. 2023): each linear's rounding error compensated in its "
                           "later columns, H from the linear's own integer operands over the calibration text")
def _gptq(model, calib, forward) -> None:
    from .gptq import gptq_model

    gptq_model(model, calib.batches(), forward)


def gemm_backends() -> tuple[str, ...]:
    from .gemm import BACKENDS
    return tuple(BACKENDS)


def choices() -> dict[str, tuple[str, ...]]:
    """Config field -> its allowed values, from the registries (what SimConfig validates against)."""
    return {"weight_scales": WEIGHT_SCALES.names(), "weight_rounding": WEIGHT_ROUNDINGS.names(),
            "act_scales": ACT_SCALES.names(),
            "gelu": ACTIVATIONS.names_for("gelu"), "silu": ACTIVATIONS.names_for("silu"), "softmax": SOFTMAXES.names(),
            "reciprocal": RECIPROCALS.names(), "layernorm": NORMS.names(), "outliers": OUTLIERS.choices(),
            "act_clip": CLIPS.names(), "gemm_backend": gemm_backends()}


def describe() -> str:
    """Every registry as text (``gqa sim --options``, docs)."""
    lines = []
    for reg in (ACTIVATIONS, SOFTMAXES, RECIPROCALS, NORMS, OUTLIERS, CLIPS, ACT_SCALES, WEIGHT_SCALES,
                WEIGHT_ROUNDINGS):
        lines.append(f"{reg.field} ({reg.kind}):")
        lines += [f"  {e.name:<12} {e.doc}" + (f" [{', '.join(reg.functions(e.name))}]"
                                                if isinstance(reg, ActivationRegistry) else "") for e in reg]
        if isinstance(reg, Composable):
            lines.append(f"  (choices: {', '.join(reg.choices())})")
    lines.append(f"gemm_backend: {', '.join(gemm_backends())}")
    return "\n".join(lines)
