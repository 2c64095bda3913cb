"""Where commands write: the rules that keep a user's own files safe.

Every folder a ``glta`` command writes carries a marker file, ``.glta`` (JSON
``{"kind": KIND, "writer": "glta"}``; ``KIND`` is ``dataset``, ``export`` or ``run``). The
rules, shared by ``data prepare``, ``data export``, ``graph train``, ``pipeline`` and
``recommend``:

- ``--out`` into a folder that is not empty and carries no marker of the right kind, or onto
  an existing file where a folder is written, is refused (:class:`OutputError`, exit 2).
- An existing output of the same kind is replaced only with ``--overwrite`` (datasets,
  exports), and only while it holds nothing but what glta wrote there; runs are resumed
  instead.
- Input and output may never be the same folder, nor may the output hold the input
  (paths are resolved, so ``./x`` and ``x/../x`` are the same).
- New folders are assembled in a temporary sibling (made with ``os.mkdir``, so they get the
  user's umask) and renamed into place; an old output is removed only after the new one is
  complete.
- ``--restart`` only moves a folder that is a GLTA run.
- One process at a time writes a run: ``glta pipeline`` holds an advisory lock on
  ``RUN/.glta.lock`` (:func:`lock_run`) while it runs; a second one on the same folder is
  refused with the holder's pid instead of mixing its stages into the first one's. The lock
  goes with the process (even on ``kill -9``); the empty file stays.

Folders written before the marker existed are still recognised: a dataset by its
``dataset.json`` holding ``glta_format``, a run by ``resolved-config.toml`` plus ``state/``
(or plus ``dataset/dataset.json``: a run killed before its first saved state).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

try:  # POSIX; on Windows the run lock is not taken (see lock_run)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "KINDS",
    "LAYOUTS",
    "LOCK",
    "MARKER",
    "OutputError",
    "check_input_output",
    "check_output_dir",
    "check_output_file",
    "lock_run",
    "output_kind",
    "staged_dir",
    "write_marker",
]

MARKER = ".glta"
#: The advisory lock file of a run folder (held by the process writing the run).
LOCK = ".glta.lock"
KINDS = ("dataset", "export", "run")
#: What a replaceable output holds; anything else in it is the user's and blocks --overwrite.
LAYOUTS = {
    "dataset": frozenset({"dataset.json", "interactions", "users", "items", MARKER}),
    "export": frozenset({"train.csv", "valid.csv", "test.csv", MARKER}),
}


class OutputError(ValueError):
    """An output path that would destroy or mix up files glta did not write."""


def _resolved(path: str | os.PathLike[str]) -> Path:
    return Path(path).expanduser().resolve()


def output_kind(path: str | os.PathLike[str]) -> str | None:
    """The kind of GLTA output ``path`` is (``dataset``, ``export``, ``run``), else ``None``.

    Read from the ``.glta`` marker; folders written before the marker existed are
    recognised by their layout (``dataset.json`` with ``glta_format``: a dataset;
    ``resolved-config.toml`` plus ``state/`` or ``dataset/dataset.json``: a run).
    """
    path = Path(path)
    if not path.is_dir():
        return None
    marker = path / MARKER
    if marker.is_file():
        try:
            kind = json.loads(marker.read_text(encoding="utf-8")).get("kind")
        except (OSError, ValueError, AttributeError):
            kind = None
        return kind if kind in KINDS else None
    meta = path / "dataset.json"
    if meta.is_file():
        try:
            if "glta_format" in json.loads(meta.read_text(encoding="utf-8")):
                return "dataset"
        except (OSError, ValueError, TypeError):
            pass
    if (path / "resolved-config.toml").is_file() and (
            (path / "state").is_dir() or (path / "dataset" / "dataset.json").is_file()):
        return "run"  # also a run killed before its first saved state
    return None


def write_marker(path: str | os.PathLike[str], kind: str) -> Path:
    """Write the ``.glta`` marker of ``kind`` into the folder ``path`` (atomically)."""
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}; known: {', '.join(KINDS)}")
    target = Path(path) / MARKER
    tmp = target.with_name(f"{MARKER}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"kind": kind, "writer": "glta"}) + "\n", encoding="utf-8")
    os.replace(tmp, target)
    return target


def check_input_output(inputs: Iterable[str | os.PathLike[str] | None],
                       out: str | os.PathLike[str], option: str = "--out") -> None:
    """Refuse an output that is an input or holds one (paths resolved).

    Raises:
        OutputError: naming both paths.
    """
    target = _resolved(out)
    for source in inputs:
        if source is None or not Path(source).exists():
            continue  # a dataset name such as ml-100k, or a hub id
        src = _resolved(source)
        if src == target or target in src.parents:
            raise OutputError(
                f"{option} {out}: it is (or holds) the input {source}; write to another folder"
            )


def check_output_dir(out: str | os.PathLike[str], kind: str, *, overwrite: bool = False,
                     inputs: Iterable[str | os.PathLike[str] | None] = (),
                     option: str = "--out") -> str:
    """Check that a command may write the folder ``out`` of ``kind``.

    Returns:
        ``"new"`` (absent or an empty folder), ``"same"`` (a GLTA output of this kind:
        replace it when ``overwrite``, resume it when it is a run).

    Raises:
        OutputError: ``out`` is a file, a non-empty folder glta did not write, an output of
            another kind, an existing dataset/export without ``overwrite``, or an input.
    """
    path = Path(out)
    check_input_output(inputs, path, option)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path}: a file is there, and a folder would be written; "
                          f"choose another path")
    if not path.exists() or not any(path.iterdir()):
        return "new"
    found = output_kind(path)
    if found is None:
        raise OutputError(
            f"{option} {path}: the folder holds files glta did not write; choose a new or "
            f"empty folder"
        )
    if found != kind:
        raise OutputError(f"{option} {path}: that folder is a glta {found}, not a {kind}; "
                          f"choose another folder")
    if kind != "run" and not overwrite:
        raise OutputError(f"{option} {path}: a glta {kind} is already there; pass --overwrite "
                          f"to replace it")
    extra = sorted(p.name for p in path.iterdir() if p.name not in LAYOUTS.get(kind, ()))
    if kind in LAYOUTS and extra:
        raise OutputError(f"{option} {path}: the glta {kind} there also holds "
                          f"{', '.join(extra[:5])}, which glta did not write; move them away "
                          f"or choose another folder")
    return "same"


def check_output_file(out: str | os.PathLike[str],
                      inputs: Iterable[str | os.PathLike[str] | None] = (),
                      option: str = "--out") -> None:
    """Check that a command may write (or replace) the single file ``out``.

    Raises:
        OutputError: ``out`` is a folder, or an input.
    """
    path = Path(out)
    check_input_output(inputs, path, option)
    if path.is_dir():
        raise OutputError(f"{option} {path}: a folder is there, and a file would be written; "
                          f"name a file such as {path / 'recs.csv'}")
    if not path.parent.is_dir():
        raise OutputError(f"{option} {path}: folder {path.parent} does not exist")


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike[str], kind: str) -> Iterator[Path]:
    """Assemble the folder ``out`` in a temporary sibling; rename it into place on success.

    Yields a path that does not exist yet, inside a fresh sibling folder; the caller
    creates it (e.g. ``Interactions.save``) and fills it. On success the marker of ``kind``
    is written into it and it replaces ``out``: an old ``out`` is renamed aside first and
    removed only once the new folder is in place. On failure nothing at ``out`` changes.
    Call :func:`check_output_dir` first: this function replaces whatever is at ``out``.
    """
    path = Path(out)
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    holder = parent / f".{path.name}.tmp-{tag}"
    os.mkdir(holder)  # os.mkdir honours the umask (tempfile.mkdtemp would make it 0700)
    staged = holder / path.name
    try:
        yield staged
        if not staged.is_dir():
            raise OutputError(f"{path}: nothing was written")
        write_marker(staged, kind)
        if path.exists():
            old = parent / f".{path.name}.old-{tag}"
            os.replace(path, old)
            os.replace(staged, path)
            if old.is_symlink():
                old.unlink()  # a link to the old output: the link goes, its target stays
            else:
                shutil.rmtree(old)
        else:
            os.replace(staged, path)
    finally:
        shutil.rmtree(holder, ignore_errors=True)


@contextlib.contextmanager
def lock_run(path: str | os.PathLike[str], option: str = "run directory") -> Iterator[Path]:
    """Hold an exclusive advisory lock on the existing folder ``path`` for the ``with`` block.

    The lock is ``flock`` on ``path/.glta.lock`` (created if absent, never removed: removing
    it would let two processes lock different files); the holder's pid is written into it
    for the error message. The kernel drops the lock when the process ends, however it ends,
    so a killed run never leaves a stale lock. On a platform without ``fcntl`` (Windows) no
    lock is taken.

    Yields:
        The lock file's path.

    Raises:
        OutputError: another process holds the lock (the message names ``path`` and its pid).
    """
    lock = Path(path) / LOCK
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                who = f" (pid {holder})" if holder.isdigit() else ""
                raise OutputError(
                    f"{option} {path}: another glta process{who} is writing this run; wait "
                    f"for it to finish or stop it, or choose another folder"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield lock
    finally:
        os.close(fd)  # releases the lock
