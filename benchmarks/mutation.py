"""Mutation testing of the core modules with cosmic-ray, each module against its own tests.

Slow (minutes to hours per module on 2 cores), so not part of CI; results go to docs/testing.md.

    python benchmarks/mutation.py                       # every module in MODULES
    python benchmarks/mutation.py gqa_lut/ga.py         # some of them
    python benchmarks/mutation.py --count               # mutants per module, nothing run

How it works, per module:

1. the working tree (tracked and untracked-not-ignored files, no ``__pycache__``) is copied to
   ``--workdir/<module>``: cosmic-ray edits the module on disk, the checkout stays untouched;
2. ``cosmic-ray init`` lists the mutants; ``cr-filter-operators`` skips the operators outside
   :data:`KEEP_BINARY` / :data:`KEEP_COMPARE` (cosmic-ray replaces every binary operator by all
   eleven others, ``a + b`` -> ``a ^ b`` and the like, which multiplies the count without
   testing anything new; the kept pairs are the ones mutmut uses: ``+ -``, ``* /``, ``<< >>``,
   ``& |``, ``< <=``, ...);
3. ``cosmic-ray baseline`` checks that the module's tests pass unmutated, ``cosmic-ray exec``
   runs them once per mutant (exit status 0: survived), and the report is written as JSON.

Numba: a mutant of an ``@njit`` function is only seen if numba does not load the unmutated
machine code from its cache. Each test run gets its own ``NUMBA_CACHE_DIR``, a fresh copy of a
cache warmed on the unmutated tree (so unmutated modules are not recompiled); numba's cache
invalidates the entries of a source file whose stamp (mtime, size) changed, which every mutant
write does, so the mutated module is recompiled from the mutant. ``PYTHONDONTWRITEBYTECODE=1``
keeps Python from reusing a stale ``.pyc`` (its stamp has only one-second resolution).
``NUMBA_BOUNDSCHECK=1``: a mutant that indexes past an array raises IndexError instead of
reading or writing memory silently (numba does not check bounds by default).
"""

from __future__ import annotations

import argparse
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

# module -> its targeted tests (fast ones first: pytest -x stops at the first failure)
MODULES = {
    "gqa_lut/ga.py": ["tests/test_ga.py"],
    "gqa_lut/dp.py": ["tests/test_dp.py"],
    "gqa_lut/objective.py": ["tests/test_objective.py", "tests/test_segment_rule.py"],
    "intsim/fixedpoint.py": ["tests/test_fixedpoint.py", "tests/test_kernels_int.py"],
    "intsim/pwl.py": ["tests/test_pwl_unit.py", "tests/test_segment_rule.py"],
    "intsim/gemm.py": ["tests/test_gemm.py", "tests/test_gemm_choice.py"],
    "intsim/softmax.py": ["tests/test_kernels_int.py"],
    "intsim/layernorm.py": ["tests/test_kernels_int.py"],
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


def run_tests(tests: list[str]) -> int:
    """One test run (cosmic-ray's test command): pytest on ``tests`` with its own numba cache."""
    cache = tempfile.mkdtemp(prefix="numba-mutant-")
    try:
        template = os.environ.get(TEMPLATE_ENV)
        if template and os.path.isdir(template):
            shutil.copytree(template, cache, dirs_exist_ok=True)
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, NUMBA_BOUNDSCHECK="1", PYTHONDONTWRITEBYTECODE="1",
                   PYTHONPATH=os.getcwd())
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
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


def mutate_module(module: str, workdir: Path, timeout: float, count_only: bool) -> dict:
    tests = MODULES[module]
    tree = workdir / module.replace("/", "_").removesuffix(".py")
    copy_tree(tree)
    cfg, session = tree / "cosmic-ray.toml", tree / "session.sqlite"
    write_config(cfg, module, tests, timeout)
    run = dict(cwd=tree, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cosmic-ray", "init", str(cfg), str(session)], **run)
    subprocess.run(["cr-filter-operators", str(session), str(cfg)], **run)
    items = dump(session, tree)
    todo = sum(1 for _, r in items if r is None)
    if count_only:
        return {"module": module, "mutants": todo, "skipped_operators": len(items) - todo}
    # warm the template numba cache on the unmutated tree, then check the baseline passes
    template = tree / ".numba-template"
    template.mkdir(exist_ok=True)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(template), NUMBA_BOUNDSCHECK="1", PYTHONDONTWRITEBYTECODE="1",
               PYTHONPATH=str(tree))
    t0 = time.time()
    base = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                          cwd=tree, env=env, capture_output=True, text=True)
    if base.returncode != 0:
        raise SystemExit(f"{module}: the unmutated tests fail:\n{base.stdout[-3000:]}")
    print(f"{module}: {todo} mutants, baseline {time.time() - t0:.0f} s", flush=True)
    env = dict(os.environ, **{TEMPLATE_ENV: str(template)}, PYTHONDONTWRITEBYTECODE="1")
    t0 = time.time()
    proc = subprocess.Popen(["cosmic-ray", "exec", str(cfg), str(session)], cwd=tree, env=env)
    with tqdm(total=todo, desc=module, unit="mutant") as bar:
        while proc.poll() is None:
            time.sleep(10)
            bar.update(todo - sum(1 for _, r in dump(session, tree) if r is None) - bar.n)
    if proc.returncode != 0:
        raise SystemExit(f"{module}: cosmic-ray exec exited with {proc.returncode}")
    wall = time.time() - t0
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
    return {"module": module, "tests": tests, "outcomes": outcomes, "score": score, "wall_s": round(wall),
            "survivors": sorted(survivors, key=lambda s: s["line"])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("modules", nargs="*", help=f"modules to mutate (default: all of {', '.join(MODULES)})")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "gqa-mutation")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds per mutant's test run")
    ap.add_argument("--count", action="store_true", help="only count the mutants")
    ap.add_argument("--out", type=Path, default=None, help="JSON report (default: <workdir>/report.json)")
    ap.add_argument("--pytest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)  # cosmic-ray's test command
    args = ap.parse_args(argv)
    if args.pytest is not None:
        return run_tests(args.pytest)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        ap.error(f"unknown module {unknown[0]!r}; known: {', '.join(MODULES)}")
    print(machine(), flush=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    out = args.out or args.workdir / "report.json"
    reports = json.loads(out.read_text()) if out.exists() and not args.count else {}
    for module in args.modules or list(MODULES):
        r = mutate_module(module, args.workdir, args.timeout, args.count)
        if args.count:
            print(f"{module}: {r['mutants']} mutants ({r['skipped_operators']} skipped operators)")
            continue
        reports[module] = r
        out.write_text(json.dumps(reports, indent=1))
        print(f"{module}: score {r['score']:.1%} {r['outcomes']} in {r['wall_s']} s; "
              f"{len(r['survivors'])} survivors (report {out})", flush=True)
        for s in r["survivors"]:
            print(f"  line {s['line']}: {s['operator']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
