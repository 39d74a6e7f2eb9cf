"""Energy per inference from intsim's op statistics: GEMM against non-linear, INT against FP32.

Input: the op-statistics dict of intsim's integer encoder (counts per inference)::

    {"mac":     [{"op": "qkv", "a_bits": 8, "b_bits": 8, "acc_bits": 32, "count": n}, ...],
     "lut":     [{"op": "gelu", "table": "gelu", "entries": 16, "in_bits": 8, "count": n}, ...],
     "add":     [{"op": str, "bits": int, "count": n}],
     "mul":     [{"op": str, "a_bits": int, "b_bits": int, "count": n}],
     "shift":   [{"op": str, "bits": int, "count": n}],
     "compare": [{"op": str, "bits": int, "count": n}],
     "div":     [{"op": str, "bits": int, "count": n}]}

Every group is optional. ``lut`` entries may also give ``slope_bits``/``icpt_bits`` (default:
intsim's datapath defaults) and ``scales`` (a list of exponents, default 0..6).

Energy per operation (pJ, :class:`hw_models.scaling.ComponentLibrary` at ``node``):

=========  ===================================  =========================================
group      integer datapath                     FP32 counterpart
=========  ===================================  =========================================
mac        int_mult(a, b) + int_add(acc_bits)   fp32 mult + fp32 add
lut        the PWL unit's energy per evaluation  the FP32 PWL unit's energy per evaluation
           (programmable, no I/O registers)
add        int_add(bits)                        fp32 add
mul        int_mult(a, b)                       fp32 mult
shift      barrel shifter (bits, 0..bits-1)     int_add(8): a power-of-two scale is an
                                                exponent add
compare    compare(bits)                        fp32 compare
div        int_div(bits) (restoring array)      fp32 div (restoring, 24-bit significand)
=========  ===================================  =========================================

FP32 add and mult are the structural units of :meth:`hw_models.scaling.ComponentLibrary.fp_parts`
(built from the integer primitives); Horowitz's monolithic FP rows are a cross-check only.

Output: pJ per inference, ``gemm`` (the ``mac`` group) and ``nonlinear`` (everything else),
for both datapaths, with per-group and per-op sums and the savings in percent.
"""

from __future__ import annotations

from intsim import GQAError, PWLDatapath

from .pwl_unit import UnitConfig, _resolve_calibration, estimate, estimate_fp
from .scaling import ComponentLibrary

GROUPS = ("mac", "lut", "add", "mul", "shift", "compare", "div")
REQUIRED = {"mac": ("op", "a_bits", "b_bits", "acc_bits", "count"),
            "lut": ("op", "entries", "in_bits", "count"),
            "add": ("op", "bits", "count"), "mul": ("op", "a_bits", "b_bits", "count"),
            "shift": ("op", "bits", "count"), "compare": ("op", "bits", "count"), "div": ("op", "bits", "count")}
OPTIONAL = {"lut": ("table", "slope_bits", "icpt_bits", "scales")}


def _int_field(entry: dict, key: str, where: str, minimum: int) -> int:
    v = entry[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise GQAError(f"{where}.{key}", f"must be an integer >= {minimum}, got {v!r}")
    return v


REPORT_KEYS = ("accumulators", "saturations", "total_overflows")


def check_stats(stats) -> dict[str, list[dict]]:
    """Validate the op-statistics dict; returns it with every group present."""
    if not isinstance(stats, dict):
        raise GQAError("stats", f"must be a dict of op groups, got {type(stats).__name__}")
    # intsim.opstats.OpStats.to_dict() also carries its width report: not ops, not priced here
    unknown = sorted(set(stats) - set(GROUPS) - set(REPORT_KEYS))
    if unknown:
        raise GQAError(f"stats.{unknown[0]}", "unknown op group", f"known groups: {', '.join(GROUPS)}")
    out = {}
    for group in GROUPS:
        entries = stats.get(group, [])
        if not isinstance(entries, list):
            raise GQAError(f"stats.{group}", f"must be a list of entries, got {type(entries).__name__}")
        for i, e in enumerate(entries):
            where = f"stats.{group}[{i}]"
            if not isinstance(e, dict):
                raise GQAError(where, f"must be a dict, got {type(e).__name__}")
            missing = [k for k in REQUIRED[group] if k not in e]
            if missing:
                raise GQAError(f"{where}.{missing[0]}", "is missing", f"a {group} entry has {', '.join(REQUIRED[group])}")
            extra = sorted(set(e) - set(REQUIRED[group]) - set(OPTIONAL.get(group, ())))
            if extra:
                raise GQAError(f"{where}.{extra[0]}", "unknown key",
                               f"a {group} entry has {', '.join(REQUIRED[group] + OPTIONAL.get(group, ()))}")
            if not isinstance(e["op"], str):
                raise GQAError(f"{where}.op", f"must be a string, got {e['op']!r}")
            _int_field(e, "count", where, 0)
            for k in REQUIRED[group]:
                if k not in ("op", "count"):
                    _int_field(e, k, where, 2 if k == "entries" else 1)
        out[group] = entries
    return out


class _Pricer:
    """Energy per operation of each entry, for both datapaths, cached per configuration."""

    def __init__(self, node, calibration):
        self.lib = ComponentLibrary(node)
        self.cal = _resolve_calibration(calibration)
        self._lut = {}

    def lut(self, e: dict, where: str) -> tuple[float, float]:
        scales = e.get("scales", range(7))
        if not isinstance(scales, (list, tuple, range)):
            raise GQAError(f"{where}.scales", f"must be a list of scale exponents, got {scales!r}")
        key = (e["entries"], e["in_bits"], e.get("slope_bits"), e.get("icpt_bits"), tuple(scales))
        if key not in self._lut:
            kw = {k: e[k] for k in ("slope_bits", "icpt_bits") if k in e}
            try:
                dp = PWLDatapath(in_bits=e["in_bits"], **kw)
                cfg = UnitConfig.from_datapath(dp, e["entries"], scales, programmable=True,
                                               pipeline=0, io_registers=False, label="lut")
            except GQAError as exc:
                raise GQAError(f"{where}.{exc.field}", str(exc).split(": ", 1)[-1]) from None
            self._lut[key] = (estimate(cfg, self.lib.node, calibration=self.cal).energy_pj,
                              estimate_fp(cfg, "fp32", self.lib.node, calibration=self.cal).energy_pj)
        return self._lut[key]

    def price(self, group: str, e: dict, where: str) -> tuple[float, float]:
        lib, k = self.lib, self.cal.energy
        if group == "lut":
            return self.lut(e, where)
        if group == "mac":
            i = lib.int_mult(e["a_bits"], e["b_bits"]) + lib.int_add(e["acc_bits"])
            f = lib.fp("fp32", "mult") + lib.fp("fp32", "add")
        elif group == "add":
            i, f = lib.int_add(e["bits"]), lib.fp("fp32", "add")
        elif group == "mul":
            i, f = lib.int_mult(e["a_bits"], e["b_bits"]), lib.fp("fp32", "mult")
        elif group == "shift":
            i, f = lib.barrel_shifter(e["bits"], e["bits"] - 1), lib.int_add(8)
        elif group == "compare":
            i, f = lib.compare(e["bits"]), lib.fp("fp32", "compare")
        else:  # div
            i, f = lib.int_div(e["bits"]), lib.fp("fp32", "div")
        return i.energy_pj * k, f.energy_pj * k


def model_energy(stats: dict, node=28, calibration="none") -> dict:
    """Energy per inference (pJ) of the integer datapath and its FP32 counterpart.

    Returns ``{"node_nm", "calibration", "int": side, "fp32": side, "savings_pct"}`` where a side is
    ``{"gemm_pj", "nonlinear_pj", "total_pj", "gemm_share", "by_group": {group: pJ},
    "by_op": {op: pJ}}``; ``savings_pct`` compares int with fp32 for gemm, nonlinear and total.
    """
    stats = check_stats(stats)
    pricer = _Pricer(node, calibration)
    sides = {s: {"by_group": {g: 0.0 for g in GROUPS}, "by_op": {}} for s in ("int", "fp32")}
    for group in GROUPS:
        for i, e in enumerate(stats[group]):
            e_int, e_fp = pricer.price(group, e, f"stats.{group}[{i}]")
            for side, per_op in (("int", e_int), ("fp32", e_fp)):
                pj = per_op * e["count"]
                sides[side]["by_group"][group] += pj
                sides[side]["by_op"][e["op"]] = sides[side]["by_op"].get(e["op"], 0.0) + pj
    for side in sides.values():
        side["gemm_pj"] = side["by_group"]["mac"]
        side["nonlinear_pj"] = sum(v for g, v in side["by_group"].items() if g != "mac")
        side["total_pj"] = side["gemm_pj"] + side["nonlinear_pj"]
        side["gemm_share"] = side["gemm_pj"] / side["total_pj"] if side["total_pj"] > 0 else 0.0
    savings = {}
    for key in ("gemm_pj", "nonlinear_pj", "total_pj"):
        ref = sides["fp32"][key]
        savings[key.removesuffix("_pj")] = 100.0 * (1 - sides["int"][key] / ref) if ref > 0 else 0.0
    return {"node_nm": pricer.lib.node, "calibration": pricer.cal.to_dict(), "int": sides["int"],
            "fp32": sides["fp32"], "savings_pct": savings}
