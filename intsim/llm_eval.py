"""The integer decoder against its FP32 reference: perplexity and top-1 agreement over a text,
greedy generations side by side, and prefill / decode timing (what ``gqa llm`` prints).

Definitions (the issue's):

- perplexity: :mod:`intsim.perplexity` for both models on the same windows (the text as one token
  stream, no BOS, non-overlapping windows of ``context`` tokens); ``ppl_ratio = ppl_int / ppl_fp32``;
- top-1 agreement: the fraction of predicted positions where the integer model's arg-max equals
  FP32's;
- generation: both greedy with their KV caches; ``diverges_at`` is the first new-token index
  where they differ (None: equal throughout);
- prefill time: one forward over a prompt of ``seq`` tokens; decode tokens/s: ``n`` greedy tokens
  after that prompt, timed as ``generate(prompt, n + 1) - generate(prompt, 1)`` (the same prefill
  in both, so the difference is ``n`` cached single-token steps). Repeats are interleaved (a burst
  of load from elsewhere slows both models alike) and the median is kept.

The integer model is any object with ``logits(ids, cache=None, stats=None)``, ``generate(ids, n,
eos_id=None, progress=False)`` and ``config.max_seq_len`` (:class:`intsim.int_llama.IntLlama`); the
FP32 one an :class:`intsim.llama.Llama`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import GQAError
from .perplexity import check_context, perplexity, token_stream


class _CountingModel:
    """The integer model as :func:`intsim.perplexity.perplexity` calls it, counting its operations
    into ``stats`` (an :class:`~intsim.opstats.OpStats` or None) and the tokens it processed."""

    def __init__(self, int_model, stats):
        self.model, self.stats, self.config, self.tokens = int_model, stats, int_model.config, 0

    def __call__(self, ids):
        ids = ids.numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
        self.tokens += ids.size
        return torch.from_numpy(self.model.logits(ids, stats=self.stats))


@dataclass(frozen=True)
class TextComparison:
    ppl_int: float
    ppl_fp32: float
    ppl_ratio: float
    top1_agreement: float
    tokens: int              # predicted tokens
    windows: int
    processed_tokens: int    # tokens the integer model ran (what op statistics count)

    def to_dict(self) -> dict:
        return asdict(self)


def compare_text(int_model, fp32_model, tokenizer, text: str, context: int = 512, stats=None,
                 progress: bool = False) -> TextComparison:
    """Perplexity of both models over ``text`` and their top-1 agreement; ``stats`` counts the integer run."""
    context = check_context(context, int_model.config.max_seq_len)
    ids = token_stream(tokenizer, text)
    counting = _CountingModel(int_model, stats)
    p_int = perplexity(counting, ids, context, progress=progress)
    p_fp = perplexity(fp32_model, ids, context)
    return TextComparison(ppl_int=p_int.ppl, ppl_fp32=p_fp.ppl, ppl_ratio=p_int.ppl / p_fp.ppl,
                          top1_agreement=float(np.mean(p_int.top1 == p_fp.top1)), tokens=p_int.tokens,
                          windows=p_int.windows, processed_tokens=counting.tokens)


@dataclass(frozen=True)
class GenerationComparison:
    prompt_ids: list
    int_ids: list
    fp32_ids: list
    diverges_at: int | None

    def to_dict(self) -> dict:
        return asdict(self)


def first_difference(a, b) -> int | None:
    """The first index where two id lists differ (a shorter list differs where it ends); None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def compare_generation(int_model, fp32_model, prompt_ids, max_new_tokens: int, eos_id=None,
                       progress: bool = False) -> GenerationComparison:
    """Greedy generations of both models from the same prompt, and where they part."""
    from .llama import generate

    ints = int_model.generate(prompt_ids, max_new_tokens, eos_id=eos_id, progress=progress)
    fps = generate(fp32_model, prompt_ids, max_new_tokens, eos_id=eos_id)
    return GenerationComparison(list(prompt_ids), ints, fps, first_difference(ints, fps))


def genre_text(name: str) -> str:
    """A held-out genre's sentences (:mod:`intsim.genres`) as one text, one sentence a line."""
    from .genres import genre_sentences

    return "\n".join(genre_sentences(name))


def bench_prompt(seq: int, vocab: int, seed: int = 0) -> list[int]:
    """``seq`` random ordinary-token ids (the timing workload; ids below 256 and the control tokens avoided)."""
    rng = np.random.default_rng(seed)
    return rng.integers(256, vocab, size=seq).tolist()


def check_bench(seq: int, new_tokens: int, repeats: int, limit: int) -> None:
    """A timing request's GQAError, if any: ``seq`` prompt tokens and ``new_tokens`` more within ``limit``."""
    if isinstance(seq, bool) or not isinstance(seq, int) or not 2 <= seq <= limit:
        raise GQAError("seq", f"is {seq!r}", f"give 2 .. {limit} (the model's context)")
    if isinstance(new_tokens, bool) or not isinstance(new_tokens, int) or new_tokens < 1 or seq + new_tokens + 1 > limit:
        raise GQAError("new_tokens", f"is {new_tokens!r} after a prompt of {seq}",
                       f"give 1 .. {limit - seq - 1} (prompt + new tokens within the context)")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise GQAError("repeats", f"is {repeats!r}", "time at least one run")


def time_decoder(int_model, fp32_model, seq: int = 256, new_tokens: int = 32, repeats: int = 3,
                 progress: bool = False) -> dict:
    """Median prefill seconds at ``seq`` tokens and decode tokens/s for both models, with ratios."""
    from .llama import generate

    check_bench(seq, new_tokens, repeats, int_model.config.max_seq_len)
    prompt = bench_prompt(seq, int_model.config.vocab_size)
    ids_np, ids_t = np.array([prompt]), torch.tensor([prompt])

    def fp32_prefill():
        with torch.inference_mode():
            fp32_model(ids_t)

    runs = {
        ("prefill", "int"): lambda: int_model.logits(ids_np),
        ("prefill", "fp32"): fp32_prefill,
        ("gen1", "int"): lambda: int_model.generate(prompt, 1),
        ("gen1", "fp32"): lambda: generate(fp32_model, prompt, 1),
        ("genN", "int"): lambda: int_model.generate(prompt, new_tokens + 1),
        ("genN", "fp32"): lambda: generate(fp32_model, prompt, new_tokens + 1),
    }
    for fn in runs.values():       # warm-up: numba compilation, GEMM backend probes, oneDNN kernel choice
        fn()
    times = {k: [] for k in runs}
    for _ in tqdm(range(repeats), desc="bench", unit="round", disable=not progress):
        for k, fn in runs.items():     # interleaved rounds
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    out = {"seq": seq, "new_tokens": new_tokens, "repeats": repeats, "torch_threads": torch.get_num_threads()}
    for side in ("int", "fp32"):
        out[f"prefill_s_{side}"] = med[("prefill", side)]
        decode = max(med[("genN", side)] - med[("gen1", side)], 1e-9)
        out[f"decode_tokens_per_s_{side}"] = new_tokens / decode
    out["prefill_ratio"] = out["prefill_s_int"] / out["prefill_s_fp32"]
    out["decode_ratio"] = out["decode_tokens_per_s_fp32"] / out["decode_tokens_per_s_int"]   # time per token, int / FP32
    return out
