"""`glta pipeline` end to end in real subprocesses: SIGKILL mid-stage then resume; smoke preset.

The fast test uses a tiny random Llama saved as a model folder (built here) and a synthetic
CSV; the smoke preset (ML-100K slice + SmolLM2-135M) is marked slow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from glta_cli.testing import tiny_pipeline_args


def _glta(*args: str) -> list[str]:
    return [sys.executable, "-m", "glta_cli.app", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["COLUMNS"] = "120"
    return env


def test_pipeline_resumes_after_sigkill_mid_stage(tmp_path, tiny_model_dir, synthetic_csv):
    csv_path = synthetic_csv(tmp_path / "ratings.csv")
    run = tmp_path / "run"
    # the tiny pipeline with a LightGCN long enough to be killed in, printing its progress
    args = _glta("pipeline", *tiny_pipeline_args(csv_path, tiny_model_dir, run, quiet=False),
                 "--graph.epochs", "150", "--graph.eval_every", "0", "--graph.batch_size", "512")
    state = run / "state" / "graph" / "state.json"
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while proc.poll() is None and not state.is_file():
        time.sleep(0.02)
    assert proc.poll() is None, "the pipeline ended before LightGCN saved its first state"
    time.sleep(0.3)  # let it train a few more epochs, mid-stage
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    done_epochs = json.loads(state.read_text())["epoch"]
    assert done_epochs < 149, "the kill did not land mid-stage"
    assert not (run / "graph").exists() and not (run / "metrics.json").exists()

    rerun = subprocess.run(args, env=_env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "graph: resuming from the saved state" in rerun.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["lightgcn"]["test"]["users"] > 0 and metrics["glta"]["test"]["users"] > 0
    graph_cfg = json.loads((run / "graph" / "config.json").read_text())
    assert graph_cfg["epochs_run"] == 150
    assert (run / "report.md").is_file() and (run / "training_curves.png").is_file()
    stages = json.loads((run / "state" / "pipeline" / "stages.json").read_text())["stages"]
    assert all(stages[s]["done"] for s in ("dataset", "graph", "item_text", "user_item"))

    # texts made in another precision (as when LoRA moves an int8 LLM to bf16) are the
    # pipeline's own file: a rerun of stage 3 regenerates them instead of stopping
    profiles = run / "profiles.jsonl"
    lines = profiles.read_text(encoding="utf-8").splitlines()
    meta = json.loads(lines[0])
    assert meta["meta"]["precision"] == "float32"
    meta["meta"]["precision"] = "int8"
    profiles.write_text("\n".join([json.dumps(meta), *lines[1:]]) + "\n", encoding="utf-8")
    again = subprocess.run([*args, "--user_item.lr", "0.002"], env=_env(), capture_output=True,
                           text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "regenerating it" in again.stderr + again.stdout
    assert json.loads(profiles.read_text(encoding="utf-8").splitlines()[0])["meta"][
        "precision"] == "float32"


@pytest.mark.slow
def test_smoke_preset_end_to_end(tmp_path):
    run = tmp_path / "smoke"
    t0 = time.perf_counter()
    result = subprocess.run(_glta("pipeline", "--preset", "smoke", "--out", str(run)),
                            env=_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    for model in ("lightgcn", "glta"):
        assert metrics[model]["test"]["users"] > 0
    assert "GLTA" in result.stdout and (run / "report.md").is_file()
    print(f"smoke preset: {seconds:.1f} s")
