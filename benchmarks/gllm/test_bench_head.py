"""Matching head (scores against projected frozen item embeddings) vs the plain linear head.

One training step at H = 4096, d_graph = 64: the matching head computes (h W) E^T and never
builds the (items x H) tokens; the plain head trains a full (items x H) weight with the same
fused kernel.
"""

from __future__ import annotations

import os

import pytest
import torch
from glta_gllm import GLLMHead, ProjectedItemHead
from torch import nn

pytestmark = pytest.mark.benchmark(group="gllm-head", min_rounds=2, warmup=False)
BIG = os.environ.get("GLTA_BENCH_BIG") == "1"


def big(*shape):
    """A shape that only runs with GLTA_BENCH_BIG=1 (minutes each, several GB of memory)."""
    return pytest.param(*shape, marks=pytest.mark.skipif(not BIG, reason="GLTA_BENCH_BIG!=1"))


SHAPES = [(256, 4096, 64, 100_000), big(256, 4096, 64, 1_000_000)]


@pytest.mark.parametrize("variant", ["plain", "matching"])
@pytest.mark.parametrize(("rows", "hid", "dim", "items"), SHAPES)
def test_head_training_step(benchmark, rows, hid, dim, items, variant):
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(items, dim, generator=g)
    projector = nn.Linear(dim, hid)
    matching = ProjectedItemHead(emb, projector)
    hidden = torch.randn(rows, hid, generator=g).requires_grad_()
    targets = torch.randint(0, items, (rows,), generator=g)
    if variant == "plain":
        head = GLLMHead.from_item_tokens(matching.item_tokens().detach())
        params = [hidden, head.weight]
    else:
        head = matching
        params = [hidden, *projector.parameters()]
    benchmark.extra_info.update(shape=[rows, hid, dim, items])

    def step():
        for p in params:
            p.grad = None
        loss = head.loss(hidden, targets)
        loss.backward()
        return loss.detach()

    loss = benchmark(step)
    assert torch.isfinite(loss)
