"""export_csv: train/valid/test CSV with the original ids."""

from __future__ import annotations

import csv

from glta_graph.data import export_csv, load_dataset


def test_export_round_trip(fixture_writers, tmp_path):
    data = load_dataset(fixture_writers["amazon2018"](tmp_path))
    paths = export_csv(data, tmp_path / "out")
    assert sorted(paths) == ["test", "train", "valid"]
    for split, path in paths.items():
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
        assert rows[0] == ["user", "item"]
        u, i = data.pairs(split)
        expected = {(data.user_ids[a], data.item_ids[b]) for a, b in zip(u, i, strict=True)}
        assert {tuple(r) for r in rows[1:]} == expected and len(rows) - 1 == len(expected)
        assert all(r[0].startswith("U") and r[1].startswith("B") for r in rows[1:])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "test.csv", "train.csv", "valid.csv"]  # no temporary files left


def test_export_quotes_awkward_ids(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text('user_id,item_id\n"a,1",x\n"a,1",y\n"a,1",z\nb,x\nb,y\n')
    data = load_dataset(path, config={"ratios": (0.5, 0.0, 0.5)})
    export_csv(data, tmp_path / "out")
    with open(tmp_path / "out" / "train.csv", newline="") as fh:
        users = {r["user"] for r in csv.DictReader(fh)}
    assert users == {"a,1", "b"}
