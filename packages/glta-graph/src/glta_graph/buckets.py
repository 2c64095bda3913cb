"""Where a recommender wins or loses: metrics by user activity and by item popularity.

Both views work on ranked lists that were already computed (any model), so they cost no
extra ranking:

- :func:`metrics_by_activity` splits the *users* into quantile groups of their number of
  training interactions (equal-sized groups by rank, lightest users first) and computes the
  usual metrics in each group. Weighted by each group's ``users`` the group metrics average
  back to the overall metrics.
- :func:`metrics_by_popularity` splits the *items* into long-tail items (at most
  ``threshold`` training interactions) and the rest. Each hit of a top-K list belongs to the
  bucket of its item, so precision, recall and NDCG (with the overall IDCG) of the two buckets
  add up to the overall ones. It also reports how often a bucket's items are recommended
  (``share@K``: the fraction of top-K slots they fill) and how much of the split's relevant
  items they are (``relevant_share``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from glta_graph.data import Interactions

__all__ = ["activity_groups", "hit_matrix", "metrics_by_activity", "metrics_by_popularity"]


def hit_matrix(ranked: torch.Tensor, relevant: torch.Tensor) -> np.ndarray:
    """Which ranked items are relevant.

    Args:
        ranked: ``(U, K)`` int64 item indices, best first.
        relevant: ``(U, I)`` sparse CSR; a stored entry marks a relevant item.

    Returns:
        ``(U, K)`` bool array.
    """
    ranked_np = ranked.cpu().numpy().astype(np.int64)
    num_users, num_items = relevant.shape
    if ranked_np.shape[0] != num_users:
        raise ValueError(f"ranked has {ranked_np.shape[0]} rows but relevant has "
                         f"{num_users} users")
    crow = relevant.crow_indices().numpy().astype(np.int64)
    cols = relevant.col_indices().numpy().astype(np.int64)
    rows = np.repeat(np.arange(num_users, dtype=np.int64), np.diff(crow))
    keys = np.sort(rows * num_items + cols)
    query = np.arange(num_users, dtype=np.int64)[:, None] * num_items + ranked_np
    if not keys.size:
        return np.zeros(ranked_np.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    return keys[pos] == query


def activity_groups(data: Interactions, users: np.ndarray, groups: int = 5
                    ) -> tuple[np.ndarray, list[str]]:
    """Assign ``users`` to ``groups`` equal-sized groups by their number of train items.

    Args:
        data: the dataset.
        users: ``(n,)`` internal user indices.
        groups: number of groups (quintiles by default); fewer when there are fewer users.

    Returns:
        ``(group (n,) int64 in [0, groups), labels)`` with labels such as
        ``"Q1 (3-17 train items)"``; group 0 holds the lightest users.
    """
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    counts = np.diff(data.train.crow_indices().numpy())[users]
    n = len(users)
    groups = max(1, min(groups, n))
    order = np.argsort(counts, kind="stable")
    group = np.empty(n, dtype=np.int64)
    group[order] = np.arange(n) * groups // max(n, 1)
    labels = []
    for g in range(groups):
        c = counts[group == g]
        lo, hi = (int(c.min()), int(c.max())) if c.size else (0, 0)
        labels.append(f"Q{g + 1} ({lo}-{hi} train items)")
    return group, labels


def metrics_by_activity(ranked: torch.Tensor, relevant: torch.Tensor, users: np.ndarray,
                        data: Interactions, ks: Sequence[int] = (5, 10, 20),
                        groups: int = 5) -> dict[str, dict[str, float]]:
    """Ranking metrics per user-activity group.

    Args:
        ranked: ``(n, Kmax)`` ranked items of ``users``.
        relevant: ``(n, I)`` CSR relevant items of the same users (each has at least one).
        users: ``(n,)`` internal user indices.
        data: the dataset (train counts).
        ks: cut-offs.
        groups: number of activity groups.

    Returns:
        ``{label: {metric: value, "users": count}}`` in order of activity.
    """
    from glta_gllm import ranking_metrics

    from glta_graph.evaluate import select_rows

    group, labels = activity_groups(data, np.asarray(users), groups)
    out = {}
    for g, label in enumerate(labels):
        rows = np.flatnonzero(group == g)
        if not rows.size:
            continue
        out[label] = ranking_metrics(ranked[torch.as_tensor(rows)],
                                     select_rows(relevant, rows), ks=ks)
    return out


def metrics_by_popularity(ranked: torch.Tensor, relevant: torch.Tensor, data: Interactions,
                          ks: Sequence[int] = (5, 10, 20), threshold: int = 5
                          ) -> dict[str, dict[str, float]]:
    """Hit-additive metrics for long-tail items (<= ``threshold`` train interactions) and
    the rest.

    Args:
        ranked: ``(n, Kmax)`` ranked items, one row per evaluated user.
        relevant: ``(n, I)`` CSR relevant items of those users (each has at least one).
        data: the dataset (item train counts).
        ks: cut-offs.
        threshold: an item with at most this many training interactions is long-tail.

    Returns:
        ``{"tail (<= T train interactions)": {...}, "head (> T)": {...}}``, each with
        ``precision@K``, ``recall@K``, ``ndcg@K`` (these add up over the two buckets to the
        overall metrics), ``hit_rate@K`` (users with a hit in the bucket), ``share@K``
        (fraction of top-K slots filled by the bucket's items), ``relevant_share`` and
        ``items`` (the bucket's catalogue size).
    """
    item_counts = np.bincount(data.train.col_indices().numpy(), minlength=data.num_items)
    tail = item_counts <= threshold
    hits = hit_matrix(ranked, relevant)
    ranked_np = ranked.cpu().numpy()
    n_rel = np.diff(relevant.crow_indices().numpy()).astype(np.float64)
    keep = n_rel > 0
    hits, ranked_np, n_rel = hits[keep], ranked_np[keep], n_rel[keep]
    rel_cols = relevant.col_indices().numpy()
    kmax = ranked_np.shape[1]
    discounts = 1.0 / np.log2(np.arange(2, kmax + 2))
    ideal = np.cumsum(discounts)
    out: dict[str, dict[str, float]] = {}
    for name, mask in ((f"tail (<= {threshold} train interactions)", tail),
                       (f"head (> {threshold})", ~tail)):
        in_bucket = mask[ranked_np]
        h = hits & in_bucket
        values: dict[str, float] = {}
        for k in ks:
            hk = h[:, :k]
            idcg = ideal[np.minimum(n_rel, k).astype(np.int64) - 1]
            values[f"precision@{k}"] = float((hk.sum(1) / k).mean()) if len(hk) else 0.0
            values[f"recall@{k}"] = float((hk.sum(1) / n_rel).mean()) if len(hk) else 0.0
            values[f"ndcg@{k}"] = float(((hk * discounts[:k]).sum(1) / idcg).mean()) \
                if len(hk) else 0.0
            values[f"hit_rate@{k}"] = float(hk.any(1).mean()) if len(hk) else 0.0
            values[f"share@{k}"] = float(in_bucket[:, :k].mean()) if len(hk) else 0.0
        values["relevant_share"] = float(mask[rel_cols].mean()) if rel_cols.size else 0.0
        values["items"] = float(mask.sum())
        values["users"] = float(len(hits))
        out[name] = values
    return out
