"""`glta graph train`, `evaluate`, `recommend`, `inspect` on a synthetic dataset."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from glta_cli.app import app
from glta_cli.testing import metrics_from_recs

TRAIN = ["--epochs", "4", "--eval-every", "2", "--dim", "16", "--layers", "2",
         "--batch-size", "64", "--lr", "0.01", "--seed", "1", "--quiet"]


@pytest.fixture
def run_dir(runner, prepared, tmp_path):
    """A LightGCN run directory trained by `glta graph train`."""
    run = tmp_path / "run"
    result = runner.invoke(app, ["graph", "train", str(prepared), "--out", str(run), *TRAIN])
    assert result.exit_code == 0, result.output
    assert "best epoch" in result.stdout
    return run


def test_train_evaluate_recommend_recompute(runner, run_dir, tmp_path):
    assert (run_dir / "dataset" / "dataset.json").is_file()  # self-contained
    assert (run_dir / "graph" / "model.safetensors").is_file()
    assert (run_dir / "resolved-config.toml").is_file()
    result = runner.invoke(app, ["evaluate", str(run_dir), "--k", "5,10", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "precision@10" in result.stdout and "lightgcn" in result.stdout
    saved = json.loads((run_dir / "metrics.json").read_text())["lightgcn"]["test"]
    recs = tmp_path / "recs.csv"
    result = runner.invoke(app, ["recommend", str(run_dir), "--users", "all", "--k", "10",
                                 "--out", str(recs)])
    assert result.exit_code == 0, result.output
    exported = tmp_path / "exported"
    export = runner.invoke(app, ["data", "export", str(run_dir), "--out", str(exported)])
    assert export.exit_code == 0, export.output
    recomputed, users = metrics_from_recs(recs, exported / "test.csv", (5, 10))
    assert users == saved["users"]
    for name, value in recomputed.items():
        assert value == pytest.approx(saved[name], abs=1e-6), name
    # Recommendations never include an item the user has in train or valid.
    seen = set()
    for split in ("train", "valid"):
        with open(exported / f"{split}.csv", encoding="utf-8") as fh:
            seen |= {(r["user"], r["item"]) for r in csv.DictReader(fh)}
    with open(recs, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and not [r for r in rows if (r["user"], r["item"]) in seen]
    assert {r["user"] for r in rows} == {f"u{u * 7}" for u in range(40)}


def test_recommend_selected_users_to_stdout_and_errors(runner, run_dir):
    result = runner.invoke(app, ["recommend", str(run_dir), "--users", "u7,u14", "--k", "3"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "user,item,rank,score" and len(lines) == 7
    assert [line.split(",")[0] for line in lines[1:]] == ["u7"] * 3 + ["u14"] * 3
    scores = [float(line.split(",")[3]) for line in lines[1:4]]
    assert scores == sorted(scores, reverse=True)
    bad = runner.invoke(app, ["recommend", str(run_dir), "--users", "u7,ghost", "--k", "3"])
    assert bad.exit_code == 2 and "'ghost'" in bad.stderr
    big = runner.invoke(app, ["recommend", str(run_dir), "--k", "31"])
    assert big.exit_code == 2 and "catalogue" in big.stderr
    glta = runner.invoke(app, ["recommend", str(run_dir), "--model", "glta"])
    assert glta.exit_code == 2 and "not trained" in glta.stderr


def test_inspect_json_and_table(runner, run_dir):
    result = runner.invoke(app, ["inspect", str(run_dir), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    fingerprint = info["dataset"]["fingerprint"]
    assert info["artifacts"]["graph"]["fingerprint"] == fingerprint
    assert info["artifacts"]["graph"]["matches_dataset"] is True
    assert info["artifacts"]["graph"]["config"]["dim"] == 16
    assert info["models"] == ["lightgcn"]
    assert "[graph]" in info["config"]
    table = runner.invoke(app, ["inspect", str(run_dir)])
    assert table.exit_code == 0 and fingerprint in table.stdout and "yes" in table.stdout


def test_graph_train_into_run_of_other_dataset_fails(runner, run_dir, ratings_csv, tmp_path):
    other = tmp_path / "other"
    prep = runner.invoke(app, ["data", "prepare", str(ratings_csv), "--out", str(other),
                               "--seed", "99"])
    assert prep.exit_code == 0
    before = (run_dir / "graph" / "model.safetensors").read_bytes()
    result = runner.invoke(app, ["graph", "train", str(other), "--out", str(run_dir), *TRAIN])
    assert result.exit_code == 2
    assert "fingerprint" in result.stderr and result.stderr.strip().count("\n") == 0
    assert (run_dir / "graph" / "model.safetensors").read_bytes() == before


def test_graph_train_bad_option_names_the_key(runner, prepared, tmp_path):
    out = tmp_path / "bad"
    result = runner.invoke(app, ["graph", "train", str(prepared), "--out", str(out),
                                 "--graph.dimm", "3"])
    assert result.exit_code == 2 and "--graph.dimm" in result.stderr
    result = runner.invoke(app, ["graph", "train", str(prepared), "--out", str(out),
                                 "--lr", "-1"])
    assert result.exit_code == 2 and "lr" in result.stderr


def test_graph_train_hard_negatives(runner, prepared, tmp_path):
    run = tmp_path / "hard"
    result = runner.invoke(app, ["graph", "train", str(prepared), "--out", str(run), *TRAIN,
                                 "--hard-negatives", "4"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "graph" / "config.json").read_text())["hard_negatives"] == 4
    bad = runner.invoke(app, ["graph", "train", str(prepared), "--out", str(tmp_path / "x"),
                              "--hard-negatives", "0"])
    assert bad.exit_code == 2 and "hard_negatives" in bad.stderr
    assert not (tmp_path / "x" / "graph").exists()


def test_graph_train_softmax_loss(runner, prepared, tmp_path):
    run = tmp_path / "softmax"
    result = runner.invoke(app, ["graph", "train", str(prepared), "--out", str(run), *TRAIN,
                                 "--loss", "softmax", "--graph.negatives", "8",
                                 "--graph.similarity", "dot"])
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "graph" / "config.json").read_text())
    assert (saved["loss"], saved["negatives"], saved["similarity"]) == ("softmax", 8, "dot")
    bad = runner.invoke(app, ["graph", "train", str(prepared), "--out", str(tmp_path / "x"),
                              "--loss", "hinge"])
    assert bad.exit_code == 2 and "loss" in bad.stderr and "hinge" in bad.stderr
    assert not (tmp_path / "x" / "graph").exists()


def test_chosen_ranking_reads_the_pipelines_valid_choice(tmp_path):
    from glta_cli.runs import RunError, chosen_ranking

    assert chosen_ranking(tmp_path) is None  # no evaluation yet: the trained mode applies
    record = tmp_path / "breakdown.json"
    record.write_text(json.dumps({"split": "test", "models": {}}))
    assert chosen_ranking(tmp_path) is None  # evaluated without [eval] ranking = "select"
    record.write_text(json.dumps({"glta_ranking": {"chosen": "mean", "metric": "ndcg@10"}}))
    assert chosen_ranking(tmp_path) == "mean"
    record.write_text("{not json")
    with pytest.raises(RunError, match=r"breakdown\.json: not valid JSON"):
        chosen_ranking(tmp_path)


def test_code_fingerprint_names_the_installed_sources(monkeypatch, tmp_path):
    import glta_cli
    from glta_cli import runs

    first = runs.code_fingerprint()
    assert len(first) == 16 and int(first, 16) >= 0
    assert runs.code_fingerprint() == first  # cached, and stable within a process
    # a changed source file gives another fingerprint: a fake glta_cli with one file edited
    fake = tmp_path / "glta_cli"
    fake.mkdir()
    src = Path(glta_cli.__file__).parent
    for path in src.rglob("*.py"):
        target = fake / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    runs.code_fingerprint.cache_clear()
    monkeypatch.setattr(glta_cli, "__file__", str(fake / "__init__.py"))
    try:
        assert runs.code_fingerprint() == first  # the same bytes, elsewhere on disk
        (fake / "runs.py").write_text((src / "runs.py").read_text() + "\n# edited\n")
        runs.code_fingerprint.cache_clear()
        assert runs.code_fingerprint() != first
    finally:
        runs.code_fingerprint.cache_clear()
