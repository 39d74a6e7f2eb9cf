"""I-BERT's and I-ViT's integer kernels (intsim.ibert, intsim.ivit) against slow references.

The references below are plain Python integers (and :class:`fractions.Fraction` where a power of
two may be negative), element by element and row by row, written from the module docstrings'
formulas; the integer constants are recomputed here from the same documented float64
expressions (and, where the docstring defines a constant by a property, by a search for that
property rather than the closed form the module uses). The numba kernels must agree bit for
bit. Accuracy tests against float GELU / softmax pin the measured error of each baseline.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import reference_int as ref
from intsim import GQAError
from intsim.ibert import IBertGelu, IBertSoftmax
from intsim.ivit import ShiftGelu, Shiftmax
from intsim.opstats import OpStats

FAST = settings(max_examples=100, deadline=None)
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
LN2 = math.log(2.0)


def sgn(v: int) -> int:
    return (v > 0) - (v < 0)


def floor_pow2(v: int, e: int) -> int:
    """``floor(v * 2**e)`` for any integer ``e``, exactly (without building huge powers)."""
    if e >= 0:
        return v * 2**e
    if -e > abs(v).bit_length():              # |v| < 2**-e: the floor is 0 or -1
        return 0 if v >= 0 else -1
    f = Fraction(v, 2**-e)
    return f.numerator // f.denominator


def bit_length(v: int) -> int:
    return int(v).bit_length()


# --- references: I-BERT ----------------------------------------------------------------------

def ibert_gelu_constants(in_absmax: float, in_bits: int) -> dict:
    a, b = -0.2888, -1.769
    S = in_absmax / (2 ** (in_bits - 1) - 1)
    S1 = S / math.sqrt(2.0)
    q_b = math.floor(b / S1)
    q_c = math.floor(1.0 / (a * S1 * S1))
    lmax = max(abs(L) for L in (q_c, q_b**2 + q_c))       # L = square + q_c, square in [0, q_b**2]
    t = 0
    while True:
        q_1 = math.floor(1.0 / (a * S1 * S1 * 2.0**t))
        if 2 ** (in_bits - 1) * (lmax // 2**t + 1 + abs(q_1)) <= INT32_MAX:
            break
        t += 1
    return {"in_scale": S, "q_b": q_b, "q_c": q_c, "t": t, "q_1": q_1,
            "out_scale": -S * (a * S1 * S1 * 2.0**t) / 2.0}


def ibert_gelu_ref(q: int, c: dict) -> int:
    L = (min(abs(q), -c["q_b"]) + c["q_b"]) ** 2 + c["q_c"]
    q_erf = floor_pow2(sgn(q) * L, -c["t"])
    y = q * (q_erf + c["q_1"])
    assert INT32_MIN <= -y <= INT32_MAX
    return -y


def ibert_softmax_constants(S: float, exp_bits) -> dict:
    q_ln2 = math.floor(LN2 / S)
    q_b = math.floor(1.353 / S)
    q_c = math.floor(0.344 / (0.3585 * S * S))
    # the largest L over q_p in (-q_ln2, 0], by enumeration where it is short
    ps = range(1 - q_ln2, 1) if q_ln2 <= 5000 else (1 - q_ln2, 0)
    lmax = max((p + q_b) ** 2 + q_c for p in ps)
    s = 0
    if exp_bits is not None:
        while lmax // 2**s > 2 ** (exp_bits - 1) - 1:
            s += 1
    return {"q_ln2": q_ln2, "q_b": q_b, "q_c": q_c, "s": s}


def ibert_softmax_row(a: list[int], m: list[int], c: dict, out_bits: int) -> list[int]:
    keys = [t for t in range(len(a)) if m[t]]
    if not keys:
        return [0] * len(a)
    mx = max(a[t] for t in keys)
    E = []
    for t in range(len(a)):
        if not m[t]:
            E.append(0)
            continue
        d = max(a[t] - mx, INT32_MIN)
        z = (-d) // c["q_ln2"]
        qp = d + z * c["q_ln2"]
        assert -c["q_ln2"] < qp <= 0
        L = (qp + c["q_b"]) ** 2 + c["q_c"]
        assert L > 0
        E.append(floor_pow2(L, -(z + c["s"])))
    Z = sum(E)
    top = 2**out_bits - 1
    return [min((e * 2**out_bits + Z // 2) // Z, top) for e in E]


# --- references: I-ViT -----------------------------------------------------------------------

def shift_exp_ref(I: int, i0: int, n: int) -> int:
    assert I <= 0
    ip = I + (I >> 1) - (I >> 4)
    q = math.floor(Fraction(ip, -i0))
    r = -(ip - q * (-i0))
    assert q >= 0 and 0 <= r < i0
    ib = ((-r) >> 1) + i0
    return floor_pow2(ib, n - q)


def shiftmax_constants(S: float, exp_bits: int) -> dict:
    i0 = math.floor(1.0 / S + 0.5)
    n = 64
    while floor_pow2(i0, n) > 2 ** (exp_bits - 1) - 1:      # the largest N that fits exp_bits
        n -= 1
    return {"i0": i0, "n": n}


def shiftmax_row(a: list[int], m: list[int], c: dict, out_bits: int, M: int) -> list[int]:
    keys = [t for t in range(len(a)) if m[t]]
    if not keys:
        return [0] * len(a)
    mx = max(a[t] for t in keys)
    E = [shift_exp_ref(max(a[t] - mx, INT32_MIN), c["i0"], c["n"]) if m[t] else 0 for t in range(len(a))]
    Z = sum(E)
    F = 2**M // Z
    return [min((e * F) // 2 ** (M - out_bits), 2**out_bits - 1) for e in E]


def shift_gelu_constants(in_absmax: float, in_bits: int, k: int) -> dict:
    code_max = 2 ** (in_bits - 1) - 1
    S = in_absmax / code_max
    i0 = math.floor(1.0 / S + 0.5)
    m_max = code_max + (code_max >> 1) + (code_max >> 3) + (code_max >> 4)
    n = 0
    while shift_exp_ref(-m_max, i0, n) < 2 ** (k + 2):
        n += 1
    M = max(31, bit_length(i0) + n + 1 + k + 7)
    if M > 62:
        M, n = 62, 62 - k - 8 - bit_length(i0)
    return {"in_scale": S, "i0": i0, "n": n, "M": M, "out_scale": S * 2.0 ** -(k - 1)}


def shift_gelu_row(xs: list[int], c: dict, k: int) -> list[int]:
    ips = [x + (x >> 1) + (x >> 3) + (x >> 4) for x in xs]
    m = max([0] + ips)
    em = shift_exp_ref(-m, c["i0"], c["n"])
    out = []
    for x, ip in zip(xs, ips):
        e = shift_exp_ref(ip - m, c["i0"], c["n"])
        Z = e + em
        s = 0 if Z == 0 else (e * (2 ** c["M"] // Z)) // 2 ** (c["M"] - (k - 1))
        assert 0 <= s <= 2 ** (k - 1)
        out.append(x * s)
    return out


# --- strategies ------------------------------------------------------------------------------


@st.composite
def gelu_case(draw, max_bits=16):
    in_bits = draw(st.integers(2, max_bits))
    code_max = 2 ** (in_bits - 1) - 1
    lo = math.log10(0.05)
    hi = math.log10(min(100.0, 1.5 * code_max))
    in_absmax = 10 ** draw(st.floats(lo, hi))
    rows = draw(st.integers(1, 4))
    cols = draw(st.integers(1, 16))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    q = rng.integers(-(code_max + 1), code_max + 1, (rows, cols))
    style = draw(st.sampled_from(["uniform", "edges", "negative", "small"]))
    if style == "edges":
        q[rng.random(q.shape) < 0.5] = -(code_max + 1)
        q[rng.random(q.shape) < 0.3] = code_max
    elif style == "negative":
        q = -np.abs(q) - 1
        q = np.maximum(q, -(code_max + 1))
    elif style == "small":
        q = np.clip(q, -3, 3)
    return in_bits, in_absmax, q.astype(np.int64)


@st.composite
def softmax_case(draw):
    S = 10 ** draw(st.floats(-6.0, math.log10(0.69)))
    B, H, Tq, Tk = (draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 3)),
                    draw(st.integers(1, 12)))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    spread = 10 ** draw(st.floats(-1.0, 1.5))                   # real std of the scores
    codes = np.clip(np.rint(rng.normal(0, spread, (B, H, Tq, Tk)) / S), INT32_MIN, INT32_MAX)
    if draw(st.booleans()):                                     # extreme codes: d clamps at -2**31
        codes[rng.random(codes.shape) < 0.2] = INT32_MIN
        codes[rng.random(codes.shape) < 0.2] = INT32_MAX
    if draw(st.booleans()):                                     # ties
        codes[..., : Tk // 2] = codes[..., :1]
    mask = (rng.random((B, Tk)) < draw(st.floats(0.0, 1.0))).astype(np.uint8)
    if draw(st.booleans()):
        mask[rng.integers(0, B)] = 0                            # an all-masked sentence
    return S, codes.astype(np.int32), mask


def check_softmax(kernel, scores, mask, row_ref, causal=False):
    """``mask=None``: no padding mask; ``causal``: the causal mask too (reference_int.visible_keys)."""
    got = kernel(scores, mask, causal=causal)
    assert got.shape == scores.shape and got.dtype == (np.uint8 if kernel.out_bits <= 8 else np.uint16)
    B, H, Tq, Tk = scores.shape
    for b in range(B):
        for h in range(H):
            for i in range(Tq):
                m = [int(v) for v in ref.visible_keys([1] * Tk if mask is None else mask[b].tolist(), i, Tq, causal)]
                want = row_ref([int(v) for v in scores[b, h, i]], m)
                assert [int(v) for v in got[b, h, i]] == want, (b, h, i)


# --- bit-exactness ---------------------------------------------------------------------------

@FAST
@given(gelu_case())
@example((8, 4.0, np.arange(-128, 128).reshape(2, 128)))
@example((16, 0.5, np.array([[-32768, -1, 0, 1, 5, 32767]])))      # t > 0: the width shift
@example((2, 1.5, np.array([[-2, -1, 0, 1]])))
def test_ibert_gelu_matches_reference(case):
    in_bits, in_absmax, q = case
    g = IBertGelu(in_absmax, in_bits)
    c = ibert_gelu_constants(in_absmax, in_bits)
    assert (g.q_b, g.q_c, g.t, g.q_1) == (c["q_b"], c["q_c"], c["t"], c["q_1"])
    assert g.in_scale == c["in_scale"] and g.out_scale == c["out_scale"] > 0
    y = g(q)
    assert y.dtype == np.int32 and y.shape == q.shape
    assert [int(v) for v in y.ravel()] == [ibert_gelu_ref(int(v), c) for v in q.ravel()]


def test_ibert_gelu_width_shift_engages():
    assert IBertGelu(4.0, 8).t == 0
    assert IBertGelu(0.2, 8).t == 0
    g = IBertGelu(0.5, 16)
    assert g.t > 0
    q = np.arange(-32768, 32768)
    y = g(q).astype(np.int64)
    c = ibert_gelu_constants(0.5, 16)
    sample = q[::97]
    assert [int(v) for v in y[::97]] == [ibert_gelu_ref(int(v), c) for v in sample]


@FAST
@given(gelu_case(max_bits=16), st.integers(2, 16))
@example((8, 4.0, np.arange(-128, 128).reshape(4, 64)), 8)
@example((8, 4.0, np.full((2, 3), -128)), 8)                     # all-negative rows: m = 0
@example((8, 20.0, np.arange(-128, 128).reshape(1, 256)), 8)     # M capped at 62
def test_shift_gelu_matches_reference(case, k):
    in_bits, in_absmax, q = case
    k = min(k, 32 - in_bits)
    g = ShiftGelu(in_absmax, in_bits, sig_bits=k)
    c = shift_gelu_constants(in_absmax, in_bits, k)
    assert (g.i0, g.n, g.div_bits) == (c["i0"], c["n"], c["M"])
    assert g.in_scale == c["in_scale"] and g.out_scale == c["out_scale"]
    y = g(q)
    assert y.dtype == np.int32 and y.shape == q.shape
    for r in range(q.shape[0]):
        assert [int(v) for v in y[r]] == shift_gelu_row([int(v) for v in q[r]], c, k), r


def test_shift_gelu_rows_are_the_last_axis():
    g = ShiftGelu(4.0)
    q = np.random.default_rng(1).integers(-128, 128, (2, 3, 5))
    y = g(q)
    flat = g(q.reshape(6, 5)).reshape(2, 3, 5)
    assert np.array_equal(y, flat)
    c = shift_gelu_constants(4.0, 8, 8)
    assert [int(v) for v in g(q[0, 0])] == shift_gelu_row([int(v) for v in q[0, 0]], c, 8)  # 1-d: one row
    assert int(g(np.int64(-7))) == shift_gelu_row([-7], c, 8)[0]                              # 0-d


POLICIES = st.sampled_from(["padding", "causal", "padding+causal", "none"])


def mask_policy(scores, mask, policy):
    """(key mask or None, causal) of a policy name; a causal mask needs Tq <= Tk."""
    causal = "causal" in policy and scores.shape[2] <= scores.shape[3]
    return (mask if "padding" in policy else None), causal


@FAST
@given(softmax_case(), st.sampled_from([None, 8, 16, 24]), st.integers(1, 12), POLICIES)
def test_ibert_softmax_matches_reference(case, exp_bits, out_bits, policy):
    S, scores, mask = case
    mask, causal = mask_policy(scores, mask, policy)
    k = IBertSoftmax(S, out_bits=out_bits, exp_bits=exp_bits)
    c = ibert_softmax_constants(S, exp_bits)
    assert (k.q_ln2, k.q_b, k.q_c, k.s) == (c["q_ln2"], c["q_b"], c["q_c"], c["s"])
    check_softmax(k, scores, mask, lambda a, m: ibert_softmax_row(a, m, c, out_bits), causal)


@FAST
@given(softmax_case(), st.integers(4, 24), st.integers(1, 12), st.data(), POLICIES)
def test_shiftmax_matches_reference(case, exp_bits, out_bits, data, policy):
    S, scores, mask = case
    mask, causal = mask_policy(scores, mask, policy)
    M = data.draw(st.integers(max(out_bits, exp_bits + 4), 62)) if data.draw(st.booleans()) else 31
    M = max(M, out_bits, exp_bits + 4)
    k = Shiftmax(S, out_bits=out_bits, exp_bits=exp_bits, div_bits=M)
    c = shiftmax_constants(S, exp_bits)
    assert (k.i0, k.n) == (c["i0"], c["n"])
    check_softmax(k, scores, mask, lambda a, m: shiftmax_row(a, m, c, out_bits, M), causal)


def test_softmax_coarse_scale_up_to_two():
    """Shiftmax takes scales up to 2 (I_0 = 1); I-BERT's i-exp needs S < ln 2."""
    rng = np.random.default_rng(3)
    scores = rng.integers(-20, 20, (1, 2, 3, 7)).astype(np.int32)
    mask = np.ones((1, 7), np.uint8)
    for S in (0.5, 1.0, 1.9):
        k = Shiftmax(S)
        c = shiftmax_constants(S, 16)
        check_softmax(k, scores, mask, lambda a, m: shiftmax_row(a, m, c, 8, 31))
    c = ibert_softmax_constants(0.68, 16)
    check_softmax(IBertSoftmax(0.68), scores, mask, lambda a, m: ibert_softmax_row(a, m, c, 8))


# --- masks, interface, errors ----------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda S: IBertSoftmax(S), lambda S: Shiftmax(S)])
def test_softmax_masks(make):
    rng = np.random.default_rng(0)
    S = 2e-3
    scores = rng.integers(-3000, 3000, (3, 2, 4, 10)).astype(np.int32)
    mask = np.ones((3, 10), np.uint8)
    mask[0, 6:] = 0
    mask[1] = 0
    k = make(S)
    stats = OpStats()
    p = k(scores, mask.astype(bool), stats=stats)
    assert p.dtype == np.uint8
    assert not p[0, ..., 6:].any() and p[0, ..., :6].any()
    assert not p[1].any()
    # masked scores do not matter, not even for the row max
    s2 = scores.copy()
    s2[0, ..., 6:] = INT32_MAX
    assert np.array_equal(k(s2, mask), p)
    d = stats.to_dict()
    assert d["div"] and "softmax.sum" in d["accumulators"] and stats.overflows == 0
    assert all(a["headroom_bits"] >= 0 for a in d["accumulators"].values())
    assert k.name in ("ibert", "ivit") and k.out_scale == 2.0**-8


@pytest.mark.parametrize("make", [lambda a: IBertGelu(a), lambda a: ShiftGelu(a)])
def test_gelu_interface_and_stats(make):
    g = make(4.0)
    assert g.in_bits == 8 and g.in_scale == 4.0 / 127 and g.out_scale > 0 and g.name in ("ibert", "ivit")
    q = np.random.default_rng(0).integers(-128, 128, (5, 7)).astype(np.int8)
    stats = OpStats()
    y = g(q, stats=stats, name="ffn.gelu")
    assert y.dtype == np.int32 and y.shape == q.shape
    d = stats.to_dict()
    assert d["mul"] and all(r["op"].startswith("ffn.gelu.") for k in ("add", "mul") for r in d[k])
    assert stats.overflows == 0
    assert all(a["headroom_bits"] >= 0 for a in d["accumulators"].values())
    with pytest.raises(GQAError):
        g(np.array([128]))
    with pytest.raises(GQAError):
        g(np.array([-129, 0]))


def test_empty_inputs():
    for g in (IBertGelu(4.0), ShiftGelu(4.0)):
        assert g(np.zeros((3, 0), np.int8)).shape == (3, 0)
    for k in (IBertSoftmax(0.01), Shiftmax(0.01)):
        assert k(np.zeros((1, 2, 3, 0), np.int32), np.zeros((1, 0), np.uint8)).shape == (1, 2, 3, 0)


def test_bad_arguments():
    for bad in (lambda: IBertGelu(0.0), lambda: IBertGelu(-1.0), lambda: IBertGelu(4.0, 40),
                lambda: IBertSoftmax(0.7), lambda: IBertSoftmax(0.0), lambda: IBertSoftmax(0.1, out_bits=0),
                lambda: Shiftmax(3.0), lambda: Shiftmax(0.1, div_bits=8), lambda: ShiftGelu(4.0, 8, sig_bits=25),
                lambda: ShiftGelu(400.0)):
        with pytest.raises(GQAError):
            bad()
    k = Shiftmax(1e-3, div_bits=16)
    with pytest.raises(GQAError):          # 100 keys of up to 2**15 overflow a 16-bit numerator
        k(np.zeros((1, 1, 1, 100), np.int32), np.ones((1, 100), np.uint8))


# --- accuracy against float ------------------------------------------------------------------

def float_gelu(x):
    from scipy.special import erf
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


# measured on every 8-bit code with in_absmax = 4 (x in [-4, 4]): max / mean |error|
GELU_TOL = {"ibert": (0.018, 0.0070), "ivit": (0.048, 0.016)}


@pytest.mark.parametrize("make", [lambda: IBertGelu(4.0), lambda: ShiftGelu(4.0)])
def test_gelu_accuracy(make):
    g = make()
    q = np.arange(-128, 128)
    err = np.abs(g(q) * g.out_scale - float_gelu(q * g.in_scale))
    mx, mean = GELU_TOL[g.name]
    assert err.max() <= mx and err.mean() <= mean, (err.max(), err.mean())


def float_softmax(real, mask):
    x = np.where(mask[:, None, None, :] > 0, real, -np.inf)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# BERT-like scores: real std 3, 64 keys of 100 unmasked, S = (6/127)**2 / 8; measured max / mean
# |error| 0.0029 / 0.00035 (I-BERT, rounding divider), 0.018 / 0.00063 (I-ViT: log2(e) ~ 1.4375,
# every step truncates, so rows sum short of 1 by up to ~0.1)
SOFTMAX_TOL = {"ibert": (0.0035, 0.0004, 0.035), "ivit": (0.02, 0.0007, 0.11)}   # max, mean, |sum - 1|


@pytest.mark.parametrize("make", [lambda S: IBertSoftmax(S), lambda S: Shiftmax(S)])
def test_softmax_accuracy(make):
    rng = np.random.default_rng(0)
    S = (6 / 127) ** 2 / 8
    scores = np.rint(rng.normal(0, 3, (4, 4, 16, 100)) / S).astype(np.int32)
    mask = np.ones((4, 100), np.uint8)
    mask[:, 64:] = 0
    k = make(S)
    p = k(scores, mask) / 256.0
    err = np.abs(p - float_softmax(scores * S, mask))
    mx, mean, sm = SOFTMAX_TOL[k.name]
    assert err.max() <= mx and err.mean() <= mean, (err.max(), err.mean())
    assert np.abs(p.sum(-1) - 1).max() <= sm


@pytest.mark.parametrize("make", [lambda: IBertSoftmax(0.01), lambda: Shiftmax(0.01)])
def test_softmax_refuses_a_mask_of_the_wrong_shape(make):
    """The key mask is checked before the kernel reads it (it used to read past its end)."""
    scores = np.zeros((2, 1, 1, 4), np.int32)
    for mask in (np.ones((1, 4), np.uint8), np.ones((2, 3), np.uint8), np.ones(4, np.uint8)):
        with pytest.raises(GQAError, match="key_mask"):
            make()(scores, mask)
    with pytest.raises(GQAError, match="scores"):
        make()(scores.astype(np.int64), np.ones((2, 4), np.uint8))
