"""Tests for glta_gllm.metrics: vectorised metrics against a plain-Python reference."""

from __future__ import annotations

import math

import pytest
import torch

from glta_gllm import ranking_metrics


def _reference(ranked: list[list[int]], relevant: list[set[int]], ks) -> dict[str, float]:
    out: dict[str, float] = {}
    users = [u for u in range(len(ranked)) if relevant[u]]
    for k in ks:
        p = r = n = hr = 0.0
        for u in users:
            top = ranked[u][:k]
            hits = [1.0 if i in relevant[u] else 0.0 for i in top]
            p += sum(hits) / k
            r += sum(hits) / len(relevant[u])
            dcg = sum(h / math.log2(j + 2) for j, h in enumerate(hits))
            idcg = sum(1.0 / math.log2(j + 2) for j in range(min(len(relevant[u]), k)))
            n += dcg / idcg
            hr += 1.0 if sum(hits) > 0 else 0.0
        m = max(len(users), 1)
        out[f"precision@{k}"] = p / m
        out[f"recall@{k}"] = r / m
        out[f"ndcg@{k}"] = n / m
        out[f"hit_rate@{k}"] = hr / m
    out["users"] = len(users)
    return out


def _csr(sets: list[set[int]], items: int) -> torch.Tensor:
    dense = torch.zeros(len(sets), items)
    for u, s in enumerate(sets):
        for i in s:
            dense[u, i] = 1.0
    return dense.to_sparse_csr()


@pytest.mark.parametrize("seed", range(6))
def test_matches_plain_python(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    users, items, kmax = 40, 60, 20
    ranked = torch.stack([torch.randperm(items, generator=g)[:kmax] for _ in range(users)])
    relevant = []
    for u in range(users):
        n = int(torch.randint(0, 15, (1,), generator=g)) if u % 7 else 0
        relevant.append(set(torch.randperm(items, generator=g)[:n].tolist()))
    got = ranking_metrics(ranked, _csr(relevant, items), ks=(1, 5, 10, 20))
    want = _reference(ranked.tolist(), relevant, (1, 5, 10, 20))
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_hand_computed_values() -> None:
    # user 0: relevant {1, 4}; ranked 1 (hit), 2, 4 (hit); user 1: no relevant -> skipped.
    ranked = torch.tensor([[1, 2, 4], [0, 1, 2]])
    relevant = _csr([{1, 4}, set()], 5)
    m = ranking_metrics(ranked, relevant, ks=(1, 3))
    assert m["users"] == 1
    assert m["precision@1"] == pytest.approx(1.0)
    assert m["precision@3"] == pytest.approx(2 / 3)
    assert m["recall@1"] == pytest.approx(0.5)
    assert m["recall@3"] == pytest.approx(1.0)
    assert m["hit_rate@1"] == pytest.approx(1.0)
    # IDCG@1 uses min(|R|, 1) = 1 ideal hit.
    assert m["ndcg@1"] == pytest.approx(1.0)
    idcg3 = 1 + 1 / math.log2(3)
    assert m["ndcg@3"] == pytest.approx((1 + 1 / math.log2(4)) / idcg3)


def test_no_relevant_users_gives_zero_and_count() -> None:
    m = ranking_metrics(torch.tensor([[0, 1]]), _csr([set()], 3), ks=(2,))
    assert m == {"precision@2": 0.0, "recall@2": 0.0, "ndcg@2": 0.0, "hit_rate@2": 0.0, "users": 0}


def test_coo_input_is_accepted() -> None:
    ranked = torch.tensor([[2, 0]])
    dense = torch.tensor([[1.0, 0.0, 1.0]])
    assert ranking_metrics(ranked, dense.to_sparse(), ks=(2,)) == ranking_metrics(
        ranked, dense.to_sparse_csr(), ks=(2,)
    )


@pytest.mark.parametrize(
    ("ranked", "relevant", "ks", "match"),
    [
        (torch.tensor([[0, 1]]), torch.tensor([[1.0, 0.0]]), (1,), "sparse CSR"),
        (torch.tensor([[0, 1]]), torch.eye(2).to_sparse_csr(), (1,), "rows"),
        (torch.tensor([[0, 1]]), torch.ones(1, 2).to_sparse_csr(), (3,), "exceeds"),
        (torch.tensor([[0, 5]]), torch.ones(1, 2).to_sparse_csr(), (2,), r"outside \[0, 2\)"),
        (torch.tensor([0, 1]), torch.ones(1, 2).to_sparse_csr(), (1,), "2-D"),
        (torch.tensor([[0.0, 1.0]]), torch.ones(1, 2).to_sparse_csr(), (1,), "dtype"),
        (torch.tensor([[0, 1]]), torch.ones(1, 2).to_sparse_csr(), (0,), "positive"),
    ],
)
def test_bad_input(ranked, relevant, ks, match) -> None:
    with pytest.raises(ValueError, match=match):
        ranking_metrics(ranked, relevant, ks=ks)
