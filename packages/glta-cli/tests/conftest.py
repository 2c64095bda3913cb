"""Shared fixtures: a tiny synthetic ratings CSV with community structure."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from glta_cli import testing
from glta_cli.app import app
from glta_cli.testing import save_tiny_llm, write_ratings_csv


@pytest.fixture
def runner() -> CliRunner:
    """A typer CliRunner."""
    return CliRunner()


@pytest.fixture
def ratings_csv(tmp_path: Path) -> Path:
    """Path of the synthetic ratings CSV."""
    return write_ratings_csv(tmp_path / "ratings.csv")


@pytest.fixture
def prepared(tmp_path: Path, runner: CliRunner, ratings_csv: Path) -> Path:
    """A prepared dataset folder made with `glta data prepare`."""
    out = tmp_path / "ds"
    result = runner.invoke(app, ["data", "prepare", str(ratings_csv), "--format", "csv",
                                 "--out", str(out), "--seed", "3"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama (hidden 64, 2 layers) + SmolLM2's tokenizer saved as a folder."""
    return save_tiny_llm(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def tiny_pipeline_args():
    """``(csv, model_dir, out) -> overrides`` that make the whole pipeline run in seconds."""
    return testing.tiny_pipeline_args
