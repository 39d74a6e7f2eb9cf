"""Accuracy on held-out text by genre: the integer encoder against FP32 and the weight-only-int8 reference.

    python benchmarks/bench_genres.py                                  # the default config, every genre
    python benchmarks/bench_genres.py --config a.toml --config b.json  # several configs, one run
    python benchmarks/bench_genres.py --attribute --figure out.png     # + per-site attribution per genre

Per genre (intsim.genres: technical documentation with many near-duplicates, legal,
conversational, news; >= 300 sentences each, none of them calibration text -- checked here) and
per config: mean cosine of the integer embeddings to FP32 and nearest-neighbour agreement, beside
the weight-only-int8 reference measured in the same run (the FP32 model with only its Linear
weights rounded to int8 per output channel, :func:`intsim.attribution.weight_only_model`), the NN
difference in points, and issue 15's targets: mean cosine >= 0.999 and NN no more than 2 points
below the reference (PASS/FAIL). Calibration: ``--calib`` generated sentences
(:func:`intsim.sentences.calibration_sentences`), never the evaluation text.
``--attribute``: the per-site attribution (aggregated over layers) of the first config on each
genre's first ``--attribute-n`` sentences.

Costs beside the accuracy (issue 15: a wider unit input or per-site width only with its area and
power reported beside the all-INT8 preset's accuracy): per config, the GELU unit of its table
(``hw_models`` ``estimate``: 28 nm, 500 MHz, paper-calibrated) and its exp unit, the widest GEMM operand and the
energy per inference of the whole integer datapath (``hw_models.model_energy`` of the op counts
over the first ``--cost-n`` technical sentences).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

from intsim.attribution import attribute, table_markdown, weight_only_model  # noqa: E402
from intsim.bert import Tokenizer, embed_fp32, load_model  # noqa: E402
from intsim.calibration import calibrate  # noqa: E402
from intsim.config import SimConfig  # noqa: E402
from intsim.genres import genre_names, genre_sentences  # noqa: E402
from intsim.int_bert import IntBert, embed_int  # noqa: E402
from intsim.metrics import compare  # noqa: E402
from intsim.sentences import calibration_sentences  # noqa: E402

COS_TARGET, NN_POINTS = 0.999, 2.0


def load_configs(paths) -> list[tuple[str, SimConfig]]:
    if not paths:
        return [("default", SimConfig())]
    return [("default", SimConfig()) if p == "default" else (Path(p).stem, SimConfig.load(p)) for p in paths]


def measure(model, tok, configs, calib, genres, n=None, batch=64):
    """Rows ``{genre, config, mean_cosine, nn, wo_cosine, wo_nn, nn_points, pass_cos, pass_nn}``."""
    wo = weight_only_model(model)
    encoders = [(label, IntBert(model, calib, cfg)) for label, cfg in configs]
    rows = []
    for g in genres:
        sents = genre_sentences(g, n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = embed_fp32(model, tok, sents, batch)
            w = compare(embed_fp32(wo, tok, sents, batch), ref)
        for label, enc in encoders:
            c = compare(embed_int(enc, tok, sents, batch), ref)
            pts = 100 * (w["nn_agreement"] - c["nn_agreement"])
            rows.append(dict(genre=g, sentences=len(sents), config=label, mean_cosine=c["mean_cosine"],
                             min_cosine=c["min_cosine"], nn=c["nn_agreement"], wo_cosine=w["mean_cosine"],
                             wo_nn=w["nn_agreement"], nn_points=pts, pass_cos=c["mean_cosine"] >= COS_TARGET,
                             pass_nn=pts <= NN_POINTS))
    return rows


def costs(model, tok, configs, calib, sentences):
    """Per config: ``{config, gelu_table, gelu_in_bits, unit_um2, unit_mw, exp_table, exp_um2, exp_mw,
    max_operand_bits, energy_nj, gemm_nj, nonlinear_nj}`` (module docstring)."""
    from hw_models import UnitConfig, model_energy
    from hw_models.pwl_unit import estimate

    from intsim.opstats import OpStats

    out = []
    ids, mask = tok(sentences)
    for label, cfg in configs:
        enc = IntBert(model, calib, cfg)
        stats = OpStats()
        enc.pooled(ids, mask, stats)
        d = stats.to_dict()
        e = model_energy(d)["int"]
        unit = estimate(UnitConfig.from_table(cfg.gelu_table, None))
        exp_unit = estimate(UnitConfig.from_table(cfg.exp_table, None))
        n = len(sentences)
        out.append(dict(config=label, gelu_table=cfg.to_dict()["gelu_table"], gelu_in_bits=enc.blocks[0].gelu.in_bits,
                        unit_um2=unit.area_um2, unit_mw=unit.power_mw,
                        exp_table=cfg.to_dict()["exp_table"], exp_um2=exp_unit.area_um2, exp_mw=exp_unit.power_mw,
                        max_operand_bits=max(m["a_bits"] for m in d["mac"]),
                        energy_nj=e["total_pj"] / n * 1e-3, gemm_nj=e["gemm_pj"] / n * 1e-3,
                        nonlinear_nj=e["nonlinear_pj"] / n * 1e-3))
    return out


def costs_markdown(rows) -> str:
    base = rows[0]
    out = ["| config | GELU table (input bits) | GELU unit um2 | mW | exp table | exp unit um2 | mW | widest GEMM operand "
           "| energy / inference nJ (GEMM + non-linear) | vs first |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['config']} | {r['gelu_table']} ({r['gelu_in_bits']}) | {r['unit_um2']:.0f} | {r['unit_mw']:.3f} "
                   f"| {r['exp_table']} | {r['exp_um2']:.0f} | {r['exp_mw']:.3f} "
                   f"| {r['max_operand_bits']} b | {r['energy_nj']:.0f} ({r['gemm_nj']:.0f} + {r['nonlinear_nj']:.0f}) "
                   f"| {100 * (r['energy_nj'] / base['energy_nj'] - 1):+.2f}% |")
    return "\n".join(out)


def markdown(rows) -> str:
    out = ["| genre | config | mean cos | NN % | weight-only int8: cos | NN % | NN points below | "
           f"cos >= {COS_TARGET} | NN within {NN_POINTS:g} pts |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['genre']} ({r['sentences']}) | {r['config']} | {r['mean_cosine']:.5f} | {100 * r['nn']:.1f} "
                   f"| {r['wo_cosine']:.5f} | {100 * r['wo_nn']:.1f} | {r['nn_points']:+.1f} "
                   f"| {'PASS' if r['pass_cos'] else 'FAIL'} | {'PASS' if r['pass_nn'] else 'FAIL'} |")
    return "\n".join(out)


def plot(rows, path):
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from intsim.fileio import atomic_write_bytes

    genres = list(dict.fromkeys(r["genre"] for r in rows))
    configs = list(dict.fromkeys(r["config"] for r in rows))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
    x = np.arange(len(genres))
    width = 0.8 / (len(configs) + 1)
    wo = {r["genre"]: r for r in rows}
    a1.bar(x, [1 - wo[g]["wo_cosine"] for g in genres], width, label="weight-only int8", color="grey")
    a2.bar(x, [100 * wo[g]["wo_nn"] for g in genres], width, label="weight-only int8", color="grey")
    for j, c in enumerate(configs):
        by = {r["genre"]: r for r in rows if r["config"] == c}
        a1.bar(x + (j + 1) * width, [1 - by[g]["mean_cosine"] for g in genres], width, label=c)
        a2.bar(x + (j + 1) * width, [100 * by[g]["nn"] for g in genres], width, label=c)
    a1.axhline(1 - COS_TARGET, color="red", ls="--", lw=0.8, label=f"target 1 - cos = {1 - COS_TARGET:.0e}")
    a1.set_yscale("log")
    a1.set_ylabel("1 - mean cosine to FP32")
    a2.set_ylabel("nearest-neighbour agreement with FP32 (%)")
    a2.set_ylim(min(100 * r["nn"] for r in rows) - 3, 100.5)
    for a in (a1, a2):
        a.set_xticks(x + 0.4 - width / 2, genres)
        a.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue(), "--figure")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", action="append", help="a datapath config file, or 'default' (repeatable)")
    ap.add_argument("--genres", help="comma-separated subset of " + ", ".join(genre_names()))
    ap.add_argument("--n", type=int, help="first N sentences of each genre (default all)")
    ap.add_argument("--calib", type=int, default=256, help="generated calibration sentences (256)")
    ap.add_argument("--attribute", action="store_true", help="per-site attribution of the first config per genre")
    ap.add_argument("--attribute-n", type=int, default=96, help="sentences per genre for --attribute (96)")
    ap.add_argument("--cost-n", type=int, default=64, help="technical sentences the energy is counted on (64)")
    ap.add_argument("--json", help="write the rows (and attributions) here")
    ap.add_argument("--figure", help="bar chart of the per-genre accuracy (PNG)")
    a = ap.parse_args(argv)
    genres = genre_names() if not a.genres else [g.strip() for g in a.genres.split(",")]
    print(f"machine: {machine()}")
    configs = load_configs(a.config)
    model, tok = load_model(), Tokenizer()
    calib_text = calibration_sentences(a.calib)
    held_out = {s for g in genres for s in genre_sentences(g)}
    if held_out & set(calib_text):
        raise SystemExit("calibration text overlaps the evaluation text")
    t0 = time.perf_counter()
    calib = calibrate(model, tok, calib_text)
    print(f"calibrated on {calib.sentences} generated sentences in {time.perf_counter() - t0:.1f} s")
    for label, cfg in configs:
        print(f"config {label}: {cfg.describe()}")
    t0 = time.perf_counter()
    rows = measure(model, tok, configs, calib, genres, a.n)
    print(f"measured in {time.perf_counter() - t0:.1f} s\n")
    print(markdown(rows))
    cost_rows = costs(model, tok, configs, calib, genre_sentences("technical", a.cost_n))
    print(f"\ncosts (energy per inference over the first {a.cost_n} technical sentences):\n")
    print(costs_markdown(cost_rows))
    out = {"machine": machine(), "calibration_sentences": calib.sentences, "rows": rows, "costs": cost_rows,
           "attribution": {}}
    if a.attribute:
        enc = IntBert(model, calib, configs[0][1])
        for g in genres:
            r = attribute(enc, model, tok, genre_sentences(g, a.attribute_n), progress=True)
            out["attribution"][g] = r
            print(f"\nattribution, {g} ({r['sentences']} sentences), config {configs[0][0]}:")
            print(table_markdown(r))
    if a.json:
        from intsim.fileio import atomic_write_json
        atomic_write_json(a.json, out, "--json")
    if a.figure:
        plot(rows, a.figure)
        print(f"wrote {a.figure}")
    fails = sum(not (r["pass_cos"] and r["pass_nn"]) for r in rows)
    print(f"\ntargets met on {len(rows) - fails} of {len(rows)} (genre, config) pairs")
    return out


if __name__ == "__main__":
    main()
