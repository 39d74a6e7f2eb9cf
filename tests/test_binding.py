"""Binding formats: every search records whether a coefficient format is the limit, measured by a wider re-search."""

import gqa_lut
import pytest
from gqa_cli.main import main
from gqa_lut.search import binding_hint
from intsim import PWLTable


def test_reciprocal_default_intercepts_bind_and_the_gain_is_measured():
    t = gqa_lut.search("reciprocal", 8, method="exact")
    rep = t.provenance["binding"]
    assert rep["binds"] and rep["intercept"]["binds"]
    at = rep["intercept"]["at_limit"]
    assert at and all(t.intercepts[i] in (-128, 127) for i in at)
    # the recorded error is the one the same search reaches with a 9-bit intercept
    wider = gqa_lut.search("reciprocal", 8, method="exact", icpt_bits=9, binding=False)
    assert rep["intercept"]["wider"]["value"] == pytest.approx(wider.error().mean_mse, rel=1e-12)
    assert rep["intercept"]["wider"]["value"] < 0.5 * rep["value"]
    assert "--icpt-bits 9" in binding_hint(t)


def test_gelu_does_not_bind():
    t = gqa_lut.search("gelu", 8, method="exact")
    rep = t.provenance["binding"]
    assert not rep["binds"] and rep["slope"]["at_limit"] == [] and rep["intercept"]["at_limit"] == []
    assert binding_hint(t) is None


def test_at_limit_without_gain_is_no_binding():
    # 2 entries of gelu on a coarse s4.2 slope: codes at the limit; whether that binds is what the re-search says
    t = gqa_lut.search("gelu", 2, method="exact", scales=[0, 1], slope_bits=4, slope_frac=2, icpt_bits=4, icpt_frac=2)
    rep = t.provenance["binding"]
    for c in ("slope", "intercept"):
        e = rep[c]
        if e["at_limit"]:
            assert e["binds"] == (e["wider"]["value"] < rep["value"] * (1 - rep["threshold"]))
        else:
            assert not e["binds"] and "wider" not in e
    assert (binding_hint(t) is not None) == rep["binds"]


def test_binding_survives_the_file(tmp_path):
    t = gqa_lut.search("reciprocal", 8, method="exact")
    t.save(tmp_path / "r.json")
    back = PWLTable.load(tmp_path / "r.json")
    assert back.provenance["binding"] == t.provenance["binding"]


def test_cli_hint_exactly_when_a_format_binds(capsys):
    assert main(["search", "reciprocal", "-n", "8", "--method", "exact", "-q"]) == 0
    out = capsys.readouterr().out
    hints = [line for line in out.splitlines() if line.startswith("hint:")]
    assert len(hints) == 1 and "intercept format binds" in hints[0] and "--icpt-bits 9" in hints[0]
    assert main(["search", "gelu", "-n", "8", "--method", "exact", "-q"]) == 0
    assert "hint:" not in capsys.readouterr().out


def test_segment_exponents_record_binding():
    t = gqa_lut.search("gelu", 4, method="exact", scales=[0, 1],
                       segment_exponents=gqa_lut.SegmentExponents(4, (2, 3), 4, (2, 3)))
    rep = t.provenance["binding"]
    assert set(rep) >= {"slope", "intercept", "binds"}
    assert (binding_hint(t) is not None) == rep["binds"]
