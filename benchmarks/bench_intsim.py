"""The integer encoder against FP32 all-MiniLM-L6-v2: speed in one run, and an accuracy table.

    python benchmarks/bench_intsim.py                 # speed (32 x 128) and the accuracy table
    python benchmarks/bench_intsim.py --skip-accuracy --repeats 5
    python benchmarks/bench_intsim.py --skip-accuracy --skip-speed --cpu-profile

``--cpu-profile``: one integer forward on ONE thread (torch and numba), profiled with
``time.process_time`` as the clock: CPU seconds per kernel, which stay meaningful on a loaded
machine where wall time does not (other jobs stretch wall time, not this process's CPU time).

Speed: FP32 torch forward and the integer forward on the same 32 x 128 batch, median of
``--repeats`` runs after a warm-up, and their ratio (target <= 1.0, stretch 0.5).
Accuracy: every configuration below on the hand-written evaluation sentences
(intsim/data/sentences.txt, 400 lines: 120 paraphrase pairs and 160 standalone sentences),
calibrated once on the generated calibration sentences (disjoint): mean and min cosine to the
FP32 embeddings and nearest-neighbour agreement (targets for the default: >= 0.995, >= 98%).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

from gqa_cli.sim import bench_inputs, print_machine, read_sentences, time_both  # noqa: E402
from intsim.bert import Tokenizer, embed_fp32, load_model  # noqa: E402
from intsim.calibration import calibrate  # noqa: E402
from intsim.config import SimConfig  # noqa: E402
from intsim.int_bert import IntBert, embed_int  # noqa: E402
from intsim.metrics import compare  # noqa: E402
from intsim.sentences import calibration_sentences  # noqa: E402

SENTENCES = Path(__file__).resolve().parents[1] / "intsim" / "data" / "sentences.txt"

CONFIGS = [  # (label, config overrides)
    ("default: PWL 16 entries, smooth (a=0.7) + per-token", {}),
    ("PWL 8 entries (gelu8, exp8)", dict(gelu_table="gelu8", exp_table="exp8")),
    ("GELU unit with a 12-bit input (gelu16_in12)", dict(gelu_table="gelu16_in12")),
    ("softmax with an integer divider", dict(reciprocal="divider")),
    ("I-BERT kernels (i-GELU, i-exp, Newton isqrt)", dict(gelu="ibert", softmax="ibert", layernorm="newton")),
    ("I-ViT kernels (ShiftGELU, Shiftmax, Newton isqrt)", dict(gelu="ivit", softmax="ivit", layernorm="newton")),
    ("outliers: none (per-tensor int8)", dict(outliers="none")),
    ("outliers: smooth only (SmoothQuant a=0.7)", dict(outliers="smooth")),
    ("outliers: per-token only", dict(outliers="per_token")),
    ("outliers: smooth a=0.5 + per-token", dict(smooth_alpha=0.5)),
    ("residual stream 8 bits", dict(residual_bits=8)),
    ("residual stream 32 bits", dict(residual_bits=32)),
    ("power-of-two activation scales", dict(act_scales="pot")),
    ("per-tensor weight scales", dict(weight_scales="per_tensor")),
]


def speed(model, enc, batch, seq, repeats):
    ids, mask = bench_inputs(batch, seq, model.config.vocab_size)
    t = time_both(model, enc, ids, mask, repeats)
    print(f"speed, batch {batch} x seq {seq} (median of {repeats}; torch threads {torch.get_num_threads()}):")
    print(f"  fp32 torch {t['fp32']:.3f} s, integer {t['int']:.3f} s, ratio (integer / FP32) {t['ratio']:.2f}")
    print_machine()
    return t


def cpu_profile(model, enc, batch, seq, top=12):
    """CPU seconds per kernel of one integer forward on one thread (cProfile, process-time clock)."""
    import cProfile
    import pstats

    import numba

    torch.set_num_threads(1)
    numba.set_num_threads(1)
    ids, mask = bench_inputs(batch, seq, model.config.vocab_size)
    enc.embed(ids, mask)                    # warm-up: compilation, GEMM backend probes
    t0 = time.process_time()
    enc.embed(ids, mask)
    total = time.process_time() - t0
    with torch.inference_mode():
        tids, tmask = torch.from_numpy(ids), torch.from_numpy(mask)
        model(tids, tmask)
        t0 = time.process_time()
        model(tids, tmask)
        fp32 = time.process_time() - t0
    prof = cProfile.Profile(time.process_time)
    prof.runcall(enc.embed, ids, mask)
    st = pstats.Stats(prof).stats        # {(file, line, func): (calls, ncalls, tottime, cumtime, callers)}
    rows = sorted(((v[2], v[1], f"{Path(k[0]).name}:{k[2]}" if k[0] != "~" else k[2]) for k, v in st.items()),
                  reverse=True)[:top]
    print(f"CPU time, one thread, batch {batch} x seq {seq}: integer forward {total:.3f} s, FP32 torch {fp32:.3f} s")
    for sec, calls, name in rows:
        print(f"  {sec:7.3f} s  {calls:4d} calls  {name}")


def accuracy(model, tok, calib, sentences, configs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = embed_fp32(model, tok, sentences)
    rows = []
    for label, over in configs:
        t0 = time.perf_counter()
        enc = IntBert(model, calib, SimConfig(**over))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c = compare(embed_int(enc, tok, sentences), ref)
        rows.append((label, c))
        print(f"  {label:52s} mean cos {c['mean_cosine']:.5f}  min {c['min_cosine']:.5f}  "
              f"NN {100 * c['nn_agreement']:.1f}%  ({time.perf_counter() - t0:.0f} s)", flush=True)
    return rows


def markdown(rows) -> str:
    out = ["| configuration | mean cosine | min cosine | NN agreement |", "|---|---|---|---|"]
    for label, c in rows:
        out.append(f"| {label} | {c['mean_cosine']:.5f} | {c['min_cosine']:.5f} | {100 * c['nn_agreement']:.1f}% |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--calib", type=int, default=256, help="calibration sentences")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--cpu-profile", action="store_true", help="CPU seconds per kernel, one thread")
    a = p.parse_args(argv)
    print(f"machine: {machine()}")
    model, tok = load_model(), Tokenizer()
    t0 = time.perf_counter()
    calib = calibrate(model, tok, calibration_sentences(a.calib))
    print(f"calibration: {calib.sentences} sentences, {calib.tokens} tokens, {time.perf_counter() - t0:.1f} s")
    if not a.skip_speed:
        speed(model, IntBert(model, calib, SimConfig()), a.batch, a.seq, a.repeats)
    if a.cpu_profile:
        cpu_profile(model, IntBert(model, calib, SimConfig()), a.batch, a.seq)
    if not a.skip_accuracy:
        sentences = read_sentences(SENTENCES)
        print(f"accuracy on {len(sentences)} sentences ({SENTENCES.name}):")
        print(markdown(accuracy(model, tok, calib, sentences, CONFIGS)))


if __name__ == "__main__":
    main()
