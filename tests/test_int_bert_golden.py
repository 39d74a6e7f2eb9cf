"""The integer encoder reproduces its recorded integers bit for bit (tests/data/int_bert_golden.npz).

The file was written by ``tools/make_int_bert_golden.py`` before the model was rebuilt from the
shared layers; the encoder is rebuilt here from the recorded calibration, so only the integer
path (offline folding and forward) is compared, not the FP32 calibration run.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from intsim.config import SimConfig
from intsim.int_bert import IntBert
from intsim.opstats import OpStats

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "data" / "int_bert_golden.npz"

_spec = importlib.util.spec_from_file_location("make_int_bert_golden", REPO / "tools" / "make_int_bert_golden.py")
gold = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gold)


@pytest.fixture(scope="module")
def data():
    with np.load(GOLDEN) as d:
        return {k: d[k] for k in d.files}, d.files


@pytest.fixture(scope="module")
def calib():
    with np.load(GOLDEN) as d:
        return gold.calibration_from(d)


@pytest.mark.parametrize("name", list(gold.CONFIGS))
def test_pooled_sums_are_the_recorded_integers(name, data, model, tok, calib):
    arrays, _ = data
    ids, mask = tok(gold.SENTENCES)
    enc = IntBert(model, calib, gold.config(name))
    stats = OpStats() if name in gold.STATS_CONFIGS else None
    got = enc.pooled(ids, mask, stats)
    want = arrays[f"pooled/{name}"]
    assert got.dtype == want.dtype == np.int64
    assert np.array_equal(got, want), f"{name}: {int((got != want).sum())} pooled sums differ"
    if stats is not None:
        assert json.loads(json.dumps(stats.to_dict(), sort_keys=True)) == json.loads(str(arrays[f"stats/{name}"]))
    if name == "default":
        trace = {}
        enc.pooled(ids[:gold.TRACE_SENTENCES], mask[:gold.TRACE_SENTENCES], trace=trace)
        recorded = {k[len("trace/"):]: v for k, v in arrays.items() if k.startswith("trace/")}
        assert len(recorded) > 15
        for k, v in recorded.items():
            assert k in trace, k
            assert trace[k].dtype == v.dtype and np.array_equal(trace[k], v), k


def test_the_default_is_a_recorded_configuration():
    """SimConfig's default datapath is pinned: the recorded entry ``default_norm_mantissa`` with GPTQ's
    codes replaced by round to nearest (GPTQ decides codes in float arithmetic, which may differ between
    CPUs' BLAS; the datapath is the same; ``default_token_mantissa`` and ``default_act_offset`` the
    defaults before), while ``default`` keeps the defaults the file was first recorded under."""
    assert SimConfig().weight_rounding == "gptq"
    assert SimConfig(weight_rounding="nearest").to_dict() == gold.config("default_norm_mantissa").to_dict()
    assert gold.config("default").outliers == "smooth+per_token"


def test_fresh_calibration_observes_the_recorded_tensors(data, model, tok, calib):
    """Calibration still hooks the same tensors, with the same statistics (FP32: to rounding)."""
    from intsim.calibration import calibrate
    from intsim.sentences import calibration_sentences

    fresh = calibrate(model, tok, calibration_sentences(gold.CALIB_SENTENCES))
    assert list(fresh.stats) == list(calib.stats)
    assert (fresh.sentences, fresh.tokens) == (calib.sentences, calib.tokens)
    for name, s in fresh.stats.items():
        r = calib.stats[name]
        assert s.absmax == pytest.approx(r.absmax, rel=1e-4), name
        assert np.allclose(s.channel_max, r.channel_max, rtol=1e-4, atol=1e-6), name
