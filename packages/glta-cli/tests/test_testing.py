"""The plain-Python reference metrics on a hand-computed example."""

from __future__ import annotations

import math

import pytest

from glta_cli.testing import metrics_from_recs


def test_metrics_from_recs_hand_example(tmp_path):
    recs = tmp_path / "recs.csv"
    recs.write_text("user,item,rank,score\n"
                    "a,x,2,0.5\na,y,1,0.9\n"   # a: ranked y, x
                    "b,z,1,1.0\nb,x,2,0.1\n"   # b: ranked z, x
                    "c,x,1,1.0\nc,y,2,0.5\n", encoding="utf-8")
    test = tmp_path / "test.csv"
    test.write_text("user,item\na,x\nb,q\nb,r\n", encoding="utf-8")  # c has no test item
    got, users = metrics_from_recs(recs, test, (1, 2))
    assert users == 2
    assert got["precision@1"] == 0.0 and got["hit_rate@1"] == 0.0
    assert got["precision@2"] == pytest.approx(0.25)
    assert got["recall@2"] == pytest.approx(0.5)
    assert got["hit_rate@2"] == pytest.approx(0.5)
    assert got["ndcg@2"] == pytest.approx((1 / math.log2(3)) / 2)
