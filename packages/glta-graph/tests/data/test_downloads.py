"""Files as users download them: every bad one is one DatasetError naming the file (and line),
and the real schemas (Goodreads CSV, Amazon 2014/2023 variants, TSV) load.

The rows are written here, in each format's published schema.
"""

from __future__ import annotations

import bz2
import gzip
import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from glta_graph.data import (
    DatasetError,
    DatasetWarning,
    PrepareConfig,
    detect_format,
    load_dataset,
    read_source,
)
from glta_graph.data.raw import clean_text, iter_json_lines, read_delimited

# -- Amazon 2023 reviews (user_id, asin, parent_asin, rating, timestamp in ms) --------------

A23 = [
    {"rating": float(1 + (u + k) % 5), "title": "ok", "text": "fine", "images": [],
     "asin": f"V{u}{k}", "parent_asin": f"P{(u + k) % 4}", "user_id": f"AG{u}",
     "timestamp": 1_588_000_000_000 + 86_400_000 * (10 * u + k), "helpful_vote": 0,
     "verified_purchase": True}
    for u in range(6) for k in range(4)
]
A23_META = [
    {"main_category": "All Beauty", "title": f"Cream &amp; Lotion {i}", "average_rating": 4.1,
     "rating_number": 9, "features": ["Soft", "Fresh &#x2122;"],
     "description": [f"<p>Line one of {i}.</p>", "Line&emsp;two<br>end"], "price": None,
     "images": [], "videos": [], "store": "S", "categories": [], "details": {},
     "parent_asin": f"P{i}", "bought_together": None}
    for i in range(4)
]


def _jsonl(path: Path, records: list[dict], opener=open) -> Path:
    with opener(path, "wt", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")
    return path


def test_amazon2023_array_and_lines_give_the_same_dataset(tmp_path):
    lines = tmp_path / "lines"
    lines.mkdir()
    _jsonl(lines / "All_Beauty.jsonl", A23)
    _jsonl(lines / "meta_All_Beauty.jsonl", A23_META)
    array = tmp_path / "array"
    array.mkdir()
    (array / "All_Beauty.json").write_text(json.dumps(A23, indent=1))
    (array / "meta_All_Beauty.json").write_text(json.dumps(A23_META))
    assert detect_format(array) == "amazon2023"
    a, b = load_dataset(lines), load_dataset(array)
    assert a.fingerprint == b.fingerprint and a.item_text == b.item_text
    assert a.item_ids == ["P0", "P1", "P2", "P3"]  # parent_asin, never the variant asin
    raw = read_source(array / "All_Beauty.json")
    assert raw.timestamps.min() == pytest.approx(1_588_000_000)  # milliseconds detected


def test_amazon2023_text_is_plain(tmp_path):
    _jsonl(tmp_path / "All_Beauty.jsonl", A23)
    _jsonl(tmp_path / "meta_All_Beauty.jsonl", A23_META)
    data = load_dataset(tmp_path / "All_Beauty.jsonl")
    assert data.item_text[1] == "Cream & Lotion 1. Line one of 1. | Line two end"
    assert data.stats()["items_with_text"] == 4
    assert clean_text("Tom &amp;quot;Cat&amp;quot; <b>bold</b> 3 < 4 &#x2122;") == \
        'Tom "Cat" bold 3 < 4 \u2122'
    assert clean_text([["Books", "Fiction"], "x"]) == "Books | Fiction | x"


def test_amazon2023_through_generic_readers_prefers_parent_asin(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("user_id,asin,parent_asin,rating,timestamp\n" + "".join(
        f"{r['user_id']},{r['asin']},{r['parent_asin']},{r['rating']},{r['timestamp']}\n"
        for r in A23))
    raw = read_source(path, "csv")
    assert raw.item_ids == ["P0", "P1", "P2", "P3"]
    assert raw.ratings is not None and raw.timestamps.max() < 2e9  # found, and in seconds
    jsonl = _jsonl(tmp_path / "r.jsonl", A23)
    hf = read_source(jsonl, "hf")
    assert hf.item_ids == ["P0", "P1", "P2", "P3"]


def test_missing_metadata_warns_with_the_names_looked_for(tmp_path):
    _jsonl(tmp_path / "All_Beauty.jsonl", A23)
    with pytest.warns(DatasetWarning, match=r"All_Beauty.jsonl: no metadata file found "
                      r"\(looked for meta_All_Beauty.json\[l\]"):
        data = load_dataset(tmp_path / "All_Beauty.jsonl")
    assert data.stats()["items_with_text"] == 0
    _jsonl(tmp_path / "meta_All_Beauty.jsonl", A23_META)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DatasetWarning)
        load_dataset(tmp_path / "All_Beauty.jsonl")


# -- Amazon 2014 (reviews_<Cat>_5.json.gz, meta as Python dict literals) ---------------------


def test_amazon2014_reviews_and_python_dict_meta(tmp_path):
    reviews = [{"reviewerID": f"A{u}", "asin": f"000{(u + k) % 5}", "reviewerName": "x",
                "helpful": [0, 0], "reviewText": "good", "overall": 5.0, "summary": "s",
                "unixReviewTime": 1_300_000_000 + 1000 * (u * 5 + k),
                "reviewTime": "03 13, 2011"} for u in range(5) for k in range(4)]
    _jsonl(tmp_path / "reviews_Toys_5.json.gz", reviews, gzip.open)
    with gzip.open(tmp_path / "meta_Toys.json.gz", "wt", encoding="utf-8") as fh:
        for i in range(5):
            fh.write(repr({"asin": f"000{i}", "title": f"Toy {i} &amp; friends",
                           "description": "A <i>small</i> toy", "salesRank": {"Toys": 3},
                           "categories": [["Toys", "Cars"]]}) + "\n")
    assert detect_format(tmp_path) == "amazon2018"
    data = load_dataset(tmp_path / "reviews_Toys_5.json.gz")
    assert data.name == "Toys_5" and data.num_items == 5
    assert data.item_text[0] == "Toy 0 & friends. A small toy"


# -- Goodreads interactions CSV -------------------------------------------------------------

GR_HEADER = "user_id,book_id,is_read,rating,is_reviewed\n"


def _goodreads_csv(folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    rows = []
    for u in range(8):
        for k in range(5):
            book = (u + 2 * k) % 9
            is_read = int(k != 4)  # the last shelving of each user is unread
            rating = 0 if k in (1, 4) else 1 + (u + k) % 5  # 0 = not rated
            rows.append(f"{u},{book},{is_read},{rating},{int(rating > 3)}\n")
    path = folder / "goodreads_interactions.csv"
    path.write_text(GR_HEADER + "".join(rows))
    return path


def test_goodreads_csv_recognised_and_rule_applied(tmp_path):
    path = _goodreads_csv(tmp_path / "gr")
    assert detect_format(path) == "goodreads" and detect_format(path.parent) == "goodreads"
    with pytest.warns(DatasetWarning, match="goodreads_books"):
        raw = read_source(path.parent)
    # read or rated: every row but k=4 (unread and unrated)
    assert raw.num_interactions == 8 * 4
    assert np.isnan(raw.ratings).sum() == 8  # k=1: read, rating 0 = not rated
    with pytest.warns(DatasetWarning):
        read = read_source(path, read_only=True)
    assert read.num_interactions == 8 * 4
    with pytest.warns(DatasetWarning):
        rated = load_dataset(path, config=PrepareConfig(threshold=4, split="random",
                                                        ratios=(0.6, 0.0, 0.4)))
    kept = sum(1 for u in range(8) for k in (0, 2, 3) if 1 + (u + k) % 5 >= 4)
    assert rated.stats()["total_interactions"] <= kept


def test_goodreads_csv_ids_mapped_to_books_file(tmp_path):
    folder = tmp_path / "gr"
    _goodreads_csv(folder)
    (folder / "book_id_map.csv").write_text("book_id_csv,book_id\n" + "".join(
        f"{i},{1000 + i}\n" for i in range(9)))
    (folder / "user_id_map.csv").write_text("user_id_csv,user_id\n" + "".join(
        f"{u},8842281e1d1347389f2ab93d60773d{u:02d}\n" for u in range(8)))
    _jsonl(folder / "goodreads_books.json", [
        {"isbn": "", "book_id": str(1000 + i), "title": f"Book {i}",
         "description": f"Poems &amp; prose<br />{i}", "authors": []} for i in range(9)])
    data = load_dataset(folder)
    assert data.item_ids[0] == "1000" and data.user_ids[0].startswith("8842281e")
    assert data.item_text[0] == "Book 0. Poems & prose 0"
    (folder / "book_id_map.csv").write_text("book_id_csv,book_id\n0,1000\n")
    with pytest.raises(DatasetError, match=r"book_id_map.csv: no row for book_id_csv '\d'"):
        load_dataset(folder)


# -- TSV and separators ---------------------------------------------------------------------


@pytest.mark.parametrize("sep", [None, "tab", "\\t", "\t"])
def test_tsv_detected_and_tab_spellings(tmp_path, sep):
    path = tmp_path / "ratings.tsv"
    path.write_text("user_id\titem_id\trating\n" + "".join(
        f"u{u}\ti{(u + k) % 6}\t{k + 1}\n" for u in range(6) for k in range(4)))
    options = {} if sep is None else {"sep": sep}
    raw = read_source(path, **options)
    assert raw.num_interactions == 24 and raw.ratings is not None
    plain = tmp_path / "ratings.txt"  # tabs in the header, no commas: sniffed
    plain.write_text(path.read_text())
    assert read_source(plain).num_interactions == 24


# -- bad files: one line naming the file, and the line where there is one ------------------


def _csv_bytes() -> bytes:
    return ("user_id,item_id,rating\n" + "".join(
        f"u{i % 9},i{i % 13},{i % 5 + 1}\n" for i in range(3000))).encode()


def test_truncated_and_corrupt_archives(tmp_path):
    cases = []
    g = gzip.compress(_csv_bytes())
    (tmp_path / "t.csv.gz").write_bytes(g[: len(g) // 2])
    cases.append(("t.csv.gz", r"the gz file is truncated"))
    b = bz2.compress(_csv_bytes())
    (tmp_path / "t.csv.bz2").write_bytes(b[: len(b) // 2])
    cases.append(("t.csv.bz2", r"the bz2 file is truncated"))
    (tmp_path / "n.csv.gz").write_bytes(_csv_bytes())
    cases.append(("n.csv.gz", r"not a gzip file"))
    (tmp_path / "z.csv.zip").write_bytes(b"PK\x03\x04 broken")
    cases.append(("z.csv.zip", r"not a valid zip archive"))
    with zipfile.ZipFile(tmp_path / "two.csv.zip", "w") as zf:
        zf.writestr("a.csv", "x")
        zf.writestr("b.csv", "y")
    cases.append(("two.csv.zip", r"a .zip must hold exactly one data file, found a.csv, b.csv"))
    records = "".join(json.dumps(r) + "\n" for r in A23 * 40).encode()
    g = gzip.compress(records)
    (tmp_path / "Beauty.jsonl.gz").write_bytes(g[: len(g) // 2])
    cases.append(("Beauty.jsonl.gz", r"after line \d+: the gz file is truncated"))
    for name, message in cases:
        with pytest.raises(DatasetError, match=rf"^{tmp_path / name}: {message}"):
            load_dataset(tmp_path / name, format="auto" if "jsonl" in name else "csv")


def test_zip_with_one_file_reads(tmp_path):
    with zipfile.ZipFile(tmp_path / "r.csv.zip", "w") as zf:
        zf.writestr("r.csv", _csv_bytes())
    assert read_source(tmp_path / "r.csv.zip").num_interactions == 3000


@pytest.mark.parametrize("content", [b"", b"\n\n", b"\xef\xbb\xbf", b"  \r\n"])
def test_empty_files_in_every_reader(tmp_path, content):
    ml = tmp_path / "ml-100k"
    ml.mkdir()
    (ml / "u.data").write_bytes(content)  # latin-1, the case that aborted the process
    (ml / "u.item").write_bytes(b"1|Toy Story (1995)|01-Jan-1995||http://x" + b"|0" * 19 + b"\n")
    ml1m = tmp_path / "ml-1m"
    ml1m.mkdir()
    (ml1m / "ratings.dat").write_bytes(content)
    (tmp_path / "e.csv").write_bytes(content)
    (tmp_path / "e.csv.gz").write_bytes(gzip.compress(content))
    (tmp_path / "Toys.json").write_bytes(content)
    (tmp_path / "Toys.jsonl.gz").write_bytes(gzip.compress(content))
    for path, fmt, name in [(ml, "ml-100k", ml / "u.data"), (ml1m, "ml-1m", ml1m / "ratings.dat"),
                            (tmp_path / "e.csv", "csv", None), (tmp_path / "e.csv.gz", "csv", None),
                            (tmp_path / "Toys.json", "amazon2018", None),
                            (tmp_path / "Toys.jsonl.gz", "amazon2023", None)]:
        with pytest.raises(DatasetError, match=rf"^{name or path}: the file is empty$"):
            read_source(path, fmt)


def test_wrong_encoding_names_the_line(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes(b"user_id,item_id,title\nu1,i1,ok\nu2,i2,caf\xe9\n")
    with pytest.raises(DatasetError, match=r"r.csv: line 3: not utf-8 text \(byte 0xe9.*"
                                           r"pass encoding=latin-1"):
        read_source(path)
    assert read_source(path, encoding="latin-1").num_interactions == 2
    gz = tmp_path / "r.csv.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    with pytest.raises(DatasetError, match=r"r.csv.gz: line 3: not utf-8 text"):
        read_source(gz)
    js = tmp_path / "Toys.json"
    js.write_bytes(json.dumps(A23[0]).encode() + b"\n" + b'{"user_id": "caf\xe9"}\n')
    with pytest.raises(DatasetError, match=r"Toys.json: line 2: not utf-8 text"):
        list(iter_json_lines(js))


def test_json_shapes_name_the_line_or_record(tmp_path):
    path = tmp_path / "Toys.json"
    path.write_text(json.dumps(A23[0]) + "\n" + json.dumps([A23[1]]) + "\n")
    with pytest.raises(DatasetError, match=r"Toys.json: line 2: expected a JSON object, found "
                                           r"list"):
        read_source(path, "amazon2023")
    path.write_text(json.dumps([A23[0], [1], A23[1]]))
    with pytest.raises(DatasetError, match=r"Toys.json: record 2: expected a JSON object"):
        read_source(path, "amazon2023")
    path.write_text("[\n" + json.dumps(A23[0]) + ",\n" + json.dumps(A23[1])[:-3] + "\n]")
    with pytest.raises(DatasetError, match=r"Toys.json: line 3: not valid JSON .* one JSON array"):
        read_source(path, "amazon2023")
    path.write_text("[]")
    with pytest.raises(DatasetError, match=r"Toys.json: the JSON array is empty"):
        read_source(path, "amazon2023")
    rec = dict(A23[0])
    del rec["rating"]
    path.write_text(json.dumps([A23[0], rec]))
    with pytest.raises(DatasetError, match=r"Toys.json: record 2: missing field 'rating'"):
        read_source(path, "amazon2023")


def test_bad_field_count_names_the_line(tmp_path):
    path = tmp_path / "u.data"
    path.write_bytes(b"1\t2\t5\t881250949\n1\t3\t4\n")
    with pytest.raises(DatasetError, match=r"u.data: line 2: expected 4 tab-separated fields "
                                           r"\(user_id, item_id, rating, timestamp\), found 3"):
        read_source(path)
    bad = tmp_path / "b.csv.gz"
    bad.write_bytes(gzip.compress(b"user_id,item_id\nu,i\nu,i\nu,i,x\n"))
    with pytest.raises(DatasetError, match=r"b.csv.gz: line 4: expected 2 comma-separated"):
        read_delimited(bad, delimiter=",")


def test_goodreads_json_rule_read_or_rated(tmp_path):
    rows = []
    for u in range(6):
        for k in range(4):
            rows.append({"user_id": f"{u:032x}", "book_id": str(100 + (u + k) % 7),
                         "review_id": f"r{u}{k}", "is_read": k != 3,
                         "rating": 0 if k >= 2 else 5 - k, "review_text_incomplete": "",
                         "date_added": "Fri Sep 08 10:44:24 -0700 2017",
                         "date_updated": "Fri Sep 08 10:48:24 -0700 2017",
                         "read_at": "", "started_at": ""})
    _jsonl(tmp_path / "goodreads_interactions_poetry.json", rows)
    _jsonl(tmp_path / "goodreads_books_poetry.json", [
        {"book_id": str(100 + i), "title": f"B{i}", "description": ""} for i in range(7)])
    raw = read_source(tmp_path)
    assert raw.num_interactions == 6 * 3  # k=3: shelved, not read, not rated
    assert np.isnan(raw.ratings).sum() == 6  # k=2: read, rating 0 = not rated
    assert read_source(tmp_path, read_only=True).num_interactions == 6 * 3


def test_recbole_and_lightgcn_empty_or_truncated(tmp_path):
    inter = tmp_path / "toy" / "toy.inter"
    inter.parent.mkdir()
    inter.write_bytes(b"\n")
    with pytest.raises(DatasetError, match=rf"^{inter}: the file is empty$"):
        read_source(inter.parent, "recbole")
    lg = tmp_path / "lg"
    lg.mkdir()
    (lg / "test.txt").write_text("0 1 2\n")
    data = gzip.compress(("".join(f"{u} {u + 1} {u + 2}\n" for u in range(2000))).encode())
    (lg / "train.txt.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"train.txt.gz: after line \d+: the gz file is "
                                           r"truncated"):
        read_source(lg, "lightgcn", train_file="train.txt.gz")


def test_amazon_ratings_only_csv_without_header(tmp_path):
    path = tmp_path / "ratings_Toys.csv"
    path.write_text("".join(
        f"A{u}X,00{(u + k) % 6}Y,{(u + k) % 5 + 1}.0,{1_300_000_000 + u * 9 + k}\n"
        for u in range(6) for k in range(4)))
    assert detect_format(path) == "csv"
    raw = read_source(path)
    assert raw.num_interactions == 24 and raw.user_ids[0] == "A0X"
    assert raw.ratings.max() == 5.0 and raw.timestamps.min() == 1_300_000_000
    path.write_text("A1,B1,5.0,1300000000\nA2,B2,x,1300000001\n")
    with pytest.raises(DatasetError, match=r"ratings_Toys.csv: line 2: field 'rating' has "
                                           r"value 'x'"):
        read_source(path)


def test_goodreads_csv_empty_id_names_the_line(tmp_path):
    path = tmp_path / "goodreads_interactions.csv"
    path.write_text(GR_HEADER + "0,1,1,5,0\n1,2,0,0,0\n,3,1,4,0\n")
    with pytest.raises(DatasetError, match=r"goodreads_interactions.csv: line 4: field "
                                           r"'user_id' is empty"):
        read_source(path)
