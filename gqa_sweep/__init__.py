"""gqa_sweep: design-space sweeps of PWL units on a process pool or a Dask cluster (``gqa sweep``).

    gqa sweep examples/sweep_small.toml -o results.csv               # local process pool
    gqa sweep spec.toml -o results.csv --workers 8
    gqa sweep spec.toml -o results.csv --scheduler tcp://10.0.0.5:8786   # a dask.distributed cluster

A spec (TOML) is a grid: functions x entries x formats x search methods, optionally x MiniLM
(``[minilm]``) or decoder-LLM (``[llm]``, SmolLM2-135M: perplexity ratio and top-1 against FP32 on
a held-out genre text) datapath configs. Every point searches one table (:func:`gqa_lut.search`) and records its error
per scale and mean (:meth:`intsim.PWLTable.error`), the area and power of its integer unit and
of the FP32 and INT32 counterparts (:func:`hw_models.compare`), and optionally the integer
MiniLM's cosine and nearest-neighbour agreement to FP32 with the table in its slot::

    functions = ["gelu", "exp", "rsqrt", "reciprocal"]
    entries = [4, 8, 16]
    methods = ["dp", "uniform"]          # any of gqa_lut.METHODS
    scales = {default = "0:6", rsqrt = "0:5"}   # or one "A:B" / [list] for every function
    seed = 0
    domains = {reciprocal = [0.5, 4.0]}  # optional per-function domain overrides

    [formats.s8]                         # named datapath formats (PWLDatapath fields)
    [formats.s12]
    slope_bits = 12
    slope_frac = 8
    icpt_bits = 12
    icpt_frac = 8

    [ga]                                 # options of a method: a table named after it, passed to
    population = 16                      # gqa_lut.search (ga: population, generations, dp_seed)
    generations = 40

    [hw]                                 # gqa hw's options
    node = 28
    freq_mhz = 500.0

    [minilm]                             # optional: integer MiniLM accuracy per point
    sentences = 32
    calib_sentences = 32
    [minilm.configs.pwl]                 # the MiniLM datapath-config axis (SimConfig keys)
    [minilm.configs.ibert]
    gelu = "ibert"

Results (CSV): two comment lines (``# gqa-sim sweep v1 spec_sha256=...`` and the normalised spec
as JSON), the column header, then one row per finished point, appended as it finishes (one
``write`` of a whole line, flushed and fsynced, under an exclusive lock on the file). Every row
ends with a CRC-32 of the rest of its line, so a line torn by a crash is recognised and ignored.
A re-run with the same spec reads the finished points' keys and computes only the others; a
results file of a different spec is refused; an existing file is never truncated or rewritten.
Rows appear in completion order: :func:`load_results` returns them in grid order (column
``index``), the same for every executor and every interruption history.

Python::

    from gqa_sweep import run_sweep, load_results, pareto_front
    report = run_sweep("examples/sweep_small.toml", "results.csv", workers=2)
    rows = load_results("results.csv")
    front = pareto_front([r for r in rows if r["function"] == "gelu"], "int_area_um2", "mean_mse")

``run_sweep`` takes any :class:`concurrent.futures.Executor` (or a ``distributed.Client``);
without one it makes a process pool (``workers``; 0: in this process) or, with
``scheduler=ADDRESS``, connects to a Dask scheduler.

Modules: :mod:`~gqa_sweep.spec` (schema, validation, canonical form and hash),
:mod:`~gqa_sweep.grid` (points, keys, columns), :mod:`~gqa_sweep.evaluate` (one point),
:mod:`~gqa_sweep.results` (the results file), :mod:`~gqa_sweep.executors`,
:mod:`~gqa_sweep.runner` (:func:`run_sweep`), :mod:`~gqa_sweep.pareto`, :mod:`~gqa_sweep.cheapest`
(:func:`cheapest`: the least-cost unit whose exact-optimal table meets an error target, ``gqa cheapest``).
"""

from .cheapest import CheapestResult, cheapest
from .evaluate import evaluate_point
from .executors import InlineExecutor, dask_client, process_pool
from .grid import columns, expand, point_key
from .pareto import pareto_front
from .results import ResultsFile, format_row, load_results, open_results, read_results, table_from_row
from .runner import SweepReport, run_sweep
from .spec import SWEEP_VERSION, load_spec, normalize_spec, spec_hash

__all__ = ["cheapest", "CheapestResult", "evaluate_point", "InlineExecutor", "dask_client", "process_pool", "columns", "expand", "point_key",
           "pareto_front", "ResultsFile", "format_row", "load_results", "open_results", "read_results",
           "table_from_row", "SweepReport", "run_sweep", "SWEEP_VERSION", "load_spec", "normalize_spec", "spec_hash"]
