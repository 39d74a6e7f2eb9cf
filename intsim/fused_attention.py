"""Fused integer attention: the scores, the PWL softmax and the context of one (batch, head) in one pass.

Specification: exactly the three steps of :class:`intsim.layers.IntAttention`, bit for bit,

1. ``scores[b, h] = q[b, h] k[b, g]^T`` (int8 x int8 -> int32, ``g = h // (H / G)``: grouped KV heads
   read their shared K/V head in place, no repeated copy);
2. ``p[b, h] = softmax(scores[b, h])`` by :class:`intsim.softmax.IntSoftmax`'s tabulated kernel
   (:func:`intsim.softmax.softmax_row_lut`, the same function the unfused softmax runs per row),
   with the same mask policy (:func:`intsim.softmax.mask_policy`) and the same per-row peaks;
3. ``ctx[b, :, h] = p[b, h] v[b, g]`` (``P``-bit unsigned x int8 -> int32, ``P`` the softmax's
   ``out_bits``), written straight into the (B, T, H * head_dim) layout of the output
   projection's operand.

Why fused: the unfused path writes the (B, H, T, S) int32 scores, reads them back in the softmax,
writes uint8 probabilities, converts them to float for the second product and transposes the
context: four passes over the layer's largest tensors, and two batched GEMMs of small (T x d)
pieces where BLAS runs far below its peak. Here a (b, h) block stays in cache and each product is
one float32 BLAS call (``np.dot`` in numba, single-threaded inside the parallel loop).

Exactness of the float32 products (the argument of the ``f32`` GEMM backend,
:mod:`intsim.gemm`): every partial sum of ``K`` integer products is an integer of magnitude at
most ``K * max|a*b|``, and float32 holds every integer up to ``2**24``. The scores sum
``d <= 2**24 / 2**14 = 1024`` products of magnitude at most ``2**14``; the context sums
probabilities (``<= 2**P - 1``) times values (``>= -128``) over key chunks of at most
``2**24 // (255 * 128) = 514`` keys for UINT8 probabilities, each chunk's exact result converted to
int32 and added in int32 (``S * (2**P - 1) * 128 < 2**31``: :func:`intsim.gemm.check_gemm`'s
bound). Wider probabilities (``P > 8``: a float32 chunk would hold 32 keys at 12 bits) take the
context product in float64, exact for ``S * (2**P - 1) * 128 <= 2**53``, i.e. in one product. So
any summation order BLAS takes gives the integers of the Python-integer reference.
"""

from __future__ import annotations

import numba
import numpy as np

from .errors import GQAError
from .gemm import F32_EXACT, F64_EXACT, unsigned_terms
from .jit import parallel_njit
from .softmax import last_key, mask_policy, softmax_row_lut

SCORE_K_MAX = F32_EXACT // (128 * 128)      # head_dim <= 1024: the scores' float32 partial sums stay exact
CONTEXT_CHUNK = F32_EXACT // (255 * 128)    # keys per float32 context product with UINT8 probabilities (514)


def context_operands(out_bits: int, keys: int):
    """``(dtype, keys per exact product)`` of the context product for ``out_bits``-bit probabilities:
    float32 chunks up to 8 bits (BLAS's fastest), float64 above (module docstring)."""
    top = (1 << out_bits) - 1
    if out_bits <= 8:
        return np.float32, max(1, F32_EXACT // (top * 128))
    return np.float64, max(1, min(keys, F64_EXACT // (top * 128)))


@parallel_njit
def _attention_lut(q, k, v, mask, key_offset, d_lo, e_of_d, use_divider, rec_u, e_r, f_r, out_bits, chunk,
                   proto, ctx, peaks, score_peak):
    """``proto``: an empty array of the context product's float dtype (:func:`context_operands`)."""
    B, H, T, d = q.shape
    G, S = k.shape[1], k.shape[2]
    group = H // G
    for bh in numba.prange(B * H):
        b = bh // H
        h = bh - b * H
        g = h // group
        qf = np.empty((T, d), np.float32)
        kt = np.empty((d, S), np.float32)                   # k^T: the scores' right operand
        vf = np.empty((S, d), proto.dtype)
        for t in range(T):
            for j in range(d):
                qf[t, j] = q[b, h, t, j]
        for s in range(S):
            for j in range(d):
                kt[j, s] = k[b, g, s, j]
                vf[s, j] = v[b, g, s, j]
        sf = np.dot(qf, kt)                                 # (T, S) exact integers in float32
        si = np.empty((T, S), np.int32)
        mx = np.int64(0)
        for t in range(T):
            for s in range(S):
                x = np.int32(sf[t, s])
                si[t, s] = x
                mx = max(mx, abs(np.int64(x)))
        score_peak[bh] = mx
        e = np.empty(S, np.int32)
        pf = np.empty((T, S), proto.dtype)                  # the P-bit probabilities, held in float
        for t in range(T):
            r = bh * T + t                                  # the unfused softmax's row (b, h, t)
            n_vis = max(min(S, last_key(t, T, key_offset) + 1), 0)
            softmax_row_lut(si, t, mask, b, n_vis, d_lo, e_of_d, use_divider, rec_u, e_r, f_r, out_bits, e, pf[t],
                            peaks[r])
        acc = np.zeros((T, d), np.int32)
        for s0 in range(0, S, chunk):
            s1 = min(S, s0 + chunk)
            if s1 - s0 == S:
                part = np.dot(pf, vf)                       # (T, d) exact in float32 / float64
            else:
                part = np.dot(np.ascontiguousarray(pf[:, s0:s1]), np.ascontiguousarray(vf[s0:s1]))
            for t in range(T):
                for j in range(d):
                    acc[t, j] += np.int32(part[t, j])
        for t in range(T):
            for j in range(d):
                ctx[b, t, h * d + j] = acc[t, j]


def supports(softmax, head_dim: int) -> bool:
    """Whether :func:`fused_attention` computes this softmax kernel's attention: the PWL softmax's
    tabulated path (:class:`intsim.softmax.IntSoftmax` with its E(d) table) and a head dimension
    whose scores stay exact in float32."""
    return getattr(softmax, "diff_lut", None) is not None and 0 < head_dim <= SCORE_K_MAX


def fused_attention(softmax, q, k, v, key_mask=None, causal: bool = False):
    """int8 ``q`` (B, H, T, d), ``k`` and ``v`` (B, G, S, d) -> ``(ctx, peaks, score_peak)``:

    ``ctx`` int32 (B, T, H * d), the context accumulators; ``peaks`` int64 (B * H * T, 3), the
    softmax's per-row ``(Z, low inputs, clipped probabilities)`` in the unfused row order; and
    ``score_peak``, the largest ``|score|`` (every key, as the unfused GEMM computes them).
    ``softmax``: an :class:`intsim.softmax.IntSoftmax` that :func:`supports` accepts."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, np.ndarray) or x.dtype != np.int8 or x.ndim != 4:
            raise GQAError(name, f"is {getattr(x, 'dtype', type(x))} of shape {getattr(x, 'shape', '?')}",
                           "give int8 (B, heads, T, head_dim) codes")
    B, H, T, d = q.shape
    _, G, S, _ = k.shape
    if k.shape != (B, G, S, d) or v.shape != k.shape or G == 0 or H % G:
        raise GQAError("k", f"k {k.shape} and v {v.shape} do not serve q {q.shape}",
                       "k and v are (B, kv_heads, S, head_dim) with kv_heads dividing the query heads")
    if not supports(softmax, d):
        raise GQAError("softmax", f"{type(softmax).__name__} (head_dim {d}) has no fused kernel",
                       "use the unfused path (intsim.layers.IntAttention does when supports() is False)")
    if S > unsigned_terms(softmax.out_bits):     # the int32 context accumulator, as int_gemm_unsigned bounds it
        raise GQAError("keys", f"{S} keys of {softmax.out_bits}-bit probabilities times int8 values may exceed "
                       "the int32 context accumulator", f"at most {unsigned_terms(softmax.out_bits)} keys, or fewer prob_bits")
    mask, key_offset = mask_policy(key_mask, causal, B, T, S)
    d_lo, e_of_d = softmax.diff_lut
    rec_u, e_r, f_r = softmax.normalizer()
    ctx = np.empty((B, T, H * d), np.int32)
    peaks = np.empty((B * H * T, 3), np.int64)
    score_peak = np.zeros(B * H, np.int64)
    if ctx.size or peaks.size:
        dtype, chunk = context_operands(softmax.out_bits, S)
        # C-contiguous operands (a copy of a head-split view: B*H*T*d bytes): one compiled kernel per
        # probability dtype, not one per layout of q, k and v (each ~7 s of numba)
        q, k, v = (np.ascontiguousarray(a) for a in (q, k, v))
        _attention_lut(q, k, v, mask, key_offset, d_lo, e_of_d, softmax.recip == "divider", rec_u, e_r, f_r,
                       softmax.out_bits, chunk, np.empty(0, dtype), ctx, peaks, score_peak)
    return ctx, peaks, int(score_peak.max()) if score_peak.size else 0
