"""benchmarks/align/item_text_probe.py: the LLM's reading of the items as a content recommender."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture
def probe(align_script):
    return align_script("item_text_probe")


def test_content_scores_rank_the_items_like_the_users_history(probe):
    from glta_graph.data import csr_from_pairs

    # items 0-2 point one way, 3-5 the other; user 0 had item 0, user 1 item 4, user 2 none
    f = torch.tensor([[1.0, 0.1], [1.0, 0.0], [0.9, 0.2], [0.0, 1.0], [0.1, 1.0], [0.2, 0.9]])
    train = csr_from_pairs(np.array([0, 1]), np.array([0, 4]), 3, 6)
    scores = probe.content_scores(f, train, np.array([0, 1, 2]))
    assert scores.shape == (3, 6)
    assert set(scores[0].topk(3).indices.tolist()) == {0, 1, 2}
    assert set(scores[1].topk(3).indices.tolist()) == {3, 4, 5}
    assert torch.equal(scores[2], torch.zeros(6))  # no history: no preference
    assert scores[0, 0].item() == pytest.approx(1.0, abs=1e-6)  # cosine of an item with itself


def test_tfidf_weighs_rare_tokens_up(probe):
    rows = probe.tfidf([[5, 7, 7], [5, 9], [5], []])
    assert rows.shape == (4, 3)  # columns: tokens 5, 7, 9 (the ones that occur)
    assert rows[0, 0].item() == pytest.approx(np.log(4 / 3))  # in 3 of 4 items
    assert rows[0, 1].item() == pytest.approx(2 * np.log(4))  # twice, in 1 of 4
    assert rows[0, 2] == 0 and rows[3].abs().sum() == 0


def test_summary_means_over_runs(probe):
    def entry(alone, fused, lgcn, w):
        split = {"text_alone": {"ndcg@10": alone}, "fused": {"ndcg@10": fused},
                 "lightgcn_alone": {"ndcg@10": lgcn}}
        return {"valid": split, "test": split, "chosen_w": w}

    doc = {"runs": [{"features": {"tfidf": entry(0.1, 0.30, 0.25, 0.9)}},
                    {"features": {"tfidf": entry(0.3, 0.20, 0.20, 1.0)}}]}
    got = probe.summarise(doc)["tfidf"]
    assert got["valid_alone"] == pytest.approx(0.2)
    assert got["test_fused_minus_lightgcn"] == pytest.approx(0.025)
    assert got["fused_below_1"] == 1
