"""`glta pipeline` and its pure helpers: resume, restart, config checks, end to end (tiny LLM)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from glta_graph.data import Interactions, csr_from_pairs

from glta_cli.app import app
from glta_cli.config import ConfigError, load_config, write_config
from glta_cli.pipeline import (
    _start_run_dir,
    config_differences,
    previous_dir,
    resolve_pipeline_config,
    subsample_users,
)
from glta_cli.testing import metrics_from_recs


def _toy_interactions() -> Interactions:
    mats = {
        "train": csr_from_pairs([0, 0, 1, 2, 3], [0, 1, 1, 2, 3], 4, 5),
        "valid": csr_from_pairs([1], [4], 4, 5),
        "test": csr_from_pairs([0, 2], [2, 3], 4, 5),
    }
    return Interactions(["a", "b", "c", "d"], ["i0", "i1", "i2", "i3", "i4"],
                        item_text=[f"t{i}" for i in range(5)], name="toy", **mats)


def test_subsample_users_keeps_rows_and_drops_empty_items():
    data = _toy_interactions()
    small = subsample_users(data, 2, seed=0)
    assert small.num_users == 2
    kept = set(small.user_ids)
    pairs = set()
    for split in ("train", "valid", "test"):
        u, i = small.pairs(split)
        pairs |= {(split, small.user_ids[a], small.item_ids[b]) for a, b in zip(u, i, strict=True)}
    expected = set()
    for split in ("train", "valid", "test"):
        u, i = data.pairs(split)
        expected |= {(split, data.user_ids[a], data.item_ids[b])
                     for a, b in zip(u, i, strict=True) if data.user_ids[a] in kept}
    assert pairs == expected
    used = {item for _, _, item in pairs}
    assert set(small.item_ids) == used
    assert small.item_text == [f"t{small.item_ids[j][1:]}" for j in range(small.num_items)]
    assert subsample_users(data, 2, seed=0).fingerprint == small.fingerprint  # seeded
    assert subsample_users(data, 10, seed=0) is data
    assert isinstance(small.train, torch.Tensor) and np.all(np.diff(small.pairs("train")[0]) >= 0)


def test_config_differences_and_saved_config_resume(tmp_path):
    base = load_config("default")
    other = load_config("default", overrides=["--graph.epochs", "7", "--run.out", "x"])
    diffs = config_differences(base, other)
    assert diffs == [f"[graph] epochs: {base.graph.epochs!r} -> 7"]
    run = tmp_path / "run"
    saved = load_config("smoke", overrides=["--run.out", str(run)])
    run.mkdir()
    write_config(saved, run / "resolved-config.toml")
    resumed = resolve_pipeline_config(None, None, [], run)
    assert resumed.to_dict() == saved.to_dict()
    fresh = resolve_pipeline_config("default", None, [], run)
    assert fresh.data.max_users is None and fresh.run.out == str(run)


@pytest.mark.parametrize(("key", "values", "bad"), [
    ("attention", ("eager", "eager_grouped"), "flash"),
    ("pointwise", ("compiled", "eager"), "fast"),
])
def test_execution_settings_never_rekey_a_stage(tmp_path, key, values, bad):
    """[llm] attention (which kernels compute attention) and [llm] pointwise (compiled or
    eager element-wise parts) say how a stage computes, not what: keys ignore them, and a run
    resumed with another value (or one whose saved configuration predates the key) keeps
    every stage."""
    from glta_cli.pipeline import STAGES, _reconcile_stages, stage_keys

    run = tmp_path / "run"
    base = load_config("smoke", overrides=["--run.out", str(run)])
    assert getattr(base.llm, key) == "auto" == getattr(base.user_item, key)
    for value in values:
        other = load_config("smoke", overrides=["--run.out", str(run), f"--llm.{key}", value])
        assert getattr(other.user_item, key) == value == getattr(other.item_text, key)
        assert stage_keys(other) == stage_keys(base)
        assert config_differences(base, other) == []  # nothing to report, nothing to rerun
    run.mkdir()
    write_config(base, run / "resolved-config.toml")
    saved = (run / "resolved-config.toml").read_text()
    (run / "resolved-config.toml").write_text(
        "\n".join(line for line in saved.splitlines() if not line.startswith(key)))
    keys = stage_keys(base)
    stages = {s: {"done": True, "key": keys[s]} for s in STAGES}
    notes: list[str] = []
    _reconcile_stages(run, other, stages, notes.append)
    assert sorted(stages) == sorted(STAGES) and not notes
    with pytest.raises(ConfigError, match=rf"\[llm\] {key}: '{bad}'"):
        load_config("smoke", overrides=[f"--llm.{key}", bad])


def test_stage_keys_chain_and_reconcile(tmp_path):
    from glta_cli.pipeline import STAGES, _reconcile_stages, stage_keys

    run = tmp_path / "run"
    old = load_config("smoke", overrides=["--run.out", str(run)])
    keys = stage_keys(old)
    assert list(keys) == list(STAGES) and len(set(keys.values())) == len(STAGES)
    changed = load_config("smoke", overrides=["--run.out", str(run), "--user_item.lr", "0.01"])
    new_keys = stage_keys(changed)
    assert [new_keys[s] == keys[s] for s in STAGES] == [True, True, True, False, False]

    run.mkdir()
    write_config(old, run / "resolved-config.toml")
    for stage in STAGES:
        (run / "state" / stage).mkdir(parents=True)
    (run / "profiles.jsonl").write_text("{}\n")
    stages = {s: {"done": True} for s in STAGES}  # records without keys: the saved config's
    notes: list[str] = []
    _reconcile_stages(run, changed, stages, notes.append)
    assert sorted(stages) == ["dataset", "graph", "item_text"]
    assert notes == ["user_item: configuration changed ([user_item] lr: 0.001 -> 0.01); "
                     "rerunning it and the stages after it"]
    assert not (run / "state" / "user_item").exists() and not (run / "state" / "evaluate").exists()
    assert (run / "state" / "graph").is_dir()
    assert (run / "profiles.jsonl").is_file()  # lr does not touch the generated profiles

    profiles = load_config("smoke", overrides=["--run.out", str(run),
                                               "--user_item.profile_new_tokens", "9"])
    stages = {s: {"done": True, "key": keys[s]} for s in STAGES}
    _reconcile_stages(run, profiles, stages, notes.append)
    assert not (run / "profiles.jsonl").exists()

    # a run saved before [user_item] profile_prompt existed made its texts with "paper"
    old_toml = (run / "resolved-config.toml").read_text()
    assert 'profile_prompt = "paper"' in old_toml
    (run / "resolved-config.toml").write_text(old_toml.replace('profile_prompt = "paper"\n', ""))
    for over, kept in ((["--user_item.lr", "0.01"], True),
                       (["--user_item.profile_prompt", "shared"], False)):
        (run / "profiles.jsonl").write_text("{}\n")
        stages = {s: {"done": True, "key": keys[s]} for s in STAGES}
        _reconcile_stages(run, load_config("smoke", overrides=["--run.out", str(run), *over]),
                          stages, notes.append)
        assert "user_item" not in stages and (run / "profiles.jsonl").is_file() == kept, over
    write_config(old, run / "resolved-config.toml")

    same = {s: {"done": True, "key": keys[s]} for s in STAGES}
    _reconcile_stages(run, old, same, notes.append)
    assert sorted(same) == sorted(STAGES)
    data_changed = load_config("smoke", overrides=["--run.out", str(run), "--data.max_users", "9"])
    with pytest.raises(ConfigError, match=r"\[data\] max_users: 40 -> 9"):
        _reconcile_stages(run, data_changed, dict(same), notes.append)


def test_settings_added_since_a_run_keep_its_stages_at_their_earlier_behaviour(tmp_path):
    """A run saved before [graph] text_* and [user_item] history_text existed (its records
    hold keys hashed without them) keeps graph and item_text; a new setting at another
    value, or a real change, reruns."""
    import re

    from glta_cli.pipeline import STAGES, _reconcile_stages, stage_keys

    run = tmp_path / "run"
    cfg = load_config("smoke", overrides=["--run.out", str(run)])
    run.mkdir()
    write_config(cfg, run / "resolved-config.toml")
    text = (run / "resolved-config.toml").read_text()
    for key in ("text_align", "text_weight", "text_temperature", "text_encoder",
                "text_max_length", "text_cache_dir", "history_text",
                "residual_init", "mask_seen", "compile"):  # an older version's file
        text = re.sub(rf"(?m)^{key} = .*\n", "", text)
    (run / "resolved-config.toml").write_text(text)
    keys = stage_keys(cfg)

    def old_records():  # keys an older version computed: the dataset's agrees, later ones not
        return {s: {"done": True, "key": keys[s] if s == "dataset" else "0" * 16}
                for s in STAGES}

    stages, notes = old_records(), []
    _reconcile_stages(run, cfg, stages, notes.append)
    assert "graph" in stages and stages["graph"]["key"] == keys["graph"]
    assert "item_text" in stages and stages["item_text"]["key"] == keys["item_text"]
    # residual_init: this version's "zero" is not the init runs had before it existed
    assert "user_item" not in stages and "evaluate" not in stages
    assert notes[0].startswith("graph: kept (made before [graph] text_align, [graph] text_weight")
    # the missing settings read as their earlier behaviour (mask_seen False, not the default
    # preset's True), so the one real difference is named
    assert notes[1] == ("item_text: kept (made before [item_text] compile existed; the current "
                        "values give the behaviour it was made with)")
    assert notes[2] == ("user_item: configuration changed ([user_item] residual_init: 'stage2' "
                        "-> 'zero'); rerunning it and the stages after it")
    # the same run asked for text alignment: LightGCN reruns
    infonce = load_config("smoke", overrides=["--run.out", str(run), "--graph.text_align",
                                              "infonce"])
    stages, notes = old_records(), []
    _reconcile_stages(run, infonce, stages, notes.append)
    assert sorted(stages) == ["dataset"]
    assert notes == ["graph: configuration changed ([graph] text_align: 'none' -> 'infonce'); "
                     "rerunning it and the stages after it"]
    # a setting the run did record changed: rerun, as before
    lr = load_config("smoke", overrides=["--run.out", str(run), "--graph.lr", "0.5"])
    stages, notes = old_records(), []
    _reconcile_stages(run, lr, stages, notes.append)
    assert sorted(stages) == ["dataset"] and "[graph] lr" in notes[0]


# The settings of the stage sections on 2026-12-04, less those registered in
# glta_cli.pipeline._added_settings (settings added after runs were first made).
_SETTINGS_2026_12_04 = {
    "data": ("format", "max_users", "options", "source"),
    "eval": ("ks", "ranking", "split"),
    "graph": ("backend", "batch_size", "device", "dim", "epochs", "eval_every", "ks", "l2",
              "layers", "loss", "lr", "negatives", "num_threads", "patience", "sampling",
              "seed", "select_metric", "similarity", "temperature", "warmup_epochs",
              "warmup_lr"),
    "item_text": ("batch_size", "bucket", "description_separator", "description_tokens",
                  "device", "dtype", "epochs", "head", "head_bias", "head_init",
                  "items_per_instance", "llm", "llm_init", "lora", "lr", "max_instances",
                  "padding_side", "projector", "prompt_style", "reuse_prefix", "save_every",
                  "seed", "weight_decay"),
    "llm": ("cache_dir", "device", "dtype", "init", "model"),
    "prepare": ("item_core", "k_core", "name", "presplit_valid_ratio", "ratios", "seed",
                "split", "temporal_scope", "threshold", "user_core", "with_title"),
    "user_item": ("batch_size", "bucket", "description_tokens", "device", "dtype", "epochs",
                  "eval_batch_size", "head", "head_bias", "head_init", "history_items", "llm",
                  "llm_init", "lora", "lr", "max_users", "num_slots", "padding_side",
                  "patience", "predict_words", "profile_batch_size", "profile_items",
                  "profile_new_tokens", "profile_tags", "profile_text_tokens", "projector",
                  "prompt_style", "ranking", "reuse_prefix", "save_every", "seed",
                  "select_metric", "targets_from", "train_item_projector", "use_predict",
                  "use_profile", "user_token", "weight_decay"),
}


def test_every_new_stage_setting_is_registered_with_its_earlier_behaviour():
    """A setting added to a stage's section after 2026-12-04 must be in _added_settings
    (with the value that reproduces what runs did before it existed); otherwise upgrading
    GLTA reruns that stage of every finished run (its key hashes the new setting)."""
    from glta_cli.pipeline import _EXECUTION_KEYS, STAGE_SECTIONS, _added_settings

    cfg = load_config("default").to_dict()
    keys = {(sec, k) for secs in STAGE_SECTIONS.values() for sec in secs
            for k in cfg.get(sec, {}) if k not in _EXECUTION_KEYS}
    known = {(sec, k) for sec, names in _SETTINGS_2026_12_04.items() for k in names}
    unregistered = sorted(keys - known - set(_added_settings()))
    assert not unregistered, (f"register {unregistered} in glta_cli.pipeline._added_settings "
                              "with the value that gives the earlier behaviour")


def test_restart_moves_old_run_aside_and_keeps_last_complete(tmp_path):
    run = tmp_path / "run"
    assert _start_run_dir(run, restart=True) is None
    (run / "marker").write_text("old complete run")
    assert _start_run_dir(run, restart=False) is None and (run / "marker").exists()
    note = _start_run_dir(run, restart=True)
    assert "moved" in note and not (run / "marker").exists()
    assert (previous_dir(run) / "marker").read_text() == "old complete run"
    (run / "partial").write_text("unfinished restart")
    note = _start_run_dir(run, restart=True)
    assert "discarded" in note and not (run / "partial").exists()
    assert (previous_dir(run) / "marker").is_file()


def test_pipeline_end_to_end_tiny_llm(runner, ratings_csv, tiny_model_dir, tmp_path,
                                     tiny_pipeline_args):
    run = tmp_path / "run"
    mine = tmp_path / "notes.txt"  # a user's file next to --out
    mine.write_text("mine")
    args = tiny_pipeline_args(ratings_csv, tiny_model_dir, run)
    result = runner.invoke(app, ["pipeline", *args])
    assert result.exit_code == 0, result.output
    assert "LightGCN" in result.stdout and "GLTA" in result.stdout and "P@10" in result.stdout
    # what the allocator was set to (glta's start-up call; GLTA_MALLOC=system keeps glibc's)
    assert re.search(r"memory: (glibc malloc keeps freed blocks|.*malloc defaults)", result.output)
    metrics = json.loads((run / "metrics.json").read_text())
    for model in ("lightgcn", "glta"):
        assert metrics[model]["test"]["users"] > 0
        assert 0.0 <= metrics[model]["test"]["precision@10"] <= 1.0
    for name in ("dataset", "graph", "item_projector", "user_projector", "gllm_head"):
        assert (run / name).is_dir(), name
    for name in ("report.md", "training_curves.png", "metrics_comparison.png",
                 "resolved-config.toml"):
        assert (run / name).is_file(), name
    report = (run / "report.md").read_text()
    assert "| LightGCN |" in report and "| GLTA |" in report
    assert f"LLM: `{tiny_model_dir}` (float32)." in report  # what stage 3 ran in
    # the stages' speed; a given dtype (float32 here) has no probe figures to compare with
    speed = re.search(r"Stage 3 trained at ([0-9.]+) GFLOP/s \(model FLOPs / training time\)\.\n",
                      report)
    assert speed and float(speed.group(1)) > 0 and "Stage 2 trained at" in report
    inspect = runner.invoke(app, ["inspect", str(run)]).stdout
    assert speed.group(0).strip() in inspect
    # the tiny model's attention kernels in training (chosen by the probe: dtype float32)
    attention = re.search(
        r"LLM attention in training: (sdpa|eager|eager_grouped) \(probe[^\n]*\)\.\n", report)
    assert attention and attention.group(0).strip().rstrip(".") in inspect
    # what stage 3's text cache kept (fp32 model: stored as computed, all within budget)
    assert re.search(r"Stage 3 kept the keys/values of [1-9]\d* texts \([0-9.]+ MiB of its "
                     r"2048 MiB budget\)\.\n", report), report
    assert load_config("default", run / "resolved-config.toml").graph.epochs == 4

    users_previous = previous_dir(run)  # a folder of the user's that happens to be named so
    users_previous.mkdir()
    (users_previous / "mine.txt").write_text("mine")
    again = runner.invoke(app, ["pipeline", *args])
    assert again.exit_code == 0, again.output
    assert "skipped: dataset, graph, item_text, user_item, evaluate" in again.stdout
    assert (users_previous / "mine.txt").read_text() == "mine"  # never removed
    (users_previous / "mine.txt").unlink()
    users_previous.rmdir()
    assert json.loads((run / "metrics.json").read_text()) == metrics

    changed = runner.invoke(app, ["pipeline", *args, "--eval.ks", "5,10,15"])
    assert changed.exit_code == 0, changed.output
    assert "evaluate: configuration changed ([eval] ks: [5, 10] -> [5, 10, 15])" in changed.stderr
    assert "skipped: dataset, graph, item_text, user_item" in changed.stdout
    rerun_metrics = json.loads((run / "metrics.json").read_text())
    assert "precision@15" in rerun_metrics["glta"]["test"]
    assert rerun_metrics["glta"]["test"]["precision@10"] == pytest.approx(
        metrics["glta"]["test"]["precision@10"], abs=1e-6)
    args = [*args[: args.index("--eval.ks")], *args[args.index("--eval.ks") + 2:]]
    args += ["--eval.ks", "5,10,15"]
    other_data = runner.invoke(app, ["pipeline", *args, "--prepare.seed", "5"])
    assert other_data.exit_code == 2
    assert "[prepare] seed: 0 -> 5" in other_data.stderr and "--restart" in other_data.stderr

    recs = runner.invoke(app, ["recommend", str(run), "--users", "u0,u7", "--k", "5",
                               "--out", str(tmp_path / "recs.csv")])
    assert recs.exit_code == 0, recs.output
    assert "(glta)" in recs.stderr
    lines = (tmp_path / "recs.csv").read_text().strip().splitlines()
    assert len(lines) == 11

    metrics = rerun_metrics
    # GLTA's recommendations for every user give back metrics.json's numbers.
    all_recs = tmp_path / "all.csv"
    assert runner.invoke(app, ["recommend", str(run), "--k", "10", "--out", str(all_recs)]
                         ).exit_code == 0
    exported = tmp_path / "exported"
    assert runner.invoke(app, ["data", "export", str(run), "--out", str(exported)]).exit_code == 0
    recomputed, users = metrics_from_recs(all_recs, exported / "test.csv", (5, 10))
    assert users == metrics["glta"]["test"]["users"]
    for name, value in recomputed.items():
        assert value == pytest.approx(metrics["glta"]["test"][name], abs=1e-6), name
    evaluated = runner.invoke(app, ["evaluate", str(run), "--model", "glta", "--k", "5,10",
                                    "--quiet"])
    assert evaluated.exit_code == 0, evaluated.output
    again_metrics = json.loads((run / "metrics.json").read_text())["glta"]["test"]
    for name, value in metrics["glta"]["test"].items():
        assert again_metrics[name] == pytest.approx(value, abs=1e-6), name
    info = runner.invoke(app, ["inspect", str(run), "--json"])
    summary = json.loads(info.stdout)
    assert summary["models"] == ["lightgcn", "glta"]
    assert all(summary["stages"][s]["done"] for s in ("dataset", "graph", "item_text",
                                                      "user_item", "evaluate"))
    assert all(a["matches_dataset"] for a in summary["artifacts"].values())
    table = runner.invoke(app, ["inspect", str(run)])
    assert table.exit_code == 0 and "pipeline stages done" in table.stdout

    restarted = runner.invoke(app, ["pipeline", *args, "--graph.epochs", "2", "--restart"])
    assert restarted.exit_code == 0, restarted.output
    assert not previous_dir(run).exists()
    assert load_config("default", run / "resolved-config.toml").graph.epochs == 2
    assert mine.read_text() == "mine" and ratings_csv.is_file()


def test_pipeline_evaluation_reuses_the_texts_stage3_kept(runner, ratings_csv, tiny_model_dir,
                                                          tmp_path, tiny_pipeline_args,
                                                          monkeypatch):
    # text first (the default preset): stage 3 computes each user's text once and keeps its
    # keys/values; the evaluation ranks valid and test on that runner instead of a new one
    from glta_align.testing import record_text_heads

    computed = record_text_heads(monkeypatch)
    run = tmp_path / "run"
    args = tiny_pipeline_args(ratings_csv, tiny_model_dir, run)
    result = runner.invoke(app, ["pipeline", *args, "--user_item.patience", "1"])
    assert result.exit_code == 0, result.output
    cfg = load_config("default", run / "resolved-config.toml").user_item
    assert cfg.prompt_order == "text-first" and cfg.use_profile and not cfg.use_predict
    assert computed and len(computed) == len(set(computed))
    # ... and the ranking it gave is the one a fresh runner gives (`glta evaluate`)
    metrics = json.loads((run / "metrics.json").read_text())["glta"]
    evaluated = runner.invoke(app, ["evaluate", str(run), "--model", "glta", "--split", "valid",
                                    "--quiet"])
    assert evaluated.exit_code == 0, evaluated.output
    again = json.loads((run / "metrics.json").read_text())["glta"]["valid"]
    assert again["ndcg@10"] == pytest.approx(metrics["valid"]["ndcg@10"], abs=1e-6)
    assert len(computed) > len(set(computed))  # the fresh runner computed them again


def test_pipeline_evaluation_ranks_from_the_slot_inputs_stage3_kept(
        runner, ratings_csv, tiny_model_dir, tmp_path, tiny_pipeline_args, monkeypatch):
    # valid and test prompts are the same (train history only), so the evaluation ranks
    # every split and mode from the slot inputs of the epoch stage 3 kept: no LLM pass
    from glta_align.recommender import GLTARecommender

    passes: list[tuple[bool, int]] = []  # (validation's recommender, users run)
    slot_hidden = GLTARecommender._slot_hidden

    def spy(self, users, *args, **kwargs):
        passes.append((self.keep_slots, len(users)))
        return slot_hidden(self, users, *args, **kwargs)

    monkeypatch.setattr(GLTARecommender, "_slot_hidden", spy)
    run = tmp_path / "run"
    args = tiny_pipeline_args(ratings_csv, tiny_model_dir, run)
    result = runner.invoke(app, ["pipeline", *args, "--user_item.patience", "1"])
    assert result.exit_code == 0, result.output
    assert load_config("default", run / "resolved-config.toml").eval.ranking == "select"
    assert any(kept for kept, _ in passes)  # stage 3's validation ran the LLM ...
    assert [n for kept, n in passes if not kept] == []  # ... the evaluation never did
    breakdown = json.loads((run / "breakdown.json").read_text())
    assert set(breakdown["glta_ranking"]["valid"]) == {"first_k", "mean"}
    # the figures are the ones a fresh recommender gives by running the LLM (`glta evaluate`
    # ranks in the mode the pipeline chose on valid)
    metrics = json.loads((run / "metrics.json").read_text())["glta"]
    for split in ("valid", "test"):
        evaluated = runner.invoke(app, ["evaluate", str(run), "--model", "glta", "--split",
                                        split, "--quiet"])
        assert evaluated.exit_code == 0, evaluated.output
        again = json.loads((run / "metrics.json").read_text())["glta"][split]
        for name in ("ndcg@10", "precision@10", "recall@10"):
            assert again[name] == pytest.approx(metrics[split][name], abs=1e-6), (split, name)
    assert [n for kept, n in passes if not kept]  # those did run it
    # with the other mode chosen, `glta evaluate` gives that mode's valid figure
    other = next(m for m in ("first_k", "mean") if m != breakdown["glta_ranking"]["chosen"])
    breakdown["glta_ranking"]["chosen"] = other
    (run / "breakdown.json").write_text(json.dumps(breakdown))
    assert runner.invoke(app, ["evaluate", str(run), "--model", "glta", "--split", "valid",
                               "--quiet"]).exit_code == 0
    again = json.loads((run / "metrics.json").read_text())["glta"]["valid"]
    assert again["ndcg@10"] == pytest.approx(breakdown["glta_ranking"]["valid"][other], abs=1e-6)
    # the evaluation recorded which glta code wrote metrics.json; the same code ranks
    # without a word, other code warns that the last digits may differ
    import warnings

    from glta_cli.runs import code_fingerprint

    assert breakdown["glta_code"] == code_fingerprint()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert runner.invoke(app, ["evaluate", str(run), "--model", "glta", "--split", "valid",
                                   "--quiet"]).exit_code == 0
    assert not [w for w in seen if "other glta code" in str(w.message)]
    breakdown["glta_code"] = "0123456789abcdef"
    (run / "breakdown.json").write_text(json.dumps(breakdown))
    with pytest.warns(UserWarning, match="other glta code.*0123456789abcdef"):
        assert runner.invoke(app, ["evaluate", str(run), "--model", "glta", "--split", "valid",
                                   "--quiet"]).exit_code == 0


def test_pipeline_bad_override_exit_2_nothing_written(runner, tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, ["pipeline", "--out", str(run), "--graph.epochz", "3"])
    assert result.exit_code == 2
    assert "--graph.epochz" in result.stderr and "valid keys of [graph]" in result.stderr
    assert not run.exists()
    with pytest.raises(ConfigError):
        resolve_pipeline_config("nope", None, [], run)


def test_precision_text_names_the_activations_of_int8_only():
    from glta_cli.pipeline import precision_text

    assert precision_text({"llm_precision": "int8", "llm_dtype": "bfloat16"}) == (
        "int8 with bfloat16 activations")
    assert precision_text({"llm_precision": "int8"}) == "int8"  # runs saved before llm_dtype
    assert precision_text({"llm_precision": "bfloat16", "llm_dtype": "bfloat16"}) == "bfloat16"
    assert precision_text({}) is None
