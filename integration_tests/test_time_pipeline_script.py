"""benchmarks/align/time_pipeline.py: one timed pipeline run from scratch, as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "align" / "time_pipeline.py"


def _time(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, cwd=SCRIPT.parent, check=False)


def test_times_a_fresh_run_and_records_stages_metrics_and_machine(
        tmp_path, tiny_model_dir, synthetic_csv):
    csv_path = synthetic_csv(tmp_path / "ratings.csv")
    out, result = tmp_path / "run", tmp_path / "timing.json"
    proc = _time("--out", str(out), "--cache", str(tmp_path / "cache"), "--json", str(result),
                 "--note", "test", "--",
                 "--data.source", str(csv_path), "--data.format", "csv",
                 "--data.options", '{text_col = "text"}',
                 "--llm.model", str(tiny_model_dir), "--llm.dtype", "float32",
                 "--graph.epochs", "5", "--graph.dim", "16", "--item_text.epochs", "1",
                 "--user_item.epochs", "1", "--user_item.profile_new_tokens", "4",
                 "--eval.ks", "5,10")
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(result.read_text())
    assert doc["returncode"] == 0 and doc["note"] == "test"
    assert doc["wall_s"] > 0 and doc["user_cpu_s"] > 0 and doc["peak_rss_kb"] > 100_000
    assert set(doc["stage_seconds"]) >= {"dataset", "graph", "item_text", "user_item", "evaluate"}
    assert doc["metrics"]["glta"]["test"]["users"] > 0
    assert len(doc["stage3"]["valid_history"]) == doc["stage3"]["epochs_run"] == 1
    assert doc["profile_generation_s"] is not None  # the log got plain [profiles] lines
    assert doc["machine"]["cpu"] and doc["commit"]
    assert doc["pipeline_command"].startswith("glta pipeline --out ")
    assert (tmp_path / "cache").is_dir()  # the run's XDG_CACHE_HOME


def test_refuses_an_existing_run_directory(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("a user's file")
    proc = _time("--out", str(out), "--json", str(tmp_path / "t.json"))
    assert proc.returncode == 2 and "exists" in proc.stderr
    assert (out / "keep.txt").read_text() == "a user's file"
    assert not (tmp_path / "t.json").exists()
