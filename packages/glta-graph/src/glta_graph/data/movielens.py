"""MovieLens readers, exactly as GroupLens ships the files.

- ``ml-100k``: ``u.data`` (tab-separated ``user item rating timestamp``, no header) and
  ``u.item`` (``|``-separated, latin-1: id, title, release date, video date, URL, 19 genre
  flags; genre names from ``u.genre`` when present).
- ``ml-1m``: ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``) and ``movies.dat``
  (``MovieID::Title::Genres`` with genres ``A|B``), latin-1.
- ``ml-latest`` / ``ml-latest-small`` (and ml-20m/25m/32m): ``ratings.csv``
  (``userId,movieId,rating,timestamp``) and ``movies.csv`` (``movieId,title,genres``).

Item text is ``"Title (year). Genres: A, B"`` (:func:`movielens_text`).
"""

from __future__ import annotations

from pathlib import Path

from glta_graph.data.interactions import DatasetError
from glta_graph.data.raw import (
    RawInteractions,
    factorize_ids,
    line_mapper,
    movielens_text,
    read_delimited,
    read_lines,
    require_columns,
    to_float,
    warn_no_text,
)

__all__ = ["ML100K_GENRES", "read_ml1m", "read_ml100k", "read_ml_latest"]

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)


def _locate(path: Path, filename: str) -> tuple[Path, Path]:
    """Return ``(folder, file)`` for a folder holding ``filename`` or the file itself."""
    if path.is_dir():
        return path, path / filename
    return path.parent, path


def _assemble(
    name: str,
    ratings_path: Path,
    cols: dict,
    names: tuple[str, str, str, str],
    header_lines: int,
    encoding: str,
    item_text: dict[str, str],
) -> RawInteractions:
    user_c, item_c, rating_c, time_c = names
    line_of = line_mapper(ratings_path, header_lines, encoding)
    src = str(ratings_path)
    user_ids, users = factorize_ids(cols[user_c], what=user_c, source=src, line_of=line_of)
    item_ids, items = factorize_ids(cols[item_c], what=item_c, source=src, line_of=line_of)
    ratings = to_float(cols[rating_c], what=rating_c, source=src, line_of=line_of)
    stamps = to_float(cols[time_c], what=time_c, source=src, line_of=line_of)
    return RawInteractions(
        user_ids, item_ids, users, items, ratings=ratings, timestamps=stamps,
        item_text=item_text, name=name, source=src,
    )


def read_ml100k(path: Path, *, with_title: bool = True) -> RawInteractions:
    """Read MovieLens 100K (folder with ``u.data`` [+ ``u.item``, ``u.genre``], or ``u.data``).

    Args:
        path: the ``ml-100k`` folder or its ``u.data`` file.
        with_title: put the title in the item text (the genre string is always there).

    Returns:
        One row per rating (100,000 for the full data set).
    """
    folder, data = _locate(Path(path), "u.data")
    names = ("user_id", "item_id", "rating", "timestamp")
    _, cols = read_delimited(data, delimiter="\t", column_names=names, quoting=False,
                             encoding="latin-1")
    genres = list(ML100K_GENRES)
    genre_file = folder / "u.genre"
    if genre_file.is_file():
        pairs = [ln.strip().rsplit("|", 1) for _, ln in read_lines(genre_file, "latin-1")
                 if ln.strip()]
        if all(len(p) == 2 and p[1].isdigit() for p in pairs):
            genres = [g for g, _ in sorted(pairs, key=lambda p: int(p[1]))]
    text: dict[str, str] = {}
    item_file = folder / "u.item"
    if item_file.is_file():
        for lineno, line in read_lines(item_file, "latin-1"):
            if not line.strip():
                continue
            fields = line.rstrip("\r\n").split("|")
            if len(fields) < 5 + len(genres):
                raise DatasetError(
                    f"{item_file}: line {lineno}: expected {5 + len(genres)} '|'-separated "
                    f"fields (id, title, dates, URL, {len(genres)} genre flags), "
                    f"found {len(fields)}"
                )
            flags = fields[5 : 5 + len(genres)]
            chosen = [g for g, f in zip(genres, flags, strict=True) if f.strip() == "1"]
            text[fields[0].strip()] = movielens_text(fields[1], chosen, with_title=with_title)
    else:
        warn_no_text(data, [str(item_file)])
    name = folder.name if Path(path).is_dir() else "ml-100k"
    return _assemble(name, data, cols, names, 0, "latin-1", text)


def read_ml1m(path: Path, *, with_title: bool = True) -> RawInteractions:
    """Read MovieLens 1M (folder with ``ratings.dat`` [+ ``movies.dat``], or ``ratings.dat``).

    Args:
        path: the ``ml-1m`` folder or its ``ratings.dat``.
        with_title: put the title in the item text.
    """
    folder, data = _locate(Path(path), "ratings.dat")
    names = ("UserID", "MovieID", "Rating", "Timestamp")
    _, cols = read_delimited(data, delimiter="\t", column_names=names, quoting=False,
                             encoding="latin-1", replace=(b"::", b"\t"))
    text: dict[str, str] = {}
    movies = folder / "movies.dat"
    if movies.is_file():
        for lineno, line in read_lines(movies, "latin-1"):
            if not line.strip():
                continue
            fields = line.rstrip("\r\n").split("::")
            if len(fields) != 3:
                raise DatasetError(
                    f"{movies}: line {lineno}: expected 'MovieID::Title::Genres', "
                    f"found {len(fields)} '::'-separated fields"
                )
            text[fields[0].strip()] = movielens_text(
                fields[1], fields[2].split("|"), with_title=with_title
            )
    else:
        warn_no_text(data, [str(movies)])
    name = folder.name if Path(path).is_dir() else "ml-1m"
    return _assemble(name, data, cols, names, 0, "latin-1", text)


def read_ml_latest(path: Path, *, with_title: bool = True) -> RawInteractions:
    """Read MovieLens latest / latest-small / 20M / 25M / 32M (``ratings.csv``, ``movies.csv``).

    Args:
        path: the folder or its ``ratings.csv``.
        with_title: put the title in the item text.
    """
    folder, data = _locate(Path(path), "ratings.csv")
    names = ("userId", "movieId", "rating", "timestamp")
    header, cols = read_delimited(data, delimiter=",")
    require_columns(header, dict(zip(("user", "item", "rating", "timestamp"), names,
                                     strict=True)), data)
    text: dict[str, str] = {}
    movies = folder / "movies.csv"
    if movies.is_file():
        mheader, mcols = read_delimited(movies, delimiter=",")
        require_columns(mheader, {"item": "movieId", "title": "title", "genres": "genres"},
                        movies)
        for mid, title, genres in zip(mcols["movieId"].to_pylist(), mcols["title"].to_pylist(),
                                      mcols["genres"].to_pylist(), strict=True):
            text[mid.strip()] = movielens_text(title, genres.split("|"), with_title=with_title)
    else:
        warn_no_text(data, [str(movies)])
    name = folder.name if Path(path).is_dir() else "ml-latest"
    return _assemble(name, data, cols, names, 1, "utf-8", text)
