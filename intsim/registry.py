"""Every choice of the integer datapath in one place: kernel kind -> implementations, outlier methods.

A registry maps names to implementations (and a one-line description). The config's validation
(:data:`intsim.config.CHOICES`), the sweep's MiniLM config axis, the CLI's listings and the docs
all read these, so adding a kernel is one registration here (plus its module)::

    ACTIVATIONS.register("mine", "my integer GELU", lambda cfg, absmax, site: MyGelu(absmax, cfg.act_bits))

Kinds and the interface of their implementations:

- ``ACTIVATIONS`` (``SimConfig.gelu``): ``make(cfg, in_absmax, site) -> kernel`` with the
  interface of :mod:`intsim.gelu` (``in_bits``, ``in_scale``, ``out_scale``, ``kernel(q, stats, name)``);
  ``site`` names the activation (``pwl_input_exp`` keys). ``cfg.gelu_table`` is the table of the slot.
- ``SOFTMAXES`` (``SimConfig.softmax``): ``make(cfg, in_scale) -> kernel`` with
  ``kernel(scores, key_mask, stats, name, causal=False)`` (:func:`intsim.softmax.score_rows`).
- ``RECIPROCALS`` (``SimConfig.reciprocal``): the PWL softmax's normalisation.
- ``NORMS`` (``SimConfig.layernorm``): ``make(cfg) -> kernel`` with the interface of
  :class:`intsim.layernorm.IntLayerNorm` (``kernel(x, out1, out2=None, stats, name)``).
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


class Composable(Registry):
    """A registry whose choices are ``none`` or any of its entries joined by ``+`` (registration order)."""

    NONE = "none"

    def choices(self) -> tuple[str, ...]:
        names = self.names()
        combos = [c for r in range(1, len(names) + 1) for c in itertools.combinations(names, r)]
        return (self.NONE, *("+".join(c) for c in sorted(combos, key=len)))

    def parse(self, choice: str) -> frozenset[str]:
        """The set of methods a choice enables (``none``: the empty set)."""
        if choice not in self.choices():
            raise GQAError(self.field, f"{choice!r} is not an option", f"use one of {', '.join(self.choices())}")
        return frozenset() if choice == self.NONE else frozenset(choice.split("+"))


# --- the registrations ------------------------------------------------------------------------------

ACTIVATIONS = Registry("activation", "gelu")
SOFTMAXES = Registry("softmax", "softmax")
RECIPROCALS = Registry("reciprocal", "reciprocal")
NORMS = Registry("norm", "layernorm")
OUTLIERS = Composable("outlier method", "outliers")
CLIPS = Registry("clipping range", "act_clip")
ACT_SCALES = Registry("activation scale", "act_scales")
WEIGHT_SCALES = Registry("weight scale", "weight_scales")


@ACTIVATIONS.register("pwl", "the PWL unit on the slot's table (power-of-two input scale)")
def _pwl_activation(cfg, in_absmax: float, site: str):
    from .gelu import PWLGelu
    return PWLGelu(in_absmax, cfg.gelu_table, e=cfg.pwl_input_exp.get(site))


@ACTIVATIONS.register("ibert", "I-BERT's i-GELU (second-order polynomial erf)")
def _ibert_activation(cfg, in_absmax: float, site: str):
    from .ibert import IBertGelu
    return IBertGelu(in_absmax, in_bits=cfg.act_bits)


@ACTIVATIONS.register("ivit", "I-ViT's ShiftGELU (shift-based sigmoid)")
def _ivit_activation(cfg, in_absmax: float, site: str):
    from .ivit import ShiftGelu
    return ShiftGelu(in_absmax, in_bits=cfg.act_bits)


@SOFTMAXES.register("pwl", "PWL exp, integer sum, reciprocal (see RECIPROCALS)")
def _pwl_softmax(cfg, in_scale: float):
    from .softmax import IntSoftmax
    return IntSoftmax(in_scale, cfg.exp_table, cfg.reciprocal, cfg.recip_table)


@SOFTMAXES.register("ibert", "I-BERT's i-exp softmax with an integer divider")
def _ibert_softmax(cfg, in_scale: float):
    from .ibert import IBertSoftmax
    return IBertSoftmax(in_scale)


@SOFTMAXES.register("ivit", "I-ViT's Shiftmax (ShiftExp, IntDiv)")
def _ivit_softmax(cfg, in_scale: float):
    from .ivit import Shiftmax
    return Shiftmax(in_scale)


RECIPROCALS.register("pwl", "leading one, PWL table on the mantissa, shift", "pwl")
RECIPROCALS.register("divider", "an integer divider", "divider")


@NORMS.register("pwl", "LayerNorm, rsqrt by leading one, PWL table on the mantissa, shift")
def _pwl_norm(cfg):
    from .layernorm import IntLayerNorm
    return IntLayerNorm("pwl", cfg.rsqrt_table, cfg.ln_d_bits)


@NORMS.register("newton", "LayerNorm, I-BERT's Newton integer square root and a divider")
def _newton_norm(cfg):
    from .layernorm import IntLayerNorm
    return IntLayerNorm("newton", cfg.rsqrt_table, cfg.ln_d_bits)


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

CLIPS.register("percentile", "the calib_percentile of |x| (a transformed norm copy: its max)", "percentile")
CLIPS.register("mse", "the clip minimising the tensor's quantization MSE (fine histogram)", "mse")
CLIPS.register("token", "Outlier Suppression's token-wise clipping: quantiles of the token maxima, refined", "token")


@ACT_SCALES.register("dyadic", "absmax / (2**(b-1) - 1), applied by dyadic multipliers")
def _dyadic_scale(absmax: float, bits: int) -> float:
    return max(float(absmax), 1e-8) / ((1 << (bits - 1)) - 1)


@ACT_SCALES.register("pot", "the dyadic scale rounded up to a power of two")
def _pot_scale(absmax: float, bits: int) -> float:
    return 2.0 ** math.ceil(math.log2(_dyadic_scale(absmax, bits)))


WEIGHT_SCALES.register("per_channel", "symmetric, one scale per output channel", True)
WEIGHT_SCALES.register("per_tensor", "symmetric, one scale per weight matrix", False)


def gemm_backends() -> tuple[str, ...]:
    from .gemm import BACKENDS
    return tuple(BACKENDS)


def choices() -> dict[str, tuple[str, ...]]:
    """Config field -> its allowed values, from the registries (what SimConfig validates against)."""
    return {"weight_scales": WEIGHT_SCALES.names(), "act_scales": ACT_SCALES.names(),
            "gelu": ACTIVATIONS.names(), "softmax": SOFTMAXES.names(), "reciprocal": RECIPROCALS.names(),
            "layernorm": NORMS.names(), "outliers": OUTLIERS.choices(), "act_clip": CLIPS.names(),
            "gemm_backend": gemm_backends()}


def describe() -> str:
    """Every registry as text (``gqa sim --options``, docs)."""
    lines = []
    for reg in (ACTIVATIONS, SOFTMAXES, RECIPROCALS, NORMS, OUTLIERS, CLIPS, ACT_SCALES, WEIGHT_SCALES):
        lines.append(f"{reg.field} ({reg.kind}):")
        lines += [f"  {e.name:<12} {e.doc}" for e in reg]
        if isinstance(reg, Composable):
            lines.append(f"  (choices: {', '.join(reg.choices())})")
    lines.append(f"gemm_backend: {', '.join(gemm_backends())}")
    return "\n".join(lines)
