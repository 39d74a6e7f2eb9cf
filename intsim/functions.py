"""The non-linear functions a PWL unit approximates, each with its default domain.

Float64 reference definitions (the "truth" every error is measured against). They live in
intsim because the simulator's own kernels (softmax, LayerNorm) and a table's error report
need them; :mod:`gqa_lut.functions` is the search-facing view of the same library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import special

from .errors import GQAError


@dataclass(frozen=True)
class Function:
    """A named real function on a closed domain ``[lo, hi]``."""

    name: str
    f: Callable[[np.ndarray], np.ndarray]
    domain: tuple[float, float]
    description: str = ""

    def __call__(self, x) -> np.ndarray:
        return np.asarray(self.f(np.asarray(x, dtype=np.float64)), dtype=np.float64)

    def with_domain(self, domain) -> "Function":
        return Function(self.name, self.f, check_domain(domain), self.description)


def check_domain(domain, field: str = "domain") -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in domain)
    except (TypeError, ValueError):
        raise GQAError(field, f"must be two numbers (lo, hi), got {domain!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or not lo < hi:
        raise GQAError(field, f"[{lo}, {hi}] is not a finite interval with lo < hi")
    return lo, hi


def _gelu(x):
    return 0.5 * x * (1.0 + special.erf(x / np.sqrt(2.0)))


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def _hswish(x):
    return x * np.clip(x + 3.0, 0.0, 6.0) / 6.0


def _silu(x):
    return x * special.expit(x)


def _reciprocal(x):
    with np.errstate(divide="ignore"):
        return 1.0 / x


def _rsqrt(x):
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 / np.sqrt(x)


FUNCTIONS: dict[str, Function] = {
    fn.name: fn
    for fn in [
        Function("gelu", _gelu, (-4.0, 4.0), "GELU, exact (erf) form"),
        Function("gelu_tanh", _gelu_tanh, (-4.0, 4.0), "GELU, tanh approximation"),
        Function("hswish", _hswish, (-4.0, 4.0), "hard swish x*relu6(x+3)/6"),
        Function("sigmoid", special.expit, (-8.0, 8.0), "logistic sigmoid"),
        Function("tanh", np.tanh, (-4.0, 4.0), "hyperbolic tangent"),
        Function("silu", _silu, (-4.0, 4.0), "SiLU / swish x*sigmoid(x)"),
        Function("exp", np.exp, (-8.0, 0.0), "exp on the non-positive inputs of a max-subtracted softmax"),
        Function("reciprocal", _reciprocal, (0.5, 4.0), "1/x"),
        Function("rsqrt", _rsqrt, (0.25, 4.0), "1/sqrt(x)"),
        Function("softplus", lambda x: np.logaddexp(0.0, x), (-8.0, 8.0), "log(1+exp(x))"),
    ]
}

# names the GQA-LUT reference uses for the same functions
ALIASES = {"sqrt_reci": "rsqrt", "reci": "reciprocal", "swish": "silu"}


def get_function(func, domain=None, field: str = "function") -> Function:
    """A library name (or GQA-LUT alias), a :class:`Function`, or a callable with ``domain``."""
    if isinstance(func, Function):
        fn = func
    elif isinstance(func, str):
        name = ALIASES.get(func, func)
        if name not in FUNCTIONS:
            raise GQAError(field, f"unknown function {func!r}",
                           f"use one of {', '.join(FUNCTIONS)}, or pass a callable with a domain")
        fn = FUNCTIONS[name]
    elif callable(func):
        if domain is None:
            raise GQAError("domain", "a user callable needs a domain", "pass domain=(lo, hi)")
        name = getattr(func, "__name__", "custom")
        fn = Function(name if name != "<lambda>" else "custom", func, check_domain(domain))
    else:
        raise GQAError(field, f"must be a name or a callable, got {type(func).__name__}")
    return fn.with_domain(domain) if domain is not None else fn
