"""Shared fixtures: a tiny synthetic ratings CSV with community structure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from glta_cli.app import app


def write_ratings_csv(path: Path, users: int = 40, items: int = 30, seed: int = 0) -> Path:
    """Users in two communities, each preferring one half of the catalogue.

    Ids are non-contiguous strings (``u<n*7>``, ``i<n*3>``) so tests notice any confusion of
    original ids and internal indices.
    """
    rng = np.random.default_rng(seed)
    lines = ["user_id,item_id,rating,text"]
    half = items // 2
    for u in range(users):
        own = np.arange(half) + (half if u % 2 else 0)
        picks = rng.choice(own, size=10, replace=False).tolist()
        picks += rng.choice(items, size=2, replace=False).tolist()
        for i in sorted(set(picks)):
            lines.append(f"u{u * 7},i{i * 3},{rng.integers(3, 6)},item {i} genre {i // half}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


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
    from glta_align.llm import load_tokenizer, tiny_llm

    folder = tmp_path_factory.mktemp("tiny-llama")
    llm = tiny_llm(load_tokenizer(), hidden_size=64, num_layers=2, seed=0)
    llm.model.save_pretrained(str(folder))
    llm.tokenizer.save_pretrained(str(folder))
    return folder


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
