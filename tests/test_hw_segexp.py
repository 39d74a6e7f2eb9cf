"""Per-segment exponent units in hw_models: priced (narrow multiplier, exponent storage, segment
shifters) and emitted as Verilog that matches intsim's evaluation of the wide table over every
input code of every scale, in iverilog and Verilator."""

from __future__ import annotations

import json

import numpy as np
import pytest

import gqa_lut
from gqa_lut import SegmentExponents
from hw_models import UnitConfig, estimate, plan_datapath, verilog
from hw_models.synth import lint_verilator, missing_tools, run_iverilog, run_verilator
from intsim import GQAError, PWLDatapath, PWLTable

from conftest import CI_REQUIRED

F48 = SegmentExponents(8, (4, 8), 8, (4, 8))


def _skip_without(*tools):
    missing = missing_tools(*tools)
    if missing:
        pytest.skip(CI_REQUIRED + f"{', '.join(missing)} not installed (Debian: apt-get install "
                    f"{' '.join(sorted(set(missing)))})")


def _search(fn, n, fmt, **kw):
    return gqa_lut.search(fn, n, "exact", segment_exponents=fmt, binding=False, **kw)


@pytest.fixture(scope="module")
def tables():
    return {
        "gelu8": _search("gelu", 8, F48),
        "recip8": _search("reciprocal", 8, F48),
        "exp16": _search("exp", 16, SegmentExponents(6, (3, 7), 7, (5, 5))),        # no intercept shift
        "silu4_in6": _search("silu", 4, SegmentExponents(5, (2, 3), 6, (3, 5)), in_bits=6, scales=range(4)),
        # the max |err| and rounded-output searches on a 6-bit input over scales 0..3 (seconds, not minutes)
        "gelu8_max": _search("gelu", 8, F48, metric="max_abs", in_bits=6, scales=range(4)),
        **{f"exp8_{m}": _search("exp", 8, SegmentExponents(6, (3, 7), 7, (4, 6)), out_bits=14, out_frac=5,
                                out_rounding=m, in_bits=6, scales=range(4))
           for m in ("floor", "half_up", "half_away", "half_even")},
    }


@pytest.fixture(scope="module")
def units(tables):
    us = [verilog.generate(t, None, name=f"s_{k}") for k, t in tables.items()]
    us += [verilog.generate(tables["gelu8"], e, name=f"s_gelu8_e{e}") for e in tables["gelu8"].scales]
    us += [verilog.generate(tables["recip8"], None, name="s_recip8_pipe", pipeline=1),
           verilog.generate(tables["exp8_half_even"], 2, name="s_exp8_e2_pipe", pipeline=1)]
    return us


def test_the_tables_use_several_exponents(tables):
    """The units below exercise the shifters: some segments shift, and not all by the same amount."""
    for key in ("gelu8", "recip8", "exp16"):
        fracs = {g["slope_frac"] for g in tables[key].provenance["segments"]}
        assert len(fracs) > 1, key


@pytest.mark.parametrize("sim", ["iverilog", "verilator"])
def test_every_code_of_every_scale_matches_intsim(units, tmp_path, sim):
    _skip_without(*(("iverilog", "vvp") if sim == "iverilog" else ("verilator",)))
    res = (run_iverilog if sim == "iverilog" else run_verilator)(units, tmp_path)
    assert res.passed, res.output[-2000:]
    assert res.vectors == sum(len(u.plan.scales) << u.plan.in_bits for u in units)
    assert set(res.units) == {u.name for u in units}


def test_a_wrong_segment_shift_is_caught(tables, tmp_path):
    """The testbench can fail: one segment's shift amount off by one is a mismatch."""
    _skip_without("iverilog", "vvp")
    u = verilog.generate(tables["gelu8"], None, name="s_bad")
    line = next(ln for ln in u.text.splitlines() if "ks = 3'h1;" in ln)
    bad = verilog.VerilogUnit(u.name, u.text.replace(line, line.replace("ks = 3'h1;", "ks = 3'h2;")), u.plan,
                              u.pipeline, u.table)
    res = run_iverilog([bad], tmp_path)
    assert not res.passed and res.errors > 0


def test_lint_clean(units):
    _skip_without("verilator")
    for u in units[:3] + units[-2:]:
        assert lint_verilator(u.text, u.name) == ""


def test_the_module_stores_narrow_codes(tables):
    t = tables["gelu8"]
    text = verilog.generate(t, None, name="s").text
    assert "reg signed [7:0] k;" in text and "reg [2:0] ks;" in text and "reg [2:0] bs;" in text
    assert "wire signed [15:0] kx = " in text  # the 8 x 8 narrow multiplier, not 12 x 8
    assert "per-segment exponents: slope s8 with exponent 4..8" in text
    one = verilog.generate(tables["exp16"], None, name="s").text  # one intercept exponent: no intercept shift
    assert " bs;" not in one and "bs = " not in one and "reg [2:0] ks;" in one


def test_cost_model_prices_the_narrow_unit(tables):
    t = tables["gelu8"]
    prog = estimate(UnitConfig.from_table(t, None), calibration="none").breakdown()
    assert prog["multiplier"]["detail"] == "8 x 8"
    assert prog["coefficient_storage"]["detail"] == "8 x (8+8+3+3)-bit registers"
    assert prog["segment_shifters"]["area_um2"] > 0
    # from widths alone: the same unit (a table only adds its comparator constants)
    dp = F48.wide_datapath(8)
    widths = estimate(UnitConfig.from_datapath(dp, 8, range(7), segment_exponents=F48), calibration="none")
    assert widths.area_um2 == pytest.approx(estimate(UnitConfig.from_table(t, None), calibration="none").area_um2)
    # the wide unit the format is bit for bit: a 12 x 8 multiplier and 24-bit entries, no segment shifters
    wide = estimate(UnitConfig.from_datapath(dp, 8, range(7)), calibration="none").breakdown()
    assert "segment_shifters" not in wide and wide["multiplier"]["detail"] == "12 x 8"
    assert prog["multiplier"]["area_um2"] < wide["multiplier"]["area_um2"]
    assert prog["coefficient_storage"]["area_um2"] < wide["coefficient_storage"]["area_um2"]
    # exponent storage and shifters cost something against the plain s8.6 unit
    plain = estimate(UnitConfig.from_datapath(PWLDatapath(), 8, range(7)), calibration="none")
    assert widths.area_um2 > plain.area_um2


def test_fixed_units_price_only_the_varying_shift_bits(tables):
    t = tables["exp16"]  # intercept exponent fixed at 5: no intercept shift at all
    cfg = UnitConfig.from_table(t, None, programmable=False)
    segs = t.provenance["segments"]
    shifts = {7 - g["slope_frac"] for g in segs}
    assert cfg.plan.bs_bits == 0 and cfg.varying_shift_bits[1] == 0
    differ = 0
    for s in shifts:
        differ |= s ^ min(shifts)
    assert cfg.varying_shift_bits[0] == bin(differ).count("1")
    bd = estimate(cfg, calibration="none").breakdown()
    assert f"({cfg.varying_shift_bits[0]} stages)" in bd["segment_shifters"]["detail"]


def test_a_plain_table_has_no_segment_parts():
    t = gqa_lut.search("gelu", 8, "dp")
    assert UnitConfig.from_table(t, None).plan.segexp is None
    assert "segment_shifters" not in estimate(UnitConfig.from_table(t, None)).breakdown()
    assert "kx" not in verilog.generate(t, None).text


def test_bad_declarations_are_refused(tables):
    t = tables["gelu8"]
    # widths changed after the search: the datapath is no longer the format's wide one
    narrower = PWLTable(function=t.function, domain=t.domain, datapath=PWLDatapath(slope_bits=12, slope_frac=8,
                                                                                   icpt_bits=13, icpt_frac=8),
                        scales=t.scales, breakpoints=t.breakpoints, slopes=t.slopes, intercepts=t.intercepts,
                        provenance=dict(t.provenance))
    with pytest.raises(GQAError) as exc:
        verilog.generate(narrower, None)
    assert exc.value.field == "coefficient_format"
    # a code that no exponent of the format holds
    slopes = np.array(t.slopes)
    slopes[0] = 1 << 10 | 1
    odd = PWLTable(function=t.function, domain=t.domain, datapath=t.datapath, scales=t.scales,
                   breakpoints=t.breakpoints, slopes=slopes, intercepts=t.intercepts, provenance=dict(t.provenance))
    with pytest.raises(GQAError) as exc:
        UnitConfig.from_table(odd, None)
    assert exc.value.field == "slopes[0]"
    with pytest.raises(GQAError) as exc:
        plan_datapath(PWLDatapath(), 8, range(7), segment_exponents=F48)
    assert exc.value.field == "datapath"
    bad = dict(t.provenance, coefficient_format={"kind": "per-segment exponents", "slope_bits": 8})
    with pytest.raises(GQAError) as exc:
        verilog.generate(PWLTable(function=t.function, domain=t.domain, datapath=t.datapath, scales=t.scales,
                                  breakpoints=t.breakpoints, slopes=t.slopes, intercepts=t.intercepts,
                                  provenance=bad), None)
    assert exc.value.field == "coefficient_format"


def test_cli_hw_and_rtl_take_a_segexp_table(tmp_path, capsys):
    from gqa_cli.main import main

    path = tmp_path / "g.json"
    assert main(["search", "gelu", "-n", "8", "--method", "exact", "--segment-exponents", "4:8,4:8", "-o", str(path),
                 "-q"]) == 0
    capsys.readouterr()
    assert main(["hw", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "segment_shifters" in out["int"]["breakdown"] and "exp 4..8" in out["int"]["description"]
    assert main(["hw", "--entries", "8", "--segment-exponents", "4:8,4:8", "--json"]) == 0
    widths = json.loads(capsys.readouterr().out)
    assert widths["int"]["area_um2"] == pytest.approx(out["int"]["area_um2"])
    for argv, field in ((["hw", str(path), "--slope-bits", "13"], "coefficient_format"),
                        (["hw", str(path), "--segment-exponents", "4:8,4:8"], "--segment-exponents"),
                        (["hw", "--entries", "8", "--segment-exponents", "4:8,4:8", "--icpt-frac", "3"],
                         "--icpt-frac")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert field in err and err.count("\n") == 1
    v, tb = tmp_path / "g.v", tmp_path / "g_tb.v"
    assert main(["rtl", str(path), "-o", str(v), "--testbench", str(tb)]) == 0
    assert "kx" in v.read_text()
    _skip_without("iverilog", "vvp")
    import subprocess
    subprocess.run(["iverilog", "-g2005", "-o", "sim", tb.name, v.name], cwd=tmp_path, check=True)
    run = subprocess.run(["vvp", "-n", "sim"], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert "PASS" in run.stdout and "errors=0 vectors=1792" in run.stdout
