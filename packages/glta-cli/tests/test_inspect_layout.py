"""`glta inspect` readable at 80 columns: metrics as rows, stages in pipeline order."""

from __future__ import annotations

import json

from glta_cli.app import app
from glta_cli.runs import metric_rows

KS = (5, 10, 20)


def _metrics(models, splits):
    names = [f"{m}@{k}" for m in ("precision", "recall", "ndcg", "hit_rate", "map")
             for k in KS]
    return {model: {split: {**{n: 0.1 + i / 1000 for i, n in enumerate(names)}, "users": 943}
                    for split in splits} for model in models}


def _run(tmp_path, metrics):
    run = tmp_path / "run"
    (run / "state" / "pipeline").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(metrics))
    stages = {name: {"done": True, "seconds": float(i)} for i, name in
              enumerate(["evaluate", "graph", "item_text", "user_item", "dataset"])}
    (run / "state" / "pipeline" / "stages.json").write_text(json.dumps({"stages": stages}))
    return run


def test_metric_rows_order_and_shape():
    metrics = _metrics(["lightgcn", "glta"], ["test", "valid"])
    metrics["lightgcn+"] = {"valid": {"ndcg@10": 0.5}}
    metrics["notes"] = "free text"
    columns, rows = metric_rows(metrics)
    assert columns == [("lightgcn", "valid"), ("lightgcn", "test"), ("glta", "valid"),
                       ("glta", "test"), ("lightgcn+", "valid")]
    names = [n for n, _ in rows]
    assert names[:3] == ["hit_rate@5", "hit_rate@10", "hit_rate@20"]
    assert names[-1] == "users" and len(names) == 16
    ndcg10 = dict(rows)["ndcg@10"]
    assert ndcg10[-1] == 0.5 and dict(rows)["precision@5"][-1] is None


def test_inspect_fits_80_columns(runner, tmp_path):
    run = _run(tmp_path, _metrics(["lightgcn", "glta", "lightgcn+"], ["valid", "test"]))
    result = runner.invoke(app, ["inspect", str(run)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "…" not in out
    assert max(len(line) for line in out.splitlines()) <= 80
    # six (model, split) columns do not fit: one row per metric, model and split
    assert "ndcg@10" in out and "lightgcn+" in out and "0.1070" in out
    positions = [out.index(f" {s} ") for s in ("dataset", "graph", "item_text", "user_item",
                                               "evaluate")]
    assert positions == sorted(positions)


def test_inspect_wide_layout_for_few_columns(runner, tmp_path):
    run = _run(tmp_path, _metrics(["lightgcn", "glta"], ["valid", "test"]))
    result = runner.invoke(app, ["inspect", str(run)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in result.stdout
    row = next(line for line in lines if line.strip("│ ").startswith("ndcg@10"))
    assert row.count("0.1") == 4  # one value per (model, split) on the metric's row


def test_inspect_shows_the_precision_probe(runner, tmp_path):
    run = _run(tmp_path, {})
    folder = run / "user_projector"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "llm_precision": "bfloat16",
        "llm_precision_probe": {"choice": "bfloat16", "source": "cache",
                                "gflops": {"float32": 333.2, "bfloat16": 1961.0}}}))
    result = runner.invoke(app, ["inspect", str(run)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert ("LLM precision bfloat16 (measured earlier; GFLOP/s: float32 333, bfloat16 1961)"
            in result.stdout)



def test_inspect_names_an_int8_llms_activation_dtype(runner, tmp_path):
    run = _run(tmp_path, {})
    folder = run / "user_projector"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "llm_precision": "int8", "llm_dtype": "bfloat16",
        "llm_precision_probe": {"choice": "int8", "source": "probe",
                                "gflops": {"float32": 176.0, "int8": 566.0}}}))
    result = runner.invoke(app, ["inspect", str(run)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert ("LLM precision int8 with bfloat16 activations (measured; GFLOP/s: float32 176, "
            "int8 566)" in result.stdout)


def test_inspect_shows_the_stages_speed(runner, tmp_path):
    run = _run(tmp_path, {})
    probe = {"choice": "bfloat16", "source": "probe",
             "gflops": {"float32": 333.2, "bfloat16": 1961.0}}
    for folder, rate in ((run / "user_projector", 980.5),
                         (run / "item_text" / "item_projector", 20.25)):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({
            "llm_precision": "bfloat16", "llm_precision_probe": probe,
            "achieved_gflops": rate, "timed_steps": 8, "steps": 8}))
    result = runner.invoke(app, ["inspect", str(run)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert ("Stage 3 trained at 980 GFLOP/s (model FLOPs / training time), 50% of the bfloat16 "
            "GEMM rate the precision probe measured (1961 GFLOP/s)." in result.stdout)
    assert "Stage 2 trained at 20.2 GFLOP/s (model FLOPs / training time), 1% of" in result.stdout
