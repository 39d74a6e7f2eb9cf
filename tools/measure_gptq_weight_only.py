"""Weight-only int8 MiniLM: GPTQ rounding (intsim.gptq) against round to nearest, per held-out genre.

The FP32 model with only its Linear weights rounded to int8 per output channel (the scale
max |w| / 127 of intsim.layers.quantize_weight, the same in both), the codes chosen by round to
nearest (intsim.attribution.weight_only_model: issue 15's reference) or by GPTQ with each
layer's H = X X^T of its FP32 inputs over the calibration sentences (one sentence at a time, no
padding). Mean cosine and nearest-neighbour agreement to FP32 on every sentence of each genre.
Measures how far better rounding lowers the weight floor of the integer encoder; the integer
model does not use it yet.

    python tools/measure_gptq_weight_only.py [--calib 256]
"""

from __future__ import annotations

import argparse
import copy
import platform
import time

import numpy as np
import torch

from intsim.attribution import weight_only_model
from intsim.bert import Tokenizer, embed_fp32, load_model
from intsim.genres import genre_names, genre_sentences
from intsim.gptq import gptq_round
from intsim.metrics import compare
from intsim.sentences import calibration_sentences


def input_hessians(model, tok, sentences) -> dict[str, np.ndarray]:
    """``X X^T`` of every Linear's inputs over ``sentences``."""
    lin = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    H = {n: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for n, m in lin.items()}

    def hook(name):
        def record(mod, inp, out):
            x = inp[0].detach().double().reshape(-1, inp[0].shape[-1])     # (1, T, K) -> (T, K)
            H[name] += x.T @ x
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in lin.items()]
    try:
        with torch.no_grad():
            for s in sentences:
                ids, mask = tok([s])
                model(torch.as_tensor(ids), torch.as_tensor(mask))
    finally:
        for h in handles:
            h.remove()
    return {n: h.numpy() for n, h in H.items()}


def gptq_model(model, H, bits=8):
    out = copy.deepcopy(model)
    top = (1 << (bits - 1)) - 1
    with torch.no_grad():
        for n, m in out.named_modules():
            if isinstance(m, torch.nn.Linear):
                w = m.weight.detach().double().numpy()
                s = np.maximum(np.abs(w).max(axis=1), 1e-12) / top
                m.weight.copy_(torch.from_numpy(gptq_round(w, H[n], s, bits) * s[:, None]).to(m.weight.dtype))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calib", type=int, default=256, help="generated calibration sentences")
    a = ap.parse_args()
    torch.set_num_threads(1)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"capability {torch.backends.cpu.get_cpu_capability()}")
    model, tok = load_model(), Tokenizer()
    t0 = time.time()
    H = input_hessians(model, tok, calibration_sentences(a.calib))
    gq = gptq_model(model, H)
    print(f"H and GPTQ over {len(H)} layers: {time.time() - t0:.0f} s")
    rtn = weight_only_model(model)
    print("| genre | round to nearest: 1 - cos / NN % | GPTQ: 1 - cos / NN % |")
    print("|---|---|---|")
    for g in genre_names():
        sents = genre_sentences(g)
        ref = embed_fp32(model, tok, sents)
        r, q = compare(embed_fp32(rtn, tok, sents), ref), compare(embed_fp32(gq, tok, sents), ref)
        print(f"| {g} ({len(sents)}) | {1 - r['mean_cosine']:.2e} / {100 * r['nn_agreement']:.1f} | "
              f"{1 - q['mean_cosine']:.2e} / {100 * q['nn_agreement']:.1f} |")


if __name__ == "__main__":
    main()
