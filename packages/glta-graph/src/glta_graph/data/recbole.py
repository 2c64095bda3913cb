"""RecBole atomic files: ``<name>.inter`` and optional ``<name>.item``.

Tab-separated, one typed header line such as
``user_id:token\\titem_id:token\\trating:float\\ttimestamp:float``; ``token_seq`` fields
hold space-separated tokens. The embedded MovieLens-100K (inside the ``recbole`` wheel) is in
this format; its ``.item`` file has ``movie_title``, ``release_year`` and ``class`` (genres),
rendered as MovieLens text ``"Title (year). Genres: A, B"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from glta_graph.data.interactions import DatasetError
from glta_graph.data.raw import (
    RawInteractions,
    factorize_ids,
    join_text,
    line_mapper,
    movielens_text,
    read_delimited,
    read_lines,
    require_columns,
    to_float,
    warn_no_text,
)

__all__ = ["read_recbole"]

_TEXT_FIELDS = ("title", "movie_title", "name", "book_title", "description", "categories",
                "genre", "genres", "class")


def _find_inter(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise DatasetError(f"{path}: no such file or directory")
    named = path / f"{path.name}.inter"
    if named.is_file():
        return named
    found = sorted(path.glob("*.inter"))
    if len(found) != 1:
        raise DatasetError(
            f"{path}: expected one RecBole '.inter' file, found "
            f"{len(found) or 'none'}{': ' + ', '.join(p.name for p in found) if found else ''}"
        )
    return found[0]


def _typed_header(path: Path) -> tuple[list[str], list[str]]:
    """Split ``name:type`` header fields into names and types."""
    first = next((line for _, line in read_lines(path) if line.strip()), None)
    if first is None:
        raise DatasetError(f"{path}: the file is empty")
    first = first.lstrip("\ufeff").rstrip("\r\n")
    names, types = [], []
    for col in first.split("\t"):
        name, _, typ = col.partition(":")
        names.append(name.strip())
        types.append(typ.strip() or "token")
    return names, types


def read_recbole(
    path: Path,
    *,
    user_field: str = "user_id",
    item_field: str = "item_id",
    rating_field: str | None = "rating",
    timestamp_field: str | None = "timestamp",
    text_fields: Sequence[str] | None = None,
    with_title: bool = True,
) -> RawInteractions:
    """Read RecBole atomic files.

    Args:
        path: a folder ``<name>/`` holding ``<name>.inter`` (or a single ``*.inter``), or the
            ``.inter`` file itself; ``<name>.item`` beside it supplies item text.
        user_field / item_field: the id fields of ``.inter`` (without ``:type``).
        rating_field / timestamp_field: optional fields; used when present.
        text_fields: ``.item`` fields to join into item text; default: MovieLens style when
            ``movie_title`` and ``class`` exist, else any of title/name/description/
            categories/genre fields present.
        with_title: include title fields in the item text.
    """
    inter = _find_inter(Path(path))
    names, _ = _typed_header(inter)
    require_columns(names, {"user": user_field, "item": item_field}, inter)
    _, cols = read_delimited(inter, delimiter="\t", quoting=False)
    cols = dict(zip(names, cols.values(), strict=True))
    line_of = line_mapper(inter, 1)
    src = str(inter)
    user_ids, users = factorize_ids(cols[user_field], what=user_field, source=src,
                                    line_of=line_of)
    item_ids, items = factorize_ids(cols[item_field], what=item_field, source=src,
                                    line_of=line_of)
    ratings = stamps = None
    if rating_field is not None and rating_field in cols:
        ratings = to_float(cols[rating_field], what=rating_field, source=src, line_of=line_of)
    if timestamp_field is not None and timestamp_field in cols:
        stamps = to_float(cols[timestamp_field], what=timestamp_field, source=src,
                          line_of=line_of)
    text: dict[str, str] = {}
    item_file = inter.with_suffix(".item")
    if item_file.is_file():
        inames, _ = _typed_header(item_file)
        require_columns(inames, {"item": item_field}, item_file)
        _, icols = read_delimited(item_file, delimiter="\t", quoting=False)
        icols = {n: c.to_pylist() for n, c in zip(inames, icols.values(), strict=True)}
        ids = icols[item_field]
        if text_fields is None and "movie_title" in icols and "class" in icols:
            years = icols.get("release_year", [""] * len(ids))
            for iid, title, year, genres in zip(ids, icols["movie_title"], years,
                                                icols["class"], strict=True):
                full = f"{title.strip()} ({year.strip()})" if year.strip() else title
                text[iid.strip()] = movielens_text(full, genres.split(), with_title=with_title)
        else:
            fields = list(text_fields) if text_fields is not None else [
                f for f in _TEXT_FIELDS if f in icols]
            require_columns(inames, {f"text field {i}": f for i, f in enumerate(fields)},
                            item_file)
            if not with_title:
                fields = [f for f in fields if f not in ("title", "movie_title", "name",
                                                         "book_title")]
            for row, iid in enumerate(ids):
                text[iid.strip()] = join_text(*(icols[f][row] for f in fields))
    else:
        warn_no_text(inter, [str(item_file)])
    return RawInteractions(user_ids, item_ids, users, items, ratings=ratings, timestamps=stamps,
                           item_text=text, name=inter.stem, source=src)
