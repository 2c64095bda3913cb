"""Data loading, preprocessing and the `Interactions` container.

``load_dataset(source, format="auto", config=PrepareConfig(...), **format_options)`` reads
any of :data:`FORMATS` and returns a split :class:`Interactions`.
"""

from glta_graph.data.config import SPLIT_METHODS, TEMPORAL_SCOPES, PrepareConfig
from glta_graph.data.export import export_csv
from glta_graph.data.formats import FORMATS, DataFormat, detect_format, read_source
from glta_graph.data.interactions import (
    SPLITS,
    DatasetError,
    DatasetWarning,
    Interactions,
    csr_from_pairs,
)
from glta_graph.data.loader import load_dataset
from glta_graph.data.preprocess import kcore_mask, prepare, split_codes
from glta_graph.data.raw import RawInteractions
from glta_graph.data.sources import (
    GROUPLENS_URL,
    MOVIELENS_DOWNLOADS,
    default_cache_dir,
    download_movielens,
    embedded_dataset_path,
)
from glta_graph.data.synthetic import random_interactions

__all__ = [
    "FORMATS",
    "GROUPLENS_URL",
    "MOVIELENS_DOWNLOADS",
    "SPLITS",
    "SPLIT_METHODS",
    "TEMPORAL_SCOPES",
    "DataFormat",
    "DatasetError",
    "DatasetWarning",
    "Interactions",
    "PrepareConfig",
    "RawInteractions",
    "csr_from_pairs",
    "default_cache_dir",
    "detect_format",
    "download_movielens",
    "embedded_dataset_path",
    "export_csv",
    "kcore_mask",
    "load_dataset",
    "prepare",
    "random_interactions",
    "read_source",
    "split_codes",
]
