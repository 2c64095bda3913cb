"""`glta pipeline --ablation NAME`: each ablation changes only what it names."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from glta_gllm.checkpoint import load_artifact

from glta_cli.app import app
from glta_cli.config import ABLATIONS, ConfigError, load_config
from glta_cli.pipeline import stage_keys


def _flat(config):
    return {(s, k): v for s, keys in config.to_dict().items() for k, v in keys.items()}


@pytest.mark.parametrize("preset", ["default", "paper"])
@pytest.mark.parametrize("name", [n for n in ABLATIONS if n != "full"])
def test_each_ablation_changes_only_what_it_names(name, preset):
    full, abl = _flat(load_config(preset)), _flat(load_config(preset,
                                                              None, ["--run.ablation", name]))
    changed = {key for key in full if full[key] != abl[key]} - {("run", "ablation")}
    # what it names and the preset does not already set that way
    named = {(s, k) for s, keys in ABLATIONS[name].items() for k, v in keys.items()
             if full[(s, k)] != v}
    if name == "random-llm":  # [llm] init is followed by both stages' llm_init
        named |= {("item_text", "llm_init"), ("user_item", "llm_init")}
    assert changed == named, name
    assert abl[("run", "ablation")] == name
    if name == "no-pd":  # the default preset has the prediction text off already
        assert named == (set() if preset == "default" else {("user_item", "use_predict")})
    elif preset == "default":
        assert named, name


def test_ablation_stage_keys_rerun_only_what_they_change():
    full = stage_keys(load_config("default"))

    def changed(name):
        keys = stage_keys(load_config("default", None, ["--run.ablation", name]))
        return [s for s in keys if keys[s] != full[s]]

    assert changed("fl") == changed("ar") == ["evaluate"]
    for name in ("no-ua", "no-pf"):
        assert changed(name) == ["user_item", "evaluate"], name
    assert changed("no-pd") == []  # the default preset's prediction text is off already
    for name in ("no-ia", "plain-head", "random-llm"):
        assert changed(name) == ["item_text", "user_item", "evaluate"], name


def test_unknown_or_contradicted_ablation_is_one_line(runner, tmp_path):
    run = tmp_path / "run"
    bad = runner.invoke(app, ["pipeline", "--out", str(run), "--ablation", "no-such"])
    assert bad.exit_code == 2 and "no-such" in bad.stderr and "no-pf" in bad.stderr
    both = runner.invoke(app, ["pipeline", "--out", str(run), "--ablation", "no-pf",
                               "--user_item.use_profile", "true"])
    assert both.exit_code == 2
    line = [x for x in both.stderr.splitlines() if x.strip()]
    assert len(line) == 1 and "--ablation no-pf" in line[0]
    assert "--user_item.use_profile true" in line[0]
    assert not run.exists()
    with pytest.raises(ConfigError, match="--ablation fl"):
        load_config("default", None, ["--run.ablation", "fl", "--eval.ranking", "ar"])


@pytest.mark.slow
def test_ablation_runs_reuse_the_full_run(runner, ratings_csv, tiny_model_dir, tmp_path,
                                          tiny_pipeline_args):
    full = tmp_path / "full"
    args = tiny_pipeline_args(ratings_csv, tiny_model_dir, full)
    assert runner.invoke(app, ["pipeline", *args]).exit_code == 0
    metrics = json.loads((full / "metrics.json").read_text())
    for model in ("lightgcn", "glta"):
        assert {"valid", "test"} <= set(metrics[model])
    breakdown = json.loads((full / "breakdown.json").read_text())
    assert set(breakdown["models"]) == {"lightgcn", "glta"}
    assert "Where each model wins" in (full / "report.md").read_text()
    by = runner.invoke(app, ["evaluate", str(full), "--by", "activity", "--quiet"])
    assert by.exit_code == 0, by.output
    assert "Q1 (" in by.stdout and "Q5 (" in by.stdout and "glta" in by.stdout
    by = runner.invoke(app, ["evaluate", str(full), "--by", "popularity", "--quiet"])
    assert by.exit_code == 0 and "tail (<= 5" in by.stdout and "share@10" in by.stdout
    # the breakdown printed equals the one the pipeline recorded for the same split
    from glta_cli.evaluation import breakdown_run

    again = breakdown_run(full, ["lightgcn"], "test", (5, 10, 20), "activity")["lightgcn"]
    recorded = breakdown["models"]["lightgcn"]["activity"]
    assert {k: round(v["ndcg@10"], 9) for k, v in again.items()} == {
        k: round(v["ndcg@10"], 9) for k, v in recorded.items()}
    bad = runner.invoke(app, ["evaluate", str(full), "--by", "age"])
    assert bad.exit_code == 2 and "--by" in bad.stderr and "activity" in bad.stderr

    def ablate(name):
        run = tmp_path / name
        shutil.copytree(full, run)
        argv = [*tiny_pipeline_args(ratings_csv, tiny_model_dir, run), "--ablation", name]
        result = runner.invoke(app, ["pipeline", *argv])
        assert result.exit_code == 0, result.output
        assert f"Ablation: `{name}`" in (run / "report.md").read_text()
        return run, result

    run, result = ablate("fl")  # inference only: nothing retrained
    assert "skipped: dataset, graph, item_text, user_item" in result.stdout
    for name in ("gllm_head", "user_projector"):
        a, b = load_artifact(full / name)[0], load_artifact(run / name)[0]
        assert all(torch.equal(a[k], b[k]) for k in a)

    run, result = ablate("no-ia")  # stage 2 skipped, the item projector trains in stage 3
    assert not (run / "item_text").exists()
    _, ucfg, _ = load_artifact(run / "user_projector")
    assert ucfg["stage_config"]["train_item_projector"] is True
    before = load_artifact(full / "item_text" / "item_projector")[0]
    after = load_artifact(run / "item_projector")[0]
    assert set(before) == set(after)
    assert not any(torch.equal(before[k], after[k]) for k in before)

    run, _ = ablate("random-llm")
    _, ucfg, _ = load_artifact(run / "user_projector")
    assert "random-init" in ucfg["llm"] and ucfg["stage_config"]["llm_init"] == "random"
