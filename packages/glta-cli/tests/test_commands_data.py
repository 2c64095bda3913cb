"""`glta data prepare | info | export` on a synthetic CSV written by the test."""

from __future__ import annotations

import csv
import json

from glta_cli.app import app


def test_prepare_info_export_round_trip(runner, prepared, ratings_csv, tmp_path):
    info = runner.invoke(app, ["data", "info", str(prepared)])
    assert info.exit_code == 0, info.output
    stats = json.loads(info.stdout)
    assert stats["users"] == 40 and stats["items"] == 30
    rows = list(csv.DictReader(ratings_csv.open(encoding="utf-8")))
    assert stats["total_interactions"] == len(rows)
    assert set(stats["interactions"]) == {"train", "valid", "test"}
    assert 0 < stats["density"] < 1
    out = tmp_path / "exported"
    result = runner.invoke(app, ["data", "export", str(prepared), "--out", str(out)])
    assert result.exit_code == 0, result.output
    exported = set()
    for split in ("train", "valid", "test"):
        part = list(csv.DictReader((out / f"{split}.csv").open(encoding="utf-8")))
        assert len(part) == stats["interactions"][split]
        exported |= {(r["user"], r["item"]) for r in part}
    assert exported == {(r["user_id"], r["item_id"]) for r in rows}  # original ids


def test_prepare_options_and_overrides(runner, ratings_csv, tmp_path):
    out = tmp_path / "ds2"
    result = runner.invoke(app, [
        "data", "prepare", str(ratings_csv), "--out", str(out), "--option", "user_col=user_id",
        "--option", "rating_col=rating",
        "--threshold", "4", "--split", "loo", "--max-users", "10", "--prepare.with_title", "false",
    ])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout.split("\nsaved")[0])
    assert stats["users"] == 10
    rows = list(csv.DictReader(ratings_csv.open(encoding="utf-8")))
    assert stats["total_interactions"] < sum(float(r["rating"]) >= 4 for r in rows)


def test_prepare_errors_exit_2_and_write_nothing(runner, tmp_path, ratings_csv):
    cases = [
        ([str(tmp_path / "missing.csv"), "--format", "csv"], "missing.csv"),
        ([str(ratings_csv), "--prepare.kcor", "3"], "valid keys of [prepare]"),
        ([str(ratings_csv), "--kcore", "1000"], ""),
        ([str(ratings_csv), "--option", "user_col=nope"], "nope"),
        ([str(ratings_csv), "--option", "oops"], "KEY=VALUE"),
    ]
    for args, fragment in cases:
        out = tmp_path / "never"
        result = runner.invoke(app, ["data", "prepare", *args, "--out", str(out)])
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.startswith("error:") and fragment in result.stderr
        assert result.stderr.strip().count("\n") == 0
        assert not out.exists()


def test_info_on_non_dataset_is_exit_2(runner, tmp_path):
    result = runner.invoke(app, ["data", "info", str(tmp_path)])
    assert result.exit_code == 2 and "not a prepared GLTA dataset" in result.stderr
