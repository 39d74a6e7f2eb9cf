"""``gqa sweep``: parse the command line, run :func:`gqa_sweep.run_sweep`, print the summary and fronts.

    gqa sweep examples/sweep_small.toml -o results.csv               # local process pool
    gqa sweep spec.toml -o results.csv --workers 8
    gqa sweep spec.toml -o results.csv --scheduler tcp://10.0.0.5:8786   # a dask.distributed cluster

The spec format, the results file and the Python API are :mod:`gqa_sweep`'s.
"""

from __future__ import annotations

import sys

from gqa_sweep import expand, load_spec, pareto_front, run_sweep, spec_hash
from intsim import GQAError


def _print_fronts(rows) -> None:
    ok = [r for r in rows if not r.get("error") and r.get("mean_mse") is not None]
    if not ok:
        return
    print("Pareto fronts, integer unit area against mean MSE over the scale set (FP32 unit of the same entries):")
    for f in dict.fromkeys(r["function"] for r in ok):
        print(f"  {f}:")
        for r in pareto_front([r for r in ok if r["function"] == f], "int_area_um2", "mean_mse"):
            print(f"    {r['int_area_um2']:>8.0f} um2 (FP32 {r['fp32_area_um2']:>6.0f})  {r['mean_mse']:.3e}  {r['key']}")


def cmd_sweep(a) -> int:
    if a.list:
        spec = load_spec(a.spec)
        points = expand(spec)
        print(f"{len(points)} points, spec sha256 {spec_hash(spec)[:12]}")
        for p in points:
            print(f"  {p['index']:>4}  {p['key']}")
        return 0
    if a.output is None:
        raise GQAError("--output", "is required", "give -o results.csv")
    if a.workers is not None and a.scheduler is not None:
        raise GQAError("--workers", "given together with --scheduler", "the cluster decides its workers; drop one")
    if a.workers is not None and a.workers < 0:
        raise GQAError("--workers", f"must be >= 0, got {a.workers}", "0 runs in this process")
    try:
        report = run_sweep(a.spec, a.output, workers=a.workers, progress=not a.quiet, scheduler=a.scheduler,
                           scheduler_timeout=a.scheduler_timeout, max_points=a.max_points)
    except KeyboardInterrupt:
        print(f"gqa sweep: interrupted; every finished point is in {a.output}; re-run the same command to resume",
              file=sys.stderr)
        return 130
    print(report.summary())
    if report.torn:
        print(f"note: {report.torn} damaged line(s) in {a.output} were ignored (a write cut short); "
              "their points were computed again", file=sys.stderr)
    if not a.quiet:
        _print_fronts(report.rows)
    return 0


def register(sub) -> None:
    """Add ``sweep`` to the ``gqa`` subcommands."""
    s = sub.add_parser("sweep", help="design-space sweep (functions x entries x formats x methods) to a CSV")
    s.add_argument("spec", help="TOML sweep spec (see examples/sweep_small.toml)")
    s.add_argument("-o", "--output", help="results CSV; an existing file of the same spec is resumed")
    s.add_argument("--workers", type=int, default=None, help="local worker processes (default: one per CPU; "
                   "0: in this process)")
    s.add_argument("--scheduler", default=None, help="a dask.distributed scheduler address (tcp://HOST:PORT)")
    s.add_argument("--scheduler-timeout", type=float, default=10.0, help="seconds to reach the scheduler (10)")
    s.add_argument("--max-points", type=int, default=None, help="stop after this many new points")
    s.add_argument("--list", action="store_true", help="print the grid's points and exit")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no Pareto summary")
    s.set_defaults(run=cmd_sweep)

