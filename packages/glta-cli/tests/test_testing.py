"""The plain-Python reference metrics on a hand-computed example."""

from __future__ import annotations

import math

import pytest

from glta_cli.testing import metrics_from_recs


def test_metrics_from_recs_hand_example(tmp_path):
    recs = tmp_path / "recs.csv"
    recs.write_text("user,item,rank,score\n"
                    "a,x,2,0.5\na,y,1,0.9\n"   # a: ranked y, x
                    "b,z,1,1.0\nb,x,2,0.1\n"   # b: ranked z, x
                    "c,x,1,1.0\nc,y,2,0.5\n", encoding="utf-8")
    test = tmp_path / "test.csv"
    test.write_text("user,item\na,x\nb,q\nb,r\n", encoding="utf-8")  # c has no test item
    got, users = metrics_from_recs(recs, test, (1, 2))
    assert users == 2
    assert got["precision@1"] == 0.0 and got["hit_rate@1"] == 0.0
    assert got["precision@2"] == pytest.approx(0.25)
    assert got["recall@2"] == pytest.approx(0.5)
    assert got["hit_rate@2"] == pytest.approx(0.5)
    assert got["ndcg@2"] == pytest.approx((1 / math.log2(3)) / 2)


def test_write_ratings_csv_two_communities_with_non_contiguous_ids(tmp_path):
    import csv

    from glta_cli.testing import write_ratings_csv

    path = write_ratings_csv(tmp_path / "r.csv", users=6, items=30, seed=1)
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    assert set(rows[0]) == {"user_id", "item_id", "rating", "text"}
    assert {r["user_id"] for r in rows} == {f"u{u * 7}" for u in range(6)}
    for user, own in (("u0", range(0, 15)), ("u7", range(15, 30))):  # each community's half
        items = [int(r["item_id"][1:]) // 3 for r in rows if r["user_id"] == user]
        assert 10 <= len(items) <= 12 and sum(i in own for i in items) >= 10
    again = write_ratings_csv(tmp_path / "s.csv", users=6, items=30, seed=1)
    assert path.read_text() == again.read_text()  # seeded


def test_save_tiny_llm_is_a_loadable_model_folder(tmp_path):
    from glta_align import load_llm

    from glta_cli.testing import save_tiny_llm

    folder = save_tiny_llm(tmp_path / "m", hidden_size=32, num_layers=1)
    assert (folder / "config.json").is_file()
    llm = load_llm(str(folder), dtype="float32", attention="sdpa")
    assert llm.hidden_size == 32 and llm.causal_lm.config.num_hidden_layers == 1


def test_tiny_pipeline_args_name_the_files_and_the_tiny_budget(tmp_path):
    # the pipeline runs with them in every test that takes the `tiny_pipeline_args` fixture
    from glta_cli.testing import tiny_pipeline_args

    args = tiny_pipeline_args(tmp_path / "r.csv", tmp_path / "llm", tmp_path / "run")
    assert args[:2] == ["--out", str(tmp_path / "run")] and "--quiet" in args
    assert args.index("--data.source") + 1 == args.index(str(tmp_path / "r.csv"))
    assert args[args.index("--llm.model") + 1] == str(tmp_path / "llm")
    assert args[args.index("--user_item.epochs") + 1] == "1"
    assert args[args.index("--llm.dtype") + 1] == "float32"
    loud = tiny_pipeline_args(tmp_path / "r.csv", tmp_path / "llm", tmp_path / "run",
                              quiet=False)
    assert "--quiet" not in loud and [a for a in args if a != "--quiet"] == loud
