"""Running (or resuming) a sweep: every pending point on an executor, each finished point appended."""

from __future__ import annotations

import concurrent.futures as cf
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from intsim import GQAError

from .evaluate import evaluate_point
from .executors import InlineExecutor, dask_client, executor_slots, process_pool
from .grid import columns, expand
from .results import check_existing, format_row, open_results, read_results, typed_row
from .spec import is_int, load_spec


@dataclass
class SweepReport:
    path: Path
    points: int                 # in the grid
    skipped: int                # finished before this run (read from the file)
    computed: int               # finished by this run
    errors: int                 # rows (of all finished) with an error
    seconds: float
    torn: int = 0               # damaged lines ignored in the file
    rows: list = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.skipped + self.computed == self.points

    def summary(self) -> str:
        s = (f"{self.points} points: {self.computed} computed now, {self.skipped} already in {self.path}; "
             f"{self.errors} with errors; {self.seconds:.1f} s")
        if self.torn:
            s += f"; {self.torn} damaged line(s) ignored"
        return s if self.complete else s + f"; {self.points - self.skipped - self.computed} left (re-run to resume)"


def run_sweep(spec, out, executor=None, workers: int | None = None, progress: bool = True,
              scheduler: str | None = None, scheduler_timeout: float = 10.0, max_points: int | None = None,
              on_point=None) -> SweepReport:
    """Run (or resume) a sweep, appending every finished point to ``out``.

    ``spec``: a TOML file path, a TOML string or a dict. ``executor``: any
    :class:`concurrent.futures.Executor` or a ``distributed.Client`` (not shut down here);
    otherwise ``scheduler`` (a Dask scheduler address) or a local process pool of ``workers``
    processes (default: one per CPU; 0: this process). ``max_points``: stop after this many new
    points (the rest on a later run). ``on_point(point, result)``: called in this process as each
    point finishes.
    """
    from intsim.fileio import check_writable

    t0 = time.perf_counter()
    spec = load_spec(spec)
    points = expand(spec)
    if max_points is not None and (not is_int(max_points) or max_points < 0):
        raise GQAError("max_points", f"must be a non-negative integer, got {max_points!r}")
    if executor is not None and scheduler is not None:
        raise GQAError("scheduler", "given together with an executor", "pass one or the other")
    if workers is not None and (executor is not None or scheduler is not None):
        raise GQAError("workers", "given together with an executor or a scheduler", "the executor decides; drop one")
    p = check_writable(out, "output")
    before = check_existing(p, spec)   # refuse another spec's file before connecting anywhere
    done = {r["key"] for r in before.rows} if before else set()
    own = executor is None
    client = None
    if own and any(pt["key"] not in done for pt in points) and max_points != 0:
        if scheduler is not None:
            client = dask_client(scheduler, scheduler_timeout)
            executor = client.get_executor()
        elif workers == 0:
            executor = InlineExecutor()
        else:
            executor = process_pool(workers)
    elif executor is not None and not isinstance(executor, cf.Executor) and hasattr(executor, "get_executor"):
        executor = executor.get_executor()       # a distributed.Client
    computed = 0
    try:
        app, done, _ = open_results(p, spec)
        try:
            pending = [pt for pt in points if pt["key"] not in done]
            if max_points is not None:
                pending = pending[:max_points]
            if pending:
                window = 4 * executor_slots(executor, os.cpu_count() or 1)
                computed = _drive(executor, pending, window, app, columns(spec), len(points), len(done), progress,
                                  on_point)
        finally:
            app.close()
    except BaseException:
        if own and executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
            executor = None
        raise
    finally:
        if own and executor is not None:
            executor.shutdown(wait=True)
        if client is not None:
            client.close()
    final = read_results(p)
    rows = sorted((typed_row(r) for r in final.rows), key=lambda r: r["index"])
    return SweepReport(p, len(points), len(done), computed, sum(1 for r in rows if r.get("error")),
                       time.perf_counter() - t0, final.torn, rows)


def _drive(executor, pending, window, app, cols, total, done, progress, on_point) -> int:
    from tqdm.auto import tqdm

    todo = iter(pending)
    inflight: dict = {}
    computed = 0
    with tqdm(total=total, initial=done, desc="sweep", unit="pt", disable=not progress, smoothing=0.1) as bar:
        def fill():
            for p in todo:
                inflight[executor.submit(evaluate_point, p)] = p
                if len(inflight) >= window:
                    break
        try:
            fill()
            while inflight:
                finished, _ = cf.wait(list(inflight), return_when=cf.FIRST_COMPLETED)
                for fut in sorted(finished, key=lambda f: inflight[f]["index"]):
                    p = inflight.pop(fut)
                    try:
                        result = fut.result()
                    except cf.BrokenExecutor:      # a worker was killed (by a signal, or for memory)
                        raise GQAError("workers", f"a worker process died while computing {p['key']} (killed, "
                                       "or out of memory)", f"every finished point is in {app.path}; re-run "
                                       "to resume (--workers 0 runs in this process)") from None
                    app.write(format_row(cols, p, result))
                    computed += 1
                    bar.update(1)
                    if result.get("error"):
                        bar.set_postfix_str(f"last error: {p['key']}", refresh=False)
                    if on_point is not None:
                        on_point(p, result)
                fill()
        except BaseException:
            for fut in inflight:
                fut.cancel()
            raise
    return computed
