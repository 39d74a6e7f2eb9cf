"""Kurtosis regularization (Nrusimha et al. 2024) on all-MiniLM-L6-v2: its effect on the outlier
report and on per-tensor int8 accuracy, against the same fine-tune without it.

    python benchmarks/bench_kurtosis.py                 # 2 x 60 steps, a few minutes on 2 cores
    python benchmarks/bench_kurtosis.py --steps 120 --weight 3e-3

Three models, each reported the same way: the FP32 teacher; a student fine-tuned ``--steps`` steps
with QAT of every Linear's input (:func:`gqa_lut.nn.quantize_inputs`, 8 bits, learned clips) on
``1 - cos(student, teacher)`` (distillation toward its own FP32 embeddings); and the same with the
kurtosis penalty (:class:`gqa_lut.nn.KurtosisRegularizer`, ``--weight``) on the residual stream:
every LayerNorm's input (the residual sums, where channel 99 reaches 225) and output. After
training the quantizers are removed and each FP32 model is calibrated on the generated calibration
sentences, then reported: the largest channel max / median channel max and the largest kurtosis
over the residual-stream tensors (:meth:`intsim.calibration.Calibration.outlier_report`), and the
integer encoder with per-tensor int8 activations (``outliers="none"``) on held-out genre text:
mean cosine and NN agreement to that model's own FP32 embeddings and to the teacher's.
Deterministic for a seed and thread count.
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
from bench_finetune import encode, sentences, teacher_embeddings  # noqa: E402

from gqa_lut.nn import KurtosisRegularizer, quantize_inputs, remove_input_quantizers  # noqa: E402
from intsim.bert import Tokenizer, embed_fp32, load_model  # noqa: E402
from intsim.calibration import calibrate  # noqa: E402
from intsim.config import SimConfig  # noqa: E402
from intsim.genres import genre_sentences  # noqa: E402
from intsim.int_bert import IntBert, embed_int  # noqa: E402
from intsim.metrics import compare  # noqa: E402
from intsim.sentences import calibration_sentences  # noqa: E402


def residual_norms(model):
    return [model.embeddings.ln] + [ln for blk in model.blocks for ln in (blk.ln1, blk.ln2)]


def fine_tune(teacher, tok, train_set, t_emb, a, weight: float):
    """QAT of the Linear inputs + distillation, with the kurtosis penalty at ``weight`` (0: none)."""
    torch.manual_seed(a.seed)
    student = copy.deepcopy(teacher)
    quantize_inputs(student, bits=8)
    with torch.no_grad():
        encode(student, tok, train_set[:16])                 # the clips start at a batch's max |x|
    opt = torch.optim.AdamW(student.parameters(), lr=a.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(a.seed)
    norms = residual_norms(student)
    regs = [KurtosisRegularizer(norms, weight, side=s) for s in ("in", "out")] if weight > 0 else []
    student.train()
    losses, kurts = [], []
    t0 = time.perf_counter()
    for step in range(a.steps):
        idx = torch.randint(len(train_set), (a.batch,), generator=gen).tolist()
        ids, mask = tok([train_set[i] for i in idx])
        emb = student(torch.from_numpy(ids), torch.from_numpy(mask))
        loss = (1.0 - (emb * t_emb[idx]).sum(-1)).mean()
        total = loss
        if regs:
            m = torch.from_numpy(mask).bool()
            pen = sum(r.penalty(m) for r in regs)
            kurts.append(float(pen) / weight / len(regs))
            total = loss + pen
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        losses.append(float(loss))
        if a.progress and (step + 1) % a.progress == 0:
            k = f", mean token kurtosis {np.mean(kurts[-a.progress:]):.1f}" if kurts else ""
            print(f"    step {step + 1}: 1 - cos {np.mean(losses[-a.progress:]):.5f}{k} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    for r in regs:
        r.remove()
    student.eval()
    remove_input_quantizers(student)
    return student


def report(label, model, tok, teacher_refs, held, n_calib: int):
    """Outlier report and per-tensor int8 accuracy of one FP32 model."""
    calib = calibrate(model, tok, calibration_sentences(n_calib))
    rep = calib.outlier_report()
    ratio = max(r["channels"][0]["ratio_to_median"] for r in rep)
    top = max(rep, key=lambda r: r["channels"][0]["max"])
    kurt = max(r["kurtosis"] for r in rep)
    own = embed_fp32(model, tok, held)
    enc = IntBert(model, calib, SimConfig(outliers="none"))
    emb = embed_int(enc, tok, held)
    c_own, c_t = compare(emb, own), compare(emb, teacher_refs)
    fp = compare(own, teacher_refs)
    row = {"label": label, "max_channel": top["channels"][0]["max"], "channel": top["channels"][0]["channel"],
           "tensor": top["tensor"], "ratio": ratio, "kurtosis": kurt, "own": c_own, "teacher": c_t, "fp32": fp}
    print(f"  {label}: max channel {row['max_channel']:.1f} (ch {row['channel']} of {row['tensor']}), "
          f"max/median {ratio:.0f}, max kurtosis {kurt:.0f}; per-tensor int8 vs own FP32 cos "
          f"{c_own['mean_cosine']:.5f} NN {100 * c_own['nn_agreement']:.1f}%, vs teacher cos "
          f"{c_t['mean_cosine']:.5f} NN {100 * c_t['nn_agreement']:.1f}% (FP32 vs teacher {fp['mean_cosine']:.5f})",
          flush=True)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--weight", type=float, default=1e-3, help="kurtosis penalty weight")
    p.add_argument("--genre", default="technical", help="held-out genre (intsim.genres)")
    p.add_argument("--calib", type=int, default=128, help="calibration sentences")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--progress", type=int, default=20)
    a = p.parse_args(argv)
    warnings.simplefilter("ignore")
    torch.set_num_threads(a.threads)
    print(f"machine: {machine()}, {a.threads} thread(s)")
    print(f"fine-tune: {a.steps} steps x batch {a.batch}, lr {a.lr:g}, QAT of Linear inputs (8 bits), "
          f"kurtosis weight {a.weight:g}; held-out: {a.genre}")
    teacher, tok = load_model(), Tokenizer()
    train_set = sentences(448)
    t_emb = teacher_embeddings(teacher, tok, train_set)
    held = genre_sentences(a.genre)
    refs = embed_fp32(teacher, tok, held)
    t0 = time.perf_counter()
    rows = [report("teacher (FP32 MiniLM)", teacher, tok, refs, held, a.calib)]
    for label, w in (("QAT, no kurtosis", 0.0), (f"QAT + kurtosis {a.weight:g}", a.weight)):
        print(f"  fine-tuning: {label}")
        rows.append(report(label, fine_tune(teacher, tok, train_set, t_emb, a, w), tok, refs, held, a.calib))
    print(f"total {time.perf_counter() - t0:.0f} s\n")
    print("| model | max channel (max/median) | max kurtosis | int8 per-tensor vs own FP32: cos / NN | "
          "vs teacher: cos / NN | FP32 vs teacher cos |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['max_channel']:.1f} ({r['ratio']:.0f}x) | {r['kurtosis']:.0f} | "
              f"{r['own']['mean_cosine']:.5f} / {100 * r['own']['nn_agreement']:.1f}% | "
              f"{r['teacher']['mean_cosine']:.5f} / {100 * r['teacher']['nn_agreement']:.1f}% | "
              f"{r['fp32']['mean_cosine']:.5f} |")
    return rows


if __name__ == "__main__":
    main()
