"""gqa_sweep.cheapest: the least-cost unit meeting an error target, checked against brute force over every configuration."""

import math

import pytest

import gqa_lut
from gqa_cli.main import main
from gqa_sweep import cheapest
from gqa_sweep.cheapest import space
from hw_models import UnitConfig, estimate
from intsim import GQAError

SCALES = (0, 1, 2)
SPACE = dict(entries=(2, 3, 4), slope_formats=((5, 3), (7, 5)), icpt_formats=((5, 3), (7, 5)), scales=SCALES)


@pytest.fixture(scope="module")
def brute():
    """Every configuration of the small space searched (exact) and priced, independently of cheapest()."""
    rows = []
    for c in space(SPACE["entries"], (8,), SPACE["slope_formats"], SPACE["icpt_formats"]):
        t = gqa_lut.search("gelu", c.entries, "exact", scales=SCALES, datapath=c.datapath, binding=False)
        err = t.error()
        area = estimate(UnitConfig.from_datapath(c.datapath, c.entries, SCALES)).area_um2
        rows.append((area, err.mean_mse, err.max_max_abs, c))
    return rows


def _targets(brute):
    errs = sorted({r[1] for r in brute})
    return [errs[len(errs) // 4], errs[len(errs) // 2], errs[-2]]


@pytest.mark.parametrize("which", [0, 1, 2])
@pytest.mark.parametrize("prune", [True, False])
def test_winner_is_the_brute_force_minimum(brute, which, prune):
    target = _targets(brute)[which] * (1 + 1e-9)
    best = min((r for r in brute if r[1] <= target), key=lambda r: r[0])
    res = cheapest("gelu", max_mse=target, prune=prune, runners_up=1, progress=False, **SPACE)
    assert res.winner.choice == best[3]
    assert res.winner.area_um2 == pytest.approx(best[0])
    assert res.winner.mean_mse == pytest.approx(best[1], rel=1e-12)
    # the runner-up is the next cheapest that meets it
    rest = sorted((r for r in brute if r[1] <= target and r[3] != best[3]), key=lambda r: r[0])
    if rest:
        assert res.runners_up[0].area_um2 == pytest.approx(rest[0][0])
    if not prune:
        assert res.counts["pruned"] == 0


def test_pruning_prunes_and_never_drops_the_winner(brute):
    target = sorted(r[1] for r in brute)[2] * (1 + 1e-9)  # tight: only large units meet it
    res = cheapest("gelu", max_mse=target, runners_up=0, progress=False, **SPACE)
    best = min((r for r in brute if r[1] <= target), key=lambda r: r[0])
    assert res.winner.choice == best[3]
    assert res.counts["pruned"] > 0
    assert res.counts["searched"] + res.counts["pruned"] + res.counts["not_needed"] == res.counts["configs"]
    # every pruned configuration really misses the target (its bound is certified)
    err = {r[3]: r[1] for r in brute}
    for c in res.candidates:
        if c.status == "pruned":
            assert err[c.choice] > target and c.bound <= err[c.choice] * (1 + 1e-9)


def test_max_abs_target(brute):
    target = sorted(r[2] for r in brute)[len(brute) // 2]
    res = cheapest("gelu", max_abs=target, runners_up=0, progress=False, **SPACE)
    assert res.winner.max_abs <= target
    # the max-abs optimum of every cheaper configuration misses
    for c in res.candidates:
        if c.cost < res.winner.cost and c.status != "pruned":
            assert c.max_abs > target


def test_process_pool_gives_the_same_winner(brute):
    target = _targets(brute)[1] * (1 + 1e-9)
    a = cheapest("gelu", max_mse=target, runners_up=1, progress=False, **SPACE)
    b = cheapest("gelu", max_mse=target, runners_up=1, progress=False, workers=2, **SPACE)
    assert a.winner.choice == b.winner.choice and [r.choice for r in a.runners_up] == [r.choice for r in b.runners_up]


@pytest.mark.parametrize("kw, field", [
    (dict(max_mse=float("nan")), "max_mse"), (dict(max_mse=0.0), "max_mse"), (dict(max_mse=-1e-4), "max_mse"),
    (dict(), "max_mse"), (dict(max_mse=1e-4, max_abs=math.inf), "max_abs"),
    (dict(max_mse=1e-4, objective="volume"), "objective"), (dict(max_mse=1e-4, max_configs=3), "max_configs"),
    (dict(max_mse=1e-4, entries=()), "entries"), (dict(max_mse=1e-4, workers=2, scheduler="tcp://x:1"), "workers"),
])
def test_bad_input(kw, field):
    with pytest.raises(GQAError) as exc:
        cheapest("gelu", progress=False, **{**SPACE, **kw})
    assert exc.value.field == field


def test_unreachable_target_says_the_best_error():
    with pytest.raises(GQAError) as exc:
        cheapest("gelu", max_mse=1e-12, progress=False, **SPACE)
    msg = str(exc.value)
    assert "no configuration" in msg and "best error found" in msg and "certified" in msg


def test_cli(tmp_path, capsys):
    png = tmp_path / "front.png"
    assert main(["cheapest", "gelu", "--max-mse", "1e-3", "--scales", "0:2", "--entries", "2:4",
                 "--slope-formats", "5.3,7.5", "--icpt-formats", "5.3,7.5", "--plot", str(png), "-q"]) == 0
    out = capsys.readouterr().out
    assert "winner:" in out and "FP32" in out and "breakpoints:" in out and png.stat().st_size > 0
    assert main(["cheapest", "gelu", "--max-mse", "1e-3", "--entries", "8:4", "-q"]) == 2
    assert "contradictory" in capsys.readouterr().err


def test_per_segment_exponent_units_join_the_space():
    fmt = gqa_lut.SegmentExponents(4, (2, 4), 4, (2, 4))
    kw = dict(entries=(2, 3, 4), slope_formats=[(5, 3)], icpt_formats=[(5, 3)], segment_exponents=[fmt], scales=(0, 1, 2))
    brute = []
    for c in space(kw["entries"], (8,), kw["slope_formats"], kw["icpt_formats"], [fmt]):
        extra = dict(segment_exponents=fmt) if c.segment_exponents is not None else dict(datapath=c.datapath)
        t = gqa_lut.search("gelu", c.entries, "exact", scales=(0, 1, 2), binding=False, **extra)
        brute.append((estimate(UnitConfig.from_datapath(c.datapath, c.entries, (0, 1, 2))).area_um2,
                      t.error().mean_mse, c))
    target = sorted(r[1] for r in brute)[2] * (1 + 1e-9)
    best = min((r for r in brute if r[1] <= target), key=lambda r: r[0])
    res = cheapest("gelu", max_mse=target, runners_up=0, progress=False, **kw)
    assert res.winner.choice == best[2]
    if best[2].segment_exponents is not None:
        assert res.winner.table.provenance["segments"]
