"""Streaming top-k with each user's training items excluded vs score matrix + topk."""

from __future__ import annotations

import math
import os

import pytest
import torch
from glta_gllm import topk_excluding

pytestmark = pytest.mark.benchmark(group="gllm-topk", min_rounds=2, warmup=False)
BIG = os.environ.get("GLTA_BENCH_BIG") == "1"


def big(*shape):
    """A shape that only runs with GLTA_BENCH_BIG=1 (minutes each, several GB of memory)."""
    return pytest.param(*shape, marks=pytest.mark.skipif(not BIG, reason="GLTA_BENCH_BIG!=1"))


SHAPES = [(4096, 64, 20_000), (4096, 64, 200_000), big(4096, 64, 1_000_000)]


def _inputs(users, dim, items, per_user=50):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(users, dim, generator=g)
    w = torch.randn(items, dim, generator=g)
    cols = torch.randint(0, items, (users, per_user), generator=g).reshape(-1)
    rows = torch.arange(users).repeat_interleave(per_user)
    exclude = (
        torch.sparse_coo_tensor(torch.stack([rows, cols]), torch.ones(rows.numel()), (users, items))
        .coalesce()
        .to_sparse_csr()
    )
    return q, w, exclude, rows, cols


@pytest.mark.parametrize("variant", ["naive", "glta"])
@pytest.mark.parametrize(("users", "dim", "items"), SHAPES)
def test_topk(benchmark, users, dim, items, variant):
    q, w, exclude, rows, cols = _inputs(users, dim, items)
    k = 20
    benchmark.extra_info.update(shape=[users, dim, items], k=k, flops=2.0 * users * dim * items)

    def naive():
        scores = q @ w.T
        scores[rows, cols] = -math.inf
        return scores.topk(k, dim=1)

    def ours():
        return topk_excluding(q, w, k, exclude=exclude)

    values, _ = benchmark(naive if variant == "naive" else ours)
    assert values.shape == (users, k) and torch.isfinite(values).all()
    if variant == "glta":
        ref_values, _ = naive()
        torch.testing.assert_close(values, ref_values, atol=1e-4, rtol=1e-4)
