"""The `gqa` command: search, eval and plot, end to end, and its handling of bad input."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gqa_cli.main import main
from intsim import PWLTable
from conftest import CI_REQUIRED

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "gqa_lut_pretrained"


def run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_search_writes_both_formats_and_reports(tmp_path, capsys):
    ours, gqa = tmp_path / "g.json", tmp_path / "g_gqa.json"
    rc, out, _ = run(capsys, "search", "gelu", "--entries", "8", "--generations", "40", "--population", "20",
                     "-o", str(ours), "--gqa-json", str(gqa), "-q")
    assert rc == 0
    table = PWLTable.load(ours)
    assert table.entries == 8 and table.provenance["method"] == "ga"
    assert f"{table.error().mean_mse:.3e}" in out
    assert set(json.loads(gqa.read_text())["gelu"]) == {str(e) for e in range(7)}


def test_eval_json_matches_the_table(tmp_path, capsys):
    path = tmp_path / "u.json"
    assert run(capsys, "search", "exp", "-n", "4", "--method", "uniform", "-o", str(path))[0] == 0
    rc, out, _ = run(capsys, "eval", str(path), "--json")
    report = json.loads(out)
    err = PWLTable.load(path).error()
    assert rc == 0 and report["mean_mse"] == pytest.approx(err.mean_mse, rel=1e-12)
    assert list(report["mse"]) == [str(e) for e in range(7)]


@pytest.mark.skipif(not REFERENCE.is_dir(), reason=CI_REQUIRED + f"GQA-LUT reference tables not found at {REFERENCE}")
def test_eval_reads_reference_files(capsys):
    rc, out, _ = run(capsys, "eval", str(REFERENCE / "gelu_pwl_7.json"), "--json")
    assert rc == 0 and json.loads(out)["mean_mse"] == pytest.approx(9.97e-5, rel=1e-3)


def test_plot_writes_a_png(tmp_path, capsys):
    table, png = tmp_path / "t.json", tmp_path / "t.png"
    run(capsys, "search", "silu", "-n", "6", "--method", "dp", "-o", str(table))
    rc, _, _ = run(capsys, "plot", str(table), "-o", str(png))
    assert rc == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, field", [
    (["search", "nosuch", "-n", "8"], "function"),
    (["search", "gelu", "-n", "1"], "entries"),
    (["search", "gelu", "-n", "300"], "entries"),
    (["search", "gelu", "-n", "8", "--scales", "0:x"], "scales"),
    (["search", "gelu", "-n", "8", "--scales", "30"], "scales"),
    (["search", "gelu", "-n", "8", "--scales", "12", "--domain", "1", "4"], "scales"),
    (["search", "gelu", "-n", "8", "--slope-bits", "0"], "slope_bits"),
    (["search", "gelu", "-n", "8", "--out-bits", "8"], "out_bits"),
    (["search", "gelu", "-n", "8", "--out-rounding", "up", "--out-bits", "8", "--out-frac", "4"], "out_rounding"),
    (["search", "gelu", "-n", "8", "--domain", "1", "-1"], "domain"),
    (["search", "gelu", "-n", "8", "-o", "/nonexistent-dir/t.json"], "--output"),
    (["eval", "/nonexistent-file.json"], "table"),
])
def test_bad_input_is_one_clear_line(capsys, argv, field):
    rc, out, err = run(capsys, *argv)
    assert rc == 2
    assert "Traceback" not in err and field in err and err.count("\n") == 1


def test_failed_search_leaves_existing_output_untouched(tmp_path, capsys):
    path = tmp_path / "keep.json"
    path.write_text("precious")
    rc, _, _ = run(capsys, "search", "gelu", "-n", "1", "-o", str(path))
    assert rc == 2 and path.read_text() == "precious"


def test_malformed_table_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "gqa-sim/pwl-table", "version": 1, "function": "gelu"')
    rc, _, err = run(capsys, "eval", str(bad))
    assert rc == 2 and "not valid JSON" in err


def test_console_script_runs_the_demo_path(tmp_path):
    exe = shutil.which("gqa")
    if exe is None:
        pytest.skip(CI_REQUIRED + "the gqa console script is not installed (pip install -e .)")
    out = subprocess.run([exe, "search", "hswish", "-n", "4", "--generations", "10", "-q", "-o",
                          str(tmp_path / "h.json")], capture_output=True, text=True, check=True)
    assert "mean" in out.stdout
    same = subprocess.run([sys.executable, "-m", "gqa_cli", "search", "hswish", "-n", "4", "--generations", "10",
                           "-q", "-o", str(tmp_path / "h2.json")], capture_output=True, text=True, check=True)
    assert same.returncode == 0
    assert (tmp_path / "h.json").read_bytes() == (tmp_path / "h2.json").read_bytes()
    assert np.isfinite(PWLTable.load(tmp_path / "h.json").error().mean_mse)
