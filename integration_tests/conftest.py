"""Shared fixtures of the integration tests: a tiny random Llama folder and a synthetic CSV."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from glta_cli.testing import save_tiny_llm, write_ratings_csv


@pytest.fixture
def synthetic_csv() -> Callable[..., Path]:
    """``glta_cli.testing.write_ratings_csv``: a two-community ratings CSV at the given path."""
    return write_ratings_csv


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama (hidden 64, 2 layers) with SmolLM2's tokenizer, saved as a folder."""
    return save_tiny_llm(tmp_path_factory.mktemp("tiny-llama"))
