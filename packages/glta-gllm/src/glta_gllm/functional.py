"""Memory-efficient item-scoring kernels: fused linear cross-entropy and streaming top-k.

Both kernels score ``rows`` hidden states against ``items`` weight rows without ever holding
the full ``(rows x items)`` score matrix (or its gradient). They are written with plain
device-agnostic torch operations (matmuls into preallocated buffers, in-place element-wise
ops), so they run unchanged on CPU and CUDA.

``linear_cross_entropy`` computes ``F.cross_entropy(F.linear(hidden, weight, bias), targets)``:

* forward only (no gradient needed, or ``reduction="none"``): one pass over item chunks with an
  online log-sum-exp; extra memory ``O(rows x chunk)``. With ``reduction="none"`` the
  backward recomputes each chunk's logits (one more matmul per chunk) from the saved
  log-sum-exp, so it too never holds more than one chunk.
* training (``reduction`` ``"mean"``/``"sum"``): the gradients are computed inside the
  forward, row block by row block. For a block of ``R`` rows the logits of all items are
  kept (``R x items``, the only large buffer; ``R`` is chosen from the shapes so that this is
  a small fraction of the naive ``rows x items``), exponentiated chunk by chunk against the
  chunk's own maximum, and once the block's log-sum-exp is known each chunk is rescaled into
  its softmax gradient and fed to two matmuls: ``grad_hidden += G_c W_c`` and
  ``grad_weight[c] (+)= G_c^T hidden``. This costs the same three matmuls as the naive path,
  whereas the pure item-chunked scheme would need a fourth (the logits recomputed).
  The backward then only scales the stored gradients by the incoming scalar gradient.

Low-precision inputs (bf16/fp16) are computed and accumulated in float32 chunk by chunk.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

__all__ = ["linear_cross_entropy", "topk_excluding"]

_REDUCTIONS = ("mean", "sum", "none")
# Target size of one (rows x chunk) working tile, in elements: big enough for efficient
# matmuls, small enough to stay in the CPU's last-level cache.
_TILE_ELEMENTS = 1 << 20
# Bound on the stored (row block x items) logits of the training path, as a fraction of the
# naive rows x items matrix, and in absolute bytes (whichever allows more rows).
_BLOCK_FRACTION = 0.2
_BLOCK_MIN_BYTES = 8 << 20
_TOPK_BUFFER_BYTES = 32 << 20


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _item_chunk(rows: int, items: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return min(chunk_size, items)
    chunk = _TILE_ELEMENTS // max(rows, 1)
    chunk = max(512, min(chunk, 16384))
    return min(items, chunk)


def _row_block(rows: int, items: int, elem_bytes: int, row_block: int | None) -> int:
    if row_block is not None:
        if row_block < 1:
            raise ValueError(f"row_block must be >= 1, got {row_block}")
        return min(row_block, max(rows, 1))
    budget = max(_BLOCK_FRACTION * rows * items * elem_bytes, _BLOCK_MIN_BYTES)
    block = int(budget // max(items * elem_bytes, 1))
    return max(1, min(rows, block))


def _check_lce_inputs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
) -> torch.Tensor:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 2:
        raise ValueError(f"hidden must be 2-D (rows, H), got shape {_shape(hidden)}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (items, H), got shape {_shape(weight)}")
    if not hidden.is_floating_point():
        raise ValueError(f"hidden must be a floating-point tensor, got dtype {hidden.dtype}")
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"hidden size mismatch: hidden has shape {tuple(hidden.shape)} (H={hidden.shape[1]}) "
            f"but weight has shape {tuple(weight.shape)} (H={weight.shape[1]})"
        )
    if weight.dtype != hidden.dtype:
        raise ValueError(f"weight dtype {weight.dtype} differs from hidden dtype {hidden.dtype}")
    if weight.device != hidden.device:
        raise ValueError(f"weight is on {weight.device} but hidden is on {hidden.device}")
    if weight.shape[0] < 1:
        raise ValueError(f"weight must have at least one item row, got shape {tuple(weight.shape)}")
    if bias is not None:
        if bias.shape != (weight.shape[0],):
            raise ValueError(
                f"bias must have shape ({weight.shape[0]},) to match weight {tuple(weight.shape)}, "
                f"got {tuple(bias.shape)}"
            )
        if bias.dtype != hidden.dtype or bias.device != hidden.device:
            raise ValueError(
                f"bias ({bias.dtype}, {bias.device}) must match hidden ({hidden.dtype}, "
                f"{hidden.device})"
            )
    if not isinstance(targets, torch.Tensor) or targets.shape != (hidden.shape[0],):
        raise ValueError(
            f"targets must have shape ({hidden.shape[0]},) to match hidden "
            f"{tuple(hidden.shape)}, got {_shape(targets)}"
        )
    if targets.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f"targets must hold integer class indices, got dtype {targets.dtype}")
    targets = targets.to(device=hidden.device, dtype=torch.int64)
    items = weight.shape[0]
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= items))
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"targets[{first}] = {int(targets[first])} is outside [0, {items}) for weight of "
            f"shape {tuple(weight.shape)} (and is not ignore_index={ignore_index})"
        )
    return targets


def _shape(x: object) -> object:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def _mm_chunk(
    out: torch.Tensor,
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    a: int,
    e: int,
    acc: torch.dtype,
) -> torch.Tensor:
    """out (R, e-a) <- h (R, H) @ weight[a:e]^T (+ bias[a:e]), computed in dtype ``acc``."""
    w = weight[a:e]
    if w.dtype != acc:
        w = w.to(acc)
    if bias is None:
        torch.mm(h, w.t(), out=out)
    else:
        b = bias[a:e]
        if b.dtype != acc:
            b = b.to(acc)
        torch.addmm(b, h, w.t(), out=out)
    return w


def _lse_forward(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    chunk: int,
    acc: torch.dtype,
) -> torch.Tensor:
    """Row-wise log-sum-exp of ``h @ weight^T + bias`` over item chunks (online)."""
    rows, items = h.shape[0], weight.shape[0]
    m = torch.full((rows,), -math.inf, dtype=acc, device=h.device)
    s = torch.zeros(rows, dtype=acc, device=h.device)
    buf = torch.empty(rows * min(chunk, items), dtype=acc, device=h.device)
    for a in range(0, items, chunk):
        e = min(a + chunk, items)
        logits = buf[: rows * (e - a)].view(rows, e - a)
        _mm_chunk(logits, h, weight, bias, a, e, acc)
        new_m = torch.maximum(m, logits.amax(dim=1))
        logits.sub_(new_m.unsqueeze(1)).exp_()
        s.mul_(torch.exp(m - new_m)).add_(logits.sum(dim=1))
        m = new_m
    return m + s.log()


def _target_logits(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    acc: torch.dtype,
) -> torch.Tensor:
    w = weight.index_select(0, targets).to(acc)
    out = (h * w).sum(dim=1)
    if bias is not None:
        out = out + bias.index_select(0, targets).to(acc)
    return out


def _subtract_onehot(
    probs: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor, a: int, e: int
) -> None:
    """probs[r, targets[r] - a] -= scale[r] for the rows whose target lies in [a, e)."""
    hit = ((targets >= a) & (targets < e)).nonzero().squeeze(1)
    if hit.numel():
        probs.index_put_((hit, targets[hit] - a), -scale[hit], accumulate=True)


def _fused_forward_backward(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    row_scale: torch.Tensor,
    needs: tuple[bool, bool, bool],
    chunk: int,
    block: int,
    acc: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Row log-sum-exp and the gradients of ``sum_r row_scale[r] * loss[r]``.

    Args:
        h: (R, H) hidden rows in dtype ``acc`` (only the rows that count).
        weight: (I, H); bias: (I,) or None; targets: (R,) int64 in [0, I).
        row_scale: (R,) weight of each row's loss in the reduced loss.
        needs: whether grad of (hidden, weight, bias) is wanted.

    Returns:
        (lse (R,), grad_h (R, H) in acc or None, grad_w (I, H) or None, grad_b (I,) or None).
    """
    rows, hid = h.shape
    items = weight.shape[0]
    device = h.device
    need_h, need_w, need_b = needs
    grad_h = torch.zeros(rows, hid, dtype=acc, device=device) if need_h else None
    multi_block = block < rows
    w_dtype = acc if (multi_block and weight.dtype != acc) else weight.dtype
    grad_w = torch.empty(items, hid, dtype=w_dtype, device=device) if need_w else None
    grad_b = torch.zeros(items, dtype=acc, device=device) if need_b else None
    lse_all = torch.empty(rows, dtype=acc, device=device)
    store = torch.empty(min(block, rows) * items, dtype=acc, device=device)
    bounds = [(a, min(a + chunk, items)) for a in range(0, items, chunk)]
    for r0 in range(0, rows, block):
        r1 = min(r0 + block, rows)
        nr = r1 - r0
        hr = h[r0:r1]
        tr = targets[r0:r1]
        # Pass 1: logits chunk by chunk, exponentiated against each chunk's own row max.
        maxes = torch.empty(len(bounds), nr, dtype=acc, device=device)
        sums = torch.empty(len(bounds), nr, dtype=acc, device=device)
        tiles = []
        for j, (a, e) in enumerate(bounds):
            tile = store[a * nr : e * nr].view(nr, e - a)
            _mm_chunk(tile, hr, weight, bias, a, e, acc)
            torch.amax(tile, dim=1, out=maxes[j])
            tile.sub_(maxes[j].unsqueeze(1)).exp_()
            torch.sum(tile, dim=1, out=sums[j])
            tiles.append(tile)
        top = maxes.amax(dim=0)
        lse = top + (sums * torch.exp(maxes - top)).sum(dim=0).log()
        lse_all[r0:r1] = lse
        # factor[j, r] turns tile j's stored exp(logit - max_j) into scale_r * softmax.
        factor = torch.exp(maxes - lse).mul_(row_scale[r0:r1])
        sr = row_scale[r0:r1]
        # Pass 2: softmax gradient per chunk, two matmuls while the tile is hot.
        for j, (a, e) in enumerate(bounds):
            tile = tiles[j]
            tile.mul_(factor[j].unsqueeze(1))
            _subtract_onehot(tile, tr, sr, a, e)
            w = weight[a:e]
            if need_h:
                grad_h[r0:r1].addmm_(tile, w if w.dtype == acc else w.to(acc))
            if need_w:
                if r0 > 0:
                    grad_w[a:e].addmm_(tile.t(), hr)
                elif w_dtype == acc:
                    torch.mm(tile.t(), hr, out=grad_w[a:e])
                else:
                    grad_w[a:e].copy_(tile.t() @ hr)
            if need_b:
                grad_b[a:e] += tile.sum(dim=0)
    return lse_all, grad_h, grad_w, grad_b


def _recompute_backward(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    lse: torch.Tensor,
    row_scale: torch.Tensor,
    needs: tuple[bool, bool, bool],
    chunk: int,
    acc: torch.dtype,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of ``sum_r row_scale[r] * loss[r]`` recomputing each chunk's logits."""
    rows, hid = h.shape
    items = weight.shape[0]
    device = h.device
    need_h, need_w, need_b = needs
    grad_h = torch.zeros(rows, hid, dtype=acc, device=device) if need_h else None
    grad_w = torch.empty(items, hid, dtype=weight.dtype, device=device) if need_w else None
    grad_b = torch.zeros(items, dtype=acc, device=device) if need_b else None
    buf = torch.empty(rows * min(chunk, items), dtype=acc, device=device)
    neg_lse = (-lse).unsqueeze(1)
    scale = row_scale.unsqueeze(1)
    for a in range(0, items, chunk):
        e = min(a + chunk, items)
        tile = buf[: rows * (e - a)].view(rows, e - a)
        w = _mm_chunk(tile, h, weight, bias, a, e, acc)
        tile.add_(neg_lse).exp_().mul_(scale)
        _subtract_onehot(tile, targets, row_scale, a, e)
        if need_h:
            grad_h.addmm_(tile, w)
        if need_w:
            if grad_w.dtype == acc:
                torch.mm(tile.t(), h, out=grad_w[a:e])
            else:
                grad_w[a:e].copy_(tile.t() @ h)
        if need_b:
            grad_b[a:e] += tile.sum(dim=0)
    return grad_h, grad_w, grad_b


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, ignore_index, reduction, chunk_size, row_block):
        rows, items = hidden.shape[0], weight.shape[0]
        acc = _acc_dtype(hidden.dtype)
        device = hidden.device
        valid = targets != ignore_index
        n_valid = int(valid.sum())
        all_valid = n_valid == rows
        idx = None if all_valid else valid.nonzero().squeeze(1)
        h = hidden if all_valid else hidden.index_select(0, idx)
        t = targets if all_valid else targets.index_select(0, idx)
        h = h.to(acc) if h.dtype != acc else h
        chunk = _item_chunk(max(n_valid, 1), items, chunk_size)
        needs = tuple(bool(x) for x in ctx.needs_input_grad[:3])
        if bias is None:
            needs = (needs[0], needs[1], False)
        ctx.rows, ctx.items, ctx.reduction = rows, items, reduction
        ctx.has_bias = bias is not None
        ctx.mode = "none"
        scale_value = (1.0 / n_valid if n_valid else 0.0) if reduction == "mean" else 1.0

        if n_valid == 0:
            lse = torch.zeros(0, dtype=acc, device=device)
            ctx.mode = "empty"
        elif any(needs) and reduction != "none":
            row_scale = torch.full((n_valid,), scale_value, dtype=acc, device=device)
            block = _row_block(n_valid, items, torch.finfo(acc).bits // 8, row_block)
            lse, gh, gw, gb = _fused_forward_backward(
                h, weight, bias, t, row_scale, needs, chunk, block, acc
            )
            ctx.mode = "fused"
            ctx.grads = (gh, gw, gb)
        else:
            lse = _lse_forward(h, weight, bias, chunk, acc)
            if any(needs):
                ctx.mode = "recompute"
        loss_rows = lse - _target_logits(h, weight, bias, t, acc) if n_valid else lse
        if ctx.mode in ("fused", "recompute"):
            # Inputs cost nothing to save; lse lets a second backward (retain_graph) recompute.
            ctx.save_for_backward(hidden, weight, bias, targets, lse)
            ctx.idx = idx
            ctx.chunk = chunk
        if reduction == "none":
            out = torch.zeros(rows, dtype=acc, device=device)
            if all_valid:
                out = loss_rows
            elif n_valid:
                out.index_copy_(0, idx, loss_rows)
            return out.to(hidden.dtype)
        total = loss_rows.sum() * scale_value
        return total.to(hidden.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if ctx.mode == "empty":
            return None, None, None, None, None, None, None, None
        gh = gw = gb = None
        if ctx.mode == "fused" and ctx.grads is not None:
            # Hand the precomputed gradients over (and drop our reference, so autograd can
            # steal them instead of copying). A second backward through a retained graph
            # falls through to the recompute path below.
            gh, gw, gb = ctx.grads
            ctx.grads = None
            g = grad_out.to(gh.dtype if gh is not None else torch.float32)
            if not (grad_out.device.type == "cpu" and float(grad_out) == 1.0):
                gh = gh.mul_(g) if gh is not None else None
                gw = gw.mul_(g.to(gw.dtype)) if gw is not None else None
                gb = gb.mul_(g) if gb is not None else None
        else:
            hidden, weight, bias, targets, lse = ctx.saved_tensors
            acc = _acc_dtype(hidden.dtype)
            idx = ctx.idx
            h = hidden if idx is None else hidden.index_select(0, idx)
            t = targets if idx is None else targets.index_select(0, idx)
            h = h.to(acc)
            g = grad_out.to(acc)
            if ctx.reduction == "none":
                row_scale = g if idx is None else g.index_select(0, idx)
            else:
                n = h.shape[0]
                scale = 1.0 / n if ctx.reduction == "mean" else 1.0
                row_scale = (g * scale).expand(n).contiguous()
            needs = (need_h, need_w, need_b and ctx.has_bias)
            gh, gw, gb = _recompute_backward(
                h, weight, bias, t, lse, row_scale, needs, ctx.chunk, acc
            )
        if gh is not None and ctx.idx is not None:
            full = torch.zeros(ctx.rows, gh.shape[1], dtype=gh.dtype, device=gh.device)
            full.index_copy_(0, ctx.idx, gh)
            gh = full
        dtype = grad_out.dtype
        gh = gh.to(dtype) if gh is not None else None
        gw = gw.to(dtype) if gw is not None else None
        gb = gb.to(dtype) if gb is not None else None
        return gh, gw, gb, None, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int | None = None,
    row_block: int | None = None,
) -> torch.Tensor:
    """Cross-entropy of a linear layer's logits without materialising the logits.

    Equals ``F.cross_entropy(F.linear(hidden, weight, bias), targets, ignore_index=...,
    reduction=...)`` in value and gradient, except that when every row is ignored the
    ``"mean"`` loss is ``0`` (not NaN) and its gradients are zero.

    Args:
        hidden: ``(N, H)`` floating-point rows (e.g. LLM hidden states at output slots).
        weight: ``(I, H)`` one row per item (class), same dtype and device as ``hidden``.
        targets: ``(N,)`` integer item indices in ``[0, I)``, or ``ignore_index``.
        bias: optional ``(I,)`` per-item bias.
        ignore_index: target value whose rows contribute nothing (loss 0, gradient 0).
        reduction: ``"mean"`` (over non-ignored rows), ``"sum"`` or ``"none"`` (``(N,)``).
        chunk_size: items per chunk (default: chosen from the shapes so that a
            ``rows x chunk`` tile is about 4 MiB in float32).
        row_block: rows whose full logits the training path keeps at once (default: chosen
            so that the block is at most a fifth of the ``N x I`` logits, or 8 MiB).

    Returns:
        The scalar loss (``"mean"``/``"sum"``) or the ``(N,)`` per-row losses, in
        ``hidden``'s dtype. bf16/fp16 inputs are computed in float32 internally.

    Memory:
        Beyond the inputs and their gradients: ``O(N x chunk)`` for the forward-only and
        ``reduction="none"`` paths, ``O(row_block x I)`` for the training path (which in
        exchange needs no recomputation: 3 matmuls in all, like the naive path).

    Raises:
        ValueError: bad shapes, dtypes, devices, reduction, or a target outside ``[0, I)``;
            the message names the shapes.
    """
    targets = _check_lce_inputs(hidden, weight, targets, bias, ignore_index, reduction)
    return _LinearCrossEntropy.apply(
        hidden, weight, bias, targets, ignore_index, reduction, chunk_size, row_block
    )


def topk_excluding(
    queries: torch.Tensor,
    weight: torch.Tensor,
    k: int,
    *,
    bias: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` items per query by ``queries @ weight^T + bias``, skipping excluded items.

    Streams over item chunks (and over user blocks when there are many users), keeping
    only a running ``(U, k)`` top list: the ``(U x I)`` score matrix is never built.
    Ties are broken deterministically: among equal scores the lower item index ranks first.

    Args:
        queries: ``(U, H)`` floating-point query rows (user embeddings, slot hidden states).
        weight: ``(I, H)`` item rows, same dtype and device.
        k: number of items to return per user, ``1 <= k <= I - excluded(u)`` for every user.
        bias: optional ``(I,)`` per-item bias added to the scores.
        exclude: optional ``(U, I)`` torch sparse CSR matrix; its stored entries (e.g. each
            user's training items) are never returned. Column indices of a row must be unique.
        chunk_size: items per chunk (default: from a 32 MiB score-buffer budget).

    Returns:
        ``(scores, indices)``: ``(U, k)`` scores in ``queries``' dtype, best first, and the
        ``(U, k)`` int64 item indices.

    Raises:
        ValueError: bad shapes/dtypes, a non-CSR ``exclude``, or ``k`` larger than the items
            left for some user (the message names the user and the counts).
    """
    if not isinstance(queries, torch.Tensor) or queries.dim() != 2:
        raise ValueError(f"queries must be 2-D (users, H), got shape {_shape(queries)}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (items, H), got shape {_shape(weight)}")
    if queries.shape[1] != weight.shape[1]:
        raise ValueError(
            f"hidden size mismatch: queries has shape {tuple(queries.shape)} but weight has "
            f"shape {tuple(weight.shape)}"
        )
    if not queries.is_floating_point() or queries.dtype != weight.dtype:
        raise ValueError(
            f"queries ({queries.dtype}) and weight ({weight.dtype}) must share a floating dtype"
        )
    if queries.device != weight.device:
        raise ValueError(f"queries are on {queries.device} but weight is on {weight.device}")
    users, items = queries.shape[0], weight.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if bias is not None and bias.shape != (items,):
        raise ValueError(
            f"bias must have shape ({items},) to match weight {tuple(weight.shape)}, "
            f"got {tuple(bias.shape)}"
        )
    device = queries.device
    excl_rows = excl_cols = None
    if exclude is not None:
        if not isinstance(exclude, torch.Tensor) or exclude.layout != torch.sparse_csr:
            layout = exclude.layout if isinstance(exclude, torch.Tensor) else type(exclude)
            raise ValueError(
                f"exclude must be a torch sparse CSR tensor (users x items), got {layout} "
                f"with shape {_shape(exclude)}"
            )
        if tuple(exclude.shape) != (users, items):
            raise ValueError(
                f"exclude has shape {tuple(exclude.shape)} but queries {tuple(queries.shape)} "
                f"and weight {tuple(weight.shape)} need ({users}, {items})"
            )
        crow = exclude.crow_indices().to(device=device, dtype=torch.int64)
        counts = crow[1:] - crow[:-1]
        left = items - counts
        if users and int(left.min()) < k:
            u = int((left < k).nonzero()[0, 0])
            raise ValueError(
                f"k={k} exceeds the items left for user {u}: {items} items - "
                f"{int(counts[u])} excluded = {int(left[u])} (exclude shape "
                f"{tuple(exclude.shape)})"
            )
        cols = exclude.col_indices().to(device=device, dtype=torch.int64)
        rows = torch.repeat_interleave(torch.arange(users, device=device), counts)
        order = torch.argsort(cols, stable=True)
        excl_cols, excl_rows = cols[order], rows[order]
    elif k > items:
        raise ValueError(
            f"k={k} exceeds the number of items {items} (weight shape {tuple(weight.shape)})"
        )

    acc = _acc_dtype(queries.dtype)
    elem = torch.finfo(acc).bits // 8
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        chunk = min(chunk_size, items)
    else:
        chunk = min(items, max(1024, min(65536, _TOPK_BUFFER_BYTES // max(users * elem, 1))))
    user_block = max(1, min(users, _TOPK_BUFFER_BYTES // (chunk * elem)))
    out_scores = torch.empty(users, k, dtype=queries.dtype, device=device)
    out_idx = torch.empty(users, k, dtype=torch.int64, device=device)
    if users == 0:
        return out_scores, out_idx
    with torch.no_grad():
        buf = torch.empty(min(user_block, users) * chunk, dtype=acc, device=device)
        bounds = [(a, min(a + chunk, items)) for a in range(0, items, chunk)]
        if excl_cols is not None:
            starts = torch.searchsorted(
                excl_cols, torch.tensor([a for a, _ in bounds] + [items], device=device)
            ).tolist()
        for u0 in range(0, users, user_block):
            u1 = min(u0 + user_block, users)
            nu = u1 - u0
            q = queries[u0:u1].to(acc)
            best_v = torch.empty(nu, 0, dtype=acc, device=device)
            best_i = torch.empty(nu, 0, dtype=torch.int64, device=device)
            for j, (a, e) in enumerate(bounds):
                scores = buf[: nu * (e - a)].view(nu, e - a)
                _mm_chunk(scores, q, weight, bias, a, e, acc)
                if excl_cols is not None and starts[j + 1] > starts[j]:
                    r = excl_rows[starts[j] : starts[j + 1]]
                    c = excl_cols[starts[j] : starts[j + 1]]
                    sel = (r >= u0) & (r < u1)
                    scores.index_put_(
                        (r[sel] - u0, c[sel] - a),
                        torch.tensor(-math.inf, dtype=acc, device=device),
                    )
                v, i = _chunk_topk(scores, k)
                best_v, best_i = _merge_sorted(best_v, best_i, v, i + a, k)
            out_scores[u0:u1] = best_v.to(queries.dtype)
            out_idx[u0:u1] = best_i
    return out_scores, out_idx


def _chunk_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each row of a (U, C) tile, ties at the cut broken towards lower columns."""
    width = scores.shape[1]
    if width <= k:
        idx = torch.arange(width, device=scores.device).expand(scores.shape[0], width)
        return scores.clone(), idx.clone()
    v, i = torch.topk(scores, k + 1, dim=1, largest=True, sorted=True)
    tied = v[:, k - 1] == v[:, k]
    v, i = v[:, :k], i[:, :k]
    if bool(tied.any()):
        rows = tied.nonzero().squeeze(1)
        sv, si = torch.sort(scores[rows], dim=1, descending=True, stable=True)
        v = v.clone()
        i = i.clone()
        v[rows] = sv[:, :k]
        i[rows] = si[:, :k]
    return v, i


def _merge_sorted(
    v1: torch.Tensor, i1: torch.Tensor, v2: torch.Tensor, i2: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of the union of two candidate lists, ordered by (score desc, index asc)."""
    v = torch.cat([v1, v2], dim=1)
    i = torch.cat([i1, i2], dim=1)
    i, order = torch.sort(i, dim=1)
    v = v.gather(1, order)
    v, order = torch.sort(v, dim=1, descending=True, stable=True)
    i = i.gather(1, order)
    return v[:, :k], i[:, :k]
