"""benchmarks/graph/text_baselines.py: what each baseline is tuned over."""

from __future__ import annotations


def test_each_model_is_tuned_around_lightgcns_selected_setting(graph_script):
    tb = graph_script("text_baselines")
    chosen = {"lr": 0.02, "l2": 1e-4}
    assert tb.tuning_grid("lightgcn", chosen) == tb.LIGHTGCN_GRID
    text = tb.tuning_grid("lightgcn+", chosen)
    assert len(text) == len(tb.TEXT_GRID) == 6
    assert all(g["lr"] == 0.02 and g["l2"] == 1e-4 and "text_weight" in g for g in text)
    # the sampled-softmax LightGCN keeps the selected l2 and tunes its own lr and temperature
    soft = tb.tuning_grid("lightgcn-softmax", chosen)
    assert len(soft) == 10 and all(g["loss"] == "softmax" and g["l2"] == 1e-4 for g in soft)
    assert {g["lr"] for g in soft} == {0.001, 0.01}
    assert {g["temperature"] for g in soft} == {0.05, 0.1, 0.2, 0.4, 0.8}
    assert tb.MODELS["lightgcn-softmax"] == "none"  # no text


def test_a_setting_reaches_the_lightgcn_config(graph_script):
    # every key of a grid setting is a LightGCNConfig field, so a typo cannot pass silently
    import dataclasses

    from glta_graph import LightGCNConfig

    tb = graph_script("text_baselines")
    fields = {f.name for f in dataclasses.fields(LightGCNConfig)}
    for model in tb.MODELS:
        for setting in tb.tuning_grid(model, {"lr": 0.01, "l2": 1e-3}):
            assert set(setting) <= fields, (model, setting)


def test_results_are_the_finals_of_the_setting_valid_selects_today(graph_script, tmp_path):
    # the grid grew after the finals of temperature 0.2 ran; valid now prefers 0.4 (finals
    # at seeds 0-1 so far): the model's result is those, not a mix of both settings
    import json

    tb = graph_script("text_baselines")

    def row(phase, t, seed, valid, test=None):
        r = {"phase": phase, "model": "lightgcn-softmax", "seed": seed,
             "setting": {"loss": "softmax", "temperature": t}, "valid": {"ndcg@10": valid}}
        return {**r, "test": {"ndcg@10": test}} if test is not None else r

    path = tmp_path / "rows.jsonl"
    rows = [row("tune", 0.1, 0, 0.17), row("tune", 0.2, 0, 0.20),
            row("final", 0.2, 0, 0.20, 0.40), row("final", 0.2, 1, 0.21, 0.41),
            row("tune", 0.4, 0, 0.22), row("final", 0.4, 0, 0.22, 0.43),
            row("final", 0.4, 1, 0.23, 0.44)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, finals = tb.final_rows(path)
    got = finals["lightgcn-softmax"]
    assert [(r["setting"]["temperature"], r["seed"]) for r in got] == [(0.4, 0), (0.4, 1)]
    # before the 0.4 finals existed, the 0.2 finals were the result
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:5]))
    assert {r["setting"]["temperature"]
            for r in tb.final_rows(path)[1]["lightgcn-softmax"]} == {0.2}
