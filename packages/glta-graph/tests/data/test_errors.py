"""Bad input: one DatasetError naming the file, line, field, value."""

from __future__ import annotations

import json
import re

import pytest

from glta_graph.data import DatasetError, PrepareConfig, load_dataset, read_source


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_missing_path(tmp_path):
    with pytest.raises(DatasetError, match="no such file or directory") as exc:
        load_dataset(tmp_path / "nope")
    assert str(tmp_path / "nope") in _one_line(exc)


@pytest.mark.parametrize(("fmt", "what"), [("ml-100k", "u.data"), ("ml-1m", "ratings.dat"),
                                           ("ml-latest", "ratings.csv"),
                                           ("lightgcn", "train.txt")])
def test_missing_file_in_folder(tmp_path, fmt, what):
    with pytest.raises(DatasetError, match=re.escape(what)) as exc:
        load_dataset(tmp_path, fmt)
    assert "missing" in _one_line(exc)


def test_lightgcn_missing_test_file(fixture_writers, tmp_path):
    path = fixture_writers["lightgcn"](tmp_path)
    (path / "test.txt").unlink()
    with pytest.raises(DatasetError, match=r"test\.txt: missing LightGCN test file"):
        load_dataset(path, "lightgcn")


def test_undetectable_folder(tmp_path):
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(DatasetError, match=r"cannot detect the format \(found: notes.md\)"):
        load_dataset(tmp_path)


def test_misnamed_column_lists_columns_found(fixture_writers, tmp_path):
    path = fixture_writers["ml_latest"](tmp_path)
    ratings = path / "ratings.csv"
    ratings.write_text(ratings.read_text().replace("userId", "user"))
    with pytest.raises(DatasetError) as exc:
        load_dataset(path)
    msg = _one_line(exc)
    assert "ratings.csv" in msg and "user column 'userId'" in msg
    assert "columns found: user, movieId, rating, timestamp" in msg


def test_csv_named_column_missing(fixture_writers, tmp_path):
    path = fixture_writers["csv"](tmp_path)
    with pytest.raises(DatasetError, match="missing rating column 'score'; columns found: uid"):
        load_dataset(path, user_col="uid", item_col="iid", rating_col="score")


def test_csv_unguessable_columns(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("who,what\na,b\n")
    with pytest.raises(DatasetError, match=r"no user column given and none of.*found: who, what"):
        load_dataset(path)


def test_recbole_field_missing(fixture_writers, tmp_path):
    path = fixture_writers["recbole"](tmp_path)
    with pytest.raises(DatasetError, match="missing user column 'uid'; columns found: user_id"):
        load_dataset(path, user_field="uid")


@pytest.mark.parametrize("fmt", ["amazon2018", "amazon2023", "goodreads"])
def test_json_missing_field_names_line(fixture_writers, tmp_path, fmt):
    path = fixture_writers[fmt](tmp_path)
    review = next(p for p in sorted(path.iterdir()) if "meta_" not in p.name
                  and "books" not in p.name)
    lines = review.read_text().splitlines()
    rec = json.loads(lines[3])
    key = {"amazon2018": "asin", "amazon2023": "parent_asin", "goodreads": "book_id"}[fmt]
    del rec[key]
    lines[3] = json.dumps(rec)
    review.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=f"line 4: missing field '{key}'; fields found"):
        load_dataset(path, fmt)


def test_json_not_json(fixture_writers, tmp_path):
    path = fixture_writers["amazon2018"](tmp_path)
    with open(path / "Toys.json", "a") as fh:
        fh.write("{oops\n")
    with pytest.raises(DatasetError, match=r"Toys\.json: line 31: not valid JSON"):
        load_dataset(path)


def test_non_numeric_rating_csv_names_line(fixture_writers, tmp_path):
    path = fixture_writers["ml_latest"](tmp_path)
    ratings = path / "ratings.csv"
    lines = ratings.read_text().splitlines()
    lines.insert(2, "")  # a blank line: line numbers must still be physical lines
    lines[5] = lines[5].rsplit(",", 2)[0] + ",abc," + lines[5].rsplit(",", 1)[1]
    ratings.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as exc:
        load_dataset(path)
    assert _one_line(exc) == (f"{ratings}: line 6: field 'rating' has value 'abc', "
                              f"which is not a number")


def test_non_numeric_rating_ml100k(fixture_writers, tmp_path):
    path = fixture_writers["ml100k"](tmp_path)
    data = path / "u.data"
    lines = data.read_text().splitlines()
    parts = lines[9].split("\t")
    parts[2] = "4.x"
    lines[9] = "\t".join(parts)
    data.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"u\.data: line 10: field 'rating' has value '4\.x'"):
        load_dataset(path)


def test_non_numeric_rating_json(fixture_writers, tmp_path):
    path = fixture_writers["amazon2023"](tmp_path)
    review = path / "All_Beauty.jsonl"
    lines = review.read_text().splitlines()
    rec = json.loads(lines[0])
    rec["rating"] = "five"
    lines[0] = json.dumps(rec)
    review.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match="line 1: field 'rating' has value 'five'"):
        load_dataset(path)


def test_empty_id_names_line(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("user_id,item_id\na,1\n,2\n")
    with pytest.raises(DatasetError, match=r"x\.csv: line 3: field 'user_id' is empty"):
        read_source(path)


def test_bad_field_count(fixture_writers, tmp_path):
    path = fixture_writers["ml1m"](tmp_path)
    with open(path / "movies.dat", "a", encoding="latin-1") as fh:
        fh.write("99::No genres\n")
    with pytest.raises(DatasetError, match=r"movies\.dat: line 9: expected 'MovieID::Title"):
        load_dataset(path)


def test_empty_split_after_filtering(fixture_writers, tmp_path):
    path = fixture_writers["ml_latest"](tmp_path)
    with pytest.raises(DatasetError, match=r"split is empty \(.*at most 1 per user\); "
                       r"split='temporal' .* works for this data; or loosen the threshold"):
        load_dataset(path, config=PrepareConfig(threshold=5))


def test_empty_split_suggests_the_split_that_works(tmp_path):
    # every user has two interactions: a per-user split has no valid item to hold out
    path = tmp_path / "pairs.csv"
    path.write_text("user_id,item_id,timestamp\n" + "".join(
        f"u{u},i{(u + k) % 5},{1000 * u + k}\n" for u in range(12) for k in range(2)))
    with pytest.raises(DatasetError, match=r"valid split is empty .* at most 2 per user\); "
                       r"split='temporal' \(one time cut over all interactions\) or "
                       r"ratios=0.8,0,0.2 \(no valid split\) works for this data$"):
        load_dataset(path)
    data = load_dataset(path, config={"split": "temporal"})
    assert all(v > 0 for v in data.stats()["interactions"].values())
    path.write_text("user_id,item_id\n" + "".join(f"u{u},i{u % 5}\n" for u in range(12)))
    with pytest.raises(DatasetError, match="no split method gives every split"):
        load_dataset(path)


def test_kcore_removes_everything(fixture_writers, tmp_path):
    path = fixture_writers["ml_latest"](tmp_path)
    with pytest.raises(DatasetError, match=r"k-core \(users >= 50, items >= 50"):
        load_dataset(path, config={"k_core": 50})


def test_unknown_format(tmp_path):
    with pytest.raises(DatasetError, match="unknown format 'movielens'; known: auto, ml-100k"):
        load_dataset(tmp_path, "movielens")


def test_unknown_format_option(fixture_writers, tmp_path):
    path = fixture_writers["ml_latest"](tmp_path)
    with pytest.raises(DatasetError, match="format 'ml-latest' has no option 'user_col'"):
        load_dataset(path, user_col="x")


def test_unknown_name_is_not_downloaded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError, match="ml-7m: no such file or directory"):
        load_dataset("ml-7m")
