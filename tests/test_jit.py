"""intsim/jit.py: kernels compiled with threads or serially give the same integers; the switch is checked."""

from __future__ import annotations

import os
import subprocess
import sys

import numba
import pytest

from intsim import fixedpoint, jit

# a parallel kernel (prange over row blocks, per-block scratch) on rows that span several blocks, printed as
# a digest of its outputs and whether it was compiled parallel
PROBE = """
import hashlib, numpy as np
from intsim import fixedpoint, jit
rng = np.random.default_rng(7)
acc = rng.integers(-2**31, 2**31, size=(3 * fixedpoint.ROW_BLOCK + 5, 37), dtype=np.int64).astype(np.int32)
m0 = rng.integers(2**30, 2**31, size=37).astype(np.int64)
y, t = fixedpoint.requantize_dynamic(acc, m0, rng.integers(0, 40, size=37), bits=8)
print(jit.PARALLEL, fixedpoint._requantize_dynamic.targetoptions["parallel"],
      hashlib.sha256(y.tobytes() + t.tobytes()).hexdigest())
"""


def _probe(parallel: str, cache_dir) -> list[str]:
    env = {**os.environ, "GQA_NUMBA_PARALLEL": parallel, "NUMBA_CACHE_DIR": str(cache_dir)}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_this_process_compiles_as_the_switch_says():
    assert fixedpoint._requantize_dynamic.targetoptions["parallel"] is jit.PARALLEL
    if not jit.PARALLEL:   # a serial build never writes where numba keeps the parallel kernels
        assert os.path.basename(numba.core.config.CACHE_DIR) == jit.SERIAL_CACHE_NAME


def test_parallel_and_serial_kernels_give_the_same_integers(tmp_path):
    threaded = _probe("1", tmp_path / "cache")
    serial = _probe("0", tmp_path / "cache")     # the same NUMBA_CACHE_DIR: serial-O*/ inside it, no mix-up
    assert threaded[:2] == ["True", "True"] and serial[:2] == ["False", "False"]
    assert threaded[2] == serial[2]
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith("serial")] == [jit.SERIAL_CACHE_NAME]


@pytest.mark.parametrize("value", ["yes", "2", ""])
def test_a_bad_switch_is_a_clear_error(value):
    env = {**os.environ, "GQA_NUMBA_PARALLEL": value}
    out = subprocess.run([sys.executable, "-c", "import intsim.jit"], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert f"GQA_NUMBA_PARALLEL: is {value.strip()!r}" in out.stderr and "set it to 1" in out.stderr
