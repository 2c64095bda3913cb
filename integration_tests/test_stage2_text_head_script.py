"""benchmarks/align/stage2_text_head.py: stage 2 with and without the descriptions' gradient."""

from __future__ import annotations

import json


def test_times_both_variants_on_a_runs_graph_with_the_same_losses(
        align_script, tmp_path, tiny_model_dir, synthetic_csv):
    from glta_graph.data import load_dataset
    from glta_graph.train import LightGCNConfig, train_lightgcn

    script = align_script("stage2_text_head")
    data = load_dataset(synthetic_csv(tmp_path / "ratings.csv"), format="csv", text_col="text")
    run = tmp_path / "run"
    data.save(run / "dataset")
    train_lightgcn(data, LightGCNConfig(epochs=2, dim=16), run)
    out = tmp_path / "result.json"
    script.main([str(run), "--instances", "16", "--rounds", "2", "--threads", "1",
                 "--llm", str(tiny_model_dir), "--dtype", "float32", "--json", str(out)])
    doc = json.loads(out.read_text())
    assert set(doc["seconds"]) == {"whole", "text_head"}
    assert all(len(v) == 2 and min(v) > 0 for v in doc["seconds"].values())
    assert doc["steps"] >= 1 and doc["ratio_whole_over_text_head"] > 0
    # the same model computed in two calls: the same losses up to float rounding
    assert doc["max_abs_loss_diff"] < 1e-4
    assert len(doc["losses"]["whole"]) == len(doc["losses"]["text_head"]) == doc["steps"]
    assert doc["precision"] == "float32" and doc["commit"]
    # a run without a saved config: the default preset's stage 2, on --instances instances
    assert doc["settings"]["head"] == "projected" and doc["settings"]["description_tokens"] == 16
    assert doc["settings"]["max_instances"] == 16
    assert doc["steps_with_descriptions_without_gradient"] == {"whole": 0,
                                                               "text_head": doc["steps"]}
    # the module's runner class is put back after each variant
    from glta_align import item_text
    from glta_align.splice import SoftPromptRunner

    assert item_text.SoftPromptRunner is SoftPromptRunner
