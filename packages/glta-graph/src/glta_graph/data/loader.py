"""`load_dataset`: the one entry point from a source (path or name) to `Interactions`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from glta_graph.data.config import PrepareConfig
from glta_graph.data.formats import FORMATS, read_source
from glta_graph.data.interactions import DatasetError, Interactions
from glta_graph.data.preprocess import prepare
from glta_graph.data.sources import MOVIELENS_DOWNLOADS, download_movielens, embedded_dataset_path

__all__ = ["load_dataset"]


def load_dataset(
    source: str | os.PathLike[str],
    format: str = "auto",
    config: PrepareConfig | dict[str, Any] | None = None,
    **format_options: Any,
) -> Interactions:
    """Load a dataset from a path (or name) and preprocess it into :class:`Interactions`.

    ``source`` is a file or folder in any of :data:`FORMATS` (``format="auto"`` detects it
    from file names), a Hugging Face ``datasets`` name with ``format="hf"``, or, when no
    such path exists, a dataset name: ``"ml-100k"`` is the embedded offline copy (RecBole's
    MovieLens-100K inside the ``recbole`` wheel); other MovieLens names (``ml-1m``,
    ``ml-latest-small``, ...) are downloaded once from files.grouplens.org into
    ``cache_dir`` (a format option; default ``~/.cache/glta/datasets``).

    Args:
        source: path or name.
        format: a :data:`FORMATS` name or ``"auto"``.
        config: preprocessing (a :class:`PrepareConfig` or a dict of its fields).
        **format_options: options of the format's reader (``FORMATS[name].options``), e.g.
            ``user_col="uid"`` for csv, ``meta=...`` for Amazon, ``read_only=True`` for
            Goodreads.

    Returns:
        The split dataset: (users x items) CSR train/valid/test, sorted string ids, text.

    Raises:
        DatasetError: unknown format or option, missing file or column, bad value (with
            file and line), empty split, k-core that removes everything.
    """
    if isinstance(config, dict):
        config = PrepareConfig.from_dict(config)
    config = config or PrepareConfig()
    if format != "auto" and format not in FORMATS:
        raise DatasetError(f"unknown format {format!r}; known: auto, {', '.join(FORMATS)}")
    name = str(source)
    cache_dir = format_options.pop("cache_dir", None)
    if format != "hf" and not Path(name).exists():
        if name == "ml-100k" and format in ("auto", "recbole"):
            source, format = embedded_dataset_path("ml-100k"), "recbole"
        elif name in MOVIELENS_DOWNLOADS and format in ("auto", MOVIELENS_DOWNLOADS[name]):
            source = download_movielens(name, cache_dir)
            format = MOVIELENS_DOWNLOADS[name]
        else:
            known = ", ".join(["ml-100k (embedded)", *list(MOVIELENS_DOWNLOADS)[1:]])
            raise DatasetError(
                f"{name}: no such file or directory (nor a dataset name: {known})"
            )
    elif cache_dir is not None:
        raise DatasetError("option cache_dir only applies to downloadable MovieLens names")
    raw = read_source(source, format, with_title=config.with_title, **format_options)
    return prepare(raw, config)
