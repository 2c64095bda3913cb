"""``linear_cross_entropy(..., backend="triton")``: the fused Triton kernels.

On a CUDA machine these run the compiled kernels on the GPU. Without one (CI) they run the
same kernels in Triton's interpreter on CPU tensors, in a fresh process started by
``test_triton_cpu.py`` with ``TRITON_INTERPRET=1`` (it must be set before triton is
first imported), so the values, gradients and edge cases below are checked on every CI run;
the GPU speed is not.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton", reason="the triton package is not installed")

from glta_gllm import GLLMHead, linear_cross_entropy

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if DEVICE.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(
        "no GPU: these run in Triton's interpreter in a fresh process with TRITON_INTERPRET=1 "
        "(test_triton_cpu.py)",
        allow_module_level=True,
    )

from glta_gllm import _triton as tri  # noqa: E402


def _inputs(rows, hid, items, dtype=torch.float32, bias=False, ignore=0, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(rows, hid, generator=g) * scale).to(DEVICE, dtype).requires_grad_()
    w = (torch.randn(items, hid, generator=g) / math.sqrt(hid)).to(DEVICE, dtype)
    w.requires_grad_()
    b = torch.randn(items, generator=g).to(DEVICE, dtype).requires_grad_() if bias else None
    t = torch.randint(0, items, (rows,), generator=g)
    t[:ignore] = -100
    return h, w, b, t.to(DEVICE)


def _grads(loss, params):
    return torch.autograd.grad(loss, [p for p in params if p is not None])


def _lce(h, w, t, b=None, **kw):
    return linear_cross_entropy(h, w, t, b, backend="triton", **kw)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(
    ("rows", "hid", "items", "chunk", "ignore"),
    [
        (37, 40, 301, None, 3),  # nothing a multiple of the 16 x 32 x 16 blocks
        (16, 32, 64, 32, 0),  # exact multiples, several chunks
        (5, 16, 1, None, 1),  # one item
        (40, 24, 1000, 333, 0),  # uneven chunks; items over several forward splits
    ],
)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_naive_fp32(rows, hid, items, chunk, ignore, bias, reduction) -> None:
    h, w, b, t = _inputs(rows, hid, items, bias=bias, ignore=ignore)
    ours = _lce(h, w, t, b, reduction=reduction, chunk_size=chunk)
    ref = F.cross_entropy(F.linear(h, w, b), t, reduction=reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    go = torch.randn_like(ref) if reduction == "none" else torch.tensor(0.7, device=DEVICE)
    got = torch.autograd.grad(ours, [p for p in (h, w, b) if p is not None], go)
    want = torch.autograd.grad(ref, [p for p in (h, w, b) if p is not None], go)
    for g_ours, g_ref in zip(got, want, strict=True):
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_matches_naive(dtype) -> None:
    h, w, b, t = _inputs(33, 48, 500, dtype=dtype, bias=True, ignore=2)
    ours = _lce(h, w, t, b)
    assert ours.dtype == dtype
    # Reference: the naive path in float32 on the same low-precision inputs.
    h32, w32, b32 = (x.detach().float().requires_grad_() for x in (h, w, b))
    ref = F.cross_entropy(F.linear(h32, w32, b32), t)
    torch.testing.assert_close(ours.float(), ref, rtol=1e-2, atol=1e-2)
    for g_ours, g_ref in zip(_grads(ours, [h, w, b]), _grads(ref, [h32, w32, b32]), strict=True):
        assert g_ours.dtype == dtype
        err = (g_ours.float() - g_ref).abs().max()
        assert err <= 2e-2 * g_ref.abs().max() + 1e-5, (dtype, float(err))


def test_float64_gradcheck() -> None:
    g = torch.Generator().manual_seed(1)
    h = torch.randn(6, 5, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_()
    w = torch.randn(9, 5, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_()
    b = torch.randn(9, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_()
    t = torch.tensor([0, 8, 3, -100, 4, 4], device=DEVICE)
    for reduction in ("mean", "none"):
        assert torch.autograd.gradcheck(
            lambda h, w, b, r=reduction: _lce(h, w, t, b, reduction=r, chunk_size=4),
            (h, w, b),
        )


def test_agrees_with_torch_backend_on_peaky_logits() -> None:
    """Logits ~40 apart: probabilities below fp32's normal range hit the same floor in both
    backends, and both match a float64 naive path."""
    h, w, _, t = _inputs(24, 32, 700, scale=40.0, seed=3)
    ours = _lce(h, w, t)
    torch_plan = linear_cross_entropy(h, w, t, backend="torch")
    h64, w64 = (x.detach().double().requires_grad_() for x in (h, w))
    ref = F.cross_entropy(F.linear(h64, w64), t)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours, torch_plan, rtol=1e-6, atol=1e-6)
    for g_ours, g_torch, g_ref in zip(
        _grads(ours, [h, w]), _grads(torch_plan, [h, w]), _grads(ref, [h64, w64]), strict=True
    ):
        assert torch.isfinite(g_ours).all()
        torch.testing.assert_close(g_ours.double(), g_ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(g_ours, g_torch, rtol=1e-4, atol=1e-6)


def test_all_rows_ignored_gives_zero_loss_and_gradients() -> None:
    h, w, b, t = _inputs(7, 16, 50, bias=True, ignore=7)
    loss = _lce(h, w, t, b)
    assert torch.all(loss == 0)
    loss.backward()
    for p in (h, w, b):
        assert p.grad is None or (torch.isfinite(p.grad).all() and torch.all(p.grad == 0))


def test_masked_items_by_minus_inf_bias() -> None:
    h, w, b, t = _inputs(20, 16, 90, bias=True)
    with torch.no_grad():
        b[40:] = float("-inf")
    t = t % 40
    ours = _lce(h, w, t, b)
    ref = F.cross_entropy(F.linear(h[:, :], w[:40], b[:40]), t)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    gh, gw = _grads(ours, [h, w])
    assert torch.isfinite(gh).all() and torch.isfinite(gw).all()
    assert float(gw[40:].abs().max()) < 1e-20


def test_repeatable_bit_for_bit() -> None:
    h, w, b, t = _inputs(37, 40, 301, bias=True)
    first = [_lce(h, w, t, b), *_grads(_lce(h, w, t, b), [h, w, b])]
    second = [_lce(h, w, t, b), *_grads(_lce(h, w, t, b), [h, w, b])]
    for x, y in zip(first, second, strict=True):
        assert torch.equal(x, y)


def test_retained_graph_second_backward_and_no_grad() -> None:
    h, w, _, t = _inputs(12, 16, 70)
    loss = _lce(h, w, t)
    g1 = torch.autograd.grad(loss, [h, w], retain_graph=True)
    g2 = torch.autograd.grad(loss, [h, w])  # recomputed from the saved lse
    for x, y in zip(g1, g2, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-8)
    with torch.no_grad():
        torch.testing.assert_close(_lce(h, w, t), loss.detach())


def test_head_loss_passes_the_backend() -> None:
    head = GLLMHead(16, 120).to(DEVICE)
    hidden = torch.randn(3, 4, 16, device=DEVICE)
    targets = torch.randint(0, 120, (3, 4), device=DEVICE)
    torch.testing.assert_close(
        head.loss(hidden, targets, backend="triton"), head.loss(hidden, targets, backend="torch")
    )


def test_chunk_buffer_is_an_eighth_of_the_logits() -> None:
    # fp32 buffer for fp32 logits: items / 8; fp32 buffer for bf16 logits: items / 16.
    assert tri.chunk_items(100_000, 4, 4, 0.125, None) == 12_500
    assert tri.chunk_items(100_000, 4, 2, 0.125, None) == 6_250
    assert tri.chunk_items(500, 4, 4, 0.125, None) == 128  # at least one block row
    assert tri.chunk_items(50, 4, 4, 0.125, None) == 50
    assert tri.chunk_items(1000, 4, 4, 0.125, 999_999) == 1000
