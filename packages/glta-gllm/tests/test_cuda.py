"""The GLLM kernels and heads on CUDA, unchanged: same values as the naive path on the GPU.

Skipped without a CUDA device (CI is CPU-only); run on a GPU machine with
``python -m pytest packages/glta-gllm/tests/test_cuda.py``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from glta_gllm import GLLMHead, ProjectedItemHead, linear_cross_entropy, topk_excluding
from glta_gllm.metrics import ranking_metrics

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

CUDA = torch.device("cuda")


def _lce_inputs(rows, hid, items, dtype, bias, ignore=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, hid, generator=g).to(CUDA, dtype).requires_grad_()
    w = (torch.randn(items, hid, generator=g) / math.sqrt(hid)).to(CUDA, dtype).requires_grad_()
    b = torch.randn(items, generator=g).to(CUDA, dtype).requires_grad_() if bias else None
    t = torch.randint(0, items, (rows,), generator=g)
    if ignore:
        t[:ignore] = -100
    return h, w, b, t.to(CUDA)


def _grads(loss, params):
    return torch.autograd.grad(loss, [p for p in params if p is not None])


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(
    ("rows", "hid", "items", "chunk", "store"),
    [(37, 64, 1000, 128, None), (64, 32, 5000, 777, False), (5, 16, 1, None, True),
     (300, 96, 20000, None, None)],
)
def test_linear_cross_entropy_matches_naive_fp32(rows, hid, items, chunk, store, bias) -> None:
    h, w, b, t = _lce_inputs(rows, hid, items, torch.float32, bias, ignore=min(3, rows - 1))
    ours = linear_cross_entropy(h, w, t, b, chunk_size=chunk, store_logits=store)
    ref = F.cross_entropy(F.linear(h, w, b), t)
    assert ours.device.type == "cuda"
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for g_ours, g_ref in zip(_grads(ours, [h, w, b]), _grads(ref, [h, w, b]), strict=True):
        assert g_ours.device.type == "cuda"
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-6)


def test_linear_cross_entropy_float64_gradcheck_on_cuda() -> None:
    g = torch.Generator().manual_seed(1)
    h = torch.randn(6, 5, generator=g, dtype=torch.float64).to(CUDA).requires_grad_()
    w = torch.randn(9, 5, generator=g, dtype=torch.float64).to(CUDA).requires_grad_()
    b = torch.randn(9, generator=g, dtype=torch.float64).to(CUDA).requires_grad_()
    t = torch.tensor([0, 8, 3, -100, 4, 4], device=CUDA)
    # a second backward (gradcheck's reentrancy check) recomputes: equal up to rounding
    assert torch.autograd.gradcheck(
        lambda h, w, b: linear_cross_entropy(h, w, t, b, chunk_size=4), (h, w, b),
        nondet_tol=1e-12,
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [128, 24])  # 24 <= H / 2: the logits kept in grad_W's storage
def test_linear_cross_entropy_half_precision_accumulates_in_fp32(dtype, rows) -> None:
    h, w, b, t = _lce_inputs(rows, 64, 30000, dtype, bias=True)
    ours = linear_cross_entropy(h, w, t, b)
    # reference: the same half-precision inputs, computed in fp32
    h32, w32, b32 = (x.detach().float().requires_grad_() for x in (h, w, b))
    ref = F.cross_entropy(F.linear(h32, w32, b32), t)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours.float(), ref, rtol=2e-2, atol=2e-2)
    for g_ours, g_ref in zip(_grads(ours, [h, w, b]), _grads(ref, [h32, w32, b32]), strict=True):
        assert g_ours.dtype == dtype
        torch.testing.assert_close(g_ours.float(), g_ref, rtol=5e-2, atol=2e-3)


def test_linear_cross_entropy_all_ignored_is_zero_on_cuda() -> None:
    h, w, _, t = _lce_inputs(8, 16, 50, torch.float32, bias=False)
    loss = linear_cross_entropy(h, w, torch.full_like(t, -100))
    loss.backward()
    assert loss.item() == 0.0
    for p in (h, w):  # no gradient, or an all-zero one
        assert p.grad is None or torch.count_nonzero(p.grad).item() == 0


def _exclude_csr(users, items, per_user, seed=0):
    g = torch.Generator().manual_seed(seed)
    cols = torch.stack([torch.randperm(items, generator=g)[:per_user] for _ in range(users)])
    rows = torch.arange(users).repeat_interleave(per_user)
    dense = torch.zeros(users, items)
    dense[rows, cols.reshape(-1)] = 1.0
    return dense.to_sparse_csr(), dense.bool()


@pytest.mark.parametrize(("users", "items", "chunk"), [(33, 5000, 700), (300, 20000, None)])
def test_topk_excluding_matches_naive_on_cuda(users, items, chunk) -> None:
    g = torch.Generator().manual_seed(2)
    q = torch.randn(users, 16, generator=g).to(CUDA)
    w = torch.randn(items, 16, generator=g).to(CUDA)
    bias = torch.randn(items, generator=g).to(CUDA)
    exclude, mask = _exclude_csr(users, items, 40)
    scores, idx = topk_excluding(
        q, w, 20, bias=bias, exclude=exclude.to(CUDA), chunk_size=chunk
    )
    full = (q @ w.T + bias).masked_fill(mask.to(CUDA), -math.inf)
    ref_scores, ref_idx = full.topk(20, dim=1)
    assert idx.device.type == "cuda"
    torch.testing.assert_close(scores, ref_scores, rtol=1e-5, atol=1e-5)
    assert torch.equal(idx, ref_idx)
    assert not mask.to(CUDA).gather(1, idx).any()


def test_topk_excluding_accepts_a_cpu_exclude_with_cuda_queries() -> None:
    g = torch.Generator().manual_seed(3)
    q, w = torch.randn(10, 8, generator=g), torch.randn(300, 8, generator=g)
    exclude, _ = _exclude_csr(10, 300, 5)
    cpu = topk_excluding(q, w, 7, exclude=exclude)
    gpu = topk_excluding(q.to(CUDA), w.to(CUDA), 7, exclude=exclude)
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(gpu[1].cpu(), cpu[1])


def test_heads_train_and_rank_on_cuda(tmp_path) -> None:
    torch.manual_seed(0)
    items, hid, dim = 500, 32, 8
    head = GLLMHead(hid, items).to(CUDA)
    matching = ProjectedItemHead(torch.randn(items, dim), torch.nn.Linear(dim, hid)).to(CUDA)
    hidden = torch.randn(64, hid, device=CUDA)
    targets = torch.randint(0, items, (64,), device=CUDA)
    for model in (head, matching):
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        first = None
        for _ in range(30):
            opt.zero_grad()
            loss = model.loss(hidden, targets)
            loss.backward()
            opt.step()
            first = loss.item() if first is None else first
        assert loss.item() < first
        scores, idx = model.recommend(hidden[:8], 10)
        assert idx.shape == (8, 10) and idx.device.type == "cuda"
        ref = model(hidden[:8]).topk(10, dim=1)
        torch.testing.assert_close(scores, ref.values, rtol=1e-5, atol=1e-5)
    head.save_pretrained(tmp_path / "head")
    loaded = GLLMHead.from_pretrained(tmp_path / "head")
    torch.testing.assert_close(loaded.weight, head.weight.detach().cpu())


def test_ranking_metrics_on_cuda_match_cpu() -> None:
    g = torch.Generator().manual_seed(4)
    ranked = torch.stack([torch.randperm(50, generator=g)[:10] for _ in range(20)])
    relevant, _ = _exclude_csr(20, 50, 6, seed=5)
    cpu = ranking_metrics(ranked, relevant, ks=(5, 10))
    gpu = ranking_metrics(ranked.to(CUDA), relevant.to(CUDA), ks=(5, 10))
    assert gpu == pytest.approx(cpu, rel=1e-6)
