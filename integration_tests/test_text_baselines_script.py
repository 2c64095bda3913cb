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
    assert len(soft) == 6 and all(g["loss"] == "softmax" and g["l2"] == 1e-4 for g in soft)
    assert {g["lr"] for g in soft} == {0.001, 0.01}
    assert {g["temperature"] for g in soft} == {0.05, 0.1, 0.2}
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
