"""hw_models.verilog: generated Verilog against intsim, bit for bit, in iverilog and Verilator.

Every unit below is simulated over every input code of every scale it serves; one testbench
holds them all, so each simulator compiles once per session (module-scoped fixtures).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gqa_lut
from hw_models import verilog
from hw_models.synth import lint_verilator, missing_tools, run_iverilog, run_verilator
from intsim import GQAError, PWLTable, SaturationCounter

from conftest import CI_REQUIRED

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "gqa_lut_pretrained"
RSQRT = dict(slope_bits=10, icpt_bits=10, scales=range(0, 6))


def _skip_without(*tools):
    missing = missing_tools(*tools)
    if missing:
        reason = f"{', '.join(missing)} not installed (Debian: apt-get install {' '.join(sorted(set(missing)))})"
        print(f"SKIP: {reason}")
        pytest.skip(CI_REQUIRED + reason)


@pytest.fixture(scope="module")
def tables():
    out = {}
    for fn, kw in (("gelu", {}), ("exp", {}), ("rsqrt", RSQRT)):
        for n in (8, 16):
            out[f"{fn}{n}"] = gqa_lut.search(fn, entries=n, method="dp", **kw)
    return out


def _rounded(fn, n, out_bits, out_frac, mode, **kw):
    return gqa_lut.search(fn, entries=n, method="dp", out_bits=out_bits, out_frac=out_frac, out_rounding=mode, **kw)


@pytest.fixture(scope="module")
def units(tables):
    """The simulated set: whole-scale-set units of all six tables, single-scale units, every
    rounding mode with mixed-sign rounding shifts and saturation, pipelined variants."""
    us = [verilog.generate(t, None, name=f"u_{k}") for k, t in tables.items()]
    for e in tables["gelu8"].scales:
        us.append(verilog.generate(tables["gelu8"], e, name=f"u_gelu8_e{e}"))
    for e in tables["rsqrt16"].scales:
        us.append(verilog.generate(tables["rsqrt16"], e, name=f"u_rsqrt16_e{e}"))
    for k in ("gelu16", "exp8", "exp16", "rsqrt8"):
        t = tables[k]
        us.append(verilog.generate(t, t.scales[-1], name=f"u_{k}_e{t.scales[-1]}", pipeline=1))
    us.append(verilog.generate(tables["gelu16"], None, name="u_gelu16_pipe", pipeline=1))
    for mode in ("floor", "half_up", "half_away", "half_even"):
        t = _rounded("gelu", 8, 10, 9, mode)   # t(e) = e - 3: left and right shifts; saturates above 1
        us.append(verilog.generate(t, None, name=f"u_gelu8_s10_9_{mode}"))
        us.append(verilog.generate(t, 0, name=f"u_gelu8_s10_9_{mode}_e0", pipeline=1))
        t = _rounded("exp", 16, 6, 4, mode)    # right shifts only, 6-bit output
        us.append(verilog.generate(t, None, name=f"u_exp16_s6_4_{mode}", pipeline=1 if mode == "half_even" else 0))
    us.append(verilog.generate(_rounded("rsqrt", 16, 12, 8, "half_away", **RSQRT), None, name="u_rsqrt16_s12_8"))
    # s10 input, both shifts varying with the scale, a negative scale, an odd entry count
    odd = dict(in_bits=10, slope_bits=6, slope_frac=4, icpt_bits=12, icpt_frac=10, scales=[-1, 0, 2, 7])
    us.append(verilog.generate(_rounded("silu", 5, 9, 5, "half_even", **odd), None, name="u_silu5_s10_in"))
    us.append(verilog.generate(gqa_lut.search("silu", entries=5, method="dp", **odd), None, name="u_silu5_s10_full",
                               pipeline=1))
    if REFERENCE.is_dir():  # explicit per-scale comparator codes (GQA-LUT reference files)
        us.append(verilog.generate(gqa_lut.load(REFERENCE / "gelu_pwl_7.json"), None, name="u_ref_gelu8"))
    us += gt_units()
    return us


def gt_units():
    """Units with segment_rule="gt" (comparators x > P_j): searched tables at full precision and
    rounded, single- and multi-scale, pipelined; and the reference operator's own tables (exp's
    breakpoints fall below the code range: constants clamped to code_min - 1)."""
    gt = dict(method="dp", segment_rule="gt")
    us = [verilog.generate(gqa_lut.search("gelu", entries=8, **gt), None, name="u_gt_gelu8"),
          verilog.generate(gqa_lut.search("exp", entries=16, **gt), 6, name="u_gt_exp16_e6", pipeline=1),
          verilog.generate(gqa_lut.search("gelu", entries=8, out_bits=10, out_frac=9, out_rounding="half_even", **gt),
                           None, name="u_gt_gelu8_s10_9", pipeline=1)]
    if REFERENCE.is_dir():
        for f in ("gelu_pwl_7.json", "exp_pwl_7.json", "exp_pwl_15.json"):
            t = gqa_lut.load(REFERENCE / f, segment_rule="gt")
            us.append(verilog.generate(t, None, name=f"u_gtref_{f[:-5]}"))
    return us


def _expected_vectors(units):
    return sum(len(u.plan.scales) * (1 << u.plan.in_bits) for u in units)


def _check(result, units):
    bad = {k: v for k, v in result.units.items() if v[0]}
    assert not bad, f"{result.simulator} mismatches: {bad}\n{result.output[-3000:]}"
    assert result.passed and result.errors == 0
    assert set(result.units) == {u.name for u in units}
    for u in units:
        assert result.units[u.name][1] == len(u.plan.scales) * (1 << u.plan.in_bits)
    assert result.vectors == _expected_vectors(units)


def test_iverilog_matches_intsim_on_every_code(units, tmp_path_factory):
    _skip_without("iverilog", "vvp")
    _check(run_iverilog(units, tmp_path_factory.mktemp("iverilog")), units)


def test_verilator_matches_intsim_on_every_code(units, tmp_path_factory):
    _skip_without("verilator", "g++", "make")
    _check(run_verilator(units, tmp_path_factory.mktemp("verilator"), jobs=2), units)


def test_the_set_covers_the_required_tables_and_rounding(units, tables):
    names = {u.name for u in units}
    for k in tables:
        assert f"u_{k}" in names and len(next(u for u in units if u.name == f"u_{k}").plan.scales) > 1
    modes = {u.plan.rounding for u in units if u.plan.out_bits is not None}
    assert modes == {"floor", "half_up", "half_away", "half_even"}
    assert any(u.pipeline for u in units if u.plan.multi) and any(u.pipeline for u in units if not u.plan.multi)
    # the rounded units really saturate and shift both ways
    t = _rounded("gelu", 8, 10, 9, "half_even")
    counter = SaturationCounter()
    for e in t.scales:
        t.output_codes(t.datapath.codes(), e, counter)
    assert counter.total > 0
    u = next(u for u in units if u.name == "u_gelu8_s10_9_half_even")
    assert min(s.t for s in u.plan.scales) < 0 < max(s.t for s in u.plan.scales)


def test_both_segment_rules_are_in_the_simulated_set(units):
    """The "gt" units compare with x > P_j, the "ge" ones with x >= P_j, and the rule changes the
    output of the same reference table on some codes: the simulation can tell the two apart."""
    rules = {u.plan.segment_rule for u in units}
    assert rules == {"ge", "gt"}
    for u in units:
        cmp = re.findall(r"wire c\d+ = \(xc (>=?) ", u.text)
        assert cmp and set(cmp) == {">=" if u.plan.segment_rule == "ge" else ">"}, u.name
    assert any(u.plan.multi and u.pipeline for u in units if u.plan.segment_rule == "gt")
    if REFERENCE.is_dir():
        ge = next(u for u in units if u.name == "u_ref_gelu8")
        gt = next(u for u in units if u.name == "u_gtref_gelu_pwl_7")
        assert np.count_nonzero(ge.vectors()[2] != gt.vectors()[2]) > 0
        # exp at e = 6: a breakpoint below the code range is clamped to code_min - 1 under "gt"
        exp = next(u for u in units if u.name == "u_gtref_exp_pwl_7")
        assert min(min(s.bp) for s in exp.plan.scales) == exp.table.datapath.code_min - 1


def test_generated_modules_lint_clean(units):
    _skip_without("verilator")
    for name in ("u_gelu8", "u_gelu8_e3", "u_gelu16_pipe", "u_gelu8_s10_9_half_away", "u_exp16_s6_4_half_even",
                 "u_gt_gelu8", "u_gt_gelu8_s10_9"):
        u = next(u for u in units if u.name == name)
        assert lint_verilator(u.text, u.name) == "", name


# --- the module's text ---------------------------------------------------------------------------

def _port(text, name):
    m = re.search(rf"^\s*(input|output)( signed)?( \[(\d+):0\])? {name}\b", text, re.M)
    return None if m is None else (m.group(1), bool(m.group(2)), int(m.group(4)) + 1 if m.group(4) else 1)


def test_ports_and_header_follow_the_datapath(tables):
    t = tables["gelu8"]
    dp = t.datapath
    for e in (0, 3, 6):
        u = verilog.generate(t, e)
        assert u.name == f"pwl_gelu_8_e{e}"
        assert _port(u.text, "x") == ("input", True, dp.in_bits)
        assert _port(u.text, "y") == ("output", True, dp.acc_bits(e))  # full precision: the accumulator
        assert _port(u.text, "clk") is None and _port(u.text, "e") is None
        assert f"// y_frac_bits = {t.output_frac(e)}\n" in u.text
    u = verilog.generate(t, None, pipeline=1)
    assert _port(u.text, "clk") == ("input", False, 1)
    assert _port(u.text, "e") == ("input", False, 3)
    assert f"// y_frac_bits = {max(dp.acc_frac(e) for e in t.scales)}\n" in u.text
    r = _rounded("gelu", 8, 10, 9, "floor")
    assert _port(verilog.generate(r, 2).text, "y") == ("output", True, 10)
    assert "// y_frac_bits = 9\n" in verilog.generate(r, None).text


def test_vectors_are_intsims_outputs(tables):
    t = tables["exp16"]
    u = verilog.generate(t, None)
    e, x, y = u.vectors()
    fc = max(t.datapath.acc_frac(s) for s in t.scales)
    for k, s in enumerate(t.scales):
        sel = e == k
        assert np.array_equal(x[sel], t.datapath.codes())
        assert np.array_equal(y[sel], t.output_codes(t.datapath.codes(), s) << (fc - t.output_frac(s)))
    single = verilog.generate(t, 4)
    assert np.array_equal(single.vectors()[2], t.output_codes(t.datapath.codes(), 4))
    lines = single.vector_hex().splitlines()
    assert len(lines) == 256 and len(set(map(len, lines))) == 1


def test_same_table_same_bytes(tables, tmp_path):
    t = tables["rsqrt8"]
    path = tmp_path / "t.json"
    t.save(path)
    again = PWLTable.load(path)
    for scale in (None, 2):
        for pipe in (0, 1):
            a, b = verilog.generate(t, scale, pipeline=pipe), verilog.generate(again, scale, pipeline=pipe)
            assert a.text == b.text and a.vector_hex() == b.vector_hex()
    tb1, f1 = verilog.testbench([verilog.generate(t, None)], "tb")
    tb2, f2 = verilog.testbench([verilog.generate(again, None)], "tb")
    assert tb1 == tb2 and f1 == f2


# --- bad input ----------------------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(st.text(max_size=12))
def test_names_that_are_not_identifiers_are_refused(name):
    ok = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", name) is not None and name not in verilog.RESERVED
    if ok:
        assert verilog.check_name(name) == name
    else:
        with pytest.raises(GQAError) as exc:
            verilog.check_name(name)
        assert exc.value.field == "name"


@pytest.mark.parametrize("name", ["module", "wire", "logic", "always_ff", "1abc", "a-b", "a b", "", "$x", "é", "a.b"])
def test_reserved_and_malformed_names(name, tables):
    with pytest.raises(GQAError, match="name"):
        verilog.generate(tables["gelu8"], 0, name=name)


def test_bad_generator_arguments(tables):
    t = tables["rsqrt8"]
    with pytest.raises(GQAError, match="scale: e=6 is not among"):
        verilog.generate(t, 6)
    with pytest.raises(GQAError, match="pipeline"):
        verilog.generate(t, 0, pipeline=2)
    with pytest.raises(GQAError, match="units"):
        verilog.testbench([verilog.generate(t, 0, name="a"), verilog.generate(t, 1, name="a")])


def test_coefficients_wider_than_declared_are_refused(tables):
    t = tables["rsqrt8"]
    bad = PWLTable(function=t.function, domain=t.domain, datapath=t.datapath, scales=t.scales,
                   breakpoints=t.breakpoints, slopes=t.slopes, intercepts=t.intercepts)
    bad.slopes = bad.slopes.copy()
    bad.slopes[0] = 4096  # mutated past s10 after validation
    with pytest.raises(GQAError) as exc:
        verilog.generate(bad, 0)
    assert exc.value.field == "slopes[0]" and "declare at least 14 bits" in str(exc.value)
