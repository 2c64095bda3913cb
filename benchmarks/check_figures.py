"""Check that every figure in the results tables comes from a committed result file.

    uv run python benchmarks/check_figures.py            # README.md and benchmarks/RESULTS.md
    uv run python benchmarks/check_figures.py --verbose  # also list where each figure was found

A *figure* is a number in a cell of a Markdown table (every column but the first, which
names the row: a shape, a dataset, a seed). Each table is checked against the result files
its section names: the section runs from the heading above the table to the next heading,
and a file is named by its path or file name (``benchmarks/gllm/results/x.jsonl``,
``results/x.jsonl``, ``x.jsonl``) or by a ``*`` pattern (``results/cuda_h200_*.jsonl``).
Result files are the ``.json``, ``.jsonl`` and ``.txt`` files under ``benchmarks/`` (those
git tracks when the tree is a git checkout). A figure is *sourced* when a number in one of
the named files rounds to it at the printed number of decimals; a unit allows one change
of scale (``%``: x100; ``min``/``h``: from seconds; ``ms``: from seconds; ``MB``/``GB``/...:
between decimal and binary units); ``9 min 31 s`` is read as 571 seconds. A table whose
section names no result file has every figure unsourced.

Not checked: the section of RESULTS.md headed ``## History`` (figures kept with their date
and commit, from code since changed or from files never committed), prose outside tables,
numbers inside backticks (commands, options) and numbers glued to letters (``sm_80``,
``SmolLM2``, ``P@10``). Exit status 1 lists every unsourced figure as
``FILE:LINE: FIGURE  | the table row``.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "benchmarks/RESULTS.md")
SOURCE_SUFFIXES = (".json", ".jsonl", ".txt")
HISTORY_HEADING = re.compile(r"^##\s+History\b", re.IGNORECASE)
MAX_DECIMALS = 6

# "9 min 31 s" first; then a number not glued to a word, optionally followed by a unit.
_MIN_SEC = re.compile(r"(?<![\w.])(\d+)\s*min\s+(\d+(?:\.\d+)?)\s*s\b")
_NUMBER = re.compile(
    r"(?<![\w@^.\-/])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?"
    r"(?:\s*(x|%|ms|s|min|h|MB|GB|KB|GiB|MiB|KiB|k|M))?(?![\w@^])(?!/\d)"
)
# Any number in a text source (a log).
_ANY_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")
# Result-file names in a section's text: a path or file name with a result suffix.
_FILE_REF = re.compile(r"[\w./*-]+\.(?:jsonl|json|txt)\b")
_BYTES = (1.0, 1000.0, 1 / 1000, 1 / 1e6, 1 / 1024, 1 / 2**20, 1024 / 1000, 1000 / 1024)
_UNIT_SCALES: dict[str | None, tuple[float, ...]] = {
    "%": (1.0, 100.0),
    "ms": (1.0, 1000.0),
    "min": (1.0, 1 / 60),
    "h": (1.0, 1 / 60, 1 / 3600),
    "min+s": (1.0, 1 / 60),
    **dict.fromkeys(("KB", "MB", "GB", "KiB", "MiB", "GiB"), _BYTES),
}


@dataclass(frozen=True)
class Figure:
    """One number printed in a table cell, with the result files its section names."""

    doc: str
    line: int
    text: str  # as printed, e.g. "0.4053", "3.78x", "9 min 31 s"
    value: float
    decimals: int
    row: str
    unit: str | None = None
    sources: tuple[str, ...] = ()


def source_files(root: Path = ROOT) -> list[Path]:
    """Result files under ``root/benchmarks``: the git-tracked ones when git knows the tree."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--", "benchmarks"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        files = [root / p for p in out.split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        files = [p for p in (root / "benchmarks").rglob("*") if p.is_file()]
    return sorted(p for p in files if p.suffix in SOURCE_SUFFIXES and p.is_file())


def _numbers_in_text(text: str) -> Iterator[float]:
    for m in _ANY_NUMBER.finditer(text):
        try:
            yield float(m.group(0).replace(",", ""))
        except ValueError:
            continue


def _numbers_in_json(obj: object) -> Iterator[float]:
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        if math.isfinite(obj):
            yield float(obj)
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _numbers_in_json(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _numbers_in_json(value)


def file_numbers(path: Path) -> list[float]:
    """Every number in one result file: JSON numbers (not numbers written inside strings,
    which are notes), or every number of a text file (a log)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".json":
        try:
            return list(_numbers_in_json(json.loads(text)))
        except json.JSONDecodeError:
            return list(_numbers_in_text(text))
    if path.suffix == ".jsonl":
        values: list[float] = []
        for line in text.splitlines():
            try:
                values.extend(_numbers_in_json(json.loads(line)))
            except json.JSONDecodeError:
                values.extend(_numbers_in_text(line))
        return values
    return list(_numbers_in_text(text))


def _key(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}"


class SourceIndex:
    """The numbers of each result file, looked up at a printed precision and unit."""

    def __init__(self, root: Path, files: Iterable[Path]) -> None:
        self.files = {p.relative_to(root).as_posix(): p for p in files}
        self._numbers: dict[str, list[float]] = {}
        self._keys: dict[tuple[str, float, int], set[str]] = {}
        self._resolved: dict[tuple[str, ...], list[str]] = {}

    def resolve(self, names: Iterable[str]) -> list[str]:
        """Result files (repository-relative paths) that names or ``*`` patterns match
        (each list of names matched once: every figure of a section asks with the same)."""
        names = tuple(names)
        if names not in self._resolved:
            self._resolved[names] = self._match(names)
        return list(self._resolved[names])

    def _match(self, names: tuple[str, ...]) -> list[str]:
        out: list[str] = []
        for name in names:
            name = name.lstrip("./")
            for rel in self.files:
                if rel not in out and (
                    fnmatch.fnmatch(rel, name) or fnmatch.fnmatch(rel, "*/" + name)
                ):
                    out.append(rel)
        return out

    def holds(self, rel: str, fig: Figure) -> bool:
        """Whether a number of ``rel`` prints as ``fig`` (after one unit change)."""
        if rel not in self._numbers:
            self._numbers[rel] = file_numbers(self.files[rel])
        d = min(fig.decimals, MAX_DECIMALS)
        want = _key(fig.value, d)
        for scale in _UNIT_SCALES.get(fig.unit, (1.0,)):
            cache = (rel, scale, d)
            if cache not in self._keys:
                self._keys[cache] = {_key(abs(v * scale), d) for v in self._numbers[rel]}
            if want in self._keys[cache]:
                return True
        return False


def _strip_code(cell: str) -> str:
    return re.sub(r"`[^`]*`", " ", cell).replace("**", "").replace("*", "")


def _sections(lines: list[str]) -> list[tuple[int, int, bool]]:
    """(first line, end line, is History) of each heading-delimited section, 0-based."""
    starts = [0]
    fence = False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fence = not fence
        elif not fence and line.startswith("#") and i:
            starts.append(i)
    out = []
    history = False
    for a, b in zip(starts, [*starts[1:], len(lines)], strict=True):
        if lines[a].startswith("## "):
            history = bool(HISTORY_HEADING.match(lines[a]))
        out.append((a, b, history))
    return out


def table_figures(doc: Path, name: str) -> list[Figure]:
    """The figures in the Markdown tables of ``doc`` (outside a ``## History`` section)."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    figures: list[Figure] = []
    for a, b, history in _sections(lines):
        if history:
            continue
        section = lines[a:b]
        refs = tuple(dict.fromkeys(_FILE_REF.findall("\n".join(section))))
        fence = False
        header_next = True
        for i, line in enumerate(section, start=a + 1):
            if line.startswith("```"):
                fence = not fence
            if fence or not line.startswith("|"):
                header_next = True
                continue
            if header_next:  # a table's first row is its header
                header_next = False
                continue
            if re.fullmatch(r"\|[\s:|-]+\|?", line.strip()):
                continue
            for cell in line.strip().strip("|").split("|")[1:]:
                figures.extend(_cell_figures(_strip_code(cell), name, i, line.strip(), refs))
    return figures


def _cell_figures(text: str, doc: str, line: int, row: str, refs: tuple[str, ...]) -> list[Figure]:
    out = []
    for m in _MIN_SEC.finditer(text):
        secs = int(m.group(1)) * 60 + float(m.group(2))
        out.append(Figure(doc, line, m.group(0), secs, 0, row, "min+s", refs))
    for m in _NUMBER.finditer(_MIN_SEC.sub(" ", text)):
        digits, frac, unit = m.group(1), m.group(2) or "", m.group(3)
        value = float(digits.replace(",", "") + frac)
        decimals = len(frac) - 1 if frac else 0
        out.append(Figure(doc, line, m.group(0).strip(), value, decimals, row, unit, refs))
    return out


def check(
    root: Path = ROOT, docs: Iterable[str] = DOCS
) -> tuple[list[Figure], list[tuple[Figure, str]]]:
    """(unsourced figures, sourced figures with the file that holds each) over ``docs``."""
    index = SourceIndex(root, source_files(root))
    missing: list[Figure] = []
    found: list[tuple[Figure, str]] = []
    for name in docs:
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: document to check does not exist")
        for fig in table_figures(path, name):
            src = next((r for r in index.resolve(fig.sources) if index.holds(r, fig)), None)
            if src is None:
                missing.append(fig)
            else:
                found.append((fig, src))
    return missing, found


def main(argv: list[str] | None = None) -> int:
    """Print the unsourced figures; exit status 1 when there are any."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root")
    parser.add_argument("--verbose", action="store_true", help="also list sourced figures")
    args = parser.parse_args(argv)
    missing, found = check(args.root)
    if args.verbose:
        for fig, src in found:
            print(f"{fig.doc}:{fig.line}: {fig.text}  <- {src}")
    for fig in missing:
        named = ", ".join(fig.sources) if fig.sources else "no result file named in its section"
        print(f"{fig.doc}:{fig.line}: {fig.text}  | {fig.row[:90]}  [{named[:80]}]")
    total = len(missing) + len(found)
    if missing:
        print(f"{len(missing)} of {total} table figures not found in the result files named")
        return 1
    print(f"all {total} table figures found in committed result files under benchmarks/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
