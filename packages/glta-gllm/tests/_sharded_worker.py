"""Worker for test_sharded.py: runs the item-sharded kernels and heads on 2 gloo ranks (CPU).

``python _sharded_worker.py OUT`` spawns the ranks; each writes ``OUT/rank{r}.pt`` with its
inputs and outputs per case, which the test compares against the unsharded kernels run in
the test process. ``OUT/gllm_1rank`` and ``OUT/projected_1rank`` (written by the test) are
loaded sharded; the ranks write ``OUT/gllm_2ranks`` and ``OUT/projected_2ranks``.
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from glta_gllm import GLLMHead, ProjectedItemHead, linear_cross_entropy, topk_excluding
from glta_gllm.functional import shard_range

WORLD = 2
# (name, items, rows, hidden, chunk_size, store_logits, bias, ignored rows)
LCE_SHAPES = [
    ("uneven7", 7, 5, 4, 2, None, True, (1, 3)),
    ("chunks_recompute", 300, 24, 16, 37, False, True, (0,)),
    ("chunks_stored", 300, 24, 16, 37, True, False, ()),
    ("rows_gt_h", 301, 40, 16, None, None, True, (5, 6)),
    ("all_ignored", 9, 3, 4, None, None, True, (0, 1, 2)),
]
DTYPES = (torch.float32, torch.float64)
REDUCTIONS = ("mean", "sum", "none")


def lce_inputs(name: str, dtype: torch.dtype, reduction: str) -> dict[str, object]:
    """The replicated inputs of one cross-entropy case (the same on every rank and in the test)."""
    spec = next(s for s in LCE_SHAPES if s[0] == name)
    _, items, rows, hid, chunk, store, bias, ignored = spec
    g = torch.Generator().manual_seed(zlib.crc32(f"{name}/{dtype}/{reduction}".encode()))
    hidden = torch.randn(rows, hid, generator=g, dtype=dtype)
    weight = torch.randn(items, hid, generator=g, dtype=dtype)
    b = torch.randn(items, generator=g, dtype=dtype) if bias else None
    targets = torch.randint(0, items, (rows,), generator=g)
    targets[0] = items - 1  # a target on the last rank and one on the first
    if rows > 1:
        targets[-1] = 0
    targets[list(ignored)] = -100
    grad_out = torch.randn(rows, generator=g, dtype=dtype) if reduction == "none" else None
    return {
        "hidden": hidden,
        "weight": weight,
        "bias": b,
        "targets": targets,
        "grad_out": grad_out,
        "chunk": chunk,
        "store": store,
    }


def topk_inputs(name: str) -> dict[str, object]:
    """Replicated inputs of one top-k case: small integer scores, so ties are many."""
    g = torch.Generator().manual_seed(7 if name == "small" else 11)
    items, users, hid, k, chunk = (7, 4, 3, 5, None) if name == "small" else (300, 10, 4, 20, 16)
    weight = torch.randint(-2, 3, (items, hid), generator=g).float()
    weight[4] = weight[3]  # a tie across the 7-item shard boundary (rank 0: 0-3, rank 1: 4-6)
    queries = torch.randint(-2, 3, (users, hid), generator=g).float()
    bias = torch.randint(-1, 2, (items,), generator=g).float() if name != "small" else None
    mask = torch.rand(users, items, generator=g) < 0.3
    mask[:, :] &= torch.arange(items) < items - k  # leave k items for every user
    mask[0, 3] = True  # excluded on rank 0, its twin 4 on rank 1 is not
    return {
        "queries": queries,
        "weight": weight,
        "bias": bias,
        "mask": mask,
        "k": k,
        "chunk": chunk,
    }


def _run(rank: int, out: str) -> None:
    torch.set_num_threads(1)
    out_dir = Path(out)
    dist.init_process_group(
        "gloo", init_method=f"file://{out_dir / 'rendezvous'}", rank=rank, world_size=WORLD
    )
    group = dist.group.WORLD
    singles = [dist.new_group([r]) for r in range(WORLD)]
    results: dict[str, object] = {}
    for name, *_ in LCE_SHAPES:
        for dtype in DTYPES:
            for reduction in REDUCTIONS:
                x = lce_inputs(name, dtype, reduction)
                a, e = shard_range(x["weight"].shape[0], group)
                h = x["hidden"].clone().requires_grad_()
                w = x["weight"][a:e].clone().requires_grad_()
                b = None if x["bias"] is None else x["bias"][a:e].clone().requires_grad_()
                loss = linear_cross_entropy(
                    h, w, x["targets"], b, reduction=reduction, chunk_size=x["chunk"],
                    store_logits=x["store"], process_group=group,
                )  # fmt: skip
                if loss.requires_grad:
                    loss.backward(x["grad_out"])
                results[f"lce/{name}/{dtype}/{reduction}"] = {
                    "range": (a, e),
                    "loss": loss.detach(),
                    "gh": h.grad,
                    "gw": w.grad,
                    "gb": None if b is None else b.grad,
                }
    # No gradient wanted (inference) and the hidden alone needing one.
    x = lce_inputs("chunks_recompute", torch.float64, "mean")
    a, e = shard_range(300, group)
    with torch.no_grad():
        results["lce/no_grad"] = linear_cross_entropy(
            x["hidden"], x["weight"][a:e], x["targets"], x["bias"][a:e], process_group=group
        )
    h = x["hidden"].clone().requires_grad_()
    linear_cross_entropy(h, x["weight"][a:e], x["targets"], process_group=group).backward()
    results["lce/hidden_only"] = h.grad
    # A group of one rank: the unsharded path.
    h = x["hidden"].clone().requires_grad_()
    w = x["weight"].clone().requires_grad_()
    loss = linear_cross_entropy(h, w, x["targets"], process_group=singles[rank])
    loss.backward()
    h0 = x["hidden"].clone().requires_grad_()
    w0 = x["weight"].clone().requires_grad_()
    loss0 = linear_cross_entropy(h0, w0, x["targets"])
    loss0.backward()
    head = GLLMHead(16, 300, process_group=singles[rank])
    results["lce/world1"] = {
        "group": (loss, h.grad, w.grad),
        "plain": (loss0, h0.grad, w0.grad),
        "head_rows": (head.item_start, head.item_stop, head.weight.shape[0]),
    }

    for name in ("small", "ties"):
        x = topk_inputs(name)
        a, e = shard_range(x["weight"].shape[0], group)
        bias = None if x["bias"] is None else x["bias"][a:e]
        results[f"topk/{name}"] = topk_excluding(
            x["queries"], x["weight"][a:e], x["k"], bias=bias,
            exclude=x["mask"].float().to_sparse_csr(), chunk_size=x["chunk"], process_group=group,
        )  # fmt: skip
        results[f"topk/{name}/noexclude"] = topk_excluding(
            x["queries"], x["weight"][a:e], x["k"], bias=bias, process_group=group
        )

    # Heads: load the 1-rank checkpoints sharded, train one step, save from 2 ranks.
    torch.manual_seed(0)
    head = GLLMHead.from_pretrained(out_dir / "gllm_1rank", process_group=group)
    x = lce_inputs("uneven7", torch.float32, "mean")
    h = x["hidden"].clone().requires_grad_()
    head.loss(h, x["targets"]).backward()
    scores, items = head.recommend(x["hidden"], 3)
    results["head/gllm"] = {
        "range": (head.item_start, head.item_stop),
        "weight": head.weight.detach().clone(),
        "gw": head.weight.grad,
        "gb": head.bias.grad,
        "gh": h.grad,
        "recommend": (scores, items),
        "repr": repr(head),
    }
    with torch.no_grad():
        head.weight.mul_(2)
    head.save_pretrained(out_dir / "gllm_2ranks", dataset_fingerprint="fp")
    proj = ProjectedItemHead.from_pretrained(out_dir / "projected_1rank", process_group=group)
    h = torch.randn(6, proj.hidden_size, generator=torch.Generator().manual_seed(3))
    h.requires_grad_()
    t = torch.tensor([0, 6, 3, 4, -100, 1])
    proj.loss(h, t).backward()
    results["head/projected"] = {
        "range": (proj.item_start, proj.item_stop),
        "num_items": proj.num_items,
        "gp": proj.projector.weight.grad,
        "gh": h.grad,
        "recommend": proj.recommend(h.detach(), 4),
    }
    torch.manual_seed(1)  # the projector is replicated: the same draw on every rank
    fresh = ProjectedItemHead(
        torch.arange(14.0).reshape(7, 2), nn.Linear(2, 3), process_group=group
    )
    fresh.save_pretrained(out_dir / "projected_2ranks")
    results["head/projected_fresh"] = fresh.projector.state_dict()
    torch.save(results, out_dir / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(_run, args=(sys.argv[1],), nprocs=WORLD)
