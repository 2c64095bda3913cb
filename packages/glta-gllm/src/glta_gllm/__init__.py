"""glta-gllm: a linear head that scores every item of a catalogue.

Fused, memory-efficient linear cross-entropy and streaming top-k with exclusions, ranking
metrics, and the checkpoint contract shared by the GLTA packages. Depends on torch and
safetensors only.
"""

from glta_gllm.functional import linear_cross_entropy, shard_range, topk_excluding
from glta_gllm.head import GLLMHead, ProjectedItemHead
from glta_gllm.metrics import ranking_metrics

__all__ = [
    "GLLMHead",
    "ProjectedItemHead",
    "linear_cross_entropy",
    "ranking_metrics",
    "shard_range",
    "topk_excluding",
]

__version__ = "0.1.0"
