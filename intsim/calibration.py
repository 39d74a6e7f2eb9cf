"""Calibration: run the FP32 model on sentences, collect per-tensor ranges, histograms and
per-channel maxima, choose scales, and report outlier channels.

Every tensor the integer model quantizes is observed at the matching point of the FP32 model
(forward hooks), on real tokens only (padding is computed by the hardware but never read). Which
tensors, under which names, is the model's declaration of its calibration sites
(:class:`intsim.layers.ModelSites`; the BERT encoder's is :data:`intsim.int_bert.SITES`), read
both here and by the model's builder.

Outliers (LLM.int8, SmoothQuant, Outlier Suppression+): for each residual-stream tensor the
per-channel max |x|, its ratio to the median channel max, the kurtosis of all values, and the
tokens responsible for the largest values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numba
import numpy as np
import torch
from tqdm.auto import tqdm

from .bert import SentenceBert, Tokenizer
from .errors import GQAError

HIST_BINS = 48  # log2-spaced bins of |x| from 2**-16 to 2**8
FINE_BINS = 2048  # linear bins of |x| over [0, absmax]: the MSE clipping search (intsim.outliers)
SAMPLE_ROWS = 256  # rows (tokens) kept of every norm output: the outlier searches fold transforms on them


@dataclass
class TensorStats:
    absmax: float
    percentiles: dict
    channel_max: np.ndarray          # (C,) max |x| per channel
    hist: np.ndarray                 # counts of |x| per log2 bin (HIST_BINS)
    kurtosis: float
    token_max_p50: float              # median over tokens of the per-token max |x|
    top: list = field(default_factory=list)   # [(value, channel, sentence, position, token)]
    # the outlier toolbox's statistics (intsim.outliers): signed per-channel extremes (OS+ shifting),
    # every token's max |x| (token-wise clipping), a fine linear histogram of |x| (MSE clipping), and
    # for norm outputs a fixed sample of rows (searches on transformed tensors)
    channel_hi: np.ndarray | None = None      # (C,) max x per channel
    channel_lo: np.ndarray | None = None      # (C,) min x per channel
    token_maxima: np.ndarray | None = None    # (tokens,) max |x| of each token, float32
    fine_hist: np.ndarray | None = None       # FINE_BINS counts of |x| over [0, absmax]
    sample: np.ndarray | None = None          # (<= SAMPLE_ROWS, C) float32 rows, evenly spaced over the tokens

    def range(self, percentile: float = 100.0) -> float:
        if percentile >= 100.0:
            return self.absmax
        return float(self.percentiles.get(percentile) or self.absmax)


PERCENTILES = (99.0, 99.9, 99.99)


def percentiles(a: np.ndarray, ps=PERCENTILES, sorted_top: bool = False):
    """``{p: np.percentile(a, p)}`` for high percentiles, the same floats from one partition.

    numpy's linear percentile is ``lerp(s[i], s[i+1], g)`` over the sorted values ``s`` with
    ``v = (n-1) * (p/100)``, ``i = floor(v)``, ``g = v - i``; one partition at the smallest ``i``
    gives every needed order statistic, and ``np.quantile([s[i], s[i+1]], g)`` is numpy's own lerp
    (its virtual index is ``1 * g``), so the results are numpy's to the last bit (tested).
    ``sorted_top``: also return those order statistics, the largest values sorted ascending.
    """
    af = a.ravel()
    n = af.size
    vs = {p: (n - 1) * (p / 100) for p in ps}
    lo = min(int(np.floor(v)) for v in vs.values())
    top = np.sort(np.partition(af, lo)[lo:])          # order statistics lo .. n-1
    out = {}
    for p, v in vs.items():
        i = int(np.floor(v))
        pair = np.array([top[i - lo], top[min(i + 1, n - 1) - lo]], af.dtype)
        out[p] = float(np.quantile(pair, v - i))
    return (out, top) if sorted_top else out


def top_indices(af: np.ndarray, k: int, top: np.ndarray) -> np.ndarray:
    """Flat indices of the ``k`` largest values of ``af``, largest first, ties by index: from the
    sorted largest values ``top`` (:func:`percentiles`), one comparison pass finds every candidate
    (a full argpartition costs ten times more)."""
    if k <= 0:
        return np.zeros(0, np.intp)
    if k > top.size:
        top = np.sort(af)
    cand = np.flatnonzero(af >= top[-k])               # the k largest and any value tied with the k-th
    order = np.lexsort((cand, -af[cand].astype(np.float64)))
    return cand[order[:k]]


def _kurtosis(x: np.ndarray) -> float:
    x = x.ravel()
    d = x - x.mean(dtype=np.float64)                  # float64 (a float64 scalar)
    np.multiply(d, d, out=d)                          # the squared deviations, in place
    var = d.mean()
    np.multiply(d, d, out=d)
    return float(d.mean() / var**2) if var > 0 else 0.0


@numba.njit(cache=True)
def _count_bins(a, scale, bins):
    """``bincount(min(trunc(float64(a) * scale), bins - 1))`` in one pass (``a >= 0``): the numpy
    expression's values (one IEEE multiply, truncation toward zero) without its two temporaries."""
    out = np.zeros(bins, np.int64)
    for i in range(a.size):
        out[min(np.intp(np.float64(a[i]) * scale), bins - 1)] += 1
    return out


@numba.njit(cache=True)
def _count_clipped(pos, bins):
    """``bincount(trunc(clip(pos, 0, bins - 1)))`` for float32 bin positions, in one pass."""
    out = np.zeros(bins, np.int64)
    hi = np.float32(bins - 1)
    for i in range(pos.size):
        out[np.intp(min(max(pos[i], np.float32(0.0)), hi))] += 1
    return out


def fine_hist(a: np.ndarray, top: float) -> np.ndarray:
    """Counts of ``a = |x|`` in FINE_BINS linear bins over [0, top] (bin ``k``: ``[k, k+1) * top / FINE_BINS``)."""
    if top <= 0:
        return np.bincount(np.zeros(a.size, np.intp), minlength=FINE_BINS)
    return _count_bins(np.ascontiguousarray(a).ravel(), FINE_BINS / top, FINE_BINS)


def _is_norm(module) -> bool:
    return "norm" in type(module).__name__.lower()


def _hist(a: np.ndarray) -> np.ndarray:
    """Counts of ``a = |x|`` in HIST_BINS log2-spaced bins over [2**-16, 2**8] (values outside go to the ends)."""
    pos = np.log2(np.maximum(a.ravel().astype(np.float32, copy=False), np.float32(2.0**-16)))
    pos += np.float32(16.0)
    pos *= np.float32(HIST_BINS / 24.0)
    return _count_clipped(pos, HIST_BINS)        # clipping before truncation bins exactly as after it


class Calibration:
    """Per-tensor statistics of the FP32 model over calibration sentences."""

    def __init__(self, stats: dict, sentences: int, tokens: int, residual=(), inputs=None):
        self.stats: dict[str, TensorStats] = stats
        self.sentences, self.tokens = sentences, tokens
        self.residual = tuple(residual)     # residual-stream tensors (the outlier report's)
        self.inputs = inputs                # [(ids, mask)] the batches it ran (a rounding reruns them), or None

    def batches(self) -> list:
        """The calibration batches ``[(ids, mask)]`` (numpy), for a build step that runs the integer model
        on the calibration text (``weight_rounding = "gptq"``)."""
        if self.inputs is None:
            raise GQAError("calibration", "kept no input batches",
                           "calibrate with intsim.calibration.calibrate (or calibrate_batches)")
        return self.inputs

    def tensor(self, name: str) -> TensorStats:
        if name not in self.stats:
            raise GQAError("calibration", f"observed no tensor {name!r}",
                           "calibrate with the model's calibration sites (calibrate(..., sites=SITES))")
        return self.stats[name]

    def absmax(self, name: str, percentile: float = 100.0) -> float:
        return self.tensor(name).range(percentile)

    def token_max(self, name: str) -> float:
        return self.tensor(name).token_max_p50

    def channel_max(self, name: str) -> np.ndarray:
        return self.tensor(name).channel_max

    def extra(self, name: str, what: str) -> np.ndarray:
        """One of the outlier toolbox's statistics (``channel_hi``, ``token_maxima``, ``sample``, ...)."""
        v = getattr(self.tensor(name), what)
        if v is None:
            raise GQAError("calibration", f"has no {what} of {name!r} (samples are kept of norm outputs only)",
                           "recalibrate with this version of intsim.calibration.calibrate")
        return v

    def outlier_report(self, top: int = 5) -> list[dict]:
        """Residual-stream tensors: outlier channels, their ratio to the median, kurtosis, tokens."""
        out = []
        for name, s in self.stats.items():
            if name not in self.residual:
                continue
            med = float(np.median(s.channel_max))
            order = np.argsort(s.channel_max)[::-1][:top]
            out.append({
                "tensor": name, "absmax": s.absmax, "median_channel_max": med,
                "kurtosis": s.kurtosis,
                "channels": [{"channel": int(c), "max": float(s.channel_max[c]),
                              "ratio_to_median": float(s.channel_max[c] / med) if med > 0 else math.inf}
                             for c in order],
                "top_values": [{"value": v, "channel": c, "sentence": si, "position": p, "token": tok}
                               for v, c, si, p, tok in s.top],
            })
        return out

    def to_dict(self) -> dict:
        return {"sentences": self.sentences, "tokens": self.tokens,
                "tensors": {n: {"absmax": s.absmax, "percentiles": {str(k): v for k, v in s.percentiles.items()},
                                "kurtosis": s.kurtosis, "hist_log2_edges": [-16, 8, HIST_BINS],
                                "hist": s.hist.tolist()} for n, s in self.stats.items()},
                "outliers": self.outlier_report()}


def calibrate(model: SentenceBert, tokenizer: Tokenizer, sentences, batch_size: int = 32,
              top: int = 5, sites=None) -> Calibration:
    """Run FP32 on ``sentences`` and collect the statistics of every declared site.

    ``model(ids, mask)`` is the FP32 model, ``tokenizer(sentences, warn=False) -> (ids, mask)``
    and ``tokenizer.id_to_token``; ``sites``: the model's :class:`intsim.layers.ModelSites`
    (default: the BERT encoder's, :data:`intsim.int_bert.SITES`).
    """
    if sites is None:
        from .int_bert import SITES as sites   # the default model's declaration
    sentences = list(sentences)
    if not sentences:
        raise GQAError("calibration sentences", "are empty", "give at least one sentence")
    batches = (tokenizer(sentences[i: i + batch_size], warn=False) for i in range(0, len(sentences), batch_size))
    return calibrate_batches(model, batches, sites, tokenizer.id_to_token, top)


def calibrate_stream(model, tokenizer, ids, seq_len: int, sites, batch_size: int = 8, top: int = 5,
                     progress: bool = False) -> Calibration:
    """A causal model (``model(ids) -> logits``) on one token stream: windows of ``seq_len`` ids.

    The stream is cut into consecutive windows (each a sequence of its own, no BOS); the last one,
    if shorter, is right-padded and its padding masked out of the statistics (causal: padding
    never changes an earlier position). Every batch has ``seq_len`` positions, so attention-score
    sites have the same width in every batch.
    """
    ids = [int(i) for i in ids]
    if len(ids) < 2:
        raise GQAError("calibration text", f"holds {len(ids)} token(s)", "give a text of at least two tokens")
    if seq_len < 2:
        raise GQAError("calibration seq_len", f"is {seq_len}", "give at least 2")
    rows = [ids[i: i + seq_len] for i in range(0, len(ids), seq_len)]

    def batches():
        for i in tqdm(range(0, len(rows), batch_size), desc="calibration", unit="batch", disable=not progress):
            part = rows[i: i + batch_size]
            x, mask = np.zeros((len(part), seq_len), np.int64), np.zeros((len(part), seq_len), np.int64)
            for b, r in enumerate(part):                  # right-padded: (batch, seq_len)
                x[b, :len(r)], mask[b, :len(r)] = r, 1
            yield x, mask

    return calibrate_batches(model, batches(), sites, tokenizer.id_to_token, top, forward=lambda m, x, _: m(x))


def _rows(t: torch.Tensor, sel: np.ndarray) -> np.ndarray:
    """The observed values of one site as (real tokens, channels).

    A (B, T, C) tensor gives its real tokens' rows. A 4-D one is per head, (B, heads, T, X) (q or
    k after RoPE: X = head_dim; attention scores: X = keys), and is read as (B, T, heads * X), the
    layout of the projection it comes from; masked scores (-inf) count as 0.
    """
    if t.dim() == 4:
        B, H, T, X = t.shape
        t = t.transpose(1, 2).reshape(B, T, H * X)                  # (B, H, T, X) -> (B, T, H X)
        t = torch.where(torch.isfinite(t), t, torch.zeros((), dtype=t.dtype))
    return t.numpy()[sel]


def calibrate_batches(model, batches, sites, id_to_token, top: int = 5, forward=None) -> Calibration:
    """Hook the declared ``sites`` of ``model`` and run it on ``batches`` of ``(ids, mask)`` arrays.

    ``forward(model, ids, mask)`` runs one batch (torch tensors; default ``model(ids, mask)``);
    statistics are over real tokens (``mask == 1``) only; ``id_to_token`` names the tokens of the
    largest values. Every model's calibration is this function with its own batches and sites.
    """
    forward = forward or (lambda m, ids, mask: m(ids, mask))
    rows: dict[str, list] = {}
    where: list = []     # (sequence, position, token id) of every real token, in row order
    current = {}
    n_seq = 0
    inputs = []

    def make_hook(name, side):
        def hook(mod, inp, out):
            t = inp[0] if side == "in" else out
            current[name] = t.detach()
        return hook

    hooks = sites.hooks(model)
    norm_outputs = {n for m, n, s in hooks if s == "out" and _is_norm(m)}
    handles = [m.register_forward_hook(make_hook(n, s)) for m, n, s in hooks]
    try:
        with torch.inference_mode():
            for ids, mask in batches:
                inputs.append((np.asarray(ids), np.asarray(mask)))
                current.clear()
                forward(model, torch.from_numpy(ids), torch.from_numpy(mask))
                sel = mask.astype(bool)
                for b, p in zip(*np.nonzero(sel)):
                    where.append((n_seq + int(b), int(p), int(ids[b, p])))
                n_seq += ids.shape[0]
                for name, t in current.items():
                    rows.setdefault(name, []).append(_rows(t, sel))
    finally:
        for h in handles:
            h.remove()
    stats = {}
    for name, parts in rows.items():
        x = np.concatenate(parts)            # (tokens, C)
        a = np.abs(x)
        pct, largest = percentiles(a, sorted_top=True)
        af = a.ravel()
        flat = top_indices(af, min(top, af.size), largest)
        topv = []
        for f in flat:
            r, c = divmod(int(f), x.shape[1])
            s_i, pos, tok = where[r]
            topv.append((float(x[r, c]), c, s_i, pos, id_to_token(tok)))
        tmax = a.max(1)
        sample = None
        if name in norm_outputs:
            sample = np.ascontiguousarray(x[np.unique(np.linspace(0, len(x) - 1, SAMPLE_ROWS).astype(np.intp))],
                                          dtype=np.float32)
        stats[name] = TensorStats(absmax=float(a.max()), percentiles=pct, channel_max=a.max(0),
                                  hist=_hist(a), kurtosis=_kurtosis(x),
                                  token_max_p50=float(np.median(tmax)), top=topv,
                                  channel_hi=x.max(0), channel_lo=x.min(0), token_maxima=tmax.astype(np.float32),
                                  fine_hist=fine_hist(a, float(a.max())), sample=sample)
    return Calibration(stats, n_seq, len(where), residual=sites.residual(model), inputs=inputs)
