"""Item-sharded kernels: the GLLM head's weight split along items over a process group.

Each rank ``r`` of the group holds the contiguous rows ``[o_r, o_r + I_r)`` of the ``(I, H)``
weight (rank order = item order, any sizes >= 1; :func:`glta_gllm.shard_range` gives the
``torch.tensor_split`` layout the heads use) and every rank holds the same ``hidden`` /
``queries`` and global ``targets`` / ``exclude``. The offsets come from one all-gather of
the ranks' row counts per call.

Cross-entropy (Megatron-LM's vocabulary-parallel cross-entropy, on top of the chunked
kernels of :mod:`glta_gllm.functional`, which each rank runs on its own shard):

* pass 1 on the shard gives ``lse_r = log sum_{i in shard r} exp(x_i)`` per row;
* ``m = max_r lse_r`` (all-reduce MAX of ``R`` values), then one all-reduce SUM of
  ``[exp(lse_r - m), t_r]`` (``2 R`` values), where ``t_r`` is the target logit on the rank
  owning the target and 0 elsewhere: ``lse = m + log sum_r exp(lse_r - m)``, loss ``lse - t``;
* pass 2 on the shard with the global ``lse``: ``P_j = exp(X_j - lse)`` is the true softmax
  of the shard's items, so ``grad_W`` / ``grad_b`` are this shard's exact gradients (the
  one-hot term only on the owning rank) and ``grad_h = sum_r (P_r W_r - [owned] W[t])``
  needs one all-reduce SUM of ``R x H`` values in the backward.

No ``rows x items`` logits are gathered: per step ``3 R`` floats forward, ``R H`` backward,
plus the row-count all-gather (2 int64 per rank).

Top-k: each rank streams its shard (exclusions sliced to its columns) to a ``(U, k)`` list,
the lists are all-gathered (``U k`` scores and indices per rank) and merged by (score desc,
index asc), which is the unsharded order, so the result equals the unsharded top-k.

Every rank must make the same calls with the same replicated inputs (collectives), and run
the backward when any rank does.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from glta_gllm import functional as _f

__all__ = ["layout", "linear_cross_entropy", "topk_excluding"]


def layout(weight: torch.Tensor, group: object) -> tuple[int, int]:
    """``(offset, num_items)``: this rank's first item and the catalogue size, from one
    all-gather of every rank's ``weight`` shape ``(I_r, H)`` over ``group``.

    Raises:
        ValueError (on every rank alike): a rank with no rows, or ranks disagreeing on ``H``.
    """
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (items, H), got shape {_f._shape(weight)}")
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    info = torch.tensor(weight.shape, dtype=torch.int64, device=weight.device)
    parts = [torch.empty_like(info) for _ in range(world)]
    dist.all_gather(parts, info, group=group)
    table = torch.stack(parts).cpu().tolist()
    counts, hids = [c for c, _ in table], [h for _, h in table]
    if len(set(hids)) != 1:
        raise ValueError(f"weight shards disagree on the hidden size: H = {hids} per rank")
    if min(counts) < 1:
        raise ValueError(f"every rank must hold at least one item row; rows per rank: {counts}")
    return sum(counts[:rank]), sum(counts)


def _combine(
    lse_local: torch.Tensor, target_local: torch.Tensor, group: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global ``(lse, target logit)`` per row from each rank's ``(R,)`` shard values."""
    top = lse_local.clone()
    dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
    n = lse_local.shape[0]
    packed = torch.cat([(lse_local - top).exp_(), target_local])
    dist.all_reduce(packed, group=group)
    return packed[:n].log_().add_(top), packed[n:]


def _owned_targets(t: torch.Tensor, offset: int, items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(owned (R,) bool, local targets)``: local index where owned, else -1."""
    owned = (t >= offset) & (t < offset + items)
    return owned, (t - offset).masked_fill_(~owned, -1)


class _ShardedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, hidden, weight, bias, targets, ignore_index, reduction, chunk_size, store,
        grad_mode, group, offset,
    ):  # fmt: skip
        rows, items = hidden.shape[0], weight.shape[0]
        acc = _f._acc_dtype(hidden.dtype)
        device = hidden.device
        valid = targets != ignore_index
        n_valid = int(valid.sum())
        all_valid = n_valid == rows
        idx = None if all_valid else valid.nonzero().squeeze(1)
        h = hidden if all_valid else hidden.index_select(0, idx)
        t = targets if all_valid else targets.index_select(0, idx)
        owned, t_loc = _owned_targets(t, offset, items)
        h_lp = h if _f._lowp_gemm(h) else None
        h = h.to(acc) if h.dtype != acc else h
        chunk, kept = _f._plan(
            n_valid, items, weight.shape[1], hidden.dtype, device, h_lp is not None,
            chunk_size, store,
        )  # fmt: skip
        bounds = _f._bounds(items, chunk)
        needs = tuple(bool(x) and grad_mode for x in ctx.needs_input_grad[:3])
        if bias is None:
            needs = (needs[0], needs[1], False)
        ctx.rows, ctx.reduction, ctx.idx, ctx.chunk = rows, reduction, idx, chunk
        ctx.group, ctx.offset = group, offset
        ctx.mode = "none"
        ctx.grads = None
        scale_value = (1.0 / n_valid if n_valid else 0.0) if reduction == "mean" else 1.0
        if n_valid == 0:  # the same on every rank: targets are replicated
            lse = torch.zeros(0, dtype=acc, device=device)
            loss_rows = lse
            ctx.mode = "empty"
        else:
            fused = any(needs) and reduction != "none"
            grad_w = held = None
            if not fused:
                kept = 0
            elif needs[1] and store is not False:
                holder = _f._grad_w_holding_logits(n_valid, weight, acc)
                if holder is not None:
                    grad_w, held = holder
                    kept = len(bounds)
            lse_local, maxes, tiles, buf = _f._lse_pass(
                h, weight, bias, bounds, acc, kept, h_lp, held
            )
            del held
            target_local = torch.zeros(n_valid, dtype=acc, device=device)
            mine = owned.nonzero().squeeze(1)
            if mine.numel():
                target_local.index_copy_(
                    0,
                    mine,
                    _f._target_logits(
                        h.index_select(0, mine), weight, bias, t_loc.index_select(0, mine), acc
                    ),
                )
            lse, target = _combine(lse_local, target_local, group)
            if fused:
                row_scale = torch.full((n_valid,), scale_value, dtype=acc, device=device)
                ctx.grads = _f._grad_pass(
                    h, weight, bias, t_loc, lse, row_scale, bounds, acc, needs,
                    kept, maxes, tiles, buf, scale_value, h_lp, grad_w, owned=owned,
                )  # fmt: skip
                ctx.mode = "fused"
            elif any(needs):
                ctx.mode = "recompute"
            del grad_w, tiles, buf
            loss_rows = lse - target
        if ctx.mode in ("fused", "recompute"):
            ctx.save_for_backward(hidden, weight, bias, targets, lse)
        if reduction == "none":
            if all_valid:
                return loss_rows.to(hidden.dtype)
            out = torch.zeros(rows, dtype=acc, device=device)
            if n_valid:
                out.index_copy_(0, idx, loss_rows)
            return out.to(hidden.dtype)
        return (loss_rows.sum() * scale_value).to(hidden.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        none = (None,) * 8
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if ctx.mode == "empty":
            return None, None, None, *none
        if ctx.grads is not None:
            gh, gw, gb = ctx.grads
            ctx.grads = None
            if gh is not None:
                dist.all_reduce(gh, group=ctx.group)
            if not (grad_out.device.type == "cpu" and float(grad_out) == 1.0):
                g = grad_out.to(torch.float32 if gh is None else gh.dtype)
                gh = gh.mul_(g) if gh is not None else None
                gw = gw.mul_(g.to(gw.dtype)) if gw is not None else None
                gb = gb.mul_(g) if gb is not None else None
        else:
            hidden, weight, bias, targets, lse = ctx.saved_tensors
            acc = _f._acc_dtype(hidden.dtype)
            idx = ctx.idx
            h = hidden if idx is None else hidden.index_select(0, idx)
            t = targets if idx is None else targets.index_select(0, idx)
            owned, t_loc = _owned_targets(t, ctx.offset, weight.shape[0])
            h_lp = h if _f._lowp_gemm(h) else None
            g = grad_out.to(acc)
            if ctx.reduction == "none":
                row_scale = g if idx is None else g.index_select(0, idx)
            else:
                n = h.shape[0]
                scale = 1.0 / n if ctx.reduction == "mean" else 1.0
                row_scale = (g * scale).expand(n).contiguous()
            needs = (need_h, need_w, need_b and bias is not None)
            bounds = _f._bounds(weight.shape[0], ctx.chunk)
            gh, gw, gb = _f._grad_pass(
                h.to(acc), weight, bias, t_loc, lse, row_scale, bounds, acc, needs,
                h_lp=h_lp, owned=owned,
            )  # fmt: skip
            if gh is not None:
                dist.all_reduce(gh, group=ctx.group)
        if gh is not None and ctx.idx is not None:
            full = torch.zeros(ctx.rows, gh.shape[1], dtype=gh.dtype, device=gh.device)
            full.index_copy_(0, ctx.idx, gh)
            gh = full
        dtype = grad_out.dtype
        gh = gh.to(dtype) if gh is not None else None
        gw = gw.to(dtype) if gw is not None else None
        gb = gb.to(dtype) if gb is not None else None
        return gh, gw, gb, *none


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int | None = None,
    store_logits: bool | None = None,
    backend: str = "auto",
    process_group: object,
) -> torch.Tensor:
    """:func:`glta_gllm.linear_cross_entropy` with ``weight`` ``(I_r, H)`` and ``bias``
    ``(I_r,)`` this rank's shard of the items over ``process_group`` (see the module
    docstring); ``hidden`` ``(N, H)`` and ``targets`` ``(N,)`` (global indices) identical on
    every rank. Returns the loss of all ``I`` items, the same on every rank.
    """
    if backend not in ("auto", "torch"):
        raise ValueError(f'backend={backend!r} is not supported with a process_group; use "torch"')
    offset, total = layout(weight, process_group)
    targets = _f._check_lce_inputs(
        hidden, weight, targets, bias, ignore_index, reduction, num_items=total
    )
    return _ShardedLinearCrossEntropy.apply(
        hidden, weight, bias, targets, ignore_index, reduction, chunk_size, store_logits,
        torch.is_grad_enabled(), process_group, offset,
    )  # fmt: skip


@torch.no_grad()
def topk_excluding(
    queries: torch.Tensor,
    weight: torch.Tensor,
    k: int,
    *,
    bias: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
    chunk_size: int | None = None,
    process_group: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`glta_gllm.topk_excluding` with ``weight`` ``(I_r, H)`` this rank's shard over
    ``process_group``; ``queries`` ``(U, H)`` and ``exclude`` (``(U, I)`` CSR over all
    items) identical on every rank. Returns the global ``(U, k)`` scores and item indices,
    the same on every rank and equal to the unsharded result.
    """
    offset, total = layout(weight, process_group)
    _f._check_topk_inputs(queries, weight, k, bias)
    users, items = queries.shape[0], weight.shape[0]
    device = queries.device
    rows, cols = _f._exclusions(exclude, users, total, k, device)
    if cols is not None:  # sorted by column: this shard's entries are one slice
        edges = torch.tensor([offset, offset + items], device=device)
        lo, hi = torch.searchsorted(cols, edges).tolist()
        rows, cols = rows[lo:hi], cols[lo:hi] - offset
    acc = _f._acc_dtype(queries.dtype)
    k_local = min(k, items)
    v, i = _f._topk_stream(queries, weight, k_local, bias, rows, cols, chunk_size, acc)
    i += offset
    if k_local < k:  # pad: -inf at index `total` loses every tie against a real item
        v = torch.cat([v, v.new_full((users, k - k_local), -torch.inf)], dim=1)
        i = torch.cat([i, i.new_full((users, k - k_local), total)], dim=1)
    world = dist.get_world_size(process_group)
    vs = [torch.empty_like(v) for _ in range(world)]
    ids = [torch.empty_like(i) for _ in range(world)]
    dist.all_gather(vs, v.contiguous(), group=process_group)
    dist.all_gather(ids, i.contiguous(), group=process_group)
    v, i = torch.cat(vs, dim=1), torch.cat(ids, dim=1)
    i, order = torch.sort(i, dim=1)  # then a stable sort by score: (score desc, index asc)
    v = v.gather(1, order)
    v, order = torch.sort(v, dim=1, descending=True, stable=True)
    i = i.gather(1, order)
    return v[:, :k].to(queries.dtype).contiguous(), i[:, :k].contiguous()


def is_sharded(group: object | None) -> bool:
    """Whether ``group`` shards anything: a process group of more than one rank."""
    return group is not None and dist.get_world_size(group) > 1


def gather_rows(shard: torch.Tensor, group: object) -> torch.Tensor | None:
    """The ranks' row shards of one tensor, concatenated in rank order on the group's rank 0
    (``None`` on the others); shards may differ in rows (padded for the collective).

    Args:
        shard: ``(I_r, ...)`` this rank's rows (same trailing shape and dtype on every rank).
        group: the process group.
    """
    world = dist.get_world_size(group)
    count = torch.tensor([shard.shape[0]], dtype=torch.int64, device=shard.device)
    counts = [torch.empty_like(count) for _ in range(world)]
    dist.all_gather(counts, count, group=group)
    counts = [int(c) for c in counts]
    top = max(counts)
    padded = shard.detach().new_zeros((top, *shard.shape[1:]))
    padded[: shard.shape[0]] = shard.detach()
    root = dist.get_rank(group) == 0
    parts = [torch.empty_like(padded) for _ in range(world)] if root else None
    dist.gather(padded, parts, group=group, group_dst=0)
    if not root:
        return None
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])
