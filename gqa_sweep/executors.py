"""Executors: in this process, a local process pool, or a Dask cluster."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import sys

from intsim import GQAError

from .spec import is_int, one_line


class InlineExecutor(cf.Executor):
    """Runs each submitted call at once in this process (``workers=0``)."""

    def submit(self, fn, /, *args, **kwargs):
        fut = cf.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - delivered through the future
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            fut.set_exception(exc)
        return fut


def process_pool(workers: int | None = None) -> cf.ProcessPoolExecutor:
    """A local process pool (forkserver on POSIX: workers do not inherit this process's threads)."""
    import multiprocessing as mp

    if workers is not None and (not is_int(workers) or workers < 1):
        raise GQAError("--workers", f"must be a positive integer, got {workers!r}", "0 runs in this process")
    ctx = None
    if sys.platform != "win32" and "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["gqa_sweep.evaluate", "gqa_lut", "hw_models"])
    return cf.ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1, mp_context=ctx,
                                  initializer=end_with_parent, initargs=(os.getpid(),))


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):   # PermissionError: the pid was reused by another user
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def end_with_parent(parent_pid: int, interval: float = 0.5) -> None:
    """Worker initializer: a daemon thread that ends this worker once ``parent_pid`` is gone.

    A pool's workers are children of the forkserver, not of the sweep, so neither the kernel's
    parent-death signal nor the pool's own shutdown reaches them when the sweep is killed
    (SIGKILL, or SIGTERM's default action); without this they finish their point and wait on,
    holding the forkserver and the resource tracker alive too."""
    import threading
    import time

    def watch():
        while True:
            time.sleep(interval)
            if not _alive(parent_pid):
                os._exit(1)

    threading.Thread(target=watch, name="gqa-end-with-parent", daemon=True).start()


def dask_client(address: str, timeout: float = 10.0):
    """A ``distributed.Client`` connected to ``address``, with at least one worker, or a clear GQAError."""
    try:
        from distributed import Client
    except ImportError:
        raise GQAError("--scheduler", "needs dask.distributed", "pip install 'dask[distributed]'") from None
    if not isinstance(address, str) or not address.strip():
        raise GQAError("--scheduler", f"{address!r} is not a scheduler address", "e.g. tcp://127.0.0.1:8786")
    try:
        client = Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        raise GQAError("--scheduler", f"cannot reach a Dask scheduler at {address} within {timeout:g} s "
                       f"({type(exc).__name__}: {one_line(exc)})",
                       "start one (`dask scheduler` and `dask worker ADDRESS`) or check the address") from None
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (TimeoutError, OSError) as exc:
        client.close()
        raise GQAError("--scheduler", f"the scheduler at {address} has no workers after {timeout:g} s "
                       f"({type(exc).__name__})", "start workers with `dask worker ADDRESS`") from None
    return client


def executor_slots(executor, default: int) -> int:
    n = getattr(executor, "_max_workers", None)
    client = getattr(executor, "_client", None)
    if client is not None:
        with contextlib.suppress(Exception):
            n = sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values())
    return max(int(n or default), 1)
