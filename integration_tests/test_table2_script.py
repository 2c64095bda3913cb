"""benchmarks/align/table2.py: Table 2's rows joined from baseline and ablation result files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "align" / "table2.py"
KEYS = ("precision@5", "precision@10", "ndcg@5", "ndcg@10", "recall@20")


def _test(value: float) -> dict:
    return {k: value for k in KEYS}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          check=False, cwd=SCRIPT.parent)


def test_table2_means_spreads_missing_and_row_order(tmp_path):
    base = tmp_path / "baselines.jsonl"
    lines = [{"dataset": "ml-100k", "model": "lightgcn", "seed": 0, "phase": "tune",
              "valid": {}},  # a tuning row: no test, not read
             {"dataset": "ml-100k", "model": "lightgcn+", "seed": 0, "test": _test(0.30)},
             {"dataset": "ml-100k", "model": "lightgcn", "seed": 0, "test": _test(0.40)},
             {"dataset": "ml-100k", "model": "lightgcn", "seed": 1, "test": _test(0.44)}]
    base.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    abl = tmp_path / "ablation.json"
    runs = [{"dataset": "ml-100k", "seed": s, "row": row, "commit": "abc",
             "result": {"metrics": {"glta": {"test": _test(v), "valid": _test(0.1)}}}}
            for s, row, v in [(0, "full", 0.20), (1, "full", 0.26), (0, "random-llm", 0.9)]]
    abl.write_text(json.dumps({"machine": {"cpu": "Test CPU"}, "runs": runs}))
    out = tmp_path / "t2.json"
    proc = _run("--baselines", str(base), "--glta", str(abl), "--seeds", "0,1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    table = [ln for ln in proc.stdout.splitlines() if ln.startswith("| ml-100k")]
    assert [ln.split("|")[1].strip() for ln in table] == [
        "ml-100k, LightGCN", "ml-100k, LightGCN+ (text InfoNCE, MiniLM)", "ml-100k, GLTA"]
    doc = json.loads(out.read_text())
    glta = doc["table"]["ml-100k"]["glta"]  # only `full` runs: random-llm's 0.9 is not read
    assert glta["N@10"]["values"] == [0.20, 0.26] and glta["cpu"] == ["Test CPU"]
    assert abs(glta["N@10"]["mean"] - 0.23) < 1e-12 and abs(glta["N@10"]["spread"] - 0.06) < 1e-12
    assert abs(doc["table"]["ml-100k"]["lightgcn"]["P@10"]["mean"] - 0.42) < 1e-12
    assert {"dataset": "ml-100k", "model": "lightgcn+", "seeds": [1]} in doc["missing"]
    assert {"dataset": "ml-100k", "model": "rlmrec-con", "seeds": [0, 1]} in doc["missing"]
    assert doc["paper"]["rows"]["glta"]["MovieLens"] == [0.0821, 0.1403]


def test_table2_bad_input_names_the_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"dataset": "ml-100k"}\nnot json\n')
    proc = _run("--baselines", str(bad))
    assert proc.returncode != 0 and f"{bad}:2" in proc.stderr
    proc = _run("--glta", str(tmp_path / "absent.json"))
    assert proc.returncode == 2 and "absent.json" in proc.stderr
