"""Threshold, de-duplication, k-core and the three split methods."""

from __future__ import annotations

import numpy as np
import pytest

from glta_graph.data import DatasetError, PrepareConfig, RawInteractions, kcore_mask, prepare
from glta_graph.data.preprocess import split_codes


def _raw(n_users=50, n_items=40, per_user=(1, 30), seed=0, ratings=True, times=True):
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(n_users):
        k = int(rng.integers(per_user[0], per_user[1] + 1))
        users += [u] * k
        items += rng.choice(n_items, size=min(k, n_items), replace=False).tolist()
    n = len(users)
    return RawInteractions(
        [f"u{u}" for u in range(n_users)], [f"i{i}" for i in range(n_items)],
        np.array(users), np.array(items),
        ratings=rng.integers(1, 6, n).astype(float) if ratings else None,
        timestamps=rng.permutation(n).astype(float) if times else None,
        item_text={f"i{i}": f"text {i}" for i in range(n_items)}, name="synthetic",
    )


def _split_sets(data):
    return {s: set(zip(*map(np.ndarray.tolist, data.pairs(s)), strict=True))
            for s in ("train", "valid", "test")}


def test_kcore_mask_is_iterative():
    # user 0: items 0,1,2 ; user 1: items 0,1 ; user 2: item 3 (removing u2 drops item 3)
    users = np.array([0, 0, 0, 1, 1, 2])
    items = np.array([0, 1, 2, 0, 1, 3])
    keep = kcore_mask(users, items, 2, 2)
    # item 2 has 1 user -> dropped; then user 0 keeps 0,1; user 2 and item 3 dropped
    assert keep.tolist() == [True, True, False, True, True, False]
    assert kcore_mask(users, items, 0, 0).all()


def test_kcore_result_satisfies_bounds():
    raw = _raw(n_users=200, n_items=100, per_user=(1, 15))
    data = prepare(raw, PrepareConfig(k_core=5, split="random"))
    total = sum(data.split(s).to_dense() for s in ("train", "valid", "test"))
    assert (total.sum(1) >= 5).all() and (total.sum(0) >= 5).all()
    assert data.num_users < 200


def test_threshold_keeps_high_ratings():
    raw = _raw()
    data = prepare(raw, PrepareConfig(threshold=4))
    assert data.stats()["total_interactions"] == int((raw.ratings >= 4).sum())


def test_threshold_without_ratings_is_an_error():
    with pytest.raises(DatasetError, match="threshold=4 given, but this source has no ratings"):
        prepare(_raw(ratings=False), PrepareConfig(threshold=4))


def test_duplicates_collapse_to_earliest():
    raw = RawInteractions(["a", "b"], ["x", "y", "z"], [0, 0, 0, 1, 1, 1, 0],
                          [0, 1, 2, 0, 1, 2, 0], ratings=np.array([5, 5, 5, 5, 5, 5, 1.0]),
                          timestamps=np.array([9, 2, 3, 4, 5, 6, 1.0]))
    data = prepare(raw, PrepareConfig(split="loo", ratios=(0.8, 0.0, 0.2)))
    assert data.stats()["total_interactions"] == 6
    # user a's (a, x) counts at time 1 (earliest), so a's last item is z (time 3)
    assert data.item_ids[int(data.user_items("test", 0)[0])] == "z"


@pytest.mark.parametrize("seed", [0, 1])
def test_random_split_properties(seed):
    raw = _raw(n_users=300, per_user=(1, 30), seed=seed)
    data = prepare(raw, PrepareConfig(seed=seed))
    sets = _split_sets(data)
    assert not (sets["train"] & sets["test"]) and not (sets["train"] & sets["valid"])
    assert not (sets["valid"] & sets["test"])
    counts = {s: len(v) for s, v in sets.items()}
    total = sum(counts.values())
    assert total == raw.num_interactions
    assert counts["train"] / total == pytest.approx(0.7, abs=0.05)
    assert counts["test"] / total == pytest.approx(0.2, abs=0.05)
    per_user = np.bincount(raw.users, minlength=300)
    for u in range(data.num_users):
        n = per_user[int(data.user_ids[u][1:])]
        n_train = len(data.user_items("train", u))
        n_test = len(data.user_items("test", u))
        n_valid = len(data.user_items("valid", u))
        assert n_train >= 1
        if n >= 2:
            assert n_test >= 1
        if n >= 3:
            assert n_valid >= 1


def test_split_is_seeded():
    raw = _raw()
    a = prepare(raw, PrepareConfig(seed=3))
    b = prepare(raw, PrepareConfig(seed=3))
    c = prepare(raw, PrepareConfig(seed=4))
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != c.fingerprint


def test_loo_takes_last_by_time():
    raw = _raw(n_users=30, per_user=(3, 10))
    data = prepare(raw, PrepareConfig(split="loo"))
    times = {(int(u), int(i)): t for u, i, t in zip(raw.users, raw.items, raw.timestamps,
                                                     strict=True)}
    for u in range(data.num_users):
        ru = int(data.user_ids[u][1:])
        t = {s: [times[(ru, int(data.item_ids[i][1:]))] for i in data.user_items(s, u)]
             for s in ("train", "valid", "test")}
        assert len(t["test"]) == 1 and len(t["valid"]) == 1
        assert t["test"][0] > t["valid"][0] > max(t["train"])


def test_loo_without_timestamps_is_random_but_seeded():
    raw = _raw(n_users=30, per_user=(3, 10), times=False)
    a = prepare(raw, PrepareConfig(split="loo", seed=1))
    assert a.stats()["interactions"]["test"] == 30
    assert a.fingerprint == prepare(raw, PrepareConfig(split="loo", seed=1)).fingerprint


def test_temporal_global_cut():
    raw = _raw(n_users=40, per_user=(5, 20))
    data = prepare(raw, PrepareConfig(split="temporal", temporal_scope="global"))
    times = {(f"u{u}", f"i{i}"): t for u, i, t in zip(raw.users, raw.items, raw.timestamps,
                                                       strict=True)}

    def span(split):
        u, i = data.pairs(split)
        return [times[(data.user_ids[a], data.item_ids[b])] for a, b in zip(u, i, strict=True)]

    assert max(span("train")) < min(span("valid")) and max(span("valid")) < min(span("test"))
    n = raw.num_interactions
    assert len(span("train")) == int(np.floor(0.7 * n + 0.5))


def test_temporal_per_user():
    raw = _raw(n_users=40, per_user=(3, 20))
    data = prepare(raw, PrepareConfig(split="temporal", temporal_scope="user"))
    times = {(f"u{u}", f"i{i}"): t for u, i, t in zip(raw.users, raw.items, raw.timestamps,
                                                       strict=True)}
    for u in range(data.num_users):
        t = {s: [times[(data.user_ids[u], data.item_ids[i])] for i in data.user_items(s, u)]
             for s in ("train", "valid", "test")}
        assert max(t["train"]) < min(t["valid"] + t["test"])
        assert max(t["valid"]) < min(t["test"])


def test_temporal_needs_timestamps():
    with pytest.raises(DatasetError, match="'temporal' needs timestamps"):
        prepare(_raw(times=False), PrepareConfig(split="temporal"))


def test_presplit_valid_carving():
    users = np.repeat(np.arange(10), 12)
    items = np.tile(np.arange(12), 10)
    presplit = np.tile(np.array([0] * 10 + [2] * 2, dtype=np.int8), 10)
    raw = RawInteractions([str(u) for u in range(10)], [str(i) for i in range(12)], users,
                          items, presplit=presplit)
    data = prepare(raw, PrepareConfig(presplit_valid_ratio=0.2))
    counts = data.stats()["interactions"]
    assert counts == {"train": 80, "valid": 20, "test": 20}
    for u in range(10):  # the given test items stay test
        assert data.user_items("test", u).tolist() == [10, 11]
    other = prepare(raw, PrepareConfig(presplit_valid_ratio=0.2, seed=5))
    assert other.fingerprint != data.fingerprint


def test_split_codes_small_users():
    users = np.array([0, 1, 1, 2, 2, 2])
    codes = split_codes(users, None, PrepareConfig(), np.random.default_rng(0))
    assert codes[0] == 0  # one item -> train
    assert sorted(codes[1:3].tolist()) == [0, 2]
    assert sorted(codes[3:].tolist()) == [0, 1, 2]


def test_empty_split_after_filtering():
    raw = _raw(n_users=5, per_user=(1, 1))
    with pytest.raises(DatasetError, match=r"the test split is empty \(5 interactions, 5 users "
                                           r"left, at most 1 per user\)"):
        prepare(raw)


def test_kcore_that_removes_everything():
    with pytest.raises(DatasetError, match=r"k-core .* removes every interaction"):
        prepare(_raw(n_users=5, per_user=(1, 3)), PrepareConfig(k_core=100))


def test_threshold_that_removes_everything():
    with pytest.raises(DatasetError, match="no interaction has rating >= 9"):
        prepare(_raw(), PrepareConfig(threshold=9))


def test_item_text_follows_compaction():
    data = prepare(_raw(n_users=100, n_items=60, per_user=(2, 8)), PrepareConfig(k_core=3))
    assert all(t == f"text {iid[1:]}" for iid, t in zip(data.item_ids, data.item_text,
                                                        strict=True))


def test_large_vectorised_split():
    """1M interactions (Gowalla size) go through prepare without per-row Python loops."""
    rng = np.random.default_rng(0)
    n_users, n_items, n = 30_000, 40_000, 1_000_000
    users = rng.integers(0, n_users, n)
    items = rng.integers(0, n_items, n)
    raw = RawInteractions([str(u) for u in range(n_users)], [str(i) for i in range(n_items)],
                          users, items, timestamps=rng.random(n))
    data = prepare(raw, PrepareConfig(k_core=2))
    assert data.stats()["total_interactions"] > 900_000
