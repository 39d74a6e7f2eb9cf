"""The simulator's fused integer kernels against slow Python-integer references, bit for bit.

Each reference in reference_int.py follows the kernel module's docstring literally (per element
or per row, Python ints and Fractions); tables are read through their fields only. Kernels:
requantize_channels (intsim.fixedpoint), round_shift1 / pwl_map (intsim.pwl), msb /
isqrt_newton / MantissaTable (intsim.rangereduce), IntSoftmax, IntLayerNorm, PWLGelu; plus
op-statistics sanity and accuracy sanity against float (tolerances measured and stated).
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, event, example, given, settings
from hypothesis import strategies as st

import intsim
import reference_int as ref
from intsim import GQAError, PWLDatapath, PWLTable
from intsim.fixedpoint import requantize, requantize_channels, requantize_dynamic
from intsim.gelu import PWLGelu
from intsim.layernorm import Z_FRAC, IntLayerNorm, LNOutput
from intsim.layers import multipliers
from intsim.opstats import OpStats
from intsim.pwl import ROUNDING_IDS, pwl_map, round_shift1
from intsim.rangereduce import MantissaTable, isqrt_newton, msb
from intsim.softmax import IntSoftmax

FAST = settings(max_examples=60, deadline=None)
SLOW = settings(max_examples=25, deadline=None)

TABLES = Path(intsim.__file__).parent / "tables"
_CACHE: dict[str, PWLTable] = {}


def table(name: str) -> PWLTable:
    if name not in _CACHE:
        _CACHE[name] = PWLTable.load(TABLES / f"{name}.json")
    return _CACHE[name]


I32 = (ref.INT32_MIN, ref.INT32_MAX)
int32s = st.integers(*I32)


def biased_int32():
    return st.one_of(st.sampled_from([ref.INT32_MIN, ref.INT32_MAX, ref.INT32_MIN + 1, 0, 1, -1, 2**30, -(2**30)]),
                     int32s, st.integers(-(2**12), 2**12))


def code_dtype(bits: int):
    return np.int8 if bits <= 8 else np.int16 if bits <= 16 else np.int32 if bits <= 32 else np.int64


# =============================================================================================
# requantize_channels
# =============================================================================================

@st.composite
def requant_cases(draw):
    lead = draw(st.sampled_from([(), (2,), (1, 2)]))
    rows, cols = draw(st.integers(0, 3)), draw(st.integers(1, 5))
    shape = lead + (rows, cols)
    n = int(np.prod(shape))
    acc = np.array(draw(st.lists(biased_int32(), min_size=n, max_size=n)), np.int32).reshape(shape)

    def per_col(strategy, kind):
        if kind == "scalar":
            v = draw(strategy)
            return v, [v] * cols
        v = draw(st.lists(strategy, min_size=cols, max_size=cols))
        return np.array(v, np.int64), v

    bias_kind = draw(st.sampled_from(["none", "scalar", "vector"]))
    if bias_kind == "none":
        bias, bias_l = None, [0] * cols
    else:
        bias, bias_l = per_col(biased_int32(), bias_kind)
    m0_st = draw(st.sampled_from([st.integers(2**30, 2**31 - 1), int32s,
                                  st.sampled_from([ref.INT32_MIN, 2**30, 2**31 - 1, 1, -1, 0])]))
    m0, m0_l = per_col(m0_st, draw(st.sampled_from(["scalar", "vector"])))
    sh_st = st.one_of(st.integers(-40, 62), st.sampled_from([-32, -31, -30, -1, 0, 1, 31, 32, 61, 62]))
    shifts, shifts_l = per_col(sh_st, draw(st.sampled_from(["scalar", "vector"])))
    out_bits = draw(st.integers(2, 32))
    residual = None
    if draw(st.booleans()):
        rb = draw(st.sampled_from([8, 16, 32]))
        lo, hi = ref.fmt_range(rb)
        vals = draw(st.lists(st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi, 0])), min_size=n, max_size=n))
        residual = np.array(vals, np.int32).reshape(shape)   # one dtype: fewer numba compilations
    row_shift = None
    if draw(st.booleans()):
        n_rows = n // cols
        row_shift = draw(st.lists(st.one_of(st.integers(0, 4), st.integers(0, 40)), min_size=n_rows, max_size=n_rows))
    return acc, bias, bias_l, m0, m0_l, shifts, shifts_l, out_bits, residual, row_shift


def _requant_both(case):
    acc, bias, bias_l, m0, m0_l, shifts, shifts_l, out_bits, residual, row_shift = case
    shape = acc.shape
    rows = acc.reshape(-1, shape[-1]).tolist()
    res_rows = None if residual is None else residual.reshape(-1, shape[-1]).tolist()
    expect = ref.requantize_channels(rows, bias_l, m0_l, shifts_l, out_bits, res_rows, row_shift)
    # one output dtype here (each dtype is another numba compilation); default dtypes: by_hand
    got = requantize_channels(acc, bias, m0, shifts, out_bits, residual, out_dtype=np.int32, row_shift=row_shift)
    assert got[0].shape == shape and got[0].dtype == np.int32
    return rows, (got[0].reshape(-1, shape[-1]).tolist(),) + tuple(got[1:]), expect


LEFT_SHIFT_EDGE = (np.array([[-(2**30)]], np.int32), None, [0], 2**30, [2**30], -1, [-1], 32, None, None)


@FAST
@given(requant_cases())
@example((np.array([[ref.INT32_MIN, ref.INT32_MAX]], np.int32), np.array([ref.INT32_MIN, 5]), [ref.INT32_MIN, 5],
          ref.INT32_MIN, [ref.INT32_MIN] * 2, 0, [0, 0], 32, None, None))
@example(LEFT_SHIFT_EDGE)
def test_requantize_channels_matches_reference(case):
    """Values, saturations and peak (the overflow count: next test)."""
    rows, (y, sat, ovf, peak), (exp_y, exp_sat, exp_ovf, exp_peak) = _requant_both(case)
    assert y == exp_y
    assert (sat, peak) == (exp_sat, exp_peak)
    # the scalar numba requantizer equals the numpy one of intsim.fixedpoint (int32 input)
    _, _, bias_l, _, m0_l, _, shifts_l, *_ = case
    for r in rows[:2]:
        for c, v in enumerate(r):
            a = ref.saturate(v + bias_l[c], 32)[0]
            expect = ref.requantize(a, m0_l[c], shifts_l[c])[0]
            assert int(requantize(np.array([a]), m0_l[c], shifts_l[c])[0]) == expect


@FAST
@given(requant_cases())
@example(LEFT_SHIFT_EDGE)
def test_requantize_channels_overflow_count(case):
    """``overflowed`` = accumulators outside int32 + left shifts that clip to int32; ``a = -2**(31-k)``
    shifted by k is exactly INT32_MIN, no clip, so not counted (LEFT_SHIFT_EDGE: acc = -2**30, n = -1)."""
    _, got, expect = _requant_both(case)
    assert got[2] == expect[2]


def test_requantize_channels_by_hand():
    acc = np.array([[100, -100, 7, 2**31 - 1]], np.int32)
    # M0 = 2**30 is 1/2: 100 -> 50; -100 + bias 1 = -99 -> -49.5 -> -49 (SRDHM's nudge 1 - 2**30 and
    # truncating division round a negative tie toward zero: (-99 * 2**30 + 1 - 2**30) / 2**31 = -49.99..)
    y, sat, ovf, peak = requantize_channels(acc, [0, 1, 0, 10], 2**30, [0, 0, 1, 0], 8,
                                            residual=np.array([[0, 0, -128, 0]], np.int32))
    assert y.dtype == np.int8
    # 7/4 = 1.75 -> 2, + (-128) -> -126;  (2**31 - 1 + 10) overflows int32 -> saturated -> 2**30 -> 127
    assert y.tolist() == [[50, -49, -126, 127]]
    assert ref.srdhm(-99, 2**30) == -49
    assert (sat, ovf, peak) == (1, 1, 2**31 + 9)
    for bits, dt in ((16, np.int16), (32, np.int32)):
        y, *_ = requantize_channels(acc, None, 2**30, 0, bits)
        assert y.dtype == dt and y.tolist() == [[50, -50, 4, min(2**30, 2 ** (bits - 1) - 1)]]


def test_requantize_channels_refuses_huge_shifts():
    with pytest.raises(GQAError) as ei:
        requantize_channels(np.zeros((1, 2), np.int32), None, 2**30, [0, 63], 8)
    assert ei.value.field == "shifts"


def test_requantize_channels_shape_errors():
    """Per-column operands of the wrong length, residuals of the wrong shape and output widths
    outside [2, 32] are refused by a GQAError naming the field; one value (a scalar or a length-1
    array) is broadcast over the columns."""
    acc = np.array([[100, -7], [3, 2**20]], np.int32)
    for kw, field in [(dict(bias=[1, 2, 3]), "bias"), (dict(bias=np.zeros(0, np.int64)), "bias"),
                      (dict(multipliers=[2**30] * 3), "multipliers"), (dict(shifts=np.zeros((2, 2))), "shifts"),
                      (dict(residual=np.zeros((3, 3), np.int32)), "residual"), (dict(out_bits=33), "out_bits"),
                      (dict(out_bits=1), "out_bits")]:
        args = dict(bias=None, multipliers=2**30, shifts=0, out_bits=8) | kw
        with pytest.raises(GQAError) as ei:
            requantize_channels(acc, args.pop("bias"), args.pop("multipliers"), args.pop("shifts"),
                                args.pop("out_bits"), **args)
        assert ei.value.field == field
    y1 = requantize_channels(acc, [5], [2**30], [1], 32)[0]
    y2 = requantize_channels(acc, [5, 5], [2**30] * 2, [1, 1], 32)[0]
    assert y1.dtype == np.int32 and np.array_equal(y1, y2)
    assert y1.tolist() == [[ref.requantize(v + 5, 2**30, 1)[0] for v in row] for row in acc.tolist()]


def test_requantize_channels_counts_left_shift_saturation():
    """A negative shift's left shift that clips to int32 is counted in ``overflowed``."""
    acc = np.array([[2**30, 3, -(2**30) - 1, 2**30 - 1]], np.int32)
    y, sat, ovf, peak = requantize_channels(acc, None, 2**30, -1, 32)
    assert y.tolist() == [[ref.requantize(int(a), 2**30, -1)[0] for a in acc[0].tolist()]]
    assert [ref.requantize(int(a), 2**30, -1, 32)[1] for a in acc[0].tolist()] == [1, 0, 1, 0]
    assert (sat, ovf) == (0, 2)


@pytest.mark.parametrize("t", [31, 32, 33, 62])
def test_requantize_channels_left_shifts_of_31_bits_and_more(t):
    """A row shift beyond the column's ``n`` shifts left by ``t - n`` bits. ``-1 << 31`` is
    exactly INT32_MIN (no overflow); past 31 bits every non-zero value overflows and is counted,
    -1 included (a shift capped at 31 bits would let it through uncounted)."""
    acc = np.array([[-1, 1, 0, -5, 2**30]] * 2, np.int32)
    rs = [0, t]
    y, sat, ovf, peak = requantize_channels(acc, None, 2**30, 0, 32, row_shift=rs)
    ey, esat, eovf, epeak = ref.requantize_channels(acc.tolist(), [0] * 5, [2**30] * 5, [0] * 5, 32, row_shifts=rs)
    assert (y.tolist(), sat, ovf, peak) == (ey, esat, eovf, epeak)
    assert ovf == (3 if t == 31 else 4)              # the second row's non-zero values


@FAST
@given(st.integers(1, 3), st.integers(1, 5), st.integers(2, 16), st.data())
def test_requantize_dynamic_matches_reference(rows, cols, bits, data):
    acc = np.array(data.draw(st.lists(st.lists(biased_int32(), min_size=cols, max_size=cols),
                                      min_size=rows, max_size=rows)), np.int32)
    m0 = data.draw(st.lists(st.integers(2**30, 2**31 - 1), min_size=cols, max_size=cols))
    n = data.draw(st.lists(st.integers(-3, 40), min_size=cols, max_size=cols))
    y, t = requantize_dynamic(acc, np.array(m0), np.array(n), bits)
    ey, et = ref.requantize_dynamic(acc.tolist(), m0, n, bits)
    assert y.dtype == (np.int8 if bits <= 8 else np.int16)
    assert y.tolist() == ey and t.tolist() == et


def test_requantize_dynamic_kernel_source_without_the_compiler():
    """The kernel's Python source (``py_func``: numpy scalars, no LLVM) gives the reference's codes
    and shifts too: its arithmetic does not lean on what the compiler makes of an undefined shift
    (a negative count is poison in LLVM; numpy gives 0)."""
    from intsim.fixedpoint import _requantize_dynamic

    acc = np.array([[0, 1, -1], [300, -7, 2], [ref.INT32_MAX, ref.INT32_MIN, 5]], np.int64)
    m0, n = np.full(3, 2**30, np.int32), np.array([0, 1, 2], np.int64)
    out, shifts = np.zeros((3, 3), np.int64), np.zeros(3, np.int64)
    _requantize_dynamic.py_func(acc, m0, n, 8, out, shifts)
    ey, et = ref.requantize_dynamic(acc.tolist(), m0.tolist(), n.tolist(), 8)
    assert out.tolist() == ey and shifts.tolist() == et


@FAST
@given(st.lists(biased_int32(), min_size=1, max_size=8), st.integers(2**30, 2**31 - 1), st.integers(-40, 62))
@example([-1, 1, 0, ref.INT32_MIN, ref.INT32_MAX], 2**30, -31)
@example([-2, 2, -6, -1], 2**30, 1)                # SRDHM gives -1: RDBPOT's negative tie at n = 1
@example([-1, 1, 0, ref.INT32_MIN, ref.INT32_MAX], 2**30, -40)
def test_requantize1_matches_reference(accs, m0, n):
    """The scalar requantizer every kernel inlines, on its own: ``n < 0`` shifts left first (by
    up to 40 bits here, int32-saturated), then SRDHM and RDBPOT."""
    from intsim.fixedpoint import requantize1

    got = [int(requantize1(np.int64(a), np.int64(m0), np.int64(n))) for a in accs]
    assert got == [ref.requantize(a, m0, n)[0] for a in accs]


def test_requantize_dynamic_refuses_bad_widths_and_operands():
    """Widths outside [2, 16] (the int8/int16 codes it returns), shifts above 62 and multipliers
    outside int32 are refused naming the field; 2 and 16 bits work (against the reference)."""
    acc = np.array([[5, -300, 2**20], [0, 1, -1]], np.int32)
    for bits in (1, 17):
        with pytest.raises(GQAError) as ei:
            requantize_dynamic(acc, 2**30, 0, bits)
        assert ei.value.field == "bits"
    for m0, n in ((2**30, 63), (2**31, 0), (-(2**31) - 1, 0)):
        with pytest.raises(GQAError) as ei:
            requantize_dynamic(acc, m0, n, 8)
        assert ei.value.field == "multipliers"
    for bits in (2, 16):
        y, t = requantize_dynamic(acc, 2**30, 1, bits)
        assert (y.tolist(), t.tolist()) == ref.requantize_dynamic(acc.tolist(), [2**30] * 3, [1] * 3, bits)


# =============================================================================================
# requantize_rows and requantize_channels with a RowScale (outliers token_mantissa)
# =============================================================================================

def row_registers():
    """Register values biased to the edges: int32 extremes, zero rows, and values a few codes wide."""
    return st.one_of(biased_int32(), st.integers(-(2**20), 2**20), st.sampled_from([0, 1, -1, 255, 256, -256]))


@FAST
@given(st.integers(1, 3), st.integers(1, 5), st.sampled_from([2, 8, 9, 16]), st.integers(0, 8), st.data())
@example(1, 1, 9, 3, None)
def test_requantize_rows_matches_reference(rows, cols, bits, m, data):
    """Codes, row mantissas and exponents, saturations; the row's peak and pick (an exact enumeration
    in the reference); tie-biased: registers at a boundary of the row-scale grid (``mu * hi * 2**E``)."""
    from intsim.fixedpoint import requantize_rows

    if data is None:                                   # a peak exactly on a grid point, and one past it
        acc = np.array([[255 * 9 * 2**10], [255 * 9 * 2**10 + 1], [0]], np.int64)
        m0, n = [2**30], [11]
    else:
        acc = np.array(data.draw(st.lists(st.lists(row_registers(), min_size=cols, max_size=cols),
                                          min_size=rows, max_size=rows)), np.int64)
        if data.draw(st.booleans()):                   # a row at an exact row-scale boundary
            hi = 2 ** (bits - 1) - 1
            mu = data.draw(st.integers(2**m, 2 ** (m + 1) - 1))
            acc[0, 0] = mu * hi * 2 ** data.draw(st.integers(0, 12)) + data.draw(st.sampled_from([-1, 0, 1]))
        m0 = data.draw(st.lists(st.one_of(st.integers(2**30, 2**31 - 1), st.sampled_from([2**30, 2**31 - 1])),
                                min_size=cols, max_size=cols))
        n = data.draw(st.lists(st.integers(-31, 39), min_size=cols, max_size=cols))
        if data.draw(st.booleans()):                   # one nominal multiplier for every column (the kernel's fast path)
            m0, n = [m0[0]] * cols, [n[0]] * cols
    y, g, sat = requantize_rows(acc, np.array(m0), np.array(n), bits, m)
    ey, emu, ek, esat = ref.requantize_rows(acc.tolist(), m0, n, bits, m)
    assert y.dtype == (np.int8 if bits <= 8 else np.int16)
    assert y.tolist() == ey and g.mantissa.tolist() == emu and g.shift.tolist() == ek and sat == esat
    assert g.bits == m


@FAST
@given(st.integers(1, 3), st.integers(1, 5), st.sampled_from([2, 8, 9]), st.integers(0, 8),
       st.one_of(biased_int32(), st.integers(-300, 300)), st.data())
def test_requantize_rows_with_an_offset_and_unsigned_codes(rows, cols, bits, m, offset, data):
    """``offset``: the register ``acc + offset`` (exact, before the int32 saturation); ``unsigned``:
    ``max(y, 0)`` as uint8 -- the act_offset operand in one pass, equal to adding and clipping apart."""
    from intsim.fixedpoint import requantize_rows

    acc = np.array(data.draw(st.lists(st.lists(row_registers(), min_size=cols, max_size=cols),
                                      min_size=rows, max_size=rows)), np.int64)
    m0 = data.draw(st.lists(st.integers(2**30, 2**31 - 1), min_size=cols, max_size=cols))
    n = data.draw(st.lists(st.integers(-31, 39), min_size=cols, max_size=cols))
    if data.draw(st.booleans()):
        m0, n = [m0[0]] * cols, [n[0]] * cols
    unsigned = data.draw(st.booleans())
    y, g, sat = requantize_rows(acc, np.array(m0), np.array(n), bits, m, offset=offset, unsigned=unsigned)
    ey, emu, ek, esat = ref.requantize_rows((acc + offset).tolist(), m0, n, bits, m)
    if unsigned:
        ey = [[max(v, 0) for v in row] for row in ey]
    assert y.dtype == (np.uint8 if unsigned else np.int8 if bits <= 8 else np.int16)
    assert y.tolist() == ey and g.mantissa.tolist() == emu and g.shift.tolist() == ek and sat == esat


def test_requantize_rows_refuses_unsigned_codes_wider_than_a_byte():
    from intsim.fixedpoint import requantize_rows

    with pytest.raises(GQAError) as ei:
        requantize_rows(np.zeros((1, 2), np.int64), 2**30, 0, 10, 3, unsigned=True)
    assert ei.value.field == "bits"


@st.composite
def row_scale_cases(draw):
    rows, cols = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    acc = np.array(draw(st.lists(biased_int32(), min_size=rows * cols, max_size=rows * cols)), np.int64)
    acc = acc.reshape(rows, cols) >> draw(st.integers(0, 31))
    m = draw(st.integers(0, 8))
    mus = draw(st.lists(st.integers(2**m, 2 ** (m + 1) - 1), min_size=rows, max_size=rows))
    ks = draw(st.lists(st.one_of(st.integers(-8, 23), st.sampled_from([-8, 0, 23])), min_size=rows, max_size=rows))
    bias = draw(st.lists(st.one_of(st.integers(-(2**31) + 1, 2**31 - 1), st.integers(-300, 300)),
                         min_size=cols, max_size=cols))
    m0 = draw(st.lists(st.one_of(st.integers(2**30, 2**31 - 1), st.sampled_from([2**30, ref.INT32_MIN, 2**31 - 1])),
                       min_size=cols, max_size=cols))
    n = draw(st.lists(st.integers(-31, 62 - 16), min_size=cols, max_size=cols))
    out_bits = draw(st.sampled_from([8, 16, 32]))
    residual = None
    if draw(st.booleans()):
        residual = np.array(draw(st.lists(st.integers(-(2**15), 2**15 - 1), min_size=rows * cols,
                                          max_size=rows * cols)), np.int32).reshape(rows, cols)
    return acc.astype(np.int32), bias, m0, n, out_bits, mus, ks, m, residual


@FAST
@given(row_scale_cases())
def test_requantize_channels_with_row_scales_matches_reference(case):
    """The consumer's row scale: values, saturations, overflows (left shifts) and the peak, bit for bit."""
    from intsim.fixedpoint import RowScale

    acc, bias, m0, n, out_bits, mus, ks, m, residual = case
    rs = RowScale(np.array(mus, np.int64), np.array(ks, np.int64), m)
    got = requantize_channels(acc, np.array(bias), np.array(m0), np.array(n), out_bits, residual,
                              out_dtype=np.int32, row_shift=rs)
    exp = ref.requantize_channels_rows(acc.tolist(), bias, m0, n, out_bits, mus, ks, m,
                                       None if residual is None else residual.tolist())
    assert (got[0].tolist(), *got[1:]) == exp


def test_row_scales_reproduce_the_real_operand():
    """Producer then consumer: ``acc_nominal = codes @ W`` times each row's scale is the real value;
    each code is within half a step (plus SRDHM's 2**-8) of the real value, the output within the
    operand's rounding through W plus one code, at every mantissa width,
    and the row uses at least half of its range (more with more mantissa bits)."""
    from intsim.fixedpoint import requantize_rows

    rng = np.random.default_rng(1)
    reg = (rng.gamma(0.6, 1, (40, 64)) * 2.0 ** rng.integers(4, 16, (40, 1))).astype(np.int64)   # >= 0, rows differ
    s_reg, s_nom = 2.0**-12, 0.01                     # register scale, nominal operand scale
    real = reg * s_reg
    w = rng.integers(-127, 128, (64, 8))
    s_w, s_out = 0.004, 0.02
    bias = rng.integers(-5000, 5000, 8)
    m0, n = multipliers(s_reg / s_nom)
    c0, cn = multipliers(np.full(8, s_nom * s_w / s_out))
    exact = (real @ w * s_w + bias * s_nom * s_w) / s_out
    fill = {}
    for m in (0, 2, 3, 4, 8):
        y, g, sat = requantize_rows(reg, m0, n, 9, m)
        assert sat == 0 and y.min() >= 0
        fill[m] = (np.abs(y).max(1) / 255).min()
        out, _, ovf, _ = requantize_channels(y.astype(np.int64) @ w, bias, c0, cn, 32, row_shift=g)
        assert ovf == 0
        code_err = np.abs(y * (s_nom * g.factor()[:, None]) - real).max(1) / (s_nom * g.factor())
        assert code_err.max() <= 0.5 + 2**-8 + 255 * 2**-27   # one rounding (SRDHM's at 2**-8; M0_rc's 28 bits)
        # the output's error is the operand's rounding through W (bounded by sum |w| / 2 codes) plus one rounding
        bound = (np.abs(w).sum(0) * s_w * s_nom * g.factor()[:, None] / 2) / s_out + 1
        assert np.all(np.abs(out - exact) <= bound)
    assert fill[0] >= 0.5 and fill[3] >= 1 / (1 + 2**-3) - 0.01 and fill[8] > 0.99


def test_row_scales_refuse_bad_input():
    from intsim.fixedpoint import RowScale, requantize_rows

    acc = np.array([[5, -300], [0, 1]], np.int32)
    for m in (-1, 9):
        with pytest.raises(GQAError) as ei:
            requantize_rows(acc, 2**30, 0, 8, m)
        assert ei.value.field == "token_mantissa_bits"
    with pytest.raises(GQAError) as ei:
        requantize_rows(acc, 2**30, 0, 17, 3)
    assert ei.value.field == "bits"
    with pytest.raises(GQAError) as ei:
        requantize_rows(acc, 2**30, 40, 8, 3)
    assert ei.value.field == "multipliers"
    bad = [RowScale(np.array([8]), np.array([0]), 3),                    # one row scale for two rows
           RowScale(np.array([7, 8]), np.array([0, 0]), 3),              # a mantissa below 2**m
           RowScale(np.array([8, 16]), np.array([0, 0]), 3),             # ... and one of m + 2 bits
           RowScale(np.array([8, 8]), np.array([-30, 0]), 3)]            # a final shift beyond 62
    for rs in bad:
        with pytest.raises(GQAError) as ei:
            requantize_channels(acc, None, 2**30, 40, 8, row_shift=rs)
        assert ei.value.field == "row_shift"
    with pytest.raises(GQAError) as ei:
        requantize_channels(acc, [2**31, 0], 2**30, 0, 8, row_shift=RowScale(np.array([8, 8]), np.array([0, 0]), 3))
    assert ei.value.field == "bias"
    # power-of-two row shifts: 0..62 taken, 63 refused; int8 codes up to 8 bits, int16 from 9
    assert requantize_channels(acc, None, 2**30, 0, 8, row_shift=[62, 0])[0].tolist()[0] == [127, -128]  # saturated
    with pytest.raises(GQAError) as ei:
        requantize_channels(acc, None, 2**30, 0, 8, row_shift=[63, 0])
    assert ei.value.field == "row_shift"
    assert requantize_rows(acc, 2**30, 0, 8, 3)[0].dtype == np.int8
    assert requantize_rows(acc, 2**30, 0, 9, 3)[0].dtype == np.int16


# =============================================================================================
# round_shift1, msb, isqrt_newton
# =============================================================================================

@FAST
@given(st.one_of(st.integers(ref.INT64_MIN, ref.INT64_MAX), int32s), st.integers(1, 62),
       st.sampled_from(ref.MODES))
def test_round_shift1_matches_reference(x, s, mode):
    assert int(round_shift1(x, s, ROUNDING_IDS[mode])) == ref.round_shift(x, s, mode)


@FAST
@given(st.integers(1, 40), st.integers(-(2**20), 2**20), st.sampled_from([0, 1, 2 ** 20 - 1]),
       st.sampled_from(ref.MODES))
def test_round_shift1_ties(s, q, r_kind, mode):
    """``x = q * 2**s + r`` with ``r`` at and around the half: every tie rule."""
    d = 2**s
    for r in {0, d // 2 - 1, d // 2, d // 2 + 1, d - 1}:
        if r < 0:
            continue
        x = q * d + r
        assert int(round_shift1(x, s, ROUNDING_IDS[mode])) == ref.round_shift(x, s, mode), (x, s, mode)


@FAST
@given(st.integers(-(2**40), 2**40), st.integers(-20, 0), st.sampled_from(ref.MODES))
def test_round_shift1_left_shifts(x, s, mode):
    assert int(round_shift1(x, s, ROUNDING_IDS[mode])) == ref.round_shift(x, s, mode) == x * 2 ** (-s)


def test_msb_exhaustive_small_and_powers():
    for x in range(0, 5000):
        assert msb(x) == ref.msb(x) == x.bit_length() - 1
    for k in range(63):
        for x in (2**k - 1, 2**k, 2**k + 1):
            if 0 <= x < 2**63:
                assert msb(x) == ref.msb(x), x


@FAST
@given(st.integers(1, 2**63 - 1))
def test_msb_random(x):
    assert msb(x) == ref.msb(x) == x.bit_length() - 1


def test_isqrt_newton_exhaustive_small():
    for n in range(0, 3000):
        assert tuple(int(v) for v in isqrt_newton(n)) == ref.isqrt_newton(n)
        assert int(isqrt_newton(n)[0]) == math.isqrt(n)


@FAST
@given(st.one_of(st.integers(0, 2**62),
                 st.integers(1, 2**31 - 1).flatmap(
                     lambda r: st.sampled_from([r * r - 1, r * r, r * r + 1, r * r + 2 * r]))))
@example(2**62)
@example(2**62 - 1)
@example(2**63 - 1)
@example((2**31 - 1) ** 2)
def test_isqrt_newton_is_floor_sqrt(n):
    root, it = (int(v) for v in isqrt_newton(n))
    assert root == math.isqrt(n) == ref.isqrt_floor(n)
    assert (root, it) == ref.isqrt_newton(n)
    assert it <= 40


# =============================================================================================
# pwl_map (and PWLTable.output_codes, reference_int's unit)
# =============================================================================================

@st.composite
def random_tables(draw, out=None, domain=None, scales_st=None, in_bits=None):
    kw = draw(ref.datapath_fields(out=out, in_bits=in_bits))
    bps, slopes, icpts = draw(ref.table_parts(kw, entries=draw(st.integers(2, min(10, 2 ** kw["in_bits"])))))
    lo_code, hi_code = ref.code_range(kw["in_bits"])
    if domain is None:
        lo = -Fraction(draw(st.integers(0, 2**10)), 2**draw(st.integers(0, 6)))
        hi = Fraction(draw(st.integers(0 if lo < 0 else 1, 2**10)), 2**draw(st.integers(0, 6)))
    else:
        lo, hi = domain(draw)
    if scales_st is None:
        scales_st = st.integers(ref.SCALE_MIN, ref.SCALE_MAX)
    cand = sorted(set(draw(st.lists(scales_st, min_size=1, max_size=4))))
    # keep the scales at which some code lies in the domain (PWLTable requires it)
    scales = [e for e in cand
              if max(math.ceil(lo * 2**e), lo_code) <= min(math.floor(hi * 2**e), hi_code)]
    assume(scales)
    explicit = None
    if draw(st.booleans()):
        explicit = {e: np.array(draw(ref.comparator_codes(kw["in_bits"], len(bps))), np.int64) for e in scales}
    return PWLTable("gelu", (float(lo), float(hi)), PWLDatapath(**kw), scales, [float(p) for p in bps],
                    slopes, icpts, explicit_codes=explicit)


def out_shift(t: PWLTable, e: int):
    dp = t.datapath
    return None if dp.out_bits is None else ref.acc_frac(e, dp) - dp.out_frac


@FAST
@given(random_tables(), st.data())
def test_pwl_map_matches_output_codes_and_reference(t, data):
    dp = t.datapath
    for e in t.scales:
        P = [int(c) for c in t.breakpoint_codes(e)]
        codes = data.draw(ref.input_codes(dp.in_bits, P, max_size=24))
        q = np.array(codes, np.int64)    # 1-D int64 only: every other dtype/rank is another numba compilation
        sh = out_shift(t, e)
        if sh is not None and sh < 0:   # the fused kernels shift right only: refused
            with pytest.raises(GQAError) as ei:
                pwl_map(q, t, e, np.int64)
            assert ei.value.field == "out_frac"
            continue
        expect = [ref.table_output(c, e, t) for c in codes]
        got = pwl_map(q, t, e, np.int64)
        assert got.shape == q.shape and got.dtype == np.int64
        assert got.ravel().tolist() == expect
        assert t.output_codes(np.array(codes), e).tolist() == expect
        if all(I32[0] <= v <= I32[1] for v in expect):   # the default int32 output, where it can hold them
            got32 = pwl_map(q, t, e)
            assert got32.dtype == np.int32 and got32.ravel().tolist() == expect


def test_pwl_map_default_tables_every_code_every_scale():
    q = np.arange(-128, 128, dtype=np.int8).reshape(16, 16)
    for name in ("gelu8", "gelu16", "exp8", "exp16"):
        t = table(name)
        for e in t.scales:
            expect = [ref.table_output(c, e, t) for c in range(-128, 128)]
            assert pwl_map(q, t, e).ravel().tolist() == expect, (name, e)


def test_pwl_map_refuses_float_codes():
    with pytest.raises(GQAError) as ei:
        pwl_map(np.zeros(3, np.float32), table("gelu8"), 0)
    assert ei.value.field == "codes"


def test_pwl_map_refuses_codes_outside_the_input_format():
    t = table("gelu8")
    for bad in ([0, 128], [-129, 5], [[1], [200]]):
        with pytest.raises(GQAError) as ei:
            pwl_map(np.array(bad, np.int32), t, 0)
        assert ei.value.field == "codes"
    assert pwl_map(np.array([-128, 127], np.int32), t, 0).shape == (2,)


def test_pwl_map_int32_output_never_wraps():
    """An output wider than the int32 dtype is refused (GQAError naming out_dtype), never wrapped;
    int64 holds it exactly."""
    dp = PWLDatapath(in_bits=12, slope_bits=12, slope_frac=0, icpt_bits=12, icpt_frac=10)
    t = PWLTable("gelu", (-4, 4), dp, [-2], [0.0], [2047, 2047], [0, 0])
    q = np.array([2047, -2048, 1], np.int64)
    expect = [ref.table_output(c, -2, t) for c in q.tolist()]
    assert expect[0] > 2**31                     # 2047 * 2047 * 2**12
    with pytest.raises(GQAError) as exc:
        pwl_map(q, t, -2, out_dtype=np.int32)
    assert exc.value.field == "out_dtype"
    assert pwl_map(q, t, -2, out_dtype=np.int64).tolist() == expect


# =============================================================================================
# reciprocal / rsqrt by range reduction (MantissaTable)
# =============================================================================================

def positive_s():
    return st.one_of(st.integers(1, 2**62), st.integers(1, 2**20),
                     st.integers(0, 62).flatmap(lambda k: st.sampled_from([2**k, 2**k + 1, 2**(k + 1) - 1])))


@pytest.mark.parametrize("name,kind", [("recip_mantissa16", "reciprocal"), ("rsqrt_mantissa16", "rsqrt")])
def test_mantissa_default_tables(name, kind):
    t = table(name)
    mt = MantissaTable(t, kind)
    e_r = ref.mantissa_scale(t, kind)
    assert (mt.e, mt.frac) == (e_r, ref.output_frac(e_r, t.datapath)) == ((10, 22) if kind == "reciprocal" else (9, 21))
    fn = ref.reciprocal if kind == "reciprocal" else ref.rsqrt
    rng = np.random.default_rng(11)
    s = sorted(set(list(range(1, 3000)) + [2**k + d for k in range(62) for d in (-1, 0, 1) if 2**k + d > 0]
                   + rng.integers(1, 2**62, 1500).tolist()))
    R, sh = mt(np.array(s, np.int64))
    assert R.dtype == np.int64 and sh.dtype == np.int64
    assert list(zip(R.tolist(), sh.tolist())) == [fn(v, t, e_r) for v in s]
    # accuracy: every mantissa code of the range, relative error of R * 2**-shift against 1/s (1/sqrt s)
    approx = R.astype(np.float64) * np.exp2(-sh.astype(np.float64))
    exact = 1.0 / np.array(s, np.float64)
    if kind == "rsqrt":
        exact = np.sqrt(exact)
    rel = np.abs(approx / exact - 1.0)
    assert rel.max() < 1.5e-3, rel.max()    # measured: 1.10e-3 (reciprocal), 1.17e-3 (rsqrt)


@SLOW
@given(st.sampled_from(["reciprocal", "rsqrt"]), st.data())
def test_mantissa_random_tables(kind, data):
    hi_need = 2 if kind == "reciprocal" else 4

    def domain(draw):
        lo = Fraction(draw(st.integers(-64, 64)), 64)
        hi = Fraction(draw(st.integers(hi_need * 16, 8 * 16)), 16)
        return min(lo, Fraction(1)), hi

    t = data.draw(random_tables(domain=domain, scales_st=st.integers(-2, 11), in_bits=data.draw(st.integers(3, 12))))
    e_r = ref.mantissa_scale(t, kind)
    if e_r is None:
        with pytest.raises(GQAError):
            MantissaTable(t, kind)
        return
    sh = out_shift(t, e_r)
    if sh is not None and sh < 0:
        with pytest.raises(GQAError):
            MantissaTable(t, kind)
        return
    mt = MantissaTable(t, kind)
    assert (mt.e, mt.frac) == (e_r, ref.output_frac(e_r, t.datapath))
    s = data.draw(st.lists(positive_s(), min_size=1, max_size=30))
    R, shift = mt(np.array(s, np.int64))
    fn = ref.reciprocal if kind == "reciprocal" else ref.rsqrt
    assert list(zip(R.tolist(), shift.tolist())) == [fn(v, t, e_r) for v in s]


def test_mantissa_table_domain_errors():
    t = table("recip_mantissa16")
    with pytest.raises(GQAError):     # [1, 2] does not cover the rsqrt mantissa [1, 4]
        MantissaTable(t, "rsqrt")
    g = table("gelu8")                # [-4, 4] covers [1, 2]; every s8 scale e <= 6 holds 2 * 2**e - 1 <= 127
    mt = MantissaTable(g, "reciprocal")
    assert mt.e == ref.mantissa_scale(g, "reciprocal") == 6


# =============================================================================================
# IntSoftmax
# =============================================================================================

def exp_scale(t: PWLTable) -> int:
    lo = Fraction(t.domain[0])
    qmin = ref.code_range(t.datapath.in_bits)[0]
    return max(e for e in t.scales if Fraction(qmin) / Fraction(2) ** e <= lo)


@st.composite
def softmax_cases(draw):
    B, H, Tq, Tk = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 8))
    in_scale = 2.0 ** draw(st.floats(-18, -4.1))            # in_scale * 2**4 < 1 for the exp tables
    real = draw(st.sampled_from([0.5, 4, 12, 40]))          # magnitude of the real scores
    lim = min(int(real / in_scale), 2**31 - 1)
    n = B * H * Tq * Tk
    elem = st.one_of(st.integers(-lim, lim), st.integers(-lim, lim), st.sampled_from([0, lim, -lim]),
                     st.sampled_from([ref.INT32_MIN, ref.INT32_MAX]))
    scores = np.array(draw(st.lists(elem, min_size=n, max_size=n)), np.int32).reshape(B, H, Tq, Tk)
    mask = []
    for _ in range(B):
        kind = draw(st.sampled_from(["random", "all", "none", "single"]))
        if kind == "random":
            mask.append(draw(st.lists(st.booleans(), min_size=Tk, max_size=Tk)))
        elif kind == "single":
            j = draw(st.integers(0, Tk - 1))
            mask.append([t == j for t in range(Tk)])
        else:
            mask.append([kind == "all"] * Tk)
    return scores, np.array(mask, bool), in_scale


@SLOW
@given(softmax_cases(), st.sampled_from(["exp16", "exp8", "exp16_c12"]), st.sampled_from(["pwl", "divider"]),
       st.sampled_from(["padding", "causal", "padding+causal", "none"]), st.sampled_from([8, 12, 16, 2, 9]))
def test_softmax_matches_reference(case, exp_name, recip, policy, out_bits):
    scores, mask, in_scale = case
    causal = "causal" in policy
    assume(not causal or scores.shape[2] <= scores.shape[3])
    if "padding" not in policy:
        mask = None
    et, rt = table(exp_name), table("recip_mantissa16")
    sm = IntSoftmax(in_scale, et, recip, rt if recip == "pwl" else None, out_bits=out_bits)
    e_x = exp_scale(et)
    m0, n = ref.quantize_multiplier(Fraction(in_scale) * 2**e_x)
    assert (sm.e_x, sm.m0, sm.n) == (e_x, m0, n)
    q_min = ref.code_range(et.datapath.in_bits)[0]
    e_r = ref.mantissa_scale(rt, "reciprocal")

    def exp_out(u):
        return ref.table_output(u, e_x, et)

    recip_fn = (lambda z: ref.reciprocal(z, rt, e_r)) if recip == "pwl" else None
    stats = OpStats()
    p = sm(scores, mask, stats=stats, causal=causal)
    assert p.shape == scores.shape and p.dtype == (np.uint8 if out_bits <= 8 else np.uint16)
    B, H, Tq, Tk = scores.shape
    low = sat = zmax = 0
    for b in range(B):
        for h in range(H):
            for i in range(Tq):
                row = scores[b, h, i].tolist()
                seen = ref.visible_keys([1] * Tk if mask is None else mask[b].tolist(), i, Tq, causal)
                probs, lo_, sa, Z = ref.softmax_row(row, seen, m0, n, exp_out, q_min, recip_fn, out_bits)
                assert p[b, h, i].tolist() == probs, (b, h, i)
                low, sat, zmax = low + lo_, sat + sa, max(zmax, Z)
                keys = sum(seen)
                if keys == 0:
                    assert probs == [0] * Tk
                elif recip == "divider" and sa == 0:
                    # a consequence of the spec: each p is 2**P E/Z rounded (error in (-1/2, 1/2])
                    assert abs(sum(probs) - 2**out_bits) <= keys / 2
    # op statistics
    rows, nn = B * H * Tq, B * H * Tq * Tk
    tot = stats.totals()
    if recip == "divider":
        assert tot == {"compare": nn, "add": 2 * nn, "mul": nn, "lut": nn, "div": nn}
    else:
        assert tot == {"compare": nn + rows, "add": 2 * nn, "mul": 2 * nn, "lut": nn + rows, "shift": nn}
    assert stats.saturations.get("softmax.exp_input_low", 0) == low
    assert stats.saturations.get(f"softmax.prob_{2**out_bits - 1}", 0) == sat
    assert stats.accumulators["softmax.sum"]["peak_abs"] == zmax
    d = stats.to_dict()
    assert d["total_overflows"] == 0
    assert {e["op"]: e["count"] for e in d["lut"]}["softmax.exp"] == nn
    # the adder tree of Z is as wide as the reference's largest Z needs, signed
    assert {e["op"]: e["bits"] for e in d["add"]}["softmax.sum"] == zmax.bit_length() + 1
    # steps 1-2 run on the int32 scores: a 32-bit max and subtraction, a 32 x 32 requantizer
    assert {e["op"]: e["bits"] for e in d["compare"]}["softmax.max"] == 32
    assert {e["op"]: e["bits"] for e in d["add"]}["softmax.sub_max"] == 32
    assert {e["op"]: (e["a_bits"], e["b_bits"]) for e in d["mul"]}["softmax.requant"] == (32, 32)


@st.composite
def softmax_table_pairs(draw):
    """A random exp table on a domain ``[lo, hi]`` with ``lo < 0`` and a random reciprocal mantissa
    table (domain covering [1, 2]), both with few bits, so that E and Z are small: the kernels'
    rare branches run (an E of exactly 1, p exactly 255, a reciprocal shift ``sh - 8 <= 1``)."""
    def exp_domain(draw):
        lo = -Fraction(draw(st.integers(1, 64)), 8)
        return lo, Fraction(draw(st.integers(0, 8)), 8)

    def recip_domain(draw):
        return Fraction(draw(st.integers(-8, 8)), 8), Fraction(draw(st.integers(32, 64)), 16)

    et = draw(random_tables(domain=exp_domain, scales_st=st.integers(-2, 6), in_bits=draw(st.integers(3, 9))))
    rt = draw(random_tables(domain=recip_domain, scales_st=st.integers(-2, 8), in_bits=draw(st.integers(3, 9))))
    return et, rt


def hand_softmax_tables(top: int, r: int = 1):
    """Constant-piece tables at scale 0: exp gives E = ``top`` for codes >= -1 and 1 below
    (icpt_frac 0: E is the intercept); the reciprocal gives R = ``r`` (F_r = 0, so ``sh = msb(Z)``)."""
    dp = PWLDatapath(in_bits=4, slope_bits=4, slope_frac=0, icpt_bits=10, icpt_frac=0)
    return (PWLTable("exp", (-8.0, 0.0), dp, [0], [-1.0], [0, 0], [1, top]),
            PWLTable("reciprocal", (0.0, 2.0), dp, [0], [0.0], [0, 0], [r, r]))


def one_row(row):
    return np.array([[[row]]], np.int32), np.ones((1, len(row)), bool), 2.0**-6   # d = -300 -> u = -5


@SLOW
@given(softmax_cases(), softmax_table_pairs(), st.sampled_from(["pwl", "divider"]), st.booleans(),
       st.sampled_from([8, 8, 12, 16, 3]))
# E = 2, 1, 1, 1: an E of exactly 1; Z = 5, sh = 2: the left-shift path (sh - 8 < 0)
@example(case=one_row([0, -300, -300, -300]), tables=hand_softmax_tables(2), recip="pwl", causal=False, out_bits=8)
# E = 300, 300, 1: Z = 601, sh = 9: the smallest right shift (1), with a half_up tie on E = 1
@example(case=one_row([0, 0, -300]), tables=hand_softmax_tables(300), recip="pwl", causal=False, out_bits=8)
# E = 300, 1: the divider's p = floor((256 * 300 + 150) / 301) = 255 exactly, not a saturation
@example(case=one_row([0, -300]), tables=hand_softmax_tables(300), recip="divider", causal=False, out_bits=8)
# E = 255, 1: Z = 256, sh = 8, p = 255 exactly through the reciprocal, not a saturation
@example(case=one_row([0, -300]), tables=hand_softmax_tables(255), recip="pwl", causal=False, out_bits=8)
# E = 1 alone: Z = 1, p = 256 saturates to 255 (Z = 1 is not an empty row); at 16 bits 65536 -> 65535
@example(case=one_row([0]), tables=hand_softmax_tables(1), recip="pwl", causal=False, out_bits=16)
@example(case=one_row([0]), tables=hand_softmax_tables(1), recip="divider", causal=False, out_bits=16)
@example(case=one_row([0]), tables=hand_softmax_tables(1), recip="pwl", causal=False, out_bits=8)
@example(case=one_row([0]), tables=hand_softmax_tables(1), recip="divider", causal=False, out_bits=8)
# R = -1 (found by hypothesis): negative probabilities clip to 0 and count (the kernels had wrapped them)
@example(case=one_row([0, -300]), tables=hand_softmax_tables(2, r=-1), recip="pwl", causal=False, out_bits=8)
@example(case=one_row([0, 0, -300]), tables=hand_softmax_tables(300, r=-1), recip="pwl", causal=False, out_bits=8)
# E = 255, 1 and R = -1: Z = 256, sh = 8, p = -1 exactly for the small key (clipped to 0, counted)
@example(case=one_row([0, -300]), tables=hand_softmax_tables(255, r=-1), recip="pwl", causal=False, out_bits=8)
# 256 keys of E = 2 and R = -1: Z = 512, sh = 9, the rounding shift by 1 gives p = -1 exactly (clipped, counted)
@example(case=one_row([0] * 256), tables=hand_softmax_tables(2, r=-1), recip="pwl", causal=False, out_bits=8)
# causal, E = 1: the first query sees one key (p = 256 -> 255); the key after it must stay 0
@example(case=(np.zeros((1, 1, 2, 2), np.int32), np.ones((1, 2), bool), 2.0**-6), tables=hand_softmax_tables(1),
         recip="pwl", causal=True, out_bits=8)
@example(case=(np.zeros((1, 1, 2, 2), np.int32), np.ones((1, 2), bool), 2.0**-6), tables=hand_softmax_tables(1),
         recip="divider", causal=True, out_bits=8)
def test_softmax_random_tables_match_reference(case, tables, recip, causal, out_bits):
    """Any exp and reciprocal tables, both kernels (the E(d) gather and per element), against
    the reference: probabilities, saturation counts and the sum's peak."""
    scores, mask, in_scale = case
    causal = causal and scores.shape[2] <= scores.shape[3]
    et, rt = tables
    try:
        e_x = exp_scale(et)
    except ValueError:           # no scale reaches the domain's left end
        event("no exp scale")
        with pytest.raises(GQAError):
            IntSoftmax(in_scale, et, "divider")
        return
    assume(Fraction(in_scale) * 2**e_x < 1)
    sh_exp = out_shift(et, e_x)
    assume(sh_exp is None or sh_exp >= 0)                # the fused units shift right only
    e_r = ref.mantissa_scale(rt, "reciprocal")
    if recip == "pwl":
        assume(e_r is not None)
        sh_out = out_shift(rt, e_r)
        assume(sh_out is None or sh_out >= 0)
        assume(rt.datapath.acc_bits(e_r) <= 62 - 31)      # E * R stays in int64 (E < 2**31 below)
    sm = IntSoftmax(in_scale, et, recip, rt if recip == "pwl" else None, out_bits=out_bits)
    assume(np.abs(sm.exp_lut).max() < 2**24)               # Z of 8 keys and E * R stay in int64
    m0, n = ref.quantize_multiplier(Fraction(in_scale) * 2**e_x)
    q_min = ref.code_range(et.datapath.in_bits)[0]
    recip_fn = (lambda z: ref.reciprocal(z, rt, e_r)) if recip == "pwl" else None
    B, H, Tq, Tk = scores.shape
    want, low, sat, zmax = [], 0, 0, 0
    for b in range(B):
        for h in range(H):
            for i in range(Tq):
                seen = ref.visible_keys([1] * Tk if mask is None else mask[b].tolist(), i, Tq, causal)
                probs, lo_, sa, Z = ref.softmax_row(scores[b, h, i].tolist(), seen, m0, n,
                                                    lambda u: ref.table_output(u, e_x, et), q_min, recip_fn,
                                                    out_bits)
                want.append(probs)
                low, sat, zmax = low + lo_, sat + sa, max(zmax, Z)
    kernels = [sm.diff_lut, None] if sm.diff_lut is not None else [None]
    event(f"kernels: {len(kernels)}, max Z {'>' if zmax >= 256 else '<'} 256")
    for diff_lut in kernels:
        sm.diff_lut = diff_lut
        stats = OpStats()
        p = sm(scores, mask, stats=stats, causal=causal)
        assert p.reshape(-1, Tk).tolist() == want, diff_lut is None
        assert stats.saturations.get("softmax.exp_input_low", 0) == low
        assert stats.saturations.get(f"softmax.prob_{2**out_bits - 1}", 0) == sat
        assert stats.accumulators["softmax.sum"]["peak_abs"] == zmax


@pytest.mark.parametrize("slope_frac,tabulated", [(7, True), (8, False)])
def test_softmax_tabulated_kernel_up_to_a_32_bit_reciprocal(slope_frac, tabulated):
    """The E(d) gather multiplies E by R in 32 x 32 bits: it is used while the reciprocal's
    accumulator fits 32 signed bits (here R = (2**23 - 1) * 2**7 < 2**31) and not at 33 bits
    (R = (2**23 - 1) * 2**8 would wrap in int32); both give the reference's bytes."""
    dp = PWLDatapath(in_bits=4, slope_bits=4, slope_frac=slope_frac, icpt_bits=24, icpt_frac=0)
    rt = PWLTable("reciprocal", (0.0, 2.0), dp, [0], [0.0], [0, 0], [2**23 - 1] * 2)
    assert dp.acc_bits(0) == 25 + slope_frac
    et = table("exp16")
    sm = IntSoftmax(1 / 64, et, "pwl", rt)
    assert (sm.diff_lut is not None) == tabulated
    scores, mask, _ = one_row([0, -3, -40, -41, -200, -1000])
    p = sm(scores, mask)
    m0, n = ref.quantize_multiplier(Fraction(1, 64) * 2**sm.e_x)
    want = ref.softmax_row(scores[0, 0, 0].tolist(), [1] * 6, m0, n,
                           lambda u: ref.table_output(u, sm.e_x, et), sm.q_min,
                           lambda z: ref.reciprocal(z, rt, 0))[0]
    assert p[0, 0, 0].tolist() == want


@pytest.mark.parametrize("slope_frac,tabulated", [(8, True), (9, False)])
def test_softmax_tabulated_kernel_up_to_31_bit_exponentials(slope_frac, tabulated):
    """E(d) is tabulated as int32: an exp table whose outputs reach ``(2**23 - 1) * 2**8 < 2**31``
    is, one reaching ``(2**23 - 1) * 2**9`` (in [2**31, 2**32): it would wrap) runs per element;
    both give the reference's bytes."""
    dp = PWLDatapath(in_bits=4, slope_bits=4, slope_frac=slope_frac, icpt_bits=24, icpt_frac=0)
    et = PWLTable("exp", (-8.0, 0.0), dp, [0], [-2.0], [0, 0], [1, 2**23 - 1])
    sm = IntSoftmax(1 / 64, et, "divider")
    assert int(sm.exp_lut.max()) == (2**23 - 1) * 2**slope_frac
    assert (sm.diff_lut is not None) == tabulated
    scores, mask, _ = one_row([0, -3, -100, -200, -1000])
    m0, n = ref.quantize_multiplier(Fraction(1, 64) * 2**sm.e_x)
    want = ref.softmax_row(scores[0, 0, 0].tolist(), [1] * 5, m0, n,
                           lambda u: ref.table_output(u, sm.e_x, et), sm.q_min)[0]
    assert sm(scores, mask)[0, 0, 0].tolist() == want


@pytest.mark.parametrize("in_scale", [1 / 64, 1 / 1000, 2.0**-17])
def test_softmax_counts_exp_inputs_below_the_table_exactly(in_scale):
    """A difference of exactly ``d_lo`` (the first unsaturated one) is not counted as saturated,
    ``d_lo - 1`` is; both kernels, against the reference's count."""
    et, rt = table("exp16"), table("recip_mantissa16")
    sm = IntSoftmax(in_scale, et, "pwl", rt)
    d_lo = sm.diff_lut[0]
    assert ref.requantize(d_lo, sm.m0, sm.n)[0] >= sm.q_min > ref.requantize(d_lo - 1, sm.m0, sm.n)[0]
    scores, mask, _ = one_row([0, d_lo, d_lo, d_lo - 1, d_lo + 1])
    for diff_lut in (sm.diff_lut, None):
        sm.diff_lut = diff_lut
        stats = OpStats()
        sm(scores, mask, stats=stats)
        assert stats.saturations["softmax.exp_input_low"] == 1


def test_softmax_refuses_scores_that_are_not_int32_4d():
    sm = IntSoftmax(1 / 64, table("exp16"), "divider")
    for bad in (np.zeros((1, 1, 2, 3), np.int64), np.zeros((1, 1, 2, 3), np.float32), np.zeros((1, 2, 3), np.int32),
                [[[[0, 1]]]]):
        with pytest.raises(GQAError) as ei:
            sm(bad)
        assert ei.value.field == "scores"


def test_softmax_single_key_and_all_masked_rows():
    """One key: E/Z = 1, i.e. 256, saturated to 255 and counted; no key: zeros."""
    et, rt = table("exp16"), table("recip_mantissa16")
    scores = np.array([[[[5, -7, 100]]], [[[1, 2, 3]]]], np.int32)
    mask = np.array([[False, True, False], [False, False, False]])
    for recip in ("pwl", "divider"):
        stats = OpStats()
        p = IntSoftmax(1 / 64, et, recip, rt)(scores, mask, stats=stats)
        assert p.tolist() == [[[[0, 255, 0]]], [[[0, 0, 0]]]]
        assert stats.saturations["softmax.prob_255"] == 1


def test_softmax_a_probability_of_exactly_255_is_not_counted_as_saturated():
    """Two keys 156/32 apart (found by searching): the larger rounds to exactly 255 on the PWL
    reciprocal's right-shift path, a code in range, so no saturation is counted."""
    et, rt = table("exp16"), table("recip_mantissa16")
    sm = IntSoftmax(1 / 32, et, "pwl", rt)
    m0, n = ref.quantize_multiplier(Fraction(1, 32) * 2**4)
    stats = OpStats()
    p = sm(np.array([[[[0, -156]]]], np.int32), np.ones((1, 2), bool), stats=stats)
    probs, _, sat, Z = ref.softmax_row([0, -156], [1, 1], m0, n, lambda u: ref.table_output(u, 4, et), -128,
                                       lambda z: ref.reciprocal(z, rt, 10))
    assert ref.reciprocal(Z, rt, 10)[1] > 8  # sh - 8 > 0: the rounding-shift path
    assert p[0, 0, 0].tolist() == probs and probs[0] == 255 and sat == 0
    assert stats.saturations.get("softmax.prob_255", 0) == 0


def test_softmax_op_widths():
    """The widths the op statistics give hw_models: 32-bit scores (max, subtraction, the exp-input
    multiplier), and the normalizing multiply E x R' with the shift of its product."""
    et, rt = table("exp16"), table("recip_mantissa16")
    sm = IntSoftmax(1 / 32, et, "pwl", rt)
    stats = OpStats()
    sm(np.array([[[[0, -156, 7, -40]]]], np.int32), np.ones((1, 4), bool), stats=stats)
    d = stats.to_dict()
    widths = {(kind, e["op"]): e.get("bits", (e.get("a_bits"), e.get("b_bits")))
              for kind in ("add", "mul", "shift", "compare") for e in d[kind]}
    e_bits, r_bits = et.datapath.acc_bits(sm.e_x), rt.datapath.acc_bits(sm.recip_table.e)
    assert widths[("compare", "softmax.max")] == widths[("add", "softmax.sub_max")] == 32
    assert widths[("mul", "softmax.requant")] == (32, 32)
    assert widths[("compare", "softmax.leading_one")] == 32
    assert widths[("mul", "softmax.normalize")] == (e_bits, r_bits)
    assert widths[("shift", "softmax.normalize")] == e_bits + r_bits
    z = d["accumulators"]["softmax.sum"]                 # Z's register: the reciprocal's int32 input
    assert z["declared_bits"] == 32 and z["headroom_bits"] == 32 - z["used_bits"]


def test_softmax_rounding_boundaries():
    """Rows whose probabilities sit exactly on a rounding boundary (found by searching the
    reference): ``E * R`` an odd multiple of ``2**(sh - 9)`` (a half_up tie of the PWL
    reciprocal path) and ``256 E + floor(Z/2)`` a multiple of ``Z`` (the divider's floor edge).
    in_scale = 1/32 makes the exp-input multiplier exactly 1/2, so a score ``2u`` gives code ``u``."""
    et, rt = table("exp16"), table("recip_mantissa16")
    m0, n = ref.quantize_multiplier(Fraction(1, 32) * 2**4)
    assert (m0, n) == (2**30, 0)
    rows = {"pwl": [[0, -95, -28], [0, -93, -30], [0, -91, -32]],
            "divider": [[0, -93, -15], [0, -83, -15], [0, -81, -15]]}
    for recip, us in rows.items():
        scores = np.array([[[[2 * u for u in r] for r in us]]], np.int32)      # (1, 1, 3, 3)
        p = IntSoftmax(1 / 32, et, recip, rt)(scores, np.ones((1, 3), bool))
        rf = (lambda z: ref.reciprocal(z, rt, 10)) if recip == "pwl" else None
        for r, got in zip(us, p[0, 0].tolist()):
            E = [max(ref.table_output(u, 4, et), 0) for u in r]
            Z = sum(E)
            if recip == "pwl":
                R, sh = ref.reciprocal(Z, rt, 10)
                assert any((v * R) % 2 ** (sh - 8) == 2 ** (sh - 9) for v in E)       # a tie
            else:
                assert any((v * 256 + Z // 2) % Z == 0 for v in E)                    # an edge
            assert got == ref.softmax_row([2 * u for u in r], [1, 1, 1], m0, n,
                                          lambda u: ref.table_output(u, 4, et), -128, rf)[0]


def test_softmax_multiplier_rounding_up_to_one():
    """``in_scale * 2**e_x`` just below 1: M0 rounds to 2**31, is halved and ``n = -1`` (a left
    shift before the multiply, saturating to int32 for the largest |d|)."""
    et, rt = table("exp16"), table("recip_mantissa16")
    in_scale = (1 - 2.0**-40) / 16
    m0, n = ref.quantize_multiplier(Fraction(in_scale) * 16)
    assert (m0, n) == (2**30, -1)
    scores = np.array([[[[0, -1, -2, -7, -100, -(2**30), ref.INT32_MIN],
                         [ref.INT32_MAX, 0, ref.INT32_MAX - 3, 5, ref.INT32_MIN, -1, 1]]]], np.int32)
    mask = np.ones((1, 7), bool)
    for recip in ("pwl", "divider"):
        sm = IntSoftmax(in_scale, et, recip, rt)
        assert (sm.m0, sm.n) == (m0, n)
        stats = OpStats()
        p = sm(scores, mask, stats=stats)
        rf = (lambda z: ref.reciprocal(z, rt, 10)) if recip == "pwl" else None
        low = 0
        for i in range(2):
            probs, lo_, _, _ = ref.softmax_row(scores[0, 0, i].tolist(), [1] * 7, m0, n,
                                               lambda u: ref.table_output(u, 4, et), -128, rf)
            assert p[0, 0, i].tolist() == probs
            low += lo_
        assert stats.saturations["softmax.exp_input_low"] == low == 2 + 5


def test_softmax_errors():
    et = table("exp16")
    with pytest.raises(GQAError) as ei:
        IntSoftmax(0.01, et, "newton")
    assert ei.value.field == "softmax.reciprocal"
    with pytest.raises(GQAError) as ei:
        IntSoftmax(0.01, et, "pwl")
    assert ei.value.field == "softmax.reciprocal"
    with pytest.raises(GQAError) as ei:      # in_scale * 2**e_x >= 1 cannot be a dyadic multiplier < 1
        IntSoftmax(1 / 16, et, "divider")
    assert ei.value.field == "multiplier"


def test_softmax_refuses_a_mask_of_the_wrong_shape():
    """The key mask must be (B, Tk): any other shape is a GQAError (the numba kernel indexes
    ``mask[b, t]`` without bounds checks, so an unchecked shape would read past the array)."""
    sm = IntSoftmax(1 / 64, table("exp16"), "divider")
    scores = np.zeros((2, 1, 1, 4), np.int32)
    assert sm(scores, np.ones((2, 4), bool)).tolist() == [[[[64] * 4]]] * 2
    for shape in [(1, 4), (2, 3), (2, 5), (3, 4), (4,)]:
        with pytest.raises(GQAError):
            sm(scores, np.ones(shape, bool))


@pytest.mark.parametrize("exp_name,recip,tol_sum,tol_p", [
    ("exp16", "pwl", 24, 0.06), ("exp16", "divider", 24, 0.06),
    ("exp8", "pwl", 24, 0.10), ("exp8", "divider", 24, 0.10)])
def test_softmax_accuracy_vs_float(exp_name, recip, tol_sum, tol_p):
    """128 keys, logits N(0, sigma) for sigma in 0.5..6 at scale 2**-8, a padded batch element.

    Measured with seeds 0..3 (this test uses seed 0): max |sum_t p_t - 256| = 13..19 codes
    (exp16) and 12..18 (exp8); max |p/256 - softmax| = 0.033..0.047 (exp16) and 0.068..0.080
    (exp8); "pwl" and "divider" reciprocals agree to within a code. Bounds: 24 codes, 0.06
    (exp16), 0.10 (exp8). (Rounding 128 probabilities to 8 bits alone can move a row sum by up
    to 64; with near-uniform rows the rounding errors share a sign.)
    """
    rng = np.random.default_rng(0)
    in_scale = 1 / 256
    sm = IntSoftmax(in_scale, table(exp_name), recip, table("recip_mantissa16"))
    worst_sum, worst_p = 0, 0.0
    for sigma in (0.5, 1, 3, 6):
        s = np.round(rng.normal(0, sigma, (2, 4, 32, 128)) / in_scale).astype(np.int32)
        mask = np.ones((2, 128), bool)
        mask[1, 100:] = False
        p = sm(s, mask)
        x = np.where(mask[:, None, None, :], s * in_scale, -np.inf)
        f = np.exp(x - x.max(-1, keepdims=True))
        f /= f.sum(-1, keepdims=True)
        worst_sum = max(worst_sum, int(np.abs(p.sum(-1).astype(np.int64) - 256).max()))
        worst_p = max(worst_p, float(np.abs(p / 256 - f).max()))
    assert worst_sum <= tol_sum and worst_p <= tol_p, (worst_sum, worst_p)


# =============================================================================================
# IntLayerNorm
# =============================================================================================

@st.composite
def ln_outputs(draw, C):
    # |gamma| >= 1e-3 or 0: a subnormal gamma crashes LNOutput (see test_layernorm_output_tiny_gamma)
    gamma = draw(st.lists(st.one_of(st.floats(-4, 4).filter(lambda g: abs(g) >= 1e-3), st.just(0.0)),
                          min_size=C, max_size=C))
    beta = draw(st.lists(st.floats(-4, 4), min_size=C, max_size=C))
    if draw(st.booleans()):
        scale = 2.0 ** draw(st.floats(-10, 1))
    else:
        scale = [2.0 ** v for v in draw(st.lists(st.floats(-10, 1), min_size=C, max_size=C))]
    bits = draw(st.integers(4, 8))     # int8 outputs here; 16-bit outputs in a test of their own
    g_bits = draw(st.sampled_from([16, 16, 12, 20]))
    return LNOutput(gamma, beta, scale, bits, g_bits=g_bits)


@st.composite
def ln_cases(draw):
    lead = draw(st.sampled_from([(), (2,)]))
    rows, C = draw(st.integers(1, 3)), draw(st.integers(1, 12))
    xbits = draw(st.sampled_from([4, 8, 16, 32]))       # 4: small values, frequent rounding ties
    lo, hi = ref.fmt_range(xbits)
    n = int(np.prod(lead + (rows, C)))
    if draw(st.integers(0, 5)) == 0:   # constant rows: V = 0
        v = draw(st.integers(lo, hi))
        vals = [v] * n
    else:
        vals = draw(st.lists(st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi, 0])), min_size=n, max_size=n))
    x = np.array(vals, np.int32).reshape(lead + (rows, C))   # one dtype: fewer numba compilations
    d_bits = draw(st.one_of(st.just(16), st.integers(4, 24)))
    outs = [draw(ln_outputs(C)) for _ in range(draw(st.integers(1, 2)))]
    return x, d_bits, outs


@SLOW
@given(ln_cases(), st.sampled_from(["pwl", "newton"]))
def test_layernorm_matches_reference(case, rsqrt):
    x, d_bits, outs = case
    rt = table("rsqrt_mantissa16")
    ln = IntLayerNorm(rsqrt, rt if rsqrt == "pwl" else None, d_bits=d_bits)
    e_r = ref.mantissa_scale(rt, "rsqrt")
    rsqrt_fn = (lambda V: ref.rsqrt(V, rt, e_r)) if rsqrt == "pwl" else None
    stats = OpStats()
    got = ln(x, *outs, stats=stats)
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(outs)
    C = x.shape[-1]
    spec = [(o.G.tolist(), o.H.tolist(), o.T, o.bits) for o in outs]
    expect = [[] for _ in outs]
    sat = iters = 0
    s_max = v_max = 0
    for row in x.reshape(-1, C).tolist():
        ys, S, V, sa, it = ref.layernorm_row(row, d_bits, Z_FRAC, rsqrt_fn, spec)
        for k, y in enumerate(ys):
            expect[k].append(y)
        sat, iters, s_max, v_max = sat + sa, iters + it, max(s_max, S), max(v_max, V)
    for k, (g, o) in enumerate(zip(got, outs)):
        assert g.shape == x.shape and g.dtype == code_dtype(o.bits)
        assert g.reshape(-1, C).tolist() == expect[k], k
    assert stats.saturations.get("layernorm.out", 0) == sat
    assert stats.accumulators["layernorm.sum"]["peak_abs"] == s_max
    assert stats.accumulators["layernorm.var"]["peak_abs"] == v_max
    n, rows, n_out = x.size, x.size // C, len(outs)
    tot = stats.totals()
    assert tot["add"] == 2 * n + n * n_out
    assert tot["shift"] == n * n_out
    if rsqrt == "newton":
        assert tot["div"] == iters + n
        assert tot["mul"] == 2 * n + n * n_out
        assert tot["compare"] == n
    else:
        assert tot["lut"] == rows
        assert tot["mul"] == 3 * n + n * n_out
        assert tot["compare"] == n + rows


@pytest.mark.parametrize("rsqrt", ["pwl", "newton"])
def test_layernorm_mixed_output_widths_and_input_dtypes(rsqrt):
    """int16 inputs, an s8 output and an s16 output with per-channel scales (saturating)."""
    rng = np.random.default_rng(4)
    rt = table("rsqrt_mantissa16")
    C = 24
    o1 = LNOutput(rng.normal(1, 0.5, C), rng.normal(0, 1, C), 2.0 ** rng.uniform(-8, -2, C), 8)
    o2 = LNOutput(rng.normal(0, 2, C), rng.normal(0, 1, C), 2.0 ** -9, 16, g_bits=12)
    spec = [(o.G.tolist(), o.H.tolist(), o.T, o.bits) for o in (o1, o2)]
    rs = (lambda V: ref.rsqrt(V, rt, ref.mantissa_scale(rt, "rsqrt"))) if rsqrt == "pwl" else None
    for dt in (np.int16,):
        info = np.iinfo(dt)
        x = rng.integers(info.min, int(info.max) + 1, (3, 5, C)).astype(dt)
        x[0, 0] = 7                      # a constant row: V = 0, z = 0
        x[0, 1, 3] = info.max            # an outlier
        stats = OpStats()
        y1, y2 = IntLayerNorm(rsqrt, rt)(x, o1, o2, stats=stats)
        assert (y1.dtype, y2.dtype) == (np.int8, np.int16)
        sat = 0
        for row, r1, r2 in zip(x.reshape(-1, C).tolist(), y1.reshape(-1, C).tolist(), y2.reshape(-1, C).tolist()):
            ys, _, _, sa, _ = ref.layernorm_row(row, 16, Z_FRAC, rs, spec)
            assert [r1, r2] == ys
            sat += sa
        assert stats.saturations.get("layernorm.out", 0) == sat
        assert y1[0, 0].tolist() == [ref.saturate(ref.round_shift(h, o1.T, "half_away"), 8)[0] for h in o1.H.tolist()]


def test_layernorm_rounding_ties():
    """Rows with exact ties, found by searching the reference: ``d' * R`` an odd multiple of
    ``2**(sh - Z - 1)`` (rsqrt="pwl", half_up), ``d' 2**(Z+1) + s`` a multiple of ``2 s``
    (Newton divider); and constant rows (z = 0) whose outputs are ``H / 2**T`` with ``H`` an
    odd multiple of ``2**(T-1)``: round_half_away gives -3, -2, -1, 1, 2, 3."""
    rt = table("rsqrt_mantissa16")
    e_r = ref.mantissa_scale(rt, "rsqrt")
    C = 7
    s_o = 2.0**-4
    o = LNOutput(np.linspace(-2, 2, C), np.array([-2.5, -1.5, -0.5, 0.0, 0.5, 1.5, 2.5]) * s_o, s_o, 8)
    spec = [(o.G.tolist(), o.H.tolist(), o.T, o.bits)]
    cases = {"pwl": [[8, 4, 1, 7], [8, 12, -2], [-4, 1, -6]],
             "newton": [[1781, -1539, 1742, 2864, -1596, -1719, 429], [-1408, 1667, 2867, 1542, -371, 1910, -2240],
                        [-1693, -730, -91, -2308, 1339, 2631, -2455]]}
    for rsqrt, rows in cases.items():
        ln = IntLayerNorm(rsqrt, rt)
        rs = (lambda V: ref.rsqrt(V, rt, e_r)) if rsqrt == "pwl" else None
        for row in rows:
            c = len(row)
            oc = LNOutput(np.ones(c), np.zeros(c), s_o, 8)
            got = ln(np.array([row], np.int32), oc)[0].tolist()
            assert got == ref.layernorm_row(row, 16, Z_FRAC, rs, [(oc.G.tolist(), oc.H.tolist(), oc.T, 8)])[0][0]
        y = ln(np.full((2, C), 5, np.int32), o)
        assert y.tolist() == [[-3, -2, -1, 0, 1, 2, 3]] * 2
        assert y.tolist() == [ref.layernorm_row([5] * C, 16, Z_FRAC, rs, spec)[0][0]] * 2


def test_layernorm_d_prime_reaches_2_pow_d_minus_1():
    """d = [131071, -131071], D = 16: r = msb(131071) + 2 - 16 = 2, d' = round_half_up(+-32767.75)
    = +-32768. The spec's formula (followed bit for bit here) gives +2**15, which does NOT fit
    signed 16 bits as the docstring claims (squares still fit 31 bits). Reported."""
    x = np.array([[131071, 0]], np.int32)
    o = LNOutput([1.0, 1.0], [0.0, 0.0], 0.01, 8)
    for rsqrt in ("pwl", "newton"):
        stats = OpStats()
        y = IntLayerNorm(rsqrt, table("rsqrt_mantissa16"))(x, o, stats=stats)
        assert stats.accumulators["layernorm.var"]["peak_abs"] == 2 * 2**30
        rs = (lambda V: ref.rsqrt(V, table("rsqrt_mantissa16"), 9)) if rsqrt == "pwl" else None
        ys, _, V, _, _ = ref.layernorm_row([131071, 0], 16, Z_FRAC, rs, [(o.G.tolist(), o.H.tolist(), o.T, o.bits)])
        assert V == 2 * 2**30 and y[0].tolist() == ys[0]


def test_layernorm_wide_d_bits_never_wraps_the_variance():
    """V = sum d'**2 can need 2*30 + log2(C) + 1 > 63 bits: with C = 16 and d' = +-2**30,
    V = 16 * 2**60 = 2**64 would wrap int64 to 0; the kernel refuses the width for that C
    (GQAError naming layernorm.d_bits) and computes the specified result at d_bits = 30."""
    C = 16
    x = np.array([[2**31 - 1] * 8 + [-(2**31)] * 8], np.int32)
    o = LNOutput(np.ones(C), np.zeros(C), 0.05, 8)
    spec = [(o.G.tolist(), o.H.tolist(), o.T, o.bits)]
    expect = ref.layernorm_row(x[0].tolist(), 31, Z_FRAC, None, spec)[0][0]
    assert expect == [20] * 8 + [-20] * 8
    with pytest.raises(GQAError, match=r"use d_bits <= 30") as exc:      # (64 - log2 16) // 2: the widest that fits
        IntLayerNorm("newton", d_bits=31)(x, o)
    assert exc.value.field == "layernorm.d_bits"
    expect30 = ref.layernorm_row(x[0].tolist(), 30, Z_FRAC, None, spec)[0][0]
    assert IntLayerNorm("newton", d_bits=30)(x, o)[0].tolist() == expect30


@pytest.mark.parametrize("C", [8, 16, 32, 384])
def test_layernorm_widest_d_bits_per_channel_count(C):
    """The widest accepted d_bits is floor((64 - ceil(log2 C)) / 2): V's 2D - 2 + ceil(log2 C)
    bits within 62 (C = 8, D = 31 would sum eight squares of 2**60: 2**63 wraps; C <= 4 reach the
    constructor's cap of 31 first). The widest runs the specified arithmetic on full-scale rows;
    one bit more is refused."""
    widest = (64 - math.ceil(math.log2(C))) // 2
    x = np.array([[2**31 - 1, -(2**31)] * (C // 2)], np.int32)
    o = LNOutput(np.ones(C), np.zeros(C), 0.05, 8)
    spec = [(o.G.tolist(), o.H.tolist(), o.T, o.bits)]
    got = IntLayerNorm("newton", d_bits=widest, center=False)(x, o)
    assert got[0].tolist() == ref.layernorm_row(x[0].tolist(), widest, Z_FRAC, None, spec, center=False)[0][0]
    with pytest.raises(GQAError, match=rf"use d_bits <= {widest}") as exc:
        IntLayerNorm("newton", d_bits=widest + 1, center=False)(x, o)
    assert exc.value.field == "layernorm.d_bits"


@pytest.mark.parametrize("rsqrt", ["pwl", "newton", "bitwise"])
def test_layernorm_op_widths(rsqrt):
    """The widths the op statistics give hw_models: the squares and the normalizing divider
    (``2 d_bits + 9`` bits: V and its fraction), a per-token output's 32-bit row maximum."""
    C, d_bits = 8, 12
    ln = IntLayerNorm(rsqrt, table("rsqrt_mantissa16") if rsqrt == "pwl" else None, d_bits=d_bits)
    x = np.array([[3, -7, 100, 0, 5, -300, 2, 9]] * 3, np.int32)
    stats = OpStats()
    ln(x, LNOutput(np.ones(C), np.zeros(C), 0.05, 8, dynamic=True), stats=stats)
    d = stats.to_dict()
    widths = {(kind, e["op"]): e.get("bits", (e.get("a_bits"), e.get("b_bits"))) for kind in ("add", "mul", "div", "compare")
              for e in d[kind]}
    x_bits = 10                                                  # |x| <= 300: 9 bits and a sign
    assert widths[("add", "layernorm.sum")] == x_bits + 3        # 8 channels
    assert widths[("mul", "layernorm.center")] == (x_bits, 4)   # C x - S
    assert widths[("compare", "layernorm.dmax")] == x_bits + 10
    assert widths[("add", "layernorm.beta")] == 32
    assert widths[("mul", "layernorm.square")] == (d_bits, d_bits)
    assert widths[("add", "layernorm.var")] == 2 * d_bits + 3
    assert widths[("compare", "layernorm.token_max")] == 32
    assert widths[("mul", "layernorm.gamma")] == (Z_FRAC + 2, 16)   # z (|z| <= 1, Z fraction bits) x G (16 bits)
    if rsqrt == "pwl":
        assert widths[("compare", "layernorm.leading_one")] == 2 * d_bits + 9
        assert widths[("mul", "layernorm.normalize")] == (d_bits, 16)  # d' x the rsqrt's 16-bit mantissa
    else:
        assert widths[("div", "layernorm.normalize")] == 2 * d_bits + 9
    if rsqrt == "newton":
        assert widths[("div", "layernorm.isqrt")] == 2 * d_bits + 9
    if rsqrt == "bitwise":        # a square and a compare per result bit
        assert widths[("mul", "layernorm.isqrt")] == (d_bits + 5, d_bits + 5)
        assert widths[("compare", "layernorm.isqrt")] == 2 * d_bits + 9


@pytest.mark.parametrize("top,T", [(32767, 10), (32768, 9)])
def test_layernorm_output_gamma_takes_the_largest_shift_that_fits(top, T):
    """G = round(g_real 2**T) with the largest T whose G fits g_bits (16 here): g_real = 32767 / 2**10
    fits exactly at T = 10 (G = 32767 = 2**15 - 1); 32768 / 2**10 needs T = 9."""
    C = 4
    gamma = np.full(C, top / 2.0**11)                          # g_real = gamma sqrt(C) / scale 2**-Z_FRAC
    o = LNOutput(gamma, np.zeros(C), 2.0**-Z_FRAC, 8)
    assert o.T == T and int(o.G.max()) == top >> (10 - T) and int(o.G.max()) < 2**15


def test_layernorm_refuses_a_second_output_of_the_wrong_width():
    """``out2`` must have C channels like ``out1``: a 2-channel ``out2`` for C = 4 is a GQAError (the
    kernel would read G2/H2 past their ends)."""
    o1 = LNOutput(np.ones(4), np.zeros(4), 0.1, 8)
    o2 = LNOutput(np.ones(2), np.zeros(2), 0.1, 8)
    with pytest.raises(GQAError):
        IntLayerNorm("newton")(np.arange(8, dtype=np.int32).reshape(2, 4), o1, o2)


def test_layernorm_output_folding():
    """LNOutput: G = rint(gamma sqrt(C) 2**(T-Z) / s), H = rint(beta 2**T / s), T the largest
    shift (within [0, 62 - Z], and <= 51 - ceil(log2 max|beta/s|) so H is exact in float64)
    keeping every |G| < 2**(g_bits - 1)."""
    rng = np.random.default_rng(2)
    for trial in range(200):
        C = int(rng.integers(1, 40))
        gamma = rng.normal(0, 2, C) * (rng.random() < 0.9)
        beta = rng.normal(0, 1, C)
        scale = 2.0 ** rng.uniform(-12, 2, C if trial % 2 else 1)
        g_bits = int(rng.choice([8, 12, 16, 20]))
        o = LNOutput(gamma, beta, scale, 8, g_bits=g_bits)
        sc = np.broadcast_to(scale, (C,))
        g_real = [Fraction(float(g)) * Fraction(math.sqrt(C)) / Fraction(float(s)) for g, s in zip(gamma, sc)]
        T = o.T
        assert 0 <= T <= 62 - Z_FRAC
        for c in range(C):
            # G is the (half-even) rounding of the real folded gamma; float rounding of the product
            # may move it by one ulp, so compare with the exact value within one code
            exact = g_real[c] * Fraction(2) ** (T - Z_FRAC)
            assert abs(int(o.G[c]) - exact) <= Fraction(1, 2) + exact * Fraction(1, 2**40) + Fraction(1, 2**40)
            assert abs(int(o.H[c]) - Fraction(float(beta[c])) / Fraction(float(sc[c])) * 2**T) <= Fraction(1, 2) + 1e-6
        peak = max(abs(v) for v in g_real) * Fraction(2) ** -Z_FRAC
        b_peak = max(abs(Fraction(float(b)) / Fraction(float(s))) for b, s in zip(beta, sc))
        h_cap = 51 - math.ceil(math.log2(b_peak)) if b_peak > 0 else 62 - Z_FRAC
        assert T <= max(0, h_cap)
        if peak == 0:
            assert not o.G.any()
            continue
        lim = 2 ** (g_bits - 1)
        if T > 0:
            assert max(abs(int(v)) for v in o.G) < lim
        if T < min(62 - Z_FRAC, h_cap):  # one more bit would exceed the limit (up to rounding at the edge)
            assert peak * 2 ** (T + 1) > lim - 1 - Fraction(1, 2**20)


@FAST
@given(st.integers(1, 40), st.data())
def test_layernorm_output_folding_matches_the_exact_reference(C, data):
    """LNOutput's G, H, T against reference_int.layernorm_fold (exact rationals, not intsim's floats):
    T and H equal; G equal except where ``g 2**T`` lies within float error of a half-integer."""
    gamma = data.draw(st.lists(st.one_of(st.floats(-4, 4).filter(lambda g: abs(g) >= 1e-3), st.just(0.0)),
                               min_size=C, max_size=C))
    beta = data.draw(st.lists(st.one_of(st.floats(-4, 4), st.just(0.0)), min_size=C, max_size=C))
    scale = [2.0 ** v for v in data.draw(st.lists(st.floats(-12, 2), min_size=C, max_size=C))]
    g_bits = data.draw(st.sampled_from([8, 12, 16, 20]))
    G, H, T, g = ref.layernorm_fold(gamma, beta, scale, g_bits, Z_FRAC, math.sqrt(C))
    if max(abs(v) for v in g) * Fraction(2) ** T > 2 ** (g_bits - 1) - 1 and T == 0:
        with pytest.raises(GQAError):
            LNOutput(gamma, beta, scale, 8, g_bits=g_bits)
        return
    o = LNOutput(gamma, beta, scale, 8, g_bits=g_bits)
    # the float peak may sit an ulp either side of the exact one: at the limit T may differ by one
    peak, lim, tiny = max(abs(v) for v in g), 2 ** (g_bits - 1) - 1, Fraction(1, 2**40)
    allowed = {T}
    if peak * Fraction(2) ** T * (1 + tiny) > lim:
        allowed.add(T - 1)
    if peak * Fraction(2) ** (T + 1) * (1 - tiny) <= lim:
        allowed.add(T + 1)
    assert o.T in allowed
    if o.T != T:
        return
    assert o.H.tolist() == H
    for c in range(C):
        exact = g[c] * Fraction(2) ** T
        if abs(abs(exact - int(exact)) - Fraction(1, 2)) > Fraction(1, 2**20):
            assert int(o.G[c]) == G[c], c
        else:
            assert abs(int(o.G[c]) - exact) <= 1


def test_layernorm_output_largest_gamma_at_no_shift():
    """A gamma whose folded peak needs between g_bits - 1 and g_bits bits' room (1 <= room < 2)
    folds at T = 0, exactly as the rational reference; one just past the register is refused."""
    C, g_bits = 4, 16
    lim = 2 ** (g_bits - 1) - 1
    for peak in (0.75 * lim, 0.999 * lim):
        gamma = [peak * 2.0**Z_FRAC / math.sqrt(C), -0.25, 0.0, 1.0]
        G, H, T, _ = ref.layernorm_fold(gamma, [0.0] * C, [1.0] * C, g_bits, Z_FRAC, math.sqrt(C))
        o = LNOutput(gamma, np.zeros(C), 1.0, 8, g_bits=g_bits)
        assert T == 0 and o.T == 0 and o.G.tolist() == G and o.H.tolist() == H
    with pytest.raises(GQAError):
        LNOutput([1.01 * lim * 2.0**Z_FRAC / math.sqrt(C), 0.0, 0.0, 0.0], np.zeros(C), 1.0, 8, g_bits=g_bits)


def test_layernorm_per_token_shift_stops_at_62():
    """A per-token output whose row needs more than the largest shift (a 2-bit output after a
    50-bit gamma: |z G| >= 2**62) takes shift 62 and saturates, as the reference does."""
    C = 4
    x = np.array([[1000, 0, 0, 0], [-1000, 3, 0, 0]], np.int32)
    o = LNOutput([1.7 * 2**13, 0.5, 0.0, 0.0], np.zeros(C), 1.0, 2, g_bits=50, dynamic=True)
    assert o.T == 62 - Z_FRAC
    stats = OpStats()
    codes, row_shift = IntLayerNorm("newton", None, d_bits=16, center=False)(x, o, stats=stats, name="rms")
    sat = 0
    for r, row in enumerate(x.tolist()):
        ys, _, _, sa, _ = ref.layernorm_row(row, 16, Z_FRAC, None, [(o.G.tolist(), o.H.tolist(), o.T, 2, True)],
                                            center=False)
        assert codes[r].tolist() == ys[0]
        sat += sa
    assert row_shift.tolist() == [62 - o.T] * 2
    assert sat == 1 and stats.saturations.get("rms.out", 0) == sat


def test_layernorm_output_tiny_gamma():
    """A tiny non-zero gamma (here 1e-300, or a subnormal) gives the largest shift T = 62 - Z and
    G = 0 (``log2((2**15 - 1) / peak)`` is ``inf`` there: it must not reach ``int(floor(inf))``)."""
    for g in (1e-300, 5e-324):
        o = LNOutput([g, 0.0], [0.0, 0.0], 1.0, 8)
        assert o.T == 62 - Z_FRAC and o.G.tolist() == [0, 0]


def test_layernorm_errors():
    with pytest.raises(GQAError) as ei:
        IntLayerNorm("exact")
    assert ei.value.field == "layernorm.rsqrt"
    with pytest.raises(GQAError) as ei:
        IntLayerNorm("pwl")
    assert ei.value.field == "layernorm.rsqrt"
    for d in (3, 32):
        with pytest.raises(GQAError) as ei:
            IntLayerNorm("newton", d_bits=d)
        assert ei.value.field == "layernorm.d_bits"
    o = LNOutput(np.ones(4), np.zeros(4), 0.1, 8)
    with pytest.raises(GQAError):
        IntLayerNorm("newton")(np.zeros((2, 5), np.int8), o)


@pytest.mark.parametrize("rsqrt", ["pwl", "newton"])
def test_layernorm_accuracy_vs_float(rsqrt):
    """BERT-like rows (C = 384, int8 codes ~ N(0, 20) with an outlier channel at 127), gamma ~
    N(1, 0.2), beta ~ N(0, 0.1), output s8 at scale 8/127. Against float LayerNorm quantized to
    the same format (half-even, clipped): measured max difference 1 code for both rsqrt kinds
    (5 seeds x 64 rows); the bound is 1 code."""
    rng = np.random.default_rng(0)
    C, s_o = 384, 8 / 127
    ln = IntLayerNorm(rsqrt, table("rsqrt_mantissa16"))
    worst = 0
    for _ in range(5):
        x = np.clip(np.round(rng.normal(0, 20, (64, C))), -127, 127).astype(np.int8)
        x[:, 99] = 127
        gamma, beta = rng.normal(1, 0.2, C), rng.normal(0, 0.1, C)
        y = ln(x.astype(np.int32), LNOutput(gamma, beta, s_o, 8))
        xf = x.astype(np.float64)
        f = (xf - xf.mean(-1, keepdims=True)) / np.sqrt(xf.var(-1, keepdims=True)) * gamma + beta
        q = np.clip(np.rint(f / s_o), -128, 127)
        worst = max(worst, int(np.abs(y.astype(np.int64) - q).max()))
    assert worst <= 1, worst


# =============================================================================================
# PWLGelu
# =============================================================================================

def worst_acc_bits(dp, e) -> int:
    F = ref.acc_frac(e, dp)
    kq = 2 ** (dp.slope_bits - 1) * 2 ** (dp.in_bits - 1) * 2 ** (F - e - dp.slope_frac)
    b = 2 ** (dp.icpt_bits - 1) * 2 ** (F - dp.icpt_frac)
    return (kq + b).bit_length() + 1


def pot_exponent(absmax: float, in_bits: int, scales) -> int:
    top = 2 ** (in_bits - 1) - 1
    ok = [e for e in scales if Fraction(absmax) <= top * Fraction(2) ** -e]
    return max(ok) if ok else min(scales)


@FAST
@given(random_tables(), st.floats(0, 5000), st.data())
def test_gelu_kernel_matches_table(t, absmax, data):
    dp = t.datapath
    e = pot_exponent(absmax, dp.in_bits, t.scales)
    width = dp.out_bits if dp.out_bits is not None else worst_acc_bits(dp, e)
    sh = out_shift(t, e)
    if width > 32:
        with pytest.raises(GQAError) as ei:
            PWLGelu(absmax, t)
        assert ei.value.field == "gelu table"
        return
    g = PWLGelu(absmax, t)
    assert g.e == e and g.in_bits == dp.in_bits
    assert g.in_scale == 2.0**-e and g.out_scale == 2.0 ** -ref.output_frac(e, dp)
    codes = data.draw(ref.input_codes(dp.in_bits, [int(c) for c in t.breakpoint_codes(e)], max_size=30))
    q = np.array(codes, np.int64)
    if sh is not None and sh < 0:
        with pytest.raises(GQAError):
            g(q)
        return
    stats = OpStats()
    y = g(q, stats=stats, name="ffn.gelu")
    assert y.dtype == np.int32
    expect = [ref.table_output(c, e, t) for c in codes]
    assert y.tolist() == expect == t.output_codes(np.array(codes), e).tolist()
    assert stats.totals() == {"lut": len(codes)}
    assert stats.to_dict()["lut"][0]["op"] == "ffn.gelu"


def test_gelu_default_tables_every_scale_and_explicit_e():
    for name in ("gelu8", "gelu16"):
        t = table(name)
        q = np.arange(-128, 128, dtype=np.int8)
        for e in t.scales:
            g = PWLGelu(0.0, t, e=e)
            assert g.e == e
            assert g(q).tolist() == [ref.table_output(c, e, t) for c in range(-128, 128)], (name, e)
        # calibrated absmax: the largest scale whose codes still hold it
        assert PWLGelu(3.9, t).e == 5 and PWLGelu(127 / 64, t).e == 6 and PWLGelu(1000.0, t).e == 0
        with pytest.raises(GQAError) as ei:
            PWLGelu(1.0, t, e=9)
        assert ei.value.field == "pwl_input_exp"


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 4), C=st.integers(2, 24), seed=st.integers(0, 2**32 - 1),
       mag=st.sampled_from([1, 100, 30000, 2**24]))
def test_layernorm_dynamic_output_matches_reference(rows, C, seed, mag):
    """Per-token GEMM copy: the row's extra shift and values follow the specification."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-mag, mag + 1, (rows, C)).astype(np.int32)
    x[0, 0] = mag                      # an outlier-ish channel
    gamma = rng.uniform(-2, 2, C)
    beta = rng.uniform(-1, 1, C)
    tbl = table("rsqrt_mantissa16")
    ln = IntLayerNorm("pwl", tbl)
    o1 = LNOutput(gamma, beta, 0.002, 8, dynamic=True)
    o2 = LNOutput(gamma, beta, 2.0**-10, 16)
    (y1, t), y2 = ln(x, o1, o2)
    e_r = ref.mantissa_scale(tbl, "rsqrt")
    rs = (lambda v: ref.rsqrt(v, tbl, e_r))   # the Python reference, not intsim's MantissaTable
    for r in range(rows):
        spec = [(o1.G.tolist(), o1.H.tolist(), o1.T, 8, True), (o2.G.tolist(), o2.H.tolist(), o2.T, 16)]
        ys, _, _, _, _ = ref.layernorm_row(x[r].tolist(), 16, Z_FRAC, rs, spec)
        assert y1[r].tolist() == ys[0]
        assert y2[r].tolist() == ys[1]
        assert t[r] >= 0
        assert np.abs(y1[r]).max() <= 127


@pytest.mark.parametrize("bits", [2, 3, 8])
@pytest.mark.parametrize("scale", [0.01, math.sqrt(6) * 2.0**-Z_FRAC / 20000])
def test_layernorm_dynamic_output_of_a_zero_row_needs_no_shift(bits, scale):
    """A constant row normalizes to z = 0; with beta = 0 every output is 0, which fits any width
    without an extra shift: t = 0 (the row maximum starts at 0). The second scale makes the
    output's own shift T = 0 (G = 20000), where a 2-bit row maximum of even 1 would need t = 1."""
    C = 6
    x = np.array([[7] * C, [-3] * C, [5, -5, 5, -5, 5, -5]], np.int32)
    o = LNOutput(np.ones(C), np.zeros(C), scale, bits, dynamic=True)
    assert o.T > 0 if scale == 0.01 else (o.T, int(o.G.max())) == (0, 20000)
    for rsqrt in ("pwl", "newton"):
        ln = IntLayerNorm(rsqrt, table("rsqrt_mantissa16") if rsqrt == "pwl" else None)
        y, t = ln(x, o)
        assert y[:2].tolist() == [[0] * C] * 2 and t[:2].tolist() == [0, 0]
        assert t[2] > 0 or bits == 8                  # a unit-variance row needs a shift in 2 or 3 bits


def test_softmax_empty_rows_with_stats():
    """No keys: an empty result, and op statistics do not choke on it."""
    sm = IntSoftmax(0.01, table("exp16"), "pwl", table("recip_mantissa16"))
    out = sm(np.zeros((1, 2, 3, 0), np.int32), np.zeros((1, 0), np.uint8), stats=OpStats())
    assert out.shape == (1, 2, 3, 0) and out.dtype == np.uint8
    for causal in (False, True):                 # no queries: no rows
        for diff_lut in (sm.diff_lut, None):
            sm.diff_lut = diff_lut
            out = sm(np.zeros((2, 2, 0, 3), np.int32), np.ones((2, 3), np.uint8), stats=OpStats(), causal=causal)
            assert out.shape == (2, 2, 0, 3)


@SLOW
@given(softmax_cases(), st.sampled_from(["exp16", "exp8", "exp16_c12"]), st.sampled_from(["pwl", "divider"]), st.booleans())
def test_softmax_difference_table_equals_the_per_element_path(case, exp_name, recip, causal):
    """The tabulated E(d) kernel and the per-element kernel give the same bytes and counts (either mask policy)."""
    import intsim.softmax as smod

    scores, mask, in_scale = case
    causal = causal and scores.shape[2] <= scores.shape[3]
    et, rt = table(exp_name), table("recip_mantissa16")
    sm = IntSoftmax(in_scale, et, recip, rt if recip == "pwl" else None)
    assert sm.diff_lut is not None
    d_lo, e_of_d = sm.diff_lut
    # the table's edges: d_lo is the first unsaturated difference
    assert ref.requantize(d_lo, sm.m0, sm.n)[0] >= sm.q_min
    if d_lo > ref.INT32_MIN:
        assert ref.requantize(d_lo - 1, sm.m0, sm.n)[0] < sm.q_min
    s1, s2 = OpStats(), OpStats()
    p1 = sm(scores, mask, stats=s1, causal=causal)
    sm.diff_lut = None                        # force steps 2-3 per element
    p2 = sm(scores, mask, stats=s2, causal=causal)
    assert np.array_equal(p1, p2)
    assert s1.saturations == s2.saturations and s1.totals() == s2.totals()
    assert smod.exp_of_difference(sm.m0, sm.n, sm.exp_lut, sm.q_min)[0] == d_lo


@pytest.mark.parametrize("s,shift,expect", [(2**62, -64, 0), (2**62, -62, 1), (5, -70, 0), (2**63 - 1, -63, 0),
                                            (3, 4, 48), (2**62, -61, 2)])
def test_mantissa_alignment_shifts_past_63_bits(s, shift, expect):
    """floor(s * 2**shift): a right shift of 64 or more bits is 0 (found by hypothesis: s = 2**62
    on an s3 table at e_r = -2 gave 1; LLVM's shift by >= 64 bits is undefined)."""
    from intsim.rangereduce import _align

    assert _align(np.int64(s), np.int64(shift)) == expect == (s * 2**shift if shift >= 0 else s >> -shift)


@FAST
@given(st.integers(1, 5), st.integers(1, 7), st.integers(0, 2**32 - 1), st.sampled_from([np.float32, np.float64]))
def test_requantizers_read_exact_float_accumulators_as_their_integers(rows, cols, seed, fdt):
    """``int_gemm(..., float_out=True)`` hands the requantizers float copies of the int32
    accumulator: the results and counts equal those of the int32 array."""
    from intsim.fixedpoint import requantize_channels, requantize_dynamic

    rng = np.random.default_rng(seed)
    lim = 2**24 if fdt == np.float32 else 2**31 - 1       # float32 holds every integer below 2**24
    acc = rng.integers(-lim, lim, (rows, cols)).astype(np.int32)
    acc[0, 0] = -lim
    m0 = rng.integers(2**30, 2**31 - 1, cols)
    n = rng.integers(-3, 20, cols)
    bias = rng.integers(-5000, 5000, cols)
    a = requantize_channels(acc, bias, m0, n, 8)
    b = requantize_channels(acc.astype(fdt), bias, m0, n, 8)
    assert np.array_equal(a[0], b[0]) and a[1:] == b[1:]
    n = np.abs(n)
    a, b = requantize_dynamic(acc, m0, n, 8), requantize_dynamic(acc.astype(fdt), m0, n, 8)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_int_gemm_float_out_holds_the_same_integers():
    from intsim.gemm import Constant, int_gemm

    rng = np.random.default_rng(4)
    a = rng.integers(-128, 128, (40, 700)).astype(np.int8)
    b = rng.integers(-128, 128, (700, 30)).astype(np.int8)
    ref_ = a.astype(np.int64) @ b.astype(np.int64)
    for be in ("auto", "f32", "f64", "numpy"):
        c = int_gemm(a, Constant(b), be, float_out=True)
        assert c.dtype in (np.int32, np.float32, np.float64) and np.array_equal(c.astype(np.int64), ref_), be


def _softmax_kernels():
    from intsim.ibert import IBertSoftmax
    from intsim.ivit import Shiftmax

    et, rt = table("exp16"), table("recip_mantissa16")
    return [IntSoftmax(1 / 64, et, "pwl", rt), IntSoftmax(1 / 64, et, "divider"), IBertSoftmax(1 / 64),
            Shiftmax(1 / 64)]


@pytest.mark.parametrize("kernel", _softmax_kernels(), ids=["pwl", "pwl-divider", "ibert", "ivit"])
def test_causal_mask_is_a_per_query_key_mask(kernel):
    """Every kernel's causal row i equals that query alone under the key mask `pad & t <= i + Tk - Tq`."""
    rng = np.random.default_rng(5)
    B, H, Tq, Tk = 2, 3, 4, 6
    scores = rng.integers(-900, 900, (B, H, Tq, Tk)).astype(np.int32)
    pad = np.ones((B, Tk), np.uint8)
    pad[1, 4:] = 0
    for mask in (pad, None):
        got = kernel(scores, mask, causal=True)
        full = np.ones((B, Tk), np.uint8) if mask is None else mask
        for i in range(Tq):
            row_mask = full * (np.arange(Tk) <= i + Tk - Tq)
            alone = kernel(np.ascontiguousarray(scores[:, :, i:i + 1]), row_mask)
            assert np.array_equal(got[:, :, i:i + 1], alone), i
        # keys after the query get probability 0
        assert not got[..., 0, Tk - Tq + 1:].any()
    assert np.array_equal(kernel(scores, None), kernel(scores, np.ones((B, Tk), np.uint8)))
    with pytest.raises(GQAError, match="causal"):
        kernel(np.zeros((1, 1, 3, 2), np.int32), None, causal=True)


@settings(max_examples=80, deadline=None)
@given(rows=st.integers(1, 4), C=st.integers(2, 24), seed=st.integers(0, 2**32 - 1),
       mag=st.sampled_from([1, 100, 30000, 2**24]), m=st.sampled_from([0, 3, 4]),
       scale=st.sampled_from([1e-7, 0.002, 0.05, 0.5, 4.0]), bits=st.sampled_from([4, 8]),
       rsqrt=st.sampled_from(["pwl", "newton"]))
def test_layernorm_mantissa_row_scale_matches_reference(rows, C, seed, mag, m, scale, bits, rsqrt):
    """``norm_mantissa``: the GEMM copy's row scale mu * 2**(k - m), picked and applied in the kernel,
    against the Python-integer specification (tests/reference_int.norm_row_scale); scales from rows
    far finer than nominal (k = -8) to rows beyond the largest scale (saturating)."""
    from intsim.fixedpoint import RowScale

    rng = np.random.default_rng(seed)
    x = rng.integers(-mag, mag + 1, (rows, C)).astype(np.int32)
    x[0, 0] = mag
    gamma, beta = rng.uniform(-2, 2, C), rng.uniform(-1, 1, C)
    tbl = table("rsqrt_mantissa16")
    ln = IntLayerNorm(rsqrt, tbl if rsqrt == "pwl" else None)
    o1 = LNOutput(gamma, beta, scale, bits, dynamic=True, mantissa_bits=m)
    o2 = LNOutput(gamma, beta, 2.0**-10, 16)
    stats = OpStats()
    (y1, g), y2 = ln(x, o1, o2, stats=stats)
    assert isinstance(g, RowScale) and g.bits == m
    e_r = ref.mantissa_scale(tbl, "rsqrt")
    rs = (lambda v: ref.rsqrt(v, tbl, e_r)) if rsqrt == "pwl" else None
    sats = 0
    for r in range(rows):
        got = []
        spec = [(o1.G.tolist(), o1.H.tolist(), o1.T, bits, True, m), (o2.G.tolist(), o2.H.tolist(), o2.T, 16)]
        ys, _, _, sat, _ = ref.layernorm_row(x[r].tolist(), 16, Z_FRAC, rs, spec, row_scales=got)
        sats += sat
        assert y1[r].tolist() == ys[0] and y2[r].tolist() == ys[1]
        assert (int(g.mantissa[r]), int(g.shift[r])) == got[0]
    assert stats.saturations.get("layernorm.out", 0) == sats
    assert sum(n for (_, op, _), n in stats._ops.items() if op == "layernorm.row_mult") == rows * C
