"""PrepareConfig validation, help and dict round trip."""

from __future__ import annotations

import dataclasses

import pytest

from glta_graph.data import DatasetError, PrepareConfig


def test_defaults():
    c = PrepareConfig()
    assert c.threshold is None and c.split == "random" and c.ratios == (0.7, 0.1, 0.2)
    assert c.min_user_interactions == 0 and c.min_item_interactions == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ratios": (0.5, 0.1, 0.1)}, "must sum to 1"),
        ({"ratios": (0.8, 0.2, 0.0)}, "train and test fractions must be > 0"),
        ({"ratios": (0.5, 0.5)}, "three non-negative fractions"),
        ({"ratios": (1.2, -0.4, 0.2)}, "three non-negative fractions"),
        ({"split": "kfold"}, "split='kfold'"),
        ({"temporal_scope": "item"}, "temporal_scope='item'"),
        ({"k_core": -1}, "k_core=-1"),
        ({"user_core": 2.5}, "user_core=2.5"),
        ({"threshold": "4"}, "threshold='4'"),
        ({"threshold": float("nan")}, "must be finite"),
        ({"presplit_valid_ratio": 1.0}, r"presplit_valid_ratio=1.0"),
        ({"seed": -3}, "seed=-3"),
    ],
)
def test_invalid_values_name_the_field(kwargs, match):
    with pytest.raises(DatasetError, match=match):
        PrepareConfig(**kwargs)


def test_core_overrides():
    c = PrepareConfig(k_core=5, item_core=2)
    assert c.min_user_interactions == 5 and c.min_item_interactions == 2


def test_every_field_has_help():
    helps = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(PrepareConfig)}
    assert set(helps) == {f.name for f in dataclasses.fields(PrepareConfig)}
    assert all(len(h) > 10 for h in helps.values())


def test_dict_round_trip_and_unknown_key():
    c = PrepareConfig(threshold=4, k_core=10, split="loo", ratios=[0.8, 0.1, 0.1], seed=7)
    assert PrepareConfig.from_dict(c.to_dict()) == c
    with pytest.raises(DatasetError, match=r"unknown field.*treshold"):
        PrepareConfig.from_dict({"treshold": 4})


def test_ratios_from_string():
    assert PrepareConfig(ratios="0.8, 0.1,0.1").ratios == (0.8, 0.1, 0.1)
    with pytest.raises(DatasetError, match="ratios='a,b,c': not numbers"):
        PrepareConfig(ratios="a,b,c")
