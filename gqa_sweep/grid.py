"""The grid: the spec's points in order, their keys, and the results file's columns."""

from __future__ import annotations

import itertools

from .spec import method_options

HW_COLUMNS = ("int_area_um2", "int_power_mw", "int_energy_pj", "fp32_area_um2", "fp32_power_mw", "fp32_energy_pj",
              "int32_area_um2", "int32_power_mw", "area_saving_pct", "power_saving_pct")

MINILM_COLUMNS = ("mean_cosine", "min_cosine", "nn_agreement", "minilm_note")
LLM_COLUMNS = ("ppl_int", "ppl_fp32", "ppl_ratio", "top1_agreement", "llm_tokens", "llm_note")
MODEL_AXES = {"minilm": MINILM_COLUMNS, "llm": LLM_COLUMNS}     # spec key -> its columns (one axis per spec)


def model_axis(spec: dict) -> str | None:
    """The spec's model axis (``minilm`` or ``llm``), or None."""
    return next((k for k in MODEL_AXES if spec.get(k)), None)


def point_key(function: str, entries: int, fmt: str, method: str, config: str | None = None) -> str:
    key = f"{function}/n{entries}/{fmt}/{method}"
    return key if config is None else f"{key}/{config}"


def expand(spec: dict) -> list[dict]:
    """The grid's points in order (functions x entries x formats x methods [x model configs])."""
    axis = model_axis(spec)
    configs = list(spec[axis]["configs"]) if axis else [None]
    points = []
    for f, n, fmt, m, c in itertools.product(spec["functions"], spec["entries"], spec["formats"], spec["methods"],
                                             configs):
        p = {"index": len(points), "key": point_key(f, n, fmt, m, c), "function": f, "domain": spec["domains"][f],
             "scales": spec["scales"][f], "entries": n, "format": fmt, "datapath": spec["formats"][fmt],
             "method": m, "seed": spec["seed"], "options": method_options(spec, m), "hw": spec["hw"],
             "minilm": None}
        if axis:
            p[axis] = {k: v for k, v in spec[axis].items() if k != "configs"}
            p[axis].update(config=c, options=spec[axis]["configs"][c])
        points.append(p)
    return points


def columns(spec: dict) -> list[str]:
    scales = sorted({e for s in spec["scales"].values() for e in s})
    axis = model_axis(spec)
    cols = ["index", "key", "function", "entries", "format", "method"]
    if axis:
        cols.append(f"{axis}_config")
    cols += ["in_bits", "slope_bits", "slope_frac", "icpt_bits", "icpt_frac", "scales", "mean_mse", "max_abs"]
    cols += [f"mse_e{e}" for e in scales] + [f"max_abs_e{e}" for e in scales]
    cols += ["clipped", *HW_COLUMNS]
    if axis:
        cols += list(MODEL_AXES[axis])
    cols += ["error", "table"]
    return cols
