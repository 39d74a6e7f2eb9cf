"""The fused attention kernel equals the unfused three steps bit for bit (intsim.fused_attention).

The unfused path is itself tested against the Python-integer references (the int64 GEMM and
tests/reference_int.py's softmax, tests/test_kernels_int.py); here the fused kernel is compared
with it on every mask policy, grouped KV heads, a KV-cache offset (more keys than queries),
contexts longer than one float32 chunk, extreme codes and both reciprocals.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import intsim
from intsim import GQAError, PWLTable
from intsim.fused_attention import CONTEXT_CHUNK, fused_attention, supports
from intsim.opstats import OpStats
from intsim.softmax import IntSoftmax

TABLES = Path(intsim.__file__).parent / "tables"


def softmax(exp_name="exp16", recip="pwl", in_scale=1 / 64, out_bits=8):
    rt = PWLTable.load(TABLES / "recip_mantissa16.json") if recip == "pwl" else None
    return IntSoftmax(in_scale, PWLTable.load(TABLES / f"{exp_name}.json"), recip, rt, out_bits=out_bits)


def unfused(sm, q, k, v, key_mask, causal):
    """IntAttention's three steps with the int64 reference GEMM."""
    H, G = q.shape[1], k.shape[1]
    k, v = np.repeat(k, H // G, axis=1), np.repeat(v, H // G, axis=1)
    scores = np.matmul(q.astype(np.int64), k.transpose(0, 1, 3, 2).astype(np.int64)).astype(np.int32)
    stats = OpStats()
    probs = sm(scores, key_mask, stats, "softmax", causal=causal)
    ctx = np.matmul(probs.astype(np.int64), v.astype(np.int64)).astype(np.int32)     # (B, H, T, d)
    B, _, T, d = ctx.shape
    return ctx.transpose(0, 2, 1, 3).reshape(B, T, H * d), scores, stats


def codes(draw, shape, extreme):
    if extreme:
        return np.array(draw(st.lists(st.sampled_from([-128, 127, 0, -1]), min_size=int(np.prod(shape)),
                                      max_size=int(np.prod(shape)))), np.int8).reshape(shape)
    seed = draw(st.integers(0, 2**31))
    return np.random.default_rng(seed).integers(-128, 128, shape).astype(np.int8)


@st.composite
def attention_cases(draw):
    B, G = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    H = G * draw(st.integers(1, 3))
    T = draw(st.integers(1, 9))
    S = T + draw(st.sampled_from([0, 0, 1, 5]))          # more keys than queries: a KV cache's offset
    d = draw(st.sampled_from([1, 4, 8, 32]))
    extreme = draw(st.booleans())
    q, k, v = codes(draw, (B, H, T, d), extreme), codes(draw, (B, G, S, d), extreme), codes(draw, (B, G, S, d), extreme)
    mask = None
    if draw(st.booleans()):
        mask = np.array(draw(st.lists(st.booleans(), min_size=B * S, max_size=B * S)), np.uint8).reshape(B, S)
    return q, k, v, mask, draw(st.booleans())


@settings(max_examples=60, deadline=None)
@given(attention_cases(), st.sampled_from([("exp16", "pwl"), ("exp16_c12", "pwl"), ("exp8", "divider")]),
       st.sampled_from([1 / 64, 1 / 256, 1 / 2048]), st.sampled_from([8, 8, 12, 16, 5]))
def test_fused_attention_equals_the_three_steps(case, kernel, in_scale, out_bits):
    """Every probability width: UINT8 (float32 chunks), 12 and 16 bits (float64 context products)."""
    q, k, v, mask, causal = case
    sm = softmax(*kernel, in_scale=in_scale, out_bits=out_bits)
    assume(supports(sm, q.shape[-1]))
    ctx, peaks, score_peak = fused_attention(sm, q, k, v, mask, causal)
    ectx, scores, stats = unfused(sm, q, k, v, mask, causal)
    assert ctx.dtype == np.int32 and np.array_equal(ctx, ectx)
    assert score_peak == int(np.abs(scores).max())
    fstats = OpStats()
    sm.count(fstats, "softmax", *peaks.shape[:1], k.shape[2], peaks)     # the same counts from the fused peaks
    assert fstats.to_dict() == stats.to_dict()


def test_fused_attention_over_more_keys_than_one_float32_chunk():
    """Keys beyond CONTEXT_CHUNK: the context sums chunk by chunk, still exact (all-extreme values
    push every partial sum of probabilities times values to its bound)."""
    rng = np.random.default_rng(7)
    S = 2 * CONTEXT_CHUNK + 3
    q = np.full((1, 2, 3, 4), 0, np.int8)                # equal scores: the probabilities spread evenly
    k = rng.integers(-128, 128, (1, 1, S, 4)).astype(np.int8)
    v = np.full((1, 1, S, 4), -128, np.int8)
    v[..., 1] = 127
    for sm in (softmax(), softmax("exp8", "divider"), softmax(out_bits=12), softmax("exp8", "divider", out_bits=12)):
        ctx, _, _ = fused_attention(sm, q, k, v, None, True)
        assert np.array_equal(ctx, unfused(sm, q, k, v, None, True)[0])


def test_fused_attention_refuses_keys_beyond_the_int32_context_accumulator():
    """``S * (2**P - 1) * 128 < 2**31``: 16-bit probabilities take at most 256 keys, UINT8 ones 65,793."""
    sm = softmax(out_bits=16)
    q = np.zeros((1, 1, 1, 4), np.int8)
    fused_attention(sm, q, np.zeros((1, 1, 256, 4), np.int8), np.zeros((1, 1, 256, 4), np.int8))
    with pytest.raises(GQAError) as ei:
        fused_attention(sm, q, np.zeros((1, 1, 257, 4), np.int8), np.zeros((1, 1, 257, 4), np.int8))
    assert ei.value.field == "keys" and "at most 256 keys" in str(ei.value)


def test_fused_attention_refuses_what_it_does_not_compute():
    sm = softmax()
    q = np.zeros((1, 3, 2, 4), np.int8)
    kv = np.zeros((1, 2, 2, 4), np.int8)
    with pytest.raises(GQAError) as ei:
        fused_attention(sm, q, kv, kv)                   # 2 KV heads do not divide 3 query heads
    assert ei.value.field == "k"
    with pytest.raises(GQAError) as ei:
        fused_attention(sm, q.astype(np.int16), kv, kv)
    assert ei.value.field == "q"
    with pytest.raises(GQAError) as ei:
        fused_attention(sm, q, kv[:, :1], kv[:, :1], np.ones((2, 2)))
    assert ei.value.field == "key_mask"
    assert not supports(sm, 1025) and supports(sm, 1024)
    sm.diff_lut = None                                   # the per-element softmax path has no fused kernel
    assert not supports(sm, 4)
    with pytest.raises(GQAError) as ei:
        fused_attention(sm, q, kv[:, :1], kv[:, :1])
    assert ei.value.field == "softmax"
