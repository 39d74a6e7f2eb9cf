"""``gqa sim`` and ``gqa sim-bench`` from the command line: outputs, reports, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gqa_cli.main import main

SENTS = ["The cat sat on the mat.", "", "Interest rates rose again.", "word " * 300, "A fox jumped."]


def run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_sim_writes_embeddings_report_and_compares(tmp_path, capsys):
    text = tmp_path / "s.txt"
    text.write_text("\n".join(SENTS) + "\n", encoding="utf-8")
    emb, rep = tmp_path / "e.npy", tmp_path / "r.json"
    rc, out, err = run(capsys, "sim", "--text", str(text), "--out", str(emb), "--report", str(rep),
                       "--compare-fp32", "--calib", "16", "-q")
    assert rc == 0, err
    assert "skipped 1 empty line" in err and "truncated" in err
    assert "cosine to FP32: mean" in out and "nearest-neighbour agreement" in out
    e = np.load(emb)
    assert e.shape == (4, 384) and e.dtype == np.float32
    assert np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    r = json.loads(rep.read_text())
    assert {"config", "calibration", "op_stats", "compare_fp32", "energy", "machine"} <= set(r)
    assert r["machine"]["cpu"] and r["machine"]["capability"] and r["machine"]["gemm_backends"]
    assert "cpu:" in out and "gemm 2d int8xint8" in out
    assert r["energy"]["int"]["total_pj"] < r["energy"]["fp32"]["total_pj"]
    assert 0.5 < r["energy"]["int"]["gemm_share"] < 1
    assert "energy of this run" in out
    assert r["compare_fp32"]["mean_cosine"] > 0.97
    assert r["op_stats"]["total_overflows"] == 0
    assert r["calibration"]["outliers"][0]["channels"]
    # rows in input order: the same sentences alone give the same rows
    text2 = tmp_path / "one.txt"
    text2.write_text(SENTS[2] + "\n")
    emb2 = tmp_path / "e2.npy"
    assert run(capsys, "sim", "--text", str(text2), "--out", str(emb2), "--calib", "16", "-q")[0] == 0
    assert np.array_equal(np.load(emb2)[0], e[1])


@pytest.mark.parametrize("content,msg", [("", "holds no sentences"), ("\n\n  \n", "holds no sentences")])
def test_sim_empty_input(tmp_path, capsys, content, msg):
    text = tmp_path / "s.txt"
    text.write_text(content)
    out = tmp_path / "e.npy"
    rc, _, err = run(capsys, "sim", "--text", str(text), "--out", str(out))
    assert rc == 2 and msg in err and not out.exists()


def test_sim_bad_config_writes_nothing(tmp_path, capsys):
    text = tmp_path / "s.txt"
    text.write_text("hello\n")
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"gelu_table": "no_such_table"}))
    out = tmp_path / "e.npy"
    rc, _, err = run(capsys, "sim", "--text", str(text), "--config", str(cfg), "--out", str(out))
    assert rc == 2 and "gelu_table" in err and not out.exists()
    cfg.write_text(json.dumps({"act_bits": 99}))
    rc, _, err = run(capsys, "sim", "--text", str(text), "--config", str(cfg))
    assert rc == 2 and "act_bits" in err
    rc, _, err = run(capsys, "sim", "--text", str(tmp_path / "missing.txt"))
    assert rc == 2 and "does not exist" in err
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    rc, _, err = run(capsys, "sim", "--text", str(tmp_path / "bin.txt"))
    assert rc == 2 and "UTF-8" in err


def test_sim_bench_prints_both_times_and_ratio(capsys):
    rc, out, err = run(capsys, "sim-bench", "--batch", "2", "--seq", "16", "--repeats", "1", "--calib", "8")
    assert rc == 0, err
    assert "fp32 torch:" in out and "integer:" in out and "ratio (integer / FP32):" in out
    # the classes this forward uses: int8 linears and the act_offset (uint8) FFN operand; attention
    # runs fused (no batched GEMM), so a batched class is listed only if earlier work in the process used one
    assert "capability" in out and "gemm 2d int8xint8" in out and "gemm 2d uint8xint8" in out
    rc, _, err = run(capsys, "sim-bench", "--batch", "0")
    assert rc == 2 and "--batch" in err
    rc, out, err = run(capsys, "sim-bench", "--repeats", "0")
    assert rc == 2 and "--repeats" in err and "nan" not in out


def test_options_lists_every_registered_choice(capsys):
    from intsim.registry import choices

    rc, out, _ = run(capsys, "sim", "--options")
    assert rc == 0
    for field, names in choices().items():
        assert field in out and all(n in out for n in names), field
    rc, _, err = run(capsys, "sim")
    assert rc == 2 and "--text" in err
