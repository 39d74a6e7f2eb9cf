"""Perplexity of a causal language model over a text.

The text is one token stream (the tokenizer's ids, no BOS added) cut into non-overlapping
windows of ``context`` tokens: ``w_k = ids[k*C : (k+1)*C]``. Inside a window of ``n`` tokens the
model predicts token ``j`` from tokens ``0 .. j-1`` of the same window, ``j = 1 .. n-1`` (no
context carries over a window boundary; a last window of one token predicts nothing). With
``NLL_j = -log softmax(logits_{j-1})[ids_j]``::

    ppl = exp(mean of NLL_j over every predicted token of every window)

Any model works that maps ids (1, T) to logits (1, T, vocab) and has ``config.max_seq_len``
(the FP32 :class:`intsim.llama.Llama`, later the integer decoder). The arg-max of each
prediction comes back too, so two models' top-1 agreement needs no second pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from .errors import GQAError


@dataclass(frozen=True)
class Perplexity:
    ppl: float
    mean_nll: float          # nats per predicted token
    tokens: int              # predicted tokens (stream length minus one per window)
    windows: int
    top1: np.ndarray         # (tokens,) int64: the model's arg-max at each predicted position, in stream order


def token_stream(tokenizer, text: str) -> list[int]:
    """The text's token ids, refusing text that gives nothing to predict."""
    if not isinstance(text, str) or not text.strip():
        raise GQAError("text", "is empty or whitespace only", "give a text of at least two tokens")
    ids = tokenizer.encode(text)
    if len(ids) < 2:
        raise GQAError("text", f"is {len(ids)} token long; perplexity needs at least two",
                       "give a longer text")
    return ids


def check_context(context: int, max_seq_len: int) -> int:
    if isinstance(context, bool) or not isinstance(context, (int, np.integer)):
        raise GQAError("context", f"is {context!r}, not an integer", f"give 2 .. {max_seq_len}")
    if not 2 <= context <= max_seq_len:
        raise GQAError("context", f"is {context}; a window must hold 2 .. {max_seq_len} tokens (the model's context)",
                       f"give 2 .. {max_seq_len}")
    return int(context)


def windows(ids, context: int) -> list[list[int]]:
    """Non-overlapping windows of ``context`` ids; a last window of one id is dropped (it predicts nothing)."""
    ws = [list(ids[i: i + context]) for i in range(0, len(ids), context)]
    return [w for w in ws if len(w) >= 2]


@torch.inference_mode()
def perplexity(model, ids, context: int, progress: bool = False) -> Perplexity:
    """Perplexity of ``model`` over the id stream ``ids`` (at least two ids), windows of ``context``."""
    context = check_context(context, model.config.max_seq_len)
    ids = [int(i) for i in ids]
    if len(ids) < 2:
        raise GQAError("ids", f"holds {len(ids)} token(s); perplexity needs at least two", "give a longer text")
    total, count, top1 = 0.0, 0, []
    ws = windows(ids, context)
    for w in tqdm(ws, desc="perplexity", unit="window", disable=not progress):
        x = torch.tensor([w])                                           # (1, n)
        logits = model(x)[0, :-1].float()                               # (n-1, vocab): predicts w[1:]
        total += float(F.cross_entropy(logits, x[0, 1:], reduction="none").double().sum())
        count += len(w) - 1
        top1.append(logits.argmax(-1).numpy())
    mean = total / count
    return Perplexity(ppl=float(np.exp(mean)), mean_nll=mean, tokens=count, windows=len(ws),
                      top1=np.concatenate(top1).astype(np.int64))


def text_perplexity(model, tokenizer, text: str, context: int = 512, progress: bool = False) -> Perplexity:
    """:func:`perplexity` of a text: ``tokenizer.encode(text)`` as one stream (no BOS)."""
    check_context(context, model.config.max_seq_len)
    return perplexity(model, token_stream(tokenizer, text), context, progress=progress)


def compare(model, reference, ids, context: int, progress: bool = False) -> dict:
    """``model`` (the integer path) against ``reference`` (FP32) on the same windows of ``ids``:
    both perplexities, their ratio and the top-1 next-token agreement (the share of predicted
    tokens whose arg-max is the same), with the keys of ``gqa llm eval --json``."""
    a = perplexity(model, ids, context, progress=progress)
    b = perplexity(reference, ids, context, progress=progress)
    return {"ppl_int": a.ppl, "ppl_fp32": b.ppl, "ppl_ratio": a.ppl / b.ppl,
            "top1_agreement": float((a.top1 == b.top1).mean()), "tokens": a.tokens}
