"""Review datasets: Amazon reviews 2014, 2018 and 2023, Goodreads (UCSD book graph).

Every JSON file may be JSON lines or one JSON array, plain or compressed (``.gz``,
``.bz2``, ``.xz``, ``.zip``).

- Amazon 2014 / 2018 (McAuley lab): reviews ``<Category>.json[.gz]``,
  ``<Category>_5.json[.gz]`` or (2014) ``reviews_<Category>[_5].json.gz`` with
  ``reviewerID``, ``asin``, ``overall``, ``unixReviewTime`` (s); metadata
  ``meta_<Category>.json[.gz]`` with ``asin``, ``title``, ``description`` (2018: a list;
  2014: a string, one Python dict literal per line).
- Amazon 2023: reviews ``<Category>.jsonl[.gz]`` with ``user_id``, ``parent_asin``,
  ``rating``, ``timestamp`` (ms, detected); metadata ``meta_<Category>.jsonl[.gz]`` with
  ``parent_asin``, ``title``, ``description`` (list), ``features`` (list). Items are
  ``parent_asin`` (a file without it is read by ``asin``).
- Goodreads: ``goodreads_interactions_<genre>.json[.gz]`` with ``user_id``, ``book_id``,
  ``rating``, ``is_read``, ``date_added`` (``"Fri Sep 08 10:44:24 -0700 2017"``), or the
  CSV ``goodreads_interactions.csv`` (``user_id,book_id,is_read,rating,is_reviewed``);
  books ``goodreads_books_<genre>.json[.gz]`` with ``book_id``, ``title``,
  ``description``. A shelving is an interaction when the book was read or rated; rating 0
  means "not rated" and is stored as missing.

Item text: ``"title. description"`` (the description falls back to ``features`` /
``feature`` when empty) as plain text (:func:`glta_graph.data.raw.clean_text`: HTML
decoded, tags removed, list parts joined with ``" | "``); ``""`` for items without
metadata. A metadata file that is expected but not found is a :class:`DatasetWarning`
naming the names looked for.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from glta_graph.data.interactions import DatasetError
from glta_graph.data.raw import (
    COMPRESSED_SUFFIXES,
    RawInteractions,
    factorize_ids,
    iter_json_lines,
    join_text,
    line_mapper,
    open_text,
    read_delimited,
    require_columns,
    to_float,
    warn_no_text,
)

__all__ = ["GOODREADS_CSV_HEADER", "JSON_SUFFIXES", "is_goodreads_csv", "is_json_lines",
           "peek_json_keys", "read_amazon2018", "read_amazon2023", "read_goodreads",
           "to_seconds"]

JSON_SUFFIXES = tuple(f".{ext}{z}" for ext in ("json", "jsonl")
                      for z in ("", *COMPRESSED_SUFFIXES))


def is_json_lines(path: Path) -> bool:
    """True for ``.json``/``.jsonl`` files (a JSON array too), compressed or not."""
    return path.name.lower().endswith(JSON_SUFFIXES)


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


def _number(rec: dict, key: str, path: Path, where: str, required: bool) -> float:
    value = rec.get(key)
    if value is None or value == "":
        if required:
            raise DatasetError(
                f"{path}: {where}: missing field {key!r}; fields found: {', '.join(rec)}"
            )
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DatasetError(
            f"{path}: {where}: field {key!r} has value {value!r}, which is not a number"
        ) from None


def _item_key(rec: dict, keys: Sequence[str]) -> str:
    """The first of ``keys`` (``parent_asin`` before ``asin``) that the first record has;
    the whole file is then read with it."""
    return next((k for k in keys if rec.get(k) not in (None, "")), keys[0])


def to_seconds(stamps: np.ndarray) -> np.ndarray:
    """Unix times in seconds: a column whose median is above 1e11 is taken as milliseconds.

    (1e11 s is the year 5138; 1e11 ms is 1973.) Shapes: (n,) -> (n,); NaN stays NaN.
    """
    stamps = np.asarray(stamps, dtype=np.float64)
    finite = stamps[np.isfinite(stamps)]
    if finite.size and float(np.median(np.abs(finite))) > 1e11:
        return stamps / 1000.0
    return stamps


def _read_reviews(
    path: Path,
    schema: _Schema,
    *,
    keep: Callable[[dict], bool] | None = None,
    time_of: Callable[[dict, Path, str], float] | None = None,
    rating_of: Callable[[dict, Path, str], float] | None = None,
) -> tuple[list[str], list[str], list[float], list[float]]:
    users: list[str] = []
    items: list[str] = []
    ratings: list[float] = []
    stamps: list[float] = []
    item_key = None
    for where, rec in iter_json_lines(path):
        item_key = item_key or _item_key(rec, schema.item.split("|"))
        item = rec.get(item_key)
        for key, value in ((schema.user, rec.get(schema.user)), (item_key, item)):
            if value in (None, ""):
                raise DatasetError(
                    f"{path}: {where}: missing field {key!r}; fields found: {', '.join(rec)}"
                )
        if keep is not None and not keep(rec):
            continue
        users.append(str(rec[schema.user]))
        items.append(str(item))
        if rating_of is not None:
            ratings.append(rating_of(rec, path, where))
        else:
            ratings.append(_number(rec, schema.rating, path, where, required=True))
        if time_of is not None:
            stamps.append(time_of(rec, path, where))
        else:
            stamps.append(_number(rec, schema.time, path, where, required=False))
    if not users:
        raise DatasetError(f"{path}: no interactions found")
    return users, items, ratings, list(to_seconds(np.asarray(stamps, dtype=np.float64)))


def _read_meta(path: Path | None, item_key: str, text_of: Callable[[dict], str],
               wanted: set[str]) -> dict[str, str]:
    text: dict[str, str] = {}
    if path is None:
        return text
    key = None
    for where, rec in iter_json_lines(path):
        key = key or _item_key(rec, item_key.split("|"))
        iid = rec.get(key)
        if iid in (None, ""):
            raise DatasetError(
                f"{path}: {where}: missing field {key!r}; fields found: {', '.join(rec)}"
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


def _meta_missing(reviews: Path, looked_for: Sequence[str], option: str = "meta") -> None:
    warn_no_text(reviews, looked_for, f"pass {option}=FILE (--option {option}=FILE) to add it")


def _amazon_files(path: Path, meta: str | Path | None
                  ) -> tuple[Path, Path | None, str, list[str]]:
    path = Path(path)
    looked: list[str] = []
    if path.is_dir():
        reviews = _pick(path, lambda n: not n.startswith("meta_"), "review")
        if reviews is None:
            raise DatasetError(f"{path}: no Amazon review file (*.json[l][.gz]) found")
        meta_path = _pick(path, lambda n: n.startswith("meta_"), "metadata")
        looked = [f"{path}/meta_*.json[l][.gz]"]
    else:
        if not path.is_file():
            raise DatasetError(f"{path}: no such file or directory")
        reviews = path
        stem = _strip_json_suffix(path.name)
        bare = stem.removeprefix("reviews_")  # 2014: reviews_<Category>[_5]
        candidates = list(dict.fromkeys([stem, stem.removesuffix("_5"), bare,
                                         bare.removesuffix("_5")]))
        meta_path = None
        for cand in candidates:
            looked.append(f"meta_{cand}.json[l][.gz/.bz2/.xz/.zip]")
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
    name = _strip_json_suffix(reviews.name).removeprefix("reviews_")
    return reviews, meta_path, name, looked


def read_amazon2018(path: Path, *, meta: str | Path | None = None,
                    with_title: bool = True) -> RawInteractions:
    """Read Amazon reviews 2018 or 2014 (JSON lines or a JSON array, compressed or not).

    Both releases use ``reviewerID``, ``asin``, ``overall`` and ``unixReviewTime``; the 2014
    files are named ``reviews_<Category>[_5].json.gz`` and their metadata
    ``meta_<Category>.json.gz`` holds one Python dict per line (``description`` a string,
    ``categories`` nested lists), the 2018 metadata is JSON (``description`` a list).

    Args:
        path: a folder holding one review file (+ one ``meta_*`` file) or the review file.
        meta: the metadata file, when not found beside the reviews as ``meta_<name>``.
        with_title: include the title in the item text.
    """
    reviews, meta_path, name, looked = _amazon_files(path, meta)
    schema = _Schema("reviewerID", "asin", "overall", "unixReviewTime")
    cols = _read_reviews(reviews, schema)
    if meta_path is None:
        _meta_missing(reviews, looked)

    def text_of(rec: dict) -> str:
        body = join_text(rec.get("description")) or join_text(rec.get("feature"))
        return join_text(rec.get("title") if with_title else None, body)

    return _assemble(reviews, name, cols, (meta_path, "asin", text_of))


def read_amazon2023(path: Path, *, meta: str | Path | None = None,
                    with_title: bool = True) -> RawInteractions:
    """Read Amazon reviews 2023 (``user_id``, ``parent_asin``, ``rating``, ``timestamp``).

    JSON lines or one JSON array, compressed or not. Items are ``parent_asin`` (``asin``
    only where a record has no ``parent_asin``); timestamps in milliseconds are detected
    (:func:`to_seconds`).

    Args:
        path: a folder holding one review file (+ one ``meta_*`` file) or the review file.
        meta: the metadata file, when not found beside the reviews as ``meta_<name>``.
        with_title: include the title in the item text.
    """
    reviews, meta_path, name, looked = _amazon_files(path, meta)
    schema = _Schema("user_id", "parent_asin|asin", "rating", "timestamp")
    cols = _read_reviews(reviews, schema)
    if meta_path is None:
        _meta_missing(reviews, looked)

    def text_of(rec: dict) -> str:
        body = join_text(rec.get("description")) or join_text(rec.get("features"))
        return join_text(rec.get("title") if with_title else None, body)

    return _assemble(reviews, name, cols, (meta_path, "parent_asin|asin", text_of))


def _goodreads_time(rec: dict, path: Path, where: str) -> float:
    value = rec.get("date_added") or rec.get("date_updated")
    if not value:
        return math.nan
    try:
        return datetime.strptime(str(value), "%a %b %d %H:%M:%S %z %Y").timestamp()
    except ValueError:
        raise DatasetError(
            f"{path}: {where}: field 'date_added' has value {value!r}, expected like "
            f"'Fri Sep 08 10:44:24 -0700 2017'"
        ) from None


#: Header of the UCSD Goodreads interactions CSV (``goodreads_interactions.csv``).
GOODREADS_CSV_HEADER = ("user_id", "book_id", "is_read", "rating", "is_reviewed")


def _goodreads_rating(rec: dict, path: Path, where: str) -> float:
    value = _number(rec, "rating", path, where, required=False)
    return math.nan if value == 0 else value  # 0 = shelved, not rated


def _goodreads_kept(rec: dict, read_only: bool) -> bool:
    rating = rec.get("rating")
    try:
        rated = float(rating) > 0 if rating not in (None, "") else False
    except (TypeError, ValueError):
        rated = True  # let the rating reader name the bad value
    read = str(rec.get("is_read", "")).strip().lower() in ("true", "1", "1.0")
    return read if read_only else (read or rated)


def _goodreads_csv(path: Path, read_only: bool) -> tuple:
    """Columns of the UCSD interactions CSV, vectorised (the full file has 228M rows)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    header, cols = read_delimited(path, delimiter=",")
    require_columns(header, {"user": "user_id", "item": "book_id", "is_read": "is_read",
                             "rating": "rating"}, path)
    line_of = line_mapper(path, 1)
    rating = to_float(cols["rating"], what="rating", source=str(path), line_of=line_of)
    is_read = to_float(cols["is_read"], what="is_read", source=str(path), line_of=line_of)
    keep = is_read > 0 if read_only else (is_read > 0) | (rating > 0)
    rows = pa.array(np.flatnonzero(keep))
    if len(rows) == 0:
        raise DatasetError(f"{path}: no interactions found (no row is read or rated)")
    ids = {}
    for what in ("user", "book"):
        col = pc.utf8_trim_whitespace(pc.take(cols[f"{what}_id"], rows))
        empty = np.flatnonzero(pc.equal(col, "").to_numpy(zero_copy_only=False))
        if empty.size:
            line = line_of(int(rows[int(empty[0])].as_py()))
            raise DatasetError(f"{path}: line {line}: field '{what}_id' is empty")
        id_map = path.parent / f"{what}_id_map.csv"
        if id_map.is_file():
            map_header, map_cols = read_delimited(id_map, delimiter=",")
            require_columns(map_header, {"csv id": f"{what}_id_csv", "id": f"{what}_id"},
                            id_map)
            keys = pc.utf8_trim_whitespace(map_cols[f"{what}_id_csv"].combine_chunks())
            at = pc.index_in(col, value_set=keys)
            if at.null_count:
                missing = col.combine_chunks().filter(pc.is_null(at))[0].as_py()
                raise DatasetError(f"{id_map}: no row for {what}_id_csv {missing!r} of {path}")
            col = pc.take(pc.utf8_trim_whitespace(map_cols[f"{what}_id"].combine_chunks()), at)
        ids[what] = col
    kept = rows.to_numpy()
    ratings = np.where(rating[kept] == 0, np.nan, rating[kept])  # 0 = not rated
    return ids["user"], ids["book"], ratings, np.full(kept.shape[0], np.nan)


def is_goodreads_csv(path: Path) -> bool:
    """True when a ``.csv`` file's header is the UCSD Goodreads interactions header."""
    if not path.name.lower().endswith((".csv", ".csv.gz", ".csv.bz2")):
        return False
    try:
        with open_text(path) as fh:
            first = fh.readline()
    except (OSError, EOFError, UnicodeDecodeError, DatasetError):
        return False
    fields = tuple(f.strip().strip('"') for f in first.lstrip("\ufeff").strip().split(","))
    return fields[:4] == GOODREADS_CSV_HEADER[:4]


def read_goodreads(path: Path, *, books: str | Path | None = None, read_only: bool = False,
                   with_title: bool = True) -> RawInteractions:
    """Read Goodreads (UCSD book graph) interactions and book descriptions.

    Two interaction files are read: ``goodreads_interactions*.json[.gz]`` (JSON lines with
    ``user_id``, ``book_id``, ``is_read``, ``rating``, ``date_added``) and the CSV
    ``goodreads_interactions.csv`` (``user_id,book_id,is_read,rating,is_reviewed``, no
    time; its ids are mapped through ``user_id_map.csv`` / ``book_id_map.csv`` when those
    are beside it, so the books file matches). Interaction rule: a shelving counts when
    the book was read or rated (``read_only``: read); rating 0 means "not rated" and is
    stored as missing, so ``threshold`` keeps only rated books at or above it.

    Args:
        path: a folder with one interactions file (+ one ``goodreads_books*.json[.gz]``),
            or the interactions file.
        books: the books file, when it is not found beside the interactions.
        read_only: keep only shelvings with ``is_read`` true.
        with_title: include the title in the item text.
    """
    path = Path(path)
    if path.is_dir():
        inter = _pick(path, lambda n: n.startswith("goodreads_interactions"), "interactions")
        if inter is None:
            found = [p for p in sorted(path.iterdir()) if p.is_file() and is_goodreads_csv(p)]
            inter = found[0] if len(found) == 1 else None
        if inter is None:
            raise DatasetError(f"{path}: no goodreads_interactions*.json[.gz] or "
                               f"goodreads_interactions.csv file found")
        folder = path
    else:
        if not path.is_file():
            raise DatasetError(f"{path}: no such file or directory")
        inter, folder = path, path.parent
    books_path = None
    if books is not None:
        books_path = Path(books)
        if not books_path.is_file():
            raise DatasetError(f"{books_path}: missing books file (no such file)")
    else:
        guess = inter.with_name(inter.name.replace("interactions", "books"))
        if guess != inter and guess.is_file() and is_json_lines(guess):
            books_path = guess
        else:
            books_path = _pick(folder, lambda n: n.startswith("goodreads_books"), "books")
    if is_json_lines(inter):
        schema = _Schema("user_id", "book_id", "rating", "date_added")
        cols = _read_reviews(inter, schema, keep=lambda rec: _goodreads_kept(rec, read_only),
                             time_of=_goodreads_time, rating_of=_goodreads_rating)
    else:
        cols = _goodreads_csv(inter, read_only)
    if books_path is None:
        _meta_missing(inter, [f"{folder}/goodreads_books*.json[.gz]"], "books")

    def text_of(rec: dict) -> str:
        return join_text(rec.get("title") if with_title else None, rec.get("description"))

    name = _strip_json_suffix(inter.name).removesuffix(".csv")
    return _assemble(inter, name, cols, (books_path, "book_id", text_of))


def detect_json_format(path: Path, keys: Sequence[str] | set[str]) -> str | None:
    """Name the JSON-lines format whose review fields are all in ``keys``, else ``None``."""
    keys = set(keys)
    if {"reviewerID", "asin"} <= keys:
        return "amazon2018"  # 2014 and 2018
    if {"user_id", "parent_asin"} <= keys:
        return "amazon2023"
    if {"user_id", "book_id"} <= keys:
        return "goodreads"
    if {"user_id", "asin", "rating"} <= keys:
        return "amazon2023"
    return None
