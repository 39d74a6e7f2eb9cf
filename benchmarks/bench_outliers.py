"""The outlier toolbox on all-MiniLM-L6-v2, per held-out genre: accuracy and cost of every method.

    python benchmarks/bench_outliers.py                  # every method, every genre (about 12 min on 2 cores)
    python benchmarks/bench_outliers.py --genres technical --methods default none os_plus

Calibrated once on the generated calibration sentences (never the evaluation text); evaluated on
each genre set of :mod:`intsim.genres`: mean cosine and nearest-neighbour agreement of the integer
embeddings to FP32, beside the weight-only-int8 FP32 model (every Linear's weights rounded to int8
per output channel, activations FP32) measured in the same run. Cost per configuration on one
batch of 16 sentences: MACs (channel splitting grows the GEMMs' K) and the energy of the integer
datapath from :func:`hw_models.model_energy` (28 nm), relative to the default.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

from hw_models.model_energy import model_energy  # noqa: E402
from intsim.bert import Tokenizer, embed_fp32, load_model  # noqa: E402
from intsim.calibration import calibrate  # noqa: E402
from intsim.config import SimConfig  # noqa: E402
from intsim.genres import genre_names, genre_sentences  # noqa: E402
from intsim.int_bert import IntBert, embed_int  # noqa: E402
from intsim.layers import quantize_weight  # noqa: E402
from intsim.metrics import compare  # noqa: E402
from intsim.opstats import OpStats  # noqa: E402
from intsim.sentences import calibration_sentences  # noqa: E402

METHODS = {  # name -> (label, config overrides)
    "default": ("default: smooth (a=0.7) + per-token", {}),
    "none": ("none (per-tensor int8, 99.99th percentile)", dict(outliers="none")),
    "gamma_migration": ("OS gamma migration", dict(outliers="gamma_migration")),
    "token_clip": ("OS token-wise clipping", dict(outliers="none", act_clip="token")),
    "os": ("OS (gamma migration + token-wise clipping)", dict(outliers="gamma_migration", act_clip="token")),
    "os_shift": ("OS+ shifting", dict(outliers="os_shift")),
    "os_plus": ("OS+ shifting + scaling", dict(outliers="os_shift+os_scale")),
    "split": ("channel splitting (ratio 8)", dict(outliers="split")),
    "mse_clip": ("MSE clipping", dict(outliers="none", act_clip="mse")),
    "smooth": ("SmoothQuant a=0.7 (static)", dict(outliers="smooth")),
    "default+os_shift": ("default + OS+ shifting", dict(outliers="smooth+per_token+os_shift")),
    "default+gm+shift": ("default + gamma migration + OS+ shifting",
                         dict(outliers="smooth+per_token+gamma_migration+os_shift")),
    "all_static": ("gamma migration + OS+ + split + MSE clipping (static)",
                   dict(outliers="gamma_migration+os_shift+os_scale+split", act_clip="mse")),
    "default+gelu_in12": ("default + 12-bit GELU unit input (gelu16_in12)", dict(gelu_table="gelu16_in12")),
    "default+gelu_in12+shift": ("default + gelu16_in12 + OS+ shifting",
                                dict(gelu_table="gelu16_in12", outliers="smooth+per_token+os_shift")),
    "site6_ffn_in": ("default, FFN-in operands (LayerNorm 1 copies) at 6 bits", dict(site_bits={"blocks.*.ln1_out": 6})),
    "site6_qkv": ("default, QKV operands (emb / LayerNorm 2 copies) at 6 bits",
                  dict(site_bits={"emb.ln_out": 6, "blocks.*.ln2_out": 6})),
}


def weight_only_int8(model):
    """A copy of ``model`` with every Linear's weights rounded to int8 per output channel (the
    integer path's weight quantization, :func:`intsim.layers.quantize_weight`); activations FP32."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.Linear):
                q, s = quantize_weight(mod.weight.detach().numpy().astype(np.float64), 8, True)
                mod.weight.copy_(torch.from_numpy((q.astype(np.float64) * s[:, None]).astype(np.float32)))
    return m


def cost(enc, tok, sentences) -> dict:
    stats = OpStats()
    ids, mask = tok(sentences)
    enc.pooled(ids, mask, stats)
    d = stats.to_dict()
    e = model_energy(d)
    return {"macs": sum(x["count"] for x in d["mac"]), "int_pj": e["int"]["total_pj"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--genres", nargs="*", default=list(genre_names()), choices=genre_names())
    p.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--calib", type=int, default=256, help="calibration sentences")
    a = p.parse_args(argv)
    warnings.simplefilter("ignore")
    print(f"machine: {machine()}")
    model, tok = load_model(), Tokenizer()
    t0 = time.perf_counter()
    calib = calibrate(model, tok, calibration_sentences(a.calib))
    print(f"calibration: {calib.sentences} generated sentences, {calib.tokens} tokens ({time.perf_counter() - t0:.0f} s)")
    sets = {g: genre_sentences(g) for g in a.genres}
    refs = {g: embed_fp32(model, tok, s) for g, s in sets.items()}
    wo = weight_only_int8(model)
    rows = {"weight-only int8 (FP32 activations)": {g: compare(embed_fp32(wo, tok, s), refs[g]) for g, s in sets.items()}}
    costs = {}
    probe = calibration_sentences(16)
    for key in a.methods:
        label, over = METHODS[key]
        t = time.perf_counter()
        enc = IntBert(model, calib, SimConfig(**over))
        build = time.perf_counter() - t
        rows[label] = {g: compare(embed_int(enc, tok, s), refs[g]) for g, s in sets.items()}
        costs[label] = cost(enc, tok, probe)
        print(f"  {label:58s} " + "  ".join(f"{g} {c['mean_cosine']:.5f}/{100 * c['nn_agreement']:.1f}%"
                                            for g, c in rows[label].items())
              + f"  (build {build:.1f} s, {time.perf_counter() - t:.0f} s)", flush=True)
    print()
    print(markdown(rows, costs, a.genres))
    return rows, costs


def markdown(rows, costs, genres) -> str:
    base = costs.get(METHODS["default"][0])
    head = "| method | " + " | ".join(f"{g} cos / NN" for g in genres) + " | MACs | energy |"
    out = [head, "|---" * (len(genres) + 3) + "|"]
    for label, per in rows.items():
        cells = [f"{per[g]['mean_cosine']:.5f} / {100 * per[g]['nn_agreement']:.1f}%" for g in genres]
        c = costs.get(label)
        extra = ["", ""] if c is None or base is None else [f"{c['macs'] / base['macs']:.3f}x",
                                                             f"{c['int_pj'] / base['int_pj']:.3f}x"]
        out.append(f"| {label} | " + " | ".join(cells + extra) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
