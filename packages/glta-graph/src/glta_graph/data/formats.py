"""The format registry (`FORMATS`), detection from file names, and reading a source."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glta_graph.data.interactions import DatasetError
from glta_graph.data.jsonlines import (
    detect_json_format,
    is_goodreads_csv,
    is_json_lines,
    peek_json_keys,
    read_amazon2018,
    read_amazon2023,
    read_goodreads,
)
from glta_graph.data.lightgcn_split import read_lightgcn
from glta_graph.data.movielens import read_ml1m, read_ml100k, read_ml_latest
from glta_graph.data.raw import RawInteractions
from glta_graph.data.recbole import read_recbole
from glta_graph.data.tabular import read_csv, read_hf, read_parquet

__all__ = ["FORMATS", "DataFormat", "detect_format", "read_source"]


@dataclass(frozen=True)
class DataFormat:
    """One supported source format.

    Attributes:
        name: the ``format=`` name.
        reader: ``reader(path, **options) -> RawInteractions``.
        description: the files it reads, one line.
    """

    name: str
    reader: Callable[..., RawInteractions]
    description: str

    @property
    def options(self) -> tuple[str, ...]:
        """Keyword options the reader accepts (besides the path)."""
        params = list(inspect.signature(self.reader).parameters.values())[1:]
        return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


FORMATS: dict[str, DataFormat] = {
    f.name: f
    for f in (
        DataFormat("ml-100k", read_ml100k, "MovieLens 100K: u.data (+ u.item, u.genre)"),
        DataFormat("ml-1m", read_ml1m, "MovieLens 1M/10M: ratings.dat (+ movies.dat), '::'"),
        DataFormat("ml-latest", read_ml_latest,
                   "MovieLens latest(-small)/20M/25M/32M: ratings.csv (+ movies.csv)"),
        DataFormat("recbole", read_recbole, "RecBole atomic files: <name>.inter (+ .item)"),
        DataFormat("lightgcn", read_lightgcn,
                   "LightGCN split: train.txt + test.txt, 'user item item ...' per line"),
        DataFormat("amazon2018", read_amazon2018,
                   "Amazon reviews 2018 or 2014 JSON lines (+ meta_<name>), .gz too"),
        DataFormat("amazon2023", read_amazon2023,
                   "Amazon reviews 2023 JSON lines or JSON array (+ meta_<name>), .gz too"),
        DataFormat("goodreads", read_goodreads,
                   "Goodreads goodreads_interactions_<genre>.json or goodreads_interactions.csv "
                   "(+ goodreads_books_<genre>)"),
        DataFormat("csv", read_csv, "any delimited file with named columns (.gz too)"),
        DataFormat("parquet", read_parquet, "any Parquet file or folder with named columns"),
        DataFormat("hf", read_hf, "a Hugging Face datasets name or local path"),
    )
}


def _unknown_format(name: str) -> DatasetError:
    return DatasetError(f"unknown format {name!r}; known: auto, {', '.join(FORMATS)}")


_DELIMITED = tuple(f".{ext}{z}" for ext in ("csv", "tsv", "txt", "tab")
                   for z in ("", ".gz", ".bz2", ".xz", ".zip"))


def _is_delimited(lower_name: str) -> bool:
    return lower_name.endswith(_DELIMITED)


def _detect_file(path: Path) -> str:
    name = path.name
    lower = name.lower()
    if name == "u.data":
        return "ml-100k"
    if name == "ratings.dat":
        return "ml-1m"
    if name in ("train.txt", "test.txt"):
        return "lightgcn"
    if lower.endswith(".inter"):
        return "recbole"
    if is_goodreads_csv(path):
        return "goodreads"
    if is_json_lines(path):
        if name.startswith("goodreads_interactions"):
            return "goodreads"
        keys = peek_json_keys(path)
        found = detect_json_format(path, keys)
        if found is None:
            raise DatasetError(
                f"{path}: cannot tell the JSON-lines format from its fields "
                f"({', '.join(sorted(keys)) or 'none'}); pass format=amazon2018, amazon2023 "
                f"or goodreads"
            )
        return found
    if lower.endswith((".parquet", ".pq")):
        return "parquet"
    if name == "ratings.csv" and (path.parent / "movies.csv").is_file():
        return "ml-latest"
    if _is_delimited(lower):
        return "csv"
    raise DatasetError(
        f"{path}: cannot detect the format from the file name; pass format= one of "
        f"{', '.join(FORMATS)}"
    )


def detect_format(path: str | Path) -> str:
    """Name the format of a file or folder from its file names (JSON: from its fields).

    Raises:
        DatasetError: the path does not exist or matches no format.
    """
    path = Path(path)
    if path.is_file():
        return _detect_file(path)
    if not path.is_dir():
        raise DatasetError(f"{path}: no such file or directory")
    names = {p.name for p in path.iterdir()}
    if "u.data" in names:
        return "ml-100k"
    if "ratings.dat" in names:
        return "ml-1m"
    if "ratings.csv" in names:
        return "ml-latest"
    if {"train.txt", "test.txt"} <= names:
        return "lightgcn"
    if any(n.endswith(".inter") for n in names):
        return "recbole"
    if "dataset_info.json" in names or "dataset_dict.json" in names:
        return "hf"
    if any(n.startswith("goodreads_interactions") and is_json_lines(Path(n)) for n in names):
        return "goodreads"
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    if any(is_goodreads_csv(p) for p in files):
        return "goodreads"
    reviews = sorted(p for p in path.iterdir()
                     if p.is_file() and is_json_lines(p) and not p.name.startswith("meta_"))
    if reviews:
        return _detect_file(reviews[0])
    if any(n.endswith((".parquet", ".pq")) for n in names):
        return "parquet"
    tables = [p for p in files if _is_delimited(p.name.lower())]
    if len(tables) == 1:
        raise DatasetError(
            f"{path}: one table found ({tables[0].name}); pass the file itself "
            f"({tables[0]}) with format=csv"
        )
    shown = ", ".join(sorted(names)[:10]) or "nothing"
    raise DatasetError(
        f"{path}: cannot detect the format (found: {shown}); pass format= one of "
        f"{', '.join(FORMATS)}"
    )


def read_source(path: str | Path, format: str = "auto", *, with_title: bool | None = None,
                **options: Any) -> RawInteractions:
    """Read ``path`` with the named (or detected) format's reader.

    Args:
        path: a file or folder (``hf``: any ``datasets`` name or path).
        format: a :data:`FORMATS` name or ``"auto"``.
        with_title: passed to readers that build item text with titles.
        **options: the reader's keyword options (see ``FORMATS[name].options``).

    Raises:
        DatasetError: unknown format or option, and every reader error.
    """
    if format != "auto" and format not in FORMATS:
        raise _unknown_format(format)
    if format == "auto":
        format = detect_format(path)
    fmt = FORMATS[format]
    unknown = sorted(set(options) - set(fmt.options))
    if unknown:
        raise DatasetError(
            f"format {format!r} has no option {', '.join(map(repr, unknown))}; options: "
            f"{', '.join(o for o in fmt.options if o != 'with_title') or 'none'}"
        )
    if with_title is not None and "with_title" in fmt.options:
        options.setdefault("with_title", with_title)
    if format != "hf":
        path = Path(path)
        if not path.exists():
            raise DatasetError(f"{path}: no such file or directory")
    return fmt.reader(path, **options)
