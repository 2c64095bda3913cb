"""JSON-lines review datasets: Amazon reviews 2018 and 2023, Goodreads (UCSD book graph).

- Amazon 2018 (McAuley lab): reviews ``<Category>.json[.gz]`` / ``<Category>_5.json[.gz]``
  with ``reviewerID``, ``asin``, ``overall``, ``unixReviewTime`` (s); metadata
  ``meta_<Category>.json[.gz]`` with ``asin``, ``title``, ``description`` (list of strings).
- Amazon 2023: reviews ``<Category>.jsonl[.gz]`` with ``user_id``, ``parent_asin``,
  ``rating``, ``timestamp`` (ms); metadata ``meta_<Category>.jsonl[.gz]`` with
  ``parent_asin``, ``title``, ``description`` (list), ``features`` (list).
- Goodreads: ``goodreads_interactions_<genre>.json[.gz]`` with ``user_id``, ``book_id``,
  ``rating`` (0 = shelved, not rated), ``is_read``, ``date_added``
  (``"Fri Sep 08 10:44:24 -0700 2017"``); books ``goodreads_books_<genre>.json[.gz]`` with
  ``book_id``, ``title``, ``description``.

Item text: ``"title. description"`` (Amazon 2023 falls back to ``features`` when the
description is empty); ``""`` for items without metadata.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from glta_graph.data.interactions import DatasetError
from glta_graph.data.raw import RawInteractions, factorize_ids, iter_json_lines, join_text

__all__ = ["JSON_SUFFIXES", "is_json_lines", "peek_json_keys", "read_amazon2018",
           "read_amazon2023", "read_goodreads"]

JSON_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")


def is_json_lines(path: Path) -> bool:
    """True for ``.json``/``.jsonl`` files, gzip-compressed or not."""
    return path.name.endswith(JSON_SUFFIXES)


def peek_json_keys(path: Path) -> set[str]:
    """The keys of the first JSON object in a JSON-lines file (empty set if none)."""
    for _, rec in iter_json_lines(path):
        return set(rec)
    return set()


def _strip_json_suffix(name: str) -> str:
    for suffix in sorted(JSON_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass(frozen=True)
class _Schema:
    user: str
    item: str
    rating: str
    time: str
    time_scale: float = 1.0


def _number(rec: dict, key: str, path: Path, lineno: int, required: bool) -> float:
    value = rec.get(key)
    if value is None or value == "":
        if required:
            raise DatasetError(
                f"{path}: line {lineno}: missing field {key!r}; fields found: {', '.join(rec)}"
            )
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DatasetError(
            f"{path}: line {lineno}: field {key!r} has value {value!r}, which is not a number"
        ) from None


def _read_reviews(
    path: Path,
    schema: _Schema,
    *,
    keep: Callable[[dict], bool] | None = None,
    time_of: Callable[[dict, Path, int], float] | None = None,
) -> tuple[list[str], list[str], list[float], list[float]]:
    users: list[str] = []
    items: list[str] = []
    ratings: list[float] = []
    stamps: list[float] = []
    for lineno, rec in iter_json_lines(path):
        for key in (schema.user, schema.item):
            if rec.get(key) in (None, ""):
                raise DatasetError(
                    f"{path}: line {lineno}: missing field {key!r}; fields found: "
                    f"{', '.join(rec)}"
                )
        if keep is not None and not keep(rec):
            continue
        users.append(str(rec[schema.user]))
        items.append(str(rec[schema.item]))
        ratings.append(_number(rec, schema.rating, path, lineno, required=True))
        if time_of is not None:
            stamps.append(time_of(rec, path, lineno))
        else:
            stamps.append(_number(rec, schema.time, path, lineno, required=False)
                          / schema.time_scale)
    if not users:
        raise DatasetError(f"{path}: no interactions found")
    return users, items, ratings, stamps


def _read_meta(path: Path | None, item_key: str, text_of: Callable[[dict], str],
               wanted: set[str]) -> dict[str, str]:
    text: dict[str, str] = {}
    if path is None:
        return text
    for lineno, rec in iter_json_lines(path):
        iid = rec.get(item_key)
        if iid in (None, ""):
            raise DatasetError(
                f"{path}: line {lineno}: missing field {item_key!r}; fields found: "
                f"{', '.join(rec)}"
            )
        iid = str(iid)
        if iid in wanted and iid not in text:
            text[iid] = text_of(rec)
    return text


def _assemble(path: Path, name: str, cols: tuple, text_source: tuple) -> RawInteractions:
    users, items, ratings, stamps = cols
    meta, key, text_of = text_source
    user_ids, ucodes = factorize_ids(users, what="user", source=str(path))
    item_ids, icodes = factorize_ids(items, what="item", source=str(path))
    text = _read_meta(meta, key, text_of, set(item_ids))
    return RawInteractions(
        user_ids, item_ids, ucodes, icodes, ratings=np.asarray(ratings, dtype=np.float64),
        timestamps=np.asarray(stamps, dtype=np.float64), item_text=text, name=name,
        source=str(path),
    )


def _pick(folder: Path, accept: Callable[[str], bool], what: str) -> Path | None:
    found = sorted(p for p in folder.iterdir() if p.is_file() and is_json_lines(p)
                   and accept(p.name))
    if len(found) > 1:
        raise DatasetError(
            f"{folder}: found several {what} files ({', '.join(p.name for p in found)}); "
            f"pass the file itself"
        )
    return found[0] if found else None


def _amazon_files(path: Path, meta: str | Path | None) -> tuple[Path, Path | None, str]:
    path = Path(path)
    if path.is_dir():
        reviews = _pick(path, lambda n: not n.startswith("meta_"), "review")
        if reviews is None:
            raise DatasetError(f"{path}: no Amazon review file (*.json[l][.gz]) found")
        meta_path = _pick(path, lambda n: n.startswith("meta_"), "metadata")
    else:
        if not path.is_file():
            raise DatasetError(f"{path}: no such file or directory")
        reviews = path
        stem = _strip_json_suffix(path.name)
        candidates = [stem, stem.removesuffix("_5"), stem.removeprefix("reviews_")]
        meta_path = None
        for cand in candidates:
            for suffix in JSON_SUFFIXES:
                guess = path.parent / f"meta_{cand}{suffix}"
                if guess.is_file():
                    meta_path = guess
                    break
            if meta_path:
                break
    if meta is not None:
        meta_path = Path(meta)
        if not meta_path.is_file():
            raise DatasetError(f"{meta_path}: missing metadata file (no such file)")
    name = _strip_json_suffix(reviews.name)
    return reviews, meta_path, name


def read_amazon2018(path: Path, *, meta: str | Path | None = None,
                    with_title: bool = True) -> RawInteractions:
    """Read Amazon reviews 2018 (JSON lines, ``.json``/``.jsonl``, gzip or not).

    Args:
        path: a folder holding one review file (+ one ``meta_*`` file) or the review file.
        meta: the metadata file, when not found beside the reviews as ``meta_<name>``.
        with_title: include the title in the item text.
    """
    reviews, meta_path, name = _amazon_files(path, meta)
    schema = _Schema("reviewerID", "asin", "overall", "unixReviewTime")
    cols = _read_reviews(reviews, schema)

    def text_of(rec: dict) -> str:
        return join_text(rec.get("title") if with_title else None, rec.get("description"))

    return _assemble(reviews, name, cols, (meta_path, "asin", text_of))


def read_amazon2023(path: Path, *, meta: str | Path | None = None,
                    with_title: bool = True) -> RawInteractions:
    """Read Amazon reviews 2023 (``user_id``, ``parent_asin``, ``rating``, ``timestamp`` ms).

    Args:
        path: a folder holding one review file (+ one ``meta_*`` file) or the review file.
        meta: the metadata file, when not found beside the reviews as ``meta_<name>``.
        with_title: include the title in the item text.
    """
    reviews, meta_path, name = _amazon_files(path, meta)
    schema = _Schema("user_id", "parent_asin", "rating", "timestamp", 1000.0)
    cols = _read_reviews(reviews, schema)

    def text_of(rec: dict) -> str:
        body = join_text(rec.get("description")) or join_text(rec.get("features"))
        return join_text(rec.get("title") if with_title else None, body)

    return _assemble(reviews, name, cols, (meta_path, "parent_asin", text_of))


def _goodreads_time(rec: dict, path: Path, lineno: int) -> float:
    value = rec.get("date_added") or rec.get("date_updated")
    if not value:
        return math.nan
    try:
        return datetime.strptime(str(value), "%a %b %d %H:%M:%S %z %Y").timestamp()
    except ValueError:
        raise DatasetError(
            f"{path}: line {lineno}: field 'date_added' has value {value!r}, expected like "
            f"'Fri Sep 08 10:44:24 -0700 2017'"
        ) from None


def read_goodreads(path: Path, *, books: str | Path | None = None, read_only: bool = False,
                   with_title: bool = True) -> RawInteractions:
    """Read Goodreads (UCSD book graph) interactions and book descriptions.

    Args:
        path: a folder with one ``goodreads_interactions*.json[.gz]`` (+ one
            ``goodreads_books*.json[.gz]``), or the interactions file.
        books: the books file, when it is not found beside the interactions.
        read_only: keep only shelvings with ``is_read`` true.
        with_title: include the title in the item text.
    """
    path = Path(path)
    if path.is_dir():
        inter = _pick(path, lambda n: n.startswith("goodreads_interactions"), "interactions")
        if inter is None:
            raise DatasetError(f"{path}: no goodreads_interactions*.json[.gz] file found")
        books_path = _pick(path, lambda n: n.startswith("goodreads_books"), "books")
    else:
        if not path.is_file():
            raise DatasetError(f"{path}: no such file or directory")
        inter = path
        guess = path.with_name(path.name.replace("interactions", "books"))
        books_path = guess if guess != path and guess.is_file() else _pick(
            path.parent, lambda n: n.startswith("goodreads_books"), "books")
    if books is not None:
        books_path = Path(books)
        if not books_path.is_file():
            raise DatasetError(f"{books_path}: missing books file (no such file)")
    schema = _Schema("user_id", "book_id", "rating", "date_added")
    keep = (lambda rec: bool(rec.get("is_read"))) if read_only else None
    cols = _read_reviews(inter, schema, keep=keep, time_of=_goodreads_time)

    def text_of(rec: dict) -> str:
        return join_text(rec.get("title") if with_title else None, rec.get("description"))

    name = _strip_json_suffix(inter.name)
    return _assemble(inter, name, cols, (books_path, "book_id", text_of))


def detect_json_format(path: Path, keys: Sequence[str] | set[str]) -> str | None:
    """Name the JSON-lines format whose review fields are all in ``keys``, else ``None``."""
    keys = set(keys)
    if {"reviewerID", "asin"} <= keys:
        return "amazon2018"
    if {"user_id", "parent_asin"} <= keys:
        return "amazon2023"
    if {"user_id", "book_id"} <= keys:
        return "goodreads"
    return None
