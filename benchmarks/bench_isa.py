"""The integer encoder on every CPU: native ISA and AVX2 only, in one run.

    python benchmarks/bench_isa.py                    # both ISA settings, sim-bench + the demo's sim step
    python benchmarks/bench_isa.py --only avx2 --repeats 5

Each setting runs in its own process (the ISA limits are read when oneDNN, ATen and numba
start): ``native`` as the machine is, ``avx2`` with ``ONEDNN_MAX_CPU_ISA=AVX2
ATEN_CPU_CAPABILITY=avx2 NUMBA_CPU_NAME=haswell`` (what a CPU without AVX-512/VNNI, such as Zen 3,
runs). Both run with intsim's default OpenMP wait policy, PASSIVE (torch's and numba's OpenMP
pools sleep between parallel regions, see ``intsim/__init__.py``); the ``-spin`` settings
restore spin-waiting pools (``OMP_WAIT_POLICY=ACTIVE GOMP_SPINCOUNT=300000``: libgomp's own
default of about 3 ms of spinning after each region). For each it prints:

- the exact int8 GEMM (4096x384)@(384x1536) per backend, and whether the backend passed its
  known-answer test there (with oneDNN limited to AVX2, ``torch._int_mm`` does not);
- ``gqa sim-bench --batch 32 --seq 128``: FP32 torch and the integer path interleaved in one
  process, their ratio (targets: <= 1.0 on AVX2, <= 0.6 with VNNI) and the GEMM backend chosen
  for each operand class;
- the demo's ``gqa sim`` step (400 sentences, calibration on 256 included, whole process wall
  time; target < 20 s on AVX2).

The GEMM choices are measured afresh (a private cache directory per setting).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine  # noqa: E402

AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "NUMBA_CPU_NAME": "haswell"}
# torch (its bundled libgomp) and numba (its omp threading layer: the system libgomp) run two
# OpenMP pools; intsim makes both sleep when idle (PASSIVE), SPIN is libgomp's own default of
# spinning ~3 ms after each parallel region (its spin count without a policy), read at load time
SPIN = {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "300000"}
SETTINGS = {
    "native": {},
    "avx2": AVX2,
    "native-spin": SPIN,
    "avx2-spin": {**AVX2, **SPIN},
}

GEMM_PROBE = r"""
import json, time, numpy as np, torch
from intsim import gemm
rng = np.random.default_rng(0)
a = rng.integers(-128, 128, (4096, 384)).astype(np.int8)
b = rng.integers(-128, 128, (384, 1536)).astype(np.int8)
out = {"capability": torch.backends.cpu.get_cpu_capability()}
for name in ("int_mm", "f32", "f64"):
    run = gemm.REGISTRY[name].run
    run(a, b)
    ts = []
    for _ in range(3):
        t0 = time.perf_counter()
        run(a, b)
        ts.append(time.perf_counter() - t0)
    out[name] = {"seconds": min(ts), "exact": gemm.is_exact(name)}
print(json.dumps(out))
"""


def run(cmd, env, cwd=REPO):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr}")
    return p.stdout, time.perf_counter() - t0


def bench(name, extra, repeats):
    env = dict(os.environ, **extra, GQA_CACHE_DIR=tempfile.mkdtemp(prefix=f"gqa-bench-{name}-"))
    print(f"\n== {name} ({' '.join(f'{k}={v}' for k, v in extra.items()) or 'no limits'})")
    g = json.loads(run([sys.executable, "-c", GEMM_PROBE], env)[0])
    print(f"torch capability {g['capability']}; exact int8 GEMM (4096x384)@(384x1536):")
    for be in ("int_mm", "f32", "f64"):
        ok = "exact" if g[be]["exact"] else "NOT EXACT here (never used)"
        print(f"  {be:7s} {1e3 * g[be]['seconds']:8.1f} ms  {ok}")
    out, _ = run([sys.executable, "-m", "gqa_cli", "sim-bench", "--batch", "32", "--seq", "128",
                  "--repeats", str(repeats)], env)
    print("gqa sim-bench --batch 32 --seq 128:")
    print("".join(f"  {line}\n" for line in out.strip().splitlines()[1:]), end="")
    ratio = float(re.search(r"ratio \(integer / FP32\): ([\d.]+)", out).group(1))
    with tempfile.TemporaryDirectory() as tmp:
        out, wall = run([sys.executable, "-m", "gqa_cli", "sim", "--text", str(REPO / "intsim/data/sentences.txt"),
                         "--out", str(Path(tmp) / "e.npy"), "--compare-fp32", "--report", str(Path(tmp) / "r.json"),
                         "-q"], env)     # the Makefile's demo line, output paths aside
    print(f"demo's gqa sim step (400 sentences, calibration included): {wall:.1f} s wall")
    print("".join(f"  {line}\n" for line in out.strip().splitlines() if "calibrated" in line or "integer path" in line
                  or "cosine" in line), end="")
    return ratio, wall


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=sorted(SETTINGS))
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    print(f"machine: {machine()}")
    rows = {n: bench(n, SETTINGS[n], a.repeats) for n in SETTINGS if a.only in (None, n)}
    print("\n| ISA | sim-bench ratio (int / FP32) | demo sim step |")
    print("|---|---|---|")
    for n, (ratio, wall) in rows.items():
        print(f"| {n} | {ratio:.2f} | {wall:.1f} s |")


if __name__ == "__main__":
    main()
