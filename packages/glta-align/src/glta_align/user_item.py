"""Stage 3, user-item alignment: train the user projector and the GLLM head.

Per user: the user soft token ``V_u`` (or, for the "w/o UA" ablation, the user id as text),
soft tokens of a capped random sample of the user's training items (with ``history_text``
[choice], each followed by the item's description as plain text), the generated profile and
prediction texts, and ``k`` output slots after the prompt. Slot ``t`` is trained with the
head's cross-entropy against the ``t``-th of ``k`` training items drawn in random order
(``targets_from="unseen"``: items not shown in the prompt when the user has enough [choice]).
The item projector is frozen unless ``train_item_projector`` (the "w/o IA" ablation, when
stage 2 was skipped). For ``ranking="ar"`` slot ``t > 0`` gets the previous target's soft
token as input (teacher forcing).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from glta_graph import load_graph_embeddings
from glta_graph.data import Interactions
from glta_graph.progress import ProgressCallback, ProgressEvent, emit

from glta_align._common import (
    LoopResult,
    TrainableParameters,
    dist_info,
    embedding_rms,
    rng_for,
    run_loop,
)
from glta_align.config import UserItemConfig
from glta_align.flops import DecoderCost, step_flops, throughput_record
from glta_align.heads import (
    ResidualHead,
    build_head,
    load_head,
    reduce_item_features,
    save_head,
    slot_inputs,
)
from glta_align.item_text import (
    GLLM_HEAD_DIR,
    ITEM_PROJECTOR_DIR,
    LORA_DIR,
    STAGE2_OUTPUT_DIR,
    slot_vector,
)
from glta_align.llm import FrozenLLM, load_llm, save_lora
from glta_align.profiles import generate_profiles
from glta_align.projector import NodeProjector
from glta_align.prompts import (
    USER_ITEM_SYSTEM,
    USER_ITEM_TEMPLATE,
    USER_ITEM_TEMPLATE_TEXT_FIRST,
    USER_ITEM_TEMPLATE_TEXT_FIRST_HISTORY,
    USER_ITEM_USER,
    USER_ITEM_USER_TEXT_FIRST,
    USER_ITEM_USER_TEXT_FIRST_HISTORY,
    PromptLayout,
    build_layout,
    tokenize_texts,
)
from glta_align.splice import SoftPromptRunner, SoftSequence, bucket_batches

__all__ = [
    "USER_PROJECTOR_DIR",
    "UserItemResult",
    "UserPrompter",
    "UserSample",
    "check_runner",
    "item_text_features",
    "masked_slot_loss",
    "stage2_outputs",
    "train_user_item",
    "user_item_layout",
    "user_item_runner",
    "warm_text_heads",
]

USER_PROJECTOR_DIR = "user_projector"
IGNORE = -100


@dataclass
class UserSample:
    """What one user's prompt is made of (before soft-table rows are assigned).

    Attributes:
        user: internal user index.
        history: catalogue indices shown as item soft tokens.
        targets: slot targets (``-100`` = ignored slot).
        slot_items: for AR, the items whose soft tokens feed slots 1..k-1 (else empty).
    """

    user: int
    history: list[int]
    targets: list[int] = field(default_factory=list)
    slot_items: list[int] = field(default_factory=list)


def user_item_layout(tokenizer, cfg: UserItemConfig) -> PromptLayout:
    """The stage-3 template rendered for ``tokenizer`` in ``cfg.prompt_style``, its lines in
    ``cfg.prompt_order`` (the paper's, or the text first [choice]; with ``history_text_first``
    a line of the user's item descriptions before the user token)."""
    if cfg.history_text_first:
        return build_layout(tokenizer, USER_ITEM_SYSTEM, USER_ITEM_USER_TEXT_FIRST_HISTORY,
                            USER_ITEM_TEMPLATE_TEXT_FIRST_HISTORY, style=cfg.prompt_style)
    if cfg.prompt_order == "text-first":
        return build_layout(tokenizer, USER_ITEM_SYSTEM, USER_ITEM_USER_TEXT_FIRST,
                            USER_ITEM_TEMPLATE_TEXT_FIRST, style=cfg.prompt_style)
    return build_layout(tokenizer, USER_ITEM_SYSTEM, USER_ITEM_USER, USER_ITEM_TEMPLATE,
                        style=cfg.prompt_style)


# Memory for the text-first keys/values kept across epochs (about 1.3 MB per ML-100K user's
# leading text, profile and prediction with their prompt lines: 58 tokens on average in the
# default run, 1192.1 MiB for 942 texts with SmolLM2-135M in bf16: its 943 users fit).
TEXT_HEAD_CACHE_MB = 2048


def user_item_runner(llm: FrozenLLM, layout: PromptLayout, cfg: UserItemConfig
                     ) -> SoftPromptRunner:
    """The stage-3 :class:`SoftPromptRunner` for ``layout``; with ``prompt_order =
    "text-first"`` each sample's leading text runs without gradient (``text_head``), its
    keys/values kept for later epochs and ranking up to :data:`TEXT_HEAD_CACHE_MB`."""
    first = cfg.prompt_order == "text-first"
    return SoftPromptRunner(llm, layout.prefix_ids, reuse_prefix=cfg.reuse_prefix,
                            padding_side=cfg.padding_side, compile=cfg.compile,
                            text_head=first, head_cache_mb=TEXT_HEAD_CACHE_MB if first else 0)


def warm_text_heads(runner: SoftPromptRunner, prompter: UserPrompter, data: Interactions,
                    cfg: UserItemConfig, users: Sequence[int],
                    progress: ProgressCallback | None = None) -> int:
    """Compute the leading texts of ``users``' prompts ahead, batched by length
    (:meth:`SoftPromptRunner.warm_heads`; a no-op, building no prompt, when the runner keeps
    no texts: :attr:`SoftPromptRunner.keeps_texts`).

    Args:
        runner: the stage-3 runner (:func:`user_item_runner`).
        prompter: builds the users' prompts (their profile texts included).
        data, cfg: the dataset and stage settings.
        users: (U,) internal user indices.
        progress: receives ``ProgressEvent(stage="text_cache")``.

    Returns:
        The number of texts computed.
    """
    if not runner.keeps_texts or not len(users):
        return 0
    seqs = prompter.build([eval_sample(data, cfg, int(u)) for u in users])[0]
    return runner.warm_heads(seqs, progress=progress)


def check_runner(runner: SoftPromptRunner, llm: FrozenLLM, layout: PromptLayout) -> None:
    """Raise ``ValueError`` unless ``runner`` runs ``llm`` behind ``layout``'s instruction
    prefix (a runner handed from one user of the stage-3 layout to another, so its kept text
    keys/values are valid for it)."""
    if runner.llm is not llm:
        raise ValueError("the runner given runs another LLM object than this stage's")
    if list(runner.prefix_ids) != [int(i) for i in layout.prefix_ids]:
        raise ValueError("the runner given was built for another prompt prefix than this "
                         "stage's layout (user_item_runner(llm, layout, config))")


class UserPrompter:
    """Turns :class:`UserSample` objects into spliced sequences and their soft tables.

    Args:
        layout: the rendered stage-3 template.
        data: the dataset (user ids for the "w/o UA" text).
        tokenizer: the LLM's tokenizer.
        config: the stage-3 config.
        profiles: ``{user: {"profile", "predict"}}`` texts (may be empty).
    """

    def __init__(self, layout: PromptLayout, data: Interactions, tokenizer, config: UserItemConfig,
                 profiles: dict[int, dict[str, str]]) -> None:
        self.layout, self.data, self.tok, self.cfg = layout, data, tokenizer, config
        self.profiles = profiles
        self._text_cache: dict[tuple[str, int], list[int]] = {}
        self._sep = (tokenizer("; ", add_special_tokens=False)["input_ids"]
                     if config.history_text or config.history_text_first else [])
        self._filler = (tokenizer(".", add_special_tokens=False)["input_ids"][:1]
                        if config.text_filler else [])

    def _text(self, kind: str, index: int) -> list[int]:
        """Token ids of a user's id text, profile or prediction (``index``: the user) or of an
        item's description (``kind="item"``, ``index``: the catalogue index), cut to budget;
        with ``text_filler`` a profile or prediction is as many '.' tokens instead."""
        key = (kind, index)
        if key not in self._text_cache:
            if kind == "user":
                text = f"user {self.data.user_ids[index]}"
            elif kind == "item":
                text = " " + self.data.item_text[index] if self.data.item_text[index] else ""
            else:
                text = self.profiles.get(index, {}).get(kind, "")
                text = (" " + text) if kind == "predict" and text else text
            ids = self.tok(text, add_special_tokens=False)["input_ids"] if text else []
            budget = {"user": 16, "item": (self.cfg.history_text_tokens
                                           or self.cfg.description_tokens)}.get(
                kind, self.cfg.profile_text_tokens)
            ids = list(ids[:budget])
            if self._filler and kind in ("profile", "predict"):  # words out, length kept
                ids = self._filler * len(ids)
            self._text_cache[key] = ids
        return self._text_cache[key]

    def _history_text(self, user: int) -> list[int]:
        """Token ids of the descriptions of ``user``'s fixed history sample (its ranking
        sample, :func:`eval_sample`), each cut to budget, separated by '; '
        (``history_text_first``)."""
        key = ("history", user)
        if key not in self._text_cache:
            joined: list[int] = []
            for j, item in enumerate(eval_sample(self.data, self.cfg, user).history):
                joined += (self._sep if j else []) + self._text("item", item)
            self._text_cache[key] = joined
        return self._text_cache[key]

    def length(self, s: UserSample) -> int:
        """Token count of the sample after the prefix (for bucketing)."""
        n = sum(len(p) for p in self.layout.pieces if isinstance(p, tuple))
        n += len(s.history) + self.cfg.num_slots
        if self.cfg.history_text:
            n += sum(len(self._text("item", i)) for i in s.history)
            n += len(self._sep) * max(0, len(s.history) - 1)
        if self.cfg.history_text_first:
            n += len(self._history_text(s.user))
        n += 1 if self.cfg.user_token else len(self._text("user", s.user))
        if self.cfg.use_profile:
            n += len(self._text("profile", s.user))
        if self.cfg.use_predict:
            n += len(self._text("predict", s.user))
        return n

    def build(self, samples: list[UserSample], num_slots: int | None = None
              ) -> tuple[list[SoftSequence], list[int], list[int]]:
        """Sequences plus the user and item indices whose projections fill the soft table.

        Soft table layout: row 0 slot placeholder, rows ``1..B`` the users' tokens, then the
        items in the returned order.

        Returns:
            ``(sequences, users (B,), items)``.
        """
        k = num_slots or self.cfg.num_slots
        B = len(samples)
        users = [s.user for s in samples]
        items: list[int] = []
        seqs = []
        for b, s in enumerate(samples):
            seq = SoftSequence()
            for piece in self.layout.pieces:
                if isinstance(piece, tuple):
                    seq.add_text(piece)
                elif piece == "USER_TOKEN":
                    if self.cfg.user_token:
                        seq.add_soft([1 + b])
                    else:
                        seq.add_text(self._text("user", s.user))
                elif piece == "ITEM_TOKEN":
                    start = 1 + B + len(items)
                    items.extend(s.history)
                    if self.cfg.history_text:
                        for j, item in enumerate(s.history):
                            seq.add_text(self._sep if j else [])
                            seq.add_soft([start + j])
                            seq.add_text(self._text("item", item))
                    else:
                        seq.add_soft(range(start, start + len(s.history)))
                elif piece == "PROFILE_TOKEN":
                    if self.cfg.use_profile:
                        seq.add_text(self._text("profile", s.user))
                elif piece == "PREDICT_TOKEN":
                    if self.cfg.use_predict:
                        seq.add_text(self._text("predict", s.user))
                elif piece == "HISTORY_TOKEN":
                    seq.add_text(self._history_text(s.user))
                else:
                    raise ValueError(f"stage-3 template has an unexpected placeholder {piece!r}")
            rows = [0]
            for it in s.slot_items[: k - 1]:
                rows.append(1 + B + len(items))
                items.append(it)
            rows += [0] * (k - len(rows))
            seq.add_soft(rows, read=True)
            seqs.append(seq)
        return seqs, users, items


def train_sample(data: Interactions, cfg: UserItemConfig, user: int, epoch: int) -> UserSample:
    """The training sample of ``user`` in ``epoch`` (seeded by config seed, epoch, user)."""
    rng = rng_for(cfg.seed, 3, epoch, user)
    train = data.user_items("train", user)
    perm = rng.permutation(len(train))
    n, k = len(train), cfg.num_slots
    if cfg.targets_from == "unseen":  # keep k unseen targets when the user has enough
        n_hist = min(cfg.history_items, max(n - k, min(1, n)))
    else:
        n_hist = min(cfg.history_items, n)
    history = [int(train[j]) for j in perm[:n_hist]]
    if cfg.targets_from == "unseen":
        pool = [int(train[j]) for j in perm[n_hist:]] or history
    else:
        pool = [int(train[j]) for j in rng.permutation(n)]
    targets = pool[: cfg.num_slots]
    targets += [IGNORE] * (cfg.num_slots - len(targets))
    slot_items = [t for t in targets[:-1] if t != IGNORE] if cfg.ranking == "ar" else []
    return UserSample(user, history, targets, slot_items)


def masked_slot_loss(logits: torch.Tensor, targets: torch.Tensor,
                     seen: list[np.ndarray]) -> torch.Tensor:
    """Mean cross-entropy of slot logits with each row's other seen items masked out.

    Row ``r``'s softmax leaves out the items in ``seen[r]`` except its own target, so the
    user's other train items are neither negatives nor competitors (``mask_seen``).

    Args:
        logits: ``(R, I)`` full logits of the R slot rows (any float dtype; the loss is
            computed in float32).
        targets: ``(R,)`` item indices, or ``IGNORE`` (-100) for slots without a target.
        seen: ``R`` integer arrays of item indices to mask in each row (the row's user's
            train items; the row's target is kept even if listed).

    Returns:
        The scalar loss: mean over rows with a target (0 when there are none).
    """
    if logits.shape[0] != targets.shape[0] or len(seen) != targets.shape[0]:
        raise ValueError(f"masked_slot_loss: {logits.shape[0]} logit rows, "
                         f"{targets.shape[0]} targets, {len(seen)} seen lists")
    mask = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
    for r, items in enumerate(seen):
        mask[r, torch.as_tensor(items, dtype=torch.long, device=logits.device)] = True
    rows = (targets != IGNORE).nonzero().flatten()
    if not rows.numel():
        return logits.float().sum() * 0.0  # keeps the graph (every rank runs backward)
    mask[rows, targets[rows]] = False  # each row's own target stays in its softmax
    masked = logits.float().masked_fill(mask, float("-inf"))
    return torch.nn.functional.cross_entropy(masked, targets, ignore_index=IGNORE)


def eval_sample(data: Interactions, cfg: UserItemConfig, user: int) -> UserSample:
    """The fixed test-time sample of ``user``: a seeded sample of its train items."""
    train = data.user_items("train", user)
    rng = rng_for(cfg.seed, 5, user)
    pick = rng.permutation(len(train))[: cfg.history_items]
    return UserSample(user, [int(train[j]) for j in sorted(pick)])


@dataclass
class UserItemResult:
    """Outcome of stage 3.

    Attributes:
        steps: optimiser steps.
        epoch_losses: mean training loss per epoch.
        resumed_from: the resume point ``(epoch, batch)``, or ``None``.
        valid_history: per validated epoch ``{"epoch": e, metric: value}`` (early stopping).
        best_epoch: the epoch whose modules were saved (``None`` without validation: the
            last one).
        best_valid: the valid metrics of that epoch.
        stopped_early: whether ``patience`` ended training before ``epochs``.
        throughput: this attempt's training speed (:func:`~glta_align.flops.throughput_record`:
            ``train_seconds``, ``model_flops``, ``achieved_gflops``, ``timed_steps``; rank
            0's share under torchrun).
        slot_cache: the kept epoch's slot inputs ``{user: (S, D)}`` from its valid ranking
            in this process (for :attr:`GLTARecommender.slots
            <glta_align.recommender.GLTARecommender.slots>` of the same modules and LLM:
            later rankings of those users then run no LLM pass), or ``None`` (no early
            stopping, or the kept epoch ran before a resume).
    """

    steps: int
    epoch_losses: list[float]
    resumed_from: tuple[int, int] | None
    valid_history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    best_valid: dict[str, float] | None = None
    stopped_early: bool = False
    throughput: dict[str, float | int | None] = field(default_factory=dict)
    slot_cache: dict[int, torch.Tensor] | None = field(default=None, repr=False)


@torch.no_grad()
def item_text_features(llm: FrozenLLM, texts: Sequence[str], max_tokens: int,
                       batch_size: int = 64, layer: int | None = None) -> torch.Tensor:
    """The frozen LLM's reading of each item: the mean last hidden state over the item's
    description tokens (no instruction, no special tokens; an empty description reads as the
    end-of-sequence token).

    Args:
        llm: the frozen LLM (its precision; runs without gradient).
        texts: (I,) one description per item.
        max_tokens: token budget per description.
        batch_size: descriptions per forward pass (batched by length, right-padded).
        layer: read ``hidden_states[layer]`` instead of the last hidden state: 0 = the
            token embeddings, ``0 < n <`` the layer count = the n-th layer's output (before
            the final norm, which only the last hidden state has).

    Returns:
        (I, H) float32 on the LLM's device.
    """
    tok = llm.tokenizer
    fallback = tok.eos_token_id if tok.eos_token_id is not None else 0
    ids = [t or [fallback] for t in tokenize_texts(tok, list(texts), max_tokens)]
    out = torch.empty(len(ids), llm.hidden_size, device=llm.device)
    order = np.argsort([len(t) for t in ids], kind="stable")
    pad = tok.pad_token_id if tok.pad_token_id is not None else fallback
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = max(len(ids[r]) for r in rows)
        batch = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for j, r in enumerate(rows):
            batch[j, :len(ids[r])] = torch.tensor(ids[r])
            mask[j, :len(ids[r])] = 1
        mask = mask.to(llm.device)
        out_ = llm.backbone(input_ids=batch.to(llm.device), attention_mask=mask,
                            use_cache=False, output_hidden_states=layer is not None)
        hidden = (out_.last_hidden_state if layer is None else out_.hidden_states[layer]).float()
        w = mask.to(hidden.dtype)[:, :, None]
        out[torch.as_tensor(rows, device=llm.device)] = (hidden * w).sum(1) / w.sum(1)
    return out


def needs_profiles(cfg: UserItemConfig) -> bool:
    """Whether the prompt uses generated text."""
    return cfg.use_profile or cfg.use_predict


def stage2_outputs(run_dir: str | os.PathLike[str]) -> Path:
    """The folder holding the item projector and head stage 3 starts from.

    ``RUN/item_text`` (stage 2's own copy of them) when it holds them, else ``RUN`` itself
    (runs made by versions without that copy). In the latter case, if an earlier
    stage 3 already finished there (``RUN/user_projector`` exists), its trained head is all
    that is left of stage 2's: a ``UserWarning`` says so, as a rerun then continues from
    it instead of starting from stage 2's head.
    """
    run_dir = Path(run_dir)
    copy = run_dir / STAGE2_OUTPUT_DIR
    if (copy / ITEM_PROJECTOR_DIR).is_dir() or (copy / GLLM_HEAD_DIR).is_dir():
        return copy
    if (run_dir / USER_PROJECTOR_DIR).is_dir() and (run_dir / GLLM_HEAD_DIR).is_dir():
        warnings.warn(
            f"{run_dir / GLLM_HEAD_DIR} was written by an earlier stage 3 and this run has no "
            f"{STAGE2_OUTPUT_DIR}/ copy of stage 2's outputs (stage 2 ran with a version "
            "without that copy, or did not run here): stage 3 starts from what the earlier "
            "stage 3 trained, not from stage 2's. Rerun stage 2 (glta pipeline --restart) "
            "for a clean start.",
            UserWarning,
            stacklevel=3,
        )
    return run_dir


def train_user_item(
    data: Interactions,
    run_dir: str | os.PathLike[str],
    config: UserItemConfig | None = None,
    *,
    llm: FrozenLLM | None = None,
    progress: ProgressCallback | None = None,
    resume: bool = True,
    runner: SoftPromptRunner | None = None,
    stale_profiles: str = "raise",
) -> UserItemResult:
    """Run stage 3 and save ``RUN/user_projector`` and ``RUN/gllm_head`` (+ ``item_projector``
    when trained here, ``RUN/lora`` with LoRA).

    Needs ``RUN/graph``; uses ``RUN/item_projector`` and ``RUN/gllm_head`` from stage 2 when
    present (required unless ``train_item_projector``). Generates ``RUN/profiles.jsonl``
    first when the prompt uses profile or prediction text.

    Args:
        data: the prepared dataset.
        run_dir: the run directory.
        config: stage settings (defaults: :class:`UserItemConfig`).
        llm: an already loaded LLM (default: ``load_llm(config.llm, ...)``).
        progress: receives ``"profiles"`` and ``"user_item"`` ProgressEvents.
        resume: continue from ``RUN/state/user_item`` (and a partial profiles file).
        runner: the :class:`SoftPromptRunner` to run ``llm`` with, built by
            :func:`user_item_runner` for this stage's layout (default: a new one). Passing
            one lets the caller keep it: with ``prompt_order = "text-first"`` the text
            keys/values it kept then serve a later ``GLTARecommender(runner=...)``.
        stale_profiles: what to do with a ``RUN/profiles.jsonl`` made with other settings
            (``"raise"`` or ``"regenerate"``; see :func:`generate_profiles`).

    Returns:
        A :class:`UserItemResult`.

    Raises:
        ValueError: ``runner`` runs another LLM object or another prompt prefix.
    """
    from glta_gllm.checkpoint import CheckpointError

    cfg = config or UserItemConfig()
    run_dir = Path(run_dir)
    torch.manual_seed(cfg.seed)
    if llm is None:
        llm = load_llm(cfg.llm, dtype=cfg.dtype, device=cfg.device, lora=cfg.lora,
                       init=cfg.llm_init, init_seed=cfg.seed, attention=cfg.attention,
                       pointwise=cfg.pointwise)
    dev = llm.device
    user_emb, item_emb = load_graph_embeddings(run_dir, data.fingerprint)
    user_emb, item_emb = user_emb.float().to(dev), item_emb.float().to(dev)
    tok_rms = embedding_rms(llm.causal_lm.get_input_embeddings().weight)
    start = stage2_outputs(run_dir)
    ip_dir = start / ITEM_PROJECTOR_DIR
    if ip_dir.is_dir():
        item_proj = NodeProjector.from_pretrained(
            ip_dir, expected_fingerprint=data.fingerprint, in_dim=item_emb.shape[1],
            out_dim=llm.hidden_size)
    elif cfg.train_item_projector:
        rms = float(item_emb.pow(2).mean().sqrt()) or 1.0
        item_proj = NodeProjector(item_emb.shape[1], llm.hidden_size, cfg.projector,
                                  init_scale=tok_rms / rms)
    else:
        raise CheckpointError(f"{ip_dir}: missing; run stage 2 (item_text) first or set "
                              "UserItemConfig.train_item_projector = True")
    item_proj = item_proj.to(dev).requires_grad_(cfg.train_item_projector)
    head_dir = run_dir / GLLM_HEAD_DIR
    if (start / GLLM_HEAD_DIR).is_dir():
        head = load_head(start / GLLM_HEAD_DIR, expected_fingerprint=data.fingerprint,
                         hidden_size=llm.hidden_size, num_items=data.num_items)
    else:
        head = build_head(cfg, llm.hidden_size, item_emb, item_proj)
    if cfg.residual and not isinstance(head, ResidualHead):
        text_items = None
        if cfg.item_text_features:
            feats = item_text_features(llm, data.item_text, cfg.description_tokens)
            text_items = reduce_item_features(feats, cfg.item_text_dim, item_emb)
        head = ResidualHead(head, zero_correction=cfg.residual_init == "zero",
                            text_items=text_items)
    head = head.to(dev)
    rms_u = float(user_emb.pow(2).mean().sqrt()) or 1.0
    user_proj = NodeProjector(user_emb.shape[1], llm.hidden_size, cfg.projector,
                              init_scale=tok_rms / rms_u).to(dev)
    slot = slot_vector(llm).to(dev)
    modules: dict[str, torch.nn.Module] = {"head": head}
    if cfg.user_token:
        modules["user_projector"] = user_proj
    if cfg.train_item_projector:
        modules["item_projector"] = item_proj
    if llm.lora is not None:
        modules["llm"] = TrainableParameters(llm.model)  # the adapters only
    params = list({id(p): p for m in modules.values() for p in m.parameters()
                   if p.requires_grad}.values())
    if not params:
        raise ValueError("stage 3 has nothing to train (projected head with a frozen item "
                         "projector and no user token)")
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    counts = np.diff(data.train.crow_indices().numpy())
    eligible = np.flatnonzero(counts > 0)
    if not eligible.size:
        raise ValueError(f"dataset {data.name!r}: no user has a training item")

    def epoch_users(epoch: int) -> np.ndarray:
        if cfg.max_users is None or len(eligible) <= cfg.max_users:
            return eligible
        rng = rng_for(cfg.seed, 6, epoch)
        return np.sort(rng.choice(eligible, size=cfg.max_users, replace=False))

    profiles: dict[int, dict[str, str]] = {}
    if needs_profiles(cfg):
        wanted = [epoch_users(e) for e in range(cfg.epochs)]
        if cfg.patience is not None:  # every epoch ranks the valid users with their texts
            wanted.append(data.users_with("valid"))
        wanted = np.unique(np.concatenate(wanted))
        profiles = generate_profiles(data, run_dir, llm, cfg, users=wanted.tolist(),
                                     progress=progress, resume=resume, stale=stale_profiles)
    layout = user_item_layout(llm.tokenizer, cfg)
    prompter = UserPrompter(layout, data, llm.tokenizer, cfg, profiles)
    if runner is None:
        runner = user_item_runner(llm, layout, cfg)
    else:
        check_runner(runner, llm, layout)

    def make_batches(epoch: int) -> list[list[UserSample]]:
        rng = rng_for(cfg.seed, 4, epoch)
        users = epoch_users(epoch)
        samples = [train_sample(data, cfg, int(u), epoch) for u in users]
        if cfg.bucket:
            idx = bucket_batches([prompter.length(s) for s in samples], cfg.batch_size, rng)
        else:
            p = rng.permutation(len(samples))
            idx = [p[i:i + cfg.batch_size].tolist() for i in range(0, len(p), cfg.batch_size)]
        return [[samples[i] for i in b] for b in idx]

    train_items = ({int(u): data.user_items("train", int(u)) for u in eligible}
                   if cfg.mask_seen else {})
    head_dtype = next(head.parameters()).dtype
    cost = DecoderCost.of(llm)
    model_flops = [0.0]  # of the steps this process runs (loss_fn runs once per step)

    def loss_fn(batch: list[UserSample]) -> torch.Tensor:
        seqs, users, items = prompter.build(batch)
        parts = [slot[None], user_proj(user_emb[torch.tensor(users, device=dev)])]
        if items:
            parts.append(item_proj(item_emb[torch.tensor(items, device=dev)]))
        hidden = runner.hidden_states(seqs, torch.cat(parts))
        hidden = slot_inputs(head, hidden, user_emb[torch.tensor(users, device=dev)])
        flat = [t for s in batch for t in s.targets]
        model_flops[0] += step_flops(cost, head, runner.last_shape,
                                     rows=sum(t != IGNORE for t in flat), query_rows=len(flat))
        targets = torch.tensor(flat, device=dev)
        if cfg.mask_seen:
            seen = [train_items[s.user] for s in batch for _ in s.targets]
            rows = hidden.reshape(-1, hidden.shape[-1]).to(head_dtype)
            return masked_slot_loss(head(rows), targets, seen)
        return head.loss(hidden.reshape(-1, hidden.shape[-1]), targets)

    # every text the first epoch and the validation meet, batched by length
    warm = [epoch_users(0)] + ([data.users_with("valid")] if cfg.patience is not None else [])
    warm_text_heads(runner, prompter, data, cfg, np.unique(np.concatenate(warm)).tolist(),
                    progress)
    validate = None
    kept_slots: dict[int, tuple[float, dict[int, torch.Tensor]]] = {}
    if cfg.patience is not None:
        if data.valid._nnz() == 0:
            warnings.warn(f"dataset {data.name!r} has an empty valid split: stage 3 runs all "
                          f"{cfg.epochs} epochs and keeps the last (no early stopping)",
                          UserWarning, stacklevel=2)
        else:
            validate = _validator(data, llm, cfg, user_emb, item_emb, user_proj, item_proj,
                                  head, profiles, modules, progress, runner, kept_slots)

    loop: LoopResult = run_loop(
        stage="user_item", run_dir=run_dir, fingerprint=data.fingerprint, config=cfg,
        modules=modules, optimizer=optimizer, make_batches=make_batches, loss_fn=loss_fn,
        progress=progress, resume=resume, on_step=runner.reset if llm.lora else None,
        validate=validate, select=cfg.select_metric, patience=cfg.patience,
    )
    rank, _ = dist_info()
    throughput = throughput_record(model_flops[0], loop.train_seconds, loop.timed_steps)
    if rank == 0:
        save_head(head, head_dir, data.fingerprint)
        if cfg.train_item_projector:
            item_proj.save_pretrained(run_dir / ITEM_PROJECTOR_DIR,
                                      dataset_fingerprint=data.fingerprint, role="item")
        selection = {"best_epoch": loop.best_epoch, "valid_metrics": loop.best_metrics,
                     "valid_history": loop.valid_history, "stopped_early": loop.stopped_early,
                     "epochs_run": len(loop.epoch_losses), "steps": loop.steps,
                     **throughput}
        if runner.head_cache_mb > 0:
            selection["text_cache"] = runner.head_cache_stats()
        _save_user_projector(user_proj, run_dir / USER_PROJECTOR_DIR, data.fingerprint, cfg,
                             llm, selection)
        save_lora(llm, run_dir / LORA_DIR)
    emit(progress, ProgressEvent("user_item", "end", step=loop.steps, total=loop.steps,
                                 metrics={"loss": loop.epoch_losses[-1]}
                                 if loop.epoch_losses else {}))
    kept = kept_slots.get(loop.best_epoch) if loop.best_epoch is not None else None
    return UserItemResult(loop.steps, loop.epoch_losses, loop.resumed_from,
                          loop.valid_history, loop.best_epoch, loop.best_metrics,
                          loop.stopped_early, throughput, kept[1] if kept else None)


def _validator(data: Interactions, llm: FrozenLLM, cfg: UserItemConfig, user_emb: torch.Tensor,
               item_emb: torch.Tensor, user_proj: NodeProjector, item_proj: NodeProjector,
               head: torch.nn.Module, profiles: dict[int, dict[str, str]],
               modules: dict[str, torch.nn.Module], progress: ProgressCallback | None,
               runner: SoftPromptRunner,
               kept: dict[int, tuple[float, dict[int, torch.Tensor]]]):
    """``epoch -> valid metrics`` of the modules being trained (full ranking, train excluded).

    Ranks with a :class:`~glta_align.recommender.GLTARecommender` built around the very
    modules in training (no copy) and the stage's ``runner`` (so the text keys/values it
    keeps for ``prompt_order = "text-first"`` serve the ranking too; a kept row equals a
    recomputed one), then puts them back in training mode. Each epoch's slot inputs go
    into ``kept[epoch] = (select metric, {user: (S, D)})``; epochs below the best so far are
    dropped (the kept epoch, whichever tie rule picks it, stays).
    """
    from glta_align.recommender import GLTARecommender

    k = int(cfg.select_metric.partition("@")[2])
    ks = tuple(sorted({5, 10, 20, k}))

    owners = [*modules.values(), user_proj, item_proj, head]

    def validate(epoch: int) -> dict[str, float]:
        modes = [(m, m.training) for owner in owners for m in owner.modules()]
        rec = GLTARecommender(data=data, llm=llm, config=cfg, user_emb=user_emb,
                              item_emb=item_emb, user_projector=user_proj,
                              item_projector=item_proj, head=head, profiles=profiles,
                              runner=runner)
        rec.keep_slots = True
        try:
            metrics = rec.evaluate("valid", ks=ks, progress=progress)
        finally:
            for module, training in modes:
                module.training = training
        metrics = {name: float(v) for name, v in metrics.items()}
        kept[epoch] = (metrics.get(cfg.select_metric, float("-inf")), rec.slots)
        best = max(value for value, _ in kept.values())
        for e in [e for e, (value, _) in kept.items() if value < best]:
            del kept[e]
        return metrics

    return validate


def _save_user_projector(proj: NodeProjector, directory: Path, fingerprint: str,
                         cfg: UserItemConfig, llm: FrozenLLM,
                         selection: dict | None = None) -> None:
    from glta_gllm.checkpoint import save_artifact

    card = ("# user_projector\n\nGLTA user node projector and the stage-3 settings "
            "(`stage_config`) the recommender replays at inference; `best_epoch` and "
            "`valid_metrics` record the epoch early stopping on valid kept; "
            "`achieved_gflops` is the model FLOPs of the optimiser steps this attempt ran "
            "(`model_flops`, `glta_align.flops`) over their time (`train_seconds`).\n")
    save_artifact(directory, proj.state_dict(),
                  {**proj.config(), "role": "user", "llm": llm.source,
                   "llm_precision": llm.precision,
                   "llm_dtype": llm.dtype_name,
                   "llm_init_seed": cfg.seed,
                   "llm_precision_probe": getattr(llm, "precision_probe", None),
                   "llm_attention": llm.train_attention,
                   "llm_attention_probe": getattr(llm, "attention_probe", None),
                   "llm_pointwise": llm.pointwise,
                   "llm_compiled_layers": llm.compiled_layers,
                   "stage_config": cfg.to_dict(), **(selection or {})},
                  dataset_fingerprint=fingerprint, card=card)
