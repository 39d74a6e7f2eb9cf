"""Integer-only softmax: row max, exp through a PWL table, integer sum, reciprocal, UINT8 out.

Specification, per row of int32 scores ``a`` (real value ``a * S``, S the product of the Q and
K scales and 1/sqrt(head_dim), fixed offline) with a mask policy:

0. the mask (:func:`score_rows`, shared by every softmax kernel): key ``t`` of query ``i`` in
   batch row ``b`` is *unmasked* iff ``key_mask[b, t]`` (padding; no mask: every key) and, for
   a causal mask, ``t <= i + Tk - Tq`` (the queries are the last ``Tq`` of the ``Tk`` positions);
1. ``mx = max_t a_t`` over unmasked keys; ``d_t = a_t - mx <= 0`` (int64, clamped to int32).
2. exp-table input ``u_t = max(requantize(d_t, M0, n), q_min)``: the dyadic multiplier
   ``M0 * 2**-(31+n) ~= S * 2**e_x`` maps ``d`` to codes of the table at scale ``e_x``, the
   largest table scale whose code range still reaches the table domain's left end (-8 for exp);
   codes below ``q_min`` saturate (counted; exp(-8) ~ 3e-4).
3. ``E_t = max(PWL_exp(u_t), 0)`` (``F_e`` fractional bits; negative PWL tails clamp to zero),
   ``E_t = 0`` for masked keys; ``Z = sum_t E_t`` (``F_e + 1 + log2(T)`` bits).
4. probabilities, UINT8 with scale 2**-8 (saturated at 255):
   - ``recip="pwl"``:   ``(R, sh) = reciprocal(Z)`` (range reduction, :mod:`intsim.rangereduce`),
     ``p_t = round_half_up(E_t * R / 2**(sh - 8))``;
   - ``recip="divider"``: ``p_t = floor((E_t * 2**8 + floor(Z/2)) / Z)`` (an integer divider).
   A row with every key masked gives zeros.
"""

from __future__ import annotations

import numba
import numpy as np

from .errors import GQAError
from .fixedpoint import INT32_MIN, quantize_multiplier, requantize1
from .pwl import round_shift1, unit_constants, unit_lut
from .rangereduce import MantissaTable, reciprocal1
from .registry import RECIPROCALS


def exp_input_scale(table) -> int:
    """Largest scale of the table at which its code range covers the domain's left end."""
    lo = table.domain[0]
    ok = [e for e in table.scales if table.datapath.code_min * 2.0**-e <= lo]
    if not ok:
        raise GQAError("exp table", f"no scale in {list(table.scales)} reaches {lo:g} with s{table.datapath.in_bits} "
                       "codes", "add smaller scales to the table or widen in_bits")
    return max(ok)


def score_rows(scores, key_mask=None, causal: bool = False):
    """Check int32 scores (B, H, Tq, Tk) and the mask policy, the interface of every softmax kernel.

    ``key_mask``: (B, Tk) 0/1 flags (padding), or None (every key); ``causal``: query ``i`` also
    sees only keys ``t <= i + Tk - Tq`` (module docstring, step 0). Returns
    ``(rows, mask, rows_per_batch, q_len, key_offset)``: the scores as contiguous (B*H*Tq, Tk)
    rows, the key mask as uint8 (B, Tk), how many rows share one batch row of the mask (row ``r``
    uses ``mask[r // rows_per_batch]``), and the two numbers :func:`last_key` turns into row
    ``r``'s last visible key (``key_offset = Tk`` without a causal mask: no limit).
    """
    if not isinstance(scores, np.ndarray) or scores.ndim != 4 or scores.dtype != np.int32:
        raise GQAError("scores", f"are {getattr(scores, 'dtype', type(scores))} of shape "
                       f"{getattr(scores, 'shape', '?')}", "give int32 (B, H, Tq, Tk)")
    B, H, Tq, Tk = scores.shape
    if key_mask is None:
        key_mask = np.ones((B, Tk), np.uint8)
    key_mask = np.asarray(key_mask)
    if key_mask.shape != (B, Tk):
        raise GQAError("key_mask", f"has shape {key_mask.shape}, the scores need ({B}, {Tk})",
                       "one 0/1 flag per batch row and key")
    if causal and Tq > Tk:
        raise GQAError("causal", f"{Tq} queries over {Tk} keys", "a causal mask needs at least as many keys as queries")
    rows = np.ascontiguousarray(scores.reshape(B * H * Tq, Tk))    # (B, H, Tq, Tk) -> (B*H*Tq, Tk)
    return (rows, np.ascontiguousarray(key_mask, np.uint8), H * Tq, max(Tq, 1),
            Tk - Tq if causal else Tk)


@numba.njit(cache=True, inline="always")
def last_key(r, q_len, key_offset):
    """The last key row ``r`` may see (step 0): its query index ``r % q_len`` plus the offset."""
    return r % q_len + key_offset


@numba.njit(cache=True, inline="always")
def visible_row(scores, mask, r, rows_per_batch, q_len, key_offset):
    """Steps 0 and 1 of every softmax kernel for row ``r``: ``(b, last, mx)`` -- its batch row (key
    mask row), its last visible key and its largest score over the visible keys (key ``t`` is
    visible iff ``mask[b, t] and t <= last``)."""
    b = r // rows_per_batch
    last = last_key(r, q_len, key_offset)
    return b, last, masked_row_max(scores, mask, r, b, last)


@numba.njit(cache=True, inline="always")
def masked_row_max(scores, mask, r, b, last):
    """Step 1 of every softmax kernel: the largest score of row ``r`` over its unmasked keys
    (batch row ``b``'s key mask, keys up to ``last``)."""
    mx = np.int64(INT32_MIN)
    for t in range(min(scores.shape[1], last + 1)):
        if mask[b, t] and scores[r, t] > mx:
            mx = np.int64(scores[r, t])
    return mx


@numba.njit(cache=True, parallel=True)
def _softmax(scores, mask, rows_per_batch, q_len, key_offset, m0, n, exp_lut, q_min, use_divider, rec_u, e_r, f_r,
             out, peaks):
    rows, T = scores.shape
    for r in numba.prange(rows):
        b, last, mx = visible_row(scores, mask, r, rows_per_batch, q_len, key_offset)
        e = np.zeros(T, np.int64)
        z = np.int64(0)
        low = 0
        for t in range(T):
            if mask[b, t] and t <= last:
                d = max(np.int64(scores[r, t]) - mx, INT32_MIN)
                u = requantize1(d, m0, n)
                if u < q_min:
                    u = q_min
                    low += 1
                v = exp_lut[u - q_min]
                e[t] = v if v > 0 else 0
                z += e[t]
        sat = 0
        if z == 0:
            for t in range(T):
                out[r, t] = 0
        elif use_divider:
            for t in range(T):
                p = (e[t] * 256 + (z >> 1)) // z
                sat += p > 255
                out[r, t] = min(p, 255)
        else:
            rr, sh = reciprocal1(z, rec_u, e_r, f_r)
            for t in range(T):
                p = round_shift1(e[t] * rr, sh - 8, 1)
                sat += p > 255
                out[r, t] = min(p, 255)
        peaks[r, 0] = z
        peaks[r, 1] = low
        peaks[r, 2] = sat


class IntSoftmax:
    """The PWL softmax for scores at real scale ``in_scale`` (see the module docstring)."""

    name = "pwl"

    def __init__(self, in_scale: float, exp_table, recip: str = "pwl", recip_table=None):
        if recip not in RECIPROCALS:
            raise GQAError("softmax.reciprocal", f"{recip!r} is unknown", f"use one of {', '.join(RECIPROCALS.names())}")
        if recip == "pwl" and recip_table is None:
            raise GQAError("softmax.reciprocal", "'pwl' needs a reciprocal mantissa table", "give recip_table")
        self.exp_table, self.recip = exp_table, recip
        self.e_x = exp_input_scale(exp_table)
        self.m0, self.n = quantize_multiplier(in_scale * 2.0**self.e_x)
        self.q_min = exp_table.datapath.code_min
        self.exp_unit = unit_constants(exp_table, self.e_x)
        # only codes q_min..0 reach the unit (d <= 0): evaluate it once per code (bit-identical)
        self.exp_lut = unit_lut(self.exp_unit, self.q_min, 0)
        self.recip_table = MantissaTable(recip_table, "reciprocal") if recip == "pwl" else None

    def __call__(self, scores, key_mask=None, stats=None, name="softmax", causal=False):
        """int32 scores (B, H, Tq, Tk), key mask (B, Tk) or None, causal -> uint8 probabilities (2**-8)."""
        s2, mask, rows_per_batch, q_len, key_offset = score_rows(scores, key_mask, causal)
        out = np.empty(s2.shape, np.uint8)
        peaks = np.empty((s2.shape[0], 3), np.int64)
        rec = self.recip_table
        rec_u = rec.unit if rec is not None else self.exp_unit
        _softmax(s2, mask, rows_per_batch, q_len, key_offset, self.m0, self.n, self.exp_lut, self.q_min,
                 self.recip == "divider", rec_u, rec.e if rec else 0, rec.frac if rec else 0, out, peaks)
        if stats is not None and out.size:
            self._count(stats, name, *s2.shape, peaks)
        return out.reshape(scores.shape)

    def _count(self, stats, name, rows, T, peaks):
        n = rows * T
        dp = self.exp_table.datapath
        stats.count("compare", f"{name}.max", n, bits=32)
        stats.count("add", f"{name}.sub_max", n, bits=32)
        stats.count("mul", f"{name}.requant", n, a_bits=32, b_bits=32)
        stats.lut(f"{name}.exp", n, table=self.exp_table.function, entries=self.exp_table.entries, in_bits=dp.in_bits)
        stats.count("add", f"{name}.sum", n, bits=int(peaks[:, 0].max()).bit_length() + 1)
        if self.recip == "divider":
            stats.count("div", f"{name}.divide", n, bits=32)
        else:
            rt = self.recip_table.table
            stats.count("compare", f"{name}.leading_one", rows, bits=32)
            stats.lut(f"{name}.reciprocal", rows, table="reciprocal", entries=rt.entries, in_bits=rt.datapath.in_bits)
            stats.count("mul", f"{name}.normalize", n, a_bits=self.exp_table.datapath.acc_bits(self.e_x),
                        b_bits=rt.datapath.acc_bits(self.recip_table.e))
            stats.count("shift", f"{name}.normalize", n, bits=32)
        z_bits = 32
        stats.accumulator(f"{name}.sum", int(peaks[:, 0].max()), z_bits)
        stats.saturated(f"{name}.exp_input_low", int(peaks[:, 1].sum()))
        stats.saturated(f"{name}.prob_255", int(peaks[:, 2].sum()))

