"""Stage 2, item-text alignment: train the item projector and the GLLM head.

An instance holds ``n`` items: their soft tokens ``V_i = proj(E_i)`` in one random order and
their descriptions in another (shuffled) order; ``n`` output slots follow the prompt (fixed
placeholder embedding), and slot ``t`` must give the item whose description is ``t``-th. The
loss is the GLLM head's fused cross-entropy over the whole catalogue at every slot. The LLM is
frozen; gradients flow through it into the soft tokens and the projector.

Each epoch partitions the catalogue into instances (seeded by ``seed`` and the epoch; the last
instance is topped up with random items), so every item is seen once per epoch.
"""

from __future__ import annotations

import math
import os
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
from glta_align.config import ItemTextConfig
from glta_align.flops import DecoderCost, step_flops, throughput_record
from glta_align.heads import build_head, save_head
from glta_align.llm import FrozenLLM, load_llm, save_lora
from glta_align.projector import NodeProjector
from glta_align.prompts import (
    ITEM_TEXT_SYSTEM,
    ITEM_TEXT_TEMPLATE,
    ITEM_TEXT_USER,
    build_layout,
    tokenize_texts,
)
from glta_align.splice import SoftPromptRunner, SoftSequence, bucket_batches

__all__ = ["ITEM_PROJECTOR_DIR", "ItemTextResult", "build_instance", "train_item_text"]

ITEM_PROJECTOR_DIR = "item_projector"
GLLM_HEAD_DIR = "gllm_head"
LORA_DIR = "lora"
# Stage 2's own copy of its item projector and head: what stage 3 starts from. Stage 3 writes
# its trained head (and, with train_item_projector, projector) over the top-level folders, so
# without this copy a rerun of stage 3 would start from an earlier stage 3's head.
STAGE2_OUTPUT_DIR = "item_text"


@dataclass
class ItemTextResult:
    """Outcome of stage 2.

    Attributes:
        steps: optimiser steps taken in total (including before a resume).
        epoch_losses: mean training loss per epoch.
        resumed_from: ``(epoch, batch)`` the run continued from, or ``None``.
        item_projector: the trained projector (CPU).
        throughput: this attempt's training speed (:func:`~glta_align.flops.throughput_record`),
            also saved in ``RUN/item_text/item_projector/config.json``.
    """

    steps: int
    epoch_losses: list[float]
    resumed_from: tuple[int, int] | None
    item_projector: NodeProjector
    throughput: dict[str, float | int | None] = field(default_factory=dict)


def slot_vector(llm: FrozenLLM) -> torch.Tensor:
    """The fixed slot placeholder: the mean token embedding of the LLM, (H,) float32."""
    return llm.causal_lm.get_input_embeddings().weight.detach().float().mean(0)


def build_instance(
    layout_pieces: tuple, items: np.ndarray, desc_order: np.ndarray, desc_ids: list[list[int]],
    sep_ids: list[int], first_row: int,
) -> tuple[SoftSequence, list[int]]:
    """One stage-2 sample after the prefix, and its slot targets.

    Args:
        layout_pieces: :attr:`PromptLayout.pieces` of the stage-2 template.
        items: (n,) catalogue indices, in soft-token order.
        desc_order: (n,) a permutation: the t-th description shown is that of
            ``items[desc_order[t]]``.
        desc_ids: token ids of every item's description (indexed by catalogue index).
        sep_ids: token ids placed between descriptions.
        first_row: soft-table row of ``items[0]``'s token (rows are consecutive); row 0
            is the slot placeholder.

    Returns:
        ``(sequence, targets)``: slot ``t``'s target is ``items[desc_order[t]]``.
    """
    seq = SoftSequence()
    n = len(items)
    for piece in layout_pieces:
        if isinstance(piece, tuple):
            seq.add_text(piece)
        elif piece == "DESCRPTION_TOKEN":
            for t, j in enumerate(desc_order):
                if t:
                    seq.add_text(sep_ids)
                seq.add_text(desc_ids[int(items[j])])
        elif piece == "ITEM_TOKEN":
            seq.add_soft(range(first_row, first_row + n))
        else:
            raise ValueError(f"stage-2 template has an unexpected placeholder {piece!r}")
    seq.add_soft([0] * n, read=True)
    return seq, [int(items[j]) for j in desc_order]


def train_item_text(
    data: Interactions,
    run_dir: str | os.PathLike[str],
    config: ItemTextConfig | None = None,
    *,
    llm: FrozenLLM | None = None,
    progress: ProgressCallback | None = None,
    resume: bool = True,
) -> ItemTextResult:
    """Run stage 2 and save ``RUN/item_projector`` and ``RUN/gllm_head`` (and ``RUN/lora``).

    Args:
        data: the prepared dataset (``item_text`` gives the descriptions).
        run_dir: a run directory holding ``RUN/graph`` (stage 1).
        config: stage settings (defaults: :class:`ItemTextConfig`).
        llm: an already loaded LLM (default: ``load_llm(config.llm, ...)``).
        progress: receives ``ProgressEvent(stage="item_text")`` events.
        resume: continue from ``RUN/state/item_text`` when present.

    Returns:
        An :class:`ItemTextResult`.

    Raises:
        FingerprintMismatchError: ``RUN/graph`` belongs to another dataset.
        ValueError: the catalogue is smaller than ``items_per_instance``.
    """
    cfg = config or ItemTextConfig()
    run_dir = Path(run_dir)
    n = cfg.items_per_instance
    if data.num_items < n:
        raise ValueError(f"ItemTextConfig.items_per_instance = {n} exceeds the catalogue of "
                         f"{data.num_items} items")
    torch.manual_seed(cfg.seed)
    if llm is None:
        llm = load_llm(cfg.llm, dtype=cfg.dtype, device=cfg.device, lora=cfg.lora,
                       init=cfg.llm_init, init_seed=cfg.seed, attention=cfg.attention,
                       pointwise=cfg.pointwise)
    dev = llm.device
    _, item_emb = load_graph_embeddings(run_dir, data.fingerprint)
    item_emb = item_emb.float().to(dev)
    layout = build_layout(llm.tokenizer, ITEM_TEXT_SYSTEM, ITEM_TEXT_USER, ITEM_TEXT_TEMPLATE,
                          style=cfg.prompt_style)
    desc_ids = tokenize_texts(llm.tokenizer, data.item_text, cfg.description_tokens)
    sep_ids = list(llm.tokenizer(cfg.description_separator, add_special_tokens=False)["input_ids"])
    tok_rms = embedding_rms(llm.causal_lm.get_input_embeddings().weight)
    in_rms = float(item_emb.pow(2).mean().sqrt()) or 1.0
    projector = NodeProjector(item_emb.shape[1], llm.hidden_size, cfg.projector,
                              init_scale=tok_rms / in_rms).to(dev)
    head = build_head(cfg, llm.hidden_size, item_emb, projector).to(dev)
    # the shuffled descriptions lead each sample: with the LLM frozen they run without
    # gradient and the item tokens and slots attend to their keys/values (text_head: the
    # same outputs and gradients up to float rounding, no backward through the text)
    runner = SoftPromptRunner(llm, layout.prefix_ids, reuse_prefix=cfg.reuse_prefix,
                              padding_side=cfg.padding_side,
                              compile=cfg.compile, text_head=True)
    slot = slot_vector(llm).to(dev)
    modules = {"projector": projector, "head": head}
    if llm.lora is not None:
        modules["llm"] = TrainableParameters(llm.model)  # the adapters only
    params = list({id(p): p for m in modules.values() for p in m.parameters()
                   if p.requires_grad}.values())
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def make_batches(epoch: int) -> list[list[tuple[SoftSequence, list[int], np.ndarray]]]:
        rng = rng_for(cfg.seed, 2, epoch)
        perm = rng.permutation(data.num_items)
        count = math.ceil(data.num_items / n)
        if len(perm) < count * n:
            extra = rng.choice(data.num_items, size=count * n - len(perm), replace=False)
            perm = np.concatenate([perm, extra])
        groups = perm.reshape(count, n)
        if cfg.max_instances is not None:
            groups = groups[: cfg.max_instances]
        samples = []
        for g in groups:
            order = rng.permutation(n)
            seq, targets = build_instance(layout.pieces, g, order, desc_ids, sep_ids, 1)
            samples.append((seq, targets, g))
        if cfg.bucket:
            idx = bucket_batches([len(s[0]) for s in samples], cfg.batch_size, rng)
        else:
            p = rng.permutation(len(samples))
            idx = [p[i:i + cfg.batch_size].tolist() for i in range(0, len(p), cfg.batch_size)]
        return [[samples[i] for i in b] for b in idx]

    cost = DecoderCost.of(llm)
    model_flops = [0.0]  # of the steps this process runs (loss_fn runs once per step)

    def loss_fn(batch: list[tuple[SoftSequence, list[int], np.ndarray]]) -> torch.Tensor:
        seqs, targets, rows = [], [], []
        for b, (seq, tgt, items) in enumerate(batch):
            shifted = SoftSequence(
                ids=seq.ids, soft=[r + b * n if r > 0 else r for r in seq.soft], read=seq.read)
            seqs.append(shifted)
            targets.extend(tgt)
            rows.append(items)
        items_t = torch.from_numpy(np.concatenate(rows)).to(dev)
        table = torch.cat([slot[None], projector(item_emb[items_t])])
        hidden = runner.hidden_states(seqs, table)
        model_flops[0] += step_flops(cost, head, runner.last_shape, rows=len(targets))
        return head.loss(hidden.reshape(-1, hidden.shape[-1]),
                         torch.tensor(targets, device=dev))

    loop: LoopResult = run_loop(
        stage="item_text", run_dir=run_dir, fingerprint=data.fingerprint, config=cfg,
        modules=modules, optimizer=optimizer, make_batches=make_batches, loss_fn=loss_fn,
        progress=progress, resume=resume, on_step=runner.reset if llm.lora else None,
    )
    rank, _ = dist_info()
    throughput = throughput_record(model_flops[0], loop.train_seconds, loop.timed_steps)
    meta = {"llm_precision": llm.precision,
            "llm_dtype": llm.dtype_name,
            "llm_precision_probe": getattr(llm, "precision_probe", None),
            "llm_attention": llm.train_attention,
            "llm_attention_probe": getattr(llm, "attention_probe", None),
            "llm_pointwise": llm.pointwise,
            "llm_compiled_layers": llm.compiled_layers,
            "steps": loop.steps, **throughput}
    if rank == 0:
        for base in (run_dir / STAGE2_OUTPUT_DIR, run_dir):  # the copy first: see its comment
            projector.save_pretrained(base / ITEM_PROJECTOR_DIR,
                                      dataset_fingerprint=data.fingerprint, role="item",
                                      metadata=meta)
            save_head(head, base / GLLM_HEAD_DIR, data.fingerprint)
        save_lora(llm, run_dir / LORA_DIR)
    emit(progress, ProgressEvent("item_text", "end", step=loop.steps, total=loop.steps,
                                 metrics={"loss": loop.epoch_losses[-1]}
                                 if loop.epoch_losses else {}))
    return ItemTextResult(loop.steps, loop.epoch_losses, loop.resumed_from, projector.cpu(),
                          throughput)
