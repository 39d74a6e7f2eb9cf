"""Record the integer encoder's outputs on fixed inputs: tests/data/int_bert_golden.npz.

The file pins today's integer MiniLM bit for bit, so that refactoring the model (shared layers,
registries) is proven not to change a single integer: ``tests/test_int_bert_golden.py`` rebuilds
the encoder from the *recorded* calibration (so FP32 differences between CPUs cannot move a
scale) and compares.

Recorded: the calibration statistics the builder reads (absmax and percentiles, per-channel
maxima, median token maxima) of 48 calibration sentences; for each configuration of ``CONFIGS`` the pooled int64 sums
of ``SENTENCES``; for the default configuration the traced integers of the embeddings and the
first block on two sentences (and the last block's residual sum and output); the op statistics
(JSON) of the default and the I-BERT configurations.

    PYTHONPATH=$PWD python tools/make_int_bert_golden.py      # rewrites tests/data/int_bert_golden.npz
    PYTHONPATH=$PWD python tools/make_int_bert_golden.py --add default_token_mantissa   # adds one entry

Only rerun it when an intended change of the integer path is made (and say so in the commit).
Every configuration is built over :data:`RECORDED_DEFAULTS`, the defaults the file was recorded
under, so a change of ``SimConfig``'s defaults leaves the recorded integers valid; a new default
is added as its own entry (``--add NAME``: only that entry is recorded, from the file's own
calibration, every other array kept as it is).
Every configuration with SmoothQuant was recorded again (2026-12-04, from the file's calibration)
when its factors became libm powers in float64 (intsim.outliers.smoothquant_factors): numpy's
array ``power`` had given other last bits on AVX-512 machines than on AVX2 ones (SVML), so the
file recorded on a Zen 4 failed on a Zen 3; the configurations without smoothing kept their arrays.
The same day the op statistics of STATS_CONFIGS were recorded again: LayerNorm's input width had
been taken from ``np.abs`` of int16 codes, which wraps -32768 (16 bits counted, 17 by the rule
``|x| + sign`` used everywhere else).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "int_bert_golden.npz"

SENTENCES = ["The cat sat on the mat.", "A quick brown fox jumps over the lazy dog!",
             "Interest rates rose again on Monday.", "hello", "Photosynthesis turns light into chemical energy.",
             "The committee, after a long debate, postponed its decision until the spring of next year."]
TRACE_SENTENCES = 2
CALIB_SENTENCES = 48

# the SimConfig defaults the file was recorded under (issue 15 changed these defaults since)
RECORDED_DEFAULTS = {"outliers": "smooth+per_token", "gelu_table": "gelu16", "weight_rounding": "nearest",
                     "exp_table": "exp16", "embed_bits": 8}

# name -> SimConfig keyword arguments over RECORDED_DEFAULTS
CONFIGS = {
    "default": {},
    "ibert": dict(gelu="ibert", softmax="ibert", layernorm="newton"),
    "ivit": dict(gelu="ivit", softmax="ivit"),
    "divider": dict(reciprocal="divider"),
    "outliers_none": dict(outliers="none"),
    "outliers_smooth": dict(outliers="smooth"),
    "outliers_per_token": dict(outliers="per_token"),
    "pot_per_tensor": dict(act_scales="pot", weight_scales="per_tensor"),
    "tables8_exp3": dict(gelu_table="gelu8", exp_table="exp8", pwl_input_exp={"blocks.0.gelu": 3}),
    "residual32": dict(residual_bits=32, ln_d_bits=20),
    # the default since issue 15 (added with --add from the recorded calibration)
    "default_act_offset": dict(outliers="smooth+per_token+act_offset", gelu_table="gelu16_in12"),
    # the default since issue 15's per-token mantissa scales (added with --add)
    "default_token_mantissa": dict(outliers="smooth+per_token+act_offset+token_mantissa", gelu_table="gelu16_in12",
                                   token_mantissa_bits=3),
    # the default's datapath since GPTQ and norm_mantissa (2026-12-03, added with --add) with round-to-nearest
    # codes: GPTQ re-chooses codes by float arithmetic (BLAS), which may differ between CPUs, never the datapath
    "default_norm_mantissa": dict(outliers="smooth+per_token+act_offset+token_mantissa+norm_mantissa",
                                  gelu_table="gelu16_in12", token_mantissa_bits=3, exp_table="exp16_c12",
                                  embed_bits=10),
}


def config(name: str):
    """The SimConfig of the recorded configuration ``name``."""
    from intsim.config import SimConfig

    return SimConfig(**{**RECORDED_DEFAULTS, **CONFIGS[name]})
STATS_CONFIGS = ("default", "ibert", "default_act_offset", "default_token_mantissa", "default_norm_mantissa")
CALIB_FIELDS = ("absmax", "token_max_p50", "kurtosis")


def calibration_arrays(calib) -> dict:
    """The calibration as flat arrays: ``calib/NAME/FIELD`` (the fields the encoder reads)."""
    out = {}
    for name, s in calib.stats.items():
        p = f"calib/{name}/"
        for f in CALIB_FIELDS:
            out[p + f] = np.float64(getattr(s, f))
        out[p + "percentiles"] = np.array([[k, v] for k, v in sorted(s.percentiles.items())], np.float64)
        out[p + "channel_max"] = np.asarray(s.channel_max)
        out[p + "hist"] = np.asarray(s.hist)
    out["calib/_counts"] = np.array([calib.sentences, calib.tokens], np.int64)
    out["calib/_names"] = np.array(list(calib.stats))          # in observation order
    return out


def calibration_from(data) -> "Calibration":  # noqa: F821 - intsim.calibration.Calibration
    """Rebuild the recorded calibration (the inverse of :func:`calibration_arrays`)."""
    from intsim.calibration import Calibration, TensorStats

    names = [str(n) for n in data["calib/_names"]]
    stats = {}
    for name in names:
        p = f"calib/{name}/"
        stats[name] = TensorStats(absmax=float(data[p + "absmax"]),
                                  percentiles={float(k): float(v) for k, v in data[p + "percentiles"]},
                                  channel_max=data[p + "channel_max"], hist=data[p + "hist"],
                                  kurtosis=float(data[p + "kurtosis"]),
                                  token_max_p50=float(data[p + "token_max_p50"]))
    sentences, tokens = (int(v) for v in data["calib/_counts"])
    return Calibration(stats, sentences, tokens)


def record(model, tok, calib, names=None) -> dict:
    """Every recorded array (or those of the configurations ``names``) for the encoder built from
    ``model`` and ``calib``."""
    from intsim.int_bert import IntBert
    from intsim.opstats import OpStats

    out = {}
    ids, mask = tok(SENTENCES)
    for name in CONFIGS if names is None else names:
        enc = IntBert(model, calib, config(name))
        stats = OpStats() if name in STATS_CONFIGS else None
        out[f"pooled/{name}"] = enc.pooled(ids, mask, stats)
        if stats is not None:
            out[f"stats/{name}"] = np.array(json.dumps(stats.to_dict(), sort_keys=True))
        if name == "default":
            trace = {}
            enc.pooled(ids[:TRACE_SENTENCES], mask[:TRACE_SENTENCES], trace=trace)
            last = f"blocks.{len(enc.blocks) - 1}."
            for k, v in trace.items():
                if k.startswith(("emb.", "blocks.0.")) or k in (last + "sum2", last + "ln2_res", "pooled"):
                    out[f"trace/{k}"] = v
    return out


def main(argv=None) -> None:
    import argparse

    from intsim.bert import Tokenizer, load_model
    from intsim.calibration import calibrate
    from intsim.sentences import calibration_sentences

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--add", action="append", choices=list(CONFIGS),
                    help="record only this configuration into the existing file (its calibration)")
    a = ap.parse_args(argv)
    model = load_model()
    tok = Tokenizer()
    if a.add:
        with np.load(OUT) as d:
            arrays = {k: d[k] for k in d.files}
        arrays.update(record(model, tok, calibration_from(arrays), a.add))
    else:
        calib = calibrate(model, tok, calibration_sentences(CALIB_SENTENCES))
        arrays = {**calibration_arrays(calib), **record(model, tok, calib)}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB, {len(arrays)} arrays)")


if __name__ == "__main__":
    main()
