"""`Interactions`: the one in-memory form of a prepared recommendation dataset."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = ["SPLITS", "DatasetError", "DatasetWarning", "Interactions", "csr_from_pairs"]

SPLITS = ("train", "valid", "test")
_META_NAME = "dataset.json"
# what a saved dataset folder holds (.glta: the glta CLI's output marker)
_LAYOUT = frozenset({_META_NAME, "interactions", "users", "items", ".glta"})
_FORMAT = "1"


class DatasetError(ValueError):
    """Bad dataset input; the message names the file, field or value at fault."""


class DatasetWarning(UserWarning):
    """Something a reader noticed but could work around (e.g. a metadata file not found).

    Issued with :func:`warnings.warn`; the ``glta`` CLI prints each one as a yellow line.
    """


def csr_from_pairs(
    users: np.ndarray | Sequence[int],
    items: np.ndarray | Sequence[int],
    num_users: int,
    num_items: int,
) -> torch.Tensor:
    """Build a binary (num_users x num_items) float32 sparse CSR matrix from index pairs.

    Duplicate pairs collapse into one entry; column indices are sorted within each row.

    Args:
        users: (nnz,) internal user indices.
        items: (nnz,) internal item indices.
        num_users: number of rows.
        num_items: number of columns.

    Returns:
        A ``torch.sparse_csr`` tensor with int64 indices and float32 ones as values.
    """
    u = np.asarray(users, dtype=np.int64)
    i = np.asarray(items, dtype=np.int64)
    if u.shape != i.shape:
        raise ValueError(f"users {u.shape} and items {i.shape} must have the same shape")
    if u.size:
        # sort + adjacent-difference dedup: several times faster than np.unique (hash-based
        # since numpy 2.3) on Gowalla-sized inputs
        key = np.sort(u * num_items + i)
        if key.size > 1:
            key = key[np.concatenate(([True], key[1:] != key[:-1]))]
        u, i = key // num_items, key % num_items
    crow = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(u, minlength=num_users), out=crow[1:])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        warnings.filterwarnings("ignore", message="Sparse invariant checks")
        return torch.sparse_csr_tensor(
            torch.from_numpy(crow),
            torch.from_numpy(i.copy()),
            torch.ones(i.size, dtype=torch.float32),
            size=(num_users, num_items),
            check_invariants=False,
        )


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """Silence ``datasets``' own tqdm bars (front ends draw progress) and restore after."""
    from datasets.utils import logging as ds_logging

    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()


def _is_saved_dataset(directory: Path) -> bool:
    """True when ``directory`` holds a dataset written by :meth:`Interactions.save`."""
    try:
        meta = json.loads((directory / _META_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "glta_format" in meta


def _pairs(csr: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    crow = csr.crow_indices().numpy()
    users = np.repeat(np.arange(len(crow) - 1, dtype=np.int64), np.diff(crow))
    return users, csr.col_indices().numpy().astype(np.int64)


@dataclass
class Interactions:
    """A prepared implicit-feedback dataset.

    Internal user ``u`` is ``user_ids[u]`` in the source data, internal item ``i`` is
    ``item_ids[i]``. Each split is a binary (num_users x num_items) float32 sparse CSR
    matrix; the splits are disjoint. ``item_text[i]`` is the text describing item ``i``.

    Attributes:
        user_ids: external user ids, length ``num_users``.
        item_ids: external item ids, length ``num_items``.
        train: (num_users x num_items) CSR of training interactions.
        valid: (num_users x num_items) CSR of validation interactions (may be empty).
        test: (num_users x num_items) CSR of test interactions.
        item_text: one description per item (may be empty strings).
        name: a human-readable dataset name.
    """

    user_ids: list[str]
    item_ids: list[str]
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    item_text: list[str] = field(default_factory=list)
    name: str = "dataset"

    def __post_init__(self) -> None:
        self.user_ids = [str(x) for x in self.user_ids]
        self.item_ids = [str(x) for x in self.item_ids]
        if not self.item_text:
            self.item_text = [""] * len(self.item_ids)
        if len(self.item_text) != len(self.item_ids):
            raise DatasetError(
                f"item_text has {len(self.item_text)} entries for {len(self.item_ids)} items"
            )
        shape = (len(self.user_ids), len(self.item_ids))
        for split in SPLITS:
            mat = getattr(self, split)
            if mat.layout != torch.sparse_csr:
                raise DatasetError(f"split {split!r} must be a sparse CSR tensor")
            if tuple(mat.shape) != shape:
                raise DatasetError(f"split {split!r} has shape {tuple(mat.shape)}, want {shape}")

    @property
    def num_users(self) -> int:
        """Number of users (rows of every split)."""
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        """Number of items (columns of every split)."""
        return len(self.item_ids)

    def split(self, name: str) -> torch.Tensor:
        """Return the CSR matrix of split ``name`` (``train``, ``valid`` or ``test``)."""
        if name not in SPLITS:
            raise DatasetError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def pairs(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Return the (user, item) internal index arrays of split ``name``, each (nnz,)."""
        return _pairs(self.split(name))

    def users_with(self, name: str) -> np.ndarray:
        """Return the sorted internal indices (n,) of users with at least one interaction in
        split ``name``."""
        return np.flatnonzero(np.diff(self.split(name).crow_indices().numpy()) > 0)

    def user_items(self, name: str, user: int) -> np.ndarray:
        """Return the sorted internal item indices of ``user`` in split ``name``."""
        mat = self.split(name)
        crow = mat.crow_indices()
        return mat.col_indices()[crow[user] : crow[user + 1]].numpy()

    @property
    def fingerprint(self) -> str:
        """A 16-hex-digit hash of the id maps and the split (stable across save/load)."""
        h = hashlib.sha256()
        h.update(json.dumps([self.user_ids, self.item_ids]).encode("utf-8"))
        for split in SPLITS:
            mat = self.split(split)
            h.update(split.encode())
            h.update(mat.crow_indices().numpy().astype(np.int64).tobytes())
            h.update(mat.col_indices().numpy().astype(np.int64).tobytes())
        return h.hexdigest()[:16]

    def stats(self) -> dict[str, object]:
        """Counts per split and density, as a JSON-ready dict."""
        per_split = {s: int(self.split(s)._nnz()) for s in SPLITS}
        total = sum(per_split.values())
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "users": self.num_users,
            "items": self.num_items,
            "items_with_text": sum(1 for t in self.item_text if t.strip()),
            "interactions": per_split,
            "total_interactions": total,
            "density": total / max(1, self.num_users * self.num_items),
        }

    # -- persistence ---------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Save as Arrow tables (Hugging Face ``datasets``) plus ``dataset.json``, atomically.

        Layout: ``<dir>/interactions/`` (columns ``user``, ``item``: internal int64 indices,
        ``split``: 0 train, 1 valid, 2 test), ``<dir>/users/`` (``user_id``), ``<dir>/items/``
        (``item_id``, ``text``), and ``dataset.json`` (name, counts, fingerprint). Assembled
        in a temporary sibling folder and renamed into place; a dataset already at
        ``directory`` is removed only after the new one is in place.

        Raises:
            DatasetError: ``directory`` is a file, or a non-empty folder that is not a
                dataset written by this method or holds other files too (its files are
                never touched).
        """
        from datasets import Dataset

        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise DatasetError(f"{directory}: a file is there, and a dataset folder would be "
                               f"written; choose another path")
        if directory.is_dir() and any(directory.iterdir()):
            extra = sorted(p.name for p in directory.iterdir() if p.name not in _LAYOUT)
            if not _is_saved_dataset(directory) or extra:
                raise DatasetError(
                    f"{directory}: the folder holds files that are not a GLTA dataset "
                    f"({', '.join(extra[:5]) or 'no dataset.json'}); choose a new or empty folder"
                )
        directory.parent.mkdir(parents=True, exist_ok=True)
        # os.mkdir honours the umask (tempfile.mkdtemp would make the folder 0700)
        staged = directory.parent / f".{directory.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        os.mkdir(staged)
        try:
            cols: dict[str, list[np.ndarray]] = {"user": [], "item": [], "split": []}
            for code, split in enumerate(SPLITS):
                u, i = self.pairs(split)
                cols["user"].append(u)
                cols["item"].append(i)
                cols["split"].append(np.full(u.shape, code, dtype=np.int8))
            with _quiet_datasets():
                Dataset.from_dict({k: np.concatenate(v) for k, v in cols.items()}).save_to_disk(
                    str(staged / "interactions")
                )
                Dataset.from_dict({"user_id": self.user_ids}).save_to_disk(str(staged / "users"))
                Dataset.from_dict(
                    {"item_id": self.item_ids, "text": self.item_text}
                ).save_to_disk(str(staged / "items"))
            meta = {"glta_format": _FORMAT, **self.stats()}
            (staged / _META_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            if directory.exists():
                old = staged.with_name(staged.name.replace(".tmp-", ".old-", 1))
                os.replace(directory, old)
                os.replace(staged, directory)
                shutil.rmtree(old)
            else:
                os.replace(staged, directory)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Interactions:
        """Load a dataset folder written by :meth:`save`; checks its stored fingerprint."""
        from datasets import load_from_disk

        directory = Path(directory)
        meta_path = directory / _META_NAME
        if not meta_path.is_file():
            raise DatasetError(f"{directory}: not a prepared GLTA dataset (no {_META_NAME})")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        try:
            users = load_from_disk(str(directory / "users"))[:]["user_id"]
            items = load_from_disk(str(directory / "items"))[:]
            table = load_from_disk(str(directory / "interactions")).with_format("numpy")[:]
        except (FileNotFoundError, IndexError) as exc:
            raise DatasetError(f"{directory}: incomplete dataset folder ({exc})") from exc
        item_ids, text = items["item_id"], items["text"]
        user_col, item_col, split_col = table["user"], table["item"], table["split"]
        mats = {}
        for code, split in enumerate(SPLITS):
            sel = split_col == code
            mats[split] = csr_from_pairs(user_col[sel], item_col[sel], len(users), len(item_ids))
        data = cls(list(users), list(item_ids), item_text=list(text),
                   name=meta.get("name", directory.name), **mats)
        if meta.get("fingerprint") and meta["fingerprint"] != data.fingerprint:
            raise DatasetError(
                f"{meta_path}: stored fingerprint {meta['fingerprint']} does not match the "
                f"data on disk ({data.fingerprint}); the folder was modified or is corrupt"
            )
        return data
