"""What dropping RMSNorm's epsilon changes on SmolLM2-135M's residual stream (intsim.layernorm's docstring).

Runs the FP32 reference decoder over the first 512 tokens of intsim/data/sentences.txt, hooks every
RMSNorm input (61 norms), and reports the smallest per-token ``mean(x**2)`` and the largest relative
change of the norm's output from dropping ``eps``: ``1 - sqrt(ms / (ms + eps))``.

    python tools/measure_rmsnorm_eps.py
"""

from pathlib import Path

import torch

from intsim.gguf_model import load_tokenizer
from intsim.llama import RMSNorm, load_model

TEXT = Path(__file__).resolve().parent.parent / "intsim" / "data" / "sentences.txt"


def main(tokens: int = 512):
    model, tok = load_model(), load_tokenizer()
    ids = torch.tensor([tok.encode(TEXT.read_text())[:tokens]])
    ms = {}

    def hook(name):
        return lambda mod, inp: ms.__setitem__(name, inp[0].double().pow(2).mean(-1).flatten())

    for name, mod in model.named_modules():
        if isinstance(mod, RMSNorm):
            mod.register_forward_pre_hook(hook(name))
    with torch.inference_mode():
        model(ids)
    eps = model.config.norm_eps
    worst = min(ms, key=lambda n: float(ms[n].min()))
    lo = float(ms[worst].min())
    print(f"{len(ms)} RMSNorms, {ids.shape[1]} tokens, eps {eps:g}")
    print(f"smallest mean(x**2): {lo:.4g} at {worst}; largest relative change from dropping eps: "
          f"{1 - (lo / (lo + eps)) ** 0.5:.3g}")
    for name in sorted(ms, key=lambda n: float(ms[n].min()))[:5]:
        print(f"  {name:<28} min mean(x**2) {float(ms[name].min()):.4g}  median {float(ms[name].median()):.4g}")


if __name__ == "__main__":
    main()
