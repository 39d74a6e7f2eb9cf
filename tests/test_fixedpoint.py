"""intsim.fixedpoint against the pure-Python-integer references in reference_int.py."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import intsim
import reference_int as ref
from intsim import GQAError, QFormat, SaturationCounter
from intsim.fixedpoint import (rounding_divide_by_pot, saturating_rounding_doubling_high_mul)

FAST = settings(max_examples=200, deadline=None)

int64s = st.integers(ref.INT64_MIN, ref.INT64_MAX)
int32s = st.integers(ref.INT32_MIN, ref.INT32_MAX)
modes = st.sampled_from(ref.MODES)


def assert_field(excinfo, field: str) -> None:
    exc = excinfo.value
    assert isinstance(exc, GQAError)
    assert exc.field == field, f"field {exc.field!r}, expected {field!r}: {exc}"
    assert str(exc).startswith(field + ":")


def as_ints(a) -> list[int]:
    arr = np.asarray(a)
    assert arr.dtype == np.int64
    return [int(v) for v in arr.ravel()]


def test_reference_self_check():
    ref.self_check()


# --- round_shift --------------------------------------------------------------------------

@st.composite
def shift_operands(draw, shift_lo=1, shift_hi=40):
    """``(x, shift)`` with x in int32/int64, with a bias toward exact ties and near-ties."""
    s = draw(st.integers(shift_lo, shift_hi))
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(int32s), s
    if kind == 1:
        return draw(int64s), s
    d = 2**s
    q = draw(st.integers(ref.INT64_MIN // d, ref.INT64_MAX // d - 1))
    r = draw(st.sampled_from([0, d // 2 - 1, d // 2, d // 2 + 1, d - 1]))
    return max(q * d + max(r, 0), ref.INT64_MIN), s


@FAST
@given(shift_operands(), modes)
@example((5, 1), "half_even")
@example((-5, 1), "half_away")
@example((ref.INT64_MIN, 40), "half_up")
@example((ref.INT64_MAX, 40), "half_even")
def test_round_shift_right_matches_reference(xs, mode):
    x, s = xs
    got = intsim.round_shift(np.array([x, -x if x != ref.INT64_MIN else 0]), s, mode)
    assert as_ints(got) == [ref.round_shift(x, s, mode), ref.round_shift(-x if x != ref.INT64_MIN else 0, s, mode)]
    # scalar input gives the same value
    assert int(intsim.round_shift(x, s, mode)) == ref.round_shift(x, s, mode)


@FAST
@given(shift_operands(63, 90), modes)
@example((2**62 + 1, 63), "half_away")     # x / 2**63 just above 1/2: rounds to 1 in every nearest mode
@example((-(2**62) + 1, 63), "half_away")  # just above -1/2: rounds to 0
@example((-(2**62), 63), "half_away")      # the tie -1/2: -1 away from zero, 0 half_up/half_even
@example((ref.INT64_MIN, 63), "half_even")
@example((ref.INT64_MAX, 64), "half_up")
def test_round_shift_huge_shifts_match_reference(xs, mode):
    """Shifts of 63 bits or more (numpy would wrap them) take the exact Python-integer path."""
    x, s = xs
    assert int(intsim.round_shift(x, s, mode)) == ref.round_shift(x, s, mode)
    near = (x, 2**62 + 1, -(2**62) + 1, 2**62, -(2**62), 2**62 - 1)   # at 63 bits: around +-1/2, and the ties
    assert as_ints(intsim.round_shift(np.array(near), s, mode)) == [ref.round_shift(v, s, mode) for v in near]


@FAST
@given(st.integers(-5, 0), modes, st.data())
def test_round_shift_left_is_exact(s, mode, data):
    # left shifts of values whose result fits int64 (callers' width checks guarantee that)
    bound = 2 ** (63 + s)
    xs = data.draw(st.lists(st.integers(-bound, bound - 1), min_size=1, max_size=20))
    assert as_ints(intsim.round_shift(np.array(xs), s, mode)) == [ref.round_shift(x, s, mode) for x in xs]


def test_round_shift_every_mode_on_ties():
    xs = list(range(-40, 41))
    for mode in ref.MODES:
        for s in range(-5, 41):
            assert as_ints(intsim.round_shift(np.array(xs), s, mode)) == [ref.round_shift(x, s, mode) for x in xs]


def test_round_shift_known_values():
    x = np.array([-7, -6, -5, -3, -2, -1, 1, 2, 3, 5, 6, 7])  # /2 and /4
    assert as_ints(intsim.round_shift(x, 1, "half_even")) == [-4, -3, -2, -2, -1, 0, 0, 1, 2, 2, 3, 4]
    assert as_ints(intsim.round_shift(x, 1, "half_up")) == [-3, -3, -2, -1, -1, 0, 1, 1, 2, 3, 3, 4]
    assert as_ints(intsim.round_shift(x, 1, "half_away")) == [-4, -3, -3, -2, -1, -1, 1, 1, 2, 3, 3, 4]
    assert as_ints(intsim.round_shift(x, 1, "floor")) == [-4, -3, -3, -2, -1, -1, 0, 1, 1, 2, 3, 3]
    assert as_ints(intsim.round_shift(x, 2, "half_even")) == [-2, -2, -1, -1, 0, 0, 0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("fn", [lambda m: intsim.round_shift([1, 2], 1, m), lambda m: intsim.round_real([0.5], m),
                                lambda m: QFormat(8).quantize([0.5], rounding=m)])
@pytest.mark.parametrize("mode", ["nearest", "HALF_EVEN", "", "ceil"])
def test_unknown_rounding_mode_names_the_field(fn, mode):
    with pytest.raises(GQAError) as ei:
        fn(mode)
    assert_field(ei, "rounding")
    assert repr(mode) in str(ei.value)


def test_unknown_out_rounding_names_the_field():
    with pytest.raises(GQAError) as ei:
        intsim.PWLDatapath(out_bits=8, out_frac=4, out_rounding="stochastic")
    assert_field(ei, "out_rounding")


# --- round_real ---------------------------------------------------------------------------

finite_floats = st.floats(min_value=-(2.0**62), max_value=2.0**62, allow_nan=False, allow_infinity=False)
half_integers = st.integers(-(2**51), 2**51).map(lambda k: k + 0.5)
large_odd = st.integers(2**52, 2**53 - 1).map(lambda k: float(2 * (k // 2) + 1 if k < 2**53 - 1 else k))


@FAST
@given(st.lists(st.one_of(finite_floats, half_integers, large_odd, finite_floats.map(lambda v: v / 2**40)),
                min_size=1, max_size=8), modes)
@example([0.49999999999999994], "half_up")
@example([-0.49999999999999994], "half_away")
@example([0.49999999999999994], "half_away")
@example([4503599627370497.0], "half_up")
@example([-4503599627370497.0], "half_away")
def test_round_real_matches_exact_rounding(values, mode):
    """Every mode rounds the float's exact value (no double rounding inside ``v + 0.5``)."""
    got = as_ints(intsim.round_real(np.array(values), mode))
    assert got == [ref.round_fraction(v, mode) for v in values]


@pytest.mark.parametrize("bad", [[float("nan")], [1.0, float("inf")], [-float("inf")]])
def test_round_real_refuses_non_finite(bad):
    with pytest.raises(GQAError) as ei:
        intsim.round_real(bad)
    assert_field(ei, "values")


@pytest.mark.parametrize("big", [2.0**63, -(2.0**64), 1e30, -1e300])
def test_round_real_refuses_values_beyond_int64(big):
    """A finite value with no int64 code must be refused, not cast to garbage (INT64_MIN)."""
    with pytest.raises(GQAError):
        intsim.round_real([big])


def test_round_real_keeps_values_up_to_int64():
    """Just inside the int64 range (2**62 and the largest double below 2**63) is rounded, not refused."""
    top = float(np.nextafter(2.0**63, 0))
    assert as_ints(intsim.round_real([2.0**62, -(2.0**62), top, -top])) == [2**62, -(2**62), int(top), -int(top)]


# --- saturate -----------------------------------------------------------------------------

@FAST
@given(st.lists(st.one_of(int64s, st.integers(-300, 300)), max_size=20), st.integers(1, 62), st.booleans(),
       st.text("abc", min_size=1, max_size=3))
def test_saturate_and_counter(xs, bits, signed, name):
    fmt = QFormat(bits, 0, signed)
    counter = SaturationCounter()
    counter.add("other", 3)
    got = intsim.saturate(np.array(xs, dtype=np.int64), fmt, counter, name)
    expected = [ref.saturate(x, bits, signed) for x in xs]
    assert as_ints(got) == [v for v, _ in expected]
    n_clipped = sum(hit for _, hit in expected)
    assert counter.counts[name] == n_clipped
    assert counter.counts["other"] == 3
    assert counter.total == n_clipped + 3
    # counts accumulate, never reset
    intsim.saturate(np.array(xs, dtype=np.int64), fmt, counter, name)
    assert counter.counts[name] == 2 * n_clipped
    # without a counter: same values
    assert as_ints(intsim.saturate(np.array(xs, dtype=np.int64), fmt)) == [v for v, _ in expected]


# --- QFormat ------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", range(1, 63))
def test_qformat_ranges(bits):
    for signed in (True, False):
        f = QFormat(bits, 3, signed)
        assert (f.min_int, f.max_int) == ref.fmt_range(bits, signed)
        assert f.resolution == 2.0**-3
        assert bool(f.fits(f.min_int)) and bool(f.fits(f.max_int))
        assert not bool(f.fits(f.min_int - 1)) and not bool(f.fits(f.max_int + 1))


def test_qformat_is_an_immutable_value():
    """Formats are values: equal fields are equal and hash alike (usable as keys), and a format
    cannot be changed in place (one shared by several tensors would change them all)."""
    import dataclasses

    f = QFormat(8, 3)
    assert f == QFormat(8, 3) and hash(f) == hash(QFormat(8, 3)) and {f: 1}[QFormat(8, 3)] == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.bits = 16


def test_qformat_default_is_signed_int8():
    f = QFormat(8, 6)
    assert (f.min_int, f.max_int, str(f)) == (-128, 127, "s8.6")
    assert str(QFormat(16, 0, False)) == "u16.0"


@pytest.mark.parametrize("bits", [0, -1, -8, 63, 100, 2.5, "8", None])
def test_qformat_bad_bits(bits):
    with pytest.raises(GQAError) as ei:
        QFormat(bits)
    assert_field(ei, "bits")


@pytest.mark.parametrize("frac", [0.5, "3", None])
def test_qformat_bad_frac(frac):
    with pytest.raises(GQAError) as ei:
        QFormat(8, frac)
    assert_field(ei, "frac")


# values * 2**frac is exact for these (no subnormal results), so the exact reference applies
normal_floats = st.floats(-1e6, 1e6, allow_nan=False).filter(lambda v: v == 0 or abs(v) > 1e-300)


@FAST
@given(st.lists(normal_floats, min_size=1, max_size=10), st.integers(1, 24), st.integers(-8, 16), st.booleans(), modes)
def test_qformat_quantize(values, bits, frac, signed, mode):
    f = QFormat(bits, frac, signed)
    counter = SaturationCounter()
    got = as_ints(f.quantize(np.array(values), mode, counter, "q"))
    exp = [ref.saturate(ref.round_fraction(Fraction(v) * Fraction(2) ** frac, mode), bits, signed) for v in values]
    assert got == [v for v, _ in exp]
    assert counter.counts["q"] == sum(h for _, h in exp)
    assert np.array_equal(f.to_real(got), np.array([float(Fraction(c) / Fraction(2) ** frac) for c in got]))


# --- gemmlowp primitives ------------------------------------------------------------------

@FAST
@given(st.lists(st.tuples(st.one_of(int32s, st.sampled_from([ref.INT32_MIN, ref.INT32_MAX, 0, 1, -1, 2**30])),
                          st.one_of(int32s, st.sampled_from([ref.INT32_MIN, ref.INT32_MAX, 0, 1, -1, 2**30]))),
                min_size=1, max_size=16))
@example([(ref.INT32_MIN, ref.INT32_MIN)])
@example([(ref.INT32_MIN, ref.INT32_MAX), (ref.INT32_MAX, ref.INT32_MAX), (ref.INT32_MIN, -1)])
def test_srdhm_matches_reference(pairs):
    a = np.array([p[0] for p in pairs], dtype=np.int64)
    b = np.array([p[1] for p in pairs], dtype=np.int64)
    got = as_ints(saturating_rounding_doubling_high_mul(a, b))
    assert got == [ref.srdhm(x, y) for x, y in pairs]
    assert all(ref.INT32_MIN <= v <= ref.INT32_MAX for v in got)


def test_srdhm_overflow_case():
    assert int(saturating_rounding_doubling_high_mul(ref.INT32_MIN, ref.INT32_MIN)) == ref.INT32_MAX
    # neighbours of the overflow case do not saturate
    assert int(saturating_rounding_doubling_high_mul(ref.INT32_MIN, ref.INT32_MIN + 1)) == 2**31 - 1
    assert int(saturating_rounding_doubling_high_mul(ref.INT32_MIN + 1, ref.INT32_MIN + 1)) == 2**31 - 2
    # rounding ties (a*b an odd multiple of 2**30): the nudge 2**30 / 1 - 2**30 with truncating
    # division sends +0.5 -> 1, +1.5 -> 2 but -0.5 -> 0, -1.5 -> -1 (gemmlowp's behaviour)
    assert int(saturating_rounding_doubling_high_mul(2**15, 2**15)) == 1
    assert int(saturating_rounding_doubling_high_mul(3 * 2**15, 2**15)) == 2
    assert int(saturating_rounding_doubling_high_mul(-(2**15), 2**15)) == 0
    assert int(saturating_rounding_doubling_high_mul(-3 * 2**15, 2**15)) == -1
    assert int(saturating_rounding_doubling_high_mul(-(2**15) - 1, 2**15)) == -1


@FAST
@given(st.lists(st.one_of(int64s, int32s, st.integers(-1000, 1000)), min_size=1, max_size=16), st.integers(0, 62))
@example([-1, 1, -3, 3, -2, 2], 1)
@example([ref.INT64_MIN, ref.INT64_MAX], 62)
def test_rounding_divide_by_pot_matches_reference(xs, n):
    got = as_ints(rounding_divide_by_pot(np.array(xs, dtype=np.int64), n))
    assert got == [ref.rdbpot(x, n) for x in xs]
    assert got == [ref.rdbpot_exact(x, n) for x in xs]


@pytest.mark.parametrize("n", [-1, 63, 100])
def test_rounding_divide_by_pot_bad_exponent(n):
    with pytest.raises(GQAError) as ei:
        rounding_divide_by_pot([1, 2, 3], n)
    assert_field(ei, "exponent")


@st.composite
def requant_cases(draw, shift_lo=-31, shift_hi=62):
    m0 = draw(st.one_of(st.integers(2**30, 2**31 - 1), int32s))
    shift = draw(st.integers(shift_lo, shift_hi))
    accs = draw(st.lists(st.one_of(int32s, st.integers(-(2**16), 2**16),
                                   st.sampled_from([ref.INT32_MIN, ref.INT32_MAX])), min_size=1, max_size=12))
    out_bits = draw(st.one_of(st.none(), st.integers(2, 32)))
    return accs, m0, shift, out_bits


@FAST
@given(requant_cases())
@example(([ref.INT32_MIN], ref.INT32_MIN, 0, None))
@example(([ref.INT32_MAX, ref.INT32_MIN, 5], 2**30, -1, 8))
def test_requantize_matches_reference(case):
    accs, m0, shift, out_bits = case
    counter = SaturationCounter()
    out = QFormat(out_bits) if out_bits is not None else None
    got = as_ints(intsim.requantize(np.array(accs, dtype=np.int64), m0, shift, out, counter, "rq"))
    exp = [ref.requantize(a, m0, shift, out_bits) for a in accs]
    assert got == [v for v, _ in exp]
    assert counter.total == sum(s for _, s in exp)
    # per-site counts: left-shift saturations, then output saturations
    left = sum(ref.saturate(a * 2 ** (-shift), 32)[1] for a in accs) if shift < 0 else 0
    assert counter.counts.get("rq.left_shift", 0) == left
    assert counter.counts.get("rq", 0) == counter.total - left


@settings(max_examples=100, deadline=None)
@given(requant_cases(shift_lo=-40, shift_hi=-32))
@example(([2**31 - 1], 2**30, -40, None))
def test_requantize_large_left_shift_correct_or_refused(case):
    """Left shifts by 32..40 (which would overflow int64 before the int32 saturation): the shift
    is capped, so every non-zero value saturates and the answer is the reference's."""
    accs, m0, shift, out_bits = case
    out = QFormat(out_bits) if out_bits is not None else None
    got = as_ints(intsim.requantize(np.array(accs, dtype=np.int64), m0, shift, out))
    assert got == [ref.requantize(a, m0, shift, out_bits)[0] for a in accs]


@pytest.mark.parametrize("acc", [2**31, -(2**31) - 1, 2**40, -(2**50)])
def test_requantize_accumulator_outside_int32_correct_or_refused(acc):
    """The spec takes an int32 accumulator; a wider one is refused (GQAError naming acc), not wrapped."""
    with pytest.raises(GQAError) as exc:
        intsim.requantize(np.array([acc], dtype=np.int64), 2**30, 0)
    assert exc.value.field == "acc"


@pytest.mark.parametrize("m0", [2**31, -(2**31) - 1, 2**40])
def test_requantize_multiplier_outside_int32(m0):
    with pytest.raises(GQAError) as ei:
        intsim.requantize([1, 2], m0, 3)
    assert_field(ei, "multiplier")


# --- quantize_multiplier ------------------------------------------------------------------

@FAST
@given(st.one_of(st.floats(min_value=2.0**-60, max_value=1.0, exclude_max=True),
                 st.floats(min_value=0.5, max_value=1.0, exclude_max=True),
                 st.integers(1, 2**20).map(lambda k: k * 2.0**-21)))
@example(1.0 - 2.0**-53)
@example(0.5)
@example(2.0**-60)
@example(0.5 - 2.0**-54)
def test_quantize_multiplier(m):
    m0, n = intsim.quantize_multiplier(m)
    assert isinstance(m0, int) and isinstance(n, int)
    assert (m0, n) == ref.quantize_multiplier(m)
    assert 2**30 <= m0 < 2**31
    # within half a unit of M0's last place
    assert abs(ref.dyadic_value(m0, n) - Fraction(m)) <= Fraction(1) / Fraction(2) ** (32 + n)


@pytest.mark.parametrize("m", [0.0, 1.0, -0.25, 1.5, float("nan"), float("inf"), 2.0**-64, 5e-324])
def test_quantize_multiplier_refuses(m):
    with pytest.raises(GQAError) as ei:
        intsim.quantize_multiplier(m)
    assert_field(ei, "multiplier")


@FAST
@given(st.floats(min_value=2.0**-20, max_value=0.999), st.lists(int32s, min_size=1, max_size=10))
def test_requantize_with_quantized_multiplier_approximates_product(m, accs):
    m0, n = intsim.quantize_multiplier(m)
    got = as_ints(intsim.requantize(np.array(accs, dtype=np.int64), m0, n))
    for a, y in zip(accs, got):
        assert y == ref.requantize(a, m0, n)[0]
        assert abs(Fraction(y) - Fraction(a) * Fraction(m)) <= 2, (a, m, y)


def test_math_sanity_of_strategies():
    # the tie strategy really produces ties
    assert ref.round_shift(3 * 2**10 + 2**9, 10, "half_even") == 4
    assert math.isclose(float(ref.dyadic_value(2**30, 0)), 0.5)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 6), st.integers(1, 9), st.integers(0, 2**32 - 1), st.sampled_from(["none", "pot", "mantissa"]),
       st.booleans(), st.sampled_from([np.int32, np.int64]))
def test_dequantize_equals_the_numpy_expressions(rows, cols, seed, rows_kind, biased, dtype):
    """One pass, the same float64 bits as ``(acc * g + b) * s`` -- and, for power-of-two rows, as the
    ``acc * (s * 2**t)`` the logits head computed before (the power of two is exact either way)."""
    from intsim.fixedpoint import RowScale, dequantize

    rng = np.random.default_rng(seed)
    acc = rng.integers(-(2**31), 2**31, (rows, cols)).astype(dtype)
    acc[0, 0] = 0
    s = rng.uniform(1e-9, 1e-2, cols)
    b = rng.integers(-(2**20), 2**20, cols) if biased else None
    g = None
    if rows_kind == "pot":
        t = rng.integers(-8, 9, rows)
        g = np.exp2(t.astype(np.float64))
        if not biased:
            assert np.array_equal(dequantize(acc, s, g), acc * (s[None, :] * g[:, None]))
    elif rows_kind == "mantissa":
        g = RowScale(rng.integers(8, 16, rows), rng.integers(-8, 9, rows), 3).factor()
    want = (acc * (1.0 if g is None else g[:, None]) + (0.0 if b is None else b[None, :])) * s[None, :]
    got = dequantize(acc, s, g, b)
    assert got.dtype == np.float64 and np.array_equal(got, want)
    assert np.array_equal(np.signbit(got), np.signbit(want))
    with pytest.raises(GQAError) as ei:
        dequantize(acc.astype(np.float32), s)
    assert ei.value.field == "acc"
