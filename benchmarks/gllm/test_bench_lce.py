"""Fused linear cross-entropy (forward + backward) vs naive and torch's F.linear_cross_entropy."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from glta_gllm import linear_cross_entropy

pytestmark = pytest.mark.benchmark(group="gllm-lce", min_rounds=2, warmup=False)
BIG = os.environ.get("GLTA_BENCH_BIG") == "1"


def big(*shape):
    """A shape that only runs with GLTA_BENCH_BIG=1 (minutes each, several GB of memory)."""
    return pytest.param(*shape, marks=pytest.mark.skipif(not BIG, reason="GLTA_BENCH_BIG!=1"))


SHAPES = [
    (512, 576, 100_000),
    (256, 4096, 20_000),  # the (256, 4096, 200k) target shape scaled down 10x in items
    (1024, 64, 100_000),  # the (1024, 64, 1M) target shape scaled down 10x in items
    big(256, 4096, 200_000),
    big(1024, 64, 1_000_000),
]
HAS_TORCH_LCE = hasattr(torch.nn, "LinearCrossEntropyOptions")


def _inputs(rows, hid, items):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(rows, hid, generator=g).requires_grad_()
    w = (torch.randn(items, hid, generator=g) / math.sqrt(hid)).requires_grad_()
    t = torch.randint(0, items, (rows,), generator=g)
    return h, w, t


def _step(loss_fn, h, w):
    def run():
        h.grad = None
        w.grad = None
        loss = loss_fn()
        loss.backward()
        return loss.detach()

    return run


def _variant(name, h, w, t):
    if name == "naive":
        return lambda: F.cross_entropy(F.linear(h, w), t)
    if name == "glta":
        return lambda: linear_cross_entropy(h, w, t)
    if name == "glta_recompute":
        return lambda: linear_cross_entropy(h, w, t, store_logits=False)
    if name == "glta_keepall":
        return lambda: linear_cross_entropy(h, w, t, store_logits=True)
    options = torch.nn.LinearCrossEntropyOptions
    if name == "torch_auto":
        return lambda: F.linear_cross_entropy(h, w, t, options=options())
    chunk = int(name.removeprefix("torch_chunk"))
    return lambda: F.linear_cross_entropy(h, w, t, options=options(batch_chunk_size=chunk))


VARIANTS = ["naive", "glta", "glta_recompute", "glta_keepall"] + (
    ["torch_auto", "torch_chunk64", "torch_chunk128"] if HAS_TORCH_LCE else []
)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(("rows", "hid", "items"), SHAPES)
def test_lce_fwd_bwd(benchmark, rows, hid, items, variant):
    h, w, t = _inputs(rows, hid, items)
    benchmark.extra_info.update(shape=[rows, hid, items], flops=6.0 * rows * hid * items)
    loss = benchmark(_step(_variant(variant, h, w, t), h, w))
    with torch.no_grad():
        ref = F.cross_entropy(F.linear(h, w), t)
    torch.testing.assert_close(loss, ref, atol=1e-4, rtol=1e-4)
    assert torch.isfinite(w.grad).all()
