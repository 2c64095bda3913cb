"""benchmarks/align/ablation_table.py: ablation rows over seeds, paired with their source runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "align" / "ablation_table.py"
KEYS = ("precision@10", "ndcg@10")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          check=False, cwd=SCRIPT.parent)


def _table(tmp_path: Path, runs: list[dict]) -> tuple[subprocess.CompletedProcess, dict]:
    """Run the script on an ablation JSON holding ``runs``: its process and written JSON."""
    src, out = tmp_path / "abl.json", tmp_path / "table.json"
    src.write_text(json.dumps({"runs": runs}))
    proc = _run(str(src), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads(out.read_text())


def _entry(seed: int, row: str, test: float, valid: float, out: str | None = None) -> dict:
    cmd = ["glta_cli.app", "pipeline", "--out", out or f"/runs/ml-100k/seed{seed}/{row}"]
    activity = {"Q1 (1-5 train items)": {"ndcg@10": test / 2},
                "Q2 (5-9 train items)": {"ndcg@10": test * 2}}
    return {"dataset": "ml-100k", "seed": seed, "row": row, "command": cmd,
            "result": {"metrics": {"glta": {"test": {k: test for k in KEYS},
                                            "valid": {k: valid for k in KEYS}}},
                       "breakdown": {"models": {"glta": {"activity": activity}}}}}


def test_rows_pair_with_the_run_they_were_copied_from(tmp_path):
    runs = [
        # seed 0: full made in seed0/full, ablations copied from it
        _entry(0, "full", 0.40, 0.20), _entry(0, "no-ua", 0.30, 0.15),
        _entry(0, "random-llm", 0.42, 0.19),
        # seed 2: the recorded `full` ran elsewhere; seed2/full holds a second run
        # (full-repeat), which the seed's ablations were copied from
        _entry(2, "full", 0.34, 0.18, out="/runs/ml-100k/seed2/mask-seen"),
        _entry(2, "full-repeat", 0.37, 0.20, out="/runs/ml-100k/seed2/full"),
        _entry(2, "no-ua", 0.27, 0.16),
        # random-llm at seed 2 with no recorded source directory beside it
        _entry(2, "random-llm", 0.35, 0.19, out="/elsewhere/seed2/random-llm"),
        # a row ablations.py copies from random-llm
        _entry(0, "lr-cosine-random-llm", 0.44, 0.19),
        # seed 1: runs of an earlier preset merged under today's names; seed1/full now holds
        # a later run, which the renamed control was not copied from
        {**_entry(1, "full", 0.36, 0.19, out="/runs/ml-100k/seed1/mask-seen"),
         "renamed_from": "mask-seen"},
        {**_entry(1, "random-llm", 0.38, 0.19, out="/runs/ml-100k/seed1/mask-seen-random-llm"),
         "renamed_from": "mask-seen-random-llm"},
        _entry(1, "full-repeat", 0.30, 0.19, out="/runs/ml-100k/seed1/full"),
        # a later second random-llm run, made in seed1/random-llm (the directory the renamed
        # control's own copy once came from): never the source of the earlier runs
        {**_entry(1, "random-llm-repeat", 0.33, 0.19, out="/runs/ml-100k/seed1/random-llm"),
         "renamed_from": "random-llm", "date": "2026-12-05"},
    ]
    proc, doc = _table(tmp_path, runs)
    table = doc["table"]["ml-100k"]
    main_rows = [ln for ln in proc.stdout.splitlines() if ln.startswith("| `") and "`:" in ln]
    shown = [ln.split("`")[1] for ln in main_rows]
    assert shown == ["full", "full-repeat", "random-llm", "random-llm-repeat", "no-ua",
                     "lr-cosine-random-llm"]
    ua = table["no-ua"]
    assert ua["seeds"] == [0, 2] and ua["sources"] == ["full", "full-repeat"]  # by directory
    assert ua["delta"]["test N@10"]["values"] == pytest.approx([-0.10, -0.10])
    assert ua["ratio"]["test P@10"]["values"] == pytest.approx([0.75, 0.27 / 0.37])
    assert ua["test N@10"]["mean"] == pytest.approx(0.285)
    # per activity quintile, paired the same way: Q1 holds half the test value, Q2 twice it
    assert ua["activity_delta"]["Q1"]["values"] == pytest.approx([-0.05, -0.05])
    assert ua["activity_delta"]["Q2"]["values"] == pytest.approx([-0.20, -0.20])
    assert ua["paper_ratio"] == ["P@10", pytest.approx(0.0647 / 0.0821)]
    rep = table["full-repeat"]  # a second run of full pairs with full: run-to-run variation
    assert rep["sources"] == ["full", "full"]
    assert rep["delta"]["test N@10"]["values"] == pytest.approx([-0.06, 0.03])
    # no source directory recorded beside it: the seed's `full` row
    assert table["random-llm"]["sources"] == ["full", "full", "full"]
    assert table["random-llm"]["delta"]["test N@10"]["values"] == pytest.approx(
        [0.02, 0.02, 0.01])  # seed 1: against the renamed full, not the later full-repeat
    # the later run pairs as its old row was copied (from seed1/full, the full-repeat run)
    assert table["random-llm-repeat"]["sources"] == ["full-repeat"]
    assert table["random-llm-repeat"]["delta"]["test N@10"]["values"] == pytest.approx([0.03])
    assert table["lr-cosine-random-llm"]["sources"] == ["random-llm"]
    assert table["lr-cosine-random-llm"]["delta"]["test N@10"]["values"] == pytest.approx([0.02])
    assert "full" not in table["full"]["sources"] and table["full"]["delta"] == {}
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("| `no-ua`"))
    assert "-0.1000 (0.0000)" in line and "P@10 0.79" in line  # paired test N@10, paper ratio


def test_the_first_file_recording_a_run_wins_and_bad_input_is_named(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"runs": [_entry(0, "full", 0.40, 0.20)]}))
    b.write_text(json.dumps({"runs": [_entry(0, "full", 0.10, 0.10),
                                      _entry(1, "full", 0.30, 0.10)]}))
    out = tmp_path / "t.json"
    assert _run(str(a), str(b), "--out", str(out)).returncode == 0
    assert json.loads(out.read_text())["table"]["ml-100k"]["full"]["test N@10"]["values"] == [
        0.40, 0.30]
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    proc = _run(str(bad))
    assert proc.returncode == 2 and "bad.json" in proc.stderr
    proc = _run(str(tmp_path / "absent.json"))
    assert proc.returncode == 2 and "absent.json" in proc.stderr


def test_what_renames_a_rows_description(tmp_path):
    a = tmp_path / "a.json"
    a.write_text(json.dumps({"runs": [_entry(0, "full", 0.40, 0.20)]}))
    out = tmp_path / "t.json"
    proc = _run(str(a), "--out", str(out), "--what", "full=today's default preset")
    assert proc.returncode == 0 and "`full`: today's default preset |" in proc.stdout
    assert json.loads(out.read_text())["table"]["ml-100k"]["full"]["what"] == (
        "today's default preset")
    proc = _run(str(a), "--what", "full")
    assert proc.returncode == 2 and "ROW=TEXT" in proc.stderr


def test_pair_sets_a_row_against_another_rows_run_of_its_seed(tmp_path):
    # both rows copied from `full`; --pair sets the batch row against `no-pd` instead
    runs = [_entry(0, "full", 0.40, 0.20), _entry(0, "no-pd", 0.42, 0.21),
            _entry(0, "no-pd-b32-lr2e-4", 0.43, 0.25), _entry(1, "full", 0.38, 0.19),
            _entry(1, "no-pd-b32-lr2e-4", 0.37, 0.18)]  # seed 1 has no no-pd run
    src, out = tmp_path / "a.json", tmp_path / "t.json"
    src.write_text(json.dumps({"runs": runs}))
    assert _run(str(src), "--out", str(out)).returncode == 0
    row = json.loads(out.read_text())["table"]["ml-100k"]["no-pd-b32-lr2e-4"]
    assert row["sources"] == ["full", "full"]
    assert _run(str(src), "--out", str(out), "--pair", "no-pd-b32-lr2e-4=no-pd").returncode == 0
    table = json.loads(out.read_text())["table"]["ml-100k"]
    row = table["no-pd-b32-lr2e-4"]
    assert row["sources"] == ["no-pd", None]
    assert row["delta"]["valid N@10"]["values"] == pytest.approx([0.04])
    assert row["delta"]["test N@10"]["values"] == pytest.approx([0.01])
    assert table["no-pd"]["sources"] == ["full"]  # other rows keep their copy source
    proc = _run(str(src), "--pair", "no-pd-b32-lr2e-4")
    assert proc.returncode == 2 and "ROW=BASE" in proc.stderr


def test_runs_from_another_machine_are_named_under_the_table(tmp_path):
    src, out = tmp_path / "abl.json", tmp_path / "t.json"
    amd = {"cpu": "AMD EPYC", "cores": 2, "threads": 1}
    ar = {**_entry(0, "ar", 0.30, 0.15), "machine": amd}
    src.write_text(json.dumps({"machine": {"cpu": "Intel Xeon", "cores": 2, "threads": 2},
                               "runs": [_entry(0, "full", 0.40, 0.20),
                                        _entry(1, "full", 0.42, 0.21), ar]}))
    proc = _run(str(src), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    table = json.loads(out.read_text())["table"]["ml-100k"]
    assert table["full"]["machines"] == ["Intel Xeon", "Intel Xeon"]
    assert table["ar"]["machines"] == ["AMD EPYC"]
    assert "Runs on Intel Xeon except `ar` seed 0: AMD EPYC." in proc.stdout
    # one machine only: no such line
    _, one = _table(tmp_path, [_entry(0, "full", 0.40, 0.20)])
    assert one["table"]["ml-100k"]["full"]["machines"] == [None]


def test_pretrained_rows_set_beside_their_random_weight_controls(tmp_path):
    def with_tail(entry: dict, hits: float) -> dict:
        entry["result"]["breakdown"]["models"]["glta"]["popularity"] = {
            "head (> 5)": {"hit_rate@20": 0.9},
            "tail (<= 5 train interactions)": {"hit_rate@20": hits}}
        return entry

    runs = [
        with_tail(_entry(0, "full", 0.40, 0.20), 0.01),
        with_tail(_entry(0, "random-llm", 0.42, 0.19), 0.03),
        _entry(1, "full", 0.36, 0.21), _entry(1, "random-llm", 0.35, 0.22),
        _entry(2, "full", 0.30, 0.20),  # no control at seed 2: left out of the pair
        # seed 3: random-llm was copied from seed3/full, where a second full run (recorded
        # as full-repeat) ran: that is the run it is set against, as in the main table
        _entry(3, "full", 0.20, 0.10, out="/runs/ml-100k/seed3/mask-seen"),
        _entry(3, "full-repeat", 0.34, 0.20, out="/runs/ml-100k/seed3/full"),
        _entry(3, "random-llm", 0.33, 0.19),
        _entry(0, "lora", 0.41, 0.22), _entry(0, "lora-random-llm", 0.40, 0.20),
        _entry(0, "no-text-random-llm", 0.40, 0.20),  # its pretrained row not recorded
    ]
    proc, doc = _table(tmp_path, runs)
    pairs = doc["pretrained_vs_random"]["ml-100k"]
    assert set(pairs) == {"full", "lora"}
    full = pairs["full"]
    assert full["control"] == "random-llm" and full["seeds"] == [0, 1, 3]
    assert full["test N@10"]["values"] == pytest.approx([-0.02, 0.01, 0.01])
    assert full["valid N@10"]["values"] == pytest.approx([0.01, -0.01, 0.01])
    assert full["pretrained ahead on valid"] == 2
    # activity quintiles: Q1 holds half the test value, Q2 twice it (see _entry)
    assert full["activity"]["Q1"]["values"] == pytest.approx([-0.01, 0.005, 0.005])
    assert full["activity"]["Q2"]["values"] == pytest.approx([-0.04, 0.02, 0.02])
    assert full["tail hit@20"]["values"] == pytest.approx([-0.02])  # seed 0 only has it
    assert pairs["lora"]["control"] == "lora-random-llm"
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("| `full` (`random-llm`)"))
    assert "| 2 of 3 |" in line and "+0.0000 (0.0300)" in line


def test_pretrained_of_names_the_row_a_control_belongs_to(align_script):
    table = align_script("ablation_table")
    assert table.pretrained_of("random-llm") == "full"
    assert table.pretrained_of("random-llm-repeat") == "full-repeat"
    assert table.pretrained_of("residual-lr1e-4-text-first-random-llm") == \
        "residual-lr1e-4-text-first"
    assert table.pretrained_of("no-ua") is None


def test_glta_set_against_the_baselines_of_its_own_run(tmp_path):
    def with_baselines(entry: dict, lightgcn: tuple[float, float],
                       plus: tuple[float, float] | None = None) -> dict:
        metrics = entry["result"]["metrics"]
        metrics["lightgcn"] = {"valid": {"ndcg@10": lightgcn[0]},
                               "test": {"ndcg@10": lightgcn[1]}}
        if plus is not None:
            metrics["lightgcn+"] = {"valid": {"ndcg@10": plus[0]}, "test": {"ndcg@10": plus[1]}}
        return entry

    runs = [with_baselines(_entry(0, "full", 0.40, 0.20), (0.21, 0.42), (0.22, 0.43)),
            with_baselines(_entry(1, "full", 0.36, 0.21), (0.20, 0.35), (0.20, 0.37)),
            with_baselines(_entry(2, "full", 0.30, 0.20), (0.19, 0.31)),  # no LightGCN+
            _entry(0, "ar", 0.10, 0.05)]  # no baselines recorded: left out
    proc, doc = _table(tmp_path, runs)
    full = doc["glta_vs_baselines"]["ml-100k"]["full"]
    assert set(doc["glta_vs_baselines"]["ml-100k"]) == {"full"}
    assert full["lightgcn"]["seeds"] == [0, 1, 2]
    assert full["lightgcn"]["test N@10"]["values"] == pytest.approx([-0.02, 0.01, -0.01])
    assert full["lightgcn"]["valid N@10"]["values"] == pytest.approx([-0.01, 0.01, 0.01])
    assert full["lightgcn"]["ahead on test"] == 1 and full["lightgcn"]["ahead on valid"] == 2
    assert full["lightgcn+"]["seeds"] == [0, 1]
    assert full["lightgcn+"]["test N@10"]["values"] == pytest.approx([-0.03, -0.01])
    line = next(ln for ln in proc.stdout.splitlines()
                if ln.startswith("| `full` | LightGCN |"))
    assert "| 0,1,2 |" in line and "| 2 of 3 |" in line and "| 1 of 3 |" in line
