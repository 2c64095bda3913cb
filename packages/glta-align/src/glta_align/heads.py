"""Building, saving and loading the GLLM head (from glta-gllm) for the alignment stages.

``head="plain"``: ``glta_gllm.GLLMHead``, a free (items x H) matrix (optionally initialised
from the projected item tokens, an extension). ``head="projected"``:
``glta_gllm.ProjectedItemHead``, logits against projected item tokens ``E_i W^T + b``
computed re-associated (the (items x H) matrix is never built). In stage 2 the projected
head shares the item projector's linear layer (tied); loaded back for stage 3 it owns a copy
of it, which trains while the item projector stays frozen. ``RUN/gllm_head`` is written by
the head's own ``save_pretrained`` with the dataset fingerprint.

``ResidualHead`` [choice, an extension]: in stage 3 the projected head's query in graph space
gets the user's own LightGCN embedding added, scaled by a trained ``alpha``: GLTA's score is
LightGCN's score plus the LLM's correction, so the LLM spends its capacity on what the graph
misses. Its input is the slot hidden states with the user's graph embedding appended
(:func:`slot_inputs`). With ``text_items`` (``[user_item] item_text_features``, [choice]) it
also scores each item by the frozen LLM's reading of the item's description
(:func:`reduce_item_features`), through a trained map from the slot's hidden state that
starts at zero: the one channel through which the LLM's own view of an item, not only its
graph embedding, reaches the ranking.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from glta_gllm import GLLMHead, ProjectedItemHead, linear_cross_entropy, topk_excluding
from glta_gllm.checkpoint import CONFIG_NAME, CheckpointError, load_artifact, save_artifact
from torch import nn

from glta_align.projector import NodeProjector

__all__ = ["ResidualHead", "build_head", "head_topk", "load_head", "reduce_item_features",
           "save_head", "slot_inputs"]

_RESIDUAL_TYPE = "residual_projected_item_head"


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
    cls = {"projected_item_head": ProjectedItemHead, _RESIDUAL_TYPE: ResidualHead}.get(
        kind, GLLMHead)
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


def reduce_item_features(features: torch.Tensor, dim: int, like: torch.Tensor
                         ) -> torch.Tensor:
    """Item text features for :class:`ResidualHead`: centred, their top ``dim`` principal
    components, scaled to the graph item table's size.

    Args:
        features: (I, F) one row per item (e.g. the LLM's mean hidden state of the item's
            description).
        dim: components kept (at most ``min(I, F)``).
        like: (I, d) the graph item embeddings; the result's mean row norm equals theirs, so
            the text scores start on the graph scores' scale.

    Returns:
        (I, min(dim, I, F)) float32; each component's sign fixed (its largest-magnitude entry
        positive), so equal features give equal tables.
    """
    if features.dim() != 2 or like.dim() != 2 or features.shape[0] != like.shape[0]:
        raise ValueError(f"features {tuple(features.shape)} and item embeddings "
                         f"{tuple(like.shape)} must be (I, F) and (I, d) over the same items")
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    x = features.detach().double()
    x = x - x.mean(dim=0, keepdim=True)
    u, sv, _ = torch.linalg.svd(x, full_matrices=False)
    keep = min(dim, int(sv.shape[0]))
    comps = u[:, :keep] * sv[:keep]
    idx = comps.abs().argmax(dim=0)
    comps = comps * torch.where(comps[idx, torch.arange(keep)] < 0, -1.0, 1.0).double()
    target = like.detach().double().norm(dim=1).mean()
    current = comps.norm(dim=1).mean().clamp_min(1e-12)
    return (comps * (target / current)).float()


class ResidualHead(nn.Module):
    r"""Residual matching head: LightGCN's score plus the LLM's correction [choice].

    .. math::  \mathrm{logits} = (h P + \alpha\, e_u)\, E^\top + (h \cdot c)\,\mathbf{1}^\top
               + (h W)\, T^\top

    with ``h P`` the query of a :class:`~glta_gllm.ProjectedItemHead` (``P`` its projector
    weight, ``c`` its bias, ``E`` its frozen item embeddings), ``e_u`` the user's frozen
    LightGCN embedding and ``alpha`` a trained scalar (starting at ``alpha``). With ``h P = 0``
    and ``alpha = 1`` the ranking is exactly LightGCN's. The last term is there only with
    ``text_items``: ``T`` (I, r) frozen item text features, ``W`` (H, r) trained, starting at
    zero (so it too starts at LightGCN's ranking).

    Inputs are ``(..., H + d)``: the LLM's hidden state with ``e_u`` appended (see
    :func:`slot_inputs`).

    Args:
        base: the projected head (its projector trains with this head).
        alpha: initial weight of the graph score.
        zero_correction: start ``P`` (and ``c``) at zero, so the untrained head ranks exactly
            as LightGCN does and training adds the LLM's correction from there.
        text_items: optional (I, r) item text features (:func:`reduce_item_features`).
    """

    def __init__(self, base: ProjectedItemHead, alpha: float = 1.0,
                 zero_correction: bool = False, text_items: torch.Tensor | None = None
                 ) -> None:
        super().__init__()
        if not isinstance(base, ProjectedItemHead):
            raise ValueError(f"ResidualHead needs a ProjectedItemHead, got {type(base).__name__}")
        if zero_correction:
            with torch.no_grad():
                for p in base.projector.parameters():
                    p.zero_()
        self.base = base
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.num_items, self.graph_dim = base.num_items, base.graph_dim
        self.text_dim = 0
        self.text_query: nn.Linear | None = None
        if text_items is not None:
            emb = base.item_embeddings
            if text_items.dim() != 2 or text_items.shape[0] != emb.shape[0]:
                raise ValueError(f"text_items must be ({emb.shape[0]}, r), one row per item of "
                                 f"the head, got {tuple(text_items.shape)}")
            self.text_dim = int(text_items.shape[1])
            # the rows every query scores against, [E | T], built once: the loss and the
            # ranking use it on every call (E is frozen, so the copy of it never goes stale)
            self.register_buffer("item_table", torch.cat(
                [emb, text_items.detach().to(emb.device, emb.dtype)], dim=1))
            self.text_query = nn.Linear(self.hidden_size, self.text_dim, bias=False,
                                        device=emb.device, dtype=emb.dtype)
            nn.init.zeros_(self.text_query.weight)

    @property
    def hidden_size(self) -> int:
        """H (the LLM part of the input; the input is ``H + graph_dim`` wide)."""
        return self.base.hidden_size

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        H, d = self.hidden_size, self.graph_dim
        if x.shape[-1] != H + d:
            raise ValueError(f"ResidualHead input has shape {tuple(x.shape)}; expected (..., "
                             f"{H} + {d}): the hidden state with the user's graph embedding")
        flat = x.reshape(-1, H + d)
        return flat[:, :H], flat[:, H:]

    @property
    def text_items(self) -> torch.Tensor | None:
        """(I, r) the item text features (a view of the scoring table), or ``None``."""
        return None if self.text_query is None else self.item_table[:, self.graph_dim:]

    def _table(self) -> torch.Tensor:
        """(I, d [+ r]): the item rows the queries score against."""
        return self.base.item_embeddings if self.text_query is None else self.item_table

    def _queries(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, e = self._split(x)
        proj = self.base.projector
        emb = self.base.item_embeddings
        q = (h @ proj.weight.to(h.dtype)).to(emb.dtype) + self.alpha.to(emb.dtype) * e.to(
            emb.dtype)
        if self.text_query is not None:
            q = torch.cat([q, (h @ self.text_query.weight.T.to(h.dtype)).to(emb.dtype)], dim=1)
        return q, h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Full logits ``(..., I)`` (materialised: small catalogues only)."""
        q, h = self._queries(x)
        logits = q @ self._table().T
        if self.base.projector.bias is not None:
            logits = logits + (h @ self.base.projector.bias.to(h.dtype)).to(logits.dtype)[:, None]
        return logits.reshape(*x.shape[:-1], self.num_items)

    def loss(self, x: torch.Tensor, targets: torch.Tensor, *, ignore_index: int = -100,
             reduction: str = "mean", chunk_size: int | None = None,
             backend: str = "auto") -> torch.Tensor:
        """Cross-entropy over all items (fused: the logits are never held); ``x`` (..., H+d),
        ``targets`` (...) item indices or ``ignore_index``."""
        q, _ = self._queries(x)
        out = linear_cross_entropy(q, self._table(), targets.reshape(-1),
                                   ignore_index=ignore_index, reduction=reduction,
                                   chunk_size=chunk_size, backend=backend).to(x.dtype)
        return out.reshape(targets.shape) if reduction == "none" else out

    @torch.no_grad()
    def recommend(self, x: torch.Tensor, k: int, exclude: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` items per row of ``x`` ``(U, H + d)``: ``(scores (U, k), items (U, k))``."""
        q, h = self._queries(x)
        scores, idx = topk_excluding(q, self._table(), k, exclude=exclude)
        if self.base.projector.bias is not None:
            scores = scores + (h @ self.base.projector.bias.to(h.dtype)).to(scores.dtype)[:, None]
        return scores, idx

    def save_pretrained(self, directory: str | os.PathLike[str], *,
                        dataset_fingerprint: str | None = None) -> Path:
        """Save the base head's tensors plus ``alpha`` (and the text table and its query map
        when present) as ``config.json`` + safetensors."""
        proj = self.base.projector
        tensors = {"item_embeddings": self.base.item_embeddings,
                   "projector.weight": proj.weight, "alpha": self.alpha.detach().reshape(1)}
        if proj.bias is not None:
            tensors["projector.bias"] = proj.bias
        if self.text_query is not None:
            tensors["text_items"] = self.text_items.contiguous()
            tensors["text_query.weight"] = self.text_query.weight
        config = {"model_type": _RESIDUAL_TYPE, "num_items": self.num_items,
                  "graph_dim": self.graph_dim, "hidden_size": self.hidden_size,
                  "projector_bias": proj.bias is not None, "text_dim": self.text_dim}
        card = (f"# Residual projected item head\n\nLightGCN's score plus the LLM's "
                f"correction over {self.num_items} items: logits = (h P + alpha e_u) E^T"
                + (" + (h W) T^T, T the items' text features" if self.text_dim else "")
                + ".\n")
        return save_artifact(directory, tensors, config, dataset_fingerprint=dataset_fingerprint,
                             card=card)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], *,
                        expected_fingerprint: str | None = None,
                        device: torch.device | str = "cpu") -> ResidualHead:
        """Load a head written by :meth:`save_pretrained`."""
        directory = Path(directory)
        tensors, config, _ = load_artifact(directory, expected_fingerprint=expected_fingerprint,
                                           device=device)
        if config.get("model_type") != _RESIDUAL_TYPE or "alpha" not in tensors:
            raise CheckpointError(f"{directory}: not a residual head (model_type "
                                  f"{config.get('model_type')!r})")
        if ("text_items" in tensors) != ("text_query.weight" in tensors):
            raise CheckpointError(f"{directory}: has only one of text_items and "
                                  "text_query.weight (both or neither)")
        weight = tensors["projector.weight"]
        proj = nn.Linear(weight.shape[1], weight.shape[0], bias="projector.bias" in tensors,
                         device=device, dtype=weight.dtype)
        with torch.no_grad():
            proj.weight.copy_(weight)
            if proj.bias is not None:
                proj.bias.copy_(tensors["projector.bias"])
        head = cls(ProjectedItemHead(tensors["item_embeddings"], proj),
                   float(tensors["alpha"].reshape(-1)[0]), text_items=tensors.get("text_items"))
        if head.text_query is not None:
            query = tensors["text_query.weight"]
            if tuple(query.shape) != tuple(head.text_query.weight.shape):
                raise CheckpointError(f"{directory}: text_query.weight has shape "
                                      f"{tuple(query.shape)}, expected "
                                      f"{tuple(head.text_query.weight.shape)}")
            with torch.no_grad():
                head.text_query.weight.copy_(query)
        return head


def slot_inputs(head: nn.Module, hidden: torch.Tensor, user_graph: torch.Tensor
                ) -> torch.Tensor:
    """What ``head`` scores: ``hidden`` (B, S, H), with each user's graph embedding
    ``user_graph`` (B, d) appended for a :class:`ResidualHead` -> (B, S, H + d)."""
    if not isinstance(head, ResidualHead):
        return hidden
    e = user_graph.to(hidden.dtype)[:, None, :].expand(-1, hidden.shape[1], -1)
    return torch.cat([hidden, e], dim=-1)
