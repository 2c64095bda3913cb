"""Cross-package pipeline on a slice of ml-latest-small: LightGCN -> stage 2 -> stage 3 ->
evaluation, every hand-off through the run directory's checkpoint folders.

Uses a tiny random Llama (hidden 64, 2 layers) with SmolLM2's tokenizer, saved to a local
folder and loaded back with ``load_llm(folder)`` like any user model.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from glta_align import (
    GLTARecommender,
    ItemTextConfig,
    UserItemConfig,
    load_llm,
    load_tokenizer,
    tiny_llm,
    train_item_text,
    train_user_item,
)
from glta_graph import (
    LightGCNConfig,
    evaluate_embeddings,
    load_graph_embeddings,
    train_lightgcn,
    update_metrics,
)
from glta_graph.data import Interactions, PrepareConfig, load_dataset


def _shared() -> Path:
    env = os.environ.get("GLTA_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture
def ml_slice(tmp_path) -> Path:
    src = _shared() / "ml-latest-small"
    if not (src / "ratings.csv").is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{src}: reference data missing on CI")
        pytest.skip(f"{src}: reference data not present")
    out = tmp_path / "ml-slice"
    out.mkdir()
    with (src / "ratings.csv").open(newline="") as fh, (out / "ratings.csv").open(
            "w", newline="") as dst:
        rows = csv.reader(fh)
        writer = csv.writer(dst)
        writer.writerow(next(rows))
        writer.writerows(r for r in rows if int(r[0]) <= 40)  # the first 40 users
    (out / "movies.csv").write_bytes((src / "movies.csv").read_bytes())
    return out


def test_graph_stage2_stage3_evaluate(ml_slice, tmp_path):
    data = load_dataset(ml_slice, config=PrepareConfig(k_core=5, seed=0))
    run = tmp_path / "run"
    data.save(run / "dataset")
    train_lightgcn(data, LightGCNConfig(epochs=3, eval_every=0), run)
    eu, ei = load_graph_embeddings(run, data.fingerprint)
    lg = evaluate_embeddings(eu, ei, data, split="test", ks=(5, 10, 20))
    update_metrics(run, "lightgcn", "test", lg)

    folder = tmp_path / "tiny-llm"
    tiny = tiny_llm(load_tokenizer(), seed=0)
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    llm = load_llm(folder, dtype="float32")

    data = Interactions.load(run / "dataset")  # stages read only what the run dir holds
    s2 = train_item_text(data, run, ItemTextConfig(epochs=1, max_instances=12, batch_size=4,
                                                   llm=str(folder)), llm=llm)
    s3 = train_user_item(data, run, UserItemConfig(epochs=1, batch_size=8, num_slots=5,
                                                   profile_new_tokens=4, llm=str(folder),
                                                   dtype="float32"), llm=llm)
    assert s2.steps == 3 and s3.steps == 5
    rec = GLTARecommender.from_run(run)  # loads the tiny model from the folder in the config
    m = rec.evaluate("test", ks=(5, 10, 20))
    update_metrics(run, "glta", "test", m)
    assert m["users"] == lg["users"]  # the same users as LightGCN
    saved = json.loads((run / "metrics.json").read_text())
    assert set(saved) == {"lightgcn", "glta"}
    for key in ("precision@5", "precision@10", "ndcg@5", "ndcg@10", "recall@20"):
        assert 0.0 <= saved["glta"]["test"][key] <= 1.0
    for name in ("graph", "item_projector", "user_projector", "gllm_head"):
        assert (run / name / "model.safetensors").is_file()
