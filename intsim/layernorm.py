"""Integer-only LayerNorm and RMSNorm with declared widths, rsqrt by range reduction (or Newton), integer gamma/beta.

Specification, per row ``x`` of ``C`` integer codes (any scale: both norms are scale invariant):

1. centring (LayerNorm, ``center=True``): ``S = sum_c x_c``; ``d_c = C * x_c - S`` (exact:
   ``d = C * (x - mean)``). RMSNorm (``center=False``) skips it: ``d_c = x_c`` (no sum is formed).
2. width reduction: ``r = max(0, msb(max_c |d_c|) + 2 - D)``,
   ``d'_c = round_half_up(d_c / 2**r)``, so ``|d'| <= 2**(D-1)`` (``D`` = ``d_bits``, 16 by default;
   the bound is reached only by rounding up at the edge); squares fit ``2D - 1`` bits and ``V``
   ``2D - 2 + ceil(log2 C)`` bits, which must stay within int64 (checked).
3. ``V = sum_c d'_c**2 + round_half_up(E / 2**(2r))``, ``E`` the optional epsilon constant
   (``eps_code``: epsilon at the scale of ``d**2``, :func:`eps_code`; 0 by default); ``z_c = d'_c / sqrt(V)`` held with ``Z`` fractional bits (``|z| <= 1``):
   - ``rsqrt="pwl"``: ``(R, sh) = rsqrt(V)`` (leading one, PWL table on the mantissa, shift),
     ``z_c = round_half_up(d'_c * R / 2**(sh - Z))``;
   - ``rsqrt="newton"``: ``s = isqrt(V)`` (I-BERT's integer Newton iteration),
     ``z_c = floor((d'_c * 2**(Z+1) + s) / (2 s))`` (a divider, round half up);
   - ``rsqrt="bitwise"`` (I-LLM's DI-Norm, :mod:`intsim.illm`): ``s = isqrt(V)`` by the bit-wise
     check (one result bit per step, no divider), then the same divider as ``newton``.
   ``V == 0`` gives ``z = 0``. Both norms are ``sqrt(C) * z``: ``(x - mean) / std`` for LayerNorm
   and ``x / sqrt(mean(x**2))`` for RMSNorm; ``sqrt(C)`` is folded into gamma.
4. each output ``o`` (a GEMM operand, a residual copy) has per-channel integers ``G_c``, ``H_c``
   and one shift ``T``: ``y_c = saturate(round_half_away((z_c * G_c + H_c) / 2**T), s{bits})``
   with ``G_c = round(gamma_c * sqrt(C) * 2**(T - Z) / s_o)``, ``H_c = round(beta_c * 2**T / s_o)``
   (RMSNorm has no beta: ``H = 0``).
   A *dynamic* output (per-token scaling) shifts each row by ``T + t_r`` instead, ``t_r >= 0`` the
   smallest with ``max_c |z_c G_c + H_c| >> (T + t_r) <= 2**(bits-1) - 2`` (so rounding cannot
   saturate); the row's real scale is ``s_o * 2**t_r`` and the kernel returns ``t``.
   A dynamic output with a mantissa (``mantissa_bits = m``, outliers ``norm_mantissa``) scales row
   ``r`` by ``g = mu * 2**(k - m)`` instead (as :func:`intsim.fixedpoint.requantize_rows`): with
   ``v_c = z_c G_c + H_c`` and ``G = ROW_GUARD`` (8), the peak ``P = RDBPOT(max_c |v_c|, T - G)``
   (a left shift when ``T < G``), ``(mu, k)`` the smallest ``g`` with ``mu * hi * 2**(k - m + G) >= P``
   (``k`` in ``[-8, 15]``; a larger peak keeps the largest ``g``, its codes saturate), then
   ``p = max(0, -k)``, ``w_c = RDBPOT(v_c, T - G - p)`` (a left shift when negative; saturated to
   ``+-(2**32 - 1)``, which only a row beyond the largest ``g`` reaches) and
   ``y_c = saturate(RDBPOT(w_c * R[mu], 30 + G + p + k), s{bits})`` with
   ``R[mu] = round_half_up(2**(30+m) / mu)`` (:func:`intsim.fixedpoint.row_reciprocals`): ``w`` holds
   at least 8 fraction bits of an output code, so the double rounding is at ``2**-8`` of a code or
   finer. The kernel returns the row scales (a :class:`~intsim.fixedpoint.RowScale`).
   ``T`` is the largest shift in ``[0, 62 - Z]`` keeping every ``|G_c| < 2**(g_bits-1)``
   (``g_bits = max(16, output bits)``)
   and ``T <= 51 - ceil(log2 max|beta_c / s_o|)`` (``H`` is then an exactly rounded float64 product).

Epsilon: dropped by default, or folded (``eps_code``). BERT's 1e-12 is below one code of any
realistic input. SmolLM2's RMSNorm adds ``eps = 1e-5`` to ``mean(x**2)``; measured on its FP32
residual stream (``tools/measure_rmsnorm_eps.py``: 512 tokens of intsim/data/sentences.txt, all
61 norms) the smallest per-token ``mean(x**2)`` is 0.0060 (layer 0's attention norm, whose input
is the raw embedding; 0.011 at layer 0's FFN norm, >= 1.45 from layer 1 on), so dropping eps
changes an output by at most 8.3e-4 relative (0.1 code of an int8 output at full range) at layer
0 and by < 3.5e-6 elsewhere. For exactness the constant folds in: with the input scale ``s``,
``E = eps * C / s**2`` (RMSNorm, ``sum x**2 = C mean(x**2)``) or ``eps * C**3 / s**2``
(LayerNorm, ``d = C (x - mean)``), rounded to an integer offline; the per-row width reduction
scales it by ``2**-2r`` like the squares.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numba
import numpy as np

from .errors import GQAError
from .fixedpoint import (ROW_BLOCK, ROW_GUARD, ROW_K_MIN, RowScale, _row_pick, rdbpot_bf, round_half_up_bf,
                         row_reciprocals)
from .illm import isqrt_bitwise
from .jit import parallel_njit
from .rangereduce import MantissaTable, isqrt_newton, msb, rsqrt1

RSQRTS = ("pwl", "newton", "bitwise")
Z_FRAC = 14
ROW_K_MAX_NORM = 15       # a norm row's scale exponent at most (w_c * R[mu] then fits int64)
W_MAX = (1 << 32) - 1     # |w_c| of a mantissa row


class LNOutput:
    """Integer gamma/beta of one LayerNorm output at real scale ``scale`` (per channel allowed)."""

    def __init__(self, gamma, beta, scale, bits: int, g_bits: int | None = None, z_frac: int = Z_FRAC,
                 dynamic: bool = False, mantissa_bits: int | None = None):
        self.dynamic = dynamic
        self.mantissa_bits = mantissa_bits if dynamic else None   # a dynamic row's scale mu * 2**k
        g_bits = g_bits or max(16, bits)   # gamma carries at least the output's precision
        gamma = np.asarray(gamma, np.float64)
        C = gamma.shape[0]
        scale = np.broadcast_to(np.asarray(scale, np.float64), (C,))
        g_real = gamma * math.sqrt(C) / scale * 2.0**-z_frac       # per unit of z's code, before 2**T
        peak = float(np.abs(g_real).max())
        t_max = 62 - z_frac
        room = (2 ** (g_bits - 1) - 1) / peak if peak > 0 else math.inf
        T = t_max if room >= 2.0**t_max else max(0, int(math.floor(math.log2(room))))
        b_peak = float(np.abs(np.asarray(beta, np.float64) / scale).max())
        if b_peak > 0:   # keep H within 52 bits (the simulator's int64 arithmetic has room to spare)
            T = max(0, min(T, 51 - math.ceil(math.log2(b_peak))))
        self.G = np.rint(g_real * 2.0**T).astype(np.int64)
        # H exactly: round(beta / s * 2**T) in rationals (a float quotient may be off by an ulp)
        self.H = np.array([round(Fraction(float(b)) / Fraction(float(s)) * 2**T)
                           for b, s in zip(np.asarray(beta, np.float64), scale)], np.int64)
        if np.abs(self.G).max() >= 2 ** (g_bits - 1):
            raise GQAError("layernorm gamma", f"needs more than {g_bits} bits at output scale {scale.min():g}",
                           "use a coarser output scale")
        self.T, self.bits = T, bits
        self.lo, self.hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        self.dtype = np.int8 if bits <= 8 else np.int16 if bits <= 16 else np.int32


@parallel_njit
def _layernorm(x, center, eps_v, d_bits, z_frac, sqrt_mode, rs_u, e_r, f_r, G1, H1, T1, lo1, hi1, out1,
               G2, H2, T2, lo2, hi2, out2, two, dyn1, row_shift, peaks, mant1, recip1, mant_out):
    # the module docstring's steps; every rounding a branch-free shift (round_half_up_bf: steps 2
    # and 3, rdbpot_bf = half away from zero: step 4) so the channel loops vectorise
    rows, C = x.shape
    for blk in numba.prange((rows + ROW_BLOCK - 1) // ROW_BLOCK):
        d = np.empty(C, np.int64)
        for r in range(blk * ROW_BLOCK, min(rows, (blk + 1) * ROW_BLOCK)):
            s = np.int64(0)
            if center:
                for c in range(C):
                    s += x[r, c]
            dmax = np.int64(0)
            for c in range(C):
                d[c] = (C * np.int64(x[r, c]) - s) if center else np.int64(x[r, c])
                dmax = max(dmax, abs(d[c]))
            sh = max(0, msb(dmax) + 2 - d_bits)
            v = round_half_up_bf(eps_v, min(2 * sh, 62))
            for c in range(C):
                d[c] = round_half_up_bf(d[c], sh)
                v += d[c] * d[c]
            it = 0
            root = np.int64(1)
            rr = np.int64(0)
            rsh = np.int64(0)
            if v > 0:
                if sqrt_mode == 1:
                    root, it = isqrt_newton(v)
                elif sqrt_mode == 2:
                    root, it = isqrt_bitwise(v)
                else:
                    rr, rsh = rsqrt1(v, rs_u, e_r, f_r)
            if v == 0:
                for c in range(C):
                    d[c] = 0
            elif sqrt_mode > 0:
                for c in range(C):
                    d[c] = (d[c] * (np.int64(1) << (z_frac + 1)) + root) // (2 * root)
            elif rsh - z_frac <= 0:
                for c in range(C):
                    d[c] = (d[c] * rr) << (z_frac - rsh)
            else:
                for c in range(C):
                    d[c] = round_half_up_bf(d[c] * rr, rsh - z_frac)
            t1 = T1
            sat = np.int64(0)
            if dyn1:   # per-token: the smallest extra shift that fits the row (a leading-one detector)
                vmax = np.int64(0)
                for c in range(C):
                    vmax = max(vmax, abs(d[c] * G1[c] + H1[c]))
                if mant1 < 0:
                    while t1 < 62 and (vmax >> t1) > hi1 - 1:
                        t1 += 1
                    row_shift[r] = t1 - T1
            if dyn1 and mant1 >= 0:   # the row scale mu * 2**(k - m) (module docstring, step 4)
                e = T1 - ROW_GUARD
                peak = rdbpot_bf(vmax, e) if e >= 0 else vmax << -e
                mu, k = _row_pick(peak, hi1, mant1, ROW_GUARD, ROW_K_MIN, ROW_K_MAX_NORM)
                row_shift[r] = k
                mant_out[r] = mu
                rr = recip1[mu - (1 << mant1)]
                p = max(0, -k)
                sw = T1 - ROW_GUARD - p
                for c in range(C):
                    v = d[c] * G1[c] + H1[c]
                    w = rdbpot_bf(v, sw) if sw >= 0 else v << -sw
                    w = min(max(w, -W_MAX), W_MAX)
                    y = rdbpot_bf(w * rr, 30 + ROW_GUARD + p + k)
                    yc = min(max(y, lo1), hi1)
                    sat += yc != y
                    out1[r, c] = yc
            else:
                for c in range(C):
                    y = rdbpot_bf(d[c] * G1[c] + H1[c], t1)
                    yc = min(max(y, lo1), hi1)
                    sat += yc != y
                    out1[r, c] = yc
            if two:
                for c in range(C):
                    y = rdbpot_bf(d[c] * G2[c] + H2[c], T2)
                    yc = min(max(y, lo2), hi2)
                    sat += yc != y
                    out2[r, c] = yc
            peaks[r, 0] = abs(s)
            peaks[r, 1] = v
            peaks[r, 2] = sat
            peaks[r, 3] = it


def eps_code(eps: float, channels: int, in_scale: float, center: bool) -> int:
    """The integer epsilon ``E`` of step 3 for inputs at real scale ``in_scale`` (module docstring)."""
    return int(round(eps * channels ** (3 if center else 1) / in_scale**2))


class IntLayerNorm:
    """LayerNorm (``center=True``) or RMSNorm (``center=False``) of integer rows with one or two
    outputs (module docstring)."""

    def __init__(self, rsqrt: str = "pwl", rsqrt_table=None, d_bits: int = 16, center: bool = True):
        if rsqrt not in RSQRTS:
            raise GQAError("layernorm.rsqrt", f"{rsqrt!r} is unknown", f"use one of {', '.join(RSQRTS)}")
        if rsqrt == "pwl" and rsqrt_table is None:
            raise GQAError("layernorm.rsqrt", "'pwl' needs an rsqrt mantissa table", "give rsqrt_table")
        if not 4 <= d_bits <= 31:
            raise GQAError("layernorm.d_bits", f"{d_bits} is outside [4, 31]", "16 is the default")
        self.rsqrt, self.d_bits, self.center = rsqrt, d_bits, bool(center)
        self.table = MantissaTable(rsqrt_table, "rsqrt") if rsqrt == "pwl" else None

    def __call__(self, x, out1: LNOutput, out2: LNOutput | None = None, stats=None, name="layernorm",
                 eps_code: int = 0):
        shape = x.shape
        # int8/int16 inputs widened to int32 (a pass over the rows, ~1 ms for 4096 x 384): one compiled
        # kernel per output format instead of one per input and output format (each ~5 s of numba)
        x2 = np.ascontiguousarray(x.reshape(-1, shape[-1]), np.int32 if x.dtype.itemsize < 4 else None)
        rows, C = x2.shape
        for o in (out1, out2):
            if o is not None and o.G.shape[0] != C:
                raise GQAError(name, f"rows have {C} channels, an output's gamma {o.G.shape[0]}",
                               "build LNOutput with one gamma per channel")
        if 2 * self.d_bits - 2 + math.ceil(math.log2(max(C, 2))) > 62:
            raise GQAError("layernorm.d_bits", f"{self.d_bits} bits over {C} channels overflow the int64 variance sum",
                           f"use d_bits <= {(64 - math.ceil(math.log2(max(C, 2)))) // 2}")
        if not 0 <= eps_code < 2 ** (2 * self.d_bits - 2):
            raise GQAError(f"{name}.eps_code", f"{eps_code} is outside [0, 2**{2 * self.d_bits - 2})",
                           "epsilon at the squares' scale is at most one full-width square (see eps_code())")
        y1 = np.empty(x2.shape, out1.dtype)
        o2 = out2 if out2 is not None else out1
        y2 = np.empty(x2.shape if out2 is not None else (1, 1), o2.dtype)
        peaks = np.empty((rows, 4), np.int64)
        row_shift = np.zeros(rows, np.int64)
        mant = np.zeros(rows, np.int64)
        m = -1 if out1.mantissa_bits is None else int(out1.mantissa_bits)
        recip = row_reciprocals(max(m, 0))
        t = self.table
        dummy = (np.zeros(1, np.int64),) * 3 + (np.zeros(7, np.int64),)
        _layernorm(x2, self.center, np.int64(eps_code), self.d_bits, Z_FRAC, RSQRTS.index(self.rsqrt), t.unit if t else dummy, t.e if t else 0,
                   t.frac if t else 0, out1.G, out1.H, out1.T, out1.lo, out1.hi, y1,
                   o2.G, o2.H, o2.T, o2.lo, o2.hi, y2, out2 is not None, out1.dynamic, row_shift, peaks, m, recip, mant)
        if stats is not None and x2.size:
            self._count(stats, name, rows, C, peaks, x2, 1 + (out2 is not None))
            if out1.dynamic:
                stats.count("compare", f"{name}.token_max", rows * C, bits=32)
            if m >= 0:      # the row scale's pick and the per-element multiply by R[mu] (OperandRequant's names)
                stats.count("shift", f"{name}.row_lod", rows, bits=32)
                stats.count("compare", f"{name}.row_pick", rows << m, bits=out1.bits + m + 1)
                stats.count("mul", f"{name}.row_mult", rows * C, a_bits=33, b_bits=31)
        y1 = y1.reshape(shape)
        if out1.dynamic:
            lead = shape[:-1]
            y1 = (y1, row_shift.reshape(lead) if m < 0 else RowScale(mant.reshape(lead), row_shift.reshape(lead), m))
        return (y1, y2.reshape(shape)) if out2 is not None else y1

    def _count(self, stats, name, rows, C, peaks, x2, n_out):
        n = rows * C
        # signed width of the inputs, |x| + sign (from the extremes: np.abs wraps an int8 -128 to -128)
        x_bits = max(int(x2.max()), -int(x2.min())).bit_length() + 1
        if self.center:
            stats.count("add", f"{name}.sum", n, bits=x_bits + math.ceil(math.log2(C)))
            stats.count("mul", f"{name}.center", n, a_bits=x_bits, b_bits=math.ceil(math.log2(C)) + 1)
        stats.count("compare", f"{name}.dmax", n, bits=x_bits + (10 if self.center else 0))
        stats.count("mul", f"{name}.square", n, a_bits=self.d_bits, b_bits=self.d_bits)
        stats.count("add", f"{name}.var", n, bits=2 * self.d_bits + math.ceil(math.log2(C)))
        if self.rsqrt == "pwl":
            stats.count("compare", f"{name}.leading_one", rows, bits=2 * self.d_bits + 9)
            stats.lut(f"{name}.rsqrt", rows, table="rsqrt", entries=self.table.table.entries,
                      in_bits=self.table.table.datapath.in_bits)
            stats.count("mul", f"{name}.normalize", n, a_bits=self.d_bits, b_bits=16)
        elif self.rsqrt == "newton":
            it = int(peaks[:, 3].sum())
            stats.count("div", f"{name}.isqrt", it, bits=2 * self.d_bits + 9)
            stats.count("div", f"{name}.normalize", n, bits=2 * self.d_bits + 9)
        else:   # the bit-wise check: a square and a compare per result bit
            it = int(peaks[:, 3].sum())
            stats.count("mul", f"{name}.isqrt", it, a_bits=self.d_bits + 5, b_bits=self.d_bits + 5)
            stats.count("compare", f"{name}.isqrt", it, bits=2 * self.d_bits + 9)
            stats.count("div", f"{name}.normalize", n, bits=2 * self.d_bits + 9)
        stats.count("mul", f"{name}.gamma", n * n_out, a_bits=Z_FRAC + 2, b_bits=16)
        stats.count("add", f"{name}.beta", n * n_out, bits=32)
        stats.count("shift", f"{name}.out", n * n_out, bits=32)
        if self.center:
            stats.accumulator(f"{name}.sum", int(peaks[:, 0].max()), 32)
        stats.accumulator(f"{name}.var", int(peaks[:, 1].max()), 2 * self.d_bits + math.ceil(math.log2(C)) + 1)
        stats.saturated(f"{name}.out", int(peaks[:, 2].sum()))
