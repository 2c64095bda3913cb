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


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script_loader(folder: Path) -> Callable[[str], ModuleType]:
    """Import a script of ``folder`` by module name: the folder is on ``sys.path`` while it
    imports, so its imports of the folder's helpers resolve."""

    def load(name: str) -> ModuleType:
        sys.path.insert(0, str(folder))
        try:
            return importlib.import_module(name)
        finally:
            sys.path.remove(str(folder))

    return load


@pytest.fixture
def align_script() -> Callable[[str], ModuleType]:
    """Import a script of ``benchmarks/align`` by module name (``"fusion"``)."""
    return _script_loader(BENCHMARKS / "align")


@pytest.fixture
def graph_script() -> Callable[[str], ModuleType]:
    """Import a script of ``benchmarks/graph`` by module name (``"text_baselines"``)."""
    return _script_loader(BENCHMARKS / "graph")
