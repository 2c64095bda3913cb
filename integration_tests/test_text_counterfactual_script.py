"""benchmarks/align/text_counterfactual.py: a finished run ranked with swapped or blank text."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner


@pytest.fixture
def tcf(align_script):
    return align_script("text_counterfactual")


def test_derangement_moves_every_user_and_is_seeded(tcf):
    users = list(range(2, 40))
    d = tcf.derangement(users, seed=0)
    assert sorted(d) == users and sorted(d.values()) == users  # a permutation
    assert all(u != v for u, v in d.items())  # nobody keeps its own text
    assert d == tcf.derangement(users, seed=0) and d != tcf.derangement(users, seed=1)
    assert tcf.derangement([4, 9], seed=3) == {4: 9, 9: 4}
    with pytest.raises(ValueError, match="at least two"):
        tcf.derangement([1], seed=0)


def test_texts_for_each_condition_leaves_the_original_alone(tcf):
    profiles = {u: {"profile": f"likes {u}", "predict": f"next {u}"} for u in range(5)}
    before = json.dumps(profiles, sort_keys=True)
    assert tcf.texts_for(profiles, "original", 0) == profiles
    blank = tcf.texts_for(profiles, "blank", 0)
    assert blank == {u: {"profile": "", "predict": ""} for u in range(5)}
    shuffled = tcf.texts_for(profiles, "shuffled", 0)
    assert sorted(t["profile"] for t in shuffled.values()) == sorted(
        t["profile"] for t in profiles.values())
    for u, t in shuffled.items():  # profile and prediction move together, never to their user
        assert t["profile"] != f"likes {u}" and t["predict"] == "next" + t["profile"][5:]
    assert json.dumps(profiles, sort_keys=True) == before
    with pytest.raises(ValueError, match="unknown condition 'x'"):
        tcf.texts_for(profiles, "x", 0)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir):
    from glta_cli.app import app
    from glta_cli.testing import tiny_pipeline_args, write_ratings_csv

    root = tmp_path_factory.mktemp("tcf")
    csv_path = write_ratings_csv(root / "ratings.csv")
    run = root / "run"
    result = CliRunner().invoke(app, [
        "pipeline", *tiny_pipeline_args(csv_path, tiny_model_dir, run),
        "--user_item.use_profile", "true", "--user_item.use_predict", "true",
        "--user_item.profile_new_tokens", "6"])
    assert result.exit_code == 0, result.output
    return run


def test_main_reproduces_the_run_and_records_each_condition(tcf, finished_run, tmp_path):
    files = {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()}
    out = tmp_path / "tcf.json"
    assert tcf.main([str(finished_run), "--json", str(out), "--seed", "2"]) == 0
    doc = json.loads(out.read_text())
    (entry,) = doc["runs"]
    assert entry["run"] == str(finished_run) and entry["seed"] == 2
    assert entry["machine"]["cpu"] and entry["commit"] and entry["seconds"] > 0
    assert set(entry["conditions"]) == {"original", "shuffled", "blank"}
    # "original" is the model metrics.json reports (fp32: the same ranking to the last digit)
    recorded = json.loads((finished_run / "metrics.json").read_text())["glta"]
    for split in ("valid", "test"):
        assert entry["conditions"]["original"][split]["ndcg@10"] == pytest.approx(
            recorded[split]["ndcg@10"], abs=1e-6)
        for c in ("shuffled", "blank"):
            assert entry["minus_original"][c][split] == pytest.approx(
                entry["conditions"][c][split]["ndcg@10"]
                - entry["conditions"]["original"][split]["ndcg@10"], abs=1e-6)
    # the run is read, never written
    assert {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()} == files
    # a second pass over the same run and seed replaces its entry; another seed adds one
    assert tcf.main([str(finished_run), "--json", str(out), "--conditions", "blank",
                     "--seed", "2"]) == 0
    (again,) = json.loads(out.read_text())["runs"]
    assert set(again["conditions"]) == {"blank"} and "minus_original" not in again
    assert tcf.main([str(finished_run), "--json", str(out), "--conditions", "original,shuffled",
                     "--seed", "5"]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [(r["seed"], sorted(r["conditions"])) for r in runs] == [
        (2, ["blank"]), (5, ["original", "shuffled"])]
    assert set(runs[1]["minus_original"]) == {"shuffled"}


def test_main_refuses_an_unfinished_run_and_an_unknown_condition(tcf, tmp_path):
    out = tmp_path / "tcf.json"
    assert tcf.main([str(tmp_path), "--json", str(out)]) == 2
    assert not out.exists()
    with pytest.raises(SystemExit) as err:
        tcf.main([str(tmp_path), "--json", str(out), "--conditions", "original,swap"])
    assert err.value.code == 2


def test_an_entry_written_by_another_process_meanwhile_is_kept(tcf, tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"glta": {"valid": {"ndcg@10": 0.2},
                                                           "test": {"ndcg@10": 0.4}}}))
    out = tmp_path / "tcf.json"
    split = {"ndcg@10": 0.2, "users": 3}

    def ranking_while_another_writes(run_dir, conditions, seed, llm=None, progress=None):
        out.write_text(json.dumps({"runs": [{"run": "other", "seed": 0}]}))
        return {"ranking": "mean", "texts": 3,
                "conditions": {c: {"valid": split, "test": split} for c in conditions}}

    monkeypatch.setattr(tcf, "rank_under", ranking_while_another_writes)
    assert tcf.main([str(run), "--json", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [r["run"] for r in runs] == ["other", str(run)]
    assert runs[1]["minus_original"]["shuffled"] == {"valid": 0.0, "test": 0.0}


def test_a_run_missing_some_users_text_is_refused_not_written(tcf, finished_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(finished_run, run)
    profiles = run / "profiles.jsonl"
    lines = profiles.read_text(encoding="utf-8").splitlines()
    profiles.write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")  # one user's text gone
    before = profiles.read_bytes()
    with pytest.raises(ValueError, match="no text for 1 ranked users"):
        tcf.rank_under(run, ("original",), 0)
    assert profiles.read_bytes() == before
