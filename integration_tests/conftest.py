"""Shared fixtures of the integration tests: a tiny random Llama folder, a synthetic CSV and
the scripts of ``benchmarks/align`` as modules."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

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


ALIGN_BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks" / "align"


@pytest.fixture
def align_script() -> Callable[[str], ModuleType]:
    """Import a script of ``benchmarks/align`` by module name (``"fusion"``): its folder is on
    ``sys.path`` while it imports, so its imports of the folder's helpers resolve."""

    def load(name: str) -> ModuleType:
        sys.path.insert(0, str(ALIGN_BENCHMARKS))
        try:
            return importlib.import_module(name)
        finally:
            sys.path.remove(str(ALIGN_BENCHMARKS))

    return load
