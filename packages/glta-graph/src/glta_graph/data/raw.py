"""`RawInteractions`: a source's interactions as read, before preprocessing, and the helpers
every format reader shares (id factorisation, numeric columns with line-accurate errors,
delimited-file reading, MovieLens item text)."""

from __future__ import annotations

import bz2
import gzip
import html
import io
import lzma
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from glta_graph.data.interactions import DatasetError

__all__ = [
    "COMPRESSED_SUFFIXES",
    "LIST_SEPARATOR",
    "RawInteractions",
    "clean_text",
    "compression_of",
    "decode_text",
    "factorize_ids",
    "iter_json_lines",
    "movielens_text",
    "open_binary",
    "open_text",
    "read_bytes",
    "read_delimited",
    "read_error",
    "read_lines",
    "to_float",
    "warn_no_text",
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

#: Compressed suffixes every reader understands (a ``.zip`` must hold exactly one file).
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zip")


def compression_of(path: str | os.PathLike[str]) -> str | None:
    """``"gz"``, ``"bz2"``, ``"xz"``, ``"zip"`` from the file name, else ``None``."""
    suffix = Path(path).suffix.lower()
    return suffix[1:] if suffix in COMPRESSED_SUFFIXES else None


def _zip_member(path: Path) -> tuple[zipfile.ZipFile, str]:
    zf = zipfile.ZipFile(path)
    names = [n for n in zf.namelist() if not n.endswith("/") and not n.startswith("__MACOSX")]
    if len(names) != 1:
        zf.close()
        shown = ", ".join(names[:5]) or "nothing"
        raise DatasetError(f"{path}: a .zip must hold exactly one data file, found {shown}; "
                           f"unpack it and pass the file or folder")
    return zf, names[0]


def open_binary(path: str | os.PathLike[str]) -> BinaryIO:
    """Open a file for binary reading, decompressing ``.gz``, ``.bz2``, ``.xz``, ``.zip``.

    Raises:
        DatasetError: a corrupt archive or a ``.zip`` that holds more than one file.
    """
    path = Path(path)
    kind = compression_of(path)
    try:
        if kind == "gz":
            return gzip.open(path, "rb")  # type: ignore[return-value]
        if kind == "bz2":
            return bz2.open(path, "rb")  # type: ignore[return-value]
        if kind == "xz":
            return lzma.open(path, "rb")  # type: ignore[return-value]
        if kind == "zip":
            zf, name = _zip_member(path)
            return zf.open(name)  # type: ignore[return-value]
    except (zipfile.BadZipFile, EOFError, OSError, lzma.LZMAError, zlib.error) as exc:
        raise read_error(path, exc) from None
    return open(path, "rb")


def read_error(path: str | os.PathLike[str], exc: BaseException, where: str | None = None,
               encoding: str = "utf-8") -> DatasetError:
    """One line naming ``path`` (and ``where``, e.g. ``"line 12"``) for a reading failure.

    Maps truncated or corrupt compressed data (gzip, bz2, xz, zip), text that is not in
    ``encoding`` and other OS errors to a message that says what to do.
    """
    at = f"{path}: {where}: " if where else f"{path}: "
    kind = compression_of(path)
    if isinstance(exc, DatasetError):
        return exc
    if isinstance(exc, EOFError):
        return DatasetError(f"{at}the {kind or 'compressed'} file is truncated (it ends before "
                            f"its end-of-stream marker); download it again")
    if isinstance(exc, gzip.BadGzipFile):
        return DatasetError(f"{at}not a gzip file although the name ends in .gz ({exc})")
    if isinstance(exc, zipfile.BadZipFile):
        return DatasetError(f"{at}not a valid zip archive ({exc})")
    if isinstance(exc, zlib.error | lzma.LZMAError):
        return DatasetError(f"{at}corrupt {kind or 'compressed'} data ({exc})")
    if isinstance(exc, UnicodeDecodeError):
        byte = exc.object[exc.start : exc.start + 1].hex()
        hint = "latin-1" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else "utf-8"
        return DatasetError(f"{at}not {encoding} text (byte 0x{byte}: {exc.reason}); pass "
                            f"encoding={hint} or convert the file to UTF-8")
    if isinstance(exc, OSError) and kind is not None:
        return DatasetError(f"{at}corrupt {kind} data ({exc.strerror or exc})")
    return DatasetError(f"{at}cannot read ({exc})")


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The whole (decompressed) content of a file; every failure names the file."""
    try:
        with open_binary(path) as fh:
            return fh.read()
    except (EOFError, OSError, zlib.error, lzma.LZMAError, zipfile.BadZipFile) as exc:
        raise read_error(path, exc) from None


def decode_text(data: bytes, path: str | os.PathLike[str], encoding: str = "utf-8",
                first_line: int = 1) -> str:
    """Decode ``data`` read from ``path`` (starting at line ``first_line`` of it); an error
    names the file and line."""
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + first_line
        raise read_error(path, exc, f"line {line}", encoding) from None
    except LookupError:
        raise DatasetError(f"{path}: unknown encoding {encoding!r}") from None


def open_text(path: str | os.PathLike[str], encoding: str = "utf-8") -> io.TextIOBase:
    """Open a text file for reading, decompressing ``.gz``/``.bz2``/``.xz``/``.zip``."""
    return io.TextIOWrapper(open_binary(path), encoding=encoding, newline="")


def read_lines(path: str | os.PathLike[str], encoding: str = "utf-8"
               ) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` of a text file (compressed too); a truncated archive or
    a byte not in ``encoding`` raises ``DatasetError`` naming the file and line."""
    lineno = 0
    try:
        with open_binary(path) as fh:
            for lineno, raw in enumerate(fh, 1):
                yield lineno, decode_text(raw, path, encoding, first_line=lineno)
    except (EOFError, OSError, zlib.error, lzma.LZMAError, zipfile.BadZipFile) as exc:
        raise read_error(path, exc, f"after line {lineno}" if lineno else None) from None


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


def _bad_line(text: str, delimiter: str, width: int, header_lines: int,
              quoting: bool) -> tuple[int, int] | None:
    """The first ``(line, fields)`` whose field count is not ``width`` (error path only)."""
    import csv

    reader = csv.reader(io.StringIO(text), delimiter=delimiter,
                        quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE)
    try:
        for row in reader:
            if reader.line_num <= header_lines or not row or row == [""]:
                continue
            if len(row) != width:
                return reader.line_num, len(row)
    except csv.Error:
        return reader.line_num, -1
    return None


def _is_blank(data: bytes) -> bool:
    return not data.strip(b" \t\r\n\x00\xef\xbb\xbf")


def read_delimited(
    path: Path,
    *,
    delimiter: str,
    column_names: Sequence[str] | None = None,
    encoding: str = "utf-8",
    quoting: bool = True,
    replace: tuple[bytes, bytes] | None = None,
) -> tuple[list[str], dict[str, pa.ChunkedArray]]:
    """Read a delimited text file (optionally compressed) with every column as strings.

    Plain UTF-8 files are streamed by pyarrow; compressed files and other encodings are
    decoded in Python first (so a truncated archive, an empty file or a bad byte gives a
    message naming the file and line, never a crash inside the CSV reader).

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
        DatasetError: unreadable, truncated or empty file, text not in ``encoding``, or a
            line with the wrong number of fields (naming the line).
    """
    require_file(path, "data file")
    utf8 = encoding.lower().replace("_", "-") in ("utf-8", "utf8", "utf-8-sig")
    text: str | None = None
    if compression_of(path) is None and utf8 and replace is None:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
        if _is_blank(head) and path.stat().st_size <= len(head):
            raise DatasetError(f"{path}: the file is empty")
        source: pa.BufferReader | str = str(path)
    else:
        raw = read_bytes(path)
        if replace is not None:
            raw = raw.replace(*replace)
        if _is_blank(raw):
            raise DatasetError(f"{path}: the file is empty")
        text = decode_text(raw, path, encoding)
        source = pa.BufferReader(text.encode("utf-8"))
    if column_names is None:
        if text is not None:
            first = text.split("\n", 1)[0].rstrip("\r")
        else:
            with open(path, "rb") as fh:
                first_raw = fh.readline()
            first = decode_text(first_raw, path, encoding).rstrip("\r\n")
        header = [h.strip().strip('"') for h in first.lstrip("\ufeff").split(delimiter)]
    else:
        header = list(column_names)
    read_opts = pacsv.ReadOptions(
        column_names=header,
        skip_rows=0 if column_names is not None else 1,
        encoding="utf-8",
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
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        if text is None:  # find the line: decode in Python (error path only)
            text = decode_text(read_bytes(path), path, encoding)
        found = _bad_line(text, delimiter, len(header), 0 if column_names else 1, quoting)
        sep = {"\t": "tab", ",": "comma"}.get(delimiter, repr(delimiter))
        if found is not None and found[1] >= 0:
            raise DatasetError(
                f"{path}: line {found[0]}: expected {len(header)} {sep}-separated fields "
                f"({', '.join(header)}), found {found[1]}"
            ) from None
        msg = str(exc).splitlines()[0]
        where = f"line {found[0]}: " if found is not None else ""
        raise DatasetError(f"{path}: {where}cannot parse as {sep}-separated text: {msg}") from None
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


def iter_json_lines(path: Path) -> Iterator[tuple[str, dict[str, object]]]:
    """Yield ``(where, record)`` for a JSON-lines file or a file holding one JSON array.

    ``where`` is ``"line N"`` (JSON lines) or ``"record N"`` (an array), for messages.
    Compressed files (``.gz``, ``.bz2``, ``.xz``, ``.zip``) are decompressed. Lines holding
    a Python dict literal (the 2014 Amazon metadata files) are accepted too.

    Raises:
        DatasetError: an empty file, a line or record that is not a JSON object, text that
            is not UTF-8, a truncated or corrupt archive; each names the file and line.
    """
    import json

    require_file(path, "JSON lines file")
    lineno = 0
    seen = False
    try:
        with open_binary(path) as fh:
            for lineno, raw in enumerate(fh, 1):
                if _is_blank(raw):
                    continue
                line = decode_text(raw, path, first_line=lineno).lstrip("\ufeff")
                if not seen and line.lstrip().startswith("["):
                    rest = decode_text(fh.read(), path, first_line=lineno + 1)
                    yield from _json_array(path, line + rest, lineno)
                    return
                seen = True
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    rec = _python_literal(line)  # Amazon 2014 metadata: one Python dict a line
                    if rec is None:
                        raise DatasetError(
                            f"{path}: line {lineno}: not valid JSON ({exc.msg})"
                        ) from None
                if not isinstance(rec, dict):
                    raise DatasetError(f"{path}: line {lineno}: expected a JSON object, "
                                       f"found {type(rec).__name__}")
                yield f"line {lineno}", rec
    except (EOFError, OSError, zlib.error, lzma.LZMAError, zipfile.BadZipFile) as exc:
        raise read_error(path, exc, f"after line {lineno}" if lineno else None) from None
    if not seen:
        raise DatasetError(f"{path}: the file is empty")


def _json_array(path: Path, text: str, first_line: int) -> Iterator[tuple[str, dict]]:
    import json

    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"{path}: line {exc.lineno + first_line - 1}: not valid JSON ({exc.msg}); the file "
            f"starts with '[' so it is read as one JSON array"
        ) from None
    if not isinstance(records, list) or not records:
        raise DatasetError(f"{path}: the JSON array is empty")
    for k, rec in enumerate(records, 1):
        if not isinstance(rec, dict):
            raise DatasetError(f"{path}: record {k}: expected a JSON object, "
                               f"found {type(rec).__name__}")
        yield f"record {k}", rec


# -- item text ----------------------------------------------------------------------------


def movielens_text(title: str, genres: Sequence[str], *, with_title: bool = True) -> str:
    """MovieLens item text: ``"Title (year). Genres: A, B"`` (or ``"Genres: A, B"``).

    ``"(no genres listed)"`` and an empty list render as ``"Genres: unknown"``.
    """
    names = [g.strip() for g in genres if g.strip() and g.strip() != "(no genres listed)"]
    genre_part = "Genres: " + (", ".join(names) if names else "unknown")
    title = title.strip()
    return f"{title}. {genre_part}" if with_title and title else genre_part


def warn_no_text(source: str | os.PathLike[str], looked_for: Sequence[str],
                 hint: str = "") -> None:
    """Issue a :class:`DatasetWarning`: no metadata file was found for ``source``, so its
    items have no text (``looked_for``: the file names tried)."""
    import warnings

    from glta_graph.data.interactions import DatasetWarning

    message = (f"{source}: no metadata file found (looked for {', '.join(looked_for)}), so "
               f"items have no text")
    warnings.warn(DatasetWarning(message + (f"; {hint}" if hint else "")), stacklevel=3)


#: What list fields (several description paragraphs, features) are joined with.
LIST_SEPARATOR = " | "
_TAG = re.compile(r"<!--.*?-->|</?[A-Za-z][^<>]*>", re.DOTALL)


def clean_text(value: object) -> str:
    """Plain text from a metadata value: HTML entities decoded, tags removed, spaces folded.

    ``"Tom &amp; Jerry<br>&#x2122;"`` -> ``"Tom & Jerry ™"``. Entities are decoded twice
    at most (some files escape them twice: ``&amp;quot;``). A list is joined with
    :data:`LIST_SEPARATOR` (nested lists are flattened).
    """
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        parts = (clean_text(v) for v in value)
        return LIST_SEPARATOR.join(p for p in parts if p)
    text = str(value)
    for _ in range(2):
        if "&" not in text:
            break
        text = html.unescape(text)
    text = _TAG.sub(" ", text)
    return " ".join(text.split())


def join_text(*parts: object) -> str:
    """Join non-empty text parts with ``". "`` after :func:`clean_text` (lists joined with
    ``" | "`` first)."""
    out = []
    for part in parts:
        text = clean_text(part)
        if text:
            out.append(text.rstrip("."))
    return ". ".join(out)
