"""The comparator convention ``PWLDatapath.segment_rule`` ("ge" | "gt") through every part.

- the primitive ``segment_starts`` against reference_int.py's Python-integer rule, its clamp and
  its inverse; the unit (table, population kernel, fused LUT and per-element kernels) under
  both rules against the reference;
- the GQA-LUT reference's two evaluators, written here from their published behaviour, on all
  eight reference tables at every scale and code: the torch operator (``torch.bucketize`` on
  ``breakpoints / scale``, ``right=False``) is intsim under "gt" bit for bit, the trainer's
  ``np.digitize(x, split_points) - 1`` is intsim under "ge";
- searches (objective, GA, DP) under either rule, the table file, the importer/exporter, the
  CLI option and the torch module; the numba/torch mirrors of shared primitives.
"""

from __future__ import annotations

import dataclasses
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gqa_lut
import reference_int as ref
from test_pwl_unit import floats, tables  # the random-table strategy (with a random segment rule)
from gqa_cli.main import main as cli
from gqa_lut.dp import dp_optimum
from gqa_lut.gqa_json import load_gqa_json, save_gqa_json, table_from_gqa_dict
from gqa_lut.nn import PWLActivation, _exponent_from_absmax
from gqa_lut.nn import round_shift as torch_round_shift
from gqa_lut.objective import Objective
from intsim import GQAError, PWLDatapath, PWLTable, SaturationCounter, get_function, scale_points
from intsim.fixedpoint import round_shift
from intsim.gelu import PWLGelu
from intsim.pwl import ROUNDING_IDS, pwl_map, round_shift1
from conftest import CI_REQUIRED

REF = Path(__file__).resolve().parents[2] / "shared" / "reference" / "gqa_lut_pretrained"
needs_ref = pytest.mark.skipif(not REF.is_dir(), reason=CI_REQUIRED + f"GQA-LUT reference tables not found at {REF}")
REF_FILES = ["exp_pwl_15.json", "exp_pwl_7.json", "gelu_pwl_15.json", "gelu_pwl_7.json", "hswish_pwl_15.json",
             "hswish_pwl_7.json", "sqrt_reci_pwl_15.json", "sqrt_reci_pwl_7.json"]
FAST = settings(max_examples=150, deadline=None)
scales_st = st.integers(ref.SCALE_MIN, ref.SCALE_MAX)


def ints(a) -> list[int]:
    return [int(v) for v in np.asarray(a).ravel()]


# --- the primitive ----------------------------------------------------------------------------

@FAST
@given(st.data(), scales_st)
def test_segment_starts_give_the_reference_segment_of_every_code(data, e):
    kw = data.draw(ref.datapath_fields(rule=True))
    dp = PWLDatapath(**kw)
    rule = kw["segment_rule"]
    bps = sorted(data.draw(st.lists(ref.dyadic_reals(kw["in_bits"]), max_size=12)))
    P = ref.breakpoint_codes(bps, e, kw["in_bits"], rule)
    assert ints(dp.breakpoint_codes(np.array(floats(bps)), e)) == P
    starts = dp.segment_starts(np.array(floats(bps)), e)
    assert starts.dtype == np.int64
    assert ints(starts) == [c + (rule == "gt") for c in P]
    assert all(dp.code_min <= s <= dp.code_max + 1 for s in ints(starts))
    for q in data.draw(ref.input_codes(kw["in_bits"], P, max_size=16)):
        assert int(np.sum(q >= starts)) == ref.segment(q, P, rule)
        # the clamp changes no segment: the unclamped constants segment every code alike
        raw = [round(Fraction(p) * 2**e) for p in bps]
        assert ref.segment(q, raw, rule) == ref.segment(q, P, rule)


def test_segment_rules_on_ties_and_ends():
    ge, gt = PWLDatapath(), PWLDatapath(segment_rule="gt")
    bps = [-1000.0, -2.5, 0.0, 1.5, 1000.0]
    assert ints(ge.breakpoint_codes(bps, 0)) == [-128, -2, 0, 2, 128]
    assert ints(gt.breakpoint_codes(bps, 0)) == [-129, -2, 0, 2, 127]
    assert ints(ge.segment_starts(bps, 0)) == [-128, -2, 0, 2, 128]
    assert ints(gt.segment_starts(bps, 0)) == [-128, -1, 1, 3, 128]
    assert ge.breakpoint_code_range == (-128, 128) and gt.breakpoint_code_range == (-129, 127)
    assert ge.segment_starts(np.zeros((2, 3)), 0).shape == (2, 3)
    # an exponent array broadcasts: every scale of a population in one call
    pop = np.array([[-3.3, -0.5, 0.25, 2.0], [-1.0, -1.0, 0.75, 3.9]])
    scales = np.arange(-2, 9)
    for dp in (ge, gt):
        many = dp.segment_starts(pop[:, None, :], scales[:, None])
        assert many.shape == (2, scales.size, 4)
        for s, e in enumerate(scales):
            assert np.array_equal(many[:, s], dp.segment_starts(pop, int(e)))


@given(st.sampled_from(ref.SEGMENT_RULES), st.integers(2, 12), scales_st, st.data())
@settings(max_examples=100, deadline=None)
def test_breakpoints_for_starts_inverts_segment_starts(rule, in_bits, e, data):
    dp = PWLDatapath(in_bits=in_bits, segment_rule=rule)
    starts = sorted(data.draw(st.lists(st.integers(dp.code_min, dp.code_max + 1), max_size=10)))
    bp = dp.breakpoints_for_starts(starts, e)
    assert ints(dp.segment_starts(bp, e)) == starts
    with pytest.raises(GQAError) as exc:
        dp.breakpoints_for_starts([dp.code_max + 2], e)
    assert exc.value.field == "starts"


@pytest.mark.parametrize("rule", ["GT", "", None, 1, ["ge"], ">="])
def test_bad_segment_rule_is_refused_naming_the_field(rule):
    with pytest.raises(GQAError) as exc:
        PWLDatapath(segment_rule=rule)
    assert exc.value.field == "segment_rule"
    assert "'ge'" in str(exc.value) and "'gt'" in str(exc.value)


# --- the unit under both rules --------------------------------------------------------------------

@FAST
@given(tables(rule=True), st.data())
def test_table_matches_reference_under_either_rule(tcase, data):
    table, kw, bps, _, _, explicit = tcase
    dp = table.datapath
    for e in table.scales:
        P = explicit[e] if explicit is not None else ref.breakpoint_codes(bps, e, kw["in_bits"], kw["segment_rule"])
        assert ints(table.breakpoint_codes(e)) == P
        codes = data.draw(ref.input_codes(kw["in_bits"], P, max_size=20))
        _, accs, outs, sats = ref.unit(codes, e, bps, table.slopes, table.intercepts, dp, bp_codes=P)
        assert ints(table.accumulate(np.array(codes), e)) == accs
        counter = SaturationCounter()
        assert ints(table.output_codes(np.array(codes), e, counter)) == outs
        assert counter.total == sats
        # the file keeps the rule and the unit
        back = PWLTable.from_dict(json.loads(json.dumps(table.to_dict())))
        assert back.datapath.segment_rule == kw["segment_rule"]
        assert ints(back.output_codes(np.array(codes), e)) == outs


@settings(max_examples=60, deadline=None)
@given(tables(in_bits=8, rule=True), st.data())
def test_fused_kernels_honour_the_rule(tcase, data):
    """pwl_map's per-code LUT (s8) and its per-element kernel (s17) against the reference."""
    table, kw, bps, _, _, explicit = tcase
    wide = PWLTable(table.function, table.domain, dataclasses.replace(table.datapath, in_bits=17), table.scales,
                    table.breakpoints, table.slopes, table.intercepts,
                    explicit_codes=None if explicit is None else {e: np.array(c) for e, c in explicit.items()})
    for t in (table, wide):
        dp = t.datapath
        for e in t.scales:
            if dp.acc_bits(e) > 63 or (dp.out_bits is not None and not 0 <= dp.acc_frac(e) - dp.out_frac <= 62):
                continue  # beyond what the fused kernels take (they refuse it)
            codes = np.array(data.draw(ref.input_codes(kw["in_bits"], ints(t.breakpoint_codes(e)), max_size=20)))
            want = [ref.table_output(int(q), e, t) for q in codes]
            assert ints(pwl_map(codes, t, e, np.int64)) == want


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(ref.SEGMENT_RULES), st.integers(2, 8), st.data())
def test_population_kernel_on_segment_starts(rule, entries, data):
    dp = PWLDatapath(segment_rule=rule)
    fn = get_function("gelu")
    obj = Objective(fn, entries, dp, [0, 2, 5])
    pop = np.array([sorted(data.draw(st.lists(st.sampled_from([-4.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.5, 3.0]),
                                              min_size=entries - 1, max_size=entries - 1))) for _ in range(4)])
    P = obj.segment_starts(pop)
    K, B, _ = obj.coefficients(pop, P)
    acc = obj.batch.accumulate(P, K, B)
    for r in range(pop.shape[0]):
        t = PWLTable("gelu", fn.domain, dp, obj.scales, pop[r], K[r], B[r])
        for s, e in enumerate(obj.scales):
            q = obj.codes[obj.bounds[s]:obj.bounds[s + 1]]
            want = [ref.table_output(int(v), e, t) for v in q]
            assert ints(acc[r, obj.bounds[s]:obj.bounds[s + 1]]) == want


# --- the GQA-LUT reference's two evaluators -----------------------------------------------------

def _entry(per_scale, e):
    entry = per_scale[str(e)]
    pick = lambda *keys: next(entry[k] for k in keys if k in entry)  # noqa: E731
    return (pick("breakpoints", "split_points"), pick("slopes", "coeff"), pick("intercepts", "intercept", "bias"))


def reference_operator(per_scale, q: torch.Tensor, e: int) -> torch.Tensor:
    """The GQA-LUT torch operator's forward value on int8 codes ``q`` at scale ``2**-e``: bucketize
    on ``breakpoints / scale`` (``right=False``), intercepts divided by the scale, slopes times
    the input, times the scale (float32, as the operator computes)."""
    bp, k, b = (torch.tensor(v, dtype=torch.float32) for v in _entry(per_scale, e))
    scale = torch.tensor(2.0**-e, dtype=torch.float32)
    i = torch.bucketize(q, bp / scale)
    return (k[i] * q + (b / scale)[i]) * scale


def reference_trainer(per_scale, x: np.ndarray, e: int) -> np.ndarray:
    """The GQA-LUT trainer's evaluation of real inputs ``x``:
    ``index = min(np.digitize(x, split_points) - 1, N - 1)`` over the breakpoints bounded by its
    outer split points (here -inf and +inf: below every input, so no index wraps to -1), then
    ``slope * x + bias``."""
    bp, k, b = (np.asarray(v, dtype=np.float64) for v in _entry(per_scale, e))
    split_points = np.concatenate([[-np.inf], bp, [np.inf]])
    index = np.minimum(np.digitize(x, split_points) - 1, k.size - 1)
    return k[index] * x + b[index]


@needs_ref
@pytest.mark.parametrize("name", REF_FILES)
def test_gt_is_the_reference_operator_bit_for_bit(name):
    (fname, per_scale), = json.loads((REF / name).read_text()).items()
    table = gqa_lut.load(REF / name, segment_rule="gt")
    assert table.datapath.segment_rule == "gt"
    codes = table.datapath.codes()
    for e in table.scales:
        want = reference_operator(per_scale, torch.tensor(codes, dtype=torch.float32), e).numpy()
        got = table.evaluate(codes, e)
        assert np.array_equal(got.astype(np.float32), want), e
        assert np.array_equal(got, want.astype(np.float64)), e   # float32 holds intsim's values exactly


@needs_ref
@pytest.mark.parametrize("name", REF_FILES)
def test_ge_is_the_reference_trainer_bit_for_bit(name):
    (fname, per_scale), = json.loads((REF / name).read_text()).items()
    table = gqa_lut.load(REF / name)
    assert table.datapath.segment_rule == "ge"
    q = table.datapath.codes()
    for e in table.scales:
        assert np.array_equal(table.evaluate(q, e), reference_trainer(per_scale, q * 2.0**-e, e)), e


# measured on the published tables (docs/datapath.md): in-domain codes over the scale set where the
# two conventions give different outputs; the figures are the first three
DIFFERING_CODES = {"gelu_pwl_7.json": (40, 765), "exp_pwl_7.json": (34, 511), "exp_pwl_15.json": (54, 511),
                   "gelu_pwl_15.json": (66, 765), "hswish_pwl_7.json": (40, 765), "hswish_pwl_15.json": (69, 765),
                   "sqrt_reci_pwl_7.json": (22, 240), "sqrt_reci_pwl_15.json": (48, 240)}


@needs_ref
@pytest.mark.parametrize("name", REF_FILES)
def test_the_conventions_differ_on_the_documented_codes(name):
    ge, gt = gqa_lut.load(REF / name), gqa_lut.load(REF / name, segment_rule="gt")
    differ = total = 0
    for e in ge.scales:
        q = scale_points(ge.domain, e, ge.datapath)
        differ += int(np.count_nonzero(ge.evaluate(q, e) != gt.evaluate(q, e)))
        total += q.size
    assert (differ, total) == DIFFERING_CODES[name]
    if name == "exp_pwl_7.json":  # the example: x = 0 at scale 0
        assert gt.evaluate(np.array([0]), 0)[0] == 0.921875 and ge.evaluate(np.array([0]), 0)[0] == 1.0


# --- searches under either rule -------------------------------------------------------------------

@pytest.mark.parametrize("rule", ref.SEGMENT_RULES)
def test_objective_fitness_is_the_error_of_its_table_under_the_rule(rule):
    fn = get_function("gelu")
    dp = PWLDatapath(segment_rule=rule)
    obj = Objective(fn, 6, dp, [0, 1, 3, 6], refine=False)
    rng = np.random.default_rng(3)
    pop = np.sort(np.round(rng.uniform(-4, 4, (40, 5)) * 2) / 2, axis=1)  # on the e=1 grid: many ties
    fit = obj(pop)
    for bp, f in zip(pop, fit):
        t = obj.table(bp)
        assert t.datapath.segment_rule == rule
        assert f == pytest.approx(t.error().mean_mse, rel=1e-12, abs=0)


def test_objective_differs_between_rules_on_ties():
    fn = get_function("gelu")
    bp = np.array([[-2.0, -1.0, 0.0, 1.0, 2.0]])
    a = Objective(fn, 6, PWLDatapath(), [0, 1])
    b = Objective(fn, 6, PWLDatapath(segment_rule="gt"), [0, 1])
    assert np.array_equal(a.segment_starts(bp) + 1, b.segment_starts(bp))
    assert a(bp)[0] != b(bp)[0]


@pytest.mark.parametrize("func, entries, e", [("gelu", 4, 2), ("exp", 3, 3), ("hswish", 5, 1)])
def test_dp_optimum_under_gt_is_the_same_partition(func, entries, e):
    """At one scale the DP chooses a partition of the codes; under "gt" it is written one code
    lower and reaches the same optimum, and the table built from it has that error."""
    fn = get_function(func)
    ge, gt = PWLDatapath(), PWLDatapath(segment_rule="gt")
    bp_ge, mse_ge = dp_optimum(fn, entries, ge, e)
    bp_gt, mse_gt = dp_optimum(fn, entries, gt, e)
    assert mse_gt == mse_ge
    assert np.array_equal(bp_gt, bp_ge - 2.0**-e)
    assert np.array_equal(gt.segment_starts(bp_gt, e), ge.segment_starts(bp_ge, e))
    table = gqa_lut.search(fn, entries, "dp", datapath=gt, scales=[e])
    assert table.datapath.segment_rule == "gt"
    assert table.error().mse[0] == pytest.approx(mse_gt, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("rule", ref.SEGMENT_RULES)
def test_ga_search_under_the_rule(rule, tmp_path):
    t = gqa_lut.search("gelu", entries=6, method="ga", segment_rule=rule, scales=[0, 2, 4], population=12,
                       generations=4, seed=1, progress=False)
    assert t.datapath.segment_rule == rule
    # the GA is seeded with the per-scale optima and keeps the best: never worse than the dp method
    d = gqa_lut.search("gelu", entries=6, method="dp", segment_rule=rule, scales=[0, 2, 4])
    assert t.error().mean_mse <= d.error().mean_mse * (1 + 1e-12)
    assert t.provenance["error"]["mean_mse"] == t.error().mean_mse
    t.save(tmp_path / "t.json")
    assert gqa_lut.load(tmp_path / "t.json").datapath.segment_rule == rule


# --- files, importer, exporter, CLI ---------------------------------------------------------------

def test_old_table_files_read_as_ge(tmp_path):
    t = gqa_lut.search("gelu", entries=4, method="dp", scales=[0, 3])
    d = t.to_dict()
    assert "segment_rule" not in d["datapath"]   # the default is not written: such files are unchanged
    assert PWLTable.from_dict(d).datapath == t.datapath
    gt = PWLDatapath(segment_rule="gt")
    assert gt.to_dict()["segment_rule"] == "gt" and PWLDatapath.from_dict(gt.to_dict()) == gt
    d["datapath"]["segment_rule"] = "ge"        # written out, the default reads the same
    assert PWLTable.from_dict(d).datapath == t.datapath
    d["datapath"]["segment_rule"] = "lt"
    with pytest.raises(GQAError) as exc:
        PWLTable.from_dict(d)
    assert exc.value.field == "segment_rule"
    embedded = Path(__file__).resolve().parents[1] / "intsim" / "tables" / "gelu8.json"
    assert PWLTable.load(embedded).datapath.segment_rule == "ge"


def test_explicit_codes_follow_the_rule_range():
    gt = PWLDatapath(segment_rule="gt")
    t = PWLTable("gelu", (-4, 4), gt, [0], [0.0], [0, 1], [0, 0], explicit_codes={0: np.array([-129])})
    assert ints(t.segment_starts(0)) == [-128]
    with pytest.raises(GQAError) as exc:
        PWLTable("gelu", (-4, 4), gt, [0], [0.0], [0, 1], [0, 0], explicit_codes={0: np.array([128])})
    assert exc.value.field == "breakpoint_codes.0" and "[-129, 127]" in str(exc.value)


@needs_ref
def test_importer_says_which_rule_it_assumed():
    plain = load_gqa_json(REF / "gelu_pwl_7.json")
    assert plain.provenance["segment_rule"].startswith("ge (assumed by default")
    given_ = load_gqa_json(REF / "gelu_pwl_7.json", segment_rule="gt")
    assert given_.provenance["segment_rule"].startswith("gt (given)") and "bucketize" in given_.provenance["segment_rule"]
    via_dp = load_gqa_json(REF / "gelu_pwl_7.json", datapath=PWLDatapath(segment_rule="gt"))
    assert via_dp.datapath.segment_rule == "gt" and "given with the datapath" in via_dp.provenance["segment_rule"]
    with pytest.raises(GQAError) as exc:
        load_gqa_json(REF / "gelu_pwl_7.json", datapath=PWLDatapath(), segment_rule="gt")
    assert exc.value.field == "segment_rule"
    with pytest.raises(GQAError) as exc:
        gqa_lut.load(REF / "gelu_pwl_7.json", segment_rule="lt")
    assert exc.value.field == "segment_rule"


@needs_ref
@pytest.mark.parametrize("name", ["gelu_pwl_7.json", "exp_pwl_15.json", "sqrt_reci_pwl_7.json"])
@pytest.mark.parametrize("table_rule", ref.SEGMENT_RULES)
@pytest.mark.parametrize("file_rule", ref.SEGMENT_RULES)
def test_exporter_writes_for_an_evaluator_of_either_rule(tmp_path, name, table_rule, file_rule):
    table = gqa_lut.load(REF / name, segment_rule=table_rule)
    path = tmp_path / "out.json"
    save_gqa_json(table, path, segment_rule=file_rule)
    back = load_gqa_json(path, segment_rule=file_rule)
    (_, per_scale), = json.loads(path.read_text()).items()
    codes = table.datapath.codes()
    for e in table.scales:
        assert np.array_equal(back.segment_starts(e), table.segment_starts(e)), e
        assert np.array_equal(back.output_codes(codes, e), table.output_codes(codes, e)), e
        if file_rule == "gt":  # what the reference operator computes from the written file
            want = reference_operator(per_scale, torch.tensor(codes, dtype=torch.float32), e).numpy()
            assert np.array_equal(table.evaluate(codes, e), want.astype(np.float64)), e
    if file_rule == table_rule:  # the default: the table's own rule
        save_gqa_json(table, tmp_path / "own.json")
        assert (tmp_path / "own.json").read_bytes() == path.read_bytes()


@needs_ref
def test_gqa_sim_files_keep_their_rule(tmp_path):
    t = gqa_lut.load(REF / "exp_pwl_7.json", segment_rule="gt")
    t.save(tmp_path / "t.json")
    assert gqa_lut.load(tmp_path / "t.json").datapath.segment_rule == "gt"
    assert gqa_lut.load(tmp_path / "t.json", segment_rule="gt").datapath.segment_rule == "gt"
    with pytest.raises(GQAError) as exc:
        gqa_lut.load(tmp_path / "t.json", segment_rule="ge")
    assert exc.value.field == "segment_rule"


@needs_ref
def test_cli_segment_rule(tmp_path, capsys):
    assert cli(["eval", str(REF / "gelu_pwl_7.json"), "--json"]) == 0
    ge = json.loads(capsys.readouterr().out)
    assert cli(["eval", str(REF / "gelu_pwl_7.json"), "--json", "--segment-rule", "gt"]) == 0
    gt = json.loads(capsys.readouterr().out)
    assert f"{ge['mean_mse']:.2e}" == "9.97e-05" and gt["mean_mse"] > 5 * ge["mean_mse"]
    assert cli(["eval", str(REF / "gelu_pwl_7.json"), "--segment-rule", "gt"]) == 0
    out = capsys.readouterr().out
    assert "segment rule: gt (given)" in out and "segments q > P_j (gt)" in out
    out_file = tmp_path / "s.json"
    assert cli(["search", "exp", "-n", "4", "--method", "dp", "--scales", "0:2", "--segment-rule", "gt",
                "-q", "-o", str(out_file)]) == 0
    capsys.readouterr()
    assert gqa_lut.load(out_file).datapath.segment_rule == "gt"
    with pytest.raises(SystemExit):
        cli(["search", "exp", "-n", "4", "--segment-rule", "le"])


# --- the torch module -------------------------------------------------------------------------------

@needs_ref
@pytest.mark.parametrize("rule", ref.SEGMENT_RULES)
def test_torch_module_under_the_rule(rule):
    table = gqa_lut.load(REF / "exp_pwl_7.json", segment_rule=rule)
    codes = table.datapath.codes()
    for e in table.scales:
        unit = PWLActivation(table, exp=e)
        q = torch.tensor(codes)
        assert torch.equal(unit._segment(q, e), torch.tensor(np.sum(codes[:, None] >= table.segment_starts(e), axis=1)))
        assert np.array_equal(unit.forward_codes(q, e).numpy(), table.output_codes(codes, e))
        x = torch.tensor(codes * 2.0**-e, dtype=torch.float32)
        assert np.array_equal(unit(x).numpy().astype(np.float64), table.evaluate(codes, e))
        if rule == "gt":   # and so the reference operator's value
            (_, per_scale), = json.loads((REF / "exp_pwl_7.json").read_text()).items()
            want = reference_operator(per_scale, q.to(torch.float32), e)
            assert torch.equal(unit(x), want)


# --- mirrors of shared primitives -------------------------------------------------------------------

def _tie_heavy(shift: int) -> list[int]:
    """Values at, next to and between exact ties of a right shift, both signs, and the int64 ends."""
    if shift <= 0:
        return [-(2**40), -3, -1, 0, 1, 5, 2**40]
    d, h = 1 << shift, 1 << (shift - 1)
    out = {-(2**62) // d * d, (2**62 - 1) // d * d}
    for m in (-7, -6, -3, -2, -1, 0, 1, 2, 3, 6, 7, 2**20, -(2**20)):
        for r in (0, 1, h - 1, h, h + 1, d - 1):
            out.add(m * d + r)
    return sorted(v for v in out if -(2**62) <= v < 2**62)


@pytest.mark.parametrize("shift", [-3, 0, 1, 2, 3, 7, 16, 31, 40, 61, 62])
@pytest.mark.parametrize("mode", ref.MODES)
def test_round_shift_mirrors_match_the_primitive_on_ties(shift, mode):
    x = np.array(_tie_heavy(shift), dtype=np.int64)
    want = round_shift(x, shift, mode)
    assert ints(want) == [ref.round_shift(int(v), shift, mode) for v in x]
    assert [int(round_shift1(np.int64(v), shift, ROUNDING_IDS[mode])) for v in x] == ints(want)
    assert torch_round_shift(torch.tensor(x), shift, mode).tolist() == ints(want)


@pytest.mark.parametrize("in_bits", [4, 8, 12])
def test_input_exponent_is_one_rule_for_intsim_and_torch(in_bits):
    dp = PWLDatapath(in_bits=in_bits)
    table = PWLTable("gelu", (-4, 4), dp, range(0, 4), [0.0], [0, 1], [0, 0])
    top = dp.code_max
    values = [0.0, 1e-300, 1e300, float("nan")] + [top * 2.0**-e * f for e in range(-2, 6)
                                                   for f in (1 - 2**-40, 1.0, 1 + 2**-40)]
    for v in values:
        e = dp.input_exponent(v, table.scales)
        assert e == _exponent_from_absmax(v, table) == PWLGelu(v, table).e
        fits = [s for s in table.scales if Fraction(v) * 2**s <= top] if v == v else []
        assert e == (max(fits) if fits else min(table.scales))


def test_hw_models_uses_intsims_accumulator_width():
    import hw_models.plan as plan
    from intsim import datapath

    assert plan.acc_width is datapath.acc_width


def test_search_passes_the_rule_with_datapath_fields():
    t = gqa_lut.search("gelu", entries=3, method="uniform", segment_rule="gt", scales=[0])
    assert t.datapath == PWLDatapath(segment_rule="gt")
    with pytest.raises(GQAError):
        table_from_gqa_dict({"gelu": {"0": {"breakpoints": [0.0], "slopes": [0, 0], "intercepts": [0, 0]}}},
                            segment_rule="x")


@needs_ref
def test_cli_rtl_and_hw_read_gqa_lut_files_with_the_rule(tmp_path, capsys):
    v = tmp_path / "u.v"
    assert cli(["rtl", str(REF / "exp_pwl_7.json"), "--segment-rule", "gt", "--scale", "6", "-o", str(v)]) == 0
    assert "(xc > P0)" in v.read_text() and "segment rule gt" in v.read_text()
    assert cli(["rtl", str(REF / "exp_pwl_7.json"), "--scale", "6", "-o", str(v)]) == 0
    assert "(xc >= P0)" in v.read_text()
    capsys.readouterr()
    # a > and a >= comparator cost the same: the unit is priced alike under both rules
    assert cli(["hw", str(REF / "exp_pwl_7.json"), "--segment-rule", "gt", "--json"]) == 0
    gt = json.loads(capsys.readouterr().out)
    assert cli(["hw", str(REF / "exp_pwl_7.json"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == gt
