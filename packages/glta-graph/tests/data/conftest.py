"""Tiny fixtures in every supported format, written by the tests themselves.

All formats hold the same canonical data (``ROWS``): 6 users, 8 items, 30 interactions
with ratings 1-5 and distinct timestamps, so every reader must yield the same counts.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

GENRES = ["Action", "Comedy", "Drama", "Sci-Fi"]
# item id -> (title, year, genres)
ITEMS = {
    i: (f"Movie {i}", 1990 + i, [GENRES[i % 4], GENRES[(i + 1) % 4]] if i % 3 else [GENRES[i % 4]])
    for i in range(1, 9)
}


def _rows() -> list[tuple[int, int, float, int]]:
    rows = []
    t = 1_000_000_000
    for u in range(1, 7):
        for k in range(5):
            item = (u * 3 + k) % 8 + 1
            rating = float((u + k) % 5 + 1)
            t += 1000
            rows.append((u, item, rating, t))
    return rows


ROWS = _rows()


def _open(path: Path, gz: bool):
    return gzip.open(path, "wt", encoding="utf-8") if gz else open(path, "w", encoding="utf-8")


def write_ml100k(d: Path) -> Path:
    d = d / "ml-100k"
    d.mkdir()
    (d / "u.data").write_text("".join(f"{u}\t{i}\t{int(r)}\t{t}\n" for u, i, r, t in ROWS))
    genre_names = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy",
                   "Crime", "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror",
                   "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]
    lines = []
    for i, (title, year, genres) in ITEMS.items():
        flags = ["1" if g in genres else "0" for g in genre_names]
        lines.append("|".join([str(i), f"{title} ({year})", f"01-Jan-{year}", "",
                               "http://x", *flags]))
    (d / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    (d / "u.genre").write_text("".join(f"{g}|{k}\n" for k, g in enumerate(genre_names)) + "\n")
    return d


def write_ml1m(d: Path) -> Path:
    d = d / "ml-1m"
    d.mkdir()
    (d / "ratings.dat").write_text("".join(f"{u}::{i}::{int(r)}::{t}\n" for u, i, r, t in ROWS))
    (d / "movies.dat").write_bytes("".join(
        f"{i}::{title} ({year})::{'|'.join(g)}\n" for i, (title, year, g) in ITEMS.items()
    ).encode("latin-1"))
    return d


def write_ml_latest(d: Path) -> Path:
    d = d / "ml-latest-small"
    d.mkdir()
    (d / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "".join(
        f"{u},{i},{r},{t}\n" for u, i, r, t in ROWS))
    (d / "movies.csv").write_text("movieId,title,genres\n" + "".join(
        f'{i},"{title} ({year})",{"|".join(g)}\n' for i, (title, year, g) in ITEMS.items()))
    return d


def write_recbole(d: Path) -> Path:
    d = d / "toy"
    d.mkdir()
    (d / "toy.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ROWS))
    (d / "toy.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        + "".join(f"{i}\t{title}\t{year}\t{' '.join(g)}\n"
                  for i, (title, year, g) in ITEMS.items()))
    return d


def write_lightgcn(d: Path) -> Path:
    """Per user: the last two interactions by time go to test.txt; ids shifted to 0-based."""
    d = d / "toy-lightgcn"
    d.mkdir()
    train, test = [], []
    for u in range(1, 7):
        items = [i for uu, i, _, _ in ROWS if uu == u]
        train.append(" ".join(map(str, [u - 1, *[i - 1 for i in items[:-2]]])))
        test.append(" ".join(map(str, [u - 1, *[i - 1 for i in items[-2:]]])))
    train.append("6")  # a user without items
    (d / "train.txt").write_text("\n".join(train) + "\n")
    (d / "test.txt").write_text("\n".join(test) + "\n")
    return d


def _write_jsonl(path: Path, records: list[dict]) -> None:
    with _open(path, path.suffix == ".gz") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")


def write_amazon2018(d: Path, gz: bool = False) -> Path:
    d = d / "amazon2018"
    d.mkdir()
    suffix = ".json.gz" if gz else ".json"
    _write_jsonl(d / f"Toys{suffix}", [
        {"reviewerID": f"U{u}", "asin": f"B{i:03d}", "overall": r, "unixReviewTime": t,
         "reviewText": "ok"} for u, i, r, t in ROWS])
    _write_jsonl(d / f"meta_Toys{suffix}", [
        {"asin": f"B{i:03d}", "title": title, "description": [f"A {g[0]} toy.", "Fun."]}
        for i, (title, _, g) in ITEMS.items() if i != 8])
    return d


def write_amazon2023(d: Path, gz: bool = False) -> Path:
    d = d / "amazon2023"
    d.mkdir()
    suffix = ".jsonl.gz" if gz else ".jsonl"
    _write_jsonl(d / f"All_Beauty{suffix}", [
        {"user_id": f"U{u}", "parent_asin": f"B{i:03d}", "asin": "x", "rating": r,
         "timestamp": t * 1000} for u, i, r, t in ROWS])
    _write_jsonl(d / f"meta_All_Beauty{suffix}", [
        {"parent_asin": f"B{i:03d}", "title": title,
         "description": [] if i == 2 else [f"A {g[0]} cream."], "features": ["Soft"]}
        for i, (title, _, g) in ITEMS.items()])
    return d


def write_goodreads(d: Path, gz: bool = False) -> Path:
    d = d / "goodreads"
    d.mkdir()
    suffix = ".json.gz" if gz else ".json"
    _write_jsonl(d / f"goodreads_interactions_poetry{suffix}", [
        {"user_id": f"u{u:02d}", "book_id": str(i), "review_id": "r", "is_read": r >= 3,
         "rating": int(r),
         "date_added": datetime.fromtimestamp(t, UTC).strftime("%a %b %d %H:%M:%S +0000 %Y")}
        for u, i, r, t in ROWS])
    _write_jsonl(d / f"goodreads_books_poetry{suffix}", [
        {"book_id": str(i), "title": title, "description": f"Poems about {g[0]}."}
        for i, (title, _, g) in ITEMS.items()])
    return d


def write_csv(d: Path) -> Path:
    path = d / "interactions.csv"
    path.write_text("uid,iid,stars,when,blurb\n" + "".join(
        f'{u},{i},{r},{t},"{ITEMS[i][0]}, a film"\n' for u, i, r, t in ROWS))
    return path


def write_parquet(d: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = d / "interactions.parquet"
    pq.write_table(pa.table({
        "uid": [f"u{u}" for u, *_ in ROWS], "iid": [i for _, i, _, _ in ROWS],
        "stars": [r for *_, r, _ in ROWS], "when": [t for *_, t in ROWS],
        "blurb": [ITEMS[i][0] for _, i, _, _ in ROWS]}), path)
    return path


# format name -> (writer, format options, has ratings, has timestamps)
WRITERS: dict[str, tuple[Callable[[Path], Path], dict, bool, bool]] = {
    "ml-100k": (write_ml100k, {}, True, True),
    "ml-1m": (write_ml1m, {}, True, True),
    "ml-latest": (write_ml_latest, {}, True, True),
    "recbole": (write_recbole, {}, True, True),
    "lightgcn": (write_lightgcn, {}, False, False),
    "amazon2018": (write_amazon2018, {}, True, True),
    "amazon2023": (write_amazon2023, {}, True, True),
    "goodreads": (write_goodreads, {}, True, True),
    "csv": (write_csv, {"user_col": "uid", "item_col": "iid", "rating_col": "stars",
                        "timestamp_col": "when", "text_col": "blurb"}, True, True),
    "parquet": (write_parquet, {"user_col": "uid", "item_col": "iid", "rating_col": "stars",
                                "timestamp_col": "when", "text_col": "blurb"}, True, True),
}


@pytest.fixture
def writers() -> dict:
    """Format name -> (writer(tmp_dir) -> path, options, has_ratings, has_timestamps)."""
    return WRITERS


@pytest.fixture
def fixture_writers() -> dict:
    """Named writers for tests that need a specific variant (gzip etc.)."""
    return {
        "ml100k": write_ml100k, "ml1m": write_ml1m, "ml_latest": write_ml_latest,
        "recbole": write_recbole, "lightgcn": write_lightgcn, "amazon2018": write_amazon2018,
        "amazon2023": write_amazon2023, "goodreads": write_goodreads, "csv": write_csv,
        "parquet": write_parquet,
    }


@pytest.fixture
def canonical_rows() -> list[tuple[int, int, float, int]]:
    """(user, item, rating, timestamp) rows shared by every fixture."""
    return list(ROWS)


@pytest.fixture
def canonical_items() -> dict:
    """item id -> (title, year, genres)."""
    return dict(ITEMS)


def shared_data_dir() -> Path | None:
    """The shared reference data folder, or None (fails instead under CI=true)."""
    env = os.environ.get("GLTA_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[4] / ".." / "shared" / "data"
    if path.is_dir():
        return path
    if os.environ.get("CI") == "true":
        pytest.fail(f"shared reference data not found at {path} (CI=true)")
    return None


@pytest.fixture
def shared_data() -> Path:
    """Path of ../shared/data; skips when absent (fails when CI=true)."""
    path = shared_data_dir()
    if path is None:
        pytest.skip("shared reference data (../shared/data) not available")
    return path
