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
    settings = ("--data.source", str(csv_path), "--data.format", "csv",
                "--data.options", '{text_col = "text"}',
                "--llm.model", str(tiny_model_dir), "--llm.dtype", "float32",
                "--graph.epochs", "5", "--graph.dim", "16", "--item_text.epochs", "1",
                "--user_item.epochs", "1", "--user_item.profile_new_tokens", "4",
                "--eval.ks", "5,10")
    proc = _time("--out", str(out), "--cache", str(tmp_path / "cache"), "--json", str(result),
                 "--note", "test", "--", *settings)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(result.read_text())
    assert doc["returncode"] == 0 and doc["note"] == "test"
    assert doc["wall_s"] > 0 and doc["user_cpu_s"] > 0 and doc["peak_rss_kb"] > 100_000
    assert set(doc["stage_seconds"]) >= {"dataset", "graph", "item_text", "user_item", "evaluate"}
    assert doc["metrics"]["glta"]["test"]["users"] > 0
    assert len(doc["stage3"]["valid_history"]) == doc["stage3"]["epochs_run"] == 1
    assert doc["stage3"]["text_cache"]["texts"] > 0  # what stage 3's text cache kept
    assert doc["profile_generation_s"] is not None  # the log got plain [profiles] lines
    assert doc["machine"]["cpu"] and doc["commit"]
    assert doc["pipeline_command"].startswith("glta pipeline --out ")
    assert (tmp_path / "cache").is_dir()  # the run's XDG_CACHE_HOME
    # --from-run: a copy of that run from stage 3 on (stages 1-2 and profile text reused);
    # the source run is left as it was
    before = (out / "metrics.json").read_bytes()
    again, result2 = tmp_path / "again", tmp_path / "timing2.json"
    proc = _time("--out", str(again), "--from-run", str(out), "--cache", str(tmp_path / "cache"),
                 "--json", str(result2), "--", *settings)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc2 = json.loads(result2.read_text())
    assert "from stage 3 on" in doc2["what"] and doc2["returncode"] == 0
    assert doc2["profile_generation_s"] is None  # the copied texts were reused
    assert len(doc2["stage3"]["valid_history"]) == 1
    assert doc2["metrics"]["glta"]["test"]["users"] == doc["metrics"]["glta"]["test"]["users"]
    assert "[item_text]" not in (tmp_path / "again.log").read_text()  # stage 2 not rerun
    assert (out / "metrics.json").read_bytes() == before
    bad = _time("--out", str(tmp_path / "x"), "--from-run", str(tmp_path / "cache"),
                "--json", str(tmp_path / "t3.json"))
    assert bad.returncode == 2 and "not a pipeline run directory" in bad.stderr
    assert not (tmp_path / "x").exists()


def test_refuses_an_existing_run_directory(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("a user's file")
    proc = _time("--out", str(out), "--json", str(tmp_path / "t.json"))
    assert proc.returncode == 2 and "exists" in proc.stderr
    assert (out / "keep.txt").read_text() == "a user's file"
    assert not (tmp_path / "t.json").exists()


def test_the_commit_is_that_of_the_code_the_interpreter_runs(align_script, tmp_path):
    tp = align_script("time_pipeline")
    assert tp.code_commit() == tp.git_commit()  # this environment runs this checkout
    # an interpreter that cannot tell: this script's checkout
    assert tp.code_commit(str(tmp_path / "no-python")) == tp.git_commit()
