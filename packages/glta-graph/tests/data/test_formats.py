"""Every format reader on the same tiny canonical data, written in each format."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest

from glta_graph.data import (
    FORMATS,
    PrepareConfig,
    detect_format,
    load_dataset,
    read_source,
)

ALL = ["ml-100k", "ml-1m", "ml-latest", "recbole", "lightgcn", "amazon2018", "amazon2023",
       "goodreads", "csv", "parquet"]


def test_formats_registry_names():
    assert set(FORMATS) == {*ALL, "hf"}
    for fmt in FORMATS.values():
        assert fmt.description and callable(fmt.reader)


@pytest.mark.parametrize("name", ALL)
def test_detect_format(name, writers, tmp_path):
    writer, *_ = writers[name]
    assert detect_format(writer(tmp_path)) == name


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("fmt_arg", ["auto", "explicit"])
def test_every_format_loads_the_same_data(name, fmt_arg, writers, tmp_path, canonical_rows):
    writer, options, has_ratings, has_time = writers[name]
    path = writer(tmp_path)
    raw = read_source(path, name if fmt_arg == "explicit" else "auto", **options)
    assert len(raw.user_ids) == (7 if name == "lightgcn" else 6)  # lightgcn: one empty user
    assert len(raw.item_ids) == 8
    assert raw.num_interactions == len(canonical_rows)
    assert (raw.ratings is not None) == has_ratings
    assert (raw.timestamps is not None) == has_time
    if has_ratings:
        np.testing.assert_allclose(np.sort(raw.ratings), sorted(r for *_, r, _ in canonical_rows))
    if has_time:
        order = np.argsort(raw.timestamps)
        assert np.all(np.diff(raw.timestamps[order]) > 0)  # distinct, correctly scaled
        assert raw.timestamps.min() == pytest.approx(canonical_rows[0][3])
    data = load_dataset(path, name if fmt_arg == "explicit" else "auto", **options)
    assert data.num_users == 6 and data.num_items == 8  # empty users are dropped
    assert data.stats()["total_interactions"] == len(canonical_rows)


@pytest.mark.parametrize("name", ["ml-100k", "ml-1m", "ml-latest", "recbole"])
def test_movielens_item_text(name, writers, tmp_path, canonical_items):
    writer, options, *_ = writers[name]
    path = writer(tmp_path)
    data = load_dataset(path, **options)
    idx = data.item_ids.index("2")
    title, year, genres = canonical_items[2]
    assert data.item_text[idx] == f"{title} ({year}). Genres: {', '.join(genres)}"
    no_title = load_dataset(path, config=PrepareConfig(with_title=False), **options)
    assert no_title.item_text[idx] == f"Genres: {', '.join(genres)}"


def test_ml_ids_sorted_numerically(writers, tmp_path):
    writer, *_ = writers["ml-latest"]
    data = load_dataset(writer(tmp_path))
    assert data.user_ids == ["1", "2", "3", "4", "5", "6"]
    assert data.item_ids == [str(i) for i in range(1, 9)]


@pytest.mark.parametrize("name", ["amazon2018", "amazon2023", "goodreads"])
def test_review_item_text(name, writers, tmp_path):
    writer, *_ = writers[name]
    path = writer(tmp_path)
    data = load_dataset(path)
    text = dict(zip(data.item_ids, data.item_text, strict=True))
    if name == "amazon2018":
        assert text["B001"] == "Movie 1. A Comedy toy. | Fun"  # list parts stay visible
        assert text["B008"] == ""  # no metadata record
    elif name == "amazon2023":
        assert text["B001"] == "Movie 1. A Comedy cream"
        assert text["B002"] == "Movie 2. Soft"  # empty description -> features
    else:
        assert text["1"] == "Movie 1. Poems about Comedy"
    no_title = load_dataset(path, config=PrepareConfig(with_title=False))
    assert not any(t.startswith("Movie") for t in no_title.item_text)


@pytest.mark.parametrize("name", ["amazon2018", "amazon2023", "goodreads"])
def test_json_lines_gzip(name, fixture_writers, tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "gz").mkdir()
    plain = fixture_writers[name](tmp_path / "plain")
    zipped = fixture_writers[name](tmp_path / "gz", gz=True)
    assert any(p.suffix == ".gz" for p in zipped.iterdir())
    a, b = load_dataset(plain), load_dataset(zipped)
    assert a.fingerprint == b.fingerprint and a.item_text == b.item_text


def test_review_file_path_finds_meta(fixture_writers, tmp_path):
    folder = fixture_writers["amazon2023"](tmp_path)
    data = load_dataset(folder / "All_Beauty.jsonl")
    assert "Movie 1. A Comedy cream" in data.item_text


def test_goodreads_read_only(writers, tmp_path, canonical_rows):
    writer, *_ = writers["goodreads"]
    raw = read_source(writer(tmp_path), read_only=True)
    assert raw.num_interactions == sum(r >= 3 for *_, r, _ in canonical_rows)


def test_lightgcn_keeps_given_test_split(writers, tmp_path):
    writer, *_ = writers["lightgcn"]
    path = writer(tmp_path)
    data = load_dataset(path, config=PrepareConfig(presplit_valid_ratio=0.0))
    assert data.stats()["interactions"] == {"train": 18, "valid": 0, "test": 12}
    test_lines = (path / "test.txt").read_text().split("\n")
    for line in filter(None, test_lines):
        user, *items = line.split()
        u = data.user_ids.index(user)
        assert sorted(data.item_ids[i] for i in data.user_items("test", u)) == sorted(items)
    carved = load_dataset(path, config=PrepareConfig(presplit_valid_ratio=0.34))
    counts = carved.stats()["interactions"]
    assert counts["test"] == 12 and counts["valid"] == 6 and counts["train"] == 12


def test_csv_variants(tmp_path):
    tsv = tmp_path / "x.tsv.gz"
    with gzip.open(tsv, "wt") as fh:
        fh.write("user\titem\ttime\na\tp\t2020-01-02\nb\tq\t2020-01-01T10:00:00\n"
                 "a\tq\t2020-01-03\nb\tp\t2021-05-05\n")
    raw = read_source(tsv, "csv", sep="\t", timestamp_col="time")
    assert raw.user_ids == ["a", "b"] and raw.item_ids == ["p", "q"]
    assert raw.ratings is None
    assert raw.timestamps[0] == np.datetime64("2020-01-02", "s").astype(np.int64)


def test_ids_with_leading_zeros_stay_strings(tmp_path):
    path = tmp_path / "z.csv"
    path.write_text("user_id,item_id\n007,1\n7,2\n10,1\n")
    raw = read_source(path)
    assert raw.user_ids == ["007", "10", "7"]  # not all canonical ints: lexicographic


def test_hf_local_files_and_saved_dataset(tmp_path, fixture_writers):
    from datasets import Dataset

    csv_path = fixture_writers["csv"](tmp_path)
    opts = {"user_col": "uid", "item_col": "iid", "rating_col": "stars", "timestamp_col": "when"}
    a = load_dataset(str(csv_path), "hf", **opts)
    b = load_dataset(csv_path, "csv", **opts)
    assert a.fingerprint == b.fingerprint
    Dataset.from_dict({"uid": ["x", "y", "x", "y"], "iid": [1, 2, 2, 3]}).save_to_disk(
        str(tmp_path / "saved"))
    assert detect_format(tmp_path / "saved") == "hf"
    c = read_source(tmp_path / "saved", user_col="uid", item_col="iid")
    assert c.user_ids == ["x", "y"] and c.item_ids == ["1", "2", "3"]


def test_recbole_generic_text_fields(tmp_path):
    d = tmp_path / "books"
    d.mkdir()
    (d / "books.inter").write_text("user_id:token\titem_id:token\n" + "".join(
        f"u{u}\tb{i}\n" for u in range(3) for i in range(3)))
    (d / "books.item").write_text("item_id:token\ttitle:token_seq\tdescription:token_seq\n"
                                  "b0\tA Book\tAbout things\nb1\tB Book\t\n")
    data = load_dataset(d)
    assert data.item_text == ["A Book. About things", "B Book", ""]
    shutil.rmtree(d)
