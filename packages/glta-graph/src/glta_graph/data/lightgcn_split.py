"""The LightGCN split format: ``train.txt`` and ``test.txt``, one line per user,
``user item item ...`` separated by whitespace (a user may have no items on a line).

The split is given: rows from ``train.txt`` get code 0, rows from ``test.txt`` code 2;
preprocessing keeps the test split and carves a seeded validation fraction from train.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from glta_graph.data.interactions import DatasetError
from glta_graph.data.raw import RawInteractions, factorize_ids, read_lines, require_file

__all__ = ["read_lightgcn"]


def _read_lines(path: Path) -> tuple[list[str], list[int], list[str]]:
    heads: list[str] = []
    counts: list[int] = []
    items: list[str] = []
    for _, line in read_lines(path):
        tokens = line.split()
        if not tokens:
            continue
        heads.append(tokens[0])
        counts.append(len(tokens) - 1)
        items.extend(tokens[1:])
    return heads, counts, items


def read_lightgcn(path: Path, *, train_file: str = "train.txt",
                  test_file: str = "test.txt") -> RawInteractions:
    """Read a LightGCN-style split (e.g. the paper's Gowalla, Yelp2018, Amazon-Book).

    Args:
        path: the folder holding ``train_file`` and ``test_file``.
        train_file / test_file: file names inside ``path``.

    Returns:
        Raw interactions with ``presplit`` codes (0 train, 2 test); no ratings, no time.
    """
    path = Path(path)
    folder = path.parent if path.is_file() else path
    train = require_file(folder / train_file, "LightGCN train file")
    test = require_file(folder / test_file, "LightGCN test file")
    heads, counts, items, codes = [], [], [], []
    for code, file in ((0, train), (2, test)):
        h, c, i = _read_lines(file)
        heads += h
        counts += c
        items += i
        codes.append(np.full(sum(c), code, dtype=np.int8))
    if not items:
        raise DatasetError(f"{folder}: {train_file} and {test_file} hold no interactions")
    user_ids, head_codes = factorize_ids(heads, what="user", source=str(train))
    users = np.repeat(head_codes, np.asarray(counts, dtype=np.int64))
    item_ids, item_codes = factorize_ids(items, what="item", source=str(train))
    return RawInteractions(user_ids, item_ids, users, item_codes, name=folder.name,
                           presplit=np.concatenate(codes), source=str(folder))
