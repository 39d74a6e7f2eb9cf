"""Fine-tuning demo: all-MiniLM-L6-v2 with its six GELUs on an 8-entry integer PWL table,
distilled back toward its own FP32 sentence embeddings on the CPU.

Steps: load the FP32 model (the teacher) and a copy (the student); search an 8-entry GELU
table (GA, default budget, seed 0); replace the student's nn.GELU modules with
gqa_lut.nn.PWLActivation (input scales learned, LSQ-style, rounded to powers of two; the
backward is the straight-through estimator against the float GELU); calibrate each unit's
exponent on a few sentences (absmax); measure the cosine of student to teacher embeddings on
held-out sentences; train with AdamW (linear warm-up) on ``1 - cosine(student, teacher)`` for
``--steps`` steps; measure again. The sentences are generated in code (templates x vocabulary, fixed),
nothing is downloaded.

Prints mean and minimum held-out cosine before and after, the loss at the start and the end
(means of the first and last tenth of the steps), the exponents before and after, an
ablation (the trained exponents on the original weights: what the learned scales alone
recover), the time, and writes the loss curve to ``--out``/finetune_loss.png. Deterministic for a given
``--seed`` and thread count (``--threads``, default 1).
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import gqa_lut
from gqa_lut.nn import export_scales, fit_input_scales, pwl_modules, replace_activations, set_scales
from intsim.bert import Tokenizer, load_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine  # noqa: E402

# --- sentences: templates x vocabulary, one fixed order --------------------------------------

SUBJECTS = ["the cat", "a young girl", "my neighbour", "the old fisherman", "a team of engineers", "the president",
            "our teacher", "a small dog", "the chef", "two students", "the pilot", "a tired doctor", "the farmer",
            "my grandmother", "the new manager", "a street musician", "the goalkeeper", "a group of tourists"]
VERBS = ["is reading a book", "plays the piano", "walked to the market", "cooked a spicy dinner",
         "repaired the old bicycle", "is watching the stars", "painted the fence", "lost the keys",
         "wrote a long letter", "is learning to swim", "sold the car", "planted tomatoes", "fixed the roof",
         "missed the last train", "is laughing loudly", "ordered a coffee"]
PLACES = ["in the park", "at night", "after the storm", "before breakfast", "near the river", "in the kitchen",
          "on the beach", "during the holidays", "at the station", "in a quiet village", "under the bridge",
          "at the office"]
TOPICS = [("the stock market", ["fell sharply", "recovered slowly", "reached a record high"],
           ["after the announcement", "on Monday", "despite the rate cut"]),
          ("the football match", ["ended in a draw", "was postponed", "drew a huge crowd"],
           ["because of the rain", "last weekend", "in the capital"]),
          ("the new phone", ["has a faster processor", "sold out quickly", "overheats easily"],
           ["according to reviewers", "in most stores", "during long calls"]),
          ("the weather", ["will turn cold", "has been unusually warm", "changed suddenly"],
           ["this week", "in the mountains", "along the coast"]),
          ("the vaccine", ["proved effective", "is being tested", "was approved"],
           ["in a large trial", "by the regulator", "for older patients"]),
          ("the election", ["was very close", "surprised the experts", "had a record turnout"],
           ["in the northern region", "this year", "after a long campaign"])]


def sentences(n: int) -> list[str]:
    """``n`` distinct English sentences from the templates, in a fixed pseudo-random order."""
    out = [f"{s.capitalize()} {v} {p}." for s in SUBJECTS for v in VERBS for p in PLACES[:3]]
    out += [f"Did {s} say that {t} {v} {w}?" for s in SUBJECTS[:6] for t, vs, ws in TOPICS for v in vs for w in ws]
    out += [f"{t.capitalize()} {v} {w}." for t, vs, ws in TOPICS for v in vs for w in ws]
    out += [f"{s.capitalize()} {v} {p}, and {t} {tv}." for s in SUBJECTS[6:12] for v in VERBS[8:]
            for p in PLACES[3:] for t, tvs, _ in TOPICS[:2] for tv in tvs[:1]]
    random.Random(1234).shuffle(out)
    if n > len(out):
        raise SystemExit(f"only {len(out)} template sentences; ask for fewer")
    return out[:n]


# --- model helpers ---------------------------------------------------------------------------

def encode(model, tok, batch):
    ids, mask = tok(batch)
    return model(torch.from_numpy(ids), torch.from_numpy(mask))


def cosines(model, tok, batch, teacher_emb, chunk: int = 32) -> np.ndarray:
    """Cosine of the model's embeddings to the teacher's (both L2-normalised), per sentence."""
    out = []
    with torch.no_grad():
        for i in range(0, len(batch), chunk):
            out.append((encode(model, tok, batch[i: i + chunk]) * teacher_emb[i: i + chunk]).sum(-1))
    return torch.cat(out).numpy().astype(np.float64)


def teacher_embeddings(model, tok, batch, chunk: int = 64) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([encode(model, tok, batch[i: i + chunk]) for i in range(0, len(batch), chunk)])


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate of the weights")
    p.add_argument("--warmup", type=int, default=None, help="linear warm-up steps (default: a tenth of the steps, "
                   "at most 50)")
    p.add_argument("--scale-lr", type=float, default=1e-2, help="Adam learning rate of the log2 input scales")
    p.add_argument("--fixed-scales", action="store_true", help="keep the calibrated exponents (no learned scales)")
    p.add_argument("--grad", choices=("function", "pwl"), default="function")
    p.add_argument("--entries", type=int, default=8)
    p.add_argument("--method", default="ga", help="table search method (ga, dp, ...)")
    p.add_argument("--train", type=int, default=448, help="training sentences")
    p.add_argument("--eval", type=int, default=64, help="held-out sentences")
    p.add_argument("--calib", type=int, default=32, help="calibration sentences (from the training set)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (fixed for determinism; 1 is robust on a loaded machine)")
    p.add_argument("--progress", type=int, default=50, help="print the mean loss every N steps (0: never)")
    p.add_argument("--out", default=str(REPO / "out"), help="folder for finetune_loss.png ('' for no plot)")
    return p.parse_args(argv)


def make_student(teacher, a):
    """A copy of the teacher with its GELUs on the searched table; returns (student, table)."""
    table = gqa_lut.search("gelu", entries=a.entries, method=a.method, progress=False)
    student = replace_activations(copy.deepcopy(teacher), {nn.GELU: table}, learn=not a.fixed_scales,
                                  grad=a.grad, scale_grad=1.0)
    return student, table


def optimizer(student, a):
    """AdamW: the weights at ``lr``, the log2 scales at ``scale_lr`` (no weight decay); linear warm-up."""
    scale_params = [m.log2_scale for m in pwl_modules(student).values() if m.learn]
    ids = {id(p) for p in scale_params}
    groups = [{"params": [p for p in student.parameters() if id(p) not in ids], "lr": a.lr, "weight_decay": 0.0}]
    if scale_params:
        groups.append({"params": scale_params, "lr": a.scale_lr, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups)
    warmup = min(50, a.steps // 10) if a.warmup is None else a.warmup
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / (warmup + 1)))
    return opt, sched, warmup


def train(student, tok, train_set, t_emb, a) -> tuple[list[float], float, int]:
    """``a.steps`` steps of ``1 - cos(student, teacher)`` on shuffled batches; (losses, seconds, warm-up)."""
    opt, sched, warmup = optimizer(student, a)
    gen = torch.Generator().manual_seed(a.seed)
    student.train()
    losses, order, pos = [], torch.randperm(len(train_set), generator=gen), 0
    t0 = time.perf_counter()
    for _ in range(a.steps):
        if pos + a.batch > len(train_set):
            order, pos = torch.randperm(len(train_set), generator=gen), 0
        idx = order[pos: pos + a.batch].tolist()
        pos += a.batch
        emb = encode(student, tok, [train_set[i] for i in idx])
        loss = (1.0 - (emb * t_emb[idx]).sum(-1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if a.progress and (len(losses) % a.progress == 0 or len(losses) == a.steps):
            print(f"step {len(losses)}: loss {np.mean(losses[-a.progress:]):.5f}, exponents "
                  f"{list(export_scales(student).values())} ({time.perf_counter() - t0:.0f} s)", flush=True)
    student.eval()
    return losses, time.perf_counter() - t0, warmup


def main(argv=None) -> dict:
    """Run the demo; returns the figures (cosines, losses, exponents, times) as a dict."""
    a = parse(argv)
    t_start = time.perf_counter()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    data = sentences(a.train + a.eval)
    train_set, held = data[: a.train], data[a.train:]

    teacher, tok = load_model(), Tokenizer()
    student, table = make_student(teacher, a)
    with fit_input_scales(student):
        encode(student, tok, train_set[: a.calib])
    r = {"steps": a.steps, "batch": a.batch, "seed": a.seed, "lr": a.lr, "table_mse": table.error().mean_mse,
         "exp_before": export_scales(student)}
    t_emb = teacher_embeddings(teacher, tok, train_set)
    h_emb = teacher_embeddings(teacher, tok, held)
    cos = cosines(student, tok, held, h_emb)
    r.update(cos_before=float(cos.mean()), min_cos_before=float(cos.min()))
    report_start(r, a)

    losses, r["train_s"], r["warmup"] = train(student, tok, train_set, t_emb, a)
    cos = cosines(student, tok, held, h_emb)
    tenth = max(1, len(losses) // 10)
    r.update(cos_after=float(cos.mean()), min_cos_after=float(cos.min()), losses=losses,
             loss_start=float(np.mean(losses[:tenth])) if losses else math.nan,
             loss_end=float(np.mean(losses[-tenth:])) if losses else math.nan,
             exp_after=export_scales(student), total_s=time.perf_counter() - t_start,
             clipped={n: int(m.n_clipped) for n, m in pwl_modules(student).items()})
    r.update(exp_only(teacher, table, tok, held, h_emb, r["exp_after"]))
    report_end(r, a)
    if a.out and losses:
        r["plot"] = str(plot(losses, Path(a.out) / "finetune_loss.png", a))
        print(f"loss curve: {r['plot']}")
    return r


def exp_only(teacher, table, tok, held, h_emb, exps: dict) -> dict:
    """Ablation: the trained exponents on the original weights (what the scales alone recover)."""
    model = replace_activations(copy.deepcopy(teacher), {nn.GELU: table}, exp=table.scales[0])
    set_scales(model, exps)
    cos = cosines(model, tok, held, h_emb)
    return {"cos_exp_only": float(cos.mean()), "min_cos_exp_only": float(cos.min())}


def report_start(r: dict, a) -> None:
    print(f"machine: {machine()}, torch {torch.__version__}, {a.threads} thread(s)")
    print(f"GELU table: {a.entries} entries ({a.method}), mean MSE {r['table_mse']:.3e}; "
          f"scales {'fixed' if a.fixed_scales else 'learned'}, grad={a.grad}")
    print(f"held-out sentences: {a.eval}, training sentences: {a.train}, steps {a.steps} x batch {a.batch}, "
          f"lr {a.lr:g}, scale lr {a.scale_lr:g}, seed {a.seed}")
    print(f"exponents before: {list(r['exp_before'].values())}")
    print(f"cosine to FP32 before: mean {r['cos_before']:.5f}, min {r['min_cos_before']:.5f}", flush=True)


def report_end(r: dict, a) -> None:
    print(f"exponents after:  {list(r['exp_after'].values())}")
    print(f"cosine to FP32 after:  mean {r['cos_after']:.5f}, min {r['min_cos_after']:.5f}")
    print(f"  ablation, these exponents on the original weights: mean {r['cos_exp_only']:.5f}, "
          f"min {r['min_cos_exp_only']:.5f}")
    print(f"loss (1 - cos, mean of the first / last tenth of the steps): start {r['loss_start']:.5f}, "
          f"end {r['loss_end']:.5f}")
    print(f"time: training {r['train_s']:.1f} s ({1000 * r['train_s'] / max(a.steps, 1):.0f} ms/step, "
          f"warm-up {r['warmup']} steps), total {r['total_s']:.1f} s")


def plot(losses, path: Path, a) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(np.arange(1, len(losses) + 1), losses, lw=0.8, label="batch loss")
    w = max(1, len(losses) // 20)
    if len(losses) >= w:
        ax.plot(np.arange(w, len(losses) + 1), np.convolve(losses, np.ones(w) / w, mode="valid"), lw=2,
                label=f"mean of {w}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("1 - cos(student, FP32)")
    ax.set_title(f"MiniLM-L6, GELU -> {a.entries}-entry INT8 PWL: distillation")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
