"""gqa_lut.gqa_json: the GQA-LUT reference's JSON tables (reading, writing, refusing)."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

import gqa_lut
from gqa_lut import load_gqa_json, save_gqa_json
from gqa_lut.gqa_json import table_from_gqa_dict, table_to_gqa_dict
from intsim import GQAError, PWLDatapath, PWLTable
from conftest import CI_REQUIRED

REF = Path(__file__).resolve().parents[2] / "shared" / "reference" / "gqa_lut_pretrained"
needs_ref = pytest.mark.skipif(not REF.is_dir(), reason=CI_REQUIRED + f"GQA-LUT reference tables not found at {REF}")

# DESIGN.md, reference figures: mean integer-datapath MSE of the published tables
DESIGN_MSE = {
    "gelu_pwl_7.json": ("gelu", 8, "9.97e-05"),
    "gelu_pwl_15.json": ("gelu", 16, "9.06e-05"),
    "hswish_pwl_7.json": ("hswish", 8, "3.08e-04"),
    "hswish_pwl_15.json": ("hswish", 16, "2.00e-04"),
    "exp_pwl_7.json": ("exp", 8, "1.22e-04"),
    "exp_pwl_15.json": ("exp", 16, "8.38e-05"),
}
RSQRT = ["sqrt_reci_pwl_7.json", "sqrt_reci_pwl_15.json"]
ALL_FILES = sorted(DESIGN_MSE) + RSQRT


def same_table(a: PWLTable, b: PWLTable):
    assert a.function == b.function
    assert a.scales == b.scales
    assert a.datapath == b.datapath
    for e in a.scales:
        assert np.array_equal(a.breakpoint_codes(e), b.breakpoint_codes(e)), e
    assert np.array_equal(a.slopes, b.slopes)
    assert np.array_equal(a.intercepts, b.intercepts)


# --- the reference files ------------------------------------------------------------------------
@needs_ref
def test_all_eight_reference_files_are_present():
    assert sorted(p.name for p in REF.glob("*.json")) == sorted(ALL_FILES)


@needs_ref
@pytest.mark.parametrize("name", sorted(DESIGN_MSE))
def test_reference_table_mean_mse_matches_design(name):
    func, entries, expected = DESIGN_MSE[name]
    table = load_gqa_json(REF / name)
    assert table.function == func
    assert table.entries == entries
    assert table.scales == tuple(range(7))
    assert table.datapath == PWLDatapath()  # INT8 coefficients: nothing widened
    assert "note" not in table.provenance
    assert table.provenance["method"] == "gqa-lut-reference"
    assert f"{table.error().mean_mse:.2e}" == expected


@needs_ref
@pytest.mark.parametrize("name", RSQRT)
def test_rsqrt_reference_loads_widened_with_a_note(name):
    table = load_gqa_json(REF / name)
    assert table.function == "rsqrt"
    assert table.scales == tuple(range(6))
    dp = table.datapath
    assert (dp.slope_bits, dp.icpt_bits) == (9, 9)
    assert (dp.slope_frac, dp.icpt_frac) == (6, 6)
    assert "not an INT8 table" in table.provenance["note"]
    assert set(table.provenance["keys"]) == {"split_points", "coeff", "bias"}
    assert np.isfinite(table.error().mean_mse)
    # an explicit INT8 datapath refuses the file, naming the coefficient that does not fit
    with pytest.raises(GQAError) as exc:
        load_gqa_json(REF / name, datapath=PWLDatapath())
    assert re.fullmatch(r"sqrt_reci\.(slopes|intercepts)\[\d+\]", exc.value.field)
    assert str(exc.value).startswith(exc.value.field + ":")
    # ... or clips and counts when asked to
    clipped = load_gqa_json(REF / name, datapath=PWLDatapath(), on_overflow="clip")
    assert clipped.provenance["clipped_coefficients"] > 0


@needs_ref
@pytest.mark.parametrize("name", ALL_FILES)
@pytest.mark.parametrize("legacy", [False, True], ids=["keys", "legacy-keys"])
def test_reference_round_trip(tmp_path, name, legacy):
    table = load_gqa_json(REF / name)
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    save_gqa_json(table, first, legacy_keys=legacy)
    keys = {"split_points", "coeff", "bias"} if legacy else {"breakpoints", "slopes", "intercepts"}
    raw = json.loads(first.read_text())
    (fname, per_scale), = raw.items()
    assert fname == ("sqrt_reci" if table.function == "rsqrt" else table.function)
    assert all(set(entry) == keys for entry in per_scale.values())
    back = load_gqa_json(first)
    same_table(table, back)
    assert set(back.provenance["keys"]) == keys
    assert back.error().mean_mse == table.error().mean_mse
    save_gqa_json(back, second, legacy_keys=legacy)
    assert second.read_bytes() == first.read_bytes()


@needs_ref
def test_reference_file_itself_reads_back_per_scale_breakpoints():
    # each scale's breakpoints in the file, times 2**e and clamped to [code_min, code_max + 1],
    # are exactly the table's comparator codes
    raw = json.loads((REF / "gelu_pwl_7.json").read_text())["gelu"]
    table = load_gqa_json(REF / "gelu_pwl_7.json")
    dp = table.datapath
    for e in table.scales:
        expected = np.clip(np.array(raw[str(e)]["breakpoints"]) * 2.0**e, dp.code_min, dp.code_max + 1)
        assert np.array_equal(expected, table.breakpoint_codes(e))
    assert np.array_equal(np.array(raw["0"]["slopes"]), table.slopes_real)
    assert np.array_equal(np.array(raw["0"]["intercepts"]), table.intercepts_real)


@needs_ref
@pytest.mark.parametrize("name", ["gelu_pwl_7.json", "sqrt_reci_pwl_15.json"])
def test_load_reads_both_formats(tmp_path, name):
    ref = load_gqa_json(REF / name)
    same_table(gqa_lut.load(REF / name), ref)
    ref.save(tmp_path / "own.json")
    own = gqa_lut.load(tmp_path / "own.json")
    same_table(own, ref)
    assert own.provenance == ref.provenance


# --- tables searched here ------------------------------------------------------------------------
@pytest.mark.parametrize("func, entries, method, scales", [
    ("gelu", 8, "ga", tuple(range(7))),
    ("exp", 16, "dp", tuple(range(7))),
    ("gelu", 6, "nnlut", tuple(range(7))),
    ("rsqrt", 8, "uniform", tuple(range(6))),
    ("reciprocal", 5, "dp", (1, 2, 4)),
])
def test_searched_table_round_trips_through_gqa_json(tmp_path, func, entries, method, scales):
    table = gqa_lut.search(func, entries, method, scales=scales, population=12, generations=10, seed=2,
                           progress=False)
    save_gqa_json(table, tmp_path / "t.json")
    back = load_gqa_json(tmp_path / "t.json")
    same_table(table, back)
    assert back.error().mean_mse == pytest.approx(table.error().mean_mse, rel=1e-12)
    # and through the generic loader
    same_table(gqa_lut.load(tmp_path / "t.json"), table)
    table.save(tmp_path / "own.json")
    same_table(gqa_lut.load(tmp_path / "own.json"), table)


def test_searched_table_with_legacy_keys_round_trips(tmp_path):
    table = gqa_lut.search("hswish", 8, "dp")
    save_gqa_json(table, tmp_path / "legacy.json", legacy_keys=True)
    raw = json.loads((tmp_path / "legacy.json").read_text())
    assert set(raw["hswish"]["3"]) == {"split_points", "coeff", "bias"}
    same_table(load_gqa_json(tmp_path / "legacy.json"), table)


# --- bad files ---------------------------------------------------------------------------------
def valid_dict():
    """A small valid 4-entry gelu table on scales 0..2 (breakpoints rounded per scale)."""
    bp = np.array([-1.75, 0.25, 1.5])
    per_scale = {str(e): {"breakpoints": [float(v) for v in np.round(bp * 2**e) / 2**e],
                          "slopes": [0.0, 0.25, 0.875, 1.0],
                          "intercepts": [-0.046875, 0.15625, 0.0, -0.09375]}
                 for e in range(3)}
    return {"gelu": per_scale}


def write(tmp_path, obj, name="bad.json"):
    path = tmp_path / name
    path.write_text(json.dumps(obj))  # json writes NaN as the NaN literal, which json reads back
    return path


def test_valid_dict_loads(tmp_path):
    table = load_gqa_json(write(tmp_path, valid_dict(), "good.json"))
    assert table.entries == 4 and table.scales == (0, 1, 2)
    assert table.slopes.tolist() == [0, 16, 56, 64]


def _two_functions(d):
    d["exp"] = copy.deepcopy(d["gelu"])


def _missing_breakpoints(d):
    del d["gelu"]["1"]["breakpoints"]


def _nan_slope(d):
    for entry in d["gelu"].values():
        entry["slopes"][2] = math.nan


def _nan_breakpoint(d):
    d["gelu"]["2"]["breakpoints"][0] = math.nan


def _inf_intercept(d):
    d["gelu"]["0"]["intercepts"][1] = math.inf


def _unsorted(d):
    bps = d["gelu"]["2"]["breakpoints"]
    bps[0], bps[1] = bps[1], bps[0]


def _short_intercepts(d):
    for entry in d["gelu"].values():
        entry["intercepts"] = entry["intercepts"][:-1]


def _long_breakpoints(d):
    d["gelu"]["1"]["breakpoints"].append(3.0)


def _off_grid_breakpoint(d):
    d["gelu"]["1"]["breakpoints"][1] = 0.25  # not a multiple of 2**-1


def _off_grid_coefficient(d):
    for entry in d["gelu"].values():
        entry["slopes"][1] = 0.25 + 2.0**-8  # not a multiple of 2**-6


def _slopes_differ_by_scale(d):
    d["gelu"]["2"]["slopes"][3] = 0.5


def _non_integer_scale(d):
    d["gelu"]["x"] = d["gelu"].pop("2")


def _unknown_function(d):
    d["softmaxx"] = d.pop("gelu")


def _no_scales(d):
    d["gelu"] = {}


BAD_FILES = [
    ("two function keys", _two_functions, None, "exactly one function key"),
    ("missing breakpoints", _missing_breakpoints, "gelu.1.breakpoints", "missing"),
    ("NaN slope", _nan_slope, "gelu.0.slopes", "NaN"),
    ("NaN breakpoint", _nan_breakpoint, "gelu.2.breakpoints", "NaN"),
    ("inf intercept", _inf_intercept, "gelu.0.intercepts", "infinity"),
    ("unsorted breakpoints", _unsorted, "gelu.2.breakpoints", "not sorted"),
    ("wrong-length intercepts", _short_intercepts, "gelu.0.intercepts", "expected 4"),
    ("wrong-length breakpoints", _long_breakpoints, "gelu.1.breakpoints", "expected 3"),
    ("breakpoint off the 2**-e grid", _off_grid_breakpoint, "gelu.1.breakpoints", "2**-1"),
    ("coefficient off the 2**-6 grid", _off_grid_coefficient, "gelu.0.slopes[1]", "2**-6"),
    ("coefficients differ by scale", _slopes_differ_by_scale, "gelu.2.slopes", "differ"),
    ("non-integer scale key", _non_integer_scale, "gelu", "integers"),
    ("unknown function", _unknown_function, None, "unknown function"),
    ("no scales", _no_scales, "gelu", "map scales"),
]


@pytest.mark.parametrize("edit, field, words", [(e, f, w) for _, e, f, w in BAD_FILES],
                         ids=[n for n, *_ in BAD_FILES])
def test_bad_gqa_file_raises_gqaerror_naming_the_field(tmp_path, edit, field, words):
    d = valid_dict()
    edit(d)
    path = write(tmp_path, d)
    with pytest.raises(GQAError) as exc:
        load_gqa_json(path)
    if field is None:  # a problem of the file as a whole: the error names the file
        assert str(path) in exc.value.field
    else:
        assert exc.value.field == field
    assert str(exc.value).startswith(exc.value.field + ":")
    assert words in str(exc.value)
    # the generic loader refuses it the same way
    with pytest.raises(GQAError):
        gqa_lut.load(path)


def test_not_json_and_missing_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(GQAError):
        load_gqa_json(path)
    with pytest.raises(GQAError):
        load_gqa_json(tmp_path / "absent.json")


def test_legacy_keys_load_like_current_keys(tmp_path):
    d = valid_dict()
    legacy = {"gelu": {e: {"split_points": v["breakpoints"], "coeff": v["slopes"], "bias": v["intercepts"]}
                       for e, v in d["gelu"].items()}}
    a = load_gqa_json(write(tmp_path, d, "a.json"))
    b = load_gqa_json(write(tmp_path, legacy, "b.json"))
    same_table(a, b)
    assert table_to_gqa_dict(b, legacy_keys=True) == legacy
    assert table_to_gqa_dict(a) == d


def test_table_from_dict_without_datapath_widens_only_as_needed():
    d = valid_dict()
    for entry in d["gelu"].values():
        entry["slopes"][0] = -3.0  # needs s9.6
    table = table_from_gqa_dict(d)
    assert (table.datapath.slope_bits, table.datapath.icpt_bits) == (9, 8)
    assert "s9.6 slopes" in table.provenance["note"]
