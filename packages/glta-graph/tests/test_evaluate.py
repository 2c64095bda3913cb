import json
import math

import numpy as np
import pytest
import torch

from glta_graph.data import Interactions, csr_from_pairs, random_interactions
from glta_graph.evaluate import (
    evaluate_embeddings,
    exclusion_matrix,
    recommend_embeddings,
    select_rows,
    update_metrics,
)


def _random_data(users=40, items=50, seed=0) -> Interactions:
    return random_interactions(users, items, seed=seed)  # some users have nothing at all


def _brute_force(user_emb, item_emb, data, split, ks):
    """Dense reference: full score matrix, python loops, the textbook formulas."""
    scores = (user_emb.double() @ item_emb.double().T).numpy()
    excluded = {"valid": ["train"], "test": ["train", "valid"], "train": []}[split]
    for s in excluded:
        scores[data.split(s).to_dense().numpy() > 0] = -np.inf
    rel = data.split(split).to_dense().numpy() > 0
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("precision", "recall", "ndcg", "hit_rate")}
    n_users = 0
    for u in range(data.num_users):
        relevant = set(np.flatnonzero(rel[u]).tolist())
        if not relevant:
            continue
        n_users += 1
        order = sorted(range(data.num_items), key=lambda i, u=u: (-scores[u, i], i))
        for k in ks:
            top = order[:k]
            hits = [1.0 if i in relevant else 0.0 for i in top]
            dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
            idcg = sum(1 / math.log2(r + 2) for r in range(min(len(relevant), k)))
            sums[f"precision@{k}"] += sum(hits) / k
            sums[f"recall@{k}"] += sum(hits) / len(relevant)
            sums[f"ndcg@{k}"] += dcg / idcg
            sums[f"hit_rate@{k}"] += float(sum(hits) > 0)
    return {k: v / n_users for k, v in sums.items()}, n_users


@pytest.mark.parametrize("split", ["valid", "test"])
@pytest.mark.parametrize("user_chunk", [7, 2048])
def test_evaluate_matches_brute_force(split, user_chunk):
    data = _random_data()
    g = torch.Generator().manual_seed(1)
    ue, ie = torch.randn(40, 8, generator=g), torch.randn(50, 8, generator=g)
    ks = (1, 5, 10)
    got = evaluate_embeddings(ue, ie, data, split, ks, user_chunk=user_chunk)
    want, n_users = _brute_force(ue, ie, data, split, ks)
    assert got["users"] == n_users
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name


def test_evaluate_errors():
    data = _random_data()
    ue, ie = torch.zeros(40, 4), torch.zeros(50, 4)
    with pytest.raises(ValueError, match="K=51 is larger than the catalogue of 50 items"):
        evaluate_embeddings(ue, ie, data, "test", ks=(5, 51))
    with pytest.raises(ValueError, match="unknown split"):
        evaluate_embeddings(ue, ie, data, "dev")
    with pytest.raises(ValueError, match="embeddings are for 39 users x 50 items"):
        evaluate_embeddings(ue[:39], ie, data)
    with pytest.raises(ValueError, match="same d"):
        evaluate_embeddings(ue, ie[:, :3], data)


def test_evaluate_empty_split_gives_zero_users():
    data = _random_data()
    data.valid = csr_from_pairs([], [], 40, 50)
    out = evaluate_embeddings(torch.randn(40, 4), torch.randn(50, 4), data, "valid", ks=(5,))
    assert out == {"precision@5": 0.0, "recall@5": 0.0, "ndcg@5": 0.0, "hit_rate@5": 0.0,
                   "users": 0.0}


def test_recommend_matches_dense_ranking_and_skips_seen_items():
    data = _random_data()
    g = torch.Generator().manual_seed(2)
    ue, ie = torch.randn(40, 8, generator=g), torch.randn(50, 8, generator=g)
    users = [3, 0, 39, 3]
    scores, items = recommend_embeddings(ue, ie, data, users, k=6, user_chunk=3)
    assert scores.shape == items.shape == (4, 6) and items.dtype == torch.int64
    seen = exclusion_matrix(data, ("train", "valid")).to_dense() > 0
    dense = ue @ ie.T
    for row, u in enumerate(users):
        s = dense[u].clone()
        s[seen[u]] = -math.inf
        want = sorted(range(50), key=lambda i, s=s: (-float(s[i]), i))[:6]
        assert items[row].tolist() == want
        torch.testing.assert_close(scores[row], dense[u, want])
    # excluding nothing may return training items
    _, all_items = recommend_embeddings(ue, ie, data, [3], k=50, exclude=())
    assert sorted(all_items[0].tolist()) == list(range(50))
    with pytest.raises(ValueError, match=r"user index 40 is outside 0\.\.39"):
        recommend_embeddings(ue, ie, data, [40], k=5)
    with pytest.raises(ValueError, match="K=60 is larger than the catalogue of 50 items"):
        recommend_embeddings(ue, ie, data, [1], k=60)


def test_select_rows_and_exclusion_matrix():
    m = csr_from_pairs([0, 0, 2, 3], [1, 4, 0, 2], 4, 5)
    sub = select_rows(m, [3, 1, 0, 0])
    assert torch.equal(sub.to_dense(), m.to_dense()[[3, 1, 0, 0]])
    data = _random_data()
    union = exclusion_matrix(data, ("train", "valid")).to_dense()
    assert torch.equal(union, ((data.train.to_dense() + data.valid.to_dense()) > 0).float())
    assert exclusion_matrix(data, ())._nnz() == 0


def test_update_metrics_merges_atomically(tmp_path):
    path = update_metrics(tmp_path, "lightgcn", "test", {"recall@20": 0.5, "users": 3})
    update_metrics(tmp_path, "lightgcn", "valid", {"recall@20": 0.4})
    update_metrics(tmp_path, "glta", "test", {"recall@20": 0.6})
    update_metrics(tmp_path, "lightgcn", "test", {"ndcg@20": 0.1})
    got = json.loads(path.read_text())
    assert got == {"glta": {"test": {"recall@20": 0.6}},
                   "lightgcn": {"test": {"recall@20": 0.5, "users": 3.0, "ndcg@20": 0.1},
                                "valid": {"recall@20": 0.4}}}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp files left
    path.write_text("{broken")
    with pytest.raises(ValueError, match=r"metrics\.json: not valid JSON"):
        update_metrics(tmp_path, "lightgcn", "test", {"recall@20": 0.5})
