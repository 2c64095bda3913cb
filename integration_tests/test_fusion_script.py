"""benchmarks/align/fusion.py: score fusion with LightGCN chosen on valid; the LightGCN+ control."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture
def fusion(align_script):
    return align_script("fusion")


def test_standardise_over_the_catalogue_or_the_candidates(fusion):
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 8, generator=g) * 4 + 2
    scores[0, :2] = 50.0  # excluded items far above the rest: they must not set the scale
    whole = fusion.standardise(scores)
    assert torch.allclose(whole.mean(dim=1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(whole.std(dim=1), torch.ones(3), atol=1e-5)
    dense = torch.zeros(3, 8)
    dense[0, :2] = dense[2, 7] = 1
    from glta_graph.data import csr_from_pairs

    rows, cols = dense.nonzero(as_tuple=True)
    exclude = csr_from_pairs(rows.numpy(), cols.numpy(), 3, 8)
    cand = fusion.standardise(scores, exclude)
    for r in range(3):
        kept = cand[r][dense[r] == 0]
        assert kept.mean().abs() < 1e-5 and (kept.std() - 1).abs() < 1e-5
        # a per-row affine map of the kept scores: their order does not change
        assert torch.equal(kept.argsort(), scores[r][dense[r] == 0].argsort())
    assert bool((cand[dense.bool()] == 0).all())


def test_control_fuses_lightgcn_plus_and_w_1_is_lightgcn(fusion, tmp_path, synthetic_csv):
    from glta_gllm import ranking_metrics
    from glta_gllm.checkpoint import save_artifact
    from glta_graph import recommend_embeddings
    from glta_graph.data import load_dataset
    from glta_graph.evaluate import select_rows

    data = load_dataset(synthetic_csv(tmp_path / "r.csv"), format="csv", text_col="text")
    run = tmp_path / "run"
    data.save(run / "dataset")
    g = torch.Generator().manual_seed(0)
    emb = {}
    for where in (run, run / "baselines" / "lightgcn+"):
        emb[where] = (torch.randn(data.num_users, 8, generator=g),
                      torch.randn(data.num_items, 8, generator=g))
        save_artifact(where / "graph", {"user_embedding": emb[where][0],
                                        "item_embedding": emb[where][1]},
                      {"dim": 8}, dataset_fingerprint=data.fingerprint)
    (run / "metrics.json").write_text(json.dumps({"lightgcn": {"valid": {"ndcg@10": 0.1}}}))
    out = tmp_path / "fusion.json"
    for over in ("catalogue", "candidates"):
        assert fusion.main([str(run), "--json", str(out), "--scorer", "lightgcn+",
                            "--over", over]) == 0
    doc = json.loads(out.read_text())
    assert [(r["scorer"], r["over"]) for r in doc["runs"]] == [
        ("lightgcn+", "catalogue"), ("lightgcn+", "candidates")]
    for entry in doc["runs"]:
        assert entry["chosen"]["slots"] == "graph" and entry["chosen"]["w"] in fusion.GRID
        for split, exclude in (("valid", ("train",)), ("test", ("train", "valid"))):
            users = data.users_with(split)
            rel = select_rows(data.split(split), torch.as_tensor(users))
            for key, (ue, ie) in (("lightgcn_alone", emb[run]),
                                  ("glta_scores_alone", emb[run / "baselines" / "lightgcn+"])):
                _, ranked = recommend_embeddings(ue, ie, data, users, 20, exclude=exclude)
                want = ranking_metrics(ranked, rel, ks=fusion.KS)["ndcg@10"]
                assert entry["metrics"][split][key]["ndcg@10"] == pytest.approx(float(want))
    # run again: each (run, scorer, over) entry is replaced, not repeated
    assert fusion.main([str(run), "--json", str(out), "--scorer", "lightgcn+"]) == 0
    assert len(json.loads(out.read_text())["runs"]) == 2


def test_eval_splits_rank_each_splits_users_without_what_they_have_seen(fusion, tmp_path,
                                                                       synthetic_csv):
    from glta_graph.data import load_dataset

    data = load_dataset(synthetic_csv(tmp_path / "r.csv"), format="csv", text_col="text")
    splits = fusion.eval_splits(data)
    for split, seen in (("valid", ("train",)), ("test", ("train", "valid"))):
        users, ex, rel = splits[split]
        assert users.tolist() == data.users_with(split).tolist()
        for row, u in enumerate(users[:5]):
            want = set().union(*(data.user_items(s, int(u)).tolist() for s in seen))
            cols = ex.col_indices()[ex.crow_indices()[row]:ex.crow_indices()[row + 1]]
            assert set(cols.tolist()) == want
            got = rel.col_indices()[rel.crow_indices()[row]:rel.crow_indices()[row + 1]]
            assert set(got.tolist()) == set(data.user_items(split, int(u)).tolist())
