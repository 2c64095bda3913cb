"""benchmarks/align/ablations.py: joining the result files of drivers run in parallel."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "align" / "ablations.py"


def _run_entry(seed: int, row: str, ndcg: float) -> dict:
    metrics = {"glta": {"valid": {"ndcg@10": ndcg / 2}, "test": {"ndcg@10": ndcg}}}
    return {"dataset": "ml-100k", "seed": seed, "row": row, "seconds": 1.0,
            "commit": "abc1234", "date": "2026-12-04", "command": ["pipeline"],
            "result": {"metrics": metrics}}


def _fake_pipeline(ablations, monkeypatch, valid: float, test: float) -> list[list[str]]:
    """Replace the driver's ``_run`` by one that records each command and writes a
    metrics.json (GLTA's valid/test N@10) into the command's ``--out``; returns the record."""
    calls: list[list[str]] = []

    def fake_run(cmd, log):
        calls.append(cmd)
        out = Path(cmd[cmd.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(
            {"glta": {"valid": {"ndcg@10": valid}, "test": {"ndcg@10": test}}}))
        return 1.0

    monkeypatch.setattr(ablations, "_run", fake_run)
    return calls


def test_merge_joins_parallel_drivers_without_duplicates(tmp_path):
    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    a.write_text(json.dumps({"commands": ["python ablations.py --seeds 0"],
                             "runs": [_run_entry(0, "full", 0.30),
                                      _run_entry(0, "random-llm", 0.20)]}))
    b.write_text(json.dumps({"commands": ["python ablations.py --seeds 1"],
                             "runs": [_run_entry(1, "full", 0.40),
                                      _run_entry(0, "full", 0.99)]}))  # a duplicate key
    out = tmp_path / "all.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--rows", "", "--root", str(tmp_path / "runs"),
         "--out", str(out), "--merge", str(a), str(b)],
        capture_output=True, text=True, check=False, cwd=SCRIPT.parent)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    keys = [(r["seed"], r["row"]) for r in doc["runs"]]
    assert keys == [(0, "full"), (0, "random-llm"), (1, "full")]
    # the first file wins for a run recorded twice; the mean and spread cover both seeds
    cell = doc["summary"]["ml-100k"]["full"]["glta"]["test"]["ndcg@10"]
    assert cell["seeds"] == [0, 1]
    assert abs(cell["mean"] - 0.35) < 1e-12 and abs(cell["spread"] - 0.10) < 1e-12
    assert "python ablations.py --seeds 1" in doc["commands"]
    assert {"dataset": "ml-100k", "seed": 2, "row": "full"} in doc["missing"]
    assert {"dataset": "ml-100k", "seed": 1, "row": "full"} not in doc["missing"]


def test_merged_rows_keep_the_machine_they_ran_on(tmp_path):
    # a file of Xeon rows merged with a file of AMD rows: each row names its own machine, and
    # the joined file's machine (that of rows naming none) stays the first file's
    xeon = {"cpu": "Intel(R) Xeon(R) Processor", "cores": 2, "threads": 2}
    amd = {"cpu": "AMD EPYC", "cores": 2, "threads": 1}
    out = tmp_path / "all.json"
    out.write_text(json.dumps({"machine": xeon, "runs": [_run_entry(0, "full", 0.30)]}))
    other = tmp_path / "amd.json"
    other.write_text(json.dumps({"machine": amd, "runs": [_run_entry(0, "ar", 0.20)]}))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--rows", "", "--root", str(tmp_path / "runs"),
         "--out", str(out), "--merge", str(other)],
        capture_output=True, text=True, check=False, cwd=SCRIPT.parent)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["machine"] == xeon
    by_row = {r["row"]: r for r in doc["runs"]}
    assert "machine" not in by_row["full"]  # the file's own machine
    assert by_row["ar"]["machine"] == amd


def test_reread_adds_the_stage3_curve_only_when_metrics_match(tmp_path):
    root = tmp_path / "runs"
    entries = []
    for seed, recorded in ((0, 0.30), (1, 0.40)):
        run = root / "ml-100k" / f"seed{seed}" / "full"
        (run / "user_projector").mkdir(parents=True)
        on_disk = _run_entry(seed, "full", 0.30)["result"]["metrics"]  # seed 1 differs
        (run / "metrics.json").write_text(json.dumps(on_disk))
        (run / "user_projector" / "config.json").write_text(json.dumps(
            {"best_epoch": 1, "epochs_run": 2, "valid_history": [
                {"epoch": 0, "ndcg@10": 0.11}, {"epoch": 1, "ndcg@10": 0.15}]}))
        entry = _run_entry(seed, "full", recorded)
        entry["command"] = ["glta_cli.app", "pipeline", "--out", str(run)]
        entries.append(entry)
    out = tmp_path / "all.json"
    out.write_text(json.dumps({"commands": [], "runs": entries}))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--rows", "", "--root", str(root), "--out", str(out),
         "--reread"], capture_output=True, text=True, check=False, cwd=SCRIPT.parent)
    assert proc.returncode == 0, proc.stderr
    runs = json.loads(out.read_text())["runs"]
    assert runs[0]["result"]["stage3"]["valid_ndcg@10"] == [0.11, 0.15]
    assert runs[0]["result"]["metrics"] == entries[0]["result"]["metrics"]
    assert "stage3" not in runs[1]["result"]  # its metrics differ from the run's: untouched
    assert runs[1]["result"]["metrics"]["glta"]["test"]["ndcg@10"] == 0.40
    assert "other metrics than recorded" in proc.stdout


def test_merge_can_take_some_rows_under_new_names(tmp_path):
    # once the default preset turned mask_seen on, the recorded `mask-seen` runs are the
    # default's `full` runs: merged under that name, the old (plain) `full` runs left out
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"commands": ["python ablations.py --seeds 1,2"],
                               "runs": [_run_entry(1, "full", 0.30),
                                        _run_entry(1, "mask-seen", 0.37),
                                        _run_entry(2, "mask-seen", 0.33),
                                        _run_entry(1, "lr3e-4", 0.36)]}))
    new = tmp_path / "new.json"
    new.write_text(json.dumps({"commands": [], "runs": [_run_entry(0, "full", 0.35)]}))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--rows", "", "--root", str(tmp_path / "runs"),
         "--out", str(new), "--merge", str(old), "--merge-rows", "mask-seen",
         "--rename", "mask-seen=full"],
        capture_output=True, text=True, check=False, cwd=SCRIPT.parent)
    assert proc.returncode == 0, proc.stderr
    runs = json.loads(new.read_text())["runs"]
    assert [(r["seed"], r["row"], r.get("renamed_from")) for r in runs] == [
        (0, "full", None), (1, "full", "mask-seen"), (2, "full", "mask-seen")]
    assert runs[1]["result"]["metrics"]["glta"]["test"]["ndcg@10"] == 0.37
    bad = subprocess.run(
        [sys.executable, str(SCRIPT), "--rows", "", "--root", str(tmp_path / "runs"),
         "--out", str(new), "--merge", str(old), "--rename", "mask-seen"],
        capture_output=True, text=True, check=False, cwd=SCRIPT.parent)
    assert bad.returncode == 2 and "ROW=NEW" in bad.stderr


def test_rows_of_execution_settings_retrain_stage3_in_their_copy(tmp_path, align_script):
    # `attention-eager` leaves every stage key alone: its copy of `full` forgets stage 3 and
    # the evaluation (records, histories, resumable state, metrics) so both run again
    ablations = align_script("ablations")
    assert "attention-eager" in ablations.RETRAIN_STAGE3
    assert ablations.EXTRA_ROWS["attention-eager"] == ["--llm.attention", "eager"]
    run = tmp_path / "copy"
    stages = ("dataset", "graph", "item_text", "user_item", "evaluate")
    for stage in stages[1:]:
        (run / "state" / stage).mkdir(parents=True)
        (run / "state" / stage / "state.json").write_text("{}")
    (run / "state" / "pipeline").mkdir()
    (run / "state" / "pipeline" / "stages.json").write_text(json.dumps({
        "stages": {s: {"done": True, "key": s} for s in stages},
        "histories": {"graph": [1], "user_item": [2]}}))
    (run / "metrics.json").write_text("{}")
    ablations.forget_stage3(run)
    doc = json.loads((run / "state" / "pipeline" / "stages.json").read_text())
    assert sorted(doc["stages"]) == ["dataset", "graph", "item_text"]
    assert doc["histories"] == {"graph": [1]}
    assert not (run / "state" / "user_item").exists() and not (run / "state" / "evaluate").exists()
    assert (run / "state" / "graph" / "state.json").is_file()
    assert (run / "state" / "item_text" / "state.json").is_file()
    assert not (run / "metrics.json").exists()


# rows whose setting the default preset has since adopted (ablations.py's docstring says so)
ADOPTED = ("mask-seen", "mask-seen-random-llm")


def test_every_extra_row_resolves_to_the_setting_it_names(align_script):
    # a row's overrides are what the driver passes to `glta pipeline`: each must parse and
    # resolve against the default preset (a typo would only show hours into a grid)
    from glta_cli.config import load_config

    ablations = align_script("ablations")
    # every run of the grid adds GRID_BASE first (the paper's prompt order, which the default
    # preset has since replaced); the rows' own overrides come after it and win
    base = load_config("default", overrides=ablations.GRID_BASE)
    grid, default = base.sections["user_item"], load_config("default").sections["user_item"]
    assert (grid.prompt_order, grid.residual, grid.lr, grid.batch_size) == (
        "paper", False, 1e-3, 8)
    assert (default.prompt_order, default.residual, default.lr, default.batch_size) == (
        "text-first", True, 2e-4, 32)
    for row, args in ablations.EXTRA_ROWS.items():
        pairs = [(args[i], args[i + 1]) for i in range(0, len(args), 2)]
        overrides = [x for k, v in pairs if k != "--ablation" for x in (k, v)]
        cfg = load_config("default", overrides=[*ablations.GRID_BASE, *overrides])
        for key, _ in pairs:
            if key == "--ablation" or row in ADOPTED:
                continue
            section, name = key[2:].split(".")
            assert getattr(cfg.sections[section], name) != getattr(base.sections[section], name), \
                (row, key)
    lora = load_config("default", overrides=ablations.EXTRA_ROWS["lora"]).sections["user_item"]
    assert lora.lora == {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    assert ablations.COPY_FROM["lora-random-llm"] == "random-llm"
    assert ablations.EXTRA_ROWS["lora-random-llm"][-2:] == ["--ablation", "random-llm"]


def test_every_row_command_resolves_with_the_grid_pins(align_script):
    # the grid pins what the default preset changed (GRID_BASE), but an `--ablation NAME`
    # contradicted on its own command line is refused (exit 2), so a row whose ablation sets
    # a pinned key (no-pd: use_predict) drops that pin; every other pin stays
    from glta_cli.config import ABLATIONS, load_config

    ablations = align_script("ablations")
    pinned = load_config("default", overrides=ablations.GRID_BASE).sections["user_item"]
    assert pinned.use_predict is True
    assert load_config("default").sections["user_item"].use_predict is False
    for row in ablations.ABLATIONS:
        if row == "full":
            continue
        args = ablations.EXTRA_ROWS.get(row, ["--ablation", row])
        base = ablations.grid_base(args)
        overrides = [x for k, v in zip(args[0::2], args[1::2], strict=True) if k != "--ablation"
                     for x in (k, v)]
        name = args[args.index("--ablation") + 1] if "--ablation" in args else None
        cfg = load_config("default", overrides=[*base, *overrides, *(
            ["--run.ablation", name] if name else [])])  # raises on a contradiction
        if name is None or name == "random-llm":
            assert base == ablations.GRID_BASE, row
        ui = cfg.sections["user_item"]
        if row == "no-pd":
            assert "--user_item.use_predict" not in base and ui.use_predict is False
            assert (ui.prompt_order, ui.residual, ui.lr) == ("paper", False, 1e-3)
        for flag, value in zip(base[0::2], base[1::2], strict=True):  # the pins left stand
            section, key = flag[2:].split(".")
            if flag not in overrides and key not in ABLATIONS.get(name, {}).get(section, {}):
                assert str(getattr(cfg.sections[section], key)).lower() == value.lower() or \
                    float(getattr(cfg.sections[section], key)) == float(value), (row, flag)


def test_from_scratch_runs_a_row_without_its_full_run(tmp_path, align_script, monkeypatch):
    # without `full`, a row is skipped unless --from-scratch asks for it as its own pipeline:
    # then nothing is copied, the command carries the row's overrides after GRID_BASE, and
    # the recorded run says `from_scratch`
    ablations = align_script("ablations")
    calls = _fake_pipeline(ablations, monkeypatch, valid=0.1, test=0.2)
    row = "residual-lr1e-4-text-first-random-llm"
    common = ["--seeds", "1", "--rows", row, "--root", str(tmp_path / "runs")]
    skipped = tmp_path / "skipped.json"
    assert ablations.main([*common, "--out", str(skipped)]) == 0
    assert calls == [] and json.loads(skipped.read_text())["runs"] == []
    out = tmp_path / "scratch.json"
    assert ablations.main([*common, "--out", str(out), "--from-scratch"]) == 0
    assert len(calls) == 1
    cmd = calls[0]
    assert cmd[cmd.index("--out") + 1] == str(tmp_path / "runs" / "ml-100k" / "seed1" / row)
    assert cmd[-len(ablations.EXTRA_ROWS[row]):] == ablations.EXTRA_ROWS[row]
    assert ablations.GRID_BASE[0] in cmd
    assert not (tmp_path / "runs" / "ml-100k" / "seed1" / "full").exists()
    (run,) = json.loads(out.read_text())["runs"]
    assert run["from_scratch"] is True and run["row"] == row and run["seed"] == 1
    assert run["result"]["metrics"]["glta"]["test"]["ndcg@10"] == 0.2


def test_a_row_copies_its_own_source_without_a_full_run(tmp_path, align_script, monkeypatch):
    # at a seed with no `full` run, a row whose source (COPY_FROM) has finished is copied
    # from that source and run with its overrides; without the source it is skipped
    ablations = align_script("ablations")
    calls = _fake_pipeline(ablations, monkeypatch, valid=0.3, test=0.4)
    row = "no-pd-b32-lr2e-4-history-title"
    seed_dir = tmp_path / "runs" / "ml-100k" / "seed3"
    common = ["--seeds", "3", "--rows", row, "--root", str(tmp_path / "runs")]
    assert ablations.main([*common, "--out", str(tmp_path / "skipped.json")]) == 0
    assert calls == [] and not (seed_dir / row).exists()
    source = seed_dir / ablations.COPY_FROM[row]
    source.mkdir(parents=True)
    (source / "metrics.json").write_text("{}")
    (source / "marker").write_text("stages 1-2 of the source")
    out = tmp_path / "copied.json"
    assert ablations.main([*common, "--out", str(out)]) == 0
    assert (seed_dir / row / "marker").read_text() == "stages 1-2 of the source"
    assert not (seed_dir / "full").exists() and len(calls) == 1
    assert calls[0][-len(ablations.EXTRA_ROWS[row]):] == ablations.EXTRA_ROWS[row]
    assert "--user_item.history_text_tokens" in calls[0]
    (run,) = json.loads(out.read_text())["runs"]
    assert run["row"] == row and "from_scratch" not in run
    assert run["result"]["metrics"]["glta"]["test"]["ndcg@10"] == 0.4
