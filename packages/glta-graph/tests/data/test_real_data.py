"""The real reference data in ../shared/data and the embedded MovieLens-100K."""

from __future__ import annotations

from glta_graph.data import PrepareConfig, embedded_dataset_path, load_dataset, read_source


def test_ml_latest_small_counts(shared_data):
    path = shared_data / "ml-latest-small"
    raw = read_source(path, "ml-latest")
    assert (len(raw.user_ids), len(raw.item_ids), raw.num_interactions) == (671, 9066, 100_004)
    data = load_dataset(path, "ml-latest")
    assert (data.num_users, data.num_items) == (671, 9066)
    assert data.stats()["total_interactions"] == 100_004
    assert data.item_text[0] == "Toy Story (1995). Genres: Adventure, Animation, Children, " \
                                "Comedy, Fantasy"


def test_gowalla_published_counts(shared_data):
    path = shared_data / "gowalla"
    data = load_dataset(path, config=PrepareConfig(presplit_valid_ratio=0.0))
    assert (data.num_users, data.num_items) == (29_858, 40_981)
    counts = data.stats()["interactions"]
    assert counts == {"train": 810_128, "valid": 0, "test": 217_242}
    assert data.user_ids[:3] == ["0", "1", "2"] and data.item_ids[-1] == "40980"
    carved = load_dataset(path)
    c = carved.stats()["interactions"]
    assert c["train"] + c["valid"] == 810_128 and c["test"] == 217_242
    assert c["valid"] > 0.09 * 810_128


def test_embedded_ml100k_counts():
    raw = read_source(embedded_dataset_path())
    assert (len(raw.user_ids), len(raw.item_ids), raw.num_interactions) == (943, 1682, 100_000)
