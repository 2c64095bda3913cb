"""Tests for glta_gllm.functional: fused linear cross-entropy and streaming top-k."""

from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn.functional as F

from glta_gllm import linear_cross_entropy, topk_excluding


@pytest.fixture(autouse=True)
def _one_thread():
    # These tensors are tiny: thread hand-offs would dominate on a loaded machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _inputs(rows, hid, items, dtype, bias, seed=0, ignore=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, hid, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    w = (torch.randn(items, hid, generator=g, dtype=torch.float64) * 0.5).to(dtype)
    w.requires_grad_()
    b = None
    if bias:
        b = torch.randn(items, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    t = torch.randint(0, items, (rows,), generator=g)
    if ignore:
        t[torch.randperm(rows, generator=g)[: min(ignore, rows)]] = -100
    return h, w, b, t


def _params(h, w, b):
    return [h, w] + ([b] if b is not None else [])


# ---------------------------------------------------------------- linear_cross_entropy


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(
    ("rows", "items", "chunk", "store"),
    [(5, 7, 3, False), (4, 9, 4, True)],
)
def test_gradcheck_float64(rows, items, chunk, store, bias, reduction) -> None:
    h, w, b, t = _inputs(rows, 3, items, torch.float64, bias, ignore=1)

    def fn(*params):
        bb = params[2] if bias else None
        return linear_cross_entropy(
            params[0], params[1], t, bb, reduction=reduction, chunk_size=chunk, store_logits=store
        )

    # The first backward hands over the gradients computed in the forward, a second one
    # (gradcheck re-runs backward to test reentrancy) recomputes them: equal up to rounding.
    # fast_mode checks random projections of the Jacobian; the slow, element-wise mode runs
    # in test_gradcheck_one_item_and_one_chunk.
    assert torch.autograd.gradcheck(fn, tuple(_params(h, w, b)), nondet_tol=1e-12, fast_mode=True)


def test_gradcheck_one_item_and_one_chunk() -> None:
    h, w, b, t = _inputs(6, 3, 1, torch.float64, True, ignore=2)
    fn = lambda *p: linear_cross_entropy(*p[:2], t, p[2])  # noqa: E731
    assert torch.autograd.gradcheck(fn, (h, w, b), nondet_tol=1e-12)
    h, w, b, t = _inputs(3, 3, 10, torch.float64, False)
    fn = lambda *p: linear_cross_entropy(*p, t, chunk_size=10, reduction="none")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (h, w), nondet_tol=1e-12)


SHAPES = [
    # rows, hidden, items, chunk, store_logits
    (1, 4, 1, None, None),
    (7, 8, 1, None, False),
    (13, 16, 100, 32, None),
    (13, 16, 100, 32, False),
    (64, 32, 1000, None, False),
    (65, 32, 999, 128, True),
    (200, 24, 3001, 256, False),
    (3, 64, 50, 7, True),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(("rows", "hid", "items", "chunk", "store"), SHAPES)
def test_matches_naive(rows, hid, items, chunk, store, reduction, bias, dtype) -> None:
    h, w, b, t = _inputs(rows, hid, items, dtype, bias, seed=rows + items, ignore=rows // 4)
    params = _params(h, w, b)
    got = linear_cross_entropy(
        h, w, t, b, reduction=reduction, chunk_size=chunk, store_logits=store
    )
    assert got.dtype == dtype
    g_out = torch.randn_like(got, dtype=torch.float32).to(dtype)
    got_grads = torch.autograd.grad(got, params, g_out)
    # Reference: the naive computation in float64 from the same (possibly bf16) inputs.
    ref_params = [p.detach().double().requires_grad_() for p in params]
    rb = ref_params[2] if bias else None
    ref = F.cross_entropy(F.linear(ref_params[0], ref_params[1], rb), t, reduction=reduction)
    if reduction == "mean" and bool((t == -100).all()):
        ref = ref.nan_to_num(0.0)
    ref_grads = torch.autograd.grad(ref, ref_params, g_out.double())
    tol = {"atol": 2e-5, "rtol": 2e-5} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 2e-2}
    torch.testing.assert_close(got.double(), ref, **tol)
    for gg, rg in zip(got_grads, ref_grads, strict=True):
        assert gg.dtype == dtype
        torch.testing.assert_close(gg.double(), rg, **tol)


def test_bf16_close_to_naive_bf16() -> None:
    h, w, b, t = _inputs(32, 16, 500, torch.bfloat16, True)
    got = linear_cross_entropy(h, w, t, b)
    ref = F.cross_entropy(F.linear(h, w, b), t)
    assert abs(float(got.detach()) - float(ref.detach())) < 0.05


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_rows_ignored_gives_zero_and_no_nan(reduction) -> None:
    h, w, b, t = _inputs(6, 4, 9, torch.float32, True)
    t = torch.full_like(t, -100)
    loss = linear_cross_entropy(h, w, t, b, reduction=reduction)
    assert torch.all(loss == 0)
    loss.sum().backward()
    for p in (h, w, b):
        assert p.grad is None or (torch.isfinite(p.grad).all() and torch.all(p.grad == 0))


def test_custom_ignore_index() -> None:
    h, w, _, t = _inputs(8, 4, 6, torch.float64, False)
    t[2] = 5
    got = linear_cross_entropy(h, w, t, ignore_index=5)
    ref = F.cross_entropy(F.linear(h, w), t, ignore_index=5)
    torch.testing.assert_close(got, ref)


def test_forward_only_paths_agree() -> None:
    h, w, b, t = _inputs(20, 8, 300, torch.float32, True)
    with torch.no_grad():
        no_grad = linear_cross_entropy(h, w, t, b, chunk_size=64)
    with_grad = linear_cross_entropy(h, w, t, b, chunk_size=64, store_logits=False)
    torch.testing.assert_close(no_grad, with_grad.detach())


def test_frozen_weight_only_hidden_grad() -> None:
    h, w, _, t = _inputs(10, 8, 50, torch.float32, False)
    w = w.detach()
    loss = linear_cross_entropy(h, w, t)
    loss.backward()
    ref_h = h.detach().clone().requires_grad_()
    F.cross_entropy(F.linear(ref_h, w), t).backward()
    torch.testing.assert_close(h.grad, ref_h.grad)


def test_backward_scales_by_incoming_gradient_and_accumulates() -> None:
    h, w, b, t = _inputs(9, 4, 20, torch.float32, True)
    (3.0 * linear_cross_entropy(h, w, t, b)).backward()
    (linear_cross_entropy(h, w, t, b)).backward()
    ref = [p.detach().clone().requires_grad_() for p in (h, w, b)]
    (4.0 * F.cross_entropy(F.linear(ref[0], ref[1], ref[2]), t)).backward()
    for p, r in zip((h, w, b), ref, strict=True):
        torch.testing.assert_close(p.grad, r.grad)


def test_int32_targets_accepted() -> None:
    h, w, _, t = _inputs(5, 4, 6, torch.float64, False)
    torch.testing.assert_close(
        linear_cross_entropy(h, w, t.int()), F.cross_entropy(F.linear(h, w), t)
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"targets": torch.tensor([0, 9])}, r"targets\[1\] = 9 is outside \[0, 6\)"),
        ({"targets": torch.tensor([0, -3])}, r"targets\[1\] = -3"),
        ({"weight": torch.randn(6, 5)}, r"hidden has shape \(2, 4\).*weight has shape \(6, 5\)"),
        ({"targets": torch.tensor([0, 1, 2])}, r"shape \(2,\).*got \(3,\)"),
        ({"targets": torch.tensor([0.0, 1.0])}, "integer"),
        ({"bias": torch.randn(5)}, r"bias must have shape \(6,\)"),
        ({"weight": torch.randn(6)}, "2-D"),
        ({"weight": torch.randn(6, 4, dtype=torch.float64)}, "dtype"),
        ({"reduction": "avg"}, "reduction"),
    ],
)
def test_lce_bad_input(kwargs, match) -> None:
    args = {
        "hidden": torch.randn(2, 4),
        "weight": torch.randn(6, 4),
        "targets": torch.tensor([0, 1]),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        linear_cross_entropy(**args)


# ---------------------------------------------------------------------- topk_excluding


def _naive_topk(q, w, k, bias=None, exclude=None):
    scores = q.double() @ w.double().T
    if bias is not None:
        scores = scores + bias.double()
    if exclude is not None:
        scores = scores.masked_fill(exclude.to_dense().bool(), -math.inf)
    # Deterministic ties: score descending, then index ascending (stable sort).
    v, i = torch.sort(scores, dim=1, descending=True, stable=True)
    return v[:, :k], i[:, :k]


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(
    ("users", "items", "k", "chunk", "density"),
    [
        (1, 1, 1, None, 0.0),
        (17, 100, 5, 7, 0.2),
        (33, 1000, 20, 128, 0.05),
        (8, 50, 10, 3, 0.5),
        (40, 257, 1, 64, 0.0),
        (5, 30, 30, None, 0.0),
    ],
)
def test_topk_matches_naive(users, items, k, chunk, density, bias) -> None:
    g = torch.Generator().manual_seed(users * items)
    q, w = torch.randn(users, 8, generator=g), torch.randn(items, 8, generator=g)
    b = torch.randn(items, generator=g) if bias else None
    exclude = None
    if density:
        mask = torch.rand(users, items, generator=g) < density
        keep = items - k  # leave at least k items per user
        for u in range(users):
            on = mask[u].nonzero().squeeze(1)
            mask[u, on[keep:]] = False
        exclude = mask.float().to_sparse_csr()
    v, i = topk_excluding(q, w, k, bias=b, exclude=exclude, chunk_size=chunk)
    rv, ri = _naive_topk(q, w, k, b, exclude)
    assert i.dtype == torch.int64 and v.shape == (users, k)
    torch.testing.assert_close(v.double(), rv, atol=1e-5, rtol=1e-5)
    assert torch.equal(i, ri)
    if exclude is not None:
        dense = exclude.to_dense().bool()
        assert not dense.gather(1, i).any()


@pytest.mark.parametrize("chunk", [None, 1, 3, 4, 16])
def test_topk_ties_prefer_lower_index(chunk) -> None:
    # Integer-valued scores with many ties, across chunk boundaries.
    g = torch.Generator().manual_seed(1)
    q = torch.randint(-2, 3, (25, 3), generator=g).float()
    w = torch.randint(-2, 3, (40, 3), generator=g).float()
    v, i = topk_excluding(q, w, 7, chunk_size=chunk)
    rv, ri = _naive_topk(q, w, 7)
    assert torch.equal(i, ri)
    torch.testing.assert_close(v.double(), rv)


def test_topk_bf16_and_user_blocks(monkeypatch) -> None:
    import glta_gllm.functional as fn

    monkeypatch.setattr(fn, "_TOPK_BUFFER_BYTES", 4 * 64 * 5)  # forces 5-user blocks
    q, w = torch.randn(23, 8), torch.randn(200, 8)
    _v, i = topk_excluding(q, w, 4, chunk_size=64)
    _, ri = _naive_topk(q, w, 4)
    assert torch.equal(i, ri)
    vb, _ = topk_excluding(q.bfloat16(), w.bfloat16(), 4)
    assert vb.dtype == torch.bfloat16 and vb.shape == (23, 4)


def test_topk_zero_users() -> None:
    v, i = topk_excluding(torch.randn(0, 4), torch.randn(10, 4), 3)
    assert v.shape == (0, 3) and i.shape == (0, 3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 11}, "k=11 exceeds the number of items 10"),
        ({"k": 0}, "positive"),
        ({"weight": torch.randn(10, 5)}, r"queries has shape \(3, 4\) but weight has shape"),
        ({"exclude": torch.zeros(3, 10)}, "sparse CSR"),
        ({"exclude": torch.zeros(3, 10).to_sparse()}, "sparse CSR"),
        ({"exclude": torch.zeros(3, 9).to_sparse_csr()}, r"exclude has shape \(3, 9\)"),
        ({"bias": torch.randn(9)}, r"bias must have shape \(10,\)"),
    ],
)
def test_topk_bad_input(kwargs, match) -> None:
    args = {"queries": torch.randn(3, 4), "weight": torch.randn(10, 4), "k": 2}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        topk_excluding(**args)


def test_topk_k_larger_than_items_left_names_user() -> None:
    dense = torch.zeros(3, 10)
    dense[1, :8] = 1.0
    with pytest.raises(ValueError, match=r"user 1: 10 items - 8 excluded = 2"):
        topk_excluding(torch.randn(3, 4), torch.randn(10, 4), 3, exclude=dense.to_sparse_csr())


def _hybrid(monkeypatch, fraction):
    """Force the kept-chunks schedule on tiny shapes (no keep-all for small logits)."""
    import glta_gllm.functional as fn

    monkeypatch.setattr(fn, "_STORE_MIN_BYTES", 0)
    monkeypatch.setattr(fn, "_KEEP_MIN_HIDDEN", 1)
    monkeypatch.setattr(fn, "_MEMORY_FRACTION", fraction)
    return fn


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_kept_chunks_schedule_matches_naive(monkeypatch, dtype, bias, reduction) -> None:
    fn = _hybrid(monkeypatch, 0.7)
    # 50 items in chunks of 8: 7 chunks (the last one 2 wide). Budget 0.7 x 20 x 50 = 700
    # elements, less a 20 x 8 tile: 540 // 160 = 3 kept.
    assert fn._kept_chunks(20, 50, 4, 8, 8, None) == 3
    h, w, b, t = _inputs(20, 4, 50, dtype, bias, ignore=3)
    t[0] = 49  # a target in the narrow, kept last chunk
    t[1] = 0  # and one in the first, recomputed chunk
    params = _params(h, w, b)
    got = linear_cross_entropy(h, w, t, b, chunk_size=8, reduction=reduction)
    grads = torch.autograd.grad(got, params)
    ref_params = [p.detach().double().requires_grad_() for p in params]
    rb = ref_params[2] if bias else None
    ref = F.cross_entropy(F.linear(ref_params[0], ref_params[1], rb), t, reduction=reduction)
    ref_grads = torch.autograd.grad(ref, ref_params)
    tol = {"atol": 1e-10, "rtol": 1e-10} if dtype == torch.float64 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(got.double(), ref, **tol)
    for gg, rg in zip(grads, ref_grads, strict=True):
        assert gg.dtype == dtype
        torch.testing.assert_close(gg.double(), rg, **tol)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 3.0])  # 0, 2 and all 4 chunks kept
def test_gradcheck_kept_chunks_schedule(monkeypatch, fraction) -> None:
    _hybrid(monkeypatch, fraction)
    h, w, b, t = _inputs(5, 3, 11, torch.float64, True, ignore=1)
    fn = lambda *p: linear_cross_entropy(*p[:2], t, p[2], chunk_size=3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (h, w, b), nondet_tol=1e-12)


@pytest.mark.parametrize(
    ("fraction", "store", "recomputed"),
    # 7 chunks; pass 1 runs 7 matmuls, pass 2 recomputes the chunks neither kept nor left
    # in the buffer by pass 1 (the last not-kept chunk).
    [
        (0.7, None, 3),
        (0.0, None, 6),
        (0.7, False, 6),
        (0.0, True, 0),
        (1.0, None, 1),
        (1.2, None, 0),
    ],
)
def test_kept_and_buffered_chunks_are_not_recomputed(monkeypatch, fraction, store, recomputed):
    fn = _hybrid(monkeypatch, fraction)
    calls = []
    real = fn._mm_chunk
    monkeypatch.setattr(fn, "_mm_chunk", lambda out, *a: calls.append(a[3]) or real(out, *a))
    h, w, b, t = _inputs(20, 4, 50, torch.float32, True)
    loss = linear_cross_entropy(h, w, t, b, chunk_size=8, store_logits=store)
    loss.backward()
    assert len(calls) == 7 + recomputed
    torch.testing.assert_close(loss, F.cross_entropy(F.linear(h, w, b), t), atol=1e-5, rtol=1e-5)


def test_kept_chunks_plan_stays_within_an_eighth_of_the_logits() -> None:
    import glta_gllm.functional as fn

    # 256 rows x 200k items, H 4096, chunks of 4096: 5 kept tiles + the reused tile fit in
    # an eighth of the logits, 6 would not.
    rows, items, hid, chunk = 256, 200_000, 4096, 4096
    kept = fn._kept_chunks(rows, items, hid, chunk, 4, None)
    assert kept == 5
    used = (kept + 1) * rows * chunk
    assert used <= rows * items / 8 < used + rows * chunk
    # bf16 inputs: the naive logits take 2 bytes each, the float32 tiles 4: two chunks fit.
    assert fn._kept_chunks(rows, items, hid, chunk, 2, None, acc_elem=4) == 2
    # H below _KEEP_MIN_HIDDEN: recompute everything; small logits: keep everything.
    assert fn._kept_chunks(1024, 1_000_000, 64, 1024, 4, None) == 0
    assert fn._kept_chunks(64, 1000, 32, 256, 4, None) == 4
    # Explicit choices win.
    assert fn._kept_chunks(64, 1000, 32, 256, 4, False) == 0
    assert fn._kept_chunks(rows, items, hid, chunk, 4, True) == 49


def test_logits_fit_in_grad_w_rule() -> None:
    import glta_gllm.functional as fn

    # rows * tile bytes <= H * weight bytes: the benchmark's fp32 shapes with rows <= H fit,
    # (1024, 64, 1M) does not; bf16 weights with fp32 tiles need rows <= H / 2.
    assert fn._logits_fit_in_grad(512, 100_000, 576, 4, 4)
    assert fn._logits_fit_in_grad(256, 200_000, 4096, 4, 4)
    assert not fn._logits_fit_in_grad(1024, 1_000_000, 64, 4, 4)
    assert fn._logits_fit_in_grad(576, 10, 576, 4, 4)
    assert not fn._logits_fit_in_grad(577, 10, 576, 4, 4)
    assert fn._logits_fit_in_grad(288, 10, 576, 2, 4)
    assert not fn._logits_fit_in_grad(289, 10, 576, 2, 4)
    assert not fn._logits_fit_in_grad(1, 3, 3, 2, 4)  # 18 bytes: no whole float32 view
    w = torch.zeros(10, 8)
    grad_w, store = fn._grad_w_holding_logits(8, w, torch.float32)
    assert grad_w.shape == (10, 8) and store.shape == (80,)
    assert store.data_ptr() == grad_w.data_ptr() and bool((grad_w == 0).all())
    assert fn._grad_w_holding_logits(9, w, torch.float32) is None


def _spy_grad_storage(monkeypatch):
    """Records the gradients :func:`_grad_w_holding_logits` hands out and counts the logit
    matmuls (``_mm_chunk`` calls)."""
    import glta_gllm.functional as fn

    held, matmuls = [], []
    real_hold, real_mm = fn._grad_w_holding_logits, fn._mm_chunk

    def hold(*args):
        out = real_hold(*args)
        held.append(None if out is None else out[0])
        return out

    monkeypatch.setattr(fn, "_grad_w_holding_logits", hold)
    monkeypatch.setattr(fn, "_mm_chunk", lambda out, *a: matmuls.append(a[3]) or real_mm(out, *a))
    return held, matmuls


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(("rows", "chunk"), [(16, 7), (5, 3), (16, 50)])
def test_logits_kept_in_grad_w_match_naive(monkeypatch, rows, chunk, reduction, bias, dtype):
    # H = 16 (32 for bf16, whose 2-byte gradient holds float32 tiles for H / 2 rows): rows
    # == H is the tightest fit, where tile j and grad_W[j] start at the same element.
    hid = 32 if dtype == torch.bfloat16 else 16
    held, matmuls = _spy_grad_storage(monkeypatch)
    h, w, b, t = _inputs(rows + 3, hid, 50, dtype, bias, seed=rows, ignore=3)
    t[t >= 0] = torch.arange(int((t >= 0).sum())) * 7 % 50  # targets in every chunk
    params = _params(h, w, b)
    got = linear_cross_entropy(h, w, t, b, chunk_size=chunk, reduction=reduction)
    g_out = torch.tensor(0.75, dtype=dtype)  # an incoming gradient other than 1
    grads = torch.autograd.grad(got, params, g_out)
    chunks = math.ceil(50 / chunk)
    assert len(held) == 1 and held[0] is not None  # the logits lived in grad_W's storage
    assert len(matmuls) == chunks  # ... so no chunk was recomputed
    assert grads[1].data_ptr() == held[0].data_ptr()  # and grad_W is that very buffer
    ref_params = [p.detach().double().requires_grad_() for p in params]
    rb = ref_params[2] if bias else None
    ref = F.cross_entropy(F.linear(ref_params[0], ref_params[1], rb), t, reduction=reduction)
    ref_grads = torch.autograd.grad(ref, ref_params, g_out.double())
    tol = {
        torch.float64: {"atol": 1e-10, "rtol": 1e-10},
        torch.float32: {"atol": 2e-5, "rtol": 2e-5},
        torch.bfloat16: {"atol": 3e-2, "rtol": 2e-2},
    }[dtype]
    torch.testing.assert_close(got.double(), ref, **tol)
    for gg, rg in zip(grads, ref_grads, strict=True):
        assert gg.dtype == dtype
        torch.testing.assert_close(gg.double(), rg, **tol)


def test_gradcheck_logits_kept_in_grad_w(monkeypatch) -> None:
    held, _ = _spy_grad_storage(monkeypatch)
    h, w, b, t = _inputs(5, 5, 11, torch.float64, True, ignore=1)
    fn = lambda *p: linear_cross_entropy(*p[:2], t, p[2], chunk_size=3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (h, w, b), nondet_tol=1e-12)
    assert held and all(x is not None for x in held)


@pytest.mark.parametrize("case", ["frozen_weight", "store_false", "rows_over_hidden", "none"])
def test_logits_kept_in_grad_w_only_where_it_applies(monkeypatch, case) -> None:
    held, matmuls = _spy_grad_storage(monkeypatch)
    h, w, b, t = _inputs(17 if case == "rows_over_hidden" else 8, 16, 40, torch.float32, True)
    if case == "frozen_weight":
        w = w.detach()
    store = False if case == "store_false" else None
    reduction = "none" if case == "none" else "mean"
    got = linear_cross_entropy(h, w, t, b, chunk_size=8, store_logits=store, reduction=reduction)
    got.sum().backward()
    # rows > H: asked and declined; the other cases never ask (no grad_W, or not wanted)
    assert held == ([None] if case == "rows_over_hidden" else [])
    ref = F.cross_entropy(F.linear(h, w, b), t, reduction=reduction)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    if case == "store_false":
        assert len(matmuls) == 5 + 4  # every chunk but the one left in the buffer recomputed


@pytest.mark.parametrize("store", [None, True, False])
def test_items_masked_by_minus_inf_bias(monkeypatch, store) -> None:
    _hybrid(monkeypatch, 0.7)
    h, w, b, t = _inputs(20, 4, 50, torch.float64, True)
    b = b.detach().clone()
    b[16:40] = -math.inf  # chunks 2-4 masked: one recomputed, one buffered, one kept
    b.requires_grad_()
    t = t % 16
    got = linear_cross_entropy(h, w, t, b, chunk_size=8, store_logits=store)
    grads = torch.autograd.grad(got, (h, w, b))
    ref = F.cross_entropy(F.linear(h, w, b), t)
    ref_grads = torch.autograd.grad(ref, (h, w, b))
    torch.testing.assert_close(got, ref)
    for gg, rg in zip(grads, ref_grads, strict=True):
        assert not gg.isnan().any()
        torch.testing.assert_close(gg, rg)


def test_no_grad_mode_skips_the_gradient_pass(monkeypatch) -> None:
    import glta_gllm.functional as fn

    def fail(*args, **kwargs):
        raise AssertionError("gradient pass ran under torch.no_grad()")

    monkeypatch.setattr(fn, "_grad_pass", fail)
    h, w, b, t = _inputs(6, 4, 30, torch.float32, True)
    with torch.no_grad():
        loss = linear_cross_entropy(h, w, t, b)
    torch.testing.assert_close(loss, F.cross_entropy(F.linear(h, w, b), t).detach())
    with pytest.raises(AssertionError, match="gradient pass"):
        linear_cross_entropy(h, w, t, b)


# ---------------------------------------------------------------- CUDA plan (pure arithmetic)


@pytest.mark.parametrize(
    ("rows", "items", "elem", "acc_elem"),
    [(512, 100_000, 4, 4), (256, 200_000, 4, 4), (1024, 1_000_000, 4, 4), (512, 100_000, 2, 4),
     (16, 1_000_000, 2, 4), (4096, 300, 4, 4)],
)
def test_cuda_plan_uses_big_tiles_within_the_memory_budget(rows, items, elem, acc_elem) -> None:
    import glta_gllm.functional as fn

    cuda = torch.device("cuda")
    chunk = fn._item_chunk(rows, items, None, cuda, elem, acc_elem)
    assert 1 <= chunk <= items
    assert chunk >= min(items, fn._MIN_CHUNK)
    if rows * items * elem >= (64 << 20):  # big problems: few big chunks, unlike the CPU plan
        assert math.ceil(items / chunk) <= max(
            fn._CUDA_LOGITS_SHARE * acc_elem // elem + 1,
            rows * items // fn._CUDA_TILE_ELEMENTS + 1,
        )
    logits = rows * items * elem
    tile = rows * chunk * acc_elem
    if chunk > fn._MIN_CHUNK and chunk < items:
        assert tile <= logits / fn._CUDA_LOGITS_SHARE
        assert rows * chunk <= fn._CUDA_TILE_ELEMENTS
    reserve = rows * chunk * elem if elem < acc_elem else 0
    kept = fn._kept_chunks(rows, items, 576, chunk, elem, None, acc_elem, reserve)
    if logits > fn._STORE_MIN_BYTES:  # kept tiles + the reused tile + the reserve
        assert kept * tile + tile + reserve <= fn._MEMORY_FRACTION * logits or kept == 0
    assert fn._item_chunk(rows, items, 77, cuda) == min(77, items)  # explicit chunk wins
    dtype = torch.float32 if elem == 4 else torch.bfloat16
    assert fn._plan(rows, items, 576, dtype, cuda, lowp=elem < acc_elem) == (chunk, kept)


def test_lowp_gemm_only_on_cuda_half_precision() -> None:
    import glta_gllm.functional as fn

    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert not fn._lowp_gemm(torch.zeros(2, 2, dtype=dtype))  # CPU: always upcast


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_probability_floor_never_writes_subnormals(dtype):
    from glta_gllm import functional as fn

    tiny = torch.finfo(dtype).tiny
    floor_log = fn._prob_floor_log(dtype)
    low = float(torch.tensor(floor_log, dtype=dtype).exp())  # rounded as the kernel's exp
    x = torch.tensor([[3.0, -10.0, -50.0, -90.0, -200.0, -1e4, -math.inf],
                      [0.0, -1.0, -2.0, -800.0, -1e5, -5.0, -6.0]], dtype=dtype)
    shift = torch.tensor([3.0, 0.0], dtype=dtype)
    out = fn._exp_floor_(x.clone(), shift)
    assert out.shape == x.shape and (out >= low).all() and low > 1e9 * tiny
    shifted = x - shift.unsqueeze(1)
    inside = shifted > floor_log
    torch.testing.assert_close(out[inside], shifted[inside].exp())
    assert (out[~inside] == torch.tensor(low, dtype=dtype)).all()
    # rescaling by exp(log_scale) <= 1: exact where the product stays above the floor
    for log_scale in ([-1.0, -30.0], [-100.0, -1e4]):
        ls = torch.tensor(log_scale, dtype=dtype)
        scaled = fn._scale_floor_(out.clone(), ls)
        assert (scaled >= low * (1 - 1e-6)).all()
        want = out * ls.exp().unsqueeze(1)
        ok = want >= low
        torch.testing.assert_close(scaled[ok], want[ok])


@pytest.mark.parametrize("store", [None, True, False])
def test_peaky_logits_match_naive(store):
    # logits with gaps of hundreds: the naive fp32 softmax holds subnormal probabilities,
    # which the kernels floor (a CPU speed hazard); values and gradients must still match
    g = torch.Generator().manual_seed(4)
    h64 = torch.randn(37, 16, generator=g, dtype=torch.float64) * 40
    w64 = torch.randn(300, 16, generator=g, dtype=torch.float64)
    b64 = torch.randn(300, generator=g, dtype=torch.float64)
    t = torch.randint(0, 300, (37,), generator=g)
    p32 = torch.softmax(F.linear(h64, w64, b64).float(), dim=1)
    assert ((p32 > 0) & (p32 < torch.finfo(torch.float32).tiny)).any()  # the case is hit
    ref = [x.clone().requires_grad_() for x in (h64, w64, b64)]
    F.cross_entropy(F.linear(*ref), t).backward()
    got = [x.float().requires_grad_() for x in (h64, w64, b64)]
    loss = linear_cross_entropy(got[0], got[1], t, got[2], chunk_size=64, store_logits=store)
    loss.backward()
    want = F.cross_entropy(F.linear(h64, w64, b64), t)
    torch.testing.assert_close(loss.double(), want, rtol=1e-4, atol=1e-4)
    for a, r in zip(got, ref, strict=True):
        torch.testing.assert_close(a.grad.double(), r.grad, rtol=1e-4, atol=1e-5)


def test_backend_errors(monkeypatch) -> None:
    h, w, _, t = _inputs(4, 16, 10, torch.float32, False)
    with pytest.raises(ValueError, match="backend must be one of"):
        linear_cross_entropy(h, w, t, backend="cuda")
    monkeypatch.setitem(sys.modules, "glta_gllm._triton", None)  # as if triton were missing
    with pytest.raises(RuntimeError, match="needs the triton package"):
        linear_cross_entropy(h, w, t, backend="triton")
    monkeypatch.undo()
    tri = pytest.importorskip("glta_gllm._triton", reason="the triton package is not installed")
    monkeypatch.setattr(tri, "INTERPRET", False)
    with pytest.raises(RuntimeError, match="needs CUDA tensors, got cpu"):
        linear_cross_entropy(h.cpu(), w.cpu(), t.cpu(), backend="triton")


@pytest.mark.parametrize(
    ("device", "dtype", "store", "has_triton", "want"),
    [
        ("cuda", torch.bfloat16, None, True, "triton"),
        ("cuda", torch.float16, None, True, "triton"),
        ("cuda", torch.float32, None, True, "torch"),  # slower than the torch plan in fp32
        ("cuda", torch.bfloat16, True, True, "torch"),  # store_logits is the torch plan's
        ("cuda", torch.bfloat16, False, True, "torch"),
        ("cuda", torch.bfloat16, None, False, "torch"),  # no triton package
        ("cpu", torch.bfloat16, None, True, "torch"),
    ],
)
def test_auto_backend_picks_triton_only_for_half_precision_on_cuda(
    device, dtype, store, has_triton, want
) -> None:
    from glta_gllm.functional import _auto_backend

    assert _auto_backend(device, dtype, store, has_triton) == want


def test_auto_backend_on_cpu_runs_the_torch_plan(monkeypatch) -> None:
    import glta_gllm.functional as fn

    seen = []
    real = fn._LinearCrossEntropy.apply
    monkeypatch.setattr(fn._LinearCrossEntropy, "apply",
                        lambda *a: seen.append(a[-1]) or real(*a))
    h, w, _, t = _inputs(4, 16, 10, torch.bfloat16, False)
    linear_cross_entropy(h, w, t)
    assert seen == ["torch"]
