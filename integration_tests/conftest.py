"""Shared fixtures of the integration tests: a tiny random Llama folder and a synthetic CSV."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest


def _write_csv(path: Path, users: int = 60, items: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    lines = ["user_id,item_id,text"]
    half = items // 2
    for u in range(users):
        own = np.arange(half) + (half if u % 2 else 0)
        for i in sorted(set(rng.choice(own, size=10, replace=False).tolist())):
            lines.append(f"u{u},i{i},item {i} of group {i // half}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def synthetic_csv() -> Callable[..., Path]:
    """Writes a two-group user/item CSV (``user_id,item_id,text``) to the path it is given."""
    return _write_csv


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama (hidden 64, 2 layers) with SmolLM2's tokenizer, saved as a folder."""
    from glta_align.llm import load_tokenizer, tiny_llm

    folder = tmp_path_factory.mktemp("tiny-llama")
    llm = tiny_llm(load_tokenizer(), hidden_size=64, num_layers=2, seed=0)
    llm.model.save_pretrained(str(folder))
    llm.tokenizer.save_pretrained(str(folder))
    return folder
