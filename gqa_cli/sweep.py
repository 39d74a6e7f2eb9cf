"""``gqa sweep``: design-space sweeps of PWL units on a process pool or a Dask cluster.

    gqa sweep examples/sweep_small.toml -o results.csv               # local process pool
    gqa sweep spec.toml -o results.csv --workers 8
    gqa sweep spec.toml -o results.csv --scheduler tcp://10.0.0.5:8786   # a dask.distributed cluster

A spec (TOML) is a grid: functions x entries x formats x search methods, optionally x MiniLM
datapath configs. Every point searches one table (:func:`gqa_lut.search`) and records its error
per scale and mean (:meth:`intsim.PWLTable.error`), the area and power of its integer unit and
of the FP32 and INT32 counterparts (:func:`hw_models.compare`), and optionally the integer
MiniLM's cosine and nearest-neighbour agreement to FP32 with the table in its slot::

    functions = ["gelu", "exp", "rsqrt", "reciprocal"]
    entries = [4, 8, 16]
    methods = ["dp", "uniform"]          # ga, dp, uniform, nnlut, pwlf
    scales = {default = "0:6", rsqrt = "0:5"}   # or one "A:B" / [list] for every function
    seed = 0
    domains = {reciprocal = [0.5, 4.0]}  # optional per-function domain overrides

    [formats.s8]                         # named datapath formats (PWLDatapath fields)
    [formats.s12]
    slope_bits = 12
    slope_frac = 8
    icpt_bits = 12
    icpt_frac = 8

    [ga]                                 # budget of the ga method
    population = 16
    generations = 40

    [hw]                                 # gqa hw's options
    node = 28
    freq_mhz = 500.0

    [minilm]                             # optional: integer MiniLM accuracy per point
    sentences = 32
    calib_sentences = 32
    [minilm.configs.pwl]                 # the MiniLM datapath-config axis (SimConfig keys)
    [minilm.configs.ibert]
    gelu = "ibert"

Results (CSV): two comment lines (``# gqa-sim sweep v1 spec_sha256=...`` and the normalised spec
as JSON), the column header, then one row per finished point, appended as it finishes (one
``write`` of a whole line, flushed and fsynced, under an exclusive lock on the file). Every row
ends with a CRC-32 of the rest of its line, so a line torn by a crash is recognised and ignored.
A re-run with the same spec reads the finished points' keys and computes only the others; a
results file of a different spec is refused; an existing file is never truncated or rewritten.
Rows appear in completion order: :func:`load_results` returns them in grid order (column
``index``), the same for every executor and every interruption history.

Python::

    from gqa_cli.sweep import run_sweep, load_results, pareto_front
    report = run_sweep("examples/sweep_small.toml", "results.csv", workers=2)
    rows = load_results("results.csv")
    front = pareto_front([r for r in rows if r["function"] == "gelu"], "int_area_um2", "mean_mse")

``run_sweep`` takes any :class:`concurrent.futures.Executor` (or a ``distributed.Client``);
without one it makes a process pool (``workers``; 0: in this process) or, with
``scheduler=ADDRESS``, connects to a Dask scheduler.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import csv
import hashlib
import io
import itertools
import json
import math
import os
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from intsim import GQAError

SWEEP_VERSION = 1
MAGIC = "# gqa-sim sweep v"
DEFAULT_SCALES = "0:6"

TOP_KEYS = ("functions", "entries", "methods", "formats", "scales", "domains", "seed", "ga", "hw", "minilm")
FORMAT_KEYS = ("in_bits", "slope_bits", "slope_frac", "icpt_bits", "icpt_frac", "out_bits", "out_frac",
               "out_rounding")
GA_DEFAULTS = {"population": 50, "generations": 500, "dp_seed": True}
HW_DEFAULTS = {"node": 28, "freq_mhz": 500.0, "activity": 1.0, "calibration": "paper", "programmable": True,
               "pipeline": 0, "io_registers": True}
MINILM_DEFAULTS = {"sentences": 32, "calib_sentences": 32, "batch": 32, "model": None, "plug_table": True}
MINILM_SLOTS = {"gelu": "gelu_table", "exp": "exp_table", "reciprocal": "recip_table", "rsqrt": "rsqrt_table"}

HW_COLUMNS = ("int_area_um2", "int_power_mw", "int_energy_pj", "fp32_area_um2", "fp32_power_mw", "fp32_energy_pj",
              "int32_area_um2", "int32_power_mw", "area_saving_pct", "power_saving_pct")
MINILM_COLUMNS = ("mean_cosine", "min_cosine", "nn_agreement", "minilm_note")
INT_COLUMNS = {"index", "entries", "in_bits", "slope_bits", "slope_frac", "icpt_bits", "icpt_frac", "clipped"}
TEXT_COLUMNS = {"key", "function", "format", "method", "minilm_config", "scales", "error", "table", "minilm_note"}


# --- the spec ---------------------------------------------------------------------------------------

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_keys(d: dict, known, where: str) -> None:
    if not isinstance(d, dict):
        raise GQAError(where, f"must be a table (mapping), got {type(d).__name__}")
    unknown = sorted(set(d) - set(known))
    if unknown:
        name = f"{where}.{unknown[0]}" if where != "spec" else unknown[0]
        raise GQAError(name, "unknown key", f"known keys{' of ' + where if where != 'spec' else ''}: "
                       f"{', '.join(sorted(known))}")


def _axis(spec: dict, key: str) -> list:
    if key not in spec:
        raise GQAError(key, "is missing from the spec", f"give a list, e.g. {key} = [...]")
    v = spec[key]
    if not isinstance(v, list):
        raise GQAError(key, f"must be a list, got {type(v).__name__}", f"write {key} = [{v!r}]")
    if not v:
        raise GQAError(key, "is an empty axis", "give at least one value; an empty axis makes an empty grid")
    if len(set(json.dumps(x, sort_keys=True) for x in v)) != len(v):
        raise GQAError(key, "repeats a value", "each value of an axis once")
    return v


def _parse_scales(value, where: str) -> list[int]:
    from intsim.table import parse_scales

    if isinstance(value, str):
        return parse_scales(value) if value.strip() else []
    if _is_int(value):
        return [value]
    if isinstance(value, list) and all(_is_int(e) for e in value):
        return list(value)
    raise GQAError(where, f"{value!r} is not a scale set", 'write "A:B" (inclusive), [A, B, C] or one integer')


def _check_number(d: dict, key: str, where: str, kind=float, lo=None):
    v = d[key]
    ok = _is_int(v) if kind is int else (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
    if not ok or (lo is not None and v < lo):
        raise GQAError(f"{where}.{key}", f"must be {'an integer' if kind is int else 'a number'}"
                       + (f" >= {lo}" if lo is not None else "") + f", got {v!r}")


def normalize_spec(raw: dict, source: str = "spec") -> dict:
    """Validate a raw spec (the parsed TOML) and return its canonical form (every default filled in).

    The canonical form is what the results file's spec hash covers: two specs that differ only
    in spelling (an omitted default, a reordered table) have the same hash.
    """
    import gqa_lut
    from intsim import PWLDatapath, get_function
    from intsim.table import check_scales

    if not isinstance(raw, dict):
        raise GQAError(source, f"must be a mapping of spec keys, got {type(raw).__name__}")
    raw = dict(raw)
    if "version" in raw and raw.pop("version") != SWEEP_VERSION:   # a canonical spec normalises to itself
        raise GQAError("version", f"this gqa-sim reads sweep spec version {SWEEP_VERSION}")
    _check_keys(raw, TOP_KEYS, "spec")
    functions = _axis(raw, "functions")
    entries = _axis(raw, "entries")
    methods = _axis(raw, "methods")
    for f in functions:
        if not isinstance(f, str):
            raise GQAError("functions", f"{f!r} is not a function name", f"use names from {', '.join(gqa_lut.FUNCTIONS)}")
    for n in entries:
        if not _is_int(n) or n < 2:
            raise GQAError("entries", f"{n!r} is not a table size", "integers >= 2")
    for m in methods:
        if m not in gqa_lut.METHODS:
            raise GQAError("methods", f"unknown method {m!r}", f"use {', '.join(gqa_lut.METHODS)}")

    domains = raw.get("domains", {})
    _check_keys(domains, functions, "domains")
    norm_domains = {}
    for f in functions:
        try:
            fn = get_function(f, tuple(domains[f]) if f in domains else None)
        except GQAError as exc:
            raise GQAError("functions" if f not in domains else f"domains.{f}", str(exc).split(": ", 1)[-1]) \
                from None
        except TypeError:
            raise GQAError(f"domains.{f}", f"{domains[f]!r} is not [lo, hi]") from None
        norm_domains[f] = [float(fn.domain[0]), float(fn.domain[1])]

    formats = raw.get("formats", {"default": {}})
    if not isinstance(formats, dict):
        raise GQAError("formats", f"must be a table of named formats, got {type(formats).__name__}",
                       "write [formats.NAME] sections with in_bits, slope_bits, ...")
    if not formats:
        raise GQAError("formats", "is an empty axis", "give at least one [formats.NAME] section")
    norm_formats = {}
    for name, fmt in formats.items():
        _check_keys(fmt, FORMAT_KEYS, f"formats.{name}")
        try:
            norm_formats[name] = PWLDatapath(**fmt).to_dict()
        except GQAError as exc:
            raise GQAError(f"formats.{name}.{exc.field}", str(exc).split(": ", 1)[-1]) from None
        except TypeError as exc:
            raise GQAError(f"formats.{name}", str(exc)) from None

    scales_raw = raw.get("scales", DEFAULT_SCALES)
    if isinstance(scales_raw, dict):
        _check_keys(scales_raw, ["default", *functions], "scales")
        per_fn = {f: scales_raw.get(f, scales_raw.get("default", DEFAULT_SCALES)) for f in functions}
    else:
        per_fn = {f: scales_raw for f in functions}
    norm_scales = {}
    for f in functions:
        where = f"scales.{f}" if isinstance(scales_raw, dict) and f in scales_raw else "scales"
        s = _parse_scales(per_fn[f], where)
        if not s:
            raise GQAError(where, "is an empty scale set", "give at least one scale exponent, e.g. 0:6")
        for name, d in norm_formats.items():   # every (function, format) pair must have codes in the domain
            try:
                s = list(check_scales(s, PWLDatapath(**d), tuple(norm_domains[f])))
            except GQAError as exc:
                raise GQAError(where, f"{f} with format {name}: {str(exc).split(': ', 1)[-1]}") from None
        norm_scales[f] = s

    seed = raw.get("seed", 0)
    if not _is_int(seed) or seed < 0:
        raise GQAError("seed", f"must be a non-negative integer, got {seed!r}")

    ga = raw.get("ga", {})
    _check_keys(ga, GA_DEFAULTS, "ga")
    ga = {**GA_DEFAULTS, **ga}
    for k in ("population", "generations"):
        _check_number(ga, k, "ga", int, 1)
    if not isinstance(ga["dp_seed"], bool):
        raise GQAError("ga.dp_seed", f"must be true or false, got {ga['dp_seed']!r}")

    hw = raw.get("hw", {})
    _check_keys(hw, HW_DEFAULTS, "hw")
    hw = {**HW_DEFAULTS, **hw}
    _check_number(hw, "node", "hw", int, 1)
    _check_number(hw, "freq_mhz", "hw", float, 0)
    _check_number(hw, "activity", "hw", float, 0)
    hw["freq_mhz"], hw["activity"] = float(hw["freq_mhz"]), float(hw["activity"])
    if hw["freq_mhz"] <= 0:
        raise GQAError("hw.freq_mhz", f"must be a positive number of MHz, got {hw['freq_mhz']!r}")
    if hw["activity"] > 1:
        raise GQAError("hw.activity", f"must be in [0, 1] (fraction of cycles that evaluate), got {hw['activity']!r}")
    if hw["calibration"] not in ("paper", "none"):
        raise GQAError("hw.calibration", f"{hw['calibration']!r} is not an option", "use paper or none")
    for k in ("programmable", "io_registers"):
        if not isinstance(hw[k], bool):
            raise GQAError(f"hw.{k}", f"must be true or false, got {hw[k]!r}")
    if hw["pipeline"] not in (0, 1) or isinstance(hw["pipeline"], bool):
        raise GQAError("hw.pipeline", f"must be 0 or 1, got {hw['pipeline']!r}")

    minilm = raw.get("minilm")
    if minilm is not None:
        minilm = _normalize_minilm(minilm)

    return {"version": SWEEP_VERSION, "functions": functions, "entries": entries, "methods": methods,
            "formats": norm_formats, "scales": norm_scales, "domains": norm_domains, "seed": seed, "ga": ga,
            "hw": hw, "minilm": minilm}


def _normalize_minilm(minilm) -> dict:
    from intsim.config import SimConfig

    _check_keys(minilm, [*MINILM_DEFAULTS, "configs"], "minilm")
    m = {**MINILM_DEFAULTS, **{k: v for k, v in minilm.items() if k != "configs"}}
    for k in ("sentences", "calib_sentences", "batch"):
        _check_number(m, k, "minilm", int, 3 if k == "sentences" else 1)
    if m["model"] is not None and not isinstance(m["model"], str):
        raise GQAError("minilm.model", f"must be a model directory path, got {m['model']!r}")
    if not isinstance(m["plug_table"], bool):
        raise GQAError("minilm.plug_table", f"must be true or false, got {m['plug_table']!r}")
    configs = minilm.get("configs", {"default": {}})
    if not isinstance(configs, dict):
        raise GQAError("minilm.configs", "must be a table of named SimConfig option sets",
                       "write [minilm.configs.NAME] sections")
    if not configs:
        raise GQAError("minilm.configs", "is an empty axis", "give at least one [minilm.configs.NAME] section")
    for name, c in configs.items():
        if not isinstance(c, dict):
            raise GQAError(f"minilm.configs.{name}", f"must be a table of SimConfig options, got {type(c).__name__}")
        SimConfig.from_dict(dict(c), source=f"minilm.configs.{name}")   # validates every key and value
    m["configs"] = {name: dict(c) for name, c in configs.items()}
    return m


def spec_hash(spec: dict) -> str:
    """SHA-256 of the canonical spec (what a results file is tied to)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def load_spec(source) -> dict:
    """A spec from a TOML file path, a TOML string (``str`` holding a newline) or a dict -> canonical dict."""
    if isinstance(source, dict):
        return normalize_spec(source)
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    if isinstance(source, str) and "\n" in source:
        text, where = source, "spec"
    else:
        p = Path(source)
        if not p.is_file():
            raise GQAError("spec", f"{p} does not exist or is not a file", "give a TOML sweep spec")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise GQAError("spec", f"{p} is not UTF-8 text") from None
        where = str(p)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise GQAError(where, f"is not valid TOML: {exc}") from None
    return normalize_spec(raw, where)


# --- the grid -----------------------------------------------------------------------------------------

def point_key(function: str, entries: int, fmt: str, method: str, config: str | None = None) -> str:
    key = f"{function}/n{entries}/{fmt}/{method}"
    return key if config is None else f"{key}/{config}"


def expand(spec: dict) -> list[dict]:
    """The grid's points in order (functions x entries x formats x methods [x MiniLM configs])."""
    minilm = spec["minilm"]
    configs = list(minilm["configs"]) if minilm else [None]
    points = []
    for f, n, fmt, m, c in itertools.product(spec["functions"], spec["entries"], spec["formats"], spec["methods"],
                                             configs):
        p = {"index": len(points), "key": point_key(f, n, fmt, m, c), "function": f, "domain": spec["domains"][f],
             "scales": spec["scales"][f], "entries": n, "format": fmt, "datapath": spec["formats"][fmt],
             "method": m, "seed": spec["seed"], "ga": spec["ga"], "hw": spec["hw"], "minilm": None}
        if minilm:
            p["minilm"] = {k: v for k, v in minilm.items() if k != "configs"}
            p["minilm"].update(config=c, options=minilm["configs"][c])
        points.append(p)
    return points


def columns(spec: dict) -> list[str]:
    scales = sorted({e for s in spec["scales"].values() for e in s})
    cols = ["index", "key", "function", "entries", "format", "method"]
    if spec["minilm"]:
        cols.append("minilm_config")
    cols += ["in_bits", "slope_bits", "slope_frac", "icpt_bits", "icpt_frac", "scales", "mean_mse", "max_abs"]
    cols += [f"mse_e{e}" for e in scales] + [f"max_abs_e{e}" for e in scales]
    cols += ["clipped", *HW_COLUMNS]
    if spec["minilm"]:
        cols += list(MINILM_COLUMNS)
    cols += ["error", "table"]
    return cols


# --- evaluating one point (runs in a worker: top level, picklable arguments) -------------------------

_MINILM_CACHE: dict = {}


@contextlib.contextmanager
def _torch_threads(n: int):
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)   # FP32 sums in a fixed order: the same results on every executor
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _minilm_base(m: dict):
    """(model, tokenizer, calibration, sentences, FP32 embeddings), once per worker process."""
    key = (m["model"], m["calib_sentences"], m["sentences"], m["batch"])
    if key not in _MINILM_CACHE:
        from intsim.bert import Tokenizer, embed_fp32, load_model
        from intsim.calibration import calibrate
        from intsim.sentences import calibration_sentences, evaluation_sentences

        model = load_model(m["model"])
        tok = Tokenizer(m["model"], max_len=model.config.max_seq_len)
        calib = calibrate(model, tok, calibration_sentences(m["calib_sentences"]), batch_size=m["batch"])
        sentences = evaluation_sentences(m["sentences"])
        ref = embed_fp32(model, tok, sentences, m["batch"])
        _MINILM_CACHE.clear()
        _MINILM_CACHE[key] = (model, tok, calib, sentences, ref)
    return _MINILM_CACHE[key]


def _minilm_accuracy(table, m: dict) -> dict:
    import warnings

    from intsim.config import SimConfig
    from intsim.int_bert import IntBert, embed_int
    from intsim.metrics import compare

    with _torch_threads(1):
        model, tok, calib, sentences, ref = _minilm_base(m)
        options = dict(m["options"])
        note = ""
        slot = MINILM_SLOTS.get(table.function)
        if m["plug_table"]:
            if slot is None:
                note = f"no MiniLM slot for {table.function}; config tables used"
            else:
                options[slot] = table
        try:
            enc = IntBert(model, calib, SimConfig(**options))
        except GQAError as exc:
            if not m["plug_table"] or slot is None:
                raise
            return {"minilm_note": f"the table cannot serve {slot}: {exc}"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            emb = embed_int(enc, tok, sentences, m["batch"])
    c = compare(emb, ref)
    return {"mean_cosine": c["mean_cosine"], "min_cosine": c["min_cosine"], "nn_agreement": c["nn_agreement"],
            "minilm_note": note}


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def evaluate_point(point: dict) -> dict:
    """Search one point's table and measure it: a dict of column values (missing: not applicable).

    Bad input at this point (a :class:`GQAError` from the search, the cost model or the encoder)
    is recorded in the ``error`` column; any other exception is a bug and propagates.
    """
    import gqa_lut
    from hw_models import UnitConfig, compare
    from intsim import PWLDatapath

    dp = PWLDatapath(**point["datapath"])
    out = {"scales": ",".join(str(e) for e in point["scales"]), **{k: point["datapath"][k] for k in
                                                                     ("in_bits", "slope_bits", "slope_frac",
                                                                      "icpt_bits", "icpt_frac")}}
    kw = {}
    if point["method"] == "ga":
        kw = {k: point["ga"][k] for k in ("population", "generations", "dp_seed")}
    try:
        table = gqa_lut.search(point["function"], point["entries"], point["method"], datapath=dp,
                               scales=point["scales"], domain=tuple(point["domain"]), seed=point["seed"],
                               progress=False, **kw)
    except GQAError as exc:
        return {**out, "error": _one_line(f"search: {exc}")}
    err = table.error()
    out.update(mean_mse=err.mean_mse, max_abs=err.max_max_abs,
               clipped=table.provenance.get("coefficients", {}).get("clipped"))
    for e, mse, mx in zip(err.scales, err.mse, err.max_abs):
        out[f"mse_e{e}"], out[f"max_abs_e{e}"] = float(mse), float(mx)
    out["table"] = json.dumps({"domain": list(table.domain), "scales": list(table.scales),
                               "datapath": table.datapath.to_dict(),
                               "breakpoints": [float(p) for p in table.breakpoints],
                               "slopes": [int(k) for k in table.slopes],
                               "intercepts": [int(b) for b in table.intercepts]}, separators=(",", ":"))
    hw = point["hw"]
    try:
        cfg = UnitConfig.from_table(table, None, programmable=hw["programmable"], pipeline=hw["pipeline"],
                                    io_registers=hw["io_registers"])
        r = compare(cfg, hw["node"], hw["freq_mhz"], hw["activity"], hw["calibration"])
    except GQAError as exc:
        return {**out, "error": _one_line(f"hw: {exc}")}
    u = r["units"]
    out.update(int_area_um2=u["int"].area_um2, int_power_mw=u["int"].power_mw, int_energy_pj=u["int"].energy_pj,
               fp32_area_um2=u["fp32"].area_um2, fp32_power_mw=u["fp32"].power_mw,
               fp32_energy_pj=u["fp32"].energy_pj, int32_area_um2=u["int32"].area_um2,
               int32_power_mw=u["int32"].power_mw, area_saving_pct=r["savings_pct"]["fp32"]["area_um2"],
               power_saving_pct=r["savings_pct"]["fp32"]["power_mw"])
    if point["minilm"]:
        try:
            out.update(_minilm_accuracy(table, point["minilm"]))
        except GQAError as exc:
            out["error"] = _one_line(f"minilm: {exc}")
    return out


# --- the results file ------------------------------------------------------------------------------

def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)
    if hasattr(v, "item"):          # numpy scalars
        return _fmt(v.item())
    return _one_line(v) if isinstance(v, str) else str(v)


def _csv_line(values) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(values)
    return buf.getvalue()


def _crc(text: str) -> str:
    return f"{zlib.crc32(text.encode('utf-8')):08x}"


def format_row(cols: list[str], point: dict, result: dict) -> str:
    """One results line (with its newline): the columns' values and a CRC-32 of them."""
    values = {"index": point["index"], "key": point["key"], "function": point["function"],
              "entries": point["entries"], "format": point["format"], "method": point["method"], **result}
    if point["minilm"]:
        values["minilm_config"] = point["minilm"]["config"]
    body = _csv_line([_fmt(values.get(c)) for c in cols])
    return f"{body},{_crc(body)}\n"


def _header_lines(spec: dict, cols: list[str]) -> list[str]:
    return [f"{MAGIC}{SWEEP_VERSION} spec_sha256={spec_hash(spec)}",
            "# spec=" + json.dumps(spec, sort_keys=True, separators=(",", ":")),
            _csv_line([*cols, "crc"])]


@dataclass
class ResultsFile:
    """What a results file holds: its spec hash, the spec, columns and the valid rows (raw strings)."""

    path: Path
    spec_sha256: str
    spec: dict
    columns: list[str]
    rows: list[dict]
    torn: int = 0            # lines that failed their CRC or column count (a crash mid-write)
    ends_with_newline: bool = True


def read_results(path) -> ResultsFile:
    """Parse a results file; rows as dicts of strings, first occurrence of each key, file order."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise GQAError("results", f"cannot read {p}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise GQAError("results", f"{p} is not a gqa-sim sweep results file (not UTF-8 text)",
                       "choose another output file; this one is left untouched") from None
    lines = text.split("\n")
    if len(lines) < 4 or not lines[0].startswith(MAGIC) or not lines[1].startswith("# spec="):
        raise GQAError("results", f"{p} is not a gqa-sim sweep results file (no '{MAGIC}N' header)",
                       "choose another output file; this one is left untouched")
    head = lines[0][len(MAGIC):].split()
    if not head or head[0] != str(SWEEP_VERSION) or len(head) < 2 or not head[1].startswith("spec_sha256="):
        raise GQAError("results", f"{p} was written by another sweep format ({lines[0]!r})",
                       f"this gqa-sim writes v{SWEEP_VERSION}; choose another output file")
    try:
        spec = json.loads(lines[1][len("# spec="):])
    except json.JSONDecodeError:
        raise GQAError("results", f"{p}: the spec line is damaged") from None
    cols = next(csv.reader([lines[2]]))
    if not cols or cols[-1] != "crc":
        raise GQAError("results", f"{p}: the column header is damaged")
    cols = cols[:-1]
    rows, seen, torn = [], set(), 0
    body = lines[3:]
    complete = body[:-1]                        # the last element follows the final newline ('' when complete)
    if body[-1] != "":
        torn += 1                               # an unterminated last line: a write cut short
    for line in complete:
        if not line:
            continue
        cut = line.rfind(",")
        if cut < 0 or _crc(line[:cut]) != line[cut + 1:]:
            torn += 1
            continue
        vals = next(csv.reader([line[:cut]]))
        if len(vals) != len(cols):
            torn += 1
            continue
        row = dict(zip(cols, vals))
        if row["key"] in seen:
            continue
        seen.add(row["key"])
        rows.append(row)
    return ResultsFile(p, head[1][len("spec_sha256="):], spec, cols, rows, torn, data.endswith(b"\n"))


def _typed(row: dict) -> dict:
    out = {}
    for k, v in row.items():
        if k in TEXT_COLUMNS:
            out[k] = v
        elif v == "":
            out[k] = None
        elif k in INT_COLUMNS:
            out[k] = int(v)
        else:
            try:
                out[k] = float(v)
            except ValueError:
                out[k] = v
    return out


def load_results(path, spec=None) -> list[dict]:
    """The finished points of a results file in grid order, values typed (``None``: not applicable).

    With ``spec`` (a path, dict or canonical spec), a file written by another spec is refused.
    """
    res = read_results(path)
    if spec is not None:
        want = spec_hash(load_spec(spec))
        if want != res.spec_sha256:
            raise GQAError("results", f"{res.path} holds results of a different spec "
                           f"(sha256 {res.spec_sha256[:12]}, expected {want[:12]})")
    return sorted((_typed(r) for r in res.rows), key=lambda r: r["index"])


def table_from_row(row: dict, function: str | None = None):
    """The :class:`intsim.PWLTable` a results row describes (its ``table`` column)."""
    from intsim import PWLDatapath, PWLTable

    if not row.get("table"):
        raise GQAError("table", f"point {row.get('key')} has no table ({row.get('error') or 'not recorded'})")
    t = json.loads(row["table"])
    return PWLTable(function=function or row["function"], domain=tuple(t["domain"]),
                    datapath=PWLDatapath(**t["datapath"]), scales=t["scales"], breakpoints=t["breakpoints"],
                    slopes=t["slopes"], intercepts=t["intercepts"],
                    provenance={"method": row.get("method"), "sweep_key": row.get("key")})


class _Appender:
    """Append whole lines to the results file: one write per line, flush + fsync, an exclusive lock held."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            import fcntl
        except ImportError:   # not POSIX: no lock
            return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise GQAError("output", f"another sweep is writing to {path}", "wait for it or choose another -o") \
                from None

    def write(self, line: str) -> None:
        data = line.encode("utf-8")
        n = os.write(self.fd, data)
        while n < len(data):           # a regular file takes it whole; be safe anyway
            n += os.write(self.fd, data[n:])
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)              # releases the lock


def _create(path: Path, header: list[str]) -> None:
    """Create the results file with its header, atomically, unless it exists (never overwritten)."""
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write("\n".join(header) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)          # fails if the file appeared meanwhile: nothing is replaced
        except FileExistsError:
            pass
        except OSError:                 # no hard links on this filesystem
            if not path.exists():
                os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _check_existing(p: Path, spec: dict) -> ResultsFile | None:
    """The results already in ``p`` (None: no file yet), refusing a file of another spec."""
    if not p.exists() or p.stat().st_size == 0:
        return None
    res = read_results(p)
    want = spec_hash(spec)
    if res.spec_sha256 != want:
        raise GQAError("output", f"{p} holds results of a different spec (spec sha256 {res.spec_sha256[:12]}, "
                       f"this spec {want[:12]})", "give another -o, or delete the file to start over; "
                       "it is left untouched")
    if res.columns != columns(spec):
        raise GQAError("output", f"{p}: its columns differ from this spec's", "give another -o")
    return res


def open_results(path, spec: dict) -> tuple[_Appender, set[str], ResultsFile]:
    """Create or reopen ``path`` for ``spec``: (appender holding the lock, keys already finished, contents)."""
    from intsim.fileio import check_writable

    p = check_writable(path, "output")
    if _check_existing(p, spec) is None:
        if p.exists():
            p.unlink()                  # an empty file (a crash before the header): nothing to lose
        _create(p, _header_lines(spec, columns(spec)))
    app = _Appender(p)
    try:
        res = _check_existing(p, spec)  # read again under the lock
        if not res.ends_with_newline:
            app.write("\n")             # isolate a torn last line; it fails its CRC and is ignored
    except BaseException:
        app.close()
        raise
    return app, {r["key"] for r in res.rows}, res


# --- executors ----------------------------------------------------------------------------------------

class InlineExecutor(cf.Executor):
    """Runs each submitted call at once in this process (``workers=0``)."""

    def submit(self, fn, /, *args, **kwargs):
        fut = cf.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - delivered through the future
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            fut.set_exception(exc)
        return fut


def process_pool(workers: int | None = None) -> cf.ProcessPoolExecutor:
    """A local process pool (forkserver on POSIX: workers do not inherit this process's threads)."""
    import multiprocessing as mp

    if workers is not None and (not _is_int(workers) or workers < 1):
        raise GQAError("--workers", f"must be a positive integer, got {workers!r}", "0 runs in this process")
    ctx = None
    if sys.platform != "win32" and "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["gqa_cli.sweep", "gqa_lut", "hw_models"])
    return cf.ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1, mp_context=ctx)


def dask_client(address: str, timeout: float = 10.0):
    """A ``distributed.Client`` connected to ``address``, with at least one worker, or a clear GQAError."""
    try:
        from distributed import Client
    except ImportError:
        raise GQAError("--scheduler", "needs dask.distributed", "pip install 'dask[distributed]'") from None
    if not isinstance(address, str) or not address.strip():
        raise GQAError("--scheduler", f"{address!r} is not a scheduler address", "e.g. tcp://127.0.0.1:8786")
    try:
        client = Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        raise GQAError("--scheduler", f"cannot reach a Dask scheduler at {address} within {timeout:g} s "
                       f"({type(exc).__name__}: {_one_line(exc)})",
                       "start one (`dask scheduler` and `dask worker ADDRESS`) or check the address") from None
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (TimeoutError, OSError) as exc:
        client.close()
        raise GQAError("--scheduler", f"the scheduler at {address} has no workers after {timeout:g} s "
                       f"({type(exc).__name__})", "start workers with `dask worker ADDRESS`") from None
    return client


def _slots(executor, default: int) -> int:
    n = getattr(executor, "_max_workers", None)
    client = getattr(executor, "_client", None)
    if client is not None:
        with contextlib.suppress(Exception):
            n = sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values())
    return max(int(n or default), 1)


# --- the sweep -----------------------------------------------------------------------------------------

@dataclass
class SweepReport:
    path: Path
    points: int                 # in the grid
    skipped: int                # finished before this run (read from the file)
    computed: int               # finished by this run
    errors: int                 # rows (of all finished) with an error
    seconds: float
    torn: int = 0               # damaged lines ignored in the file
    rows: list = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.skipped + self.computed == self.points

    def summary(self) -> str:
        s = (f"{self.points} points: {self.computed} computed now, {self.skipped} already in {self.path}; "
             f"{self.errors} with errors; {self.seconds:.1f} s")
        if self.torn:
            s += f"; {self.torn} damaged line(s) ignored"
        return s if self.complete else s + f"; {self.points - self.skipped - self.computed} left (re-run to resume)"


def run_sweep(spec, out, executor=None, workers: int | None = None, progress: bool = True,
              scheduler: str | None = None, scheduler_timeout: float = 10.0, max_points: int | None = None,
              on_point=None) -> SweepReport:
    """Run (or resume) a sweep, appending every finished point to ``out``.

    ``spec``: a TOML file path, a TOML string or a dict. ``executor``: any
    :class:`concurrent.futures.Executor` or a ``distributed.Client`` (not shut down here);
    otherwise ``scheduler`` (a Dask scheduler address) or a local process pool of ``workers``
    processes (default: one per CPU; 0: this process). ``max_points``: stop after this many new
    points (the rest on a later run). ``on_point(point, result)``: called in this process as each
    point finishes.
    """
    from intsim.fileio import check_writable

    t0 = time.perf_counter()
    spec = load_spec(spec)
    points = expand(spec)
    if max_points is not None and (not _is_int(max_points) or max_points < 0):
        raise GQAError("max_points", f"must be a non-negative integer, got {max_points!r}")
    if executor is not None and scheduler is not None:
        raise GQAError("scheduler", "given together with an executor", "pass one or the other")
    if workers is not None and (executor is not None or scheduler is not None):
        raise GQAError("workers", "given together with an executor or a scheduler", "the executor decides; drop one")
    p = check_writable(out, "output")
    before = _check_existing(p, spec)   # refuse another spec's file before connecting anywhere
    done = {r["key"] for r in before.rows} if before else set()
    own = executor is None
    client = None
    if own and any(pt["key"] not in done for pt in points) and max_points != 0:
        if scheduler is not None:
            client = dask_client(scheduler, scheduler_timeout)
            executor = client.get_executor()
        elif workers == 0:
            executor = InlineExecutor()
        else:
            executor = process_pool(workers)
    elif executor is not None and not isinstance(executor, cf.Executor) and hasattr(executor, "get_executor"):
        executor = executor.get_executor()       # a distributed.Client
    computed = 0
    try:
        app, done, _ = open_results(p, spec)
        try:
            pending = [pt for pt in points if pt["key"] not in done]
            if max_points is not None:
                pending = pending[:max_points]
            if pending:
                window = 4 * _slots(executor, os.cpu_count() or 1)
                computed = _drive(executor, pending, window, app, columns(spec), len(points), len(done), progress,
                                  on_point)
        finally:
            app.close()
    except BaseException:
        if own and executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
            executor = None
        raise
    finally:
        if own and executor is not None:
            executor.shutdown(wait=True)
        if client is not None:
            client.close()
    final = read_results(p)
    rows = sorted((_typed(r) for r in final.rows), key=lambda r: r["index"])
    return SweepReport(p, len(points), len(done), computed, sum(1 for r in rows if r.get("error")),
                       time.perf_counter() - t0, final.torn, rows)


def _drive(executor, pending, window, app, cols, total, done, progress, on_point) -> int:
    from tqdm.auto import tqdm

    todo = iter(pending)
    inflight: dict = {}
    computed = 0
    with tqdm(total=total, initial=done, desc="sweep", unit="pt", disable=not progress, smoothing=0.1) as bar:
        def fill():
            for p in todo:
                inflight[executor.submit(evaluate_point, p)] = p
                if len(inflight) >= window:
                    break
        try:
            fill()
            while inflight:
                finished, _ = cf.wait(list(inflight), return_when=cf.FIRST_COMPLETED)
                for fut in sorted(finished, key=lambda f: inflight[f]["index"]):
                    p = inflight.pop(fut)
                    result = fut.result()
                    app.write(format_row(cols, p, result))
                    computed += 1
                    bar.update(1)
                    if result.get("error"):
                        bar.set_postfix_str(f"last error: {p['key']}", refresh=False)
                    if on_point is not None:
                        on_point(p, result)
                fill()
        except BaseException:
            for fut in inflight:
                fut.cancel()
            raise
    return computed


# --- analysis ------------------------------------------------------------------------------------------

def pareto_front(rows, x: str, y: str, minimize=(True, True)) -> list[dict]:
    """The rows no other row beats on both ``x`` and ``y`` (minimised unless told), sorted by ``x``.

    Rows missing either value are left out; of rows with equal ``(x, y)`` the first is kept.
    """
    sx = 1.0 if minimize[0] else -1.0
    sy = 1.0 if minimize[1] else -1.0
    cand = []
    for i, r in enumerate(rows):
        vx, vy = r.get(x), r.get(y)
        if vx is None or vy is None or vx == "" or vy == "":
            continue
        vx, vy = float(vx), float(vy)
        if math.isnan(vx) or math.isnan(vy):
            continue
        cand.append((sx * vx, sy * vy, i, r))
    cand.sort(key=lambda t: (t[0], t[1], t[2]))
    front, best = [], math.inf
    for _, vy, _, r in cand:
        if vy < best:
            front.append(r)
            best = vy
    return front


# --- the command ---------------------------------------------------------------------------------------

def _print_fronts(rows) -> None:
    ok = [r for r in rows if not r.get("error") and r.get("mean_mse") is not None]
    if not ok:
        return
    print("Pareto fronts, integer unit area against mean MSE over the scale set (FP32 unit of the same entries):")
    for f in dict.fromkeys(r["function"] for r in ok):
        print(f"  {f}:")
        for r in pareto_front([r for r in ok if r["function"] == f], "int_area_um2", "mean_mse"):
            print(f"    {r['int_area_um2']:>8.0f} um2 (FP32 {r['fp32_area_um2']:>6.0f})  {r['mean_mse']:.3e}  {r['key']}")


def cmd_sweep(a) -> int:
    if a.list:
        spec = load_spec(a.spec)
        points = expand(spec)
        print(f"{len(points)} points, spec sha256 {spec_hash(spec)[:12]}")
        for p in points:
            print(f"  {p['index']:>4}  {p['key']}")
        return 0
    if a.output is None:
        raise GQAError("--output", "is required", "give -o results.csv")
    if a.workers is not None and a.scheduler is not None:
        raise GQAError("--workers", "given together with --scheduler", "the cluster decides its workers; drop one")
    if a.workers is not None and a.workers < 0:
        raise GQAError("--workers", f"must be >= 0, got {a.workers}", "0 runs in this process")
    try:
        report = run_sweep(a.spec, a.output, workers=a.workers, progress=not a.quiet, scheduler=a.scheduler,
                           scheduler_timeout=a.scheduler_timeout, max_points=a.max_points)
    except KeyboardInterrupt:
        print(f"gqa sweep: interrupted; every finished point is in {a.output}; re-run the same command to resume",
              file=sys.stderr)
        return 130
    print(report.summary())
    if report.torn:
        print(f"note: {report.torn} damaged line(s) in {a.output} were ignored (a write cut short); "
              "their points were computed again", file=sys.stderr)
    if not a.quiet:
        _print_fronts(report.rows)
    return 0


def register(sub) -> None:
    """Add ``sweep`` to the ``gqa`` subcommands."""
    s = sub.add_parser("sweep", help="design-space sweep (functions x entries x formats x methods) to a CSV")
    s.add_argument("spec", help="TOML sweep spec (see examples/sweep_small.toml)")
    s.add_argument("-o", "--output", help="results CSV; an existing file of the same spec is resumed")
    s.add_argument("--workers", type=int, default=None, help="local worker processes (default: one per CPU; "
                   "0: in this process)")
    s.add_argument("--scheduler", default=None, help="a dask.distributed scheduler address (tcp://HOST:PORT)")
    s.add_argument("--scheduler-timeout", type=float, default=10.0, help="seconds to reach the scheduler (10)")
    s.add_argument("--max-points", type=int, default=None, help="stop after this many new points")
    s.add_argument("--list", action="store_true", help="print the grid's points and exit")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no Pareto summary")
    s.set_defaults(run=cmd_sweep)
