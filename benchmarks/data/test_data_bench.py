"""Data-layer timings: read + preprocess of the reference data sets.

Run: ``uv run pytest benchmarks/data -q --benchmark-enable --benchmark-columns=min,mean,rounds``
(the default pytest configuration disables benchmarking, so a plain run checks the counts once).
Reads ``../shared/data`` (override with ``GLTA_SHARED_DATA``); skipped when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from glta_graph.data import PrepareConfig, load_dataset, prepare, read_source

pytestmark = pytest.mark.benchmark(group="data")

_SHARED = Path(os.environ.get("GLTA_SHARED_DATA")
               or Path(__file__).resolve().parents[2] / ".." / "shared" / "data")


def _shared(name: str) -> Path:
    path = _SHARED / name
    if not path.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} missing (CI=true)")
        pytest.skip(f"{path} not available")
    return path


@pytest.mark.parametrize("split", ["presplit"])
def test_gowalla_read(benchmark, split):
    raw = benchmark(read_source, _shared("gowalla"), "lightgcn")
    assert raw.num_interactions == 810_128 + 217_242


@pytest.mark.parametrize("split", ["random", "loo", "temporal"])
def test_gowalla_like_prepare(benchmark, split):
    """Prepare 1.03M Gowalla interactions (synthetic timestamps for loo/temporal)."""
    import numpy as np

    raw = read_source(_shared("gowalla"), "lightgcn")
    if split != "random":
        raw.timestamps = np.random.default_rng(0).random(raw.num_interactions)
    raw.presplit = None
    data = benchmark(prepare, raw, PrepareConfig(split=split, k_core=10))
    assert data.stats()["total_interactions"] > 900_000


def test_gowalla_presplit_prepare(benchmark):
    raw = read_source(_shared("gowalla"), "lightgcn")
    data = benchmark(prepare, raw, PrepareConfig())
    assert data.num_users == 29_858


def test_ml_latest_small_load(benchmark):
    data = benchmark(load_dataset, _shared("ml-latest-small"), "ml-latest")
    assert data.num_items == 9_066


def test_embedded_ml100k_load(benchmark):
    data = benchmark(load_dataset, "ml-100k")
    assert data.num_users == 943
