"""Text baselines from the CLI: `glta graph train --text-align`, `[eval] baselines`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from glta_cli.app import app
from glta_cli.config import ConfigError, load_config
from glta_cli.runs import load_dataset_dir, read_metrics

TRAIN = ["--epochs", "2", "--eval-every", "1", "--dim", "8", "--layers", "1",
         "--batch-size", "64", "--lr", "0.01", "--seed", "1", "--quiet"]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    """A tiny randomly initialised BERT saved as an encoder folder."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("enc") / "tiny-bert"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "item", "genre", "0", "1", "likes"]
    BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(str(folder))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=8, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=16,
                         max_position_embeddings=32)).save_pretrained(str(folder))
    return folder


def _csv(path: Path, text_for) -> Path:
    lines = ["user_id,item_id,rating,text"]
    for u in range(30):
        for i in range(u % 5, 30, 3):
            lines.append(f"u{u},i{i},5,{text_for(i)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _prepare(runner, tmp_path, text_for, name="ds") -> Path:
    out = tmp_path / name
    result = runner.invoke(app, ["data", "prepare", str(_csv(tmp_path / f"{name}.csv", text_for)),
                                 "--format", "csv", "--out", str(out), "--seed", "3",
                                 "--option", "text_col=text"])
    assert result.exit_code == 0, result.output
    return out


def test_infonce_with_text_for_some_items_says_how_many(runner, tmp_path, encoder):
    data_dir = _prepare(runner, tmp_path, lambda i: f"item genre {i % 2}" if i % 3 else "")
    data = load_dataset_dir(data_dir)
    with_text = sum(1 for t in data.item_text if t)
    assert 0 < with_text < data.num_items
    result = runner.invoke(app, ["graph", "train", str(data_dir), "--out", str(tmp_path / "r"),
                                 *TRAIN, "--text-align", "infonce", "--text-encoder",
                                 str(encoder), "--text-weight", "0.5"])
    assert result.exit_code == 0, result.output
    assert f"{with_text} of {data.num_items} items have text" in result.stdout
    cached = list((tmp_path / "r" / "text_embeddings").glob("item-text-*.safetensors"))
    assert len(cached) == 1


def test_unknown_encoder_and_no_item_text_are_exit_2(runner, tmp_path, encoder):
    data_dir = _prepare(runner, tmp_path, lambda i: "item genre 0")
    result = runner.invoke(app, ["graph", "train", str(data_dir), "--out", str(tmp_path / "r"),
                                 *TRAIN, "--text-align", "infonce", "--text-encoder",
                                 str(tmp_path / "no-such-encoder")])
    assert result.exit_code == 2
    assert "text encoder" in result.output and len(result.output.strip().splitlines()) == 1
    bare = _prepare(runner, tmp_path, lambda i: "", name="bare")
    result = runner.invoke(app, ["graph", "train", str(bare), "--out", str(tmp_path / "r2"),
                                 *TRAIN, "--text-align", "infonce", "--text-encoder",
                                 str(encoder)])
    assert result.exit_code == 2
    assert "has text" in result.output and len(result.output.strip().splitlines()) == 1


def _profiles(path: Path, data, users) -> None:
    lines = [json.dumps({"meta": {"fingerprint": data.fingerprint}})]
    lines += [json.dumps({"user": u, "profile": "likes genre 1", "predict": "item"})
              for u in users]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_rlmrec_con_reads_a_profiles_file(runner, tmp_path, encoder):
    data_dir = _prepare(runner, tmp_path, lambda i: f"item genre {i % 2}")
    data = load_dataset_dir(data_dir)
    _profiles(tmp_path / "profiles.jsonl", data, range(0, data.num_users, 2))
    result = runner.invoke(app, ["graph", "train", str(data_dir), "--out", str(tmp_path / "r"),
                                 *TRAIN, "--text-align", "rlmrec-con", "--text-encoder",
                                 str(encoder), "--profiles", str(tmp_path / "profiles.jsonl")])
    assert result.exit_code == 0, result.output
    half = (data.num_users + 1) // 2
    assert f"{half} of {data.num_users} users have a profile" in result.stdout
    result = runner.invoke(app, ["graph", "train", str(data_dir), "--out", str(tmp_path / "r3"),
                                 *TRAIN, "--text-align", "rlmrec-con", "--text-encoder",
                                 str(encoder), "--profiles", str(tmp_path / "missing.jsonl")])
    assert result.exit_code == 2 and "missing.jsonl" in result.output


def test_config_baselines_option():
    cfg = load_config("default", None, ["--eval.baselines", "lightgcn+,RLMRec-Con"])
    assert cfg.eval.baselines == ["lightgcn+", "rlmrec-con"]
    assert load_config("smoke", None, {}).eval.baselines == []
    assert load_config("default", None, {}).eval.baselines == ["lightgcn+"]
    for off in ("none", ""):  # either turns the default preset's baselines off
        assert load_config("default", None, ["--eval.baselines", off]).eval.baselines == []
    with pytest.raises(ConfigError, match="baselines"):
        load_config("default", None, ["--eval.baselines", "lightgcn++"])


def test_run_baselines_writes_metrics_and_skips_on_rerun(runner, tmp_path, encoder):
    from glta_cli.baselines import run_baselines

    data = load_dataset_dir(_prepare(runner, tmp_path, lambda i: f"item genre {i % 2}"))
    run = tmp_path / "run"
    run.mkdir()
    _profiles(run / "profiles.jsonl", data, range(data.num_users))
    cfg = load_config("smoke", None, {
        "graph": {"epochs": 2, "dim": 8, "layers": 1, "batch_size": 64, "eval_every": 1,
                  "text_encoder": str(encoder)},
        "eval": {"baselines": ["lightgcn+", "rlmrec-con"], "ks": [5, 10]},
    })

    def no_llm():
        raise AssertionError("the profiles are complete: no LLM needed")

    notes: list[str] = []
    seconds = run_baselines(cfg, data, run, get_llm=no_llm, log=notes.append)
    assert set(seconds) == {"lightgcn+", "rlmrec-con"}
    metrics = read_metrics(run)
    for name in ("lightgcn+", "rlmrec-con"):
        assert set(metrics[name]) == {"valid", "test"}
        assert "precision@10" in metrics[name]["valid"]
        assert "precision@10" in metrics[name]["test"]
    assert any("users have a profile" in n for n in notes)
    assert (run / "baselines" / "rlmrec-con" / "graph" / "model.safetensors").is_file()
    notes.clear()
    again = run_baselines(cfg, data, run, get_llm=no_llm, log=notes.append)
    assert again == seconds and all("already done" in n for n in notes) and len(notes) == 2
    # a run from an older glta ranked only the test split: the rerun ranks valid, no training
    valid = metrics["lightgcn+"]["valid"]
    doc = json.loads((run / "metrics.json").read_text())
    del doc["lightgcn+"]["valid"]
    (run / "metrics.json").write_text(json.dumps(doc))
    weights = run / "baselines" / "lightgcn+" / "graph" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    notes.clear()
    assert run_baselines(cfg, data, run, get_llm=no_llm, log=notes.append) == seconds
    assert notes[0] == "baseline lightgcn+: already trained, ranked valid"
    assert read_metrics(run)["lightgcn+"]["valid"] == valid
    assert weights.stat().st_mtime_ns == stamp


def test_report_shows_the_baselines_in_table_2_order():
    from glta_cli.report import render_report, summary_rows

    row = {"precision@10": 0.1, "recall@20": 0.2, "ndcg@10": 0.3}
    metrics = {"glta": {"test": row}, "rlmrec-con": {"test": row}, "lightgcn": {"test": row},
               "lightgcn+": {"test": row}}
    rows = summary_rows(metrics, "test", {"lightgcn+": 3.0})
    assert [r[0] for r in rows] == ["LightGCN", "LightGCN+", "RLMRec-Con", "GLTA"]
    text = render_report(metrics, split="test", stage_seconds={}, train_seconds={})
    assert "| LightGCN+ |" in text and "text-alignment loss" in text


def test_pipeline_baselines_option_reaches_the_config(runner, tmp_path):
    result = runner.invoke(app, ["pipeline", "--out", str(tmp_path / "run"),
                                 "--baselines", "lightgcn+,bert4rec"])
    assert result.exit_code == 2
    assert "[eval] baselines: bert4rec not one of lightgcn+, rlmrec-con" in result.output


def test_pipeline_with_an_unreachable_encoder_stops_before_training(runner, tmp_path,
                                                                   monkeypatch):
    import glta_graph.text_align as ta

    monkeypatch.setattr(ta, "hub_reachable", lambda timeout=5.0: False)
    run = tmp_path / "run"
    result = runner.invoke(app, ["pipeline", "--out", str(run), "--baselines", "lightgcn+",
                                 "--graph.text_encoder", "nobody-here/not-a-cached-encoder"])
    assert result.exit_code == 2
    assert "'nobody-here/not-a-cached-encoder'" in result.output
    assert "hub cannot be reached" in result.output
    assert not run.exists()  # checked before the run directory, not after stage 3


def test_run_baselines_without_any_item_text_skips_with_a_note(runner, tmp_path):
    from glta_cli.baselines import run_baselines

    data = load_dataset_dir(_prepare(runner, tmp_path, lambda i: ""))
    cfg = load_config("default", None, {"eval": {"baselines": ["lightgcn+"]}})
    notes: list[str] = []
    assert run_baselines(cfg, data, tmp_path / "run", get_llm=lambda: None,
                         log=notes.append) == {}
    assert notes == [f"baselines lightgcn+ skipped: none of the {data.num_items} items has text"]
