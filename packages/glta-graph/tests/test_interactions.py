import pytest
import torch

from glta_graph.data import DatasetError, Interactions, csr_from_pairs


def _toy() -> Interactions:
    return Interactions(
        ["u1", "u2", "u3"],
        ["i1", "i2", "i3", "i4"],
        train=csr_from_pairs([0, 0, 1, 2], [0, 1, 2, 3], 3, 4),
        valid=csr_from_pairs([], [], 3, 4),
        test=csr_from_pairs([0, 2], [3, 0], 3, 4),
        item_text=["a", "b", "c", "d"],
        name="toy",
    )


def test_csr_from_pairs_dedups_and_sorts():
    m = csr_from_pairs([1, 0, 1, 1], [2, 1, 0, 2], 2, 3)
    assert m.layout == torch.sparse_csr
    assert m.crow_indices().tolist() == [0, 1, 3]
    assert m.col_indices().tolist() == [1, 0, 2]
    assert m.to_dense().sum().item() == 3


def test_save_load_roundtrip(tmp_path):
    d = _toy()
    d.save(tmp_path / "ds")
    e = Interactions.load(tmp_path / "ds")
    assert e.fingerprint == d.fingerprint
    assert e.user_ids == d.user_ids and e.item_ids == d.item_ids and e.item_text == d.item_text
    for s in ("train", "valid", "test"):
        assert torch.equal(e.split(s).to_dense(), d.split(s).to_dense())
    assert e.stats()["interactions"] == {"train": 4, "valid": 0, "test": 2}


def test_fingerprint_changes_with_split():
    d = _toy()
    e = _toy()
    e.test = csr_from_pairs([0], [3], 3, 4)
    assert d.fingerprint != e.fingerprint


def test_shape_mismatch_is_rejected():
    with pytest.raises(DatasetError, match="train"):
        Interactions(["u"], ["i"], csr_from_pairs([], [], 2, 1), csr_from_pairs([], [], 1, 1),
                     csr_from_pairs([], [], 1, 1))


def test_load_non_dataset(tmp_path):
    with pytest.raises(DatasetError, match="not a prepared GLTA dataset"):
        Interactions.load(tmp_path)


def test_csr_from_pairs_matches_dense_reference():
    import numpy as np

    rng = np.random.default_rng(0)
    u = rng.integers(0, 50, 2000)
    i = rng.integers(0, 70, 2000)
    dense = np.zeros((50, 70), dtype=np.float32)
    dense[u, i] = 1.0
    m = csr_from_pairs(u, i, 50, 70)
    assert np.array_equal(m.to_dense().numpy(), dense)
    assert m._nnz() == int(dense.sum())
    empty = csr_from_pairs([], [], 3, 4)
    assert empty._nnz() == 0 and empty.crow_indices().tolist() == [0, 0, 0, 0]


def test_users_with_lists_users_having_an_interaction_in_the_split():
    d = _toy()
    assert d.users_with("train").tolist() == [0, 1, 2]
    assert d.users_with("test").tolist() == [0, 2]
    assert d.users_with("valid").tolist() == []
    with pytest.raises(DatasetError, match="unknown split"):
        d.users_with("holdout")
