"""random_interactions: shapes, disjoint splits, options, repeatability, bad input."""

import numpy as np
import pytest

from glta_graph.data import random_interactions


def _counts(csr):
    return np.diff(csr.crow_indices().numpy())


def test_shapes_disjoint_splits_and_lengths():
    data = random_interactions(30, 25, lengths=(4, 9), seed=3)
    assert data.num_users == 30 and data.num_items == 25
    total = sum(_counts(data.split(s)) for s in ("train", "valid", "test"))
    assert total.min() >= 4 and total.max() <= 8
    dense = sum(data.split(s).to_dense() for s in ("train", "valid", "test"))
    assert dense.max() == 1  # an item lands in one split only


def test_anchor_skew_and_seed():
    data = random_interactions(50, 40, lengths=(2, 10), skew=1.2, anchor=True, seed=1)
    assert (_counts(data.train) >= 1).all() and (_counts(data.test) >= 1).all()
    pop = np.sort(data.train.to_dense().sum(0).numpy())[::-1]
    flat = random_interactions(50, 40, lengths=(2, 10), anchor=True, seed=1)
    flat_pop = np.sort(flat.train.to_dense().sum(0).numpy())[::-1]
    assert pop[:4].sum() > flat_pop[:4].sum()  # the skewed catalogue has a heavier head
    again = random_interactions(50, 40, lengths=(2, 10), skew=1.2, anchor=True, seed=1)
    assert data.fingerprint == again.fingerprint != flat.fingerprint


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"lengths \(0, 30\)"):
        random_interactions(5, 10, lengths=(0, 30))
    with pytest.raises(ValueError, match="split_p"):
        random_interactions(5, 20, split_p=(0.5, 0.5))
