"""The sweep spec: a TOML grid (functions x entries x formats x methods [x MiniLM or decoder configs]),
validated and normalised to a canonical form whose SHA-256 ties a results file to it.

The spec format is described in :mod:`gqa_sweep` (the package docstring).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import fields
from pathlib import Path

from intsim import GQAError, PWLDatapath
from intsim.config import TABLE_SLOTS

SWEEP_VERSION = 1

DEFAULT_SCALES = "0:6"

TOP_KEYS = ("functions", "entries", "methods", "formats", "scales", "domains", "seed", "hw", "minilm", "llm")
# plus one optional table per search method of gqa_lut.METHODS: its options, passed to gqa_lut.search

FORMAT_KEYS = tuple(f.name for f in fields(PWLDatapath))     # a format is a PWLDatapath

GA_DEFAULTS = {"population": 50, "generations": 500, "dp_seed": True}
# methods whose options have defaults: always written into the canonical spec (so the hash of a spec
# that omits them does not change); other methods' tables are canonical as given
METHOD_DEFAULTS = {"ga": GA_DEFAULTS}
SWEEP_SETS = ("func", "entries", "method", "datapath", "scales", "domain", "seed", "progress")  # not options

HW_DEFAULTS = {"node": 28, "freq_mhz": 500.0, "activity": 1.0, "calibration": "paper", "programmable": True,
               "pipeline": 0, "io_registers": True}

MINILM_DEFAULTS = {"sentences": 32, "calib_sentences": 32, "batch": 32, "model": None, "plug_table": True}

# the decoder axis (SmolLM2-135M, intsim.int_llama): perplexity and top-1 against FP32 on the first ``tokens``
# tokens of a held-out genre text (intsim.genres), windows of ``context``; ``layers``: the first N blocks only
LLM_DEFAULTS = {"text": "news", "tokens": 256, "context": 256, "layers": None, "weights": "w8", "plug_table": True}

MAX_GRID_POINTS = 1_000_000   # default limit of a grid's size; raise it with GQA_MAX_GRID_POINTS
MINILM_SLOTS = {fn: key for key, fn in TABLE_SLOTS.items() if fn != "silu"}   # function -> the SimConfig table it can serve
LLM_SLOTS = {fn: key for key, fn in TABLE_SLOTS.items() if fn != "gelu"}      # the decoder's (SwiGLU: silu, no gelu)


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def _check_keys(d: dict, known, where: str) -> None:
    if not isinstance(d, dict):
        raise GQAError(where, f"must be a table (mapping), got {type(d).__name__}")
    unknown = sorted(set(d) - set(known))
    if unknown:
        name = f"{where}.{unknown[0]}" if where != "spec" else unknown[0]
        raise GQAError(name, "unknown key", f"known keys{' of ' + where if where != 'spec' else ''}: "
                       f"{', '.join(sorted(known))}")


def max_grid_points() -> int:
    """The grid-size limit: ``GQA_MAX_GRID_POINTS`` (environment) or :data:`MAX_GRID_POINTS`."""
    import os

    v = os.environ.get("GQA_MAX_GRID_POINTS", "")
    if not v:
        return MAX_GRID_POINTS
    if not v.isdigit() or int(v) < 1:
        raise GQAError("GQA_MAX_GRID_POINTS", f"{v!r} is not a positive integer", f"e.g. {MAX_GRID_POINTS}")
    return int(v)


def grid_size(raw: dict) -> int:
    """Points of a raw spec's grid, counted from the axis lengths (nothing expanded)."""
    def n(v, default=1):
        return len(v) if isinstance(v, (list, dict)) else default
    axis = raw.get("minilm", raw.get("llm"))
    configs = axis.get("configs", {"default": {}}) if isinstance(axis, dict) else None
    return (n(raw.get("functions")) * n(raw.get("entries")) * n(raw.get("methods"))
            * n(raw.get("formats", {"default": {}})) * n(configs))


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
    if is_int(value):
        return [value]
    if isinstance(value, list) and all(is_int(e) for e in value):
        return list(value)
    raise GQAError(where, f"{value!r} is not a scale set", 'write "A:B" (inclusive), [A, B, C] or one integer')


def _check_number(d: dict, key: str, where: str, kind=float, lo=None):
    """A numeric spec value through the config's one coercion (the field named in its error)."""
    from intsim.config import coerce_value

    v = d[key]
    coerce_value(f"{where}.{key}", v, "int" if kind is int else "float")
    if lo is not None and v < lo:
        raise GQAError(f"{where}.{key}", f"must be {'an integer' if kind is int else 'a number'} >= {lo}, got {v!r}")


def normalize_spec(raw: dict, source: str = "spec") -> dict:
    """Validate a raw spec (the parsed TOML) and return its canonical form (every default filled in).

    The canonical form is what the results file's spec hash covers: two specs that differ only
    in spelling (an omitted default, a reordered table) have the same hash.
    """
    import gqa_lut
    from intsim import get_function
    from intsim.table import check_scales

    if not isinstance(raw, dict):
        raise GQAError(source, f"must be a mapping of spec keys, got {type(raw).__name__}")
    raw = dict(raw)
    if "version" in raw and raw.pop("version") != SWEEP_VERSION:   # a canonical spec normalises to itself
        raise GQAError("version", f"this gqa-sim reads sweep spec version {SWEEP_VERSION}")
    _check_keys(raw, (*TOP_KEYS, *gqa_lut.METHODS), "spec")
    functions = _axis(raw, "functions")
    entries = _axis(raw, "entries")
    methods = _axis(raw, "methods")
    size, limit = grid_size(raw), max_grid_points()
    if size > limit:            # before any point is validated or built
        raise GQAError("spec", f"the grid has {size:,} points (functions x entries x methods x formats "
                       f"[x minilm/llm.configs]), more than the limit of {limit:,}",
                       "split the spec into smaller sweeps, or raise the limit with GQA_MAX_GRID_POINTS=N")
    for f in functions:
        if not isinstance(f, str):
            raise GQAError("functions", f"{f!r} is not a function name", f"use names from {', '.join(gqa_lut.FUNCTIONS)}")
    for n in entries:
        if not is_int(n) or n < 2:
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
    if not is_int(seed) or seed < 0:
        raise GQAError("seed", f"must be a non-negative integer, got {seed!r}")

    options = {m: _method_options(raw, m, gqa_lut.search) for m in gqa_lut.METHODS
               if m in raw or m in METHOD_DEFAULTS}
    ga = options.get("ga")
    if ga is not None:
        for k in ("population", "generations"):
            _check_number(ga, k, "ga", int, 1)
        if not isinstance(ga["dp_seed"], bool):
            raise GQAError("ga.dp_seed", f"must be true or false, got {ga['dp_seed']!r}")

    from gqa_lut.budget import check_search_budget

    for f in functions:                 # every point's search fits the memory limit, checked up front
        for name, d in norm_formats.items():
            for m in methods:
                opts = options.get(m) or {}
                try:
                    check_search_budget(norm_domains[f], max(entries), PWLDatapath(**d), norm_scales[f], m,
                                        opts.get("population", 50), opts.get("dp_seed", True), field="spec")
                except GQAError as exc:
                    raise GQAError(f"spec: {f}/{name}/{m}", str(exc).split(": ", 1)[-1]) from None

    hw = raw.get("hw", {})
    _check_keys(hw, HW_DEFAULTS, "hw")
    hw = {**HW_DEFAULTS, **hw}
    _check_number(hw, "node", "hw", int, 1)
    from hw_models.scaling import check_node
    try:
        check_node(hw["node"])       # up front: a bad node would fail every point
    except GQAError as exc:
        raise GQAError("hw.node", str(exc).split(": ", 1)[-1]) from None
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
    out = {"version": SWEEP_VERSION, "functions": functions, "entries": entries, "methods": methods,
           "formats": norm_formats, "scales": norm_scales, "domains": norm_domains, "seed": seed, **options,
           "hw": hw, "minilm": minilm}
    if "llm" in raw:         # present only when given: a spec without it keeps its hash
        if minilm is not None:
            raise GQAError("llm", "a sweep takes one model axis", "sweep minilm and llm in two specs")
        out["llm"] = _normalize_llm(raw["llm"])
    return out


def _method_options(raw: dict, method: str, search) -> dict:
    """The options table of ``method`` (keywords of ``search``; defaults filled in where declared)."""
    import inspect

    opts = raw.get(method, {})
    if method in METHOD_DEFAULTS:
        known = METHOD_DEFAULTS[method]
    else:
        known = [n for n, p in inspect.signature(search).parameters.items()
                 if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and n not in SWEEP_SETS]
    _check_keys(opts, known, method)
    for k, v in opts.items():
        if not isinstance(v, (bool, int, float, str)):
            raise GQAError(f"{method}.{k}", f"must be a number, a string or true/false, got {v!r}")
    return {**METHOD_DEFAULTS.get(method, {}), **opts}


def method_options(spec: dict, method: str) -> dict:
    """The keyword options a canonical spec passes to ``gqa_lut.search`` for ``method``."""
    return dict(spec.get(method) or {})


def _model_configs(axis: dict, where: str) -> dict:
    """A model axis' ``configs``: named SimConfig option sets, each validated (default: one, ``default``)."""
    from intsim.config import SimConfig

    configs = axis.get("configs", {"default": {}})
    if not isinstance(configs, dict):
        raise GQAError(f"{where}.configs", "must be a table of named SimConfig option sets",
                       f"write [{where}.configs.NAME] sections")
    if not configs:
        raise GQAError(f"{where}.configs", "is an empty axis", f"give at least one [{where}.configs.NAME] section")
    for name, c in configs.items():
        if not isinstance(c, dict):
            raise GQAError(f"{where}.configs.{name}", f"must be a table of SimConfig options, got {type(c).__name__}")
        SimConfig.from_dict(dict(c), source=f"{where}.configs.{name}")   # validates every key and value
    return {name: dict(c) for name, c in configs.items()}


def _normalize_llm(llm) -> dict:
    from intsim.genres import genre_names
    from intsim.int_llama import WEIGHTS

    _check_keys(llm, [*LLM_DEFAULTS, "configs"], "llm")
    m = {**LLM_DEFAULTS, **{k: v for k, v in llm.items() if k != "configs"}}
    if m["text"] not in genre_names():
        raise GQAError("llm.text", f"{m['text']!r} is not a held-out genre", f"use one of {', '.join(genre_names())}")
    _check_number(m, "tokens", "llm", int, 2)
    _check_number(m, "context", "llm", int, 2)
    if m["layers"] is not None:
        _check_number(m, "layers", "llm", int, 1)
    if m["weights"] not in WEIGHTS:
        raise GQAError("llm.weights", f"{m['weights']!r} is not an option", f"use one of {', '.join(WEIGHTS)}")
    if not isinstance(m["plug_table"], bool):
        raise GQAError("llm.plug_table", f"must be true or false, got {m['plug_table']!r}")
    m["configs"] = _model_configs(llm, "llm")
    return m


def _normalize_minilm(minilm) -> dict:
    _check_keys(minilm, [*MINILM_DEFAULTS, "configs"], "minilm")
    m = {**MINILM_DEFAULTS, **{k: v for k, v in minilm.items() if k != "configs"}}
    for k in ("sentences", "calib_sentences", "batch"):
        _check_number(m, k, "minilm", int, 3 if k == "sentences" else 1)
    if m["model"] is not None and not isinstance(m["model"], str):
        raise GQAError("minilm.model", f"must be a model directory path, got {m['model']!r}")
    if not isinstance(m["plug_table"], bool):
        raise GQAError("minilm.plug_table", f"must be true or false, got {m['plug_table']!r}")
    m["configs"] = _model_configs(minilm, "minilm")
    return m


def spec_hash(spec: dict) -> str:
    """SHA-256 of the canonical spec (what a results file is tied to)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def load_spec(source) -> dict:
    """A spec from a TOML file path, a TOML string (``str`` holding a newline) or a dict -> canonical dict."""
    if isinstance(source, dict):
        return normalize_spec(source)
    from intsim.fileio import parse, read_text

    if isinstance(source, str) and "\n" in source:
        text, where = source, "spec"
    else:
        text, where = read_text(source, "spec", "TOML sweep spec"), str(source)
    return normalize_spec(parse(text, "toml", "spec", where), where)
