"""The checkpoint contract shared by every GLTA package.

An *artifact* is one folder holding ``config.json`` + ``model.safetensors`` (+ a short
``README.md`` model card). The safetensors header carries
``{"format": "pt", "glta_format": "1", "dataset_fingerprint": ...}`` so that an artifact made
for one dataset cannot silently be loaded against another. Every file is written atomically
(temporary file in the same folder, then ``os.replace``), and a whole artifact folder is
first assembled under a temporary name and then renamed into place, so a killed process never
leaves a half-written artifact behind.

This module depends on torch and safetensors only.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

__all__ = [
    "CONFIG_NAME",
    "GLTA_FORMAT",
    "MODEL_CARD_NAME",
    "STATE_NAME",
    "WEIGHTS_NAME",
    "CheckpointError",
    "FingerprintMismatchError",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_fingerprint",
    "load_artifact",
    "load_resume_state",
    "read_config",
    "read_metadata",
    "save_artifact",
    "save_resume_state",
    "staging_dir",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_CARD_NAME = "README.md"
GLTA_FORMAT = "1"
STATE_NAME = "state.pt"


def staging_dir(parent: str | os.PathLike[str], name: str) -> Path:
    """A fresh hidden folder ``parent/.name.XXXX`` to build an output in before renaming it.

    Unlike ``tempfile.mkdtemp`` (always mode 0700) it gets the permissions any folder the
    user creates gets (0777 minus the umask), so the renamed output is readable as usual.

    Returns:
        The new, empty folder.
    """
    staged = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=parent))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(staged, 0o777 & ~mask)
    return staged


class CheckpointError(ValueError):
    """An artifact folder is missing, incomplete or malformed (the message names the path)."""


class FingerprintMismatchError(CheckpointError):
    """An artifact was made for another dataset than the one it is being used with."""


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temp file in the same folder, fsync, rename.

    Args:
        path: destination file; its parent folder is created if needed.
        data: the bytes to write.

    Returns:
        The destination as a ``Path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_artifact(
    directory: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    *,
    dataset_fingerprint: str | None = None,
    card: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Save one artifact folder (``config.json``, ``model.safetensors``, ``README.md``).

    The folder is built under a temporary sibling name and renamed into place, replacing any
    previous version only once the new one is complete.

    Args:
        directory: the artifact folder, e.g. ``run/graph``.
        tensors: name -> tensor (any shape); stored contiguous, on the CPU.
        config: JSON-serialisable settings needed to rebuild the module.
        dataset_fingerprint: fingerprint of the dataset the tensors were trained on, stored in
            the safetensors metadata and checked by :func:`load_artifact`.
        card: text of the model card; a one-line default is written when omitted.
        metadata: extra string metadata for the safetensors header.

    Returns:
        The artifact folder as a ``Path``.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": "pt", "glta_format": GLTA_FORMAT}
    if dataset_fingerprint is not None:
        header["dataset_fingerprint"] = str(dataset_fingerprint)
    for key, value in (metadata or {}).items():
        header[str(key)] = str(value)
    staged = staging_dir(directory.parent, directory.name)
    try:
        clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        save_file(clean, str(staged / WEIGHTS_NAME), metadata=header)
        (staged / CONFIG_NAME).write_text(
            json.dumps(dict(config), indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        text = card if card is not None else f"# {directory.name}\n\nA GLTA artifact.\n"
        (staged / MODEL_CARD_NAME).write_text(text, encoding="utf-8")
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(directory, old)
            os.replace(staged, directory)
            shutil.rmtree(old)
        else:
            os.replace(staged, directory)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return directory


def read_metadata(directory: str | os.PathLike[str]) -> dict[str, str]:
    """Return the safetensors header metadata of an artifact folder without loading tensors."""
    weights = _require(Path(directory), WEIGHTS_NAME)
    with safe_open(str(weights), framework="pt") as fh:
        return dict(fh.metadata() or {})


def check_fingerprint(
    directory: str | os.PathLike[str], found: str | None, expected: str | None
) -> None:
    """Raise :class:`FingerprintMismatchError` naming both fingerprints when they differ.

    Either side being ``None`` means "unknown" and passes.
    """
    if expected is not None and found is not None and found != expected:
        raise FingerprintMismatchError(
            f"{directory}: artifact was made for dataset fingerprint {found}, "
            f"but the dataset in use has fingerprint {expected}"
        )


def read_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``config.json`` of an artifact folder, without loading its tensors.

    Raises:
        CheckpointError: the folder or file is missing, or not valid JSON (names the path).
    """
    config_path = _require(Path(directory), CONFIG_NAME)
    try:
        return json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_path}: not valid JSON ({exc})") from exc


def load_artifact(
    directory: str | os.PathLike[str],
    *,
    expected_fingerprint: str | None = None,
    device: str | torch.device = "cpu",
    rows: Mapping[str, tuple[int, int]] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, str]]:
    """Load an artifact folder written by :func:`save_artifact`.

    Args:
        directory: the artifact folder.
        expected_fingerprint: when given, the stored dataset fingerprint must equal it.
        device: where to put the tensors.
        rows: ``name -> (start, stop)``: read only those rows (first dimension) of the named
            tensors, e.g. one rank's shard of an item-sharded head; nothing else of them is
            read from disk. Other tensors are loaded whole.

    Returns:
        ``(tensors, config, metadata)``.

    Raises:
        CheckpointError: the folder or one of its files is missing or unreadable.
        FingerprintMismatchError: the artifact belongs to another dataset.
    """
    directory = Path(directory)
    config = read_config(directory)
    weights = _require(directory, WEIGHTS_NAME)
    rows = dict(rows or {})
    try:
        with safe_open(str(weights), framework="pt", device=str(device)) as fh:
            metadata = dict(fh.metadata() or {})
            tensors = {}
            for name in fh.keys():  # noqa: SIM118
                if name in rows:
                    start, stop = rows[name]
                    tensors[name] = fh.get_slice(name)[start:stop]
                else:
                    tensors[name] = fh.get_tensor(name)
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{weights}: cannot read safetensors file ({exc})") from exc
    check_fingerprint(directory, metadata.get("dataset_fingerprint"), expected_fingerprint)
    return tensors, config, metadata


def save_resume_state(state_dir: str | os.PathLike[str], payload: Mapping[str, Any]) -> Path:
    """Atomically write a stage's resume point to ``state_dir/state.pt`` (``torch.save``).

    Args:
        state_dir: the stage's state folder, e.g. ``RUN/state/graph``.
        payload: tensors, state dicts and plain values; by convention it holds
            ``"fingerprint"`` (the dataset's) and ``"config"`` (a JSON string of the settings
            that must not change across a resume), checked by :func:`load_resume_state`.

    Returns:
        The path of the written file.
    """
    buf = io.BytesIO()
    torch.save(dict(payload), buf)
    return atomic_write_bytes(Path(state_dir) / STATE_NAME, buf.getvalue())


def load_resume_state(
    state_dir: str | os.PathLike[str],
    *,
    fingerprint: str,
    key: Mapping[str, Any],
    what: str,
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Load a resume point written by :func:`save_resume_state`, or ``None`` when there is none.

    Args:
        state_dir: the stage's state folder.
        fingerprint: fingerprint of the dataset in use; must equal the stored one.
        key: settings that must equal those stored in ``json.loads(state["config"])``.
        what: the stage's name, used in error messages (e.g. ``"item_text"``).
        defaults: values assumed for settings that a state written by an older version
            does not store (a setting added later, at its default, does not block resuming).

    Raises:
        CheckpointError: the file exists but cannot be read.
        FingerprintMismatchError: the state was made for another dataset (names both).
        ValueError: a setting in ``key`` changed since the state was written (names it).
    """
    state_dir = Path(state_dir)
    path = state_dir / STATE_NAME
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt file: say which and how to recover
        raise CheckpointError(
            f"{path}: cannot read resume state ({type(exc).__name__}: truncated, corrupt or "
            "not a resume state); delete it or pass resume=False"
        ) from exc
    if state.get("fingerprint") != fingerprint:
        raise FingerprintMismatchError(
            f"{state_dir}: resume state was made for dataset fingerprint "
            f"{state.get('fingerprint')}, but the dataset in use has fingerprint {fingerprint}"
        )
    saved = {**(defaults or {}), **json.loads(state["config"])}
    for name, value in key.items():
        if saved.get(name) != value:
            raise ValueError(
                f"{path}: cannot resume {what}: {name} was {saved.get(name)!r} and is now "
                f"{value!r}; use another run directory or resume=False"
            )
    return state


def _require(directory: Path, name: str) -> Path:
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: artifact folder does not exist")
    path = directory / name
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (incomplete or foreign artifact folder)")
    return path
