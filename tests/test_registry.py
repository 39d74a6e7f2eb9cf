"""intsim.registry: one registration adds a choice everywhere (config validation, the sweep's
MiniLM axis, `gqa sim --options`, the docs); composable outlier methods; clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from intsim import GQAError
from intsim.config import SimConfig
from intsim.gelu import PWLGelu
from intsim.registry import ACTIVATIONS, NORMS, OUTLIERS, SOFTMAXES, Composable, choices, describe

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def extra_activation():
    """A new activation kernel, registered for the test only: the PWL unit on a fixed exponent."""
    ACTIVATIONS.register("pwl_e3", "the PWL unit at input scale 2**-3",
                         lambda cfg, absmax, site: PWLGelu(absmax, cfg.gelu_table, e=3))
    yield "pwl_e3"
    ACTIVATIONS.unregister("pwl_e3")


def test_one_registration_adds_a_config_choice(extra_activation):
    cfg = SimConfig(gelu=extra_activation)
    assert cfg.activation == extra_activation and extra_activation in choices()["gelu"]
    kernel = ACTIVATIONS.make(cfg.gelu, cfg, 3.0, "blocks.0.gelu")
    assert kernel.e == 3 and kernel(np.arange(-128, 128)).dtype == np.int32
    assert extra_activation in describe()
    from gqa_sweep.spec import load_spec           # the sweep's MiniLM config axis validates through SimConfig
    spec = load_spec("functions = ['gelu']\nentries = [8]\nmethods = ['dp']\n"
                     f"[minilm.configs.a]\ngelu = '{extra_activation}'\n")
    assert spec["minilm"]["configs"]["a"]["gelu"] == extra_activation
    ACTIVATIONS.unregister(extra_activation)
    with pytest.raises(GQAError, match="gelu"):
        SimConfig(gelu=extra_activation)
    ACTIVATIONS.register(extra_activation, "again", lambda cfg, absmax, site: None)   # for the fixture's cleanup


def test_registry_errors():
    with pytest.raises(ValueError, match="registered twice"):
        SOFTMAXES.register("pwl", "a second pwl", lambda cfg, s: None)
    with pytest.raises(GQAError, match="layernorm") as ei:
        NORMS.make("rms", SimConfig())
    assert ei.value.field == "layernorm" and "pwl, newton" in str(ei.value)


def test_outlier_methods_compose():
    assert OUTLIERS.choices()[:4] == ("none", "smooth", "per_token", "gamma_migration")
    n = len(OUTLIERS.names())
    assert OUTLIERS.requires("token_mantissa") == OUTLIERS.requires("norm_mantissa") == ("per_token",)
    # every combination, but token_mantissa and norm_mantissa (which refine per_token) only with per_token:
    # 2**(n - 1) with per_token, 2**(n - 3) without it
    assert "smooth+per_token" in OUTLIERS.choices() and len(OUTLIERS.choices()) == 2 ** (n - 1) + 2 ** (n - 3)
    assert "token_mantissa" not in OUTLIERS.choices() and "per_token+token_mantissa" in OUTLIERS.choices()
    with pytest.raises(GQAError, match="token_mantissa refines per_token") as ei:
        OUTLIERS.canonical("smooth+token_mantissa")
    assert ei.value.field == "outliers" and "give smooth+per_token+token_mantissa" in str(ei.value)
    assert OUTLIERS.parse("none") == frozenset()
    assert OUTLIERS.parse("smooth+per_token") == {"smooth", "per_token"}
    assert OUTLIERS.parse("per_token+smooth") == {"smooth", "per_token"}      # any order
    assert OUTLIERS.canonical("per_token+smooth") == "smooth+per_token"
    for bad in ("per_token+bogus", "smooth+smooth", "none+smooth"):
        with pytest.raises(GQAError, match="outliers"):
            OUTLIERS.parse(bad)
    reg = Composable("method", "m")
    for n in "abc":
        reg.register(n, n, n)
    assert reg.choices() == ("none", "a", "b", "c", "a+b", "a+c", "b+c", "a+b+c")
    reg.register("d", "d refines b", "d", requires=("b",))
    assert [c for c in reg.choices() if "d" in c] == ["b+d", "a+b+d", "b+c+d", "a+b+c+d"]
    with pytest.raises(ValueError, match="requires 'e'"):
        reg.register("f", "f", "f", requires=("e",))
    reg.unregister("d")
    assert len(reg.choices()) == 8


def test_slot_names_are_aliases_of_the_gelu_fields(tmp_path):
    cfg = SimConfig.from_dict({"activation": "ibert", "activation_table": "gelu8"})
    assert cfg.gelu == "ibert" and cfg.gelu_table.entries == 8 and cfg.activation_table is cfg.gelu_table
    assert SimConfig.from_dict({"activation": "ivit", "gelu": "ivit"}).gelu == "ivit"
    with pytest.raises(GQAError, match="activation"):
        SimConfig.from_dict({"activation": "ivit", "gelu": "ibert"})


def test_docs_list_every_registered_choice():
    """docs/intsim.md's configuration table names every choice of every registry."""
    text = (REPO / "docs" / "intsim.md").read_text()
    for field, names in choices().items():
        if field == "outliers":     # composable: the docs name each method (and none), combinations join by +
            names = (OUTLIERS.NONE, *OUTLIERS.names())
        row = next((line for line in text.splitlines() if re.match(rf"\|[^|]*`{field}`", line)), None)
        assert row is not None, field
        missing = [n for n in names if f"`{n}`" not in row]
        assert not missing, (field, missing)
