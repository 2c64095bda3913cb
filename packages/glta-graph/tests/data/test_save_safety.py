"""`Interactions.save` never removes what it did not write, and honours the umask."""

from __future__ import annotations

import os
import stat

import pytest

from glta_graph.data import DatasetError, Interactions, csr_from_pairs


def _data(seed: int = 0) -> Interactions:
    mats = {
        "train": csr_from_pairs([0, 1, 2], [0, 1, (2 + seed) % 3], 3, 3),
        "valid": csr_from_pairs([], [], 3, 3),
        "test": csr_from_pairs([0], [2], 3, 3),
    }
    return Interactions(["a", "b", "c"], ["x", "y", "z"], item_text=["t", "", "u"], **mats)


def test_save_refuses_foreign_folders_and_files(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(DatasetError, match=r"mine: the folder holds files that are not a GLTA "
                                           r"dataset \(notes.txt\)"):
        _data().save(mine)
    assert (mine / "notes.txt").read_text() == "keep"
    afile = tmp_path / "file"
    afile.write_text("keep")
    with pytest.raises(DatasetError, match="a file is there"):
        _data().save(afile)
    assert afile.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "mine"]


def test_save_replaces_only_its_own_dataset(tmp_path):
    out = tmp_path / "ds"
    _data(0).save(out)
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask
    _data(1).save(out)
    assert Interactions.load(out).fingerprint == _data(1).fingerprint
    assert Interactions.load(out).stats()["items_with_text"] == 2
    (out / "extra.txt").write_text("the user's")
    with pytest.raises(DatasetError, match=r"\(extra.txt\)"):
        _data(0).save(out)
    assert (out / "extra.txt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporary left over
