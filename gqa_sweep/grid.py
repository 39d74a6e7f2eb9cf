"""The grid: the spec's points in order, their keys, and the results file's columns."""

from __future__ import annotations

import itertools

from .spec import method_options

HW_COLUMNS = ("int_area_um2", "int_power_mw", "int_energy_pj", "fp32_area_um2", "fp32_power_mw", "fp32_energy_pj",
              "int32_area_um2", "int32_power_mw", "area_saving_pct", "power_saving_pct")

MINILM_COLUMNS = ("mean_cosine", "min_cosine", "nn_agreement", "minilm_note")


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
             "method": m, "seed": spec["seed"], "options": method_options(spec, m), "hw": spec["hw"],
             "minilm": None}
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
