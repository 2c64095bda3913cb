"""Per-bucket metrics recombine to the overall metrics."""

import numpy as np
import pytest
import torch
from glta_gllm import ranking_metrics

from glta_graph.buckets import (
    activity_groups,
    hit_matrix,
    metrics_by_activity,
    metrics_by_popularity,
)
from glta_graph.data import Interactions, random_interactions
from glta_graph.evaluate import recommend_embeddings, select_rows


def _data(users=60, items=80, seed=0) -> Interactions:
    # a long tail of rarely seen items; every user has a train and a test item
    return random_interactions(users, items, lengths=(3, 30), split_p=(0.7, 0.1, 0.2),
                               skew=1.2, anchor=True, seed=seed)


@pytest.fixture
def ranked_case():
    data = _data()
    g = torch.Generator().manual_seed(0)
    users = np.flatnonzero(np.diff(data.test.crow_indices().numpy()) > 0)
    _, ranked = recommend_embeddings(torch.randn(60, 8, generator=g),
                                     torch.randn(80, 8, generator=g), data, users, 20)
    return data, users, ranked, select_rows(data.test, users)


def test_hit_matrix_matches_a_python_loop(ranked_case):
    data, users, ranked, relevant = ranked_case
    hits = hit_matrix(ranked, relevant)
    for row, u in enumerate(users):
        rel = set(data.user_items("test", int(u)).tolist())
        assert hits[row].tolist() == [int(i) in rel for i in ranked[row]]


def test_activity_groups_are_equal_sized_and_ordered(ranked_case):
    data, users, _, _ = ranked_case
    group, labels = activity_groups(data, users, 5)
    assert len(labels) == 5 and np.bincount(group).max() - np.bincount(group).min() <= 1
    counts = np.diff(data.train.crow_indices().numpy())[users]
    for g in range(4):
        assert counts[group == g].max() <= counts[group == g + 1].min()
    assert labels[0].startswith("Q1 (") and "train items" in labels[0]


def test_activity_metrics_recombine_user_weighted(ranked_case):
    data, users, ranked, relevant = ranked_case
    overall = ranking_metrics(ranked, relevant, ks=(5, 10, 20))
    parts = metrics_by_activity(ranked, relevant, users, data, ks=(5, 10, 20))
    assert sum(p["users"] for p in parts.values()) == overall["users"]
    for key in ("precision@10", "recall@20", "ndcg@5", "hit_rate@10"):
        total = sum(p[key] * p["users"] for p in parts.values()) / overall["users"]
        assert total == pytest.approx(overall[key], abs=1e-12), key
    assert len({round(p["ndcg@10"], 9) for p in parts.values()}) > 1  # not all the same


def test_popularity_metrics_are_hit_additive(ranked_case):
    data, _, ranked, relevant = ranked_case
    overall = ranking_metrics(ranked, relevant, ks=(5, 10, 20))
    tail, head = metrics_by_popularity(ranked, relevant, data, ks=(5, 10, 20),
                                       threshold=5).values()
    for key in ("precision@5", "precision@20", "recall@10", "ndcg@10", "ndcg@20"):
        assert tail[key] + head[key] == pytest.approx(overall[key], abs=1e-12), key
    assert tail["share@10"] + head["share@10"] == pytest.approx(1.0)
    assert tail["relevant_share"] + head["relevant_share"] == pytest.approx(1.0)
    assert tail["items"] + head["items"] == data.num_items
    assert 0 < tail["items"] < data.num_items and tail["share@20"] > 0
    assert max(tail["hit_rate@20"], head["hit_rate@20"]) <= overall["hit_rate@20"] + 1e-12
