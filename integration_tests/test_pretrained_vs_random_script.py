"""benchmarks/align/pretrained_vs_random.py: pairs, de-duplication, counts and the sign test."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def pvr(align_script):
    return align_script("pretrained_vs_random")


def _run(row, seed, valid, test, dataset="ml-100k"):
    return {"dataset": dataset, "seed": seed, "row": row, "machine": {"cpu": "CPU X"},
            "result": {"metrics": {"glta": {"valid": {"ndcg@10": valid},
                                            "test": {"ndcg@10": test}}}}}


def test_control_of_names_the_pretrained_row(pvr):
    assert pvr.control_of("random-llm") == "full"
    assert pvr.control_of("random-llm-repeat") == "full-repeat"
    assert pvr.control_of("no-pd-b32-lr2e-4-lora-random-llm") == "no-pd-b32-lr2e-4-lora"
    assert pvr.control_of("xeon-bf16-no-pd-random-llm") == "xeon-bf16-no-pd"
    assert pvr.control_of("full") is None and pvr.control_of("no-pd") is None


def test_sign_test_is_the_exact_two_sided_binomial(pvr):
    assert pvr.sign_test(0, 0) == 1.0 and pvr.sign_test(3, 3) == 1.0
    assert pvr.sign_test(5, 0) == pytest.approx(2 / 32)
    assert pvr.sign_test(0, 5) == pytest.approx(2 / 32)
    assert pvr.sign_test(6, 18) == pytest.approx(0.0227, abs=1e-4)


def test_pairs_differences_and_a_pair_recorded_twice_kept_with_its_larger_group(pvr):
    small = {"runs": [_run("full", 0, 0.20, 0.40), _run("random-llm", 0, 0.21, 0.38),
                      _run("no-pd", 0, 0.2, 0.4)]}  # no control: not a pair
    large = {"runs": [_run("full", 0, 0.20, 0.40), _run("full", 1, 1.20, 0.40),
                      _run("random-llm", 0, 0.21, 0.38), _run("random-llm", 1, 1.19, 0.41)]}
    found = pvr.pairs({"a.json": small, "b.json": large})
    assert [(p["file"], p["seed"]) for p in found] == [("b.json", 0), ("b.json", 1)]
    assert found[0]["valid"] == pytest.approx(-0.01) and found[0]["test"] == pytest.approx(0.02)
    assert found[1]["valid"] == pytest.approx(0.01) and found[1]["test"] == pytest.approx(-0.01)
    assert found[0]["config"] == "full" and found[0]["machine"] == "CPU X"


def test_a_pair_recorded_in_two_groups_of_one_size_stays_in_the_first_file(pvr):
    one = {"runs": [_run("full", 0, 0.20, 0.40), _run("random-llm", 0, 0.21, 0.38)]}
    renamed = {"runs": [_run("x-full", 0, 0.20, 0.40), _run("x-full-random-llm", 0, 0.21, 0.38)]}
    found = pvr.pairs({"b.json": renamed, "a.json": one})
    assert [(p["file"], p["config"]) for p in found] == [("a.json", "full")]


def test_main_counts_ahead_and_behind_per_configuration_and_overall(pvr, tmp_path):
    runs = []
    for seed, lead in enumerate((0.01, 0.02, 0.03)):  # pretrained ahead at every seed
        runs += [_run("lora", seed, 0.2 + lead, 0.4 + lead),
                 _run("lora-random-llm", seed, 0.2, 0.4)]
    for seed, lead in enumerate((-0.01, 0.01, -0.02)):
        runs += [_run("full", seed, 0.2 + lead, 0.4), _run("random-llm", seed, 0.2, 0.4 - 0.001)]
    path = tmp_path / "ablation_x.json"
    path.write_text(json.dumps({"runs": runs}))
    table = tmp_path / "ablation_table_x.json"  # tables are skipped
    table.write_text("{}")
    out = tmp_path / "pooled.json"
    assert pvr.main([str(path), str(table), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["files"] == ["ablation_x.json"]
    overall = doc["overall"]["ml-100k"]
    assert overall["pairs"] == 6 and overall["valid"]["ahead"] == 4
    assert overall["valid"]["behind"] == 2 and overall["test"]["ahead"] == 6
    lora = next(c for c in doc["by_configuration"] if c["config"] == "lora")
    assert lora["valid"]["mean"] == pytest.approx(0.02) and lora["valid"]["spread"] == 0.02
    assert lora["valid"]["ahead"] == 3 and lora["valid"]["sign_test_p"] == 0.25
    # lora: ahead at every seed, but by no more than the spread, not listed; full: ahead on
    # test by 0.001 at every seed with no spread, listed (valid: behind at two seeds)
    listed = doc["configurations_ahead_beyond_spread"]
    assert [(c["config"], "test" in c, "valid" in c) for c in listed] == [("full", True, False)]
    assert listed[0]["test"] == pytest.approx(0.001)


def _with_buckets(run, q1, tail_share):
    run["result"]["breakdown"] = {"split": "test", "models": {"glta": {
        "activity": {"Q1 (14-20 train items)": {"ndcg@10": q1, "users": 3},
                     "Q5 (121-516 train items)": {"ndcg@10": 0.5, "users": 3}},
        "popularity": {"head (> 5)": {"ndcg@10": 0.4, "share@10": 1 - tail_share},
                       "tail (<= 5 train interactions)": {"ndcg@10": 0.0,
                                                          "share@10": tail_share}}}}}
    return run


def test_bucket_names_and_the_pooled_differences_per_bucket(pvr, tmp_path):
    assert pvr.bucket_name("Q1 (14-20 train items)") == "Q1"
    assert pvr.bucket_name("tail (<= 5 train interactions)") == "tail"
    assert pvr.bucket_name("head (> 5)") == "head"
    runs = []
    for seed, (lead, share) in enumerate(((0.03, 0.01), (0.01, 0.0), (-0.02, 0.02))):
        runs += [_with_buckets(_run("full", seed, 0.2, 0.4), 0.3 + lead, 0.01 + share),
                 _with_buckets(_run("random-llm", seed, 0.2, 0.4), 0.3, 0.01)]
    runs.append(_run("lora", 0, 0.21, 0.41))  # no breakdown: pooled overall, not per bucket
    runs.append(_run("lora-random-llm", 0, 0.2, 0.4))
    path = tmp_path / "ablation_b.json"
    path.write_text(json.dumps({"runs": runs}))
    out = tmp_path / "pooled.json"
    assert pvr.main([str(path), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["overall"]["ml-100k"]["pairs"] == 4
    buckets = doc["by_bucket"]["ml-100k"]
    assert set(buckets) == {"activity/Q1/ndcg@10", "activity/Q5/ndcg@10",
                            "popularity/head/ndcg@10", "popularity/tail/ndcg@10",
                            "popularity/head/share@10", "popularity/tail/share@10"}
    q1 = buckets["activity/Q1/ndcg@10"]
    assert q1["pairs"] == 3 and q1["ahead"] == 2 and q1["behind"] == 1
    assert q1["mean"] == pytest.approx(round((0.03 + 0.01 - 0.02) / 3, 5))
    assert q1["spread"] == pytest.approx(0.05)
    assert buckets["activity/Q5/ndcg@10"]["ahead"] == buckets["activity/Q5/ndcg@10"]["behind"] == 0
    tail = buckets["popularity/tail/share@10"]
    assert tail["ahead"] == 2 and tail["behind"] == 0 and tail["mean"] == pytest.approx(0.01)
