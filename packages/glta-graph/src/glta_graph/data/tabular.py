"""Generic tables: CSV (any delimiter, gzip too), Parquet, and Hugging Face ``datasets``.

Columns are named by the user (``user_col``, ``item_col``, optional ``rating_col``,
``timestamp_col``, ``text_col``). When ``user_col``/``item_col`` are not given, common names
are tried (``user_id``, ``userId``, ``user``, ``reviewerID``...; ``item_id``, ``movieId``,
``item``, ``parent_asin``, ``asin``...), and so are the rating (``rating``, ``overall``...)
and timestamp (``timestamp``, ``unixReviewTime``...) columns. Timestamps may be numbers
(seconds, or milliseconds: detected) or ISO date strings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from glta_graph.data.interactions import DatasetError
from glta_graph.data.jsonlines import to_seconds
from glta_graph.data.raw import (
    RawInteractions,
    factorize_ids,
    join_text,
    line_mapper,
    open_text,
    read_delimited,
    require_columns,
    to_float,
)

__all__ = ["read_csv", "read_hf", "read_parquet", "read_table"]

_USER_GUESSES = ("user_id", "userId", "user", "userID", "reviewerID", "uid")
# parent_asin before asin: Amazon 2023 rates the product group, not the variant
_ITEM_GUESSES = ("item_id", "itemId", "item", "itemID", "movieId", "parent_asin", "asin",
                 "book_id", "iid")
_RATING_GUESSES = ("rating", "overall", "stars", "score")
_TIME_GUESSES = ("timestamp", "unixReviewTime", "time", "ts")
#: ``sep=`` spellings of a tab accepted from the command line.
_TAB_NAMES = ("tab", "\\t", "\t", "TAB")
_HF_BUILDERS = {"csv": "csv", "tsv": "csv", "json": "json", "jsonl": "json",
                "parquet": "parquet", "arrow": "arrow"}


def _guess(header: Sequence[str], given: str | None, guesses: Sequence[str], role: str,
           source: str) -> str:
    if given is not None:
        return given
    for g in guesses:
        if g in header:
            return g
    raise DatasetError(
        f"{source}: no {role} column given and none of {', '.join(guesses)} found; "
        f"columns found: {', '.join(header)} (pass {role}_col=NAME)"
    )


def _timestamps(col: pa.ChunkedArray | pa.Array, what: str, source: str,
                line_of: Callable[[int], int] | None) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_timestamp(arr.type) or pa.types.is_date(arr.type):
        secs = pc.cast(pc.cast(arr, pa.timestamp("s")), pa.int64())
        return secs.to_numpy(zero_copy_only=False).astype(np.float64)
    try:
        return to_seconds(to_float(arr, what=what, source=source, line_of=line_of))
    except DatasetError:
        pass
    values = arr.to_pylist()
    out = np.empty(len(values), dtype=np.float64)
    for row, value in enumerate(values):
        try:
            out[row] = np.datetime64(str(value).strip().replace(" ", "T"), "s").astype(np.int64)
        except ValueError:
            where = f"line {line_of(row)}" if line_of else f"row {row + 1}"
            raise DatasetError(
                f"{source}: {where}: field {what!r} has value {value!r}, which is neither a "
                f"number nor an ISO date"
            ) from None
    return out


def read_table(
    columns: dict[str, pa.ChunkedArray | pa.Array],
    *,
    source: str,
    name: str,
    user_col: str | None = None,
    item_col: str | None = None,
    rating_col: str | None = None,
    timestamp_col: str | None = None,
    text_col: str | None = None,
    line_of: Callable[[int], int] | None = None,
) -> RawInteractions:
    """Build :class:`RawInteractions` from named columns (shared by CSV/Parquet/HF).

    Args:
        columns: column name -> (n,) column.
        source / name: for messages and the dataset name.
        user_col / item_col: id columns (guessed when ``None``).
        rating_col / timestamp_col / text_col: optional columns; the item text is the first
            non-empty ``text_col`` value seen for each item.
        line_of: row index -> line number for messages.
    """
    header = list(columns)
    user_col = _guess(header, user_col, _USER_GUESSES, "user", source)
    item_col = _guess(header, item_col, _ITEM_GUESSES, "item", source)
    if rating_col is None:
        rating_col = next((g for g in _RATING_GUESSES if g in header), None)
    if timestamp_col is None:
        timestamp_col = next((g for g in _TIME_GUESSES if g in header), None)
    require_columns(header, {"user": user_col, "item": item_col, "rating": rating_col,
                             "timestamp": timestamp_col, "text": text_col}, source)
    user_ids, users = factorize_ids(columns[user_col], what=user_col, source=source,
                                    line_of=line_of)
    item_ids, items = factorize_ids(columns[item_col], what=item_col, source=source,
                                    line_of=line_of)
    ratings = stamps = None
    if rating_col is not None:
        ratings = to_float(columns[rating_col], what=rating_col, source=source, line_of=line_of)
    if timestamp_col is not None:
        stamps = _timestamps(columns[timestamp_col], timestamp_col, source, line_of)
    text: dict[str, str] = {}
    if text_col is not None:
        texts = columns[text_col].to_pylist()
        for code, value in zip(items.tolist(), texts, strict=True):
            iid = item_ids[code]
            if iid not in text and value is not None:
                cleaned = join_text(value)
                if cleaned:
                    text[iid] = cleaned
    return RawInteractions(user_ids, item_ids, users, items, ratings=ratings, timestamps=stamps,
                           item_text=text, name=name, source=source)


def _sniff_sep(path: Path, encoding: str) -> str:
    """Tab for ``.tsv``/``.tab`` names or a header with tabs and no commas, else comma."""
    name = path.name.lower()
    for z in ("", ".gz", ".bz2", ".xz", ".zip"):
        if name.endswith((f".tsv{z}", f".tab{z}")):
            return "\t"
    try:
        with open_text(path, encoding) as fh:
            first = fh.readline()
    except (OSError, EOFError, UnicodeError, LookupError, DatasetError):
        return ","  # read_delimited names the problem
    return "\t" if "\t" in first and "," not in first else ","


def read_csv(path: Path, *, sep: str | None = None, encoding: str = "utf-8",
             user_col: str | None = None, item_col: str | None = None,
             rating_col: str | None = None, timestamp_col: str | None = None,
             text_col: str | None = None) -> RawInteractions:
    """Read a delimited file with a header line (compressed too).

    Args:
        path: the file.
        sep: one-character delimiter; ``"tab"`` or ``"\\t"`` is a tab. Default: tab for
            ``.tsv``/``.tab`` files and for a header with tabs but no commas, else comma.
        encoding: text encoding.
        user_col / item_col / rating_col / timestamp_col / text_col: see :func:`read_table`;
            the rating and timestamp columns are guessed (``rating``, ``overall``, ...;
            ``timestamp``, ``unixReviewTime``, ...) when not given.

    A file whose first line is data of the form ``user,item,<number>,<integer>`` (the
    Amazon 2014/2018 ratings-only CSVs have no header) is read with the columns
    :data:`RATINGS_ONLY`.
    """
    path = Path(path)
    if sep is None:
        sep = _sniff_sep(path, encoding)
    elif sep in _TAB_NAMES:
        sep = "\t"
    if len(sep) != 1:
        raise DatasetError(f"csv option sep={sep!r}: the delimiter must be one character "
                           f"(or tab)")
    names = RATINGS_ONLY if _headerless_ratings(path, sep, encoding) else None
    _, cols = read_delimited(path, delimiter=sep, encoding=encoding, column_names=names)
    return read_table(cols, source=str(path), name=path.name.split(".")[0], user_col=user_col,
                      item_col=item_col, rating_col=rating_col, timestamp_col=timestamp_col,
                      text_col=text_col, line_of=line_mapper(path, 0 if names else 1, encoding))


#: Columns of a header-less ``user,item,rating,timestamp`` file (the Amazon 2014/2018
#: "ratings only" CSVs, ``ratings_<Category>.csv`` / ``<Category>.csv``).
RATINGS_ONLY = ("user_id", "item_id", "rating", "timestamp")


def _headerless_ratings(path: Path, sep: str, encoding: str) -> bool:
    """True when the first line is data, ``user,item,<number>,<integer>``, not a header."""
    try:
        with open_text(path, encoding) as fh:
            fields = fh.readline().strip().split(sep)
    except (OSError, EOFError, UnicodeError, LookupError, DatasetError):
        return False
    if len(fields) != 4:
        return False
    try:
        float(fields[2])
        int(fields[3])
    except ValueError:
        return False
    return True


def read_parquet(path: Path, *, user_col: str | None = None, item_col: str | None = None,
                 rating_col: str | None = None, timestamp_col: str | None = None,
                 text_col: str | None = None) -> RawInteractions:
    """Read a Parquet file (or a folder of Parquet files, read as one table).

    Args:
        path: the file or folder.
        user_col / item_col / rating_col / timestamp_col / text_col: see :func:`read_table`.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: missing Parquet file (no such file or directory)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatasetError(f"{path}: cannot read as Parquet: {exc}") from exc
    cols = {n: table.column(n) for n in table.column_names}
    return read_table(cols, source=str(path), name=path.name.split(".")[0], user_col=user_col,
                      item_col=item_col, rating_col=rating_col, timestamp_col=timestamp_col,
                      text_col=text_col)


def read_hf(source: str | Path, *, split: str = "train", config_name: str | None = None,
            user_col: str | None = None, item_col: str | None = None,
            rating_col: str | None = None, timestamp_col: str | None = None,
            text_col: str | None = None) -> RawInteractions:
    """Read a Hugging Face ``datasets`` source with the ``datasets`` library.

    Args:
        source: a hub name, a local dataset folder usable by ``datasets.load_dataset``
            (works offline for local paths), a single local ``.csv``/``.json[l]``/
            ``.parquet``/``.arrow`` file, or a folder written by ``save_to_disk``.
        split: which split of the source to read.
        config_name: the dataset configuration (``name=`` of ``datasets.load_dataset``).
        user_col / item_col / rating_col / timestamp_col / text_col: see :func:`read_table`.
    """
    import datasets

    from glta_graph.data.interactions import _quiet_datasets

    src = str(source)
    local = Path(src)
    try:
        with _quiet_datasets():
            if local.is_dir() and (local / "dataset_info.json").is_file():
                ds = datasets.load_from_disk(src)
            elif local.is_file():
                builder = _HF_BUILDERS.get(local.name.removesuffix(".gz").rsplit(".", 1)[-1])
                if builder is None:
                    raise DatasetError(
                        f"{src}: a single file must end in "
                        f"{', '.join('.' + k for k in _HF_BUILDERS)} for format 'hf'"
                    )
                ds = datasets.load_dataset(builder, data_files=src, split=split)
            else:
                ds = datasets.load_dataset(src, config_name, split=split)
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DatasetError(
                        f"{src}: no split {split!r}; splits found: {', '.join(ds)}"
                    )
                ds = ds[split]
    except DatasetError:
        raise
    except Exception as exc:  # datasets raises many types (FileNotFoundError, hub errors...)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatasetError(f"{src}: cannot load as a Hugging Face dataset: {first}") from exc
    table = ds.with_format("arrow")[:]
    cols = {n: table.column(n) for n in table.column_names}
    return read_table(cols, source=src, name=local.name or src, user_col=user_col,
                      item_col=item_col, rating_col=rating_col, timestamp_col=timestamp_col,
                      text_col=text_col)
