"""Data loading, preprocessing and the `Interactions` container."""

from glta_graph.data.interactions import SPLITS, DatasetError, Interactions, csr_from_pairs

__all__ = ["SPLITS", "DatasetError", "Interactions", "csr_from_pairs"]
