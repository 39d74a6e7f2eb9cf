"""Integer-only softmax: row max, exp through a PWL table, integer sum, reciprocal, unsigned P-bit out.

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
4. probabilities, unsigned ``P = out_bits`` bits with scale ``2**-P`` (``SimConfig.prob_bits``;
   8: UINT8), saturated to ``[0, 2**P - 1]`` (each clipped one counted; only a reciprocal table
   with negative outputs gives a ``p < 0``):
   - ``recip="pwl"``:   ``(R, sh) = reciprocal(Z)`` (range reduction, :mod:`intsim.rangereduce`),
     ``p_t = round_half_up(E_t * R / 2**(sh - P))``;
   - ``recip="divider"``: ``p_t = floor((E_t * 2**P + floor(Z/2)) / Z)`` (an integer divider).
   A row with every key masked gives zeros. Why wider than 8 bits: with ``T`` keys a flat row's
   probabilities are ``~1/T``, and a causal decoder's rows hold one large weight (the first token,
   an attention sink) beside many small ones, which 8 bits round to 0 or ``2**-8`` (docs/llm.md).

Steps 2-3 are a pure, monotone function of ``d`` (``requantize`` is non-decreasing in ``d`` for
``M0 > 0``): below ``d_lo``, the smallest ``d`` whose ``u`` reaches ``q_min``, every input saturates
to ``q_min``. So the simulator tabulates ``E(d)`` once per kernel for ``d_lo <= d <= 0``
(:func:`exp_of_difference`, entry 0 for ``d < d_lo``) and each element costs one gather:
bit-identical to evaluating steps 2-3 per element, which it still does when the table would
exceed ``DIFF_LUT_MAX`` entries.
"""

from __future__ import annotations

import numba
import numpy as np

from .errors import GQAError
from .fixedpoint import INT32_MIN, ROW_BLOCK, quantize_multiplier, requantize1, round_half_up_bf
from .jit import parallel_njit
from .pwl import round_shift1, unit_constants, unit_lut
from .rangereduce import MantissaTable, reciprocal1
from .registry import RECIPROCALS

DIFF_LUT_MAX = 1 << 22      # entries of the E(d) table (int32); beyond it, steps 2-3 per element


def check_prob_bits(out_bits) -> int:
    """A softmax kernel's probability width ``P`` (step 4, every kernel's ``out_bits``): an integer
    in [1, 16], refused otherwise; the codes are :func:`prob_dtype`."""
    if isinstance(out_bits, bool) or not isinstance(out_bits, (int, np.integer)) or not 1 <= out_bits <= 16:
        raise GQAError("softmax.out_bits", f"{out_bits!r} is outside [1, 16]", "8 gives UINT8 probabilities")
    return int(out_bits)


def prob_dtype(out_bits: int):
    """The array dtype of ``out_bits``-bit probabilities: uint8, or uint16 above 8 bits."""
    return np.uint8 if out_bits <= 8 else np.uint16


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
    mask, key_offset = mask_policy(key_mask, causal, B, Tq, Tk)
    rows = np.ascontiguousarray(scores.reshape(B * H * Tq, Tk))    # (B, H, Tq, Tk) -> (B*H*Tq, Tk)
    return rows, mask, H * Tq, Tq, key_offset                        # Tq = 0: no rows, no r % Tq


def mask_policy(key_mask, causal: bool, B: int, Tq: int, Tk: int):
    """The mask policy of step 0 for ``B`` batch rows of ``Tq`` queries over ``Tk`` keys, checked:
    ``(mask, key_offset)``, the key mask as contiguous uint8 (B, Tk) (None: every key) and the
    offset :func:`last_key` adds to a query index (``Tk`` without a causal mask: no limit)."""
    if key_mask is None:
        key_mask = np.ones((B, Tk), np.uint8)
    key_mask = np.asarray(key_mask)
    if key_mask.shape != (B, Tk):
        raise GQAError("key_mask", f"has shape {key_mask.shape}, the scores need ({B}, {Tk})",
                       "one 0/1 flag per batch row and key")
    if causal and Tq > Tk:
        raise GQAError("causal", f"{Tq} queries over {Tk} keys", "a causal mask needs at least as many keys as queries")
    return np.ascontiguousarray(key_mask, np.uint8), Tk - Tq if causal else Tk


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
    for t in range(min(scores.shape[1], last + 1)):     # a select, not a branch: the loop vectorises
        mx = max(mx, np.int64(scores[r, t]) if mask[b, t] else np.int64(INT32_MIN))
    return mx


@parallel_njit
def _softmax(scores, mask, rows_per_batch, q_len, key_offset, m0, n, exp_lut, q_min, use_divider, rec_u, e_r, f_r,
             out_bits, out, peaks):
    rows, T = scores.shape
    top = (np.int64(1) << out_bits) - 1
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
                p = ((e[t] << out_bits) + (z >> 1)) // z
                sat += p > top
                out[r, t] = min(p, top)
        else:
            rr, sh = reciprocal1(z, rec_u, e_r, f_r)
            for t in range(T):
                p = round_shift1(e[t] * rr, sh - out_bits, 1)
                sat += (p > top) + (p < 0)          # p < 0: a reciprocal table with negative outputs
                out[r, t] = min(max(p, 0), top)
        peaks[r, 0] = z
        peaks[r, 1] = low
        peaks[r, 2] = sat


@numba.njit(cache=True)
def _first_unsaturated(m0, n, q_min):
    """``d_lo``: the smallest ``d`` in [INT32_MIN, 0] with ``requantize(d) >= q_min`` (bisection on a
    non-decreasing function; ``d = 0`` gives ``u = 0 >= q_min``, a signed code)."""
    lo, hi = np.int64(INT32_MIN), np.int64(0)     # invariant: u(hi) >= q_min
    if requantize1(lo, m0, n) >= q_min:
        return lo
    while hi - lo > 1:                            # u(lo) < q_min
        mid = (lo + hi) // 2
        if requantize1(mid, m0, n) >= q_min:
            hi = mid
        else:
            lo = mid
    return hi


@numba.njit(cache=True)
def _fill_exp_of_difference(m0, n, exp_lut, q_min, d_lo, out):
    out[0] = max(exp_lut[0], 0)                   # d < d_lo: u saturates to q_min
    for i in range(1, out.shape[0]):
        out[i] = max(exp_lut[requantize1(d_lo + i - 1, m0, n) - q_min], 0)


def exp_of_difference(m0: int, n: int, exp_lut: np.ndarray, q_min: int):
    """``(d_lo, E)``: steps 2-3 tabulated, ``E[0]`` for ``d < d_lo``, ``E[1 + d - d_lo]`` for
    ``d_lo <= d <= 0``; None when the table would exceed DIFF_LUT_MAX entries."""
    d_lo = int(_first_unsaturated(np.int64(m0), np.int64(n), np.int64(q_min)))
    size = 2 - d_lo                               # d_lo <= 0
    if size > DIFF_LUT_MAX or np.abs(exp_lut).max() >= 2**31:
        return None
    table = np.empty(size, np.int32)
    _fill_exp_of_difference(np.int64(m0), np.int64(n), exp_lut, np.int64(q_min), np.int64(d_lo), table)
    return d_lo, table


@numba.njit(cache=True, inline="always")
def softmax_row_lut(scores, r, mask, b, n_vis, d_lo, e_of_d, use_divider, rec_u, e_r, f_r, out_bits, e, out, peak):
    """Steps 1-4 of row ``r`` of ``scores`` (any integer or exact-float dtype) with steps 2-3 as one
    gather from :func:`exp_of_difference`: its ``out_bits``-bit probabilities into ``out`` (one row:
    uint8/uint16, or the fused kernel's float row holding the same integers), the
    row's ``(Z, saturated low inputs, clipped probabilities)`` into ``peak`` (3 int64); ``e``: an
    int32 scratch row. Batch row ``b`` of ``mask``; keys ``t >= n_vis`` are invisible (zero).

    Only the visible prefix is read; there the gather index ``1 + d - d_lo`` is ``s - c`` with
    ``c = mx + d_lo - 1``, clamped to the table (``d < d_lo``: entry 0, counted as saturated; a
    masked key above the row max: clamped, then zeroed). Shared by :func:`_softmax_lut` and the
    fused attention kernel (:mod:`intsim.fused_attention`): one definition of the arithmetic.
    """
    T = out.shape[0]
    top = (np.int64(1) << out_bits) - 1
    last = e_of_d.shape[0] - 1
    c = masked_row_max(scores, mask, r, b, n_vis - 1) + d_lo - 1
    z = np.int64(0)
    low = np.int64(0)
    for t in range(n_vis):
        m = np.int64(mask[b, t] != 0)
        i = np.int64(scores[r, t]) - c
        v = e_of_d[min(max(i, np.int64(0)), last)] * np.int32(m)
        e[t] = v
        low += (i <= 0) * m
        z += v
    for t in range(n_vis, T):
        e[t] = 0
    sat = np.int64(0)
    if z == 0:
        for t in range(T):
            out[t] = 0
    elif use_divider:
        for t in range(T):
            p = ((np.int64(e[t]) << out_bits) + (z >> 1)) // z
            sat += p > top
            out[t] = min(p, top)
    else:
        rr, sh = reciprocal1(z, rec_u, e_r, f_r)
        rr32 = np.int64(np.int32(rr))      # R < 2**31 (checked at build)
        s = sh - out_bits
        if s <= 0:
            for t in range(T):
                p = (np.int64(e[t]) * rr32) << -s
                sat += (p > top) + (p < 0)
                out[t] = min(max(p, 0), top)
        else:
            for t in range(T):
                p = round_half_up_bf(np.int64(e[t]) * rr32, s)
                sat += (p > top) + (p < 0)
                out[t] = min(max(p, 0), top)
    peak[0] = z
    peak[1] = low
    peak[2] = sat


@parallel_njit
def _softmax_lut(scores, mask, rows_per_batch, q_len, key_offset, d_lo, e_of_d, use_divider, rec_u, e_r, f_r,
                 out_bits, out, peaks):
    """:func:`_softmax` with steps 2-3 as one gather from :func:`exp_of_difference` (bit-identical):
    :func:`softmax_row_lut` per row."""
    rows, T = scores.shape
    for blk in numba.prange((rows + ROW_BLOCK - 1) // ROW_BLOCK):
        e = np.empty(T, np.int32)        # E < 2**31 (checked): products below are 32 x 32 -> 64 bits
        for r in range(blk * ROW_BLOCK, min(rows, (blk + 1) * ROW_BLOCK)):
            n_vis = max(min(T, last_key(r, q_len, key_offset) + 1), 0)
            softmax_row_lut(scores, r, mask, r // rows_per_batch, n_vis, d_lo, e_of_d, use_divider, rec_u, e_r, f_r,
                            out_bits, e, out[r], peaks[r])


class IntSoftmax:
    """The PWL softmax for scores at real scale ``in_scale`` (see the module docstring)."""

    name = "pwl"

    def __init__(self, in_scale: float, exp_table, recip: str = "pwl", recip_table=None, out_bits: int = 8):
        self.out_bits = check_prob_bits(out_bits)
        self.out_scale = 2.0**-self.out_bits
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
        self.diff_lut = exp_of_difference(self.m0, self.n, self.exp_lut, self.q_min)
        rt = self.recip_table
        if rt is not None and rt.table.datapath.acc_bits(rt.e) > 32:
            self.diff_lut = None        # the tabulated kernel multiplies E by R in 32 x 32 bits

    def __call__(self, scores, key_mask=None, stats=None, name="softmax", causal=False):
        """int32 scores (B, H, Tq, Tk), key mask (B, Tk) or None, causal -> probabilities at ``2**-out_bits``
        (uint8, or uint16 above 8 bits)."""
        s2, mask, rows_per_batch, q_len, key_offset = score_rows(scores, key_mask, causal)
        out = np.empty(s2.shape, prob_dtype(self.out_bits))
        peaks = np.empty((s2.shape[0], 3), np.int64)
        rec_u, e_r, f_r = self.normalizer()
        if self.diff_lut is not None:
            _softmax_lut(s2, mask, rows_per_batch, q_len, key_offset, self.diff_lut[0], self.diff_lut[1], self.recip == "divider",
                         rec_u, e_r, f_r, self.out_bits, out, peaks)
        else:
            _softmax(s2, mask, rows_per_batch, q_len, key_offset, self.m0, self.n, self.exp_lut, self.q_min,
                     self.recip == "divider", rec_u, e_r, f_r, self.out_bits, out, peaks)
        if stats is not None and out.size:
            self.count(stats, name, *s2.shape, peaks)
        return out.reshape(scores.shape)

    def normalizer(self):
        """Step 4's constants for the kernels: ``(reciprocal unit, its scale e, its fraction bits)``
        (the exp unit and zeros as placeholders with the divider)."""
        rec = self.recip_table
        return (rec.unit, rec.e, rec.frac) if rec is not None else (self.exp_unit, 0, 0)

    def count(self, stats, name, rows, T, peaks):
        """The operation counts of ``rows`` rows of ``T`` keys, from the rows' ``peaks`` (Z, low, clipped)."""
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
            e_bits, r_bits = self.exp_table.datapath.acc_bits(self.e_x), rt.datapath.acc_bits(self.recip_table.e)
            stats.count("mul", f"{name}.normalize", n, a_bits=e_bits, b_bits=r_bits)
            stats.count("shift", f"{name}.normalize", n, bits=e_bits + r_bits)  # shifts the product E * R
        z_bits = 32
        stats.accumulator(f"{name}.sum", int(peaks[:, 0].max()), z_bits)
        stats.saturated(f"{name}.exp_input_low", int(peaks[:, 1].sum()))
        stats.saturated(f"{name}.prob_{(1 << self.out_bits) - 1}", int(peaks[:, 2].sum()))   # prob_255: UINT8

