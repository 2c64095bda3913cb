"""Shared reader helpers: id factorisation, numeric columns, delimited files, item text."""

from __future__ import annotations

import gzip

import numpy as np
import pyarrow as pa
import pytest

from glta_graph.data import DatasetError, RawInteractions, default_cache_dir
from glta_graph.data.formats import FORMATS
from glta_graph.data.raw import (
    factorize_ids,
    iter_json_lines,
    join_text,
    line_mapper,
    movielens_text,
    read_delimited,
    require_columns,
    to_float,
)


@pytest.mark.parametrize(
    ("values", "ids", "codes"),
    [
        (["10", "2", "1", "2"], ["1", "2", "10"], [2, 1, 0, 1]),  # numeric order
        (["b", "a", "c", "a"], ["a", "b", "c"], [1, 0, 2, 0]),
        (["01", "1", "2"], ["01", "1", "2"], [0, 1, 2]),  # leading zero: kept as strings
        ([" 3", "3 ", "4"], ["3", "4"], [0, 0, 1]),  # padding is not part of an id
        (np.array([5, 3, 5]), ["3", "5"], [1, 0, 1]),
        (pa.array([7, -1, 7]), ["-1", "7"], [1, 0, 1]),
    ],
)
def test_factorize_ids(values, ids, codes):
    got_ids, got_codes = factorize_ids(values)
    assert got_ids == ids and got_codes.tolist() == codes and got_codes.dtype == np.int64


def test_factorize_ids_rejects_missing():
    with pytest.raises(DatasetError, match=r"f\.csv: line 7: field 'user' is empty"):
        factorize_ids(pa.array(["a", None]), what="user", source="f.csv",
                      line_of=lambda r: r + 6)
    with pytest.raises(DatasetError, match="row 2: field 'item' is empty"):
        factorize_ids(["a", " "], what="item")


def test_to_float():
    np.testing.assert_array_equal(to_float(pa.array(["1", "2.5"]), what="r", source="s"),
                                  [1.0, 2.5])
    np.testing.assert_array_equal(to_float([3, 4], what="r", source="s"), [3.0, 4.0])
    np.testing.assert_array_equal(to_float([" 3", "4.5 "], what="r", source="s"), [3.0, 4.5])
    np.testing.assert_array_equal(to_float(pa.array([True, False]), what="r", source="s"),
                                  [1.0, 0.0])
    with pytest.raises(DatasetError, match="s: row 2: field 'r' has value 'x', which is not"):
        to_float(["1", "x"], what="r", source="s")
    with pytest.raises(DatasetError, match="s: line 3: field 'r' has value None"):
        to_float(pa.array([1.0, None]), what="r", source="s", line_of=lambda r: r + 2)


def test_read_delimited_and_line_mapper(tmp_path):
    path = tmp_path / "a.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write('x,y\n1,"a,b"\n\n2,c\n')
    header, cols = read_delimited(path, delimiter=",")
    assert header == ["x", "y"]
    assert cols["x"].to_pylist() == ["1", "2"] and cols["y"].to_pylist() == ["a,b", "c"]
    assert line_mapper(path, 1)(1) == 4  # the blank line is skipped
    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufeffuser,item\na,b\n".encode())
    assert read_delimited(bom, delimiter=",")[0] == ["user", "item"]
    bad = tmp_path / "b.csv"
    bad.write_text("x,y\n1,2,3\n")
    with pytest.raises(DatasetError, match=r"b\.csv: line 2: expected 2 comma-separated fields "
                       r"\(x, y\), found 3"):
        read_delimited(bad, delimiter=",")
    with pytest.raises(DatasetError, match="missing data file"):
        read_delimited(tmp_path / "none.csv", delimiter=",")


def test_read_delimited_multichar_and_latin1(tmp_path):
    path = tmp_path / "m.dat"
    path.write_bytes("1::Amélie (2001)::Comedy\n".encode("latin-1"))
    _, cols = read_delimited(path, delimiter="\t", column_names=["id", "t", "g"],
                             encoding="latin-1", quoting=False, replace=(b"::", b"\t"))
    assert cols["t"].to_pylist() == ["Amélie (2001)"]


def test_require_columns():
    require_columns(["a", "b"], {"user": "a", "rating": None}, "f")
    with pytest.raises(DatasetError, match="f: missing item column 'c'; columns found: a, b"):
        require_columns(["a", "b"], {"user": "a", "item": "c"}, "f")


def test_movielens_and_join_text():
    heat = movielens_text("Heat (1995)", ["Action", "Crime"])
    assert heat == "Heat (1995). Genres: Action, Crime"
    assert movielens_text("Heat (1995)", ["Action"], with_title=False) == "Genres: Action"
    assert movielens_text("X", ["(no genres listed)"]) == "X. Genres: unknown"
    assert join_text("Title", ["Line one.", "", None, "two"], None, "  ") == \
        "Title. Line one. | two"
    assert join_text(None, []) == ""


def test_raw_interactions_checks_lengths():
    raw = RawInteractions(["u"], ["i"], [0, 0], [0, 0], ratings=np.array([1.0, 2.0]))
    assert raw.num_interactions == 2
    with pytest.raises(DatasetError, match="column 'ratings' has 1 rows, users have 2"):
        RawInteractions(["u"], ["i"], [0, 0], [0, 0], ratings=np.array([1.0]))


def test_format_options_listed():
    assert FORMATS["csv"].options[:2] == ("sep", "encoding")
    assert "meta" in FORMATS["amazon2018"].options
    assert "read_only" in FORMATS["goodreads"].options


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("GLTA_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("GLTA_CACHE_DIR")
    assert default_cache_dir().parts[-3:] == (".cache", "glta", "datasets")


def test_iter_json_lines_accepts_python_dicts(tmp_path):
    path = tmp_path / "meta_Old.json"
    path.write_text('{"asin": "B1", "title": "x"}\n\n' + "{'asin': 'B2', 'title': \"it's\"}\n")
    assert list(iter_json_lines(path)) == [("line 1", {"asin": "B1", "title": "x"}),
                                           ("line 3", {"asin": "B2", "title": "it's"})]
    path.write_text("[1, 2]\n")
    with pytest.raises(DatasetError, match="record 1: expected a JSON object, found int"):
        list(iter_json_lines(path))
    path.write_text("{'a': __import__('os')}\n")
    with pytest.raises(DatasetError, match="line 1: not valid JSON"):
        list(iter_json_lines(path))


def test_read_delimited_not_utf8(tmp_path):
    path = tmp_path / "l.csv"
    path.write_bytes("user,tïtle\n".encode("latin-1"))
    with pytest.raises(DatasetError, match="line 1: not utf-8 text"):
        read_delimited(path, delimiter=",")
