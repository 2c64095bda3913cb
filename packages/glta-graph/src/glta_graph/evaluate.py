"""Full-ranking evaluation and recommendation from user/item embeddings.

Scores are dot products ``E_u E_i^T`` ranked over the whole catalogue with
``glta_gllm.topk_excluding`` (streamed over item chunks inside glta-gllm, and over user chunks
here), so no ``users x items`` score matrix is ever held. Items a user already interacted with
are excluded: the training items when evaluating on ``valid``, training and validation items
when evaluating on ``test`` (the protocol of the LightGCN paper).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import glta_gllm
import numpy as np
import torch
from glta_gllm.checkpoint import atomic_write_json

from glta_graph.data import SPLITS, Interactions, csr_from_pairs

__all__ = [
    "METRICS_NAME",
    "evaluate_embeddings",
    "exclusion_matrix",
    "recommend_embeddings",
    "select_rows",
    "update_metrics",
]

METRICS_NAME = "metrics.json"
_EXCLUDE_FOR = {"train": (), "valid": ("train",), "test": ("train", "valid")}


def select_rows(csr: torch.Tensor, rows: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Return the rows ``rows`` of a sparse CSR matrix as a new ``(len(rows), C)`` CSR matrix.

    Args:
        csr: ``(R, C)`` sparse CSR tensor (on the CPU).
        rows: ``(n,)`` int row indices (repeats allowed, any order).
    """
    rows_np = torch.as_tensor(rows).cpu().numpy().astype(np.int64)
    crow = csr.crow_indices().cpu().numpy()
    cols = csr.col_indices().cpu().numpy()
    vals = csr.values().cpu()
    starts, ends = crow[rows_np], crow[rows_np + 1]
    lengths = ends - starts
    new_crow = np.zeros(len(rows_np) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_crow[1:])
    # gather positions starts[r] .. ends[r]-1 for every selected row, vectorised
    offsets = np.arange(new_crow[-1], dtype=np.int64) - np.repeat(new_crow[:-1], lengths)
    pos = np.repeat(starts, lengths) + offsets
    return torch.sparse_csr_tensor(
        torch.from_numpy(new_crow),
        torch.from_numpy(cols[pos].astype(np.int64)),
        vals[torch.from_numpy(pos)],
        size=(len(rows_np), int(csr.shape[1])),
        check_invariants=False,
    )


def exclusion_matrix(data: Interactions, splits: Sequence[str]) -> torch.Tensor:
    """Binary ``(U, I)`` CSR union of the given splits (an empty matrix for no split)."""
    us, its = [], []
    for split in splits:
        u, i = data.pairs(split)
        us.append(u)
        its.append(i)
    u = np.concatenate(us) if us else np.zeros(0, dtype=np.int64)
    i = np.concatenate(its) if its else np.zeros(0, dtype=np.int64)
    return csr_from_pairs(u, i, data.num_users, data.num_items)


def _check_inputs(user_emb: torch.Tensor, item_emb: torch.Tensor, data: Interactions) -> None:
    if user_emb.dim() != 2 or item_emb.dim() != 2 or user_emb.shape[1] != item_emb.shape[1]:
        raise ValueError(
            f"user_emb {tuple(user_emb.shape)} and item_emb {tuple(item_emb.shape)} must be "
            "(U, d) and (I, d) with the same d"
        )
    if user_emb.shape[0] != data.num_users or item_emb.shape[0] != data.num_items:
        raise ValueError(
            f"embeddings are for {user_emb.shape[0]} users x {item_emb.shape[0]} items, dataset "
            f"{data.name!r} has {data.num_users} users x {data.num_items} items"
        )


def _check_k(k: int, num_items: int) -> None:
    if int(k) != k or k < 1:
        raise ValueError(f"K must be a positive integer, got {k!r}")
    if k > num_items:
        raise ValueError(f"K={k} is larger than the catalogue of {num_items} items")


@torch.no_grad()
def evaluate_embeddings(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    data: Interactions,
    split: str = "test",
    ks: Sequence[int] = (5, 10, 20),
    *,
    user_chunk: int = 2048,
) -> dict[str, float]:
    """Full-ranking Precision/Recall/NDCG/HitRate@K of dot-product scores on one split.

    Args:
        user_emb: ``(U, d)`` user embeddings.
        item_emb: ``(I, d)`` item embeddings (same device as ``user_emb``).
        data: the dataset the embeddings belong to.
        split: ``"valid"`` (train items excluded) or ``"test"`` (train and valid excluded);
            ``"train"`` ranks without exclusions.
        ks: cut-offs; each must be at most the number of items.
        user_chunk: users ranked per call of ``topk_excluding`` (bounds memory).

    Returns:
        ``{"precision@K", "recall@K", "ndcg@K", "hit_rate@K" for each K, "users"}``, averaged
        over the users with at least one item in ``split`` (``users`` counts them; all metrics
        are 0.0 when there is none).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    ks = tuple(int(k) for k in ks)
    if not ks:
        raise ValueError("ks must name at least one cut-off K")
    for k in ks:
        _check_k(k, data.num_items)
    _check_inputs(user_emb, item_emb, data)
    if user_chunk < 1:
        raise ValueError(f"user_chunk must be >= 1, got {user_chunk}")
    relevant = data.split(split)
    crow = relevant.crow_indices().numpy()
    users = np.flatnonzero(np.diff(crow) > 0)
    exclude = exclusion_matrix(data, _EXCLUDE_FOR[split])
    kmax = max(ks)
    sums: dict[str, float] = {}
    counted = 0
    for start in range(0, len(users), user_chunk):
        chunk = users[start : start + user_chunk]
        idx = torch.from_numpy(chunk).to(user_emb.device)
        ex = select_rows(exclude, chunk).to(user_emb.device)
        _, ranked = glta_gllm.topk_excluding(user_emb[idx], item_emb, kmax, exclude=ex)
        part = glta_gllm.ranking_metrics(ranked.cpu(), select_rows(relevant, chunk), ks=ks)
        n = int(part["users"])
        counted += n
        for name, value in part.items():
            if name != "users":
                sums[name] = sums.get(name, 0.0) + float(value) * n
    if not sums:  # no user has an item in this split
        sums = {f"{m}@{k}": 0.0 for k in ks for m in ("precision", "recall", "ndcg", "hit_rate")}
    out = {name: (total / counted if counted else 0.0) for name, total in sums.items()}
    out["users"] = float(counted)
    return out


@torch.no_grad()
def recommend_embeddings(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    data: Interactions,
    users: Sequence[int] | torch.Tensor | np.ndarray,
    k: int,
    *,
    exclude: Sequence[str] = ("train", "valid"),
    user_chunk: int = 2048,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` items per user by dot-product score, skipping already-seen items.

    Args:
        user_emb: ``(U, d)`` user embeddings.
        item_emb: ``(I, d)`` item embeddings.
        data: the dataset the embeddings belong to.
        users: ``(n,)`` internal user indices.
        k: list length, at most the number of items.
        exclude: splits whose items are never recommended (default train and valid, the
            same exclusion as test evaluation).
        user_chunk: users ranked per call of ``topk_excluding``.

    Returns:
        ``(scores (n, k) float32, items (n, k) int64)`` on the CPU, best first.
    """
    _check_k(k, data.num_items)
    _check_inputs(user_emb, item_emb, data)
    for split in exclude:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} in exclude; expected {', '.join(SPLITS)}")
    users_np = torch.as_tensor(np.asarray(users), dtype=torch.int64).numpy()
    if users_np.ndim != 1:
        raise ValueError(f"users must be a 1-D list of user indices, got shape {users_np.shape}")
    bad = users_np[(users_np < 0) | (users_np >= data.num_users)]
    if bad.size:
        raise ValueError(f"user index {int(bad[0])} is outside 0..{data.num_users - 1}")
    ex_all = exclusion_matrix(data, tuple(exclude))
    scores, items = [], []
    for start in range(0, len(users_np), user_chunk):
        chunk = users_np[start : start + user_chunk]
        idx = torch.from_numpy(chunk).to(user_emb.device)
        ex = select_rows(ex_all, chunk).to(user_emb.device)
        s, i = glta_gllm.topk_excluding(user_emb[idx], item_emb, int(k), exclude=ex)
        scores.append(s.float().cpu())
        items.append(i.cpu())
    if not scores:
        return torch.zeros(0, int(k)), torch.zeros(0, int(k), dtype=torch.int64)
    return torch.cat(scores), torch.cat(items)


def update_metrics(
    run_dir: str | os.PathLike[str],
    model: str,
    split: str,
    metrics: dict[str, float],
) -> Path:
    """Merge ``metrics`` into ``RUN/metrics.json`` as ``{model: {split: {name: value}}}``.

    Existing entries for other models/splits are kept; the file is rewritten atomically.

    Args:
        run_dir: the run directory.
        model: e.g. ``"lightgcn"`` or ``"glta"``.
        split: e.g. ``"valid"`` or ``"test"``.
        metrics: metric name -> number.

    Returns:
        The path of ``metrics.json``.
    """
    path = Path(run_dir) / METRICS_NAME
    current: dict = {}
    if path.is_file():
        try:
            current = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc}); fix or remove it") from exc
        if not isinstance(current, dict):
            raise ValueError(f"{path}: expected a JSON object at the top level")
    entry = current.setdefault(str(model), {})
    entry.setdefault(str(split), {}).update({str(k): float(v) for k, v in metrics.items()})
    return atomic_write_json(path, current)
