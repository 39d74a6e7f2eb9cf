"""hw_models.model_energy: energy per inference from intsim's op statistics, INT against FP32."""

from __future__ import annotations

import copy

import pytest

from hw_models import model_energy
from hw_models.pwl_unit import UnitConfig, estimate, estimate_fp
from hw_models.scaling import ComponentLibrary
from intsim import GQAError, PWLDatapath

STATS = {
    "mac": [{"op": "qkv", "a_bits": 8, "b_bits": 8, "acc_bits": 32, "count": 3000},
            {"op": "ffn", "a_bits": 8, "b_bits": 8, "acc_bits": 32, "count": 8000}],
    "lut": [{"op": "gelu", "table": "gelu", "entries": 16, "in_bits": 8, "count": 400},
            {"op": "softmax", "table": "exp", "entries": 8, "in_bits": 8, "count": 100}],
    "add": [{"op": "softmax", "bits": 16, "count": 100}, {"op": "residual", "bits": 32, "count": 50}],
    "mul": [{"op": "layernorm", "a_bits": 16, "b_bits": 16, "count": 30}],
    "shift": [{"op": "requant", "bits": 32, "count": 500}],
    "compare": [{"op": "softmax", "bits": 8, "count": 100}],
    "div": [{"op": "softmax", "bits": 16, "count": 2}],
}


def _lut_energy(entries, in_bits=8):
    cfg = UnitConfig.from_datapath(PWLDatapath(in_bits=in_bits), entries, range(7), programmable=True, pipeline=0,
                                   io_registers=False)
    return estimate(cfg, 28, calibration="none").energy_pj, estimate_fp(cfg, "fp32", 28, calibration="none").energy_pj


def test_hand_made_statistics():
    lib = ComponentLibrary(28)
    r = model_energy(STATS, node=28)
    mac_int = 11000 * (lib.int_mult(8, 8) + lib.int_add(32)).energy_pj
    mac_fp = 11000 * (lib.fp("fp32", "mult") + lib.fp("fp32", "add")).energy_pj
    assert r["int"]["gemm_pj"] == pytest.approx(mac_int) and r["fp32"]["gemm_pj"] == pytest.approx(mac_fp)
    (g_i, g_f), (x_i, x_f) = _lut_energy(16), _lut_energy(8)
    assert r["int"]["by_group"]["lut"] == pytest.approx(400 * g_i + 100 * x_i)
    assert r["fp32"]["by_group"]["lut"] == pytest.approx(400 * g_f + 100 * x_f)
    nonlin_int = (400 * g_i + 100 * x_i + 100 * lib.int_add(16).energy_pj + 50 * lib.int_add(32).energy_pj
                  + 30 * lib.int_mult(16, 16).energy_pj + 500 * lib.barrel_shifter(32, 31).energy_pj
                  + 100 * lib.compare(8).energy_pj + 2 * lib.int_div(16).energy_pj)
    assert r["int"]["nonlinear_pj"] == pytest.approx(nonlin_int)
    nonlin_fp = (400 * g_f + 100 * x_f + 150 * lib.fp("fp32", "add").energy_pj + 30 * lib.fp("fp32", "mult").energy_pj
                 + 500 * lib.int_add(8).energy_pj + 100 * lib.fp("fp32", "compare").energy_pj
                 + 2 * lib.fp("fp32", "div").energy_pj)
    assert r["fp32"]["nonlinear_pj"] == pytest.approx(nonlin_fp)
    for side in ("int", "fp32"):
        s = r[side]
        assert s["total_pj"] == pytest.approx(s["gemm_pj"] + s["nonlinear_pj"])
        assert s["gemm_share"] == pytest.approx(s["gemm_pj"] / s["total_pj"])
        assert sum(s["by_op"].values()) == pytest.approx(s["total_pj"])
    softmax = 100 * x_i + 100 * lib.int_add(16).energy_pj + 100 * lib.compare(8).energy_pj + 2 * lib.int_div(16).energy_pj
    assert r["int"]["by_op"]["softmax"] == pytest.approx(softmax)  # summed over the groups it appears in
    assert r["savings_pct"]["total"] == pytest.approx(100 * (1 - r["int"]["total_pj"] / r["fp32"]["total_pj"]))
    assert 0 < r["savings_pct"]["gemm"] < 100 and 0 < r["savings_pct"]["nonlinear"] < 100
    assert r["int"]["total_pj"] < r["fp32"]["total_pj"]


def test_calibration_scales_every_energy():
    raw = model_energy(STATS, calibration="none")
    cal = model_energy(STATS, calibration="paper")
    k = cal["calibration"]["energy_factor"]
    assert k != 1 and cal["int"]["gemm_pj"] == pytest.approx(k * raw["int"]["gemm_pj"])
    assert cal["fp32"]["total_pj"] == pytest.approx(k * raw["fp32"]["total_pj"])


def test_empty_and_partial_statistics():
    r = model_energy({})
    assert r["int"]["total_pj"] == 0 and r["savings_pct"]["total"] == 0
    r = model_energy({"mac": STATS["mac"]})
    assert r["int"]["nonlinear_pj"] == 0 and r["int"]["gemm_share"] == 1


@pytest.mark.parametrize("mutate, field", [
    (lambda s: s.update(conv=[]), "stats.conv"),
    (lambda s: s.update(mac={}), "stats.mac"),
    (lambda s: s["mac"].append(3), "stats.mac[2]"),
    (lambda s: s["mac"][0].pop("acc_bits"), "stats.mac[0].acc_bits"),
    (lambda s: s["mac"][1].update(count=-1), "stats.mac[1].count"),
    (lambda s: s["mac"][1].update(count=2.5), "stats.mac[1].count"),
    (lambda s: s["add"][0].update(bits=0), "stats.add[0].bits"),
    (lambda s: s["add"][0].update(bits=True), "stats.add[0].bits"),
    (lambda s: s["add"][0].update(width=8), "stats.add[0].width"),
    (lambda s: s["lut"][0].update(entries=1), "stats.lut[0].entries"),
    (lambda s: s["lut"][1].update(in_bits=40), "stats.lut[1].in_bits"),
    (lambda s: s["lut"][1].update(scales="0:6"), "stats.lut[1].scales"),
    (lambda s: s["div"][0].update(op=3), "stats.div[0].op"),
])
def test_bad_statistics_name_the_field(mutate, field):
    stats = copy.deepcopy(STATS)
    mutate(stats)
    with pytest.raises(GQAError) as exc:
        model_energy(stats)
    assert exc.value.field == field, str(exc.value)


def test_not_a_dict():
    with pytest.raises(GQAError, match="stats"):
        model_energy([1, 2])
    with pytest.raises(GQAError, match="node"):
        model_energy(STATS, node=33)
