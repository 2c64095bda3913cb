"""Test helpers: plain-Python reference metrics (to check ``recs.csv`` against
``metrics.json``), a synthetic ratings CSV and a tiny random LLM saved as a model folder."""

from __future__ import annotations

import csv
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

__all__ = ["metrics_from_recs", "save_tiny_llm", "write_ratings_csv"]


def write_ratings_csv(path: str | os.PathLike[str], users: int = 40, items: int = 30,
                      seed: int = 0) -> Path:
    """A ``user_id,item_id,rating,text`` CSV: users in two communities, each preferring one
    half of the catalogue (10 of its items plus 2 from anywhere).

    Ids are non-contiguous strings (``u<n*7>``, ``i<n*3>``) so tests notice any confusion of
    original ids and internal indices.

    Returns:
        ``path`` (as a Path), with about ``users * 12`` rows.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    lines = ["user_id,item_id,rating,text"]
    half = items // 2
    for u in range(users):
        own = np.arange(half) + (half if u % 2 else 0)
        picks = rng.choice(own, size=10, replace=False).tolist()
        picks += rng.choice(items, size=2, replace=False).tolist()
        for i in sorted(set(picks)):
            lines.append(f"u{u * 7},i{i * 3},{rng.integers(3, 6)},item {i} genre {i // half}")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def save_tiny_llm(folder: str | os.PathLike[str], *, hidden_size: int = 64,
                  num_layers: int = 2, seed: int = 0) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer, saved as a model folder
    (``--llm.model FOLDER`` runs the whole pipeline in seconds).

    Returns:
        ``folder`` (as a Path), holding the model's config and weights and the tokenizer.
    """
    from glta_align.llm import load_tokenizer, tiny_llm

    folder = Path(folder)
    llm = tiny_llm(load_tokenizer(), hidden_size=hidden_size, num_layers=num_layers, seed=seed)
    llm.model.save_pretrained(str(folder))
    llm.tokenizer.save_pretrained(str(folder))
    return folder


def tiny_pipeline_args(csv_path: str | os.PathLike[str], model_dir: str | os.PathLike[str],
                       out: str | os.PathLike[str], *, quiet: bool = True) -> list[str]:
    """``glta pipeline`` options that run the whole pipeline in seconds on
    :func:`write_ratings_csv`'s CSV with :func:`save_tiny_llm`'s model, into ``out``
    (``quiet``: with ``--quiet``; without, the pipeline prints its progress lines).

    Returns:
        The options as a list of strings (append more to override; the last one given wins).
    """
    return [
        "--out", str(out), *(["--quiet"] if quiet else []),
        "--data.source", str(csv_path), "--data.format", "csv",
        "--data.options", '{text_col = "text"}',
        "--llm.model", str(model_dir), "--llm.dtype", "float32",
        "--graph.epochs", "4", "--graph.eval_every", "2", "--graph.dim", "16",
        "--graph.batch_size", "128", "--graph.lr", "0.01",
        "--item_text.epochs", "1", "--item_text.batch_size", "8",
        "--user_item.epochs", "1", "--user_item.batch_size", "8",
        "--user_item.profile_new_tokens", "4", "--user_item.eval_batch_size", "16",
        "--eval.ks", "5,10",
    ]


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
