"""intsim: bit-accurate integer simulator (fixed-point core, PWL unit, table type)."""

import os as _os

# Two OpenMP runtimes live in one process: torch's bundled libgomp and the system libgomp of
# numba's "omp" threading layer (different sonames, they never merge). By default the idle
# threads of each spin-wait after a parallel region, on the cores the other pool's threads need;
# the integer kernels alternate torch and numba calls hundreds of times per forward. Measured on
# 2 cores (docs/benchmarks.md, issue 10): one requantization of a (1, 576) accumulator cost 32 ms
# of CPU spinning, 0.1 ms with sleeping pools; the MiniLM tests' CPU time halved. libgomp reads
# the policy when it loads, so this only takes effect for a pool not yet loaded (torch imported
# after intsim; numba's pool always, it loads at its first parallel call). A user's own
# OMP_WAIT_POLICY is kept.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .datapath import PWLDatapath
from .errors import GQAError
from .fixedpoint import (QFormat, SaturationCounter, quantize_multiplier, requantize, round_real,
                         round_shift, saturate)
from .functions import FUNCTIONS, Function, get_function
from .pwl import pwl_accumulate, pwl_accumulate_population, pwl_output
from .table import PWLTable, TableError, scale_points

# numpy's and scipy's OpenBLAS are a third pool of spinning threads (GPTQ's Hessians and
# factorizations, intsim/gptq.py, are its main users here): on one thread a MiniLM build with GPTQ
# took 2.2 s against 2.9 s idle and 2-6x less than with its default pool on a busy 2-core machine
# (a 2-process sweep, the notebooks). torch's own BLAS is not affected. A user's own
# OPENBLAS_NUM_THREADS is kept.
if "OPENBLAS_NUM_THREADS" not in _os.environ:
    import sys as _sys

    _os.environ["OPENBLAS_NUM_THREADS"] = "1"        # an OpenBLAS loaded from now on reads it
    if "numpy" in _sys.modules:                       # numpy's, loaded before intsim: set at run time
        from threadpoolctl import threadpool_limits as _threadpool_limits

        _threadpool_limits(limits=1, user_api="blas")

__all__ = [
    "PWLDatapath", "GQAError", "QFormat", "SaturationCounter", "quantize_multiplier", "requantize",
    "round_real", "round_shift", "saturate", "FUNCTIONS", "Function", "get_function", "pwl_accumulate",
    "pwl_accumulate_population", "pwl_output", "PWLTable", "TableError", "scale_points",
]
