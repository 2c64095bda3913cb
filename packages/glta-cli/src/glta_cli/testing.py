"""Plain-Python reference metrics, used to check ``recs.csv`` against ``metrics.json``."""

from __future__ import annotations

import csv
import math
import os
from collections import defaultdict
from collections.abc import Sequence

__all__ = ["metrics_from_recs"]


def metrics_from_recs(
    recs_path: str | os.PathLike[str],
    test_path: str | os.PathLike[str],
    ks: Sequence[int],
) -> tuple[dict[str, float], int]:
    """P/R/NDCG/HR@K recomputed with plain Python from two CSV files.

    Args:
        recs_path: ``user,item,rank,score`` rows (``glta recommend``), original ids.
        test_path: ``user,item`` rows of the relevant split (``glta data export``).
        ks: cut-offs; each user's list must hold at least ``max(ks)`` items.

    Returns:
        ``({"precision@K", "recall@K", "ndcg@K", "hit_rate@K"}, number of users with a
        relevant item)``; binary relevance, IDCG over ``min(|relevant|, K)``.
    """
    ranked: dict[str, list[tuple[int, str]]] = defaultdict(list)
    with open(recs_path, encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            ranked[row["user"]].append((int(row["rank"]), row["item"]))
    relevant: dict[str, set[str]] = defaultdict(set)
    with open(test_path, encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            relevant[row["user"]].add(row["item"])
    out: dict[str, float] = {}
    for k in ks:
        sums: dict[str, float] = defaultdict(float)
        for user, items in relevant.items():
            top = [item for _, item in sorted(ranked[user])][:k]
            hits = [1.0 if item in items else 0.0 for item in top]
            dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
            idcg = sum(1.0 / math.log2(r + 2) for r in range(min(len(items), k)))
            sums["precision"] += sum(hits) / k
            sums["recall"] += sum(hits) / len(items)
            sums["ndcg"] += dcg / idcg
            sums["hit_rate"] += float(any(hits))
        for name, total in sums.items():
            out[f"{name}@{k}"] = total / max(1, len(relevant))
    return out, len(relevant)
