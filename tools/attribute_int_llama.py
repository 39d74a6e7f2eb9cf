"""Where the integer decoder's error comes from: the FP32 decoder with ONE class of the integer
design's operand quantization switched on at a time (every scale read from a built
:class:`intsim.int_llama.IntLlama`, nothing re-derived), and the integer path with one kernel
swapped for an alternative. Prints one JSON line per row: perplexity ratio, KL(FP32 || row) and
top-1 agreement against FP32 on one held-out window.

The mirror (float64 torch hooks on :mod:`intsim.llama`) rounds where the integer datapath rounds:

==========  ================================================================================
class       what is quantized (at the integer model's scales)
==========  ================================================================================
weights     every linear layer's weights int8 per output channel, the norm's smoothing folded
            in (``W f`` quantized, then ``/ f``), the tied output layer too
norm_out    the two norms' GEMM copies and the final norm's: ``x / f``, a per-token power-of-two
            scale over the nominal one (``t >= 0``), int8
q_pre/k_pre q and k out of the QKV GEMM, int8 at their static pre-RoPE scales
q / k       q and k after RoPE (the scores' operands, the cache's keys), int8 static
v           v out of the QKV GEMM, int8 static
probs       softmax probabilities at ``2**-prob_bits`` (the built model's; UINT8: ``--set prob_bits=8``)
ctx         the context (``p v``), int8 per token (the out-projection's operand)
silu        the SiLU unit: input codes per token from the table's scale set, the PWL table
up          the up projection's output, int8 per token
down_in     the down projection's operand ``silu(g) * u``, int8 per token
==========  ================================================================================

``--cand``: candidate remedies in the mirror (everything above on, one remedy applied):
``qk_smooth`` (per-channel factors folded into W_q and W_k rows, equal on RoPE pairs),
``v_channel`` (v per channel), ``down_smooth`` (the down operand's channels smoothed through
W_3 rows and W_2 columns).

    PYTHONPATH=$PWD python tools/attribute_int_llama.py --tokens 256 --genre news
    PYTHONPATH=$PWD python tools/attribute_int_llama.py --set ffn_smooth_alpha=0 \
        --extra "all|down_smooth0.5,down_smooth_req"      # docs/llm.md's table: the defaults before

``--integer '{"softmax": "illm"}'``: the integer model itself with a kernel swapped (same metrics).
``down_smooth`` rows assume the built model's down operand unsmoothed (``--set ffn_smooth_alpha=0``).
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import torch

from intsim.genres import genre_sentences
from intsim.int_llama import SITES, build, calibration, default_config
from intsim.layers import quantize_weight
from intsim.outliers import OperandTransform

CLASSES = ("weights", "norm_out", "q_pre", "k_pre", "q", "k", "v", "probs", "ctx", "silu", "up", "down_in")


def _divisor(factor, C):
    if factor is None:
        return torch.ones(C, dtype=torch.float64)
    d = factor.divisor if isinstance(factor, OperandTransform) else factor
    d = np.broadcast_to(np.asarray(d, np.float64), (C,))
    return torch.from_numpy(np.ascontiguousarray(d))


def static(x, s, bits=8):
    top = (1 << (bits - 1)) - 1
    return torch.clamp(torch.round(x / s), -top, top) * s


def per_token(x, s_nom, bits=8):
    """The nominal scale times 2**t per row, the smallest t >= 0 whose codes fit (requantize_dynamic)."""
    top = (1 << (bits - 1)) - 1
    peak = torch.round(x.abs().amax(-1, keepdim=True) / s_nom)
    t = torch.clamp(torch.ceil(torch.log2(torch.clamp(peak, min=1) / top)), min=0)
    s = s_nom * 2.0**t
    return torch.clamp(torch.round(x / s), -top - 1, top) * s


class Mirror:
    """Hooks on the FP32 decoder quantizing the chosen classes at ``im``'s scales."""

    def __init__(self, im, fm, calib, cfg):
        self.im, self.fm, self.calib, self.cfg = im, fm, calib, cfg
        self.w0 = {n: p.detach().clone() for n, p in fm.named_parameters()}
        self.handles = []

    def reset(self):
        for h in self.handles:
            h.remove()
        self.handles = []
        with torch.no_grad():
            for n, p in self.fm.named_parameters():
                p.copy_(self.w0[n])

    def _hook(self, mod, fn, pre=False):
        if pre:
            self.handles.append(mod.register_forward_pre_hook(lambda m, a: (fn(a[0]),) + tuple(a[1:])))
        else:
            self.handles.append(mod.register_forward_hook(lambda m, a, y: fn(y)))

    def _qweight(self, lin, factor):
        w = lin.weight.detach().double()
        f = _divisor(factor, w.shape[1])
        q, s = quantize_weight((w * f).numpy(), 8, True)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(q.astype(np.float64) * s[:, None]) / f)

    def apply(self, classes, cand=()):
        self.reset()
        im, fm, calib = self.im, self.fm, self.calib
        fine = 2.0**-4 if "token_fine" in cand else 1.0       # per-token nominal scales 16x finer
        pt = lambda s: (lambda y: per_token(y, s * fine))
        for i, (blk, ib) in enumerate(zip(fm.layers, im.layers)):
            n, a, f = SITES.layer(i), blk.attention, blk.feed_forward
            gq, gk = self._qk_smooth(i, a) if "qk_smooth" in cand else (np.ones(576), np.ones(192))
            ds = [c for c in cand if c.startswith("down_smooth")]
            fd = (self._down_smooth(i, f, float(ds[0][len("down_smooth"):] or 0.5), "down_smooth_req" not in cand)
                  if ds else (np.ones(1536), False))
            fd, fu = fd
            if "weights" in classes:
                for lin in (a.wq, a.wk, a.wv):
                    self._qweight(lin, ib.attention_norm.factor)
                self._qweight(a.wo, None)
                for lin in (f.w1, f.w3):
                    self._qweight(lin, ib.ffn_norm.factor)
                self._qweight(f.w2, ib.feed_forward.factor)      # the down operand's smoothing, if any
            if "norm_out" in classes:
                for norm, site in ((blk.attention_norm, ib.attention_norm), (blk.ffn_norm, ib.ffn_norm)):
                    self._hook(norm, self._norm_fn(site, fine))
            cm = lambda site, g: float((calib.channel_max(site) * g).max()) / 127
            for cls, mod, site, g in (("q_pre", a.wq, n.q_pre, gq), ("k_pre", a.wk, n.k_pre, 1 / gk),
                                      ("q", a.q_rope, n.q, gq), ("k", a.k_rope, n.k, 1 / gk)):
                if cls in classes:
                    self._hook(mod, lambda y, s=cm(site, g): static(y, s))
            if "v" in classes:
                s_v = (torch.from_numpy(np.maximum(calib.channel_max(n.v), 1e-6) / 127).reshape(3, 1, 64)
                       if "v_channel" in cand else cm(n.v, 1.0))
                self._hook(a.wv, lambda y, s=s_v: static(y.view(*y.shape[:-1], 3, 64).transpose(-2, -3), s)
                           .transpose(-2, -3).reshape(y.shape) if torch.is_tensor(s) else static(y, s))
            sm = [c for c in cand if c.startswith("sm")]
            if sm:   # the PWL softmax's exp input: d = s - max at 2**-e codes, saturating or zero below -8
                self._hook(a.softmax, self._softmax_fn(sm[0]), pre=False)
                self.handles[-1].remove()
                self.handles[-1] = a.softmax.register_forward_hook(lambda m, a_, y, k=sm[0]: self._softmax(a_[0], k))
            elif "probs" in classes:
                P = 2.0**ib.attention.softmax.out_bits       # the built model's prob_bits (UINT8: 256)
                self._hook(a.softmax, lambda y, P=P: torch.clamp(torch.round(y * P), 0, P - 1) / P)
            if "ctx" in classes:
                self._hook(a.wo, pt(ib.attention.s_ctx), pre=True)
            if "silu" in classes:
                self.handles.append(f.silu.register_forward_hook(
                    lambda m, a_, y, k=ib.feed_forward.kernel: self._silu(a_[0], k)))
            if "up" in classes:
                self._hook(f.w3, pt(calib.token_max(n.up) / 127 / (fd.max() if fu else 1.0)))
            if "down_in" in classes:
                self._hook(f.w2, self._smoothed_token_fn(ib.feed_forward, fine / fd.max()), pre=True)
        if "weights" in classes:
            self._qweight_out()
        if "norm_out" in classes:
            self._hook(fm.norm, self._norm_fn(im.norm, fine))

    @staticmethod
    def _smoothed_token_fn(ff, fine):
        """The down operand as the integer model makes it: ``a / f`` per token at its nominal scale, ``* f``."""
        def fn(x):
            d = _divisor(ff.factor, x.shape[-1])
            return per_token(x / d, ff.out_scale * fine) * d
        return fn

    def _norm_fn(self, site, fine=1.0):
        div, s_nom, dyn = None, site.gemm_scale, site.gemm.dynamic

        def fn(y):
            d = _divisor(site.factor, y.shape[-1])
            z = y / d
            z = per_token(z, s_nom * fine) if dyn else static(z, s_nom)
            return z * d
        return fn

    @staticmethod
    def _softmax_fn(kind):
        return lambda y: y

    @staticmethod
    def _softmax(x, kind):
        """``sm8``: exp input codes at 2**-4 (s8 reaching -8), saturating at -8; ``sm8z``: those below
        -8 give 0; ``sm12``/``sm12z``: 12-bit codes at 2**-8; exact exp; probabilities UINT8."""
        e = 4 if kind.startswith("sm8") else 8
        lo = -(1 << (3 + e))
        d = x - x.amax(-1, keepdim=True)
        u = torch.round(d * 2.0**e)
        E = torch.exp(torch.clamp(u, min=lo) * 2.0**-e)
        E = torch.where(torch.isinf(d), torch.zeros_like(E), E)
        if kind.endswith("z"):
            E = torch.where(u < lo, torch.zeros_like(E), E)
        p = E / E.sum(-1, keepdim=True)
        return torch.clamp(torch.round(p * 256), 0, 255) / 256

    @staticmethod
    def _silu(x, k):
        """TokenScaledActivation on real inputs: per row the finest scale of the set that fits, the table."""
        xs = x.double().numpy()
        hi = (1 << (k.in_bits - 1)) - 1
        v = np.rint(xs * 2.0**k.e_max)
        peak = np.abs(v).max(-1, keepdims=True)
        bits = np.frexp(peak)[1]
        t = np.clip(bits - (k.in_bits - 1), 0, k.e_max - k.e_min)
        out = np.empty_like(xs)
        for sh in np.unique(t):
            rows = (t == sh)[..., 0]
            e = int(k.e_max - sh)
            q = np.clip(np.rint(xs[rows] * 2.0**e), -hi - 1, hi)
            out[rows] = k.table.evaluate(q.astype(np.int64), e)
        return torch.from_numpy(out).to(x.dtype)

    def _qweight_out(self):
        fm, im = self.fm, self.im
        w = fm.tok_embeddings.weight
        emb = w.detach().clone()                      # the lookup keeps FP32 rows; the tied output is W8
        f = _divisor(im.norm.factor, w.shape[1])
        q, s = quantize_weight((emb * f).numpy(), 8, True)
        with torch.no_grad():
            w.copy_(torch.from_numpy(q.astype(np.float64) * s[:, None]) / f)
        self.handles.append(fm.tok_embeddings.register_forward_hook(
            lambda m, a_, y: torch.nn.functional.embedding(a_[0], emb)))

    def _qk_smooth(self, i, a):
        """Per channel pair g = sqrt(kmax / qmax) over each KV head's query group (a pair shares one
        factor, so RoPE commutes): W_q rows times g, W_k rows over g; q . k unchanged."""
        c, n = self.calib, SITES.layer(i)
        qp = np.maximum(c.channel_max(n.q).reshape(3, 3, 32, 2).max(axis=(1, 3)), 1e-6)   # (kv, pairs)
        kp = np.maximum(c.channel_max(n.k).reshape(3, 32, 2).max(-1), 1e-6)
        g = np.sqrt(kp / qp)
        gq = np.repeat(np.repeat(g[:, None], 3, axis=1).reshape(9, 32), 2, axis=1).reshape(-1)
        gk = np.repeat(g, 2, axis=1).reshape(-1)
        with torch.no_grad():
            a.wq.weight.mul_(torch.from_numpy(gq)[:, None])
            a.wk.weight.div_(torch.from_numpy(gk)[:, None])
        return gq, gk

    def _down_smooth(self, i, f, alpha=0.5, fold_up=True):
        """SmoothQuant on the down operand: ``a / f`` through W_3 rows (``fold_up``; else in the
        operand's requantizer, after the up projection's quantization) and W_2 columns (``W_2 f``)."""
        n = SITES.layer(i)
        cmax = np.maximum(self.calib.channel_max(n.act_out), 1e-6)
        wmax = np.maximum(f.w2.weight.detach().abs().amax(0).numpy(), 1e-6)
        fd = cmax**alpha / wmax ** (1 - alpha)
        with torch.no_grad():
            if fold_up:
                f.w3.weight.div_(torch.from_numpy(fd)[:, None])
            else:
                self.handles.append(f.w2.register_forward_pre_hook(
                    lambda m, a_, d=torch.from_numpy(fd): (a_[0] / d,), prepend=True))
            f.w2.weight.mul_(torch.from_numpy(fd)[None, :])
        return fd, fold_up


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--genre", default="news")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--rows", nargs="*", default=None, help="only these rows")
    ap.add_argument("--extra", nargs="*", default=[], help='more rows: "classes|candidates"')
    ap.add_argument("--integer", nargs="*", default=[],
                    help='integer-model rows: JSON config overrides, e.g. \'{"softmax": "illm"}\' ({}: as built)')
    ap.add_argument("--set", action="append", default=[], help="config override key=value (JSON value)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    over = dict((k, json.loads(v)) for k, v in (kv.split("=", 1) for kv in a.set))
    cfg = default_config(**over)
    im, fm, tok = build(cfg, layers=a.layers)
    fm = fm.double()
    calib = calibration(a.layers)
    ids = tok.encode("\n".join(genre_sentences(a.genre)))[: a.tokens]
    x = torch.tensor([ids])
    tgt = torch.tensor(ids[1:])
    T = len(ids)
    with torch.no_grad():
        lf = torch.log_softmax(fm(x), -1)[0, :-1]
    nll_f = -lf[torch.arange(T - 1), tgt].mean().item()
    m = Mirror(im, fm, calib, cfg)

    def row(name, classes, cand=(), integer=None):
        if integer is None:
            m.apply(classes, cand)
            with torch.no_grad():
                li = torch.log_softmax(fm(x), -1)[0, :-1]
            m.reset()
        else:                                  # the integer model itself, built with these overrides
            im_k, _, _ = build(default_config(**{**over, **integer}), layers=a.layers)
            li = torch.log_softmax(torch.from_numpy(im_k.logits(x.numpy())), -1)[0, :-1]
        nll = -li[torch.arange(T - 1), tgt].mean().item()
        kl = (lf.exp() * (lf - li)).sum(-1).mean().item()
        top1 = (li.argmax(-1) == lf.argmax(-1)).double().mean().item()
        print(json.dumps({"row": name, "ratio": round(math.exp(nll - nll_f), 4), "kl": round(kl, 5),
                          "top1": round(top1, 4)}), flush=True)

    rows = [("fp32", ())] + [(f"only {c}", (c,)) for c in CLASSES] + [("all", CLASSES)] + \
           [(f"all but {c}", tuple(k for k in CLASSES if k != c)) for c in CLASSES]
    for name, cl in rows:
        if a.rows is None or name in a.rows:
            row(name, cl)
    for cand in ("qk_smooth", "v_channel", "down_smooth", "token_fine"):
        if a.rows is None or cand in a.rows:
            row(f"all + {cand}", CLASSES, (cand,))
    for spec in a.extra:                      # "class,class|cand,cand" ("all" = every class)
        cl, _, cd = spec.partition("|")
        cl = CLASSES if cl == "all" else tuple(c for c in cl.split(",") if c)
        row(spec, cl, tuple(c for c in cd.split(",") if c))
    for spec in a.integer:
        row(f"integer {spec}", (), integer=json.loads(spec))


if __name__ == "__main__":
    main()
