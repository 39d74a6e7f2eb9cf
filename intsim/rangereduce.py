"""Reciprocal and reciprocal square root by range reduction: leading one, PWL on the mantissa, shift.

Specification, for an integer ``s > 0`` (a softmax denominator, a LayerNorm variance sum):

- leading-one detection: ``k = msb(s) = floor(log2 s)``;
- reciprocal: ``s = m * 2**k`` with ``m in [1, 2)``; the mantissa code is ``s`` aligned to
  ``e_r`` fractional bits by truncation (a right shift drops bits, a left shift is exact),
  ``M = floor(s * 2**(e_r - k))`` in ``[2**e_r, 2**(e_r+1))``; the table (domain [1, 2],
  served at scale ``e_r``) gives ``R ~ 2**F_r / m``; then ``1/s ~ R * 2**-(F_r + k)``;
- rsqrt: ``s = m * 4**j`` with ``j = floor(k / 2)`` and ``m in [1, 4)``;
  ``M = floor(s * 2**(e_r - 2j))``; the table (domain [1, 4]) gives ``R ~ 2**F_r / sqrt(m)``;
  then ``1/sqrt(s) ~ R * 2**-(F_r + j)``.

Each function returns ``(R, shift)`` so callers multiply by ``R`` and shift right by ``shift``
with their own rounding. The alternative to a table is an integer divider (softmax) or I-BERT's
Newton integer square root (:func:`isqrt_newton`, LayerNorm).
"""

from __future__ import annotations

import numba
import numpy as np

from .errors import GQAError
from .pwl import pwl1, unit_constants


@numba.njit(cache=True, inline="always")
def msb(x):
    """Index of the leading one of ``x > 0`` (``floor(log2 x)``); -1 for 0."""
    n = -1
    while x > 0:
        x >>= 1
        n += 1
    return n


@numba.njit(cache=True, inline="always")
def _align(s, shift):
    # s >= 0: a right shift by 63 already gives 0 (LLVM's shift by >= 64 bits is undefined)
    return s << shift if shift >= 0 else s >> min(-shift, 63)


@numba.njit(cache=True, inline="always")
def reciprocal1(s, u, e_r, f_r):
    k = msb(s)
    return pwl1(_align(s, e_r - k), u), f_r + k


@numba.njit(cache=True, inline="always")
def rsqrt1(s, u, e_r, f_r):
    j = msb(s) >> 1
    return pwl1(_align(s, e_r - 2 * j), u), f_r + j


@numba.njit(cache=True, inline="always")
def isqrt_newton(n):
    """``floor(sqrt(n))`` for ``n >= 0`` by Newton's iteration on integers (I-BERT's i-sqrt).

    Starts above the root at ``2**(floor(msb(n)/2) + 1)``; ``x <- (x + n // x) // 2`` decreases
    strictly until the first non-decreasing step, where ``x`` is the floor of the root.
    Returns ``(root, iterations)``.
    """
    if n == 0:
        return 0, 0
    x = np.int64(1) << ((msb(n) >> 1) + 1)
    it = 0
    while True:
        it += 1
        y = (x + n // x) >> 1
        if y >= x:
            return x, it
        x = y


class MantissaTable:
    """A PWL table on the mantissa range, fixed at one scale ``e_r``: the constants the kernels need."""

    def __init__(self, table, kind: str):
        lo, hi = {"reciprocal": (1.0, 2.0), "rsqrt": (1.0, 4.0)}[kind]
        if table.domain[0] > lo or table.domain[1] < hi:
            raise GQAError(f"{kind} table", f"covers {table.domain}, the mantissa needs [{lo:g}, {hi:g}]",
                           f"search the table on domain ({lo:g}, {hi:g})")
        dp = table.datapath
        # the largest scale whose codes still hold the whole mantissa range: the most mantissa bits
        fits = [e for e in table.scales if hi * 2**e - 1 <= dp.code_max]
        if not fits:
            raise GQAError(f"{kind} table", f"no scale in {list(table.scales)} holds [{lo:g}, {hi:g}) "
                           f"in s{dp.in_bits} codes", "widen in_bits or add a smaller scale")
        self.table, self.kind = table, kind
        self.e = max(fits)
        self.frac = table.output_frac(self.e)
        self.unit = unit_constants(table, self.e)

    def __call__(self, s):
        """``(R, shift)`` for an array of positive integers (the slow, vectorised path for tests)."""
        s = np.asarray(s, np.int64)
        return _map2(s.ravel(), self.unit, self.e, self.frac, self.kind == "rsqrt")


@numba.njit(cache=True)
def _map2(s, u, e_r, f_r, is_rsqrt):
    r = np.empty(s.shape[0], np.int64)
    sh = np.empty(s.shape[0], np.int64)
    for i in range(s.shape[0]):
        if is_rsqrt:
            r[i], sh[i] = rsqrt1(s[i], u, e_r, f_r)
        else:
            r[i], sh[i] = reciprocal1(s[i], u, e_r, f_r)
    return r, sh
