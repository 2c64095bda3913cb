"""Shared fixtures: a tiny synthetic ratings CSV with community structure."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

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
    return _tiny_pipeline_args


def _tiny_pipeline_args(csv_path: Path, model_dir: Path, out: Path) -> list[str]:
    return [
        "--out", str(out), "--quiet",
        "--data.source", str(csv_path), "--data.format", "csv",
        "--data.options", '{text_col = "text"}',
        "--llm.model", str(model_dir), "--llm.dtype", "float32",
        "--graph.epochs", "4", "--graph.eval_every", "2", "--graph.dim", "16",
        "--graph.batch_size", "128", "--graph.lr", "0.01",
        "--item_text.epochs", "1", "--item_text.batch_size", "8",
        "--user_item.epochs", "1", "--user_item.batch_size", "8",
        "--user_item.profile_new_tokens", "4", "--user_item.eval_batch_size", "16",
        "--eval.ks", "5,10",
    ]
