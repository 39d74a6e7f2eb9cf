"""PWLTable's file format: round trip, atomic writes, and a GQAError naming the field for every
bad input."""

from __future__ import annotations

import json
import os
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import intsim.fileio
import reference_int as ref
from intsim import GQAError, PWLDatapath, PWLTable

FILE_FORMAT = "gqa-sim/pwl-table"


def make_table(explicit: bool = False, **dp_kw) -> PWLTable:
    dp = PWLDatapath(**dp_kw)
    bps = [-1.5, -0.25, 0.0, 0.5, 2.0]
    slopes = [0, -6, 20, 40, 58, 64]
    icpts = [-2, -18, 0, 3, -6, 1]
    explicit_codes = None
    if explicit:
        explicit_codes = {e: np.array(ref.breakpoint_codes(bps, e, dp.in_bits)) + np.array([0, 0, 1, 1, 0])
                          for e in range(7)}
    return PWLTable("gelu", (-4.0, 4.0), dp, range(7), bps, slopes, icpts, explicit_codes=explicit_codes,
                    provenance={"search": "unit-test", "seed": 3})


def listdir(p) -> list[str]:
    return sorted(os.listdir(p))


# --- round trip -----------------------------------------------------------------------------

@pytest.mark.parametrize("explicit", [False, True])
@pytest.mark.parametrize("dp_kw", [{}, {"out_bits": 8, "out_frac": 5, "out_rounding": "half_away"},
                                   {"in_bits": 10, "slope_bits": 12, "slope_frac": 9, "icpt_frac": 3}])
def test_save_load_round_trip(tmp_path, explicit, dp_kw):
    t = make_table(explicit, **dp_kw)
    p1, p2 = tmp_path / "a.json", tmp_path / "b.json"
    assert t.save(p1) == p1
    loaded = PWLTable.load(p1)
    assert loaded.to_dict() == t.to_dict()
    assert loaded.datapath == t.datapath
    assert loaded.scales == t.scales and loaded.domain == t.domain
    assert (loaded.explicit_codes is not None) == explicit
    for e in t.scales:
        assert np.array_equal(loaded.breakpoint_codes(e), t.breakpoint_codes(e))
        assert np.array_equal(loaded.output_codes(t.datapath.codes(), e), t.output_codes(t.datapath.codes(), e))
    loaded.save(p2)
    assert p1.read_bytes() == p2.read_bytes()
    t.save(p2)  # saving again over an existing file gives the same bytes
    assert p1.read_bytes() == p2.read_bytes()
    assert listdir(tmp_path) == ["a.json", "b.json"]
    d = json.loads(p1.read_text())
    assert d["format"] == FILE_FORMAT and d["version"] == 1 and d["entries"] == 6
    assert d["slopes"]["int"] == [0, -6, 20, 40, 58, 64]


@st.composite
def random_tables(draw):
    kw = draw(ref.datapath_fields())
    bps, slopes, icpts = draw(ref.table_parts(kw))
    scales = sorted(set(draw(st.lists(st.integers(ref.SCALE_MIN, ref.SCALE_MAX), min_size=1, max_size=4))))
    explicit = None
    if draw(st.booleans()):
        explicit = {e: draw(ref.comparator_codes(kw["in_bits"], len(bps))) for e in scales}
    lo = -draw(st.floats(0.0, 1e3))
    hi = draw(st.floats(0.01, 1e3))
    return PWLTable(draw(st.sampled_from(["gelu", "exp", "custom"])), (lo, hi), PWLDatapath(**kw), scales,
                    [float(p) for p in bps], slopes, icpts, explicit_codes=explicit)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(random_tables())
def test_random_round_trip(tmp_path, t):
    p = tmp_path / "t.json"
    t.save(p)
    first = p.read_bytes()
    loaded = PWLTable.load(p)
    assert loaded.to_dict() == t.to_dict()
    loaded.save(p)
    assert p.read_bytes() == first
    for e in t.scales:
        codes = t.datapath.codes()
        assert np.array_equal(loaded.accumulate(codes, e), t.accumulate(codes, e))


# --- atomic write ---------------------------------------------------------------------------

ORIGINAL = b'{"original": true}\n'


@pytest.fixture
def existing(tmp_path):
    p = tmp_path / "table.json"
    p.write_bytes(ORIGINAL)
    return p


def test_failed_rename_leaves_old_file_and_no_temp(existing, monkeypatch):
    def boom(src, dst):
        assert os.path.exists(src)  # the new content was written beside the target
        raise OSError("disk on fire")
    monkeypatch.setattr(intsim.fileio.os, "replace", boom)
    with pytest.raises(GQAError, match="cannot write"):   # an OS failure of a write names its field
        make_table().save(existing)
    assert existing.read_bytes() == ORIGINAL
    assert listdir(existing.parent) == ["table.json"]


def test_failed_serialization_leaves_old_file(existing, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("serializer crashed")
    monkeypatch.setattr(intsim.fileio.json, "dumps", boom)
    with pytest.raises(RuntimeError):
        make_table().save(existing)
    assert existing.read_bytes() == ORIGINAL
    assert listdir(existing.parent) == ["table.json"]


@pytest.mark.parametrize("exc", [OSError("no space left"), KeyboardInterrupt()])
def test_failure_midway_through_writing_leaves_old_file(existing, monkeypatch, exc):
    calls = []

    def boom(fd):
        calls.append(fd)
        raise exc
    monkeypatch.setattr(intsim.fileio.os, "fsync", boom)
    with pytest.raises(GQAError if isinstance(exc, OSError) else type(exc)):
        make_table().save(existing)
    assert calls, "fsync was not reached"
    assert existing.read_bytes() == ORIGINAL
    assert listdir(existing.parent) == ["table.json"]


def test_failed_first_write_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(intsim.fileio.os, "replace", lambda s, d: (_ for _ in ()).throw(OSError("x")))
    with pytest.raises(GQAError, match="cannot write"):
        make_table().save(tmp_path / "new.json")
    assert listdir(tmp_path) == []


def test_successful_write_replaces_and_cleans_up(existing):
    make_table().save(existing)
    assert json.loads(existing.read_text())["format"] == FILE_FORMAT
    assert listdir(existing.parent) == ["table.json"]


# --- bad input ------------------------------------------------------------------------------

def good_dict() -> dict:
    return make_table().to_dict()


def set_codes(d, name, codes, real=True):
    d[name]["int"] = codes
    if real:
        res = 2.0**-d["datapath"]["slope_frac" if name == "slopes" else "icpt_frac"]
        d[name]["real"] = [c * res for c in codes]


def mutate(fn):
    d = good_dict()
    fn(d)
    return d


def _drop(key):
    return lambda d: d.pop(key)


def _set(path, value):
    def f(d):
        obj = d
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value
    return f


def _few_entries(d):
    d["breakpoints"] = []
    set_codes(d, "slopes", [5])
    set_codes(d, "intercepts", [5])
    d.pop("breakpoint_codes")


def _too_many_entries(d):
    d["datapath"]["in_bits"] = 2
    d["domain"] = [-1.0, 1.0]
    d["scales"] = [0]
    d["breakpoints"] = [-1.0, -0.5, 0.0, 0.5]
    set_codes(d, "slopes", [1, 2, 3, 4, 5])
    set_codes(d, "intercepts", [1, 2, 3, 4, 5])
    d.pop("breakpoint_codes")


def _no_code_in_domain(d):
    d["domain"] = [100.0, 200.0]
    d["scales"] = [6]
    d.pop("breakpoint_codes")


def _shorten_slopes(d):
    set_codes(d, "slopes", d["slopes"]["int"][:-1])


def _shorten_all(d):
    # consistent arrays of 5 entries while the file says 6
    d["breakpoints"] = d["breakpoints"][:-1]
    set_codes(d, "slopes", d["slopes"]["int"][:-1])
    set_codes(d, "intercepts", d["intercepts"]["int"][:-1])
    d.pop("breakpoint_codes")


def _explicit(fn):
    def f(d):
        d["breakpoint_codes_explicit"] = True
        fn(d)
    return f


BAD = {
    # name: (mutation, accepted fields)
    "wrong format tag": (_set(["format"], "gqa-lut/json"), {"format"}),
    "no format tag": (_drop("format"), {"format"}),
    "unsupported version": (_set(["version"], 2), {"version"}),
    "version as string": (_set(["version"], "1"), {"version"}),
    "missing function": (_drop("function"), {"function"}),
    "missing domain": (_drop("domain"), {"domain"}),
    "missing scales": (_drop("scales"), {"scales"}),
    "missing datapath": (_drop("datapath"), {"datapath"}),
    "missing breakpoints": (_drop("breakpoints"), {"breakpoints"}),
    "missing slopes": (_drop("slopes"), {"slopes", "slopes.int"}),
    "missing intercepts": (_drop("intercepts"), {"intercepts", "intercepts.int"}),
    "slopes without int": (lambda d: d["slopes"].pop("int"), {"slopes.int"}),
    "slopes as a bare list": (_set(["slopes"], [0, 1, 2, 3, 4, 5]), {"slopes", "slopes.int"}),
    "unsorted breakpoints": (_set(["breakpoints"], [-1.5, 0.0, -0.25, 0.5, 2.0]), {"breakpoints"}),
    "NaN breakpoint": (_set(["breakpoints"], [-1.5, float("nan"), 0.0, 0.5, 2.0]), {"breakpoints"}),
    "infinite breakpoint": (_set(["breakpoints"], [-1.5, -0.25, 0.0, 0.5, float("inf")]), {"breakpoints"}),
    "non-numeric breakpoint": (_set(["breakpoints"], [-1.5, "a", 0.0, 0.5, 2.0]), {"breakpoints"}),
    "too many breakpoints": (_set(["breakpoints"], [-1.5, -0.25, 0.0, 0.5, 2.0, 3.0]), {"breakpoints"}),
    "too few breakpoints": (_set(["breakpoints"], [-1.5, -0.25, 0.0, 0.5]), {"breakpoints"}),
    "nested breakpoints": (_set(["breakpoints"], [[-1.5, -0.25, 0.0, 0.5, 2.0]]), {"breakpoints"}),
    "short intercepts": (lambda d: set_codes(d, "intercepts", [1, 2, 3, 4, 5]), {"intercepts"}),
    "long intercepts": (lambda d: set_codes(d, "intercepts", [1, 2, 3, 4, 5, 6, 7]), {"intercepts"}),
    "short slopes": (_shorten_slopes, {"slopes", "slopes.int", "entries"}),
    "entries disagree with the arrays": (_shorten_all, {"entries", "slopes", "slopes.int"}),
    "fractional slope code": (lambda d: set_codes(d, "slopes", [0, -6, 20.5, 40, 58, 64], real=False),
                              {"slopes", "slopes.int"}),
    "string intercept code": (lambda d: set_codes(d, "intercepts", [0, "1", 0, 0, 0, 0], real=False),
                              {"intercepts", "intercepts.int"}),
    "null slope code": (lambda d: set_codes(d, "slopes", [0, None, 0, 0, 0, 0], real=False),
                        {"slopes", "slopes.int"}),
    "boolean slope codes": (lambda d: set_codes(d, "slopes", [True, False] * 3, real=False),
                           {"slopes", "slopes.int"}),
    "huge slope code": (lambda d: set_codes(d, "slopes", [2**70, 1, 0, 0, 0, 0], real=False),
                        {"slopes", "slopes.int", "slopes[0]"}),
    "slope code out of s8": (lambda d: set_codes(d, "slopes", [0, 128, 0, 0, 0, 0]), {"slopes[1]"}),
    "intercept code out of s8": (lambda d: set_codes(d, "intercepts", [0, 0, 0, 0, 0, -129]), {"intercepts[5]"}),
    "slopes.real disagrees": (_set(["slopes", "real"], [0.0, -6 / 64, 20 / 64, 40 / 64, 58 / 64, 1.5]),
                              {"slopes.real"}),
    "intercepts.real disagrees": (_set(["intercepts", "real"], [0.0] * 6), {"intercepts.real"}),
    "slopes.real not numbers": (_set(["slopes", "real"], "abc"), {"slopes.real"}),
    "entries < 2": (_few_entries, {"entries", "slopes", "slopes.int"}),
    "entries > 2**in_bits": (_too_many_entries, {"entries"}),
    "scale with no code in the domain": (_no_code_in_domain, {"scales"}),
    "empty scales": (_set(["scales"], []), {"scales"}),
    "non-integer scale": (_set(["scales"], [0, 1.5]), {"scales"}),
    "scale out of range": (_set(["scales"], [0, 99]), {"scales"}),
    "reversed domain": (_set(["domain"], [4.0, -4.0]), {"domain"}),
    "domain not a pair": (_set(["domain"], "ab"), {"domain"}),
    "unknown datapath key": (_set(["datapath", "bias_bits"], 8), {"datapath.bias_bits"}),
    "datapath not an object": (_set(["datapath"], [8, 8]), {"datapath"}),
    "in_bits too small": (_set(["datapath", "in_bits"], 1), {"in_bits", "datapath.in_bits"}),
    "in_bits not an integer": (_set(["datapath", "in_bits"], "8"), {"in_bits", "datapath.in_bits"}),
    "unknown out_rounding": (_set(["datapath", "out_rounding"], "banker"), {"out_rounding", "datapath.out_rounding"}),
    "out_bits without out_frac": (_set(["datapath", "out_bits"], 8), {"out_bits", "out_frac", "datapath.out_bits"}),
    "stored codes disagree with breakpoints": (_set(["breakpoint_codes", "3"], [0, 0, 0, 0, 0]),
                                               {"breakpoint_codes.3"}),
    "breakpoint_codes not an object": (_set(["breakpoint_codes"], [1, 2]), {"breakpoint_codes"}),
    "explicit codes unsorted": (_explicit(_set(["breakpoint_codes", "2"], [-6, -1, 0, 3, 2])),
                                {"breakpoint_codes.2"}),
    "explicit codes out of range": (_explicit(_set(["breakpoint_codes", "0"], [-2, 0, 0, 1, 129])),
                                    {"breakpoint_codes.0"}),
    "explicit codes missing a scale": (_explicit(lambda d: d["breakpoint_codes"].pop("4")), {"breakpoint_codes.4"}),
    "explicit codes wrong length": (_explicit(_set(["breakpoint_codes", "1"], [-3, 0, 1])), {"breakpoint_codes.1"}),
    "explicit codes non-integer scale": (_explicit(_set(["breakpoint_codes", "x"], [0, 0, 0, 0, 0])),
                                         {"breakpoint_codes"}),
    "explicit codes not an object": (_explicit(_set(["breakpoint_codes"], None)), {"breakpoint_codes"}),
    "provenance not an object": (_set(["provenance"], [1, 2]), {"provenance"}),
}


def assert_names(excinfo, fields) -> None:
    exc = excinfo.value
    assert exc.field in fields, f"field {exc.field!r} not in {sorted(fields)}: {exc}"
    assert str(exc).startswith(exc.field + ":")


def test_good_dict_is_good(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps(good_dict()))
    assert PWLTable.load(p).to_dict() == good_dict()


@pytest.mark.parametrize("name", list(BAD))
def test_bad_table_file(tmp_path, name):
    fn, fields = BAD[name]
    d = mutate(fn)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))  # NaN/Infinity written as JSON's common extension
    with pytest.raises(GQAError) as ei:
        PWLTable.load(p)
    assert_names(ei, fields)
    # the same dict without a file
    with pytest.raises(GQAError) as ei:
        PWLTable.from_dict(json.loads(p.read_text()))
    assert_names(ei, fields)


@pytest.mark.parametrize("text", ['{"format": "gqa-sim/pwl-table", ', "not json", "", "{'single': 1}"])
def test_malformed_json(tmp_path, text):
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(GQAError) as ei:
        PWLTable.load(p)
    assert_names(ei, {"table"})
    assert "JSON" in str(ei.value)


def test_not_utf8(tmp_path):
    p = tmp_path / "bad.json"
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(GQAError) as ei:
        PWLTable.load(p)
    assert_names(ei, {"table"})


@pytest.mark.parametrize("payload", [[1, 2], "a string", 3, None])
def test_top_level_not_an_object(tmp_path, payload):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(payload))
    with pytest.raises(GQAError) as ei:
        PWLTable.load(p)
    assert_names(ei, {"table", str(p)})


def test_missing_file(tmp_path):
    with pytest.raises(GQAError) as ei:
        PWLTable.load(tmp_path / "nope.json")
    assert_names(ei, {"table"})
    with pytest.raises(GQAError) as ei:
        PWLTable.load(tmp_path)  # a directory
    assert_names(ei, {"table"})


def test_unwritable_output_path(tmp_path):
    t = make_table()
    with pytest.raises(GQAError) as ei:
        t.save(tmp_path / "no" / "such" / "dir" / "t.json")
    assert_names(ei, {"output"})
    assert not (tmp_path / "no").exists()
    with pytest.raises(GQAError) as ei:
        t.save(tmp_path)  # a directory
    assert_names(ei, {"output"})
    assert listdir(tmp_path) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_directory(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        with pytest.raises(GQAError) as ei:
            make_table().save(d / "t.json")
        assert_names(ei, {"output"})
    finally:
        d.chmod(0o700)


@pytest.mark.parametrize("codes", [[128], [-129], [0, 5, 1000], [-(2**40)]])
@pytest.mark.parametrize("method", ["evaluate", "accumulate", "output_codes"])
def test_input_codes_out_of_range(codes, method):
    t = make_table()
    with pytest.raises(GQAError) as ei:
        getattr(t, method)(np.array(codes), 0)
    assert_names(ei, {"codes"})


@pytest.mark.parametrize("codes", [np.array([0.5, 1.0]), np.array([1.0]), np.array(["a"])])
def test_input_codes_not_integers(codes):
    with pytest.raises(GQAError) as ei:
        make_table().evaluate(codes, 0)
    assert_names(ei, {"codes"})


def test_constructor_bad_input_names_fields():
    dp = PWLDatapath()
    cases = [
        (dict(breakpoints=[0.0], slopes=[1], intercepts=[1]), {"slopes", "entries"}),
        (dict(breakpoints=[0.0], slopes=[1, 2], intercepts=[1, 2, 3]), {"intercepts"}),
        (dict(breakpoints=[0.0, 1.0], slopes=[1, 2], intercepts=[1, 2]), {"breakpoints"}),
        (dict(breakpoints=[0.0], slopes=[1, 300], intercepts=[1, 2]), {"slopes[1]"}),
        (dict(breakpoints=[0.0], slopes=[1, 2], intercepts=[-200, 2]), {"intercepts[0]"}),
        (dict(breakpoints=[float("nan")], slopes=[1, 2], intercepts=[1, 2]), {"breakpoints"}),
    ]
    for kw, fields in cases:
        with pytest.raises(GQAError) as ei:
            PWLTable("gelu", (-4, 4), dp, [0], **kw)
        assert_names(ei, fields)
    with pytest.raises(GQAError) as ei:
        PWLTable("gelu", (-4, 4), {"in_bits": 8}, [0], [0.0], [1, 2], [1, 2])
    assert_names(ei, {"datapath"})
    with pytest.raises(GQAError) as ei:
        PWLTable("gelu", (100, 200), dp, [6], [150.0], [1, 2], [1, 2])
    assert_names(ei, {"scales"})
    # the exact bound: 2**in_bits entries is fine, one more is not
    dp2 = PWLDatapath(in_bits=2)
    PWLTable("gelu", (-2, 1.5), dp2, [0], [-1.0, 0.0, 1.0], [1, 2, 3, 4], [1, 2, 3, 4])
    with pytest.raises(GQAError) as ei:
        PWLTable("gelu", (-2, 1.5), dp2, [0], [-1.0, -0.5, 0.0, 1.0], [1, 2, 3, 4, 5], [1, 2, 3, 4, 5])
    assert_names(ei, {"entries"})


def test_unknown_function_name_is_reported_on_use():
    d = good_dict()
    d["function"] = "no_such_function"
    t = PWLTable.from_dict(d)  # the file itself is fine; the name is checked where it is needed
    with pytest.raises(GQAError) as ei:
        t.error()
    assert_names(ei, {"function"})


def test_saved_reals_are_exact_dyadics(tmp_path):
    t = make_table(slope_frac=7, icpt_frac=3)
    d = t.to_dict()
    assert [Fraction(v) for v in d["slopes"]["real"]] == [Fraction(k, 2**7) for k in d["slopes"]["int"]]
    assert [Fraction(v) for v in d["intercepts"]["real"]] == [Fraction(b, 2**3) for b in d["intercepts"]["int"]]
    for e in t.scales:
        assert d["breakpoint_codes"][str(e)] == ref.breakpoint_codes(t.breakpoints, e, 8)


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    import os
    import stat

    from intsim.fileio import atomic_write_text

    old = os.umask(0o022)
    try:
        p = atomic_write_text(tmp_path / "x.txt", "hi")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644
