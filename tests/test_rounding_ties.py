"""Every rounding kernel on its ties: inputs built to sit exactly on (or next to) a rounding
boundary, positive and negative, against reference_int.py's Python-integer references.

Random int32 inputs almost never hit a tie of a deep shift, so each strategy here constructs
the tie: the value ``k * 2**s + 2**(s-1)`` (``k`` of either sign) before the shift being
tested, derived backwards through the operations in front of it. With ``M0 = 2**30`` SRDHM is
an exact halving of an even accumulator (and a tie of its own for an odd one), so the
requantizers' final RDBPOT sees the value we chose.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import intsim
import reference_int as ref
from intsim import GQAError
from intsim.fixedpoint import dyadic_multiplier, requantize, requantize_channels, requantize_dynamic
from intsim.softmax import IntSoftmax
from intsim import PWLTable

FAST = settings(max_examples=150, deadline=None)


def tie_values(s: int, lo: int, hi: int):
    """Integers in [lo, hi] at, just below and just above a tie of a shift by ``s``."""
    d = 2**s
    half = d // 2

    def build(kr):
        k, r = kr
        return k * d + r

    ks = st.integers(lo // d, hi // d - 1)
    return st.tuples(ks, st.sampled_from([half, half, half, half - 1, half + 1, 0, d - 1])).map(build) \
        .filter(lambda v: lo <= v <= hi)


# --- requantize_channels / _requantize_bf: ties of the final RDBPOT and of the bias rounding ---
@st.composite
def channel_tie_cases(draw):
    rows, cols = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    shifts = draw(st.lists(st.integers(0, 20), min_size=cols, max_size=cols))
    row_shift = draw(st.lists(st.integers(0, 12), min_size=rows, max_size=rows)) if draw(st.booleans()) else None
    acc = []
    for r in range(rows):
        t = 0 if row_shift is None else row_shift[r]
        row = []
        for c in range(cols):
            n = max(shifts[c] - t, 1)
            # SRDHM(2v, 2**30) = v: the final RDBPOT by n sees v, a tie; an odd accumulator is a tie of SRDHM
            v = draw(tie_values(n, -(2**29), 2**29 - 1))
            row.append(2 * v + draw(st.sampled_from([0, 0, 0, 1, -1])))
        acc.append(row)
    # biases that tie under the row shifts (negative ties: RDBPOT rounds them away from zero)
    tmax = max(row_shift or [0])
    bias = draw(st.lists(st.one_of(tie_values(max(tmax, 1), -(2**20), 2**20), st.integers(-64, 64)),
                         min_size=cols, max_size=cols))
    out_bits = draw(st.sampled_from([8, 16, 32]))
    return np.array(acc, np.int32), bias, shifts, row_shift, out_bits


@FAST
@given(channel_tie_cases())
@example((np.array([[-6]], np.int32), [-3], [1], [1], 32))   # bias -3 >> 1: -1.5 -> -2 (away); a = -8
@example((np.array([[-6, 6]], np.int32), [0, 0], [2, 2], None, 32))  # -3/4 and 3/4: no tie, then
@example((np.array([[-4, 4]], np.int32), [0, 0], [2, 2], None, 32))  # -2/4 = -0.5 -> -1, 0.5 -> 1
def test_requantize_channels_on_ties(case):
    acc, bias, shifts, row_shift, out_bits = case
    m0 = [2**30] * acc.shape[1]
    want = ref.requantize_channels(acc.tolist(), bias, m0, shifts, out_bits, None, row_shift)
    got = requantize_channels(acc, np.array(bias), np.array(m0), np.array(shifts), out_bits, out_dtype=np.int32,
                              row_shift=row_shift)
    assert got[0].tolist() == want[0]
    assert got[1:] == tuple(want[1:])
    # the unfused requantizer agrees on the same ties (no bias, no row shift)
    flat = [int(a) for a in acc[0]]
    assert requantize(np.array(flat), 2**30, shifts[0]).tolist() == [ref.requantize(a, 2**30, shifts[0])[0]
                                                                      for a in flat]


def test_requantize_channels_negative_bias_ties_by_hand():
    # RDBPOT(b, t) rounds half away from zero: -3/2 -> -2, 3/2 -> 2, -5/4 -> -1, -6/4 -> -2
    acc = np.zeros((4, 1), np.int32)
    got = requantize_channels(acc, np.array([-3]), np.array([2**30]), np.array([0]), 32, out_dtype=np.int32,
                              row_shift=[1, 1, 2, 0])[0][:, 0].tolist()
    # y = RDBPOT(SRDHM(b', 2**30), -t) = b' * 2**(t-1) after the left shift by t... computed by the reference
    want = ref.requantize_channels([[0]] * 4, [-3], [2**30], [0], 32, None, [1, 1, 2, 0])[0]
    assert got == [w[0] for w in want]
    assert [ref.rdbpot(-3, 1), ref.rdbpot(3, 1), ref.rdbpot(-5, 2), ref.rdbpot(-6, 2)] == [-2, 2, -1, -2]


# --- requantize_dynamic: ties of the per-row shift ---------------------------------------------
@st.composite
def dynamic_tie_rows(draw):
    bits = draw(st.sampled_from([4, 8, 16]))
    hi = 2 ** (bits - 1) - 1
    rows, cols = draw(st.integers(1, 3)), draw(st.integers(2, 5))
    acc = []
    for _ in range(rows):
        t = draw(st.integers(1, 12))
        # the largest |v| forces shift t (|v| >> t = hi exactly, >> (t-1) > hi); the rest tie at t
        top = draw(st.sampled_from([1, -1])) * hi * 2**t
        vals = [top] + [draw(tie_values(t, -hi * 2**t, hi * 2**t - 1)) for _ in range(cols - 1)]
        acc.append([2 * v for v in vals])   # M0 = 2**30, n = 0: v = SRDHM(2v) exactly
    return np.array(acc, np.int32), bits


@FAST
@given(dynamic_tie_rows())
def test_requantize_dynamic_on_ties(case):
    acc, bits = case
    cols = acc.shape[1]
    y, t = requantize_dynamic(acc, np.full(cols, 2**30), np.zeros(cols, np.int64), bits)
    ey, et = ref.requantize_dynamic(acc.tolist(), [2**30] * cols, [0] * cols, bits)
    assert t.tolist() == et and y.tolist() == ey


# --- the softmax's integer divider: ties need an even Z -------------------------------------------
def divider_tie_rows(et, max_keys: int = 16):
    """Rows of exp-input codes (the max first) whose divider ``(256 E + Z // 2) // Z`` has an exact
    tie ``512 E = odd * Z`` (so Z is even), built from the reference's E(u): for a key with
    ``E = v`` and an odd ``k``, the other keys' E fill ``Z = 512 v / k`` greedily."""
    E = {u: max(ref.table_output(u, 4, et), 0) for u in range(-128, 1)}
    code_of = {}
    for u, v in sorted(E.items()):
        code_of.setdefault(v, u)
    values = sorted(v for v in code_of if v > 0)
    rows = []
    for v in values:
        for k in (1, 3, 5, 7):
            if (512 * v) % k or (512 * v // k) % 2:
                continue
            rest = 512 * v // k - E[0] - v
            if v == E[0] or rest < 0:
                continue
            row = [0, code_of[v]]
            while rest > 0 and len(row) < max_keys:
                w = max(x for x in values if x <= rest)
                row.append(code_of[w])
                rest -= w
            if rest == 0:
                rows.append(row)
    return rows


def test_softmax_divider_on_even_z_ties():
    et = PWLTable.load(Path(intsim.__file__).parent / "tables" / "exp16.json")
    rows = divider_tie_rows(et)
    assert len(rows) >= 10
    T = max(len(r) for r in rows)
    # in_scale 1/32 makes the exp-input multiplier exactly 1/2: a score 2u gives code u; one batch
    # per row, the key mask marks its keys
    scores = np.zeros((len(rows), 1, 1, T), np.int32)
    mask = np.zeros((len(rows), T), bool)
    for i, r in enumerate(rows):
        scores[i, 0, 0, :len(r)] = [2 * u for u in r]
        mask[i, :len(r)] = True
    sm = IntSoftmax(1 / 32, et, "divider")
    lut = sm(scores, mask)
    sm.diff_lut = None                       # the per-element kernel, not the tabulated E(d) one
    per_element = sm(scores, mask)
    for i, r in enumerate(rows):
        want = ref.softmax_row(scores[i, 0, 0].tolist(), mask[i].tolist(), 2**30, 0,
                               lambda u: ref.table_output(u, 4, et), -128)[0]
        assert lut[i, 0, 0].tolist() == want and per_element[i, 0, 0].tolist() == want, r


# --- dyadic_multiplier over its whole range --------------------------------------------------------
multipliers = st.one_of(
    st.floats(2.0**-62, 2.0**31, exclude_max=True, allow_subnormal=False),
    st.integers(-62, 30).map(lambda k: 2.0**k),                                   # powers of two
    st.integers(-60, 30).map(lambda k: (2.0 - 2.0**-40) * 2.0**k),                # rounds up to 2**31
    st.integers(-60, 30).map(lambda k: (1.0 + 2.0**-32) * 2.0**k),
    st.floats(1.0, 2.0**31, exclude_max=True),                                    # the m >= 1 branch
)


@settings(max_examples=400, deadline=None)
@given(multipliers)
@example(1.0)
@example(0.9999999999)
@example(2.0**31 - 1)
@example(2147483647.5)
def test_dyadic_multiplier_is_the_rounded_mantissa(m):
    m0, n = dyadic_multiplier(m)
    assert 2**30 <= m0 < 2**31
    # -32: a multiplier just below 2**31 whose mantissa rounds up to 2**31 (requantize saturates it)
    assert -32 <= n <= 62
    v = Fraction(m)
    # M0 = round_half_away(m * 2**(31 + n)), with m * 2**(31+n) in [2**30, 2**31]
    exact = v * Fraction(2) ** (31 + n)
    assert Fraction(2**30) - Fraction(1, 2) <= exact < 2**31
    assert abs(exact - m0) <= Fraction(1, 2)
    if abs(exact - m0) == Fraction(1, 2):
        assert m0 > exact                      # a tie goes away from zero
    assert ref.dyadic_value(m0, n) == Fraction(m0) / Fraction(2) ** (31 + n)
    assert (n < 0) == (ref.dyadic_value(m0, n) >= 1)   # a mantissa rounding up to 2**31 can reach 1
    if m < 1.0:
        assert (m0, n) == ref.quantize_multiplier(m)


@pytest.mark.parametrize("m", [2.0**31, 2.0**40, 0.0, -0.5, -1.0, float("inf"), float("nan")])
def test_dyadic_multiplier_refuses(m):
    with pytest.raises(GQAError) as exc:
        dyadic_multiplier(m)
    assert exc.value.field == "multiplier"
    # the message says what is wrong: not positive (0, -0.5: not "outside (0, 1)"), or too large
    assert ("left shift beyond 31 bits" if 2**31 <= m < float("inf") else "is not a positive real") in str(exc.value)


@FAST
@given(st.floats(1.0, 2.0**20), st.lists(st.integers(-(2**10), 2**10), min_size=1, max_size=8))
def test_dyadic_multiplier_at_least_one_requantizes_to_the_product(m, accs):
    # the m >= 1 branch end to end: a left shift, then SRDHM and RDBPOT, ~ round(acc * m)
    m0, n = dyadic_multiplier(m)
    got = requantize(np.array(accs), m0, n).tolist()
    assert got == [ref.requantize(a, m0, n)[0] for a in accs]
    for a, y in zip(accs, got):
        if abs(a * m) < 2**31 - 2**10:
            assert abs(y - a * m) <= 0.5 + abs(a * m) * 2.0**-29
