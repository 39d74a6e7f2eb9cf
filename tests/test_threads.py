"""intsim's OpenMP wait policy (intsim/__init__.py): sleeping pools by default, the user's own kept."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = "import os, intsim; print(os.environ['OMP_WAIT_POLICY'])"


@pytest.mark.parametrize("given,expect", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE"), ("passive", "passive")])
def test_importing_intsim_sets_passive_unless_the_user_chose(given, expect):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expect
