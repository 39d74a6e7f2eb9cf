"""The PWL unit (intsim.pwl, PWLTable's arithmetic and error report) against reference_int.py."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference_int as ref
from intsim import GQAError, PWLDatapath, PWLTable, SaturationCounter
from intsim.pwl import ScaleBatch, output_frac, pwl_accumulate, pwl_accumulate_population, pwl_output

FAST = settings(max_examples=200, deadline=None)
scales_st = st.integers(ref.SCALE_MIN, ref.SCALE_MAX)


def ints(a) -> list[int]:
    arr = np.asarray(a)
    assert arr.dtype == np.int64, arr.dtype
    return [int(v) for v in arr.ravel()]


def floats(bps) -> list[float]:
    out = [float(p) for p in bps]
    assert [Fraction(v) for v in out] == [Fraction(p) for p in bps]  # dyadic: exact as floats
    return out


def assert_field(excinfo, field: str) -> None:
    assert excinfo.value.field == field, str(excinfo.value)
    assert str(excinfo.value).startswith(field + ":")


# --- comparator constants -------------------------------------------------------------------

@FAST
@given(st.data(), scales_st)
def test_breakpoint_codes_match_reference(data, e):
    kw = data.draw(ref.datapath_fields())
    dp = PWLDatapath(**kw)
    bps = data.draw(st.lists(ref.dyadic_reals(kw["in_bits"]), max_size=20))
    got = ints(dp.breakpoint_codes(np.array(floats(bps), dtype=np.float64), e))
    assert got == ref.breakpoint_codes(bps, e, kw["in_bits"])


def test_breakpoint_codes_ties_and_clamp():
    dp = PWLDatapath()  # s8
    bps = [-1000.0, -128.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 127.5, 128.0, 1000.0]
    assert ints(dp.breakpoint_codes(bps, 0)) == [-128, -128, -2, -2, 0, 0, 2, 2, 128, 128, 128]
    assert ints(dp.breakpoint_codes([0.25, 0.75], 1)) == [0, 2]   # 0.5 -> 0, 1.5 -> 2
    assert ints(dp.breakpoint_codes([6.0], -2)) == [2]            # 1.5 -> 2


@pytest.mark.parametrize("p", [1e30, 2.0**70, 1e300, -1e30, -(2.0**70)])
def test_breakpoint_far_beyond_int64_clamps_to_the_right_end(p):
    """A (finite, sorted, valid) breakpoint so large that p*2**e leaves int64 still clamps to
    the nearer end: +huge -> qmax+1 (no code reaches the segment above), -huge -> qmin."""
    dp = PWLDatapath()
    expect = ref.breakpoint_codes([p], 0, 8)
    assert expect == ([128] if p > 0 else [-128])
    assert ints(dp.breakpoint_codes([p], 0)) == expect


# --- pwl_accumulate / pwl_output ------------------------------------------------------------

@st.composite
def unit_cases(draw, out=None, explicit=None):
    kw = draw(ref.datapath_fields(out=out))
    bps, slopes, icpts = draw(ref.table_parts(kw))
    e = draw(scales_st)
    use_explicit = draw(st.booleans()) if explicit is None else explicit
    if use_explicit:
        P = draw(ref.comparator_codes(kw["in_bits"], len(bps)))
    else:
        P = ref.breakpoint_codes(bps, e, kw["in_bits"])
    codes = draw(ref.input_codes(kw["in_bits"], P))
    return kw, bps, slopes, icpts, e, P, codes


@FAST
@given(unit_cases())
def test_pwl_accumulate_and_output_match_reference(case):
    kw, bps, slopes, icpts, e, P, codes = case
    dp = PWLDatapath(**kw)
    _, accs, outs, sats = ref.unit(codes, e, bps, slopes, icpts, dp, bp_codes=P)
    A = pwl_accumulate(np.array(codes), e, np.array(P), np.array(slopes), np.array(icpts), dp)
    assert ints(A) == accs
    counter = SaturationCounter()
    assert ints(pwl_output(A, e, dp, counter, "site")) == outs
    assert counter.counts.get("site", 0) == sats
    assert output_frac(e, dp) == ref.output_frac(e, dp)


@FAST
@given(unit_cases(out=True), st.integers(2, 24), st.integers(-4, 20))
def test_pwl_output_every_rounding_mode(case, out_bits, out_frac):
    kw, bps, slopes, icpts, e, P, codes = case
    base = PWLDatapath(**kw)
    A = pwl_accumulate(np.array(codes), e, np.array(P), np.array(slopes), np.array(icpts), base)
    accs = ints(A)
    for mode in ref.MODES:
        dp = dataclasses.replace(base, out_bits=out_bits, out_frac=out_frac, out_rounding=mode)
        counter = SaturationCounter()
        got = ints(pwl_output(A, e, dp, counter))
        exp = [ref.output(a, e, dp) for a in accs]
        assert got == [y for y, _ in exp], mode
        assert counter.total == sum(h for _, h in exp)
        # the rounded output is the rounding of the accumulator's real value
        F = ref.acc_frac(e, dp)
        for a, (y, hit) in zip(accs, exp):
            if not hit:
                assert y == ref.round_fraction(Fraction(a) / Fraction(2) ** (F - out_frac), mode)


def test_defaults_reproduce_reference_formula():
    """With the default datapath ``A = K*q + B*2**e`` (the GQA-LUT reference's (k*q + b/s)*s)."""
    dp = PWLDatapath()
    rng = np.random.default_rng(1)
    for e in range(7):
        k = rng.integers(-128, 128, size=8)
        b = rng.integers(-128, 128, size=8)
        bp = np.sort(rng.integers(-128, 129, size=7))
        q = dp.codes()
        A = ints(pwl_accumulate(q, e, bp, k, b, dp))
        i = [sum(1 for c in bp if v >= c) for v in q]
        assert A == [int(k[s]) * int(v) + int(b[s]) * 2**e for s, v in zip(i, q)]
        assert dp.acc_frac(e) == e + 6


@pytest.mark.parametrize("in_bits", [16, 20])
def test_pwl_output_left_shift_overflow_saturates_or_refuses(in_bits):
    """``out_frac`` far above ``F`` is a left shift of the accumulator; it must saturate to the
    output format (and be counted) or be refused -- never wrap around int64."""
    e = 0
    dp = PWLDatapath(in_bits=in_bits, out_bits=16, out_frac=48)
    q = np.array([2 ** (in_bits - 1) - 1, -(2 ** (in_bits - 1)), 1, 0])
    k, b, P = [127, 127], [0, 0], [0]
    A = pwl_accumulate(q, e, P, k, b, dp)
    counter = SaturationCounter()
    got = ints(pwl_output(A, e, dp, counter))   # it saturates (counted), never refuses or wraps
    exp = [ref.output(ref.accumulate(int(v), e, P, k, b, dp), e, dp) for v in q]
    assert got == [y for y, _ in exp]
    assert counter.total == sum(h for _, h in exp)


@pytest.mark.parametrize("e,refused", [(-4, True), (-3, False)])
def test_pwl_output_refuses_left_shifts_past_61_bits(e, refused):
    """An output 62 bits finer than the accumulator (``F = -14``, ``out_frac = 48``) is refused,
    naming the field and the distance; 61 bits is the largest left shift taken."""
    dp = PWLDatapath(in_bits=8, slope_frac=-10, icpt_frac=-14, out_bits=8, out_frac=48)
    assert dp.acc_frac(e) - dp.out_frac == (-62 if refused else -61)
    if refused:
        with pytest.raises(GQAError, match=r"48 is 62 bits finer than the accumulator at e=-4") as ei:
            pwl_output(np.array([1]), e, dp)
        assert ei.value.field == "out_frac"
    else:
        assert ints(pwl_output(np.array([0, 1, -1]), e, dp)) == [0, 127, -128]


@pytest.mark.parametrize("e,refused", [(0, False), (1, True)])
def test_fused_unit_takes_right_output_shifts_up_to_62_bits(e, refused):
    """The fused kernels' constants (``unit_constants``) shift the output right by 0..62 bits:
    ``F = 14`` and ``out_frac = -48`` is 62 (taken, equal to :func:`pwl_output`), ``F = 15`` is 63."""
    from intsim.pwl import pwl_map, unit_constants

    dp = PWLDatapath(in_bits=8, slope_frac=14, icpt_frac=14, out_bits=8, out_frac=-48)
    t = PWLTable("gelu", (-4.0, 4.0), dp, [0, 1], [0.0], [1, 2], [3, -4])
    assert dp.acc_frac(e) - dp.out_frac == (63 if refused else 62)
    if refused:
        with pytest.raises(GQAError) as ei:
            unit_constants(t, e)
        assert ei.value.field == "out_frac"
    else:
        assert unit_constants(t, e)[3][3] == 62
        q = np.arange(-128, 128)
        P = [int(v) for v in t.segment_starts(e)]
        want = [ref.output(ref.accumulate(int(v), e, P, [1, 2], [3, -4], dp), e, dp)[0] for v in q]
        assert ints(pwl_map(q, t, e, np.int64)) == want  # (0 this far right)


@pytest.mark.parametrize("icpt_frac", [31, 32])
def test_pwl_accumulator_up_to_63_bits(icpt_frac):
    """A datapath whose worst-case accumulator width is 63 bits (int64 holds it) is computed
    exactly at its extremes; a 64-bit one is refused, naming the scale."""
    dp = PWLDatapath(in_bits=16, slope_bits=16, slope_frac=0, icpt_bits=16, icpt_frac=icpt_frac)
    assert dp.acc_bits(0) == icpt_frac + 32
    q = np.array([-(2**15), 2**15 - 1, 0, -1, 1, 2**15 - 1])
    starts, k, b = [0], [-(2**15), 2**15 - 1], [-(2**15), 2**15 - 1]
    if icpt_frac == 32:
        with pytest.raises(GQAError) as ei:
            pwl_accumulate(q, 0, starts, k, b, dp)
        assert ei.value.field == "scale"
        return
    A = ints(pwl_accumulate(q, 0, starts, k, b, dp))
    assert A == [ref.accumulate(int(v), 0, starts, k, b, dp) for v in q]
    assert max(abs(a) for a in A) == 2**61 - 2**15   # (-2**15)(-2**15) 2**31 - 2**15: the width bound is conservative


# --- populations and scale batches ---------------------------------------------------------

@st.composite
def populations(draw, n_scales=None):
    kw = draw(ref.datapath_fields(out=False))
    n = draw(st.integers(2, min(20, 2 ** kw["in_bits"])))
    pop = draw(st.integers(1, 5))
    tables = [draw(ref.table_parts(kw, entries=n)) for _ in range(pop)]
    return kw, tables


@FAST
@given(populations(), scales_st, st.booleans(), st.data())
def test_pwl_accumulate_population(popcase, e, explicit, data):
    kw, tables = popcase
    dp = PWLDatapath(**kw)
    n = len(tables[0][1])
    if explicit:
        P = [data.draw(ref.comparator_codes(kw["in_bits"], n - 1)) for _ in tables]
    else:
        P = [ref.breakpoint_codes(t[0], e, kw["in_bits"]) for t in tables]
    codes = data.draw(ref.input_codes(kw["in_bits"], [c for row in P for c in row]))
    if data.draw(st.booleans()):
        codes = data.draw(st.permutations(codes))
    K = np.array([t[1] for t in tables])
    B = np.array([t[2] for t in tables])
    out = pwl_accumulate_population(np.array(codes), e, np.array(P), K, B, dp)
    assert out.shape == (len(tables), len(codes))
    for r, (bps, slopes, icpts) in enumerate(tables):
        expect = ref.unit(codes, e, bps, slopes, icpts, dp, bp_codes=P[r])[1]
        assert ints(out[r]) == expect
        assert ints(pwl_accumulate(np.array(codes), e, np.array(P[r]), K[r], B[r], dp)) == expect


@FAST
@given(populations(), st.lists(scales_st, min_size=1, max_size=4),
       st.sampled_from(["ascending", "shuffled", "descending"]), st.booleans(), st.data())
def test_scale_batch_matches_reference(popcase, scales, order, explicit, data):
    kw, tables = popcase
    dp = PWLDatapath(**kw)
    n = len(tables[0][1])
    lo, hi = ref.code_range(kw["in_bits"])
    # comparator constants (pop, S, N-1)
    P = []
    for bps, _, _ in tables:
        if explicit:
            P.append([data.draw(ref.comparator_codes(kw["in_bits"], n - 1)) for _ in scales])
        else:
            P.append([ref.breakpoint_codes(bps, e, kw["in_bits"]) for e in scales])
    # codes per scale, each block possibly empty, in the chosen order
    blocks = []
    for s, e in enumerate(scales):
        near = [c for row in P for c in row[s]]
        block = data.draw(st.lists(st.integers(lo, hi), max_size=30))
        if data.draw(st.booleans()):
            block += sorted({v for c in near for v in (c - 1, c, c + 1) if lo <= v <= hi} | {lo, hi})
        if order == "ascending":
            block = sorted(block)
        elif order == "descending":
            block = sorted(block, reverse=True)
        else:
            block = data.draw(st.permutations(block))
        blocks.append(block)
    flat = [c for b in blocks for c in b]
    bounds = [0]
    for b in blocks:
        bounds.append(bounds[-1] + len(b))
    batch = ScaleBatch(np.array(flat, dtype=np.int64), bounds, scales, dp)
    assert batch.ascending == all(all(x <= y for x, y in zip(b, b[1:])) for b in blocks)
    K = np.array([t[1] for t in tables])
    B = np.array([t[2] for t in tables])
    out = batch.accumulate(np.array(P, dtype=np.int64).reshape(len(tables), len(scales), n - 1), K, B)
    assert out.shape == (len(tables), len(flat))
    for r, (bps, slopes, icpts) in enumerate(tables):
        expect = []
        for s, e in enumerate(scales):
            expect += ref.unit(blocks[s], e, bps, slopes, icpts, dp, bp_codes=P[r][s])[1]
        assert ints(out[r]) == expect
    # the batch is reused for the next generation: a second population gives its own results
    K2, B2 = K[::-1].copy(), B[::-1].copy()
    P2 = np.array(P[::-1], dtype=np.int64).reshape(len(tables), len(scales), n - 1)
    out2 = batch.accumulate(P2, K2, B2)
    assert np.array_equal(out2, out[::-1])


def test_scale_batch_ascending_blocks_restart_the_segment_scan():
    """Codes ascend inside each scale but not across scales: the scan restarts per scale."""
    dp = PWLDatapath()
    blocks = [[-128, -5, 0, 7, 127], [-128, -1, 0, 1, 127], [3, 3, 3]]
    scales = [0, 3, 6]
    bps = [-1.0, 0.0, 0.5]
    slopes, icpts = [10, -20, 30, -40], [1, 2, 3, 4]
    P = [[ref.breakpoint_codes(bps, e, 8) for e in scales]]
    flat = np.array([c for b in blocks for c in b])
    batch = ScaleBatch(flat, [0, 5, 10, 13], scales, dp)
    assert batch.ascending
    out = batch.accumulate(np.array(P), np.array([slopes]), np.array([icpts]))
    exp = []
    for s, e in enumerate(scales):
        exp += ref.unit(blocks[s], e, bps, slopes, icpts, dp)[1]
    assert ints(out[0]) == exp


# --- PWLTable arithmetic --------------------------------------------------------------------

@st.composite
def tables(draw, out=None, in_bits=None, scales=None, explicit=None, rule=None):
    """``(table, datapath fields, breakpoints, slopes, intercepts, explicit codes)``; ``rule`` as
    :func:`reference_int.datapath_fields` (True: a random segment rule)."""
    kw = draw(ref.datapath_fields(out=out, in_bits=in_bits, rule=rule))
    bps, slopes, icpts = draw(ref.table_parts(kw))
    if scales is None:
        scales = sorted(set(draw(st.lists(scales_st, min_size=1, max_size=5))))
    # a domain holding 0, so every scale has a code in it
    lo = -Fraction(draw(st.integers(0, 2**12)), 2**draw(st.integers(0, 8)))
    hi = Fraction(draw(st.integers(0 if lo < 0 else 1, 2**12)), 2**draw(st.integers(0, 8)))
    use_explicit = draw(st.booleans()) if explicit is None else explicit
    explicit_codes = None
    if use_explicit:
        explicit_codes = {e: draw(ref.comparator_codes(kw["in_bits"], len(bps), kw.get("segment_rule", "ge")))
                          for e in scales}
    table = PWLTable("gelu", (float(lo), float(hi)), PWLDatapath(**kw), scales, floats(bps), slopes, icpts,
                     explicit_codes=None if explicit_codes is None else
                     {e: np.array(c, dtype=np.int64) for e, c in explicit_codes.items()})
    return table, kw, bps, slopes, icpts, explicit_codes


@FAST
@given(tables(), st.data())
def test_table_accumulate_output_evaluate(tcase, data):
    table, kw, bps, slopes, icpts, explicit = tcase
    dp = table.datapath
    for e in table.scales:
        P = explicit[e] if explicit is not None else ref.breakpoint_codes(bps, e, kw["in_bits"])
        assert ints(table.breakpoint_codes(e)) == P
        codes = data.draw(ref.input_codes(kw["in_bits"], P, max_size=24))
        _, accs, outs, sats = ref.unit(codes, e, bps, slopes, icpts, dp, bp_codes=P)
        assert ints(table.accumulate(np.array(codes), e)) == accs
        counter = SaturationCounter()
        assert ints(table.output_codes(np.array(codes), e, counter)) == outs
        assert counter.total == sats
        assert table.output_frac(e) == ref.output_frac(e, dp)
        got = table.evaluate(np.array(codes), e)
        assert got.dtype == np.float64
        assert [float(v) for v in got] == [float(ref.output_real(y, e, dp)) for y in outs]


@settings(max_examples=50, deadline=None)
@given(tables(in_bits=8, scales=list(range(7))), st.sampled_from([None, (8, 6), (8, 4), (12, 8), (6, 2)]),
       st.sampled_from(ref.MODES))
def test_exhaustive_8bit_every_code_every_scale(tcase, out, mode):
    table, kw, bps, slopes, icpts, explicit = tcase
    if out is not None:
        dp = dataclasses.replace(table.datapath, out_bits=out[0], out_frac=out[1], out_rounding=mode)
        table = dataclasses.replace(table, datapath=dp)
    dp = table.datapath
    codes = list(range(-128, 128))
    assert ints(dp.codes()) == codes
    for e in range(7):
        P = explicit[e] if explicit is not None else ref.breakpoint_codes(bps, e, 8)
        _, accs, outs, _ = ref.unit(codes, e, bps, slopes, icpts, dp, bp_codes=P)
        assert ints(table.accumulate(dp.codes(), e)) == accs
        assert ints(table.output_codes(dp.codes(), e)) == outs
        assert [float(v) for v in table.evaluate(dp.codes(), e)] == [float(ref.output_real(y, e, dp)) for y in outs]


def test_exhaustive_default_table_by_hand():
    """A hand-made 4-entry INT8 table, every code and scale, against the reference."""
    dp = PWLDatapath()
    bps, slopes, icpts = [-1.5, 0.0, 0.75], [-3, 5, 64, 127], [-128, 0, 17, 127]
    t = PWLTable("gelu", (-4, 4), dp, range(7), bps, slopes, icpts)
    for e in range(7):
        _, accs, _, _ = ref.unit(range(-128, 128), e, bps, slopes, icpts, dp)
        assert ints(t.accumulate(dp.codes(), e)) == accs
    # spot values at e=2: P = [round(-6) , 0, 3] = [-6, 0, 3]
    assert ints(t.breakpoint_codes(2)) == [-6, 0, 3]
    assert ints(t.accumulate([-7, -6, -1, 0, 2, 3], 2)) == [-3 * -7 - 128 * 4, 5 * -6, 5 * -1, 64 * 0 + 17 * 4,
                                                            64 * 2 + 17 * 4, 127 * 3 + 127 * 4]


@FAST
@given(tables(explicit=False), st.data())
def test_table_call_quantizes_reals_half_even(tcase, data):
    table, kw, *_ = tcase
    e = data.draw(st.sampled_from(table.scales))
    lo, hi = ref.code_range(kw["in_bits"])
    # reals on the half-code grid (ties) and beyond the code range (saturated)
    halves = data.draw(st.lists(st.integers(2 * lo - 8, 2 * hi + 8), min_size=1, max_size=20))
    x = [float(Fraction(h, 2) / Fraction(2) ** e) for h in halves]
    q = [ref.saturate(round(Fraction(h, 2)), kw["in_bits"])[0] for h in halves]
    assert [float(v) for v in table(np.array(x), e)] == [float(v) for v in table.evaluate(np.array(q), e)]


# --- unit errors ----------------------------------------------------------------------------

def test_pwl_shape_and_width_errors():
    dp = PWLDatapath()
    with pytest.raises(GQAError) as ei:
        pwl_accumulate([0], 0, [0, 1], [1, 2], [1, 2], dp)
    assert_field(ei, "breakpoints")
    with pytest.raises(GQAError) as ei:
        pwl_accumulate([0], 0, [0], [1, 2], [1, 2, 3], dp)
    assert_field(ei, "intercepts")
    wide = PWLDatapath(in_bits=20, slope_bits=24, icpt_bits=24, slope_frac=0, icpt_frac=48)
    with pytest.raises(GQAError) as ei:
        pwl_accumulate([0], -24, [0], [1, 2], [1, 2], wide)
    assert_field(ei, "scale")
    with pytest.raises(GQAError) as ei:
        pwl_accumulate_population([0], 0, [0], [[1, 2]], [[1, 2]], dp)
    assert_field(ei, "breakpoints")


def test_scale_batch_errors():
    dp = PWLDatapath()
    with pytest.raises(GQAError) as ei:
        ScaleBatch([0, 1, 2], [0, 2], [0, 1], dp)
    assert_field(ei, "bounds")
    with pytest.raises(GQAError) as ei:
        ScaleBatch([0, 1, 2], [0, 3, 2], [0, 1], dp)
    assert_field(ei, "bounds")
    with pytest.raises(GQAError) as ei:  # a split that goes back by one code
        ScaleBatch([0, 1, 2], [0, 2, 1, 3], [0, 1, 2], dp)
    assert_field(ei, "bounds")
    with pytest.raises(GQAError) as ei:
        ScaleBatch([0, 128], [0, 2], [0], dp)
    assert_field(ei, "codes")
    batch = ScaleBatch([0, 1, 2], [0, 3], [0], dp)
    with pytest.raises(GQAError) as ei:
        batch.accumulate(np.array([[[3, 1]]]), np.array([[1, 2, 3]]), np.array([[1, 2, 3]]))
    assert_field(ei, "breakpoints")
    with pytest.raises(GQAError) as ei:
        batch.accumulate(np.array([[1, 3]]), np.array([[1, 2, 3]]), np.array([[1, 2, 3]]))
    assert_field(ei, "breakpoints")
    # every start above the first but not non-decreasing (5 then 3): refused too
    with pytest.raises(GQAError) as ei:
        batch.accumulate(np.array([[[0, 5, 3]]]), np.array([[1, 2, 3, 4]]), np.array([[1, 2, 3, 4]]))
    assert_field(ei, "breakpoints")


# --- error report ---------------------------------------------------------------------------

def _poly(x):
    return x * x / 4 - x / 2 + 0.125


def _poly_exact(x: Fraction) -> Fraction:
    return x * x / 4 - x / 2 + Fraction(1, 8)


def _gelu_math(x: float) -> float:
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def _reference_error(table, kw, bps, slopes, icpts, explicit, f_exact, weights=None):
    dp = table.datapath
    mse, mx, pts = [], [], []
    for e in table.scales:
        codes = ref.domain_codes(table.domain, e, kw["in_bits"])
        P = explicit[e] if explicit is not None else ref.breakpoint_codes(bps, e, kw["in_bits"])
        _, _, outs, _ = ref.unit(codes, e, bps, slopes, icpts, dp, bp_codes=P)
        errs = [ref.output_real(y, e, dp) - f_exact(Fraction(q) / Fraction(2) ** e) for q, y in zip(codes, outs)]
        sq = [Fraction(d) ** 2 for d in errs]
        if weights is not None and e in weights:
            w = [weights[e][q - ref.code_range(kw["in_bits"])[0]] for q in codes]
            mse.append(sum(Fraction(a) * b for a, b in zip(w, sq)) / sum(w) if sum(w) > 0 else Fraction(0))
        else:
            mse.append(sum(sq) / len(sq))
        mx.append(max(abs(Fraction(d)) for d in errs))
        pts.append(len(codes))
    return mse, mx, pts


@st.composite
def small_tables(draw):
    kw = draw(ref.datapath_fields(in_bits=draw(st.integers(3, 8))))
    bps, slopes, icpts = draw(ref.table_parts(kw, entries=draw(st.integers(2, 6))))
    scales = sorted(set(draw(st.lists(st.integers(-1, 6), min_size=1, max_size=4))))
    # domains with non-dyadic ends too; 0 inside so every scale has a code
    lo = -draw(st.sampled_from([0.0, 0.3, 1.0, 1.7, 2.5, 100.0]))
    hi = draw(st.sampled_from([0.1, 0.75, 1.0, 3.3, 4.0, 100.0]))
    explicit = None
    if draw(st.booleans()):
        explicit = {e: draw(ref.comparator_codes(kw["in_bits"], len(bps))) for e in scales}
    t = PWLTable("gelu", (lo, hi), PWLDatapath(**kw), scales, floats(bps), slopes, icpts, explicit_codes=explicit)
    return t, kw, bps, slopes, icpts, explicit


def _close(a, b, rel=1e-9, abs_=1e-300):
    return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=abs_)


@settings(max_examples=60, deadline=None)
@given(small_tables(), st.booleans(), st.data())
def test_error_report_matches_direct_computation(tcase, weighted, data):
    table, kw, bps, slopes, icpts, explicit = tcase
    weights = None
    if weighted:
        n_codes = 2 ** kw["in_bits"]
        weights = {e: data.draw(st.lists(st.integers(0, 5), min_size=n_codes, max_size=n_codes))
                   for e in table.scales if data.draw(st.booleans())}
    rep = table.error(_poly, weights=weights)
    mse, mx, pts = _reference_error(table, kw, bps, slopes, icpts, explicit, _poly_exact, weights)
    assert tuple(rep.scales) == tuple(table.scales)
    assert [int(v) for v in rep.points] == pts
    assert all(_close(a, b) for a, b in zip(rep.mse, mse)), (list(rep.mse), [float(v) for v in mse])
    assert all(_close(a, b) for a, b in zip(rep.max_abs, mx))
    assert _close(rep.mean_mse, sum(mse) / len(mse))
    assert _close(rep.max_max_abs, max(mx))
    d = rep.to_dict()
    assert set(d["mse"]) == {str(e) for e in table.scales}
    assert _close(d["mean_mse"], sum(mse) / len(mse))


def test_error_report_gelu_small_table():
    dp = PWLDatapath()
    bps, slopes, icpts = [-2.0, -0.5, 0.5, 2.0], [0, -6, 32, 58, 64], [0, -18, 0, -6, 0]
    t = PWLTable("gelu", (-4.0, 4.0), dp, [0, 2, 4, 6], bps, slopes, icpts)
    rep = t.error()
    for k, e in enumerate(t.scales):
        codes = ref.domain_codes((-4, 4), e, 8)
        assert codes == list(range(max(-128, -4 * 2**e), min(127, 4 * 2**e) + 1))
        _, _, outs, _ = ref.unit(codes, e, bps, slopes, icpts, dp)
        errs = [float(ref.output_real(y, e, dp)) - _gelu_math(q / 2**e) for q, y in zip(codes, outs)]
        assert rep.points[k] == len(codes)
        assert math.isclose(rep.mse[k], sum(d * d for d in errs) / len(errs), rel_tol=1e-9)
        assert math.isclose(rep.max_abs[k], max(abs(d) for d in errs), rel_tol=1e-9)
    assert math.isclose(rep.mean_mse, float(np.mean(rep.mse)))
    assert 0 < rep.mean_mse < 0.05
    assert "mean" in rep.report()
