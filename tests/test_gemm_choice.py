"""``int_gemm(backend="auto")``: the backend is chosen by measurement, per operand class, and cached
per machine (intsim/gemm.py). No test here assumes which backend a particular CPU prefers."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from intsim import gemm
from intsim.gemm import REGISTRY, int_gemm, operand_class, pick_backend


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """An empty choice table and a private on-disk cache."""
    monkeypatch.setenv("GQA_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("GQA_GEMM_CACHE", raising=False)
    gemm.clear_choices()
    yield tmp_path
    gemm.clear_choices()


class FakeClock:
    """gemm's ``time`` module in these tests: a clock that only the backends' costs advance, so
    the measurement is deterministic whatever the machine's speed or load."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(gemm, "time", c)
    for name, be in list(REGISTRY.items()):       # every backend costs 1 ms unless a test says otherwise
        monkeypatch.setitem(REGISTRY, name, costing(be, c, 0.001))
    return c


def costing(be, c: FakeClock, seconds: float):
    """Backend ``be`` (same exact result) whose run advances the fake clock by ``seconds``."""

    def run(a, b):
        c.now += seconds
        return be.run(a, b)
    return dataclasses.replace(be, run=run)


def slowed(name: str, seconds: float, c: FakeClock):
    """The registered backend ``name``, costing ``seconds`` more on the fake clock."""
    return costing(REGISTRY[name], c, seconds)


def operands(shape_a=(64, 96), shape_b=(96, 32), da=np.int8, db=np.int8, seed=0):
    rng = np.random.default_rng(seed)
    lo, hi = np.iinfo(da).min, np.iinfo(da).max
    a = rng.integers(lo, hi + 1, shape_a).astype(da)
    b = rng.integers(np.iinfo(db).min, np.iinfo(db).max + 1, shape_b).astype(db)
    return a, b


@pytest.mark.parametrize("layout", ["2d", "batched"])
def test_an_artificially_slow_backend_is_never_chosen(fresh, clock, monkeypatch, layout):
    a, b = operands() if layout == "2d" else operands((3, 16, 40), (3, 40, 8))
    candidates = [n for n, be in REGISTRY.items() if be.auto and be.accepts(a, b, gemm.check_gemm(a, b))]
    assert len(candidates) >= 2
    for victim in candidates:
        gemm.clear_choices(disk=True)
        with monkeypatch.context() as m:
            m.setitem(REGISTRY, victim, slowed(victim, 0.02, clock))
            chosen = pick_backend(a, b)
        assert chosen != victim and chosen in candidates


def test_the_fastest_of_known_speeds_wins_and_every_time_is_recorded(fresh, clock, monkeypatch):
    a, b = operands()
    extra = {"int_mm": 0.03, "f32": 0.0, "f64": 0.01}
    for name in list(REGISTRY):
        monkeypatch.setitem(REGISTRY, name, slowed(name, extra.get(name, 0.005), clock))
    assert pick_backend(a, b) == "f32"
    secs = gemm._CHOICES[operand_class(a, b)]["seconds"]
    assert set(secs) == set(gemm.candidates(a, b)) >= {"f32", "f64"}   # int_mm too where it is exact
    # the fake clock's exact costs: 1 ms each, plus the extra given above
    assert secs["f32"] == pytest.approx(0.001) and secs["f64"] == pytest.approx(0.011)
    assert secs.get("int_mm", 0.031) == pytest.approx(0.031)
    assert all(v == pytest.approx(0.006) for k, v in secs.items() if k not in ("int_mm", "f32", "f64"))


def test_the_result_is_exact_whatever_was_chosen(fresh):
    for da, db, sa, sb in ((np.int8, np.int8, (50, 70), (70, 9)), (np.uint8, np.int8, (2, 30, 1100), (2, 1100, 7)),
                           (np.int8, np.int8, (4, 33, 1536), (1536, 5))):
        a, b = operands(sa, sb, da, db)
        expect = np.matmul(a.astype(np.int64), b.astype(np.int64))
        assert np.array_equal(int_gemm(a, b).astype(np.int64), expect)


def test_operand_classes_are_measured_separately(fresh):
    a2, b2 = operands()
    a3, b3 = operands((2, 8, 96), (2, 96, 8))
    au, bu = operands((2, 8, 96), (2, 96, 8), np.uint8, np.int8)
    big_k = operands((4, 2000), (2000, 3))
    classes = {operand_class(*x) for x in ((a2, b2), (a3, b3), (au, bu), big_k)}
    assert len(classes) == 4
    for x in ((a2, b2), (a3, b3), (au, bu), big_k):
        int_gemm(*x)
    assert set(gemm.chosen_backends()) == classes
    # the int8-only backend is never a candidate for uint8 operands
    assert "int_mm" not in gemm.candidates(au, bu)


@pytest.mark.parametrize("m,k,n,size", [(1, 256, 4095, "small"), (1, 256, 4096, "medium"),
                                         (2, 512, 65535, "medium"), (2, 512, 65536, "large"),
                                         (1024, 1, 1024, "medium"), (64, 1, 16, "small")])
def test_operand_size_classes(m, k, n, size):
    """The size class counts ``M K N`` multiply-accumulates (SMALL_MACS = 2**20, LARGE_MACS = 2**26),
    M and K distinct (``M = 1`` rows of a long K are small, a K = 1 outer product of 1024 x 1024
    is medium); a batch multiplies it."""
    a, b = np.zeros((m, k), np.int8), np.zeros((k, n), np.int8)
    assert operand_class(a, b).endswith(" " + size)
    assert operand_class(a, b).startswith("2d int8xint8 ")
    batched = operand_class(np.zeros((4, m, k), np.int8), np.zeros((k, n), np.int8))
    assert batched.startswith("batched ") and batched.endswith(" " + ("small" if 4 * m * k * n < 2**20 else
                                                                      "large" if 4 * m * k * n >= 2**26 else "medium"))


def pair_saturating(a, b, float_out=False):
    """A plausible non-exact kernel: pairs of products summed in saturating int16 before the
    int32 accumulation (what vpmaddubsw does; ``torch._int_mm`` behaves so on AVX2 oneDNN)."""
    a = np.asarray(a, np.int64)
    b = np.asarray(getattr(b, "array", b), np.int64)
    p = a[..., :, :, None] * b[..., None, :, :]                       # (..., M, K, N)
    k = p.shape[-2] // 2 * 2
    pairs = np.clip(p[..., 0:k:2, :] + p[..., 1:k:2, :], -(2**15), 2**15 - 1)
    return (pairs.sum(axis=-2) + p[..., k:, :].sum(axis=-2)).astype(np.int32)


def test_an_inexact_backend_fails_the_self_test_and_is_never_picked(fresh, monkeypatch):
    """The known-answer self-test refuses a kernel that is right on ordinary operands but
    saturates on extreme ones; a measurement that sees a wrong product drops the backend and
    remembers it as inexact."""
    monkeypatch.setitem(REGISTRY, "pairsat", dataclasses.replace(REGISTRY["f64"], name="pairsat", run=pair_saturating))
    a, b = operands((8, 32), (32, 5))
    a, b = np.clip(a, -100, 100), np.clip(b, -100, 100)              # pairs of products never reach 2**15 here
    assert np.array_equal(pair_saturating(a, b), a.astype(np.int64) @ b.astype(np.int64))
    assert not gemm.is_exact("pairsat")
    assert "pairsat" not in gemm.candidates(a, b)
    gemm.clear_choices()
    x = np.full((4, 16), -128, np.int8)                              # -128 * -128 twice: 2**15 saturates
    kept = list(gemm.measure(x, x.T.copy(), names=["pairsat", "f64"]))     # the backends measured exact
    assert kept == ["f64"] and gemm._EXACT["pairsat"] is False
    assert not gemm.is_exact("pairsat")


@pytest.mark.parametrize("shape_a,shape_b", [((20000, 64), (64, 64)), ((20000, 64), (64, 16)), ((64, 2, 32), (64, 32, 16)),
                                             ((8192, 4, 64), (8192, 64, 64)),
                                             ((2, 3, 40, 64), (2, 3, 64, 40)), ((3, 40, 64), (64, 40))])
def test_the_probe_is_bounded(fresh, monkeypatch, shape_a, shape_b):
    """The probe multiplies a slice of about PROBE_MACS pairs (at most twice that, at least half
    of it or the whole product if smaller): not the whole of a large product, not a sliver of a
    batched one; broadcast batch dimensions (attention's (B, H, ...)) included."""
    seen = []
    f32 = REGISTRY["f32"]
    monkeypatch.setitem(REGISTRY, "f32", dataclasses.replace(
        f32, run=lambda a, b: seen.append(int(np.prod(np.broadcast_shapes(a.shape[:-1] + (1,), b.shape[:-2] + (1, 1))))
                                          * a.shape[-1] * b.shape[-1]) or f32.run(a, b)))
    a, b = operands(shape_a, shape_b)
    total = int(np.prod(np.broadcast_shapes(a.shape[:-1] + (1,), b.shape[:-2] + (1, 1)))) * a.shape[-1] * b.shape[-1]
    for name in REGISTRY:          # the known-answer self-tests run first, on their own operands
        gemm.is_exact(name)
    seen.clear()
    pick_backend(a, b)
    assert seen and all(min(total, gemm.PROBE_MACS // 2) <= macs <= 2 * gemm.PROBE_MACS for macs in seen), (seen, total)


def test_choices_persist_on_disk_and_are_reloaded_without_measuring(fresh, monkeypatch):
    a, b = operands()
    first = pick_backend(a, b)
    path = gemm.cache_path()
    assert path.parent == fresh and path.is_file()
    saved = json.loads(path.read_text())
    assert saved["machine"] == json.loads(json.dumps(gemm.machine_fingerprint()))
    assert saved["choices"][operand_class(a, b)]["backend"] == first
    gemm.clear_choices()                       # a new process: memory empty, disk kept

    def no_measure(*args, **kw):
        raise AssertionError("a cached choice must not be measured again")
    monkeypatch.setattr(gemm, "measure", no_measure)
    assert pick_backend(a, b) == first
    assert not list(fresh.glob("*.tmp")) and not list(fresh.glob(".*.tmp"))


def test_the_cache_directory_is_created_with_its_parents(fresh, monkeypatch):
    nested = fresh / "a" / "b"
    monkeypatch.setenv("GQA_CACHE_DIR", str(nested))
    a, b = operands()
    pick_backend(a, b)
    assert gemm.cache_path().parent == nested and gemm.cache_path().is_file()


def test_another_machines_choice_is_never_reused(fresh, monkeypatch):
    a, b = operands()
    here = gemm.machine_fingerprint()
    other = dict(here, cpu="AMD EPYC 7B13 (Zen 3)", capability="AVX2")
    assert gemm.cache_path(other) != gemm.cache_path(here)
    # a file at this machine's path that claims another machine (tampered, or a hash collision)
    path = gemm.cache_path(here)
    path.write_text(json.dumps({"machine": other, "choices": {operand_class(a, b): {"backend": "numpy"}}}))
    assert pick_backend(a, b) != "numpy"
    # the ISA-limiting environment is part of the key
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "SSE41" if here["env"].get("ONEDNN_MAX_CPU_ISA") != "SSE41" else "AVX")
    assert gemm.cache_path() != path


@pytest.mark.parametrize("content", ["{not json", "[]", '{"machine": 3}', '{"choices": {"x": 1}}'])
def test_a_corrupt_cache_is_measured_again(fresh, content):
    a, b = operands()
    gemm.cache_path().write_text(content)
    assert pick_backend(a, b) in REGISTRY
    assert json.loads(gemm.cache_path().read_text())["choices"]


def test_cache_off_writes_nothing(fresh, monkeypatch):
    monkeypatch.setenv("GQA_GEMM_CACHE", "off")
    assert gemm.cache_path() is None
    a, b = operands()
    assert pick_backend(a, b) in REGISTRY
    assert not list(fresh.iterdir())


def test_empty_operands_are_not_measured(fresh):
    a, b = np.zeros((0, 5), np.int8), np.zeros((5, 3), np.int8)
    assert int_gemm(a, b).shape == (0, 3)
    assert gemm.chosen_backends() == {}


def test_a_cached_choice_missing_a_current_candidate_is_measured_again(fresh, monkeypatch):
    """A choice measured before a backend took its operand class (an older version's cache) is not
    reused: the class is measured again with every current candidate."""
    a, b = operands()
    pick_backend(a, b)
    cls = operand_class(a, b)
    path = gemm.cache_path()
    saved = json.loads(path.read_text())
    saved["choices"][cls] = {"backend": "f64", "seconds": {"f64": 0.001}}    # as if only f64 had been a candidate
    path.write_text(json.dumps(saved))
    gemm.clear_choices()
    measured = []
    real = gemm.measure
    monkeypatch.setattr(gemm, "measure", lambda *args, **kw: measured.append(1) or real(*args, **kw))
    pick_backend(a, b)
    backends_timed = set(gemm._CHOICES[cls]["seconds"])    # the names the new measurement covered
    assert measured and backends_timed == set(gemm.candidates(a, b))


def test_a_new_process_reads_the_disk_cache(fresh):
    """A fresh interpreter takes this machine's cached choice without measuring (here a choice
    written by hand, which a measurement would not have made)."""
    import os
    import subprocess
    import sys

    script = """
import json, sys
import numpy as np
from intsim import gemm
a, b = np.ones((64, 96), np.int8), np.ones((96, 32), np.int8)
if sys.argv[1] == "write":
    names = gemm.candidates(a, b)
    slow = names[-1]
    choice = {"backend": slow, "seconds": {n: 1.0 for n in names}}
    gemm.cache_path().write_text(json.dumps({"machine": gemm.machine_fingerprint(),
                                             "choices": {gemm.operand_class(a, b): choice}}))
    print(slow)
else:
    gemm.measure = None           # a measurement would fail: the choice must come from the disk
    print(gemm.pick_backend(a, b))
"""
    env = dict(os.environ, GQA_CACHE_DIR=str(fresh))
    run = [subprocess.run([sys.executable, "-c", script, mode], env=env, capture_output=True, text=True,
                          timeout=120) for mode in ("write", "read")]
    assert all(r.returncode == 0 for r in run), [r.stderr[-2000:] for r in run]
    assert run[1].stdout.split() == run[0].stdout.split()


def test_the_probe_broadcasts_a_batch_only_the_right_operand_has(fresh):
    """A 2-D left operand times a batched right one (and a batch of 1 times a batch of 4): the
    probe slices the broadcast batch, and the product is exact."""
    for shape_a, shape_b in (((8, 32), (4, 32, 16)), ((1, 8, 32), (4, 32, 16))):
        a, b = operands(shape_a, shape_b)
        timed = set(gemm.measure(a, b))        # the backends measured (their times are not checked)
        assert timed and timed <= set(gemm.candidates(a, b))
        assert np.array_equal(int_gemm(a, b).astype(np.int64), np.matmul(a.astype(np.int64), b.astype(np.int64)))
