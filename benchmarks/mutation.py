"""Mutation testing of the core modules with cosmic-ray, each module against its own tests.

Slow (minutes to hours per module on 2 cores), so not part of CI; results go to docs/testing.md.

    python benchmarks/mutation.py                       # every module in MODULES
    python benchmarks/mutation.py gqa_lut/ga.py         # some of them
    python benchmarks/mutation.py --count               # mutants per module, nothing run
    python benchmarks/mutation.py --verify 40 MODULE    # after a run: re-run 40 of its mutants the slow way

How it works, per module:

1. the working tree (tracked and untracked-not-ignored files, no ``__pycache__``) is copied to
   ``--workdir/<module>``: cosmic-ray edits the module on disk, the checkout stays untouched;
   ``--workdir/shared`` links to ``../shared`` (the GQA-LUT reference tables some tests read);
2. ``cosmic-ray init`` lists the mutants; ``cr-filter-operators`` skips the operators outside
   :data:`KEEP_BINARY` / :data:`KEEP_COMPARE` (cosmic-ray replaces every binary operator by all
   eleven others, ``a + b`` -> ``a ^ b`` and the like, which multiplies the count without
   testing anything new; the kept pairs are the ones mutmut uses: ``+ -``, ``* /``, ``<< >>``,
   ``& |``, ``< <=``, ...);
3. the baseline: the module's tests run once on the unmutated tree under coverage.py with one
   dynamic context per test (the test's node id); it must pass, it warms the template numba
   cache, and it gives the *test map*: for every line of the module, the tests that can see a
   mutant of it (:func:`build_selection`);
4. ``cosmic-ray exec`` runs the test command once per mutant (exit status 0: survived). The
   command (:func:`run_tests`) diffs the mutated module against the saved original, takes the
   union of the changed lines' tests from the map and runs only those, cheapest first (their
   CPU time in the map's run), with ``-x``; an empty selection (no test executes the line) is a survivor without a run;
5. the report is written as JSON (outcomes, score, wall and CPU seconds, every survivor's diff).

A whole module takes hours (exact.py: 674 mutants, ~4 CPU-hours), more than one session on a
machine whose work directory does not survive. ``--ledger FILE`` (a JSON file kept in the
repository: ``docs/mutation_ledger.json``) carries a run across sessions: every finished mutant's
outcome is written to it as the run goes (about once a minute, atomically, so a stopped run loses
at most a minute), keyed by cosmic-ray's ``operator#occurrence`` under the module's SHA-256. A
later run of the same module source marks its killed mutants done before ``cosmic-ray exec``
starts, so only the rest run (cosmic-ray takes its pending mutants in random order: which ones a
stopped run finished is only known from the ledger); survivors are run again, against the tests
as they are now. A changed module source starts its ledger entry afresh.

The test map, line by line:

- a statement of ordinary Python: the tests whose run executed it (any line of its header, for a
  compound statement; a line with no trace event of its own, like ``except X:``, takes its
  function's tests);
- a line executed at import (context ``""``), at module or class level, or in a decorator that
  is not a jit decorator (a registry's runs at import): every test (a change there can reach any
  of them), the tests that reach the module first;
- a line executed while a test file is collected (its module-level code calling the module):
  that file's tests;
- a line of a function's arguments (default values) or of its jit decorator (compile options):
  the tests that called the function (for an ``@njit`` function, as for its body, below);
- a line in an ``@njit`` body, invisible to coverage: the tests that executed a statement naming
  the function, in any measured file (intsim, gqa_lut, hw_models, gqa_cli, gqa_sweep, tests),
  following names used inside other jitted functions to *their* callers; a name used at module
  level: every test;
- tests that start a process (``subprocess``, ``os.fork``, ``multiprocessing``), which coverage
  does not follow, are added to every selection.

Selection drops only tests that never execute the mutated line, so it cannot change a mutant's
outcome unless a test sees the line's effect through state another test left behind (a cache);
``--verify N`` checks this: it re-runs every survivor and evenly spaced killed mutants with the
whole test list in fresh interpreters (the method before selection) and compares outcomes.

Fork server: before any test starts, a test run spends ~3.5 s of CPU importing torch, numpy,
scipy, numba, hypothesis and pytest. :func:`fork_server` imports them once and forks a child
per mutant, which imports the project from the mutated tree, runs pytest and exits with its
status (a killed client, cosmic-ray's timeout, kills the child). ``--no-fork`` and
``--no-select`` turn the two off.

Numba: a mutant of an ``@njit`` function is only seen if numba does not load the unmutated
machine code from its cache. Each test run gets its own ``NUMBA_CACHE_DIR``, a fresh copy of a
cache warmed on the unmutated tree (so unmutated modules are not recompiled); numba's cache
invalidates the entries of a source file whose stamp (mtime, size) changed, which every mutant
write does, so the mutated module is recompiled from the mutant. ``PYTHONDONTWRITEBYTECODE=1``
keeps Python from reusing a stale ``.pyc`` (its stamp has only one-second resolution).
``NUMBA_BOUNDSCHECK=1``: a mutant that indexes past an array raises IndexError instead of
reading or writing memory silently (numba does not check bounds by default). The fork server's
child re-reads numba's configuration from its own environment (``reload_config``).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine  # noqa: E402

# module -> its targeted tests (fast ones first: pytest -x stops at the first failure). Each
# mutant runs only those of them that execute its line (the test map), so a module lists every
# test file that exercises it.
MODULES = {
    "gqa_lut/ga.py": ["tests/test_ga.py"],
    "gqa_lut/dp.py": ["tests/test_dp.py"],
    "gqa_lut/objective.py": ["tests/test_objective.py", "tests/test_segment_rule.py"],
    "gqa_lut/exact.py": ["tests/test_exact.py", "tests/test_segexp.py"],
    "intsim/fixedpoint.py": ["tests/test_fixedpoint.py", "tests/test_kernels_int.py", "tests/test_rounding_ties.py",
                             "tests/test_segment_rule.py"],
    "intsim/pwl.py": ["tests/test_pwl_unit.py", "tests/test_segment_rule.py", "tests/test_kernels_int.py"],
    "intsim/gemm.py": ["tests/test_gemm.py", "tests/test_gemm_choice.py", "tests/test_kernels_int.py"],
    "intsim/softmax.py": ["tests/test_kernels_int.py", "tests/test_rounding_ties.py"],
    "intsim/layernorm.py": ["tests/test_kernels_int.py", "tests/test_llm_kernels.py"],
}
KEEP_BINARY = {("Add", "Sub"), ("Sub", "Add"), ("Mul", "Div"), ("Div", "Mul"), ("FloorDiv", "Div"),
               ("Div", "FloorDiv"), ("Mod", "FloorDiv"), ("Pow", "Mul"), ("LShift", "RShift"),
               ("RShift", "LShift"), ("BitAnd", "BitOr"), ("BitOr", "BitAnd"), ("BitXor", "BitOr")}
KEEP_COMPARE = {("Lt", "LtE"), ("LtE", "Lt"), ("Gt", "GtE"), ("GtE", "Gt"), ("Eq", "NotEq"), ("NotEq", "Eq"),
                ("Is", "IsNot"), ("IsNot", "Is"), ("In", "NotIn"), ("NotIn", "In"), ("Lt", "Gt"), ("Gt", "Lt"),
                ("LtE", "GtE"), ("GtE", "LtE")}
TEMPLATE_ENV = "GQA_MUTATION_NUMBA_TEMPLATE"


def exclude_patterns() -> list[str]:
    """Regexes of the cosmic-ray operators left out (everything not in the kept pairs)."""
    keep = [f"ReplaceBinaryOperator_{a}_{b}" for a, b in KEEP_BINARY] + \
           [f"ReplaceComparisonOperator_{a}_{b}" for a, b in KEEP_COMPARE]
    return [r"core/(ReplaceBinaryOperator|ReplaceComparisonOperator)_(?!(" + "|".join(keep) + r")$)"]


def copy_tree(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split()
    if dst.exists():
        shutil.rmtree(dst)
    for f in files:
        if "__pycache__" in f or not (REPO / f).is_file():
            continue
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, dst / f)


# --- per-mutant test selection ----------------------------------------------------------------
# The map is made once per module (``coverage_map``, a pytest run under coverage.py with one
# dynamic context per test) and read by every mutant's test run (``select_tests``).
MAP_DIR = ".mutation"                      # inside the module's work tree
MEASURED = ("intsim", "gqa_lut", "hw_models", "gqa_cli", "gqa_sweep", "tests")
ALL = "*"                                  # a line whose mutant runs the module's whole test list
COLLECT = "collect:"                       # the coverage context of a test file's collection
JIT_DECORATORS = {"njit", "jit", "vectorize", "guvectorize", "stencil", "cfunc", "generated_jit"}


def _is_jit(fn: ast.AST) -> bool:
    for d in getattr(fn, "decorator_list", []):
        d = d.func if isinstance(d, ast.Call) else d
        if (d.id if isinstance(d, ast.Name) else getattr(d, "attr", None)) in JIT_DECORATORS:
            return True
    return False


class _Source:
    """One measured file: each statement's lines and its enclosing functions."""

    def __init__(self, path: Path):
        self.tree = ast.parse(path.read_text(), str(path))
        self.stmts = []            # (first, header_last, node, enclosing functions outermost first)
        self.refs = {}             # name -> [(first, header_last, enclosing functions)]
        self._walk(self.tree, [])

    def _walk(self, node, funcs):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.stmt):
                first = min([child.lineno] + [d.lineno for d in getattr(child, "decorator_list", [])])
                inner = [c.lineno for c in ast.iter_child_nodes(child) if isinstance(c, ast.stmt)]
                last = min(inner) - 1 if inner else child.end_lineno
                self.stmts.append((first, max(first, last), child, funcs))
                header = [c for f in ("decorator_list", "args", "test", "iter", "target", "items", "value",
                                      "targets", "returns", "bases", "keywords", "exc", "msg", "names")
                          for c in _as_list(getattr(child, f, None)) if isinstance(c, ast.AST)]
                if not inner:
                    header = [child]
                for h in header:
                    for n in ast.walk(h):
                        name = n.id if isinstance(n, ast.Name) else n.attr if isinstance(n, ast.Attribute) else None
                        if name:
                            self.refs.setdefault(name, []).append((first, max(first, last), funcs))
                sub = funcs + [child] if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else funcs
                self._walk(child, sub)
            elif not isinstance(child, (ast.expr, ast.expr_context)):
                self._walk(child, funcs)   # except/match handlers hold statements

    def statement_at(self, line: int):
        """The innermost statement whose lines (its header, for a compound one) hold ``line``."""
        best = None
        for first, last, node, funcs in self.stmts:
            if first <= line <= node.end_lineno and (best is None or first >= best[0]):
                best = (first, last, node, funcs)
        return best


def measured_sources(root: Path) -> dict[str, _Source]:
    """Every parsable .py file of the measured packages under ``root``, by resolved path."""
    sources = {}
    for top in MEASURED:
        for f in sorted((root / top).rglob("*.py")) if (root / top).is_dir() else []:
            try:
                sources[str(f.resolve())] = _Source(f)
            except SyntaxError:
                continue
    return sources


def _as_list(x):
    return x if isinstance(x, list) else [x]


def build_selection(module: str, root: Path, contexts: dict, order: list[str], always: list[str],
                    durations: dict | None = None) -> dict:
    """Per line of ``module``: the tests that can see a mutant of that line (or ALL).

    A line of ordinary Python selects the tests whose run executed it (its statement's header
    lines). A line executed at import (context ``""``) or at module or class level selects ALL;
    one executed while a test file was collected (its module-level code) that file's tests. A line in an ``@njit`` body, which
    coverage cannot see, selects the tests that executed a statement referring to the function
    by name, in any measured file, following references from other jitted functions
    transitively (a reference at module level: ALL). Tests that start a process (not traced)
    are always selected. A line of a function's header (default arguments, a jit decorator's
    options) selects the tests that called the function. Each selection is ordered by the tests'
    ``durations`` (CPU seconds in the map's run), cheapest first; ``every`` is the whole list so
    ordered, the tests that reach the module first (for the lines that select ALL).
    """
    durations = durations or {}
    sources = measured_sources(root)

    def ctx_of(path, first, last):
        lines = contexts.get(path, {})
        out = set()
        for ln in range(first, last + 1):
            for c in lines.get(ln, ()):
                if c.startswith(COLLECT):        # run while collecting a test file: that file's tests
                    f = c[len(COLLECT):]
                    out.update(t for t in order if t.split("::")[0] == f)
                else:
                    out.add(c)
        return out

    def callers(name, seen):
        if name in seen:
            return set()
        seen.add(name)
        out = set()
        for path, src in sources.items():
            for first, last, funcs in src.refs.get(name, ()):
                jit = [f for f in funcs if _is_jit(f)]
                if jit:
                    out |= callers(jit[0].name, seen)
                elif not funcs:
                    return {ALL}
                else:
                    c = ctx_of(path, first, last)
                    if "" in c:
                        return {ALL}
                    out |= c
                if ALL in out:
                    return {ALL}
        return out

    path = str((root / module).resolve())
    src = sources[path]
    n_lines = len((root / module).read_text().splitlines())
    rank = {t: i for i, t in enumerate(order)}
    select = {}
    for line in range(1, n_lines + 1):
        hit = src.statement_at(line)
        if hit is None:
            continue
        first, last, node, funcs = hit
        jit = [f for f in funcs + [node] if _is_jit(f)]
        if jit and line >= jit[0].body[0].lineno:
            tests = callers(jit[0].name, set())
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _header_only_affects_calls(node, line):
            # a default argument, or a jit decorator's options: only calls of the function see it
            tests = callers(node.name, set()) if jit else ctx_of(path, node.body[0].lineno, node.end_lineno)
        elif jit or not funcs:
            tests = {ALL}
        else:
            tests = ctx_of(path, first, last)
            if not tests:      # a line without a trace event of its own (``except X:``): the function's tests
                tests = ctx_of(path, funcs[-1].body[0].lineno, funcs[-1].end_lineno)
            if "" in tests:
                tests = {ALL}
        if ALL not in tests:
            tests = sorted((tests | set(always)) & set(rank), key=rank.get)
        select[line] = ALL if ALL in tests else tests
    # the order of a run: a killed mutant stops at its first failing test (-x), so the cheapest
    # tests go first and, for a line that runs them all, the tests that reach the module first
    cost = {t: (durations.get(t, 0.0), rank[t]) for t in order}
    reach = set().union(*[v for v in select.values() if v != ALL])
    for line, v in select.items():
        if v != ALL:
            select[line] = sorted(v, key=cost.get)
    every = sorted(order, key=lambda t: (t not in reach, cost[t]))
    return {"order": order, "always": always, "lines": select, "every": every}


def _header_only_affects_calls(fn: ast.FunctionDef, line: int) -> bool:
    """Whether a mutant of ``line`` in ``fn``'s header can change only what calls of ``fn`` do:
    a line of its arguments (default values), or of a jit decorator (its compile options). Any
    other decorator (a registry's, for example) runs at import and stays ALL."""
    for d in fn.decorator_list:
        if d.lineno <= line <= d.end_lineno:
            f = d.func if isinstance(d, ast.Call) else d
            return (f.id if isinstance(f, ast.Name) else getattr(f, "attr", None)) in JIT_DECORATORS
    return fn.args is not None and line >= fn.lineno and line < fn.body[0].lineno


def stale_dependents(module: str, root: Path) -> set[tuple[str, str]]:
    """``(file stem, function)`` of the jitted functions outside ``module`` whose machine code
    depends on it: their bodies name one of its top-level functions or constants (numba inlines
    ``inline="always"`` callees and freezes globals at compile time), directly or through
    another such function. numba's cache is keyed by each function's own file, so their cached
    code would hide a mutant of ``module``: :func:`prune_template` removes it."""
    sources = measured_sources(root)
    target = str((root / module).resolve())
    names = set()
    for node in sources[target].tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
    found: set[tuple[str, str]] = set()
    while True:
        new = set()
        for path, src in sources.items():
            if path == target:
                continue
            for name in names:
                for _, _, funcs in src.refs.get(name, ()):
                    jit = [f for f in funcs if _is_jit(f)]
                    if jit:
                        new.add((Path(path).stem, jit[0].name))
        if new <= found:
            return found
        found |= new
        names |= {fn for _, fn in new}


def prune_template(template: Path, stale: set[tuple[str, str]]) -> int:
    """Delete the numba cache files of ``stale`` functions (``<stem>.<function>-<line>.*``)."""
    n = 0
    for stem, fn in stale:
        for f in template.rglob(f"{stem}.{fn}-*"):
            f.unlink()
            n += 1
    return n


def coverage_map(module: str, tests: list[str], out: Path) -> int:
    """Run ``tests`` in this process under coverage.py, one context per test; write the selection."""
    import coverage
    import multiprocessing.process
    import pytest

    root = Path.cwd()
    cov = coverage.Coverage(data_file=None, include=[str(root / t / "*") for t in MEASURED])
    order, always, durations = [], [], {}
    current = {"test": None}

    def spawning(orig):
        def wrapper(*a, **k):
            if current["test"] and current["test"] not in always:
                always.append(current["test"])
            return orig(*a, **k)
        return wrapper

    subprocess.Popen.__init__ = spawning(subprocess.Popen.__init__)
    os.fork = spawning(os.fork)
    multiprocessing.process.BaseProcess.start = spawning(multiprocessing.process.BaseProcess.start)

    class Contexts:
        @pytest.hookimpl(hookwrapper=True)
        def pytest_runtest_protocol(self, item, nextitem):
            order.append(item.nodeid)
            current["test"] = item.nodeid
            cov.switch_context(item.nodeid)
            t0 = time.process_time()
            yield
            durations[item.nodeid] = time.process_time() - t0
            current["test"] = None
            cov.switch_context("")

        @pytest.hookimpl(hookwrapper=True)
        def pytest_make_collect_report(self, collector):
            # a test file's module-level code (run when it is collected) reaches its tests only
            if isinstance(collector, pytest.Module):
                cov.switch_context(COLLECT + collector.nodeid)
                yield
                cov.switch_context("")
            else:
                yield

    cov.start()
    __import__(module.removesuffix(".py").replace("/", "."))   # module-level lines: context ""
    rc = pytest.main(["-q", "-p", "no:cacheprovider", *tests], plugins=[Contexts()])
    cov.stop()
    if rc != 0:
        return int(rc)
    data = cov.get_data()
    contexts = {f: {ln: list(c) for ln, c in data.contexts_by_lineno(f).items()} for f in data.measured_files()}
    out.write_text(json.dumps(build_selection(module, root, contexts, order, always, durations)))
    return 0


def select_tests(tests: list[str]) -> list[str]:
    """The tests of this mutant (cosmic-ray has mutated the module in the work tree)."""
    mdir = Path(MAP_DIR)
    if os.environ.get("GQA_MUTATION_SELECT", "1") == "0" or not (mdir / "map.json").exists():
        return tests
    info = json.loads((mdir / "module.json").read_text())
    sel = json.loads((mdir / "map.json").read_text())
    old = (mdir / "original.py").read_text().splitlines()
    new = Path(info["module"]).read_text().splitlines()
    changed = set()
    for tag, i1, i2, _, _ in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        if tag != "equal":
            changed.update(range(i1 + 1, max(i2, i1 + 1) + 1))
    every = sel.get("every", tests)
    if not changed:
        return every
    picked = set()
    for line in changed:
        s = sel["lines"].get(str(line), ALL)
        if s == ALL:
            return every
        picked.update(s)
    return [t for t in every if t in picked]


# --- the fork server ----------------------------------------------------------------------------
# A mutant's test run spends ~3.5 s of CPU importing torch, numpy, scipy, numba, hypothesis and
# pytest before any test starts. The server imports them once (none of them is mutated, and
# none of them imports intsim/gqa_lut/tests) and forks a child per test run, which imports the
# project from the mutated work tree, runs pytest and exits with its status.
SERVER_ENV = "GQA_MUTATION_FORKSERVER"
PRELOAD = ("numpy", "scipy", "scipy.special", "scipy.optimize", "torch", "numba", "hypothesis",
           "hypothesis.strategies", "pytest", "deap")


def fork_server(sock_path: str) -> None:
    """Serve test runs on a unix socket, one at a time: ``{"cwd", "env", "args"}`` -> exit status."""
    import importlib
    import select
    import signal
    import socket

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    sys.dont_write_bytecode = True
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(1)
    while True:
        conn, _ = srv.accept()
        req = json.loads(conn.makefile().readline())
        pid = os.fork()
        if pid == 0:                                   # the test run
            srv.close()
            conn.close()
            rc = 3
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.dup2(devnull, 2)
                os.chdir(req["cwd"])
                os.environ.clear()
                os.environ.update(req["env"])
                sys.path.insert(0, req["cwd"])
                import numba.core.config
                numba.core.config.reload_config()      # NUMBA_CACHE_DIR, NUMBA_BOUNDSCHECK of this run
                import pytest
                rc = int(pytest.main(req["args"]))
            finally:
                os._exit(rc)
        status = None
        while status is None:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(st)
                break
            r, _, _ = select.select([conn], [], [], 0.2)
            if r and not conn.recv(1):                 # the client was killed (cosmic-ray's timeout)
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                status = -9
        try:
            conn.sendall(f"{status}\n".encode())
        except OSError:
            pass
        conn.close()


def _run_forked(sock_path: str, args: list[str], env: dict) -> int:
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.connect(sock_path)
        c.sendall((json.dumps({"cwd": os.getcwd(), "env": env, "args": args}) + "\n").encode())
        reply = c.makefile().readline()
    return int(reply) if reply.strip() else 1


def start_fork_server(tree: Path) -> tuple[subprocess.Popen, str]:
    sock = str(tree / MAP_DIR / "fork.sock")
    if os.path.exists(sock):
        os.unlink(sock)
    proc = subprocess.Popen([sys.executable, str(tree / "benchmarks/mutation.py"), "--fork-server", sock],
                            cwd=tree, stdout=subprocess.DEVNULL)
    for _ in range(600):
        if os.path.exists(sock) or proc.poll() is not None:
            break
        time.sleep(0.1)
    if proc.poll() is not None:
        raise SystemExit("the fork server did not start")
    return proc, sock


def run_tests(tests: list[str]) -> int:
    """One test run (cosmic-ray's test command): pytest on this mutant's tests with its own numba cache."""
    tests = select_tests(tests)
    if not tests:
        return 0          # no test executes the mutated line: it survives
    cache = tempfile.mkdtemp(prefix="numba-mutant-")
    try:
        template = os.environ.get(TEMPLATE_ENV)
        if template and os.path.isdir(template):
            shutil.copytree(template, cache, dirs_exist_ok=True)
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, NUMBA_BOUNDSCHECK="1", PYTHONDONTWRITEBYTECODE="1",
                   PYTHONPATH=os.getcwd())
        args = ["-x", "-q", "-p", "no:cacheprovider", *tests]
        sock = os.environ.get(SERVER_ENV)
        if sock and os.path.exists(sock):
            return _run_forked(sock, args, env)
        cmd = [sys.executable, "-m", "pytest", *args]
        return subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def write_config(path: Path, module: str, tests: list[str], timeout: float) -> None:
    test_cmd = f"{sys.executable} benchmarks/mutation.py --pytest {' '.join(tests)}"
    excl = ", ".join(json.dumps(p) for p in exclude_patterns())
    path.write_text(f"""[cosmic-ray]
module-path = "{module}"
timeout = {timeout}
excluded-modules = []
test-command = "{test_cmd}"

[cosmic-ray.distributor]
name = "local"

[cosmic-ray.filters.operators-filter]
exclude-operators = [{excl}]
""")


def dump(session: Path, cwd: Path) -> list:
    out = subprocess.run(["cosmic-ray", "dump", str(session)], cwd=cwd, check=True, capture_output=True, text=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def results_so_far(session: Path) -> int:
    """Rows in the session's results table (read directly: ``cosmic-ray dump`` costs seconds of CPU)."""
    import sqlite3

    with sqlite3.connect(f"file:{session}?mode=ro", uri=True) as c:
        return c.execute("select count(*) from work_results").fetchone()[0]


def sample_mutants(session: Path, n: int, seed: int) -> int:
    """Keep ``n`` of the session's pending mutants, drawn uniformly with ``seed`` from the mutants
    in source order (cosmic-ray's job ids are random), and mark the others skipped. Returns how
    many were pending."""
    import random

    from cosmic_ray.work_db import use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    with use_db(str(session)) as db:
        items = sorted(db.pending_work_items, key=lambda i: [(m.start_pos, m.operator_name, m.occurrence)
                                                            for m in i.mutations])
        keep = set(random.Random(seed).sample(range(len(items)), min(n, len(items))))
        for i, item in enumerate(items):
            if i not in keep:
                db.set_result(item.job_id, WorkResult(output="sampled out", worker_outcome=WorkerOutcome.SKIPPED))
    return len(items)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson interval of a proportion k/n (a sampled mutation score)."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / d
    return c - h, c + h


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _finished_rows(session: Path) -> list[tuple[str, int, str, str]]:
    """``(key, line, outcome, diff)`` of every finished mutant of the session, read directly
    (``cosmic-ray dump`` costs seconds of CPU); ``key`` is ``operator#occurrence``."""
    import sqlite3

    q = ("select m.operator_name, m.occurrence, m.start_pos_row, r.test_outcome, r.worker_outcome, r.diff "
         "from work_results r join mutation_specs m on m.job_id = r.job_id")
    with sqlite3.connect(f"file:{session}?mode=ro", uri=True) as c:
        rows = c.execute(q).fetchall()
    out = []
    for op, occ, line, test_o, worker_o, diff in rows:
        o = (test_o or worker_o or "").lower().split(".")[-1]
        out.append((f"{op}#{occ}", int(line), o, diff or ""))
    return out


def read_ledger(path: Path | None, module: str, source: Path) -> dict:
    """The ledger's finished mutants of ``module`` (``{key: {"line", "outcome", "diff"?}}``), empty
    when there is no ledger, no entry or the entry is of another source of the module."""
    if path is None or not path.exists():
        return {}
    entry = json.loads(path.read_text()).get(module, {})
    if entry.get("module_sha256") != _sha256(source):
        if entry:
            print(f"{module}: the ledger's results are of another source of the module; starting afresh", flush=True)
        return {}
    return dict(entry.get("mutants", {}))


def write_ledger(path: Path, module: str, source: Path, mutants: dict) -> None:
    """Merge ``module``'s finished mutants into the ledger file, atomically (a stopped run leaves
    the previous complete file)."""
    ledger = json.loads(path.read_text()) if path.exists() else {}
    counts: dict[str, int] = {}
    for m in mutants.values():
        counts[m["outcome"]] = counts.get(m["outcome"], 0) + 1
    ledger[module] = {"module_sha256": _sha256(source), "outcomes": dict(sorted(counts.items())),
                      "mutants": dict(sorted(mutants.items(), key=lambda kv: (kv[1]["line"], kv[0])))}
    write_report(path, dict(sorted(ledger.items())))


def _ledger_rows(session: Path, known: dict) -> dict:
    """``known`` updated with the session's finished mutants (survivors keep their diff)."""
    out = dict(known)
    for key, line, outcome, diff in _finished_rows(session):
        if outcome == "skipped":
            continue
        out[key] = {"line": line, "outcome": outcome, **({"diff": diff} if outcome == "survived" else {})}
    return out


def mark_done(session: Path, known: dict) -> int:
    """Mark the session's mutants the ledger has killed as done (with that outcome); returns how many."""
    from cosmic_ray.work_db import use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult

    n = 0
    with use_db(str(session)) as db:
        for item in db.pending_work_items:
            m = item.mutations[0]
            rec = known.get(f"{m.operator_name}#{m.occurrence}")
            if rec and rec["outcome"] == "killed":
                db.set_result(item.job_id, WorkResult(output="killed in an earlier session (ledger)",
                                                      test_outcome=TestOutcome.KILLED,
                                                      worker_outcome=WorkerOutcome.NORMAL))
                n += 1
    return n


def mutate_module(module: str, workdir: Path, timeout: float, count_only: bool, select: bool = True,
                  fork: bool = True, sample: int = 0, seed: int = 0, resume: bool = False,
                  ledger: Path | None = None) -> dict:
    tests = MODULES[module]
    tree = workdir / module.replace("/", "_").removesuffix(".py")
    cfg, session = tree / "cosmic-ray.toml", tree / "session.sqlite"
    template, mdir = tree / ".numba-template", tree / MAP_DIR
    resume = resume and (mdir / "map.json").exists() and session.exists() and not count_only
    t0 = time.time()
    population = None
    if not resume:
        copy_tree(tree)
        shared = REPO.parent / "shared"          # the GQA-LUT reference tables some tests read (../shared)
        if shared.is_dir() and not (workdir / "shared").exists():
            (workdir / "shared").symlink_to(shared)
        write_config(cfg, module, tests, timeout)
        run = dict(cwd=tree, check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["cosmic-ray", "init", str(cfg), str(session)], **run)
        subprocess.run(["cr-filter-operators", str(session), str(cfg)], **run)
    else:     # an interrupted cosmic-ray exec can leave its last mutant applied
        shutil.copy2(mdir / "original.py", tree / module)
    known = read_ledger(ledger, module, REPO / module) if not count_only else {}
    if known:
        print(f"{module}: {mark_done(session, known)} mutants killed in earlier sessions (ledger {ledger})", flush=True)
    if sample and not count_only:
        population = sample_mutants(session, sample, seed)
    items = dump(session, tree)
    todo = sum(1 for _, r in items if r is None)
    if count_only:
        return {"module": module, "mutants": todo, "skipped_operators": len(items) - todo}
    if not resume:
        # the baseline: the module's tests pass on the unmutated tree; the same run warms the
        # template numba cache and, under coverage.py, makes the map of which test executes which line
        template.mkdir(exist_ok=True)
        env = dict(os.environ, NUMBA_CACHE_DIR=str(template), NUMBA_BOUNDSCHECK="1", PYTHONDONTWRITEBYTECODE="1",
                   PYTHONPATH=str(tree))
        mdir.mkdir(exist_ok=True)
        shutil.copy2(tree / module, mdir / "original.py")
        (mdir / "module.json").write_text(json.dumps({"module": module, "tests": tests}))
        cmap = subprocess.run([sys.executable, "benchmarks/mutation.py", "--coverage-map", module, *tests],
                              cwd=tree, env=env, capture_output=True, text=True)
        if cmap.returncode != 0:
            raise SystemExit(f"{module}: the unmutated tests fail:\n{cmap.stdout[-3000:]}{cmap.stderr[-3000:]}")
    stale = stale_dependents(module, tree)
    pruned = prune_template(template, stale)
    print(f"{module}: {len(stale)} jitted functions elsewhere depend on it; {pruned} of their cache files "
          f"removed from the template (they recompile with each mutant)", flush=True)
    sel = json.loads((mdir / "map.json").read_text())
    whole = sum(1 for v in sel["lines"].values() if v == ALL)
    print(f"{module}: {todo} mutants; baseline and coverage map {time.time() - t0:.0f} s "
          f"({len(sel['order'])} tests, {whole} of "
          f"{len(sel['lines'])} statement lines run them all; always run: {sel['always']})", flush=True)
    env = dict(os.environ, **{TEMPLATE_ENV: str(template)}, PYTHONDONTWRITEBYTECODE="1",
               GQA_MUTATION_SELECT="1" if select else "0")
    server = None
    if fork:
        server, env[SERVER_ENV] = start_fork_server(tree)
    t0, c0 = time.time(), _children_cpu()
    try:
        proc = subprocess.Popen(["cosmic-ray", "exec", str(cfg), str(session)], cwd=tree, env=env)
        start = results_so_far(session)
        saved = time.time()
        with tqdm(total=todo, desc=module, unit="mutant") as bar:
            while proc.poll() is None:
                time.sleep(5)
                bar.update(results_so_far(session) - start - bar.n)
                if ledger is not None and time.time() - saved > 60:
                    write_ledger(ledger, module, REPO / module, _ledger_rows(session, known))
                    saved = time.time()
    finally:
        if server is not None:
            server.terminate()
            server.wait()
        if ledger is not None:
            write_ledger(ledger, module, REPO / module, _ledger_rows(session, known))
    if proc.returncode != 0:
        raise SystemExit(f"{module}: cosmic-ray exec exited with {proc.returncode}")
    wall, cpu = time.time() - t0, _children_cpu() - c0
    outcomes, survivors = {}, []
    for item, result in dump(session, tree):
        if result is None:
            continue
        o = result.get("test_outcome") or result.get("worker_outcome")
        outcomes[o] = outcomes.get(o, 0) + 1
        if o == "survived":
            m = item["mutations"][0]
            survivors.append({"operator": m["operator_name"], "occurrence": m["occurrence"],
                              "line": m["start_pos"][0], "diff": result.get("diff", "")})
    killed, survived = outcomes.get("killed", 0), outcomes.get("survived", 0)
    score = killed / (killed + survived) if killed + survived else float("nan")
    rep = {"module": module, "tests": tests, "outcomes": outcomes, "score": score, "wall_s": round(wall),
           "cpu_s": round(cpu), "selection": select, "fork_server": fork,
           "survivors": sorted(survivors, key=lambda s: s["line"])}
    if population is not None:
        rep.update(sampled=todo, mutants=population, seed=seed, score_95=wilson(killed, killed + survived))
    return rep


def _children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


def _finished(tree: Path) -> list:
    return [(i, r) for i, r in dump(tree / "session.sqlite", tree) if r is not None
            and r.get("test_outcome") in ("killed", "survived")]


def rerun(module: str, tree: Path, sample: list, desc: str, fast: bool = False) -> list[dict]:
    """Run each ``(item, result)`` of a session again, applied with ``cosmic-ray apply`` to the
    module's work tree and restored afterwards: with the whole test list in fresh interpreters
    (the method before selection), or ``fast``, as a run does (test map, fork server)."""
    original = (tree / MAP_DIR / "original.py").read_text()
    env = dict(os.environ, **{TEMPLATE_ENV: str(tree / ".numba-template")}, GQA_MUTATION_SELECT="1" if fast else "0",
               PYTHONDONTWRITEBYTECODE="1")
    env.pop(SERVER_ENV, None)
    server = None
    if fast:
        server, env[SERVER_ENV] = start_fork_server(tree)
    rows = []
    try:
        for item, result in tqdm(sample, desc=f"{desc} {module}", unit="mutant"):
            m = item["mutations"][0]
            subprocess.run(["cosmic-ray", "apply", module, m["operator_name"], str(m["occurrence"])],
                           cwd=tree, check=True, capture_output=True)
            t0 = time.time()
            rc = subprocess.run([sys.executable, "benchmarks/mutation.py", "--pytest", *MODULES[module]],
                                cwd=tree, env=env).returncode
            rows.append({"line": m["start_pos"][0], "operator": m["operator_name"],
                         "occurrence": m["occurrence"], "session": result["test_outcome"],
                         "full": "survived" if rc == 0 else "killed", "full_s": round(time.time() - t0, 1),
                         "diff": result.get("diff", "")})
            (tree / module).write_text(original)
    finally:
        (tree / module).write_text(original)
        if server is not None:
            server.terminate()
            server.wait()
    return rows


def verify(module: str, workdir: Path, n: int) -> dict:
    """Run ``n`` mutants of a finished session both ways, against the tree's current tests: as a
    run does (test map, fork server) and with the whole test list in fresh interpreters.

    The sample: half survivors (where a test left out by the selection would show), half killed
    mutants (where a fork-server artefact would show), each evenly spaced over the session.
    """
    tree = workdir / module.replace("/", "_").removesuffix(".py")
    done = _finished(tree)
    surv = [x for x in done if x[1]["test_outcome"] == "survived"]
    rest = [x for x in done if x[1]["test_outcome"] != "survived"]
    ns = min(len(surv), n // 2)
    nk = min(len(rest), n - ns)
    sample = surv[::max(1, len(surv) // max(ns, 1))][:ns] + rest[::max(1, len(rest) // max(nk, 1))][:nk]
    fast = rerun(module, tree, sample, "verify (map, fork server)", fast=True)
    rows = rerun(module, tree, sample, "verify (whole list, fresh interpreters)")
    for r, f in zip(rows, fast):
        r["selected"] = f["full"]
    same = sum(r["selected"] == r["full"] for r in rows)
    return {"sampled": len(rows), "same_outcome": same, "rows": rows}


def recheck(module: str, workdir: Path) -> dict:
    """After tests were added: copy the checkout's tests into the session's tree, remake its test
    map and run every survivor of the session against them; which are killed now."""
    tree = workdir / module.replace("/", "_").removesuffix(".py")
    for f in (REPO / "tests").glob("*.py"):
        shutil.copy2(f, tree / "tests" / f.name)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tree / ".numba-template"), NUMBA_BOUNDSCHECK="1",
               PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(tree))
    cmap = subprocess.run([sys.executable, "benchmarks/mutation.py", "--coverage-map", module, *MODULES[module]],
                          cwd=tree, env=env, capture_output=True, text=True)     # the new tests' map
    if cmap.returncode != 0:
        raise SystemExit(f"{module}: the current tests fail unmutated:\n{cmap.stdout[-3000:]}")
    prune_template(tree / ".numba-template", stale_dependents(module, tree))    # the map's run cached them again
    rows = rerun(module, tree, [x for x in _finished(tree) if x[1]["test_outcome"] == "survived"], "recheck",
                 fast=True)
    return {"survivors": len(rows), "killed_now": sum(r["full"] == "killed" for r in rows), "rows": rows}


def write_report(out: Path, reports: dict) -> None:
    """``reports`` as JSON at ``out``, atomically (the report and the ledger)."""
    # imported here: the fork server runs this file and must not preload the project (its
    # children import it from the mutated tree)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from intsim.fileio import atomic_write_json

    atomic_write_json(out, reports)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("modules", nargs="*", help=f"modules to mutate (default: all of {', '.join(MODULES)})")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "gqa-mutation")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds per mutant's test run")
    ap.add_argument("--count", action="store_true", help="only count the mutants")
    ap.add_argument("--sample", type=int, default=0, metavar="N",
                    help="run N mutants per module drawn at random (the score is then an estimate, "
                         "reported with its 95%% interval); 0: every mutant")
    ap.add_argument("--seed", type=int, default=0, help="the seed of --sample")
    ap.add_argument("--resume", action="store_true",
                    help="continue an interrupted run in the work directory (its tree, map and session; "
                         "with --sample, sampled among the mutants still pending)")
    ap.add_argument("--out", type=Path, default=None, help="JSON report (default: <workdir>/report.json)")
    ap.add_argument("--ledger", type=Path, default=None,
                    help="JSON file of finished mutants carried across sessions (docs/mutation_ledger.json): "
                         "written as the run goes; its killed mutants are not run again")
    ap.add_argument("--no-select", action="store_true",
                    help="run each mutant against the module's whole test list (no coverage selection)")
    ap.add_argument("--no-fork", action="store_true",
                    help="start every test run as a fresh interpreter (no fork server)")
    ap.add_argument("--verify", type=int, default=0, metavar="N",
                    help="after a run: re-run N of its mutants (every survivor first) without selection")
    ap.add_argument("--recheck", action="store_true",
                    help="after a run and new tests: run the run's survivors against the checkout's tests")
    ap.add_argument("--pytest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)  # cosmic-ray's test command
    ap.add_argument("--coverage-map", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)  # module, its tests
    ap.add_argument("--fork-server", help=argparse.SUPPRESS)  # socket path
    args = ap.parse_args(argv)
    if args.fork_server:
        fork_server(args.fork_server)
        return 0
    if args.pytest is not None:
        return run_tests(args.pytest)
    if args.coverage_map is not None:
        return coverage_map(args.coverage_map[0], args.coverage_map[1:], Path(MAP_DIR) / "map.json")
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        ap.error(f"unknown module {unknown[0]!r}; known: {', '.join(MODULES)}")
    print(machine(), flush=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    out = args.out or args.workdir / "report.json"
    reports = json.loads(out.read_text()) if out.exists() and not args.count else {}
    for module in args.modules or list(MODULES):
        if args.recheck:
            v = recheck(module, args.workdir)
            reports.setdefault(module, {})["recheck"] = v
            write_report(out, reports)
            print(f"{module}: {v['killed_now']} of {v['survivors']} survivors are killed by the current tests",
                  flush=True)
            for r in v["rows"]:
                print(f"  line {r['line']} {r['operator']}#{r['occurrence']}: {r['full']}", flush=True)
            continue
        if args.verify:
            v = verify(module, args.workdir, args.verify)
            reports.setdefault(module, {})["verify"] = v
            write_report(out, reports)
            print(f"{module}: {v['same_outcome']} of {v['sampled']} sampled mutants have the same outcome "
                  f"with the whole test list", flush=True)
            for r in v["rows"]:
                if r["selected"] != r["full"]:
                    print(f"  DIFFERENT line {r['line']} {r['operator']}: selected {r['selected']}, "
                          f"whole list {r['full']}", flush=True)
            continue
        r = mutate_module(module, args.workdir, args.timeout, args.count, select=not args.no_select,
                          fork=not args.no_fork, sample=args.sample, seed=args.seed, resume=args.resume,
                          ledger=args.ledger)
        if args.count:
            print(f"{module}: {r['mutants']} mutants ({r['skipped_operators']} skipped operators)")
            continue
        reports[module] = r
        write_report(out, reports)
        if "sampled" in r:
            lo, hi = r["score_95"]
            print(f"{module}: {r['sampled']} of {r['mutants']} mutants sampled (seed {r['seed']}); "
                  f"score 95% interval [{lo:.1%}, {hi:.1%}]", flush=True)
        print(f"{module}: score {r['score']:.1%} {r['outcomes']} in {r['wall_s']} s; "
              f"{len(r['survivors'])} survivors (report {out})", flush=True)
        for s in r["survivors"]:
            print(f"  line {s['line']}: {s['operator']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
