"""PWL activations for quantization-aware fine-tuning, bit-identical to intsim at inference.

    >>> import torch, gqa_lut
    >>> from gqa_lut.nn import export_scales, fit_input_scales, replace_activations
    >>> table = gqa_lut.search("gelu", entries=8)
    >>> model = replace_activations(model, {torch.nn.GELU: table}, learn=True)
    >>> with fit_input_scales(model):        # absmax of each unit's input -> its exponent
    ...     model(*calibration_batch)
    >>> ...                                  # fine-tune as usual
    >>> export_scales(model)                 # {"blocks.0.gelu": 2, ...}
    >>> # the integer encoder takes this mapping as {"pwl_input_exp": export_scales(model)}

Forward of :class:`PWLActivation` at input scale ``2**-e`` (``e`` one of ``table.scales``),
exactly intsim's PWL unit (DESIGN.md "Canonical PWL semantics", :mod:`intsim.pwl`):

1. quantize: ``q = clamp(round_half_even(x * 2**e), code_min, code_max)`` on ``in_bits``
   codes. ``x * 2**e`` and the rounding are exact in the arithmetic used (float32 for
   float16, bfloat16 and float32 inputs, float64 for float64 inputs; codes are at most
   20 bits). NaN inputs give NaN outputs (intsim refuses NaN; a module propagates it);
2. segment: ``i = #{j : q >= S_j(e)}`` (``torch.searchsorted`` on ``table.segment_starts(e)``,
   so the datapath's ``segment_rule`` holds: ``q >= P_j`` for "ge", ``q > P_j`` for "gt");
3. accumulate: ``A = (K_i * q << slope_shift(e)) + (B_i << icpt_shift(e))`` in int64, exact;
4. output code: ``A`` at full precision, or ``saturate(round_shift(A, F(e) - out_frac,
   out_rounding))`` in ``s{out_bits}.{out_frac}`` when the datapath has ``out_bits``;
5. dequantize: ``y = code * 2**-output_frac(e)``, returned in the input's dtype.

Parity: ``y`` equals ``table.evaluate(q, e)`` (intsim's float64 output) cast to the input's
dtype, bit for bit. That cast is exact -- ``y`` *is* intsim's value -- whenever the output
code fits the dtype's significand: ``|code| <= 2**24`` for float32, which holds on the
default datapath (15-bit accumulators) and is reported by :attr:`PWLActivation.exact_float32`;
float64 inputs are exact up to 53-bit codes. Where float32 is not wide enough the module
dequantizes in float64 and rounds once to the input dtype.

Backward (straight-through estimators; nothing is differentiated through the integer ops):

- ``grad="function"`` (default, as the GQA-LUT reference operator): ``dy/dx = f'(x_hat)``,
  the float function's derivative (torch autograd on :data:`TORCH_FUNCTIONS`) at the
  quantized input ``x_hat = q * 2**-e``; non-finite derivatives (1/x at 0) count as 0;
- ``grad="pwl"``: ``dy/dx = K_i * 2**-slope_frac``, the selected segment's own slope.

Either way the gradient is zero where the quantizer clips: ``x * 2**e`` outside
``[code_min, code_max]``. With ``learn=True`` the scale is an LSQ-style parameter
``log2_scale`` (``s = 2**log2_scale``); the forward uses ``e`` = the member of
``table.scales`` nearest ``-log2_scale`` (ties to the larger ``e``), and the backward passes
straight through that rounding: ``dy/dlog2_scale = sum(g * f'(x_hat) * dQ/ds) * s * ln 2 *
scale_grad`` with LSQ's ``dQ/ds = q - x/s`` inside the code range and ``q`` (the clipped end
code) outside, and ``scale_grad = 1/sqrt(numel * code_max)`` (LSQ's gradient scale) unless
given. Reading the parameter costs one device synchronisation per forward on CUDA.

Every module counts saturations, never silently: ``n_clipped`` (input codes clipped by the
quantizer) and ``n_saturated`` (output codes clipped to ``out_bits``), both int64 buffers.

Against outlier channels (Nrusimha et al. 2024): :func:`quantize_inputs` adds QAT of every
Linear's input (learned clipping values) and :class:`KurtosisRegularizer` a per-token kurtosis
penalty on chosen layers' tensors, both options of the same fine-tuning loop::

    >>> quantize_inputs(model, bits=8)
    >>> with KurtosisRegularizer([blk.ln2 for blk in model.blocks], weight=1e-3) as kurt:
    ...     loss = task_loss(model(*batch)) + kurt.penalty()
    >>> remove_input_quantizers(model)       # the fine-tuned FP32 model, for calibration
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from intsim import GQAError, PWLTable
from intsim.functions import ALIASES

GRADS = ("function", "pwl")


# --- torch versions of the function library (intsim.functions) ------------------------------

def _gelu(x):
    return F.gelu(x)


def _gelu_tanh(x):
    return F.gelu(x, approximate="tanh")


def _exp(x):
    return torch.exp(x)


TORCH_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": _gelu,
    "gelu_tanh": _gelu_tanh,
    "hswish": F.hardswish,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "silu": F.silu,
    "exp": _exp,
    "reciprocal": torch.reciprocal,
    "rsqrt": torch.rsqrt,
    "softplus": F.softplus,
}

# modules replace_activations knows, and the table functions that may stand in for them
MODULE_FUNCTIONS: dict[type, tuple[str, ...]] = {
    nn.GELU: ("gelu", "gelu_tanh"),
    nn.SiLU: ("silu",),
    nn.Hardswish: ("hswish",),
    nn.Sigmoid: ("sigmoid",),
    nn.Tanh: ("tanh",),
    nn.Softplus: ("softplus",),
}


def torch_function(name: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The torch version of a library function (GQA-LUT aliases accepted), or None."""
    return TORCH_FUNCTIONS.get(ALIASES.get(name, name))


# --- argument checks ------------------------------------------------------------------------

def _check_table(table) -> PWLTable:
    """A PWLTable whose every scale the module can run exactly in int64 and float32 codes."""
    if not isinstance(table, PWLTable):
        raise GQAError("table", f"must be an intsim.PWLTable, got {type(table).__name__}",
                       "search one with gqa_lut.search(...) or load one with gqa_lut.load(path)")
    dp = table.datapath
    if dp.in_bits > 24:
        raise GQAError("table.datapath.in_bits", f"s{dp.in_bits} input codes do not fit float32's 24-bit significand",
                       "the module quantizes in float32; use in_bits <= 24")
    for e in table.scales:
        if dp.acc_bits(e) > 63:
            raise GQAError("table.datapath", f"at scale e={e} the accumulator needs {dp.acc_bits(e)} bits",
                           "the module holds accumulators in int64; narrow the formats or drop that scale")
        if dp.out_bits is not None and dp.out_frac - dp.acc_frac(e) > 61:
            raise GQAError("table.datapath.out_frac", f"{dp.out_frac} is {dp.out_frac - dp.acc_frac(e)} bits finer "
                           f"than the accumulator at e={e}", "shift left by at most 61 bits: lower out_frac")
    return table


def _check_exponent(e, table: PWLTable, field: str = "exp") -> int:
    if isinstance(e, bool) or not isinstance(e, (int, np.integer)):
        raise GQAError(field, f"must be an integer exponent e (scale 2**-e), got {e!r}",
                       "give exp=e, or scale=2.0**-e for a float")
    e = int(e)
    if e not in table.scales:
        raise GQAError(field, f"e={e} is not among the table's scales {list(table.scales)}",
                       f"pick one of {list(table.scales)}, or search a table that serves it "
                       f"(gqa_lut.search(..., scales=[..., {e}]))")
    return e


def scale_exponent(scale, field: str = "scale") -> int:
    """A power-of-two scale ``2**-e`` (a positive float) -> ``e``; anything else is refused."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)):
        raise GQAError(field, f"must be a positive power of two 2**-e, got {scale!r}")
    s = float(scale)
    if not math.isfinite(s) or s <= 0:
        raise GQAError(field, f"{scale!r} is not a positive finite number", "give a power of two such as 0.25 (e=2)")
    mantissa, exponent = math.frexp(s)  # s = mantissa * 2**exponent, mantissa in [0.5, 1)
    if mantissa != 0.5:
        e = 1 - exponent
        raise GQAError(field, f"{scale!r} is not a power of two 2**-e",
                       f"the PWL unit takes power-of-two input scales: use 2.0**-{e} or 2.0**-{e - 1}, or exp=e")
    return 1 - exponent


def _exponent_from_absmax(absmax: float, table: PWLTable) -> int:
    """The largest ``e`` of the scale set whose code range holds ``absmax``, else the smallest:
    :meth:`intsim.PWLDatapath.input_exponent`, the rule intsim's encoder picks scales by."""
    return table.datapath.input_exponent(absmax, table.scales)


def _nearest_scale(v: float, table: PWLTable) -> int:
    """The member of the scale set nearest ``v`` (ties to the larger exponent)."""
    if not math.isfinite(v):
        return max(table.scales) if v > 0 else min(table.scales)
    return min(table.scales, key=lambda e: (abs(e - v), -e))


# --- integer arithmetic on torch tensors (mirrors intsim.fixedpoint / intsim.pwl) -----------

def round_shift(x: torch.Tensor, shift: int, mode: str) -> torch.Tensor:
    """Mirrors :func:`intsim.fixedpoint.round_shift` on torch int64 tensors: ``x / 2**shift``
    rounded by ``mode`` (``shift <= 0``: left shift; right shifts up to 62). Tested equal to it
    over tie-heavy inputs."""
    if shift <= 0:
        return x << -shift
    floor_q = x >> shift
    if mode == "floor":
        return floor_q
    half = 1 << (shift - 1)
    rem = x & ((1 << shift) - 1)  # x - floor_q * 2**shift, in [0, 2**shift)
    if mode == "half_up":
        return floor_q + (rem >= half)
    if mode == "half_away":
        return floor_q + ((rem > half) | ((rem == half) & (x >= 0)))
    return floor_q + ((rem > half) | ((rem == half) & ((floor_q & 1) == 1)))


def _quant_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class _PWLFunction(torch.autograd.Function):
    """Forward: the integer unit (``unit._forward_real``); backward: the straight-through estimators."""

    @staticmethod
    def forward(ctx, x, log2_scale, unit, e):
        ctx.save_for_backward(x)
        ctx.unit, ctx.e = unit, e
        return unit._forward_real(x, e)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        (x,) = ctx.saved_tensors
        unit, e = ctx.unit, ctx.e
        dp = unit.table.datapath
        t = x.to(_quant_dtype(x.dtype)) * 2.0**e
        q = torch.round(t).clamp(dp.code_min, dp.code_max).nan_to_num(0.0)
        inside = (t >= dp.code_min) & (t <= dp.code_max)
        g = gy.to(t.dtype) * unit._derivative(q, e)
        gx = torch.where(inside, g, torch.zeros_like(g)).to(x.dtype) if ctx.needs_input_grad[0] else None
        gs = None
        if ctx.needs_input_grad[1]:
            dq_ds = torch.where(inside, q - t, q)  # LSQ: d(s * clamp(round(x/s)))/ds, straight through round
            factor = unit.scale_grad
            if factor is None:  # LSQ's gradient scale
                factor = 1.0 / math.sqrt(max(x.numel(), 1) * dp.code_max)
            gs = ((g * dq_ds).sum() * (2.0**-e * math.log(2.0) * factor)).to(unit.log2_scale.dtype)
        return gx, gs, None, None


# --- the module -----------------------------------------------------------------------------

class PWLActivation(nn.Module):
    """An activation computed by a PWL table on intsim's integer datapath (see the module docstring).

    Scale (exactly one way):
    - ``exp=e`` or ``scale=2.0**-e``: a fixed power-of-two input scale, ``e`` in ``table.scales``;
    - neither: fixed at the first batch's absmax (the largest ``e`` with ``absmax * 2**e <= code_max``),
      or by :func:`fit_input_scales`;
    - ``learn=True``: the learned parameter ``log2_scale`` (initialised from ``exp``/``scale`` if
      given, else from calibration or the first batch's absmax), rounded to the nearest scale of
      the table in every forward.

    ``grad``: ``"function"`` (STE against the float function; ``function`` overrides the torch
    callable looked up by the table's function name) or ``"pwl"`` (the segment's slope).
    ``scale_grad``: factor on the scale's gradient (default LSQ's ``1/sqrt(numel * code_max)``).
    """

    def __init__(self, table: PWLTable, *, exp: int | None = None, scale: float | None = None, learn: bool = False,
                 grad: str = "function", function: Callable | None = None, scale_grad: float | None = None):
        super().__init__()
        self.table = _check_table(table)
        if grad not in GRADS:
            raise GQAError("grad", f"unknown gradient {grad!r}", f"use one of {', '.join(GRADS)}")
        if function is not None and not callable(function):
            raise GQAError("function", f"must be a torch callable, got {type(function).__name__}")
        self.grad = grad
        self.function = function if function is not None else torch_function(table.function)
        if self.function is None and grad == "function":
            raise GQAError("function", f"no torch version of the table's function {table.function!r}",
                           "pass function=<torch callable>, or use grad='pwl'")
        if exp is not None and scale is not None:
            raise GQAError("scale", "given together with exp", "give the exponent e or the scale 2**-e, not both")
        if scale is not None:
            exp = _check_exponent(scale_exponent(scale), table, "scale")
        elif exp is not None:
            exp = _check_exponent(exp, table)
        if scale_grad is not None and (isinstance(scale_grad, bool) or not isinstance(scale_grad, (int, float))
                                       or not math.isfinite(scale_grad)):
            raise GQAError("scale_grad", f"must be a finite number, got {scale_grad!r}")
        self.learn = bool(learn)
        self.scale_grad = None if scale_grad is None else float(scale_grad)
        self._e: int | None = exp
        self._observing = False
        self._observed: float | None = None

        self.register_buffer("starts", torch.as_tensor(np.stack([table.segment_starts(e) for e in table.scales]),
                                                       dtype=torch.int64), persistent=False)
        self.register_buffer("slopes", torch.as_tensor(table.slopes, dtype=torch.int64), persistent=False)
        self.register_buffer("intercepts", torch.as_tensor(table.intercepts, dtype=torch.int64), persistent=False)
        self.register_buffer("n_clipped", torch.zeros((), dtype=torch.int64), persistent=False)
        self.register_buffer("n_saturated", torch.zeros((), dtype=torch.int64), persistent=False)
        if self.learn:
            self.log2_scale = nn.Parameter(torch.tensor(float(-exp) if exp is not None else 0.0))

    # --- scale -------------------------------------------------------------------------
    @property
    def exponent(self) -> int | None:
        """The current ``e`` (input scale ``2**-e``), or None before calibration / the first batch."""
        if self.learn and self._e is not None:
            self._e = _nearest_scale(-float(self.log2_scale.detach()), self.table)
        return self._e

    @property
    def scale(self) -> float | None:
        e = self.exponent
        return None if e is None else 2.0**-e

    def set_exponent(self, e: int) -> None:
        """Fix (or, learned, re-initialise) the input scale to ``2**-e``, ``e`` in ``table.scales``."""
        e = _check_exponent(e, self.table)
        self._e = e
        if self.learn:
            with torch.no_grad():
                self.log2_scale.fill_(float(-e))

    def _init_from(self, x: torch.Tensor) -> None:
        self.set_exponent(_exponent_from_absmax(_absmax(x), self.table))

    @property
    def exact_float32(self) -> bool:
        """Whether every output of every scale is exact in float32 (output codes within 2**24)."""
        return all(self._output_bound(e) <= 2**24 for e in self.table.scales)

    def _output_bound(self, e: int) -> int:
        dp = self.table.datapath
        if dp.out_bits is not None:
            return 1 << (dp.out_bits - 1)
        k = int(np.max(np.abs(self.table.slopes)))
        b = int(np.max(np.abs(self.table.intercepts)))
        return (k << (dp.in_bits - 1) << dp.slope_shift(e)) + (b << dp.icpt_shift(e))

    # --- integer datapath --------------------------------------------------------------
    def forward_codes(self, q: torch.Tensor, e: int) -> torch.Tensor:
        """Integer input codes (int64, ``in_bits`` range) -> the unit's output codes at scale ``e``
        (int64, ``table.output_frac(e)`` fractional bits): ``table.output_codes(q, e)`` in torch."""
        e = _check_exponent(e, self.table, "e")
        dp = self.table.datapath
        if q.dtype.is_floating_point or q.dtype == torch.bool or q.is_complex():
            raise GQAError("codes", f"input codes must be integers, got {q.dtype}", "quantize inputs first")
        q = q.to(torch.int64)
        if q.numel() and (int(q.min()) < dp.code_min or int(q.max()) > dp.code_max):
            raise GQAError("codes", f"leave the s{dp.in_bits} range [{dp.code_min}, {dp.code_max}]")
        return self._codes(q, e)

    def _segment(self, q: torch.Tensor, e: int) -> torch.Tensor:
        """Mirrors the segment primitive (:meth:`intsim.PWLDatapath.segment_starts`):
        ``i = #{j : q >= S_j(e)}`` for int64 codes ``q``."""
        return torch.searchsorted(self.starts[self.table.scales.index(e)], q, right=True)

    def _codes(self, q: torch.Tensor, e: int, count: bool = False) -> torch.Tensor:
        dp = self.table.datapath
        i = self._segment(q, e)
        acc = (self.slopes[i] * q << dp.slope_shift(e)) + (self.intercepts[i] << dp.icpt_shift(e))
        if dp.out_bits is None:
            return acc
        shift = dp.acc_frac(e) - dp.out_frac
        if shift < 0:  # beyond the output range everything saturates: clip so the left shift cannot overflow
            lim = ((1 << (dp.out_bits - 1)) >> -shift) + 1
            acc = acc.clamp(-lim, lim)
        y = round_shift(acc, shift, dp.out_rounding)
        out = y.clamp(dp.out_format.min_int, dp.out_format.max_int)
        if count:
            self.n_saturated += (out != y).sum()
        return out

    def _forward_real(self, x: torch.Tensor, e: int) -> torch.Tensor:
        dp = self.table.datapath
        t = x.to(_quant_dtype(x.dtype)) * 2.0**e
        r = torch.round(t)
        self.n_clipped += ((r < dp.code_min) | (r > dp.code_max)).sum()
        q = r.clamp(dp.code_min, dp.code_max).nan_to_num(0.0).to(torch.int64)
        code = self._codes(q, e, count=True)
        wide = x.dtype == torch.float64 or self._output_bound(e) > 2**24
        y = code.to(torch.float64 if wide else torch.float32) * 2.0 ** -self.table.output_frac(e)
        y = torch.where(torch.isnan(x), torch.full_like(y, math.nan), y)
        return y.to(x.dtype)

    def _derivative(self, q: torch.Tensor, e: int) -> torch.Tensor:
        """``dy/dx`` used by the backward at the quantized input (``q``: float codes)."""
        if self.grad == "pwl":
            i = self._segment(q.to(torch.int64), e)
            return self.slopes[i].to(q.dtype) * 2.0 ** -self.table.datapath.slope_frac
        with torch.enable_grad():
            xh = (q * 2.0**-e).detach().requires_grad_(True)
            (d,) = torch.autograd.grad(self.function(xh).sum(), xh)
        return torch.where(torch.isfinite(d), d, torch.zeros_like(d))

    # --- forward -----------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(x) or not x.dtype.is_floating_point:
            raise GQAError("input", f"must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}",
                           "integer codes go through forward_codes(q, e)")
        if self._observing:
            self._observed = max(self._observed or 0.0, _absmax(x))
            if self.function is None:
                raise GQAError("function", f"calibration runs the float function, and {self.table.function!r} has "
                               "no torch version", "pass function=<torch callable> to the module")
            return self.function(x)
        if self._e is None:
            self._init_from(x)
        e = self.exponent
        return _PWLFunction.apply(x, self.log2_scale if self.learn else None, self, e)

    # --- state -------------------------------------------------------------------------
    def get_extra_state(self):
        return {"exp": self._e}

    def set_extra_state(self, state):
        e = state.get("exp") if isinstance(state, dict) else None
        if e is None:
            self._e = None
        else:
            self._e = _check_exponent(e, self.table, "state.exp")

    def extra_repr(self) -> str:
        e = self.exponent
        return (f"{self.table.function}, entries={self.table.entries}, exp={e}, learn={self.learn}, "
                f"grad={self.grad!r}, scales={list(self.table.scales)}")


def _absmax(x: torch.Tensor) -> float:
    if x.numel() == 0:
        return 0.0
    return float(torch.nan_to_num(x.detach().abs(), nan=0.0).max())


# --- model-level helpers --------------------------------------------------------------------

def _check_mapping(mapping) -> dict:
    if not isinstance(mapping, Mapping) or not mapping:
        raise GQAError("mapping", "must be a non-empty {module type: table} dict", "e.g. {torch.nn.GELU: table}")
    for key, table in mapping.items():
        name = getattr(key, "__name__", repr(key))
        if not (isinstance(key, type) and issubclass(key, nn.Module)):
            raise GQAError("mapping", f"key {key!r} is not a torch.nn.Module type", "e.g. {torch.nn.GELU: table}")
        if not isinstance(table, PWLTable):
            raise GQAError(f"mapping[{name}]", f"must be an intsim.PWLTable, got {type(table).__name__}")
        fn = ALIASES.get(table.function, table.function)
        allowed = next((v for k, v in MODULE_FUNCTIONS.items() if issubclass(key, k)), None)
        if allowed is not None and fn not in allowed:
            raise GQAError(f"mapping[{name}]", f"maps {name} to a table for {table.function!r}",
                           f"give a table searched for {' or '.join(allowed)}")
    return dict(mapping)


def replace_activations(model: nn.Module, mapping: Mapping[type, PWLTable], **options) -> nn.Module:
    """Swap every module that is an instance of a key of ``mapping`` for a :class:`PWLActivation`.

    Recursive, in place; returns the model (or the new module when ``model`` itself matches).
    ``options`` go to every :class:`PWLActivation` (``exp``, ``scale``, ``learn``, ``grad``, ...).
    New modules move to the device of the model's first parameter. Refuses a mapping that
    replaces nothing, and a table whose function does not match a known module (nn.GELU to an
    exp table).
    """
    mapping = _check_mapping(mapping)
    if not isinstance(model, nn.Module):
        raise GQAError("model", f"must be a torch.nn.Module, got {type(model).__name__}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else None

    def make(module):
        for key, table in mapping.items():
            if isinstance(module, key) and not isinstance(module, PWLActivation):
                unit = PWLActivation(table, **options)
                return unit.to(device) if device is not None else unit
        return None

    root = make(model)
    if root is not None:
        return root
    replaced = []

    def swap(module, prefix):
        for name, child in list(module.named_children()):
            new = make(child)
            if new is not None:
                setattr(module, name, new)
                replaced.append(prefix + name)
            else:
                swap(child, prefix + name + ".")

    swap(model, "")
    if not replaced:
        names = ", ".join(getattr(k, "__name__", repr(k)) for k in mapping)
        raise GQAError("mapping", f"the model holds no {names} module", "check the module types the model uses")
    return model


def pwl_modules(model: nn.Module) -> dict[str, PWLActivation]:
    """``{name: module}`` of every PWLActivation in ``model`` (named as ``model.named_modules()``)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, PWLActivation)}


def export_scales(model: nn.Module) -> dict[str, int]:
    """``{module name: e}`` of every PWLActivation (input scale ``2**-e``): intsim's ``pwl_input_exp``."""
    units = pwl_modules(model)
    if not units:
        raise GQAError("model", "holds no PWLActivation", "call replace_activations first")
    out = {}
    for name, unit in units.items():
        e = unit.exponent
        if e is None:
            raise GQAError(name or "model", "has no input scale yet",
                           "fit_input_scales on a forward pass, or give exp=e")
        out[name] = e
    return out


def set_scales(model: nn.Module, scales: Mapping[str, int]) -> None:
    """Set the exponents of named PWLActivations (the inverse of :func:`export_scales`)."""
    units = pwl_modules(model)
    for name, e in scales.items():
        if name not in units:
            raise GQAError(f"scales[{name!r}]", "names no PWLActivation of the model",
                           f"known: {', '.join(units) or 'none'}")
        units[name].set_exponent(e)


@contextmanager
def fit_input_scales(model: nn.Module):
    """Within the block every PWLActivation runs its float function and records its input's absmax;
    on leaving, each unit that saw input takes the largest ``e`` of its table's scales with
    ``absmax * 2**e <= code_max`` (learned scales: the initial value). Yields ``{name: module}``."""
    units = pwl_modules(model)
    if not units:
        raise GQAError("model", "holds no PWLActivation", "call replace_activations first")
    for unit in units.values():
        unit._observing, unit._observed = True, None
    try:
        yield units
    except BaseException:
        for unit in units.values():
            unit._observing = False
        raise
    for unit in units.values():
        unit._observing = False
        if unit._observed is not None:
            unit.set_exponent(_exponent_from_absmax(unit._observed, unit.table))


# --- kurtosis regularization and input QAT (Nrusimha et al. 2024) -----------------------------------

def kurtosis(x: torch.Tensor, dim: int = -1, eps: float = 1e-12) -> torch.Tensor:
    """Kurtosis of ``x`` along ``dim``: ``m4 / m2**2`` with ``m_k = mean((x - mean x)**k)`` (3 for a
    Gaussian, 1.8 for a uniform, about ``C`` for one outlier channel among ``C``). Differentiable."""
    d = x - x.mean(dim=dim, keepdim=True)
    d2 = d * d
    m2 = d2.mean(dim=dim)
    return (d2 * d2).mean(dim=dim) / (m2 * m2 + eps)


class KurtosisRegularizer:
    """Activation kurtosis regularization (Nrusimha et al. 2024, "Mitigating the Impact of Outlier
    Channels for Language Model Quantization with Activation Regularization", arXiv 2404.03605):
    the loss gains ``weight * mean_l mean_t kappa(x_{l,t})``, ``kappa`` the kurtosis of token ``t``'s
    vector at observed tensor ``l`` over its channels (:func:`kurtosis`); with ``target`` the
    penalty is ``(kappa - target)**2`` instead (KURE-style). Heavy-tailed tokens -- one channel
    orders of magnitude above the rest -- have kurtosis near the channel count, so the penalty
    pushes back against outlier channels where the layers write them.

    ``modules``: the modules whose tensors are observed, with ``side`` ``"out"`` (their outputs,
    the paper's layer outputs) or ``"in"`` (their first input: a norm's input is the residual sum
    in a post-LN model). Use as a context manager or call :meth:`remove`. After a forward,
    :meth:`penalty` (``mask``: (B, T) real tokens of (B, T, C) tensors) returns the term to add.
    """

    def __init__(self, modules, weight: float = 1e-3, side: str = "out", target: float | None = None):
        if side not in ("in", "out"):
            raise GQAError("side", f"{side!r} is neither 'in' nor 'out'", "observe module inputs or outputs")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise GQAError("weight", f"must be a finite number >= 0, got {weight!r}")
        modules = list(modules)
        if not modules or not all(isinstance(m, nn.Module) for m in modules):
            raise GQAError("modules", "must be a non-empty list of torch modules", "e.g. the model's LayerNorms")
        self.weight, self.target, self.side = float(weight), target, side
        self._seen: list[torch.Tensor] = []
        hook = self._hook_in if side == "in" else self._hook_out
        self._handles = [m.register_forward_pre_hook(hook) if side == "in" else m.register_forward_hook(hook)
                         for m in modules]

    def _hook_in(self, mod, inp):
        self._seen.append(inp[0])

    def _hook_out(self, mod, inp, out):
        self._seen.append(out)

    def penalty(self, mask: torch.Tensor | None = None, clear: bool = True) -> torch.Tensor:
        """``weight`` times the mean per-token kurtosis term over every tensor seen since the last call."""
        if not self._seen:
            raise GQAError("KurtosisRegularizer", "has seen no forward pass", "run the model before penalty()")
        terms = []
        for x in self._seen:
            k = kurtosis(x.float())
            if self.target is not None:
                k = (k - self.target) ** 2
            if mask is not None and k.shape == mask.shape:
                m = mask.to(k.dtype)
                terms.append((k * m).sum() / m.sum().clamp(min=1))
            else:
                terms.append(k.mean())
        if clear:
            self._seen = []
        return self.weight * torch.stack(terms).mean()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self._seen = [], []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


class InputQuantizer(nn.Module):
    """Fake quantization of a layer's input for QAT: symmetric ``bits``-bit codes at step
    ``s = c / (2**(b-1) - 1)`` with a learned clip ``c`` (the paper's QAT with learned clipping
    values): ``y = clamp(round(x / s), -top, top) * s``, round straight through. The clip's gradient
    is LSQ's ``round(x/s) - x/s`` (over ``top``) inside the range and PACT's ``sign(x)`` outside.
    ``c`` starts at the first batch's max |x| (or ``init``)."""

    def __init__(self, bits: int = 8, init: float | None = None):
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
            raise GQAError("bits", f"must be an integer in [2, 16], got {bits!r}")
        self.bits, self.top = bits, (1 << (bits - 1)) - 1
        self.clip = nn.Parameter(torch.tensor(float(init) if init is not None else 0.0))
        self._ready = init is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._ready:
            with torch.no_grad():
                self.clip.fill_(max(_absmax(x), 1e-8))
            self._ready = True
        s = self.clip.abs().clamp(min=1e-8) / self.top
        xs = x / s
        q = xs + (torch.round(xs) - xs).detach()          # round, straight through
        return torch.clamp(q, -self.top, self.top) * s


def quantize_inputs(model: nn.Module, bits: int = 8, types=(nn.Linear,)) -> dict[str, InputQuantizer]:
    """QAT of the inputs of every module of ``types`` (default every Linear): an :class:`InputQuantizer`
    applied by a forward pre-hook, registered as the submodule ``input_quant`` (its clip trains with
    the model). Returns ``{module name: quantizer}``; :func:`remove_input_quantizers` undoes it."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, tuple(types)) and not hasattr(mod, "input_quant"):
            mod.input_quant = InputQuantizer(bits)
            mod._input_quant_hook = mod.register_forward_pre_hook(lambda m, inp: (m.input_quant(inp[0]),) + inp[1:])
            out[name] = mod.input_quant
    if not out:
        raise GQAError("model", f"holds no {', '.join(t.__name__ for t in types)} module", "check the types")
    param = next(model.parameters(), None)
    if param is not None:
        for q in out.values():
            q.to(param.device)
    return out


def remove_input_quantizers(model: nn.Module) -> int:
    """Undo :func:`quantize_inputs` (the FP32 model back, trained weights kept); returns how many."""
    n = 0
    for mod in model.modules():
        if hasattr(mod, "_input_quant_hook"):
            mod._input_quant_hook.remove()
            del mod._input_quant_hook
            del mod.input_quant
            n += 1
    return n
