"""Perplexity ratio (integer / FP32) and top-1 agreement of the integer decoder on held-out genre
texts (intsim/data/genres/), for the default config or overrides: the attempts of docs/llm.md's
integer section. Prints one JSON object per (config, genre).

    python tools/measure_int_llama.py --genres legal news --context 256 --max-tokens 2048 \
        --set residual_bits=16 --set outliers=smooth
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from intsim.genres import genre_sentences
from intsim.int_llama import build, default_config
from intsim.perplexity import compare


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--genres", nargs="+", default=["legal", "news"])
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=None, help="the first N tokens of each text")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--weights", default="w8", help="w8 or q4_1")
    ap.add_argument("--set", action="append", default=[], help="config override key=value (JSON value)")
    a = ap.parse_args()
    over = {}
    for kv in a.set:
        k, v = kv.split("=", 1)
        try:
            over[k] = json.loads(v)
        except json.JSONDecodeError:
            over[k] = v
    torch.set_num_threads(1)
    im, fm, tok = build(default_config(**over), weights=a.weights, layers=a.layers, progress=True)
    for g in a.genres:
        ids = tok.encode("\n".join(genre_sentences(g)))[: a.max_tokens]
        t0 = time.time()
        r = compare(im, fm, ids, a.context, progress=True)
        print(json.dumps({"genre": g, "context": a.context, "weights": a.weights, "overrides": over, **r,
                          "seconds": round(time.time() - t0, 1), "cpu": platform.processor() or platform.machine()}),
              flush=True)


if __name__ == "__main__":
    main()
