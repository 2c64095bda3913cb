"""Item-scoring heads: the free linear GLLM head and the matching head over projected items.

``GLLMHead`` is the paper's linear head: one learnt row per item, ``logits = h W^T (+ b)``.
``ProjectedItemHead`` scores against *projected item tokens* instead of free rows:
``logits = h . (E P^T + c)^T`` where ``E`` (items x d_graph) are frozen graph item embeddings
and ``(P, c)`` the item projector ``nn.Linear(d_graph, H)``. Both train with the fused
:func:`~glta_gllm.functional.linear_cross_entropy` and rank with the streaming
:func:`~glta_gllm.functional.topk_excluding`, so neither ever holds a (rows x items) matrix.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from glta_gllm.checkpoint import CheckpointError, load_artifact, read_config, save_artifact
from glta_gllm.functional import linear_cross_entropy, shard_range, topk_excluding

__all__ = ["GLLMHead", "ProjectedItemHead"]

_GLLM_TYPE = "gllm_head"
_PROJECTED_TYPE = "projected_item_head"


def _flatten(hidden: torch.Tensor, targets: torch.Tensor | None = None):
    if hidden.dim() < 2:
        raise ValueError(f"hidden must be (..., H) with at least 2 dims, got {tuple(hidden.shape)}")
    flat = hidden.reshape(-1, hidden.shape[-1])
    if targets is None:
        return flat, None
    if tuple(targets.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(
            f"targets shape {tuple(targets.shape)} must equal hidden's leading shape "
            f"{tuple(hidden.shape[:-1])} (hidden shape {tuple(hidden.shape)})"
        )
    return flat, targets.reshape(-1)


def _config_int(config: dict[str, Any], key: str, directory: Path) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CheckpointError(
            f"{directory}/config.json: field {key!r} must be a positive int, got {value!r}"
        )
    return value


def _check_type(config: dict[str, Any], expected: str, directory: Path) -> None:
    found = config.get("model_type")
    if found != expected:
        raise CheckpointError(
            f"{directory}/config.json: model_type is {found!r}, expected {expected!r}"
        )


def _is_sharded(group: object | None) -> bool:
    """Whether ``group`` is a process group of more than one rank."""
    if group is None:
        return False
    from glta_gllm import _sharded

    return _sharded.is_sharded(group)


def _save_sharded(group: object | None, tensors: dict[str, torch.Tensor], save) -> Path | None:
    """Save a possibly sharded head: ``tensors`` marked sharded (row shards) are gathered on
    rank 0, which calls ``save(full_tensors)``; every rank waits for it. ``None`` when not
    sharded (the caller saves as usual)."""
    if not _is_sharded(group):
        return None
    import torch.distributed as dist

    from glta_gllm import _sharded

    full = {name: _sharded.gather_rows(t, group) for name, t in tensors.items()}
    out = save(full) if dist.get_rank(group) == 0 else None
    dist.barrier(group=group)
    return out


def _tensor(tensors: dict[str, torch.Tensor], name: str, shape: tuple[int, ...], directory: Path):
    if name not in tensors:
        raise CheckpointError(f"{directory}/model.safetensors: missing tensor {name!r}")
    t = tensors[name]
    if tuple(t.shape) != shape:
        raise CheckpointError(
            f"{directory}/model.safetensors: tensor {name!r} has shape {tuple(t.shape)}, "
            f"config.json says {shape}"
        )
    return t


class GLLMHead(nn.Module):
    r"""The linear GLLM head: scores every item of the catalogue from a hidden state.

    .. math::  \mathrm{logits} = h W^\top + b, \quad W \in \mathbb{R}^{I \times H},
               b \in \mathbb{R}^{I}\ (\text{optional})

    Training uses the fused, chunked cross-entropy (:meth:`loss`) and ranking the streaming
    top-k with exclusions (:meth:`recommend`); :meth:`forward` returns full logits and is
    meant for small catalogues only.

    Args:
        hidden_size: H, the size of the hidden states fed to the head.
        num_items: I, the catalogue size (one output row per item).
        bias: learn a per-item bias ``b`` (I,).
        device, dtype: where and how to allocate the parameters.
        process_group: a ``torch.distributed`` group to shard the items over: each rank
            then holds only its rows ``[item_start, item_stop)`` (:func:`glta_gllm.shard_range`,
            uneven shards allowed) and :meth:`loss` / :meth:`recommend` are exact over the
            whole catalogue (collectives: every rank calls them with the same inputs).
            ``None`` or a group of one rank: the whole catalogue here.

    Attributes:
        weight: ``(I, H)`` item rows (``(item_stop - item_start, H)`` this rank's shard when
        sharded). bias: ``(I,)`` (or the shard's) or ``None``. num_items: the whole
        catalogue's I.
    """

    def __init__(
        self,
        hidden_size: int,
        num_items: int,
        bias: bool = False,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        process_group: object | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("hidden_size", hidden_size), ("num_items", num_items)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.hidden_size = hidden_size
        self.num_items = num_items
        self.process_group = process_group
        self.item_start, self.item_stop = shard_range(num_items, process_group)
        rows = self.item_stop - self.item_start
        self.weight = nn.Parameter(torch.empty(rows, hidden_size, device=device, dtype=dtype))
        if bias:
            self.bias = nn.Parameter(torch.empty(rows, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise ``weight ~ N(0, 1/H)`` (unit-variance logits for unit-variance h), bias 0.
        Sharded, each rank draws its rows from its own RNG (seed the ranks, or start from
        :meth:`from_item_tokens`, for a given full weight)."""
        nn.init.normal_(self.weight, mean=0.0, std=1.0 / math.sqrt(self.hidden_size))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        shard = ""
        if _is_sharded(self.process_group):
            shard = f", items=[{self.item_start}, {self.item_stop})"
        return (
            f"hidden_size={self.hidden_size}, num_items={self.num_items}, "
            f"bias={self.bias is not None}{shard}"
        )

    @classmethod
    def from_item_tokens(
        cls,
        item_tokens: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        process_group: object | None = None,
    ) -> GLLMHead:
        """A head whose rows start as given item token vectors (e.g. projected graph items).

        Args:
            item_tokens: ``(I, H)`` one vector per item, e.g. ``ProjectedItemHead.item_tokens()``.
            bias: optional ``(I,)`` initial bias (the head then has a bias).
            process_group: shard the items over it (each rank copies its rows of the whole
                ``item_tokens``; see the class docstring).

        Returns:
            A new :class:`GLLMHead` with ``weight = item_tokens`` (copied, trainable).
        """
        if not isinstance(item_tokens, torch.Tensor) or item_tokens.dim() != 2:
            raise ValueError(f"item_tokens must be (I, H), got shape {tuple(item_tokens.shape)}")
        num_items, hidden = item_tokens.shape
        if bias is not None and tuple(bias.shape) != (num_items,):
            raise ValueError(
                f"bias must have shape ({num_items},) to match item_tokens "
                f"{tuple(item_tokens.shape)}, got {tuple(bias.shape)}"
            )
        head = cls(
            hidden,
            num_items,
            bias=bias is not None,
            device=item_tokens.device,
            dtype=item_tokens.dtype,
            process_group=process_group,
        )
        a, e = head.item_start, head.item_stop
        with torch.no_grad():
            head.weight.copy_(item_tokens[a:e])
            if bias is not None:
                head.bias.copy_(bias[a:e])
        return head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full logits ``(..., I)`` for ``hidden`` ``(..., H)`` (materialised: small I only);
        sharded, this rank's columns ``[item_start, item_stop)`` only."""
        return nn.functional.linear(hidden, self.weight, self.bias)

    def loss(
        self,
        hidden: torch.Tensor,
        targets: torch.Tensor,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
        chunk_size: int | None = None,
        backend: str = "auto",
    ) -> torch.Tensor:
        """Cross-entropy of the head's logits against ``targets``, without the logits.

        Args:
            hidden: ``(..., H)`` hidden states (cast to the head's dtype); targets: ``(...)``
                item indices or ``ignore_index``.
            reduction: ``"mean"`` | ``"sum"`` | ``"none"`` (then shaped like ``targets``).
            chunk_size, backend: passed to :func:`glta_gllm.linear_cross_entropy`.

        Returns:
            The loss (see :func:`glta_gllm.linear_cross_entropy`).
        """
        flat, flat_t = _flatten(hidden, targets)
        out = linear_cross_entropy(
            flat.to(self.weight.dtype),  # e.g. bf16 LLM states into a float32 head
            self.weight,
            flat_t,
            self.bias,
            ignore_index=ignore_index,
            reduction=reduction,
            chunk_size=chunk_size,
            backend=backend,
            process_group=self.process_group,
        )
        return out.reshape(targets.shape) if reduction == "none" else out

    @torch.no_grad()
    def recommend(
        self,
        hidden: torch.Tensor,
        k: int,
        exclude: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` items for each hidden row, skipping ``exclude``'s items.

        Args:
            hidden: ``(U, H)`` one row per user / output slot.
            k: items per row.
            exclude: optional ``(U, I)`` sparse CSR of items never to return.

        Returns:
            ``(scores, indices)``, each ``(U, k)``, best first, ties to the lower index.
        """
        return topk_excluding(
            hidden.to(self.weight.dtype),
            self.weight,
            k,
            bias=self.bias,
            exclude=exclude,
            process_group=self.process_group,
        )

    def config(self) -> dict[str, Any]:
        """The JSON config that :meth:`from_pretrained` rebuilds the head from."""
        return {
            "model_type": _GLLM_TYPE,
            "hidden_size": self.hidden_size,
            "num_items": self.num_items,
            "bias": self.bias is not None,
            "dtype": str(self.weight.dtype).removeprefix("torch."),
        }

    def save_pretrained(
        self, directory: str | os.PathLike[str], *, dataset_fingerprint: str | None = None
    ) -> Path:
        """Write ``config.json`` + ``model.safetensors`` + a model card to ``directory``.

        The write is atomic (see :func:`glta_gllm.checkpoint.save_artifact`). Sharded, the
        shards are gathered on rank 0, which writes the one checkpoint of the whole head
        (loadable on any world size); every rank calls this and returns when it is written.
        """
        tensors = {"weight": self.weight}
        if self.bias is not None:
            tensors["bias"] = self.bias
        sharded = _save_sharded(
            self.process_group,
            tensors,
            lambda full: self._write(directory, full, dataset_fingerprint),
        )
        if sharded is not None or _is_sharded(self.process_group):
            return Path(directory)
        return self._write(directory, tensors, dataset_fingerprint)

    def _write(
        self, directory: str | os.PathLike[str], tensors: dict, dataset_fingerprint: str | None
    ) -> Path:
        card = (
            f"# GLLM head\n\nA linear item-scoring head: {self.num_items} items x "
            f"{self.hidden_size} hidden, bias={self.bias is not None}.\n\n"
            "```python\nfrom glta_gllm import GLLMHead\n"
            "head = GLLMHead.from_pretrained(path)\n"
            "scores, items = head.recommend(hidden, k=20)\n```\n"
        )
        if dataset_fingerprint is not None:
            card += f"\nDataset fingerprint: `{dataset_fingerprint}`.\n"
        return save_artifact(
            directory, tensors, self.config(), dataset_fingerprint=dataset_fingerprint, card=card
        )

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike[str],
        *,
        expected_fingerprint: str | None = None,
        device: torch.device | str = "cpu",
        process_group: object | None = None,
    ) -> GLLMHead:
        """Load a head written by :meth:`save_pretrained` (on any world size).

        With ``process_group`` each rank reads only its rows of the checkpoint.

        Raises:
            CheckpointError: missing/malformed folder, config field or tensor (named).
            FingerprintMismatchError: made for another dataset than ``expected_fingerprint``.
        """
        directory = Path(directory)
        config = read_config(directory)
        _check_type(config, _GLLM_TYPE, directory)
        hidden = _config_int(config, "hidden_size", directory)
        items = _config_int(config, "num_items", directory)
        has_bias = bool(config.get("bias", False))
        a, e = shard_range(items, process_group)
        tensors, _, _ = load_artifact(
            directory,
            expected_fingerprint=expected_fingerprint,
            device=device,
            rows={"weight": (a, e), "bias": (a, e)},
        )
        weight = _tensor(tensors, "weight", (e - a, hidden), directory)
        bias = _tensor(tensors, "bias", (e - a,), directory) if has_bias else None
        head = cls(
            hidden,
            items,
            bias=has_bias,
            device=weight.device,
            dtype=weight.dtype,
            process_group=process_group,
        )
        with torch.no_grad():
            head.weight.copy_(weight)
            if bias is not None:
                head.bias.copy_(bias)
        return head


class ProjectedItemHead(nn.Module):
    r"""Matching head: scores hidden states against projected frozen item embeddings.

    .. math::  \mathrm{logits} = h\,(E P^\top + \mathbf{1} c^\top)^\top
                               = (h P)\,E^\top + (h \cdot c)\,\mathbf{1}^\top

    with ``E`` (I x d) the frozen graph item embeddings and ``P`` (H x d), ``c`` (H,) the
    weight and bias of the item projector ``nn.Linear(d, H)``. The right-hand side is what is
    computed: ``h P`` is a small ``(N, d)`` matrix, so scoring costs ``O(N x I x d)`` instead of
    ``O(N x I x H)`` and the ``(I x H)`` token matrix is never built.

    The term ``h . c`` is the same for every item of a row: it shifts all of a row's logits
    equally, so it changes neither the softmax cross-entropy (:meth:`loss` therefore skips
    it, and the projector bias gets no gradient from it) nor the ranking (:meth:`recommend`
    adds it back to the returned scores only).

    Args:
        item_embeddings: ``(I, d)`` item embeddings (kept as a frozen buffer).
        projector: an ``nn.Linear(d, H)`` (``weight`` (H, d), optional ``bias`` (H,)),
            typically shared with the alignment stage and possibly frozen; when ``None`` a
            fresh trainable one is made, which needs ``hidden_size``.
        hidden_size: H, only needed without ``projector``.
        process_group: a ``torch.distributed`` group to shard the items over: each rank
            keeps only its rows ``[item_start, item_stop)`` of ``item_embeddings``
            (:func:`glta_gllm.shard_range`) and the projector stays replicated (its gradient
            is the same on every rank); :meth:`loss` / :meth:`recommend` are exact over all
            items (collectives: every rank calls them with the same inputs).
    """

    def __init__(
        self,
        item_embeddings: torch.Tensor,
        projector: nn.Module | None = None,
        *,
        hidden_size: int | None = None,
        process_group: object | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(item_embeddings, torch.Tensor) or item_embeddings.dim() != 2:
            raise ValueError(
                f"item_embeddings must be (I, d), got shape {tuple(item_embeddings.shape)}"
            )
        num_items, d_graph = item_embeddings.shape
        if projector is None:
            if hidden_size is None:
                raise ValueError("hidden_size is required when no projector is given")
            projector = nn.Linear(
                d_graph, hidden_size, device=item_embeddings.device, dtype=item_embeddings.dtype
            )
        weight = getattr(projector, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[1] != d_graph:
            raise ValueError(
                f"projector must be an nn.Linear({d_graph}, H) with weight (H, {d_graph}); got "
                f"{type(projector).__name__} with weight shape "
                f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else None}"
            )
        bias = getattr(projector, "bias", None)
        if bias is not None and tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(
                f"projector bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}"
            )
        if hidden_size is not None and hidden_size != weight.shape[0]:
            raise ValueError(
                f"hidden_size={hidden_size} but the projector outputs {weight.shape[0]}"
            )
        self.process_group = process_group
        self.item_start, self.item_stop = shard_range(num_items, process_group)
        rows = item_embeddings.detach()
        if _is_sharded(process_group):  # a copy, so the caller's full table can be freed
            rows = rows[self.item_start : self.item_stop].clone()
        self.register_buffer("item_embeddings", rows)
        self.projector = projector
        self.num_items = num_items
        self.graph_dim = d_graph

    @property
    def hidden_size(self) -> int:
        """H, the hidden size the projector maps item embeddings to."""
        return self.projector.weight.shape[0]

    def extra_repr(self) -> str:
        return (
            f"num_items={self.num_items}, graph_dim={self.graph_dim}, "
            f"hidden_size={self.hidden_size}"
        )

    def _queries(self, hidden: torch.Tensor) -> torch.Tensor:
        """``h P``: (N, H) @ (H, d) -> (N, d), in the item embeddings' dtype."""
        if hidden.shape[-1] != self.hidden_size:
            raise ValueError(
                f"hidden has shape {tuple(hidden.shape)} but the head expects hidden size "
                f"{self.hidden_size} (projector weight {tuple(self.projector.weight.shape)})"
            )
        q = hidden @ self.projector.weight.to(hidden.dtype)
        return q.to(self.item_embeddings.dtype)

    def _row_offset(self, hidden: torch.Tensor) -> torch.Tensor | None:
        bias = self.projector.bias
        return None if bias is None else hidden @ bias.to(hidden.dtype)

    def item_tokens(self) -> torch.Tensor:
        """The ``(I, H)`` projected item tokens ``E P^T + c`` (materialised; for seeding);
        sharded, this rank's rows."""
        return self.projector(self.item_embeddings.to(self.projector.weight.dtype))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full logits ``(..., I)`` including ``h . c`` (materialises them: small I only);
        sharded, this rank's columns ``[item_start, item_stop)``."""
        flat, _ = _flatten(hidden)
        logits = self._queries(flat) @ self.item_embeddings.T
        offset = self._row_offset(flat)
        if offset is not None:
            logits = logits + offset.to(logits.dtype).unsqueeze(1)
        return logits.reshape(*hidden.shape[:-1], logits.shape[-1])

    def loss(
        self,
        hidden: torch.Tensor,
        targets: torch.Tensor,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
        chunk_size: int | None = None,
        backend: str = "auto",
    ) -> torch.Tensor:
        """Cross-entropy of the matching logits, ``O(N x d)`` extra memory per item chunk.

        Gradients flow to ``hidden`` and to the projector weight (when it requires grad)
        through ``h P``; the frozen item embeddings get none.
        """
        flat, flat_t = _flatten(hidden, targets)
        out = linear_cross_entropy(
            self._queries(flat),
            self.item_embeddings,
            flat_t,
            ignore_index=ignore_index,
            reduction=reduction,
            chunk_size=chunk_size,
            backend=backend,
            process_group=self.process_group,
        ).to(hidden.dtype)
        return out.reshape(targets.shape) if reduction == "none" else out

    @torch.no_grad()
    def recommend(
        self, hidden: torch.Tensor, k: int, exclude: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` items per row of ``hidden`` ``(U, H)``; scores include ``h . c``."""
        flat, _ = _flatten(hidden)
        scores, idx = topk_excluding(
            self._queries(flat),
            self.item_embeddings,
            k,
            exclude=exclude,
            process_group=self.process_group,
        )
        offset = self._row_offset(flat)
        if offset is not None:
            scores = scores + offset.to(scores.dtype).unsqueeze(1)
        return scores, idx

    def save_pretrained(
        self, directory: str | os.PathLike[str], *, dataset_fingerprint: str | None = None
    ) -> Path:
        """Save item embeddings and projector (``config.json`` + safetensors + card).

        Sharded, the item embeddings are gathered on rank 0, which writes the one checkpoint
        (loadable on any world size); every rank calls this.
        """
        group = self.process_group
        if _is_sharded(group):
            _save_sharded(
                group,
                {"item_embeddings": self.item_embeddings},
                lambda full: self._write(directory, full["item_embeddings"], dataset_fingerprint),
            )
            return Path(directory)
        return self._write(directory, self.item_embeddings, dataset_fingerprint)

    def _write(
        self,
        directory: str | os.PathLike[str],
        item_embeddings: torch.Tensor,
        dataset_fingerprint: str | None,
    ) -> Path:
        tensors = {
            "item_embeddings": item_embeddings,
            "projector.weight": self.projector.weight,
        }
        if self.projector.bias is not None:
            tensors["projector.bias"] = self.projector.bias
        config = {
            "model_type": _PROJECTED_TYPE,
            "num_items": self.num_items,
            "graph_dim": self.graph_dim,
            "hidden_size": self.hidden_size,
            "projector_bias": self.projector.bias is not None,
        }
        card = (
            f"# Projected item head\n\nMatching head over {self.num_items} frozen item "
            f"embeddings (d={self.graph_dim}) projected to hidden size {self.hidden_size}.\n"
        )
        return save_artifact(
            directory, tensors, config, dataset_fingerprint=dataset_fingerprint, card=card
        )

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike[str],
        *,
        expected_fingerprint: str | None = None,
        device: torch.device | str = "cpu",
        process_group: object | None = None,
    ) -> ProjectedItemHead:
        """Load a head written by :meth:`save_pretrained` (errors as for GLLMHead), on any
        world size: with ``process_group`` each rank reads only its rows of the embeddings."""
        directory = Path(directory)
        config = read_config(directory)
        _check_type(config, _PROJECTED_TYPE, directory)
        items = _config_int(config, "num_items", directory)
        d_graph = _config_int(config, "graph_dim", directory)
        hidden = _config_int(config, "hidden_size", directory)
        a, e = shard_range(items, process_group)
        tensors, _, _ = load_artifact(
            directory,
            expected_fingerprint=expected_fingerprint,
            device=device,
            rows={"item_embeddings": (a, e)},
        )
        emb = _tensor(tensors, "item_embeddings", (e - a, d_graph), directory)
        weight = _tensor(tensors, "projector.weight", (hidden, d_graph), directory)
        has_bias = bool(config.get("projector_bias", False))
        projector = nn.Linear(d_graph, hidden, bias=has_bias, device=device, dtype=weight.dtype)
        with torch.no_grad():
            projector.weight.copy_(weight)
            if has_bias:
                projector.bias.copy_(_tensor(tensors, "projector.bias", (hidden,), directory))
        head = cls(emb, projector)  # this rank's rows only: set the shard by hand
        head.process_group = process_group
        head.num_items, head.item_start, head.item_stop = items, a, e
        return head
