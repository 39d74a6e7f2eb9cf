"""The GQA-LUT reference's JSON tables: ``{func: {"<e>": {breakpoints, slopes, intercepts}}}``.

Each scale ``e`` carries its breakpoints already rounded to ``2**-e`` and the shared slopes
and intercepts as reals. Older files use ``split_points``/``coeff``/``bias``. The reference
rounds each scale's breakpoints from float values it does not record, so an imported table
keeps the per-scale comparator constants explicitly whenever no single set of real
breakpoints reproduces them under the canonical rounding rule.

The files do not say how a code equal to a breakpoint is segmented, and the reference's two
evaluators disagree (docs/datapath.md): its trainer sends it to the segment above (intsim's
default ``segment_rule="ge"``), its torch operator (``torch.bucketize``, used for QAT and
deployment) to the segment below (``"gt"``). The importer takes the rule as an option
(default "ge") and records the one it assumed in the provenance (``segment_rule``); the
exporter writes breakpoints for an evaluator of a given rule.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from intsim import GQAError, PWLDatapath, PWLTable, get_function
from intsim.datapath import check_segment_rule
from intsim.fileio import atomic_write_json, read_json
from intsim.functions import ALIASES
from intsim.table import check_breakpoint_range, quantize_coefficients

KEYS = {"breakpoints": ("breakpoints", "split_points"), "slopes": ("slopes", "coeff"),
        "intercepts": ("intercepts", "bias")}

# the reference's own function names for ours
REFERENCE_NAMES = {v: k for k, v in ALIASES.items()}


def _pick(entry: dict, field: str, where: str):
    for key in KEYS[field]:
        if key in entry:
            return key, entry[key]
    raise GQAError(f"{where}.{KEYS[field][0]}", "is missing", f"accepted keys: {', '.join(KEYS[field])}")


def _reals(values, where: str, length: int | None = None) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise GQAError(where, "must be a list of numbers") from None
    if arr.ndim != 1:
        raise GQAError(where, "must be a flat list of numbers")
    if length is not None and arr.shape[0] != length:
        raise GQAError(where, f"has {arr.shape[0]} values, expected {length}")
    if not np.all(np.isfinite(arr)):
        raise GQAError(where, "holds NaN or infinity")
    return arr


def _min_bits(codes: np.ndarray) -> int:
    """Signed width that holds every code."""
    hi = int(max(np.max(codes), -np.min(codes) - 1, 0))
    return hi.bit_length() + 1


def _import_datapath(datapath: PWLDatapath | None, segment_rule: str | None) -> tuple[PWLDatapath, str]:
    """The datapath an import starts from, and the provenance line saying which rule it assumed."""
    if segment_rule is not None:
        check_segment_rule(segment_rule)
    if datapath is not None:
        if not isinstance(datapath, PWLDatapath):
            raise GQAError("datapath", f"must be a PWLDatapath, got {type(datapath).__name__}")
        if segment_rule is not None and segment_rule != datapath.segment_rule:
            raise GQAError("segment_rule", f"{segment_rule!r} contradicts the datapath's {datapath.segment_rule!r}",
                           "give the rule in one place")
        base, how = datapath, "given with the datapath"
    else:
        base = PWLDatapath(segment_rule=segment_rule or "ge")
        how = "given" if segment_rule is not None else \
            "assumed by default; the reference torch operator (torch.bucketize) segments with 'gt'"
    rule = base.rule
    return base, f"{rule.name} ({how}): q {rule.comparator} P_j, {rule.meaning}"


def table_from_gqa_dict(d, datapath: PWLDatapath | None = None, domain=None, on_overflow: str = "error",
                        source: str = "gqa-json", segment_rule: str | None = None) -> PWLTable:
    """Build a :class:`PWLTable` from a parsed GQA-LUT JSON object.

    With ``datapath=None`` the defaults are used, the slope/intercept widths widened (never
    narrowed) to hold the file's coefficients; with an explicit datapath, coefficients that do
    not fit are refused (``on_overflow="error"``) or clipped and counted (``"clip"``).
    ``segment_rule`` ("ge" or "gt", default the datapath's, else "ge") is the convention the
    file's breakpoints were evaluated with; the provenance's ``segment_rule`` says which one
    was assumed.
    """
    base, rule_note = _import_datapath(datapath, segment_rule)
    if not isinstance(d, dict) or len(d) != 1:
        raise GQAError(source, "must be an object with exactly one function key, {func: {scale: entry}}")
    (fname, per_scale), = d.items()
    fn = get_function(fname, domain, field=f"{source}: function")
    if not isinstance(per_scale, dict) or not per_scale:
        raise GQAError(f"{fname}", "must map scales to entries", 'e.g. {"0": {"breakpoints": [...], ...}}')
    try:
        scales = sorted(int(e) for e in per_scale)
    except ValueError:
        raise GQAError(f"{fname}", "scale keys must be integers like \"0\"") from None

    entries = {}
    used_keys = set()
    for e in scales:
        entry = per_scale.get(str(e), per_scale.get(e))
        where = f"{fname}.{e}"
        if not isinstance(entry, dict):
            raise GQAError(where, "must be an object with breakpoints, slopes and intercepts")
        parts = {}
        for field in KEYS:
            key, val = _pick(entry, field, where)
            used_keys.add(key)
            parts[field] = _reals(val, f"{where}.{key}")
        entries[e] = parts
    # the coefficients every scale shares: those most scales hold (a single odd scale is the one named)
    coeffs = {e: (tuple(p["slopes"]), tuple(p["intercepts"])) for e, p in entries.items()}
    votes = [list(coeffs.values()).count(c) for c in coeffs.values()]
    ref_scale = scales[int(np.argmax(votes))]
    ref = entries[ref_scale]
    n = ref["slopes"].shape[0]
    for e, parts in entries.items():
        where = f"{fname}.{e}"
        _reals(parts["intercepts"], f"{where}.intercepts", n)
        _reals(parts["breakpoints"], f"{where}.breakpoints", n - 1)
        for name in ("slopes", "intercepts"):
            if not np.array_equal(parts[name], ref[name]):
                agree = [str(s) for s in scales if np.array_equal(entries[s][name], ref[name])]
                raise GQAError(f"{where}.{name}", f"differ from those of scale(s) {', '.join(agree)}",
                               "one GQA-LUT table shares its coefficients across scales")
        if np.any(np.diff(parts["breakpoints"]) < 0):
            raise GQAError(f"{where}.breakpoints", "are not sorted")
        check_breakpoint_range(parts["breakpoints"], scales, f"{where}.breakpoints")

    k_codes = ref["slopes"] * 2.0**base.slope_frac
    b_codes = ref["intercepts"] * 2.0**base.icpt_frac
    for name, codes in (("slopes", k_codes), ("intercepts", b_codes)):
        if not np.all(codes == np.round(codes)):
            i = int(np.flatnonzero(codes != np.round(codes))[0])
            frac = base.slope_frac if name == "slopes" else base.icpt_frac
            raise GQAError(f"{fname}.{ref_scale}.{name}[{i}]", f"{float(ref[name][i])!r} is not a multiple of 2**{-frac}",
                           "give a datapath with more fractional bits")
    if datapath is None:
        base = dataclasses.replace(base, slope_bits=max(base.slope_bits, _min_bits(k_codes.astype(np.int64))),
                                   icpt_bits=max(base.icpt_bits, _min_bits(b_codes.astype(np.int64))))
    k, k_clipped = quantize_coefficients(ref["slopes"], base.slope_format, f"{fname}.slopes", on_overflow)
    b, b_clipped = quantize_coefficients(ref["intercepts"], base.icpt_format, f"{fname}.intercepts", on_overflow)

    codes = {}
    for e in scales:
        c = entries[e]["breakpoints"] * 2.0**e
        if not np.all(c == np.round(c)):
            raise GQAError(f"{fname}.{e}.breakpoints", f"are not rounded to multiples of 2**{-e}")
        codes[e] = base.breakpoint_codes(entries[e]["breakpoints"], e)  # exact integers, clamped by the rule
    finest = entries[scales[-1]]["breakpoints"]
    derived = all(np.array_equal(base.breakpoint_codes(finest, e), codes[e]) for e in scales)
    provenance = {"method": "gqa-lut-reference", "source": source, "keys": sorted(used_keys),
                  "clipped_coefficients": k_clipped + b_clipped, "segment_rule": rule_note}
    if datapath is None and (base.slope_bits > 8 or base.icpt_bits > 8):
        provenance["note"] = (f"coefficients need s{base.slope_bits}.{base.slope_frac} slopes and "
                              f"s{base.icpt_bits}.{base.icpt_frac} intercepts: not an INT8 table")
    return PWLTable(function=fn.name, domain=fn.domain, datapath=base, scales=scales, breakpoints=finest,
                    slopes=k, intercepts=b, explicit_codes=None if derived else codes, provenance=provenance)


def load_gqa_json(path, datapath: PWLDatapath | None = None, domain=None, on_overflow: str = "error",
                  segment_rule: str | None = None) -> PWLTable:
    """Read a GQA-LUT reference JSON file into a :class:`PWLTable` (``segment_rule``: see
    :func:`table_from_gqa_dict`)."""
    return table_from_gqa_dict(read_json(path, "gqa-json"), datapath, domain, on_overflow, source=str(path),
                               segment_rule=segment_rule)


def table_to_gqa_dict(table: PWLTable, legacy_keys: bool = False, segment_rule: str | None = None) -> dict:
    """The GQA-LUT layout: per scale, breakpoints rounded for that scale, shared reals.

    ``segment_rule``: the convention of the evaluator the file is for (default: the table's
    own). The breakpoints are those whose segment starts under that rule are the table's, so
    an evaluator of that rule -- or :func:`table_from_gqa_dict` with that ``segment_rule`` --
    reproduces this table's unit exactly; with the table's own rule they are its comparator
    constants.
    """
    bk, sk, ik = ("split_points", "coeff", "bias") if legacy_keys else ("breakpoints", "slopes", "intercepts")
    name = REFERENCE_NAMES.get(table.function, table.function)
    target = table.datapath if segment_rule is None else \
        dataclasses.replace(table.datapath, segment_rule=check_segment_rule(segment_rule))
    out = {}
    for e in table.scales:
        out[str(e)] = {
            bk: [float(p) for p in target.breakpoints_for_starts(table.segment_starts(e), e)],
            sk: [float(v) for v in table.slopes_real],
            ik: [float(v) for v in table.intercepts_real],
        }
    return {name: out}


def save_gqa_json(table: PWLTable, path, legacy_keys: bool = False, segment_rule: str | None = None):
    """Write the GQA-LUT layout atomically (``segment_rule``: see :func:`table_to_gqa_dict`).

    Codes clamped to the ends of the comparator range are written as such: the file's reals
    reproduce this table's segment starts exactly on import with the same rule.
    """
    for e in table.scales:
        if not math.isfinite(2.0**-e):
            raise GQAError("scales", f"e={e} cannot be written")
    return atomic_write_json(path, table_to_gqa_dict(table, legacy_keys, segment_rule), field="gqa_json")
