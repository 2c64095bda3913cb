"""benchmarks/check_figures.py: every table figure in README.md and RESULTS.md has a source."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _checker():
    path = ROOT / "benchmarks" / "check_figures.py"
    spec = importlib.util.spec_from_file_location("check_figures", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_figures"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


check_figures = _checker()


def test_every_table_figure_of_the_docs_has_a_committed_source():
    missing, found = check_figures.check(ROOT)
    listing = "\n".join(f"{f.doc}:{f.line}: {f.text} | {f.row[:80]}" for f in missing)
    assert not missing, f"table figures without a source in the result files named:\n{listing}"
    assert len(found) > 50  # the checker did read the tables


def _tree(tmp_path: Path, results_md: str) -> Path:
    res = tmp_path / "benchmarks" / "x" / "results"
    res.mkdir(parents=True)
    # A number written inside a string is a note, not a measurement: "0.2891" is not a source.
    run = {"p@10": 0.28904, "wall_s": 571, "speedup": 3.781, "note": "0.2891"}
    (res / "run.json").write_text(json.dumps(run))
    (res / "log.jsonl").write_text('{"seconds": 6.198}\n{"seconds": 0.0642}\n')
    (tmp_path / "README.md").write_text("# t\n\nNo tables.\n")
    (tmp_path / "benchmarks" / "RESULTS.md").write_text(results_md)
    return tmp_path


TABLE = """# Results

## Run (`benchmarks/x/results/run.json`, `log.jsonl`)

| model | P@10 | wall | speed-up | naive |
|---|---:|---:|---:|---:|
| GLTA | 0.2890 | 9 min 31 s | **3.78x** | 6.198 s (64.2 ms) |
"""


def test_rounded_figures_found_and_units_read(tmp_path):
    missing, found = check_figures.check(_tree(tmp_path, TABLE))
    assert not missing
    assert {f.text for f, _ in found} == {"0.2890", "9 min 31 s", "3.78x", "6.198 s", "64.2 ms"}


def test_a_figure_without_a_source_is_listed(tmp_path):
    root = _tree(tmp_path, TABLE.replace("0.2890", "0.2891"))
    missing, _ = check_figures.check(root)
    assert [(f.text, f.line) for f in missing] == [("0.2891", 7)]
    assert check_figures.main(["--root", str(root)]) == 1


def test_a_table_whose_section_names_no_file_is_unsourced(tmp_path):
    text = TABLE.replace(" (`benchmarks/x/results/run.json`, `log.jsonl`)", "")
    missing, found = check_figures.check(_tree(tmp_path, text))
    assert len(missing) == 5 and not found


@pytest.mark.parametrize(
    "heading", ["## History", "## History (2026-11-27, before commit 0ccc3e2)"]
)
def test_history_section_is_skipped(tmp_path, heading):
    text = TABLE + f"\n{heading}\n\n| model | P@10 |\n|---|---:|\n| old | 0.1852 |\n"
    missing, _ = check_figures.check(_tree(tmp_path, text))
    assert not missing
    text = text.replace(heading, "## Later")
    missing, _ = check_figures.check(_tree(tmp_path / "b", text))
    assert [f.text for f in missing] == ["0.1852"]


def test_source_names_resolve_by_path_file_name_or_pattern_once_per_list(tmp_path, monkeypatch):
    folder = tmp_path / "benchmarks" / "a" / "results"
    files = [folder / n for n in ("x_1.json", "x_2.json", "y.txt")]
    index = check_figures.SourceIndex(tmp_path, files)
    calls = []
    real = check_figures.fnmatch.fnmatch
    monkeypatch.setattr(check_figures.fnmatch, "fnmatch", lambda *a: calls.append(a) or real(*a))
    names = ("results/x_*.json", "y.txt", "benchmarks/a/results/x_1.json")
    first = index.resolve(names)
    assert first == ["benchmarks/a/results/x_1.json", "benchmarks/a/results/x_2.json",
                     "benchmarks/a/results/y.txt"]
    matched = len(calls)
    first.append("changed")  # a caller's list is its own
    assert index.resolve(list(names)) == first[:3] and len(calls) == matched  # matched once
    assert index.resolve(("missing.json",)) == []
