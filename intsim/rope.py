"""Integer rotary position embedding (RoPE): fixed-point cos/sin constants, the rotation as integer MACs.

Specification (the FP32 reference :func:`intsim.llama.apply_rope`: ADJACENT pairs ``(2i, 2i+1)``
of each head, the GGUF file's layout), for codes ``x`` of shape ``(B, H, T, d)`` (signed
``in_bits``, real value ``x * s_in``) at absolute positions ``p`` (``(T,)``; the KV cache decodes at
``p > 0``):

1. constants (offline: a ROM of ``d/2`` cos/sin pairs per position), ``W = rope_bits`` signed,
   ``W - 1`` fractional bits:
   ``theta_i = base ** (-2i / d)`` (float64, Python's ``**``), ``a = p * theta_i`` (float64),
   ``c = clip(round_half_even(cos(a) * 2**(W-1)), +-(2**(W-1) - 1))`` (libm's ``cos``), ``s`` likewise
   from ``sin(a)``
   (the clip only moves ``cos = +-1`` by one code: the format has no ``+1``).
2. rotation, exact in int64 (``|y| < 2**(in_bits + W - 1)``, within int32 as ``in_bits + W <= 31``
   is checked)::

       y_{2i}   = x_{2i} c_i - x_{2i+1} s_i
       y_{2i+1} = x_{2i} s_i + x_{2i+1} c_i

   at real scale ``s_in * 2**-(W-1)``.
3. one requantization to the output format (signed ``out_bits`` at ``s_out``):
   ``o = saturate(RDBPOT(SRDHM(y, M0), n), s{out_bits})`` with ``(M0, n)`` the dyadic multiplier of
   ``s_in * 2**-(W-1) / s_out`` (:func:`intsim.fixedpoint.requantize_channels`, saturations counted).

Vectorised over every head and token (numpy); the constants of a call's positions are computed
once per call. Rotation preserves norms, so ``s_out = s_in`` never saturates more than the
input's own range allows (``|o| <= sqrt(2) * 2**(in_bits-1)`` at most: a saturation is counted).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .errors import GQAError
from .fixedpoint import dyadic_multiplier, requantize_channels


def rope_constants(positions, head_dim: int, base: float, rope_bits: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """The fixed-point ``(cos, sin)`` codes of step 1, each int64 ``(T, head_dim/2)``."""
    rows = [_rope_row(int(p), head_dim, float(base), rope_bits) for p in np.asarray(positions).tolist()]
    if not rows:
        return np.zeros((0, head_dim // 2), np.int64), np.zeros((0, head_dim // 2), np.int64)
    return np.stack([c for c, _ in rows]), np.stack([s for _, s in rows])       # (T, d/2) each


@functools.lru_cache(maxsize=1 << 16)
def _rope_row(p: int, head_dim: int, base: float, rope_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """One position's ROM row. libm's ``cos``/``sin`` per element, not numpy's: numpy dispatches its
    float64 ``cos``/``sin`` to SIMD code chosen by the running CPU, whose last bits differ, and the
    constants must be the same integers on every machine."""
    one, top = 2.0 ** (rope_bits - 1), (1 << (rope_bits - 1)) - 1
    a = [p * base ** (-(2 * i) / head_dim) for i in range(head_dim // 2)]
    c = np.clip(np.rint(np.array([math.cos(v) for v in a]) * one), -top, top).astype(np.int64)
    s = np.clip(np.rint(np.array([math.sin(v) for v in a]) * one), -top, top).astype(np.int64)
    c.flags.writeable = s.flags.writeable = False                      # cached: shared by every call
    return c, s


class IntRoPE:
    """RoPE on integer codes (module docstring): ``rope(x, positions) -> codes at out_scale``."""

    def __init__(self, head_dim: int, base: float, in_scale: float, out_scale: float, out_bits: int = 8,
                 rope_bits: int = 16, in_bits: int = 8):
        if head_dim % 2 or head_dim < 2:
            raise GQAError("head_dim", f"{head_dim} is not a positive even number", "RoPE rotates pairs")
        if rope_bits < 2:
            raise GQAError("rope_bits", f"{rope_bits} is below 2", "16 (15 fraction bits) is the default")
        if not 2 <= in_bits <= 16 or in_bits + rope_bits > 31:
            raise GQAError("rope_bits", f"in_bits {in_bits} + rope_bits {rope_bits} exceed the 31 bits of the "
                           "int32 rotation accumulator", f"use rope_bits <= {31 - in_bits}")
        if not 2 <= out_bits <= 32:
            raise GQAError("out_bits", f"{out_bits} is outside [2, 32]", "int8 (8) or wider")
        if not (math.isfinite(base) and base > 1):
            raise GQAError("rope_base", f"{base!r} is not a number above 1", "Llama uses 10000, SmolLM2 100000")
        self.head_dim, self.base, self.rope_bits, self.in_bits, self.out_bits = head_dim, base, rope_bits, in_bits, out_bits
        self.in_scale, self.out_scale = float(in_scale), float(out_scale)
        self.m0, self.n = dyadic_multiplier(self.in_scale * 2.0 ** -(rope_bits - 1) / self.out_scale)

    def __call__(self, x, positions, stats=None, name="rope"):
        """codes ``x`` (B, H, T, d) at absolute ``positions`` (T,) -> codes (B, H, T, d) at ``out_scale``."""
        x = np.asarray(x)
        positions = np.asarray(positions)
        if x.ndim != 4 or x.shape[-1] != self.head_dim or x.dtype.kind not in "iu":
            raise GQAError(name, f"is {x.dtype} of shape {x.shape}",
                           f"give integer codes (B, heads, T, {self.head_dim})")
        if positions.shape != (x.shape[2],) or positions.dtype.kind not in "iu" or (positions < 0).any():
            raise GQAError("positions", f"has shape {positions.shape} ({positions.dtype}) for {x.shape[2]} tokens",
                           "give one non-negative integer position per token")
        lo, hi = -(1 << (self.in_bits - 1)), (1 << (self.in_bits - 1)) - 1
        if x.size and (x.min() < lo or x.max() > hi):
            raise GQAError(name, f"holds codes outside s{self.in_bits}", f"give codes in [{lo}, {hi}]")
        c, s = rope_constants(positions, self.head_dim, self.base, self.rope_bits)   # (T, d/2) each
        x0 = x[..., 0::2].astype(np.int64)                                         # (B, H, T, d/2)
        x1 = x[..., 1::2].astype(np.int64)
        y = np.empty(x.shape, np.int64)                                            # (B, H, T, d)
        y[..., 0::2] = x0 * c - x1 * s
        y[..., 1::2] = x0 * s + x1 * c
        out, sat, ovf, peak = requantize_channels(y.reshape(-1, self.head_dim), None, self.m0, self.n, self.out_bits)
        if stats is not None:
            n = y.size
            stats.count("mul", f"{name}.rotate", 2 * n, a_bits=self.in_bits, b_bits=self.rope_bits)
            stats.count("add", f"{name}.rotate", n, bits=self.in_bits + self.rope_bits)
            stats.count("mul", f"{name}.requant", n, a_bits=32, b_bits=32)
            stats.accumulator(f"{name}.acc", peak, self.in_bits + self.rope_bits, ovf)
            stats.saturated(f"{name}.out", sat)
        return out.reshape(x.shape)
