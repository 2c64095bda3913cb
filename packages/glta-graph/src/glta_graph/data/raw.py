"""`RawInteractions`: a source's interactions as read, before preprocessing, and the helpers
every format reader shares (id factorisation, numeric columns with line-accurate errors,
delimited-file reading, MovieLens item text)."""

from __future__ import annotations

import gzip
import io
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from glta_graph.data.interactions import DatasetError

__all__ = [
    "RawInteractions",
    "factorize_ids",
    "movielens_text",
    "open_text",
    "read_delimited",
    "to_float",
]

_CANONICAL_INT = re.compile(r"^(0|-?[1-9][0-9]{0,17})$")


@dataclass
class RawInteractions:
    """Interactions exactly as a format reader found them (no filtering, no split).

    Attributes:
        user_ids: sorted external user ids (numeric order when every id is an integer).
        item_ids: sorted external item ids, same rule.
        users: (n,) int64 indices into ``user_ids``, one per interaction row.
        items: (n,) int64 indices into ``item_ids``.
        ratings: (n,) float64 ratings, or ``None`` when the source has none.
        timestamps: (n,) float64 seconds (NaN where missing), or ``None``.
        item_text: external item id -> description (items without one are absent).
        name: dataset name (usually the folder or file name).
        presplit: (n,) int8 split codes (0 train, 2 test) when the source fixes the split
            (LightGCN format), else ``None``.
        source: the path or name that was read, for messages.
    """

    user_ids: list[str]
    item_ids: list[str]
    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray | None = None
    timestamps: np.ndarray | None = None
    item_text: dict[str, str] = field(default_factory=dict)
    name: str = "dataset"
    presplit: np.ndarray | None = None
    source: str = ""

    def __post_init__(self) -> None:
        self.users = np.asarray(self.users, dtype=np.int64)
        self.items = np.asarray(self.items, dtype=np.int64)
        n = self.users.shape[0]
        for label in ("items", "ratings", "timestamps", "presplit"):
            arr = getattr(self, label)
            if arr is not None and np.asarray(arr).shape != (n,):
                raise DatasetError(
                    f"{self.source or self.name}: column {label!r} has "
                    f"{np.asarray(arr).shape[0]} rows, users have {n}"
                )

    @property
    def num_interactions(self) -> int:
        """Number of interaction rows (duplicates included)."""
        return int(self.users.shape[0])


# -- ids ----------------------------------------------------------------------------------


def _sorted_ids(uniques: list[str]) -> np.ndarray:
    """Return the order that sorts ``uniques``: numerically if all are canonical ints."""
    if uniques and all(_CANONICAL_INT.match(u) for u in uniques):
        return np.argsort(np.array([int(u) for u in uniques], dtype=np.int64), kind="stable")
    return np.argsort(np.array(uniques, dtype=object), kind="stable")


def factorize_ids(
    values: pa.Array | pa.ChunkedArray | np.ndarray | Sequence[object],
    *,
    what: str = "id",
    source: str = "",
    line_of: Callable[[int], int] | None = None,
) -> tuple[list[str], np.ndarray]:
    """Map external ids to sorted internal indices.

    Ids are compared as strings (``str`` of the source value). When every id is a
    canonical integer (``"7"``, not ``"007"``) the order is numeric, else lexicographic.

    Args:
        values: (n,) ids as a pyarrow array, numpy array or sequence.
        what: the field name, for messages.
        source: the file, for messages.
        line_of: maps a row index to its line number in ``source`` for messages.

    Returns:
        ``(ids, codes)``: the sorted unique ids as strings and (n,) int64 indices into them.

    Raises:
        DatasetError: a missing (null or empty) id, naming the file and line.
    """
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu":
        uniq, codes = np.unique(values, return_inverse=True)
        return [str(int(x)) for x in uniq], codes.astype(np.int64).reshape(-1)
    arr = values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(values)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], type=arr.type)
    if pa.types.is_integer(arr.type) and arr.null_count == 0:
        return factorize_ids(arr.to_numpy(zero_copy_only=False).astype(np.int64))
    if not pa.types.is_string(arr.type) and not pa.types.is_large_string(arr.type):
        arr = pc.cast(arr, pa.string())
    arr = pc.utf8_trim_whitespace(arr)
    bad = pc.or_(pc.is_null(arr), pc.equal(arr, ""))
    bad = pc.fill_null(bad, True)
    if pc.any(bad).as_py():
        row = int(np.flatnonzero(bad.to_numpy(zero_copy_only=False))[0])
        where = f"line {line_of(row)}" if line_of else f"row {row + 1}"
        raise DatasetError(f"{source}: {where}: field {what!r} is empty")
    enc = arr.dictionary_encode()
    uniques = enc.dictionary.to_pylist()
    order = _sorted_ids(uniques)
    rank = np.empty(len(uniques), dtype=np.int64)
    rank[order] = np.arange(len(uniques), dtype=np.int64)
    codes = rank[enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)]
    return [uniques[i] for i in order], codes


# -- numbers ------------------------------------------------------------------------------


def to_float(
    values: pa.Array | pa.ChunkedArray | Sequence[object],
    *,
    what: str,
    source: str,
    line_of: Callable[[int], int] | None = None,
) -> np.ndarray:
    """Convert a column to (n,) float64, or fail naming the file, line, field and value.

    Args:
        values: the column (strings or numbers).
        what: field name for messages (e.g. ``"rating"``).
        source: file name for messages.
        line_of: maps a row index to the line number in ``source``.

    Raises:
        DatasetError: on the first value that is empty or not a number.
    """
    arr = values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(values)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], type=pa.float64())
    if pa.types.is_floating(arr.type) or pa.types.is_integer(arr.type):
        if arr.null_count == 0:
            return arr.to_numpy(zero_copy_only=False).astype(np.float64)
    elif pa.types.is_boolean(arr.type):
        arr = pc.cast(arr, pa.int8())
    try:
        out = pc.cast(arr, pa.float64())
        if out.null_count == 0:
            return out.to_numpy(zero_copy_only=False).astype(np.float64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    values = arr.to_pylist()
    out = np.empty(len(values), dtype=np.float64)
    for row, value in enumerate(values):  # slow path: padded numbers, or find the bad one
        try:
            if value is None:
                raise ValueError
            out[row] = float(value)
        except (TypeError, ValueError):
            where = f"line {line_of(row)}" if line_of else f"row {row + 1}"
            raise DatasetError(
                f"{source}: {where}: field {what!r} has value {value!r}, which is not a number"
            ) from None
    return out


# -- files --------------------------------------------------------------------------------


def open_text(path: str | os.PathLike[str], encoding: str = "utf-8") -> io.TextIOBase:
    """Open a text file for reading, transparently decompressing ``.gz``."""
    path = Path(path)
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding=encoding, newline="")
    return open(path, encoding=encoding, newline="")


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` if it is a file, else raise ``DatasetError`` naming it."""
    if not path.is_file():
        raise DatasetError(f"{path}: missing {what} (no such file)")
    return path


def line_mapper(path: Path, header_lines: int, encoding: str = "utf-8") -> Callable[[int], int]:
    """Return ``row -> physical line number`` for a delimited file (error path only).

    Rows are counted the way the CSV reader counts them: blank lines are skipped.
    """

    def line_of(row: int) -> int:
        seen = -1
        with open_text(path, encoding) as fh:
            for lineno, line in enumerate(fh, 1):
                if lineno <= header_lines or not line.strip():
                    continue
                seen += 1
                if seen == row:
                    return lineno
        return row + header_lines + 1

    return line_of


def read_delimited(
    path: Path,
    *,
    delimiter: str,
    column_names: Sequence[str] | None = None,
    encoding: str = "utf-8",
    quoting: bool = True,
    replace: tuple[bytes, bytes] | None = None,
) -> tuple[list[str], dict[str, pa.ChunkedArray]]:
    """Read a delimited text file (optionally gzip) with every column as strings.

    Args:
        path: the file.
        delimiter: one character.
        column_names: names when the file has no header line, else ``None`` (header used).
        encoding: the file's text encoding (e.g. ``"latin-1"`` for MovieLens 100K/1M).
        quoting: honour ``"`` quoting.
        replace: ``(old, new)`` bytes substitution applied first (``::`` -> tab for ml-1m).

    Returns:
        ``(header, columns)``: the column names in file order and name -> string column.

    Raises:
        DatasetError: unreadable file or a line with the wrong number of fields.
    """
    require_file(path, "data file")
    source: pa.BufferReader | str = str(path)  # pyarrow streams files, gunzips ``.gz``
    if replace is not None:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
        source = pa.BufferReader(raw.replace(*replace))
    if column_names is None:
        try:
            with open_text(path, encoding) as fh:
                first = fh.readline().rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{path}: line 1: not {encoding} text ({exc.reason})") from None
        header = [h.strip().strip('"') for h in first.lstrip("\ufeff").split(delimiter)]
    else:
        header = list(column_names)
    read_opts = pacsv.ReadOptions(
        column_names=header,
        skip_rows=0 if column_names is not None else 1,
        encoding=encoding,
        block_size=1 << 24,
    )
    parse_opts = pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if quoting else False)
    convert = pacsv.ConvertOptions(
        column_types={h: pa.string() for h in header},
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    try:
        table = pacsv.read_csv(
            source, read_options=read_opts, parse_options=parse_opts,
            convert_options=convert,
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        msg = str(exc).splitlines()[0]
        raise DatasetError(f"{path}: cannot parse as {delimiter!r}-separated text: {msg}") from exc
    return header, {h: table.column(h) for h in header}


def require_columns(
    header: Sequence[str], wanted: Mapping[str, str | None], source: str | Path
) -> None:
    """Raise ``DatasetError`` naming every wanted column missing from ``header``.

    Args:
        header: the columns found.
        wanted: role (``"user"``, ``"rating"``, ...) -> column name (``None`` = not wanted).
        source: file or dataset name for the message.
    """
    missing = [f"{role} column {name!r}" for role, name in wanted.items()
               if name is not None and name not in header]
    if missing:
        raise DatasetError(
            f"{source}: missing {', '.join(missing)}; columns found: {', '.join(header)}"
        )


def _python_literal(line: str) -> object | None:
    """Parse a Python dict literal (safely, no code runs), or ``None``."""
    import ast

    if not line.lstrip().startswith("{"):
        return None
    try:
        return ast.literal_eval(line.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


def iter_json_lines(path: Path) -> Iterator[tuple[int, dict[str, object]]]:
    """Yield ``(line_number, record)`` for a JSON-lines file (``.gz`` too).

    Lines holding a Python dict literal (the 2014 Amazon metadata files) are accepted too.

    Raises:
        DatasetError: a line that is not a JSON object, naming file and line.
    """
    import json

    require_file(path, "JSON lines file")
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                rec = _python_literal(line)  # Amazon 2014 metadata: one Python dict per line
                if rec is None:
                    raise DatasetError(
                        f"{path}: line {lineno}: not valid JSON ({exc.msg})"
                    ) from None
            if not isinstance(rec, dict):
                raise DatasetError(f"{path}: line {lineno}: expected a JSON object")
            yield lineno, rec


# -- item text ----------------------------------------------------------------------------


def movielens_text(title: str, genres: Sequence[str], *, with_title: bool = True) -> str:
    """MovieLens item text: ``"Title (year). Genres: A, B"`` (or ``"Genres: A, B"``).

    ``"(no genres listed)"`` and an empty list render as ``"Genres: unknown"``.
    """
    names = [g.strip() for g in genres if g.strip() and g.strip() != "(no genres listed)"]
    genre_part = "Genres: " + (", ".join(names) if names else "unknown")
    title = title.strip()
    return f"{title}. {genre_part}" if with_title and title else genre_part


def join_text(*parts: object) -> str:
    """Join non-empty text parts with ``". "``; lists are joined with spaces first."""
    out = []
    for part in parts:
        if isinstance(part, list | tuple):
            part = " ".join(str(p).strip() for p in part if p is not None and str(p).strip())
        if part is None:
            continue
        text = " ".join(str(part).split())
        if text:
            out.append(text.rstrip("."))
    return ". ".join(out)
