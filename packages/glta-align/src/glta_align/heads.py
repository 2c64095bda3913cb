"""Building, saving and loading the GLLM head (from glta-gllm) for the alignment stages.

``head="plain"``: ``glta_gllm.GLLMHead``, a free (items x H) matrix (optionally initialised
from the projected item tokens, an extension). ``head="projected"``:
``glta_gllm.ProjectedItemHead``, logits against projected item tokens ``E_i W^T + b``
computed re-associated (the (items x H) matrix is never built). In stage 2 the projected
head shares the item projector's linear layer (tied); loaded back for stage 3 it owns a copy
of it, which trains while the item projector stays frozen. ``RUN/gllm_head`` is written by
the head's own ``save_pretrained`` with the dataset fingerprint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from glta_gllm import GLLMHead, ProjectedItemHead
from glta_gllm.checkpoint import CONFIG_NAME, CheckpointError
from torch import nn

from glta_align.projector import NodeProjector

__all__ = ["build_head", "head_topk", "load_head", "save_head"]


def build_head(cfg: Any, hidden_size: int, item_emb: torch.Tensor,
               projector: NodeProjector) -> nn.Module:
    """A fresh head for ``cfg.head`` over ``item_emb.shape[0]`` items.

    Args:
        cfg: a stage config (``head``, ``head_init``, ``head_bias``).
        hidden_size: H.
        item_emb: (I, d) frozen graph item embeddings.
        projector: the item projector (for ``head_init="item_tokens"`` and the projected head).

    Returns:
        A ``GLLMHead`` (weight (I, H)) or a ``ProjectedItemHead`` tied to ``projector``.
    """
    num_items = int(item_emb.shape[0])
    if cfg.head == "plain":
        if cfg.head_init == "item_tokens":
            with torch.no_grad():
                tokens = projector(item_emb).float()
                tokens = tokens / tokens.norm(dim=1, keepdim=True).clamp_min(1e-8)
                tokens = tokens / hidden_size**0.5
            bias = torch.zeros(num_items, device=tokens.device) if cfg.head_bias else None
            return GLLMHead.from_item_tokens(tokens, bias)
        head = GLLMHead(hidden_size, num_items, bias=cfg.head_bias)
        if cfg.head_init == "zeros":
            torch.nn.init.zeros_(head.weight)
        return head
    if projector.kind != "linear":
        raise ValueError("head='projected' needs projector='linear' (one linear layer)")
    return ProjectedItemHead(item_emb.float(), projector.linear)


def save_head(head: nn.Module, directory: str | os.PathLike[str], fingerprint: str) -> Path:
    """Save ``head`` with its own ``save_pretrained`` (atomic, with the dataset fingerprint)."""
    return head.save_pretrained(directory, dataset_fingerprint=fingerprint)


def load_head(directory: str | os.PathLike[str], *, expected_fingerprint: str | None,
              hidden_size: int, num_items: int, device: str | torch.device = "cpu") -> nn.Module:
    """Load ``RUN/gllm_head`` (either kind); checks fingerprint, catalogue size and H.

    Raises:
        CheckpointError: missing/malformed folder, or shapes that do not fit (both named).
        FingerprintMismatchError: the head belongs to another dataset.
    """
    directory = Path(directory)
    cfg_path = directory / CONFIG_NAME
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path}: missing (no GLLM head here)")
    kind = json.loads(cfg_path.read_text(encoding="utf-8")).get("model_type")
    cls = ProjectedItemHead if kind == "projected_item_head" else GLLMHead
    head = cls.from_pretrained(directory, expected_fingerprint=expected_fingerprint,
                               device=device)
    if head.num_items != num_items or head.hidden_size != hidden_size:
        raise CheckpointError(
            f"{directory}: head is for {head.num_items} items x hidden {head.hidden_size}, "
            f"but the run has {num_items} items and the LLM hidden size is {hidden_size}")
    return head


def head_topk(head: nn.Module, hidden: torch.Tensor, k: int,
              exclude: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` items per row of ``hidden`` (N, H), skipping ``exclude`` (N x I CSR).

    Returns:
        ``(scores (N, k), items (N, k) int64)``.
    """
    return head.recommend(hidden.float(), k, exclude=exclude)
