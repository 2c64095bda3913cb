"""Test helpers of glta-align (toy dataset, toy run directory, subprocess environment)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
from glta_gllm.checkpoint import save_artifact
from glta_graph.data import Interactions, csr_from_pairs

TESTS = Path(__file__).resolve().parent
GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]


def shared_data_dir() -> Path:
    """The reference data folder beside the checkout (env GLTA_SHARED_DATA overrides)."""
    env = os.environ.get("GLTA_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[3] / ".." / "shared" / "data"


def toy_data(users: int = 24, items: int = 30, per_user: int = 12, seed: int = 0) -> Interactions:
    """A small random dataset (70/10/20 split per interaction) with genre-like item text."""
    rng = np.random.default_rng(seed)
    u = np.repeat(np.arange(users), per_user)
    i = np.concatenate([rng.choice(items, size=per_user, replace=False) for _ in range(users)])
    r = rng.random(len(u))
    mk = lambda m: csr_from_pairs(u[m], i[m], users, items)  # noqa: E731
    text = [f"Movie {x} (199{x % 10}). Genres: {GENRES[x % 6]}, {GENRES[(x * 5) % 6]}"
            for x in range(items)]
    return Interactions([f"u{x}" for x in range(users)], [f"m{x}" for x in range(items)],
                        mk(r < 0.7), mk((r >= 0.7) & (r < 0.8)), mk(r >= 0.8),
                        item_text=text, name="toy")


def make_run(run_dir: Path, data: Interactions, dim: int = 8, seed: int = 0) -> Path:
    """A run directory with RUN/dataset and a random RUN/graph (stage 1 stand-in)."""
    g = torch.Generator().manual_seed(seed)
    data.save(run_dir / "dataset")
    save_artifact(run_dir / "graph",
                  {"user_embedding": torch.randn(data.num_users, dim, generator=g),
                   "item_embedding": torch.randn(data.num_items, dim, generator=g)},
                  {"dim": dim}, dataset_fingerprint=data.fingerprint)
    return run_dir


def subprocess_env() -> dict[str, str]:
    """Environment for helper subprocesses: this folder importable, few threads."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env



PY = sys.executable
