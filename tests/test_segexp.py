"""Per-segment exponents (gqa_lut.segexp): the wide-datapath table is the narrow-code unit bit for
bit, and the exact search over every exponent choice per segment equals brute force."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import gqa_lut
from gqa_lut.exact import exact_optimum
from gqa_lut.objective import Objective
from gqa_lut.segexp import SegmentExponents, segment_codes
from intsim import GQAError, PWLDatapath, PWLTable, get_function

from test_exact import brute_force


def narrow_unit(q: int, e: int, seg: dict, fmt: SegmentExponents, in_bits: int) -> tuple[int, int]:
    """The per-segment-exponent unit in Python integers: ``(A, F)`` for code ``q`` of one segment."""
    F = max(e + fmt.slope_fracs[1], fmt.icpt_fracs[1])
    return (seg["slope"] * q << (F - e - seg["slope_frac"])) + (seg["icpt"] << (F - seg["icpt_frac"])), F


@settings(max_examples=60, deadline=None)
@given(sb=st.integers(2, 8), s_lo=st.integers(0, 6), s_span=st.integers(0, 3), ib=st.integers(2, 8),
       t_lo=st.integers(0, 6), t_span=st.integers(0, 3), e=st.integers(0, 5), data=st.data())
def test_the_wide_table_is_the_narrow_unit_on_every_code(sb, s_lo, s_span, ib, t_lo, t_span, e, data):
    fmt = SegmentExponents(sb, (s_lo, s_lo + s_span), ib, (t_lo, t_lo + t_span))
    n = 4
    segs = [{"slope": data.draw(st.integers(-(1 << (sb - 1)), (1 << (sb - 1)) - 1)),
             "slope_frac": data.draw(st.integers(s_lo, s_lo + s_span)),
             "icpt": data.draw(st.integers(-(1 << (ib - 1)), (1 << (ib - 1)) - 1)),
             "icpt_frac": data.draw(st.integers(t_lo, t_lo + t_span))} for _ in range(n)]
    dp = fmt.wide_datapath(in_bits=6)
    K = [g["slope"] << (s_lo + s_span - g["slope_frac"]) for g in segs]
    B = [g["icpt"] << (t_lo + t_span - g["icpt_frac"]) for g in segs]
    table = PWLTable(function="gelu", domain=(-4.0, 4.0), datapath=dp, scales=[e], breakpoints=[-1.0, 0.0, 1.0],
                     slopes=K, intercepts=B)
    q = np.arange(dp.code_min, dp.code_max + 1)
    P = table.segment_starts(e)
    expected = []
    for c in q:
        i = sum(int(c) >= int(p) for p in P)
        expected.append(narrow_unit(int(c), e, segs[i], fmt, 6)[0])
    assert table.accumulate(q, e).tolist() == expected
    assert table.output_frac(e) == narrow_unit(0, e, segs[0], fmt, 6)[1]
    # the recorded narrow codes give back the same wide codes
    back = segment_codes(table, fmt)
    assert [g["slope"] << (s_lo + s_span - g["slope_frac"]) for g in back] == K
    assert [g["icpt"] << (t_lo + t_span - g["icpt_frac"]) for g in back] == B


def allowed(bits: int, lo: int, hi: int) -> np.ndarray:
    narrow = np.arange(-(1 << (bits - 1)), 1 << (bits - 1))
    return np.unique(np.concatenate([narrow << (hi - f) for f in range(lo, hi + 1)]))


@pytest.mark.parametrize("func, domain, scales, entries, fmt", [
    ("gelu", (-1.0, 1.0), [0, 1, 2], 3, SegmentExponents(3, (1, 3), 3, (1, 2))),
    ("exp", (-2.0, 0.0), [0, 1], 4, SegmentExponents(3, (2, 3), 4, (2, 4))),
    ("tanh", (-1.0, 1.0), [1, 2], 3, SegmentExponents(2, (0, 3), 3, (1, 3))),
])
def test_exact_over_every_exponent_equals_brute_force(func, domain, scales, entries, fmt):
    fn = get_function(func).with_domain(domain)
    dp = fmt.wide_datapath(in_bits=4)
    obj = Objective(fn, entries, dp, scales)
    res = exact_optimum(obj, formats=fmt.formats())
    best = brute_force(fn, entries, dp, scales, slope_codes=allowed(fmt.slope_bits, *fmt.slope_fracs),
                       icpt_codes=allowed(fmt.icpt_bits, *fmt.icpt_fracs))
    assert res.value == pytest.approx(best, rel=1e-9, abs=1e-15)
    # every segment of the optimum is in the format, and beats (or ties) the widest single format
    table = gqa_lut.search(fn, entries, "exact", scales=scales, in_bits=4, segment_exponents=fmt)
    assert table.error().mean_mse == pytest.approx(res.value, rel=1e-9, abs=1e-15)
    assert len(table.provenance["segments"]) == entries
    assert table.provenance["coefficient_format"]["kind"] == "per-segment exponents"


# max |err| and rounded outputs (each rounding mode), the exact scan over every exponent per segment
@pytest.mark.parametrize("func, domain, scales, entries, fmt, metric, out", [
    ("gelu", (-1.0, 1.0), [0, 1, 2], 3, SegmentExponents(3, (1, 3), 3, (1, 2)), "max_abs", {}),
    ("exp", (-2.0, 0.0), [0, 1], 4, SegmentExponents(3, (2, 3), 4, (2, 4)), "max_abs", {}),
    ("gelu", (-1.0, 1.0), [0, 1, 2], 3, SegmentExponents(3, (1, 3), 3, (1, 2)), "mse",
     dict(out_bits=8, out_frac=3, out_rounding="half_even")),
    ("exp", (-2.0, 0.0), [0, 1], 4, SegmentExponents(3, (2, 3), 4, (2, 4)), "mse",
     dict(out_bits=8, out_frac=4, out_rounding="floor")),
    ("tanh", (-1.0, 1.0), [1, 2], 3, SegmentExponents(2, (0, 3), 3, (1, 3)), "max_abs",
     dict(out_bits=9, out_frac=3, out_rounding="half_up")),
    ("sigmoid", (-2.0, 2.0), [0, 1], 3, SegmentExponents(3, (1, 3), 3, (2, 3)), "mse",
     dict(out_bits=9, out_frac=2, out_rounding="half_away")),
])
def test_exact_max_abs_and_rounded_outputs_over_every_exponent_equal_brute_force(func, domain, scales, entries, fmt,
                                                                                  metric, out):
    fn = get_function(func).with_domain(domain)
    dp = fmt.wide_datapath(in_bits=4, **out)
    obj = Objective(fn, entries, dp, scales, metric=metric)
    res = exact_optimum(obj, formats=fmt.formats())
    best = brute_force(fn, entries, dp, scales, metric=metric, slope_codes=allowed(fmt.slope_bits, *fmt.slope_fracs),
                       icpt_codes=allowed(fmt.icpt_bits, *fmt.icpt_fracs))
    assert res.value == pytest.approx(best, rel=1e-9, abs=1e-15)
    # the whole format can only do better than its widest single exponent pair (s_hi, t_hi), and the
    # search API returns that optimum as a table in the format
    plain = PWLDatapath(in_bits=4, slope_bits=fmt.slope_bits, slope_frac=fmt.slope_fracs[1], icpt_bits=fmt.icpt_bits,
                        icpt_frac=fmt.icpt_fracs[1], **out)
    assert res.value <= exact_optimum(Objective(fn, entries, plain, scales, metric=metric)).value * (1 + 1e-12)
    table = gqa_lut.search(fn, entries, "exact", scales=scales, in_bits=4, metric=metric, segment_exponents=fmt,
                           binding=False, **out)
    err = table.error()
    got = err.mean_mse if metric == "mse" else err.max_max_abs
    assert got == pytest.approx(res.value, rel=1e-9, abs=1e-15)
    assert len(segment_codes(table, fmt)) == entries


def test_one_exponent_is_the_plain_format_and_more_never_hurt():
    plain = gqa_lut.search("gelu", 8, "exact")
    one = gqa_lut.search("gelu", 8, "exact", segment_exponents=SegmentExponents(8, (6, 6), 8, (6, 6)))
    assert one.datapath == plain.datapath
    assert one.error().mean_mse == pytest.approx(plain.error().mean_mse, rel=1e-12)
    more = gqa_lut.search("gelu", 8, "exact", segment_exponents=SegmentExponents(8, (5, 7), 8, (5, 7)))
    assert more.error().mean_mse <= plain.error().mean_mse
    assert more.provenance["optimum"]["status"] == "exact"


@pytest.mark.parametrize("kwargs, field", [
    (dict(method="ga"), "segment_exponents"), (dict(slope_bits=6), "slope_bits"),
    (dict(segment_exponents="wide"), "segment_exponents"),
])
def test_bad_segment_exponent_requests(kwargs, field):
    kwargs = dict(kwargs)
    method = kwargs.pop("method", "exact")
    kwargs.setdefault("segment_exponents", SegmentExponents())
    with pytest.raises(GQAError) as exc:
        gqa_lut.search("gelu", 4, method, **kwargs)
    assert exc.value.field == field


@pytest.mark.parametrize("kw, field", [(dict(slope_fracs=(5, 3)), "slope_fracs"), (dict(icpt_fracs=3), "icpt_fracs"),
                                       (dict(slope_bits=0), "slope_bits"), (dict(icpt_bits=20, icpt_fracs=(0, 8)),
                                                                            "icpt_bits")])
def test_bad_formats(kw, field):
    with pytest.raises(GQAError) as exc:
        SegmentExponents(**kw)
    assert exc.value.field == field


def test_a_table_outside_the_format_is_named():
    fmt = SegmentExponents(3, (1, 2), 3, (1, 1))
    table = PWLTable(function="gelu", domain=(-1.0, 1.0), datapath=fmt.wide_datapath(in_bits=4), scales=[1],
                     breakpoints=[0.0], slopes=[1, 7], intercepts=[0, 0])
    with pytest.raises(GQAError) as exc:
        segment_codes(table, fmt)
    assert exc.value.field == "slopes[1]"
