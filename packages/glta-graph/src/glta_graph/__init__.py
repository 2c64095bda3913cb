"""glta_graph: recommendation data, LightGCN pretraining and full-ranking evaluation.

Data loading lives in :mod:`glta_graph.data`; progress events in :mod:`glta_graph.progress`.
"""

from glta_graph.adjacency import (
    BACKENDS,
    GraphPropagator,
    normalized_adjacency,
    resolve_backend,
    sparse_propagate,
    torch_sparse_available,
)
from glta_graph.evaluate import (
    evaluate_embeddings,
    exclusion_matrix,
    recommend_embeddings,
    select_rows,
    update_metrics,
)
from glta_graph.lightgcn import LightGCN
from glta_graph.train import (
    LightGCNConfig,
    NegativeSampler,
    TrainResult,
    load_graph_embeddings,
    train_lightgcn,
)

__all__ = [
    "BACKENDS",
    "GraphPropagator",
    "LightGCN",
    "LightGCNConfig",
    "NegativeSampler",
    "TrainResult",
    "evaluate_embeddings",
    "exclusion_matrix",
    "load_graph_embeddings",
    "normalized_adjacency",
    "recommend_embeddings",
    "resolve_backend",
    "select_rows",
    "sparse_propagate",
    "torch_sparse_available",
    "train_lightgcn",
    "update_metrics",
]
