"""How the integer kernels are compiled: ``parallel_njit``, numba with or without threads.

``parallel_njit`` is ``numba.njit(cache=True, parallel=True)`` for the kernels whose outer loop is
``numba.prange`` (rows, heads, chunks): on a multi-core machine each thread takes whole rows. With
the environment variable ``GQA_NUMBA_PARALLEL=0`` (read when intsim is first imported) they are
compiled serially instead, ``prange`` then being ``range``.

Why the switch: numba's parallel passes make a compilation about 4x slower (``_layernorm``, one
signature: 16 s against 4 s on an AMD EPYC Zen 3), and a process that compiles every kernel and
runs each on small inputs, as the test suite does on a fresh clone (numba's cache cold: about 300
of its 700 seconds were compilation), gains nothing from threads whose cores its own workers
already use. The results are the same integers: every ``prange`` loop writes only its own rows
(or heads, chunks) and keeps its temporaries inside the loop body (``tests/test_jit.py`` runs a
parallel compile against the serial one).

numba's on-disk cache does not key on ``parallel`` (its index holds the signature, the CPU and the
bytecode, not the flags nor ``NUMBA_OPT``), so a serial build caches under a directory of its
own, named with its LLVM level: ``serial-O3/`` (say) inside ``NUMBA_CACHE_DIR``, or ``numba/`` of
:func:`intsim.fileio.user_cache_dir`; it never stands in for the parallel one. (The test suite
compiles serially at ``NUMBA_OPT=1``: tests/conftest.py.)
"""

from __future__ import annotations

import os

import numba
from numba.core import config as _numba_config

from .errors import GQAError
from .fileio import user_cache_dir

ENV = "GQA_NUMBA_PARALLEL"


def _parallel_from_env() -> bool:
    value = os.environ.get(ENV, "1").strip()
    if value not in ("0", "1"):
        raise GQAError(ENV, f"is {value!r}", "set it to 1 (threaded kernels, the default) or 0 (serial)")
    return value == "1"


PARALLEL = _parallel_from_env()

# the serial build's cache directory, inside NUMBA_CACHE_DIR (or the user cache's numba/)
SERIAL_CACHE_NAME = f"serial-O{os.environ.get('NUMBA_OPT', '').strip() or 3}"

if not PARALLEL:
    _numba_config.CACHE_DIR = os.path.join(_numba_config.CACHE_DIR or user_cache_dir() / "numba", SERIAL_CACHE_NAME)


def parallel_njit(fn):
    """``numba.njit(cache=True, parallel=PARALLEL)(fn)``: a kernel whose outer loop is a ``prange``."""
    return numba.njit(cache=True, parallel=PARALLEL)(fn)
