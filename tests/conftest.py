"""Fixtures shared by the test modules: the packaged all-MiniLM-L6-v2 and its tokenizer (loaded once)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def model():
    from intsim.bert import load_model
    return load_model()


@pytest.fixture(scope="session")
def tok():
    from intsim.bert import Tokenizer
    return Tokenizer()
