"""Shared machinery of the stage trainers: seeding, torchrun/DDP, resumable state, loop."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from glta_gllm.checkpoint import atomic_write_json, load_resume_state, save_resume_state
from glta_graph.progress import ProgressCallback, ProgressEvent, emit
from torch import nn

STATE_JSON = "state.json"
# config fields that may change between a killed run and its resumption
RESUMABLE_CHANGES = frozenset({"epochs", "save_every", "device", "eval_batch_size", "patience"})


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    """A numpy Generator determined by ``seed`` and integer keys (epoch, user, ...)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, keys)]))


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)``; initialises the process group under torchrun when needed.

    Backend: nccl when CUDA is available, gloo otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def barrier(world: int) -> None:
    """Synchronise all ranks (no-op in one process)."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def average_gradients(params: Sequence[nn.Parameter], world: int) -> None:
    """All-reduce and average the gradients of ``params`` over ranks (data-parallel step).

    One all-reduce of one flat buffer per step, after the backward (a parameter without a
    gradient counts as zeros). :func:`~glta_align._ddp.ddp_loss` (DistributedDataParallel)
    does the same reduction and is preferred over this. Measured on stage 3
    (``benchmarks/align/ddp_vs_flat.py``, figures in ``benchmarks/RESULTS.md``), both
    all-reduce the same bytes in one all-reduce per step (the trainable parameters fit in
    one DDP bucket, so DDP has nothing to overlap with the backward), give bit-identical
    parameters, and take the same step time within the measurement's noise: the standard
    mechanism wins on equal terms. Unlike DDP, this path tolerates a trainable parameter
    the loss did not reach.
    """
    if world <= 1:
        return
    import torch.distributed as dist

    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(world)
    start = 0
    for g in grads:
        g.copy_(flat[start : start + g.numel()].view_as(g))
        start += g.numel()


def average_scalar(value: float, world: int) -> float:
    """Mean of a float over ranks."""
    if world <= 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / world


def embedding_rms(llm_embed_weight: torch.Tensor) -> float:
    """Root-mean-square of the LLM's token-embedding entries (the scale of a real token)."""
    return float(llm_embed_weight.float().pow(2).mean().sqrt())


@dataclass
class LoopResult:
    """What a stage loop did.

    Attributes:
        steps: optimiser steps taken (over all attempts).
        epoch_losses: mean training loss of each finished epoch.
        resumed_from: ``(epoch, batch)`` the last attempt resumed from, or ``None``.
        valid_history: one ``{"epoch": e, metric: value, ...}`` per validated epoch.
        best_epoch: the epoch whose modules were kept (best ``select`` metric on valid), or
            ``None`` without validation.
        best_metrics: that epoch's validation metrics.
        stopped_early: whether ``patience`` ended the loop before ``config.epochs``.
    """

    steps: int = 0
    epoch_losses: list[float] = field(default_factory=list)
    resumed_from: tuple[int, int] | None = None
    valid_history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    best_metrics: dict[str, float] | None = None
    stopped_early: bool = False


def run_loop(
    *,
    stage: str,
    run_dir: Path,
    fingerprint: str,
    config: Any,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    make_batches: Callable[[int], list[Any]],
    loss_fn: Callable[[Any], torch.Tensor],
    progress: ProgressCallback | None,
    resume: bool,
    on_step: Callable[[], None] | None = None,
    validate: Callable[[int], Mapping[str, float]] | None = None,
    select: str = "ndcg@10",
    patience: int | None = None,
) -> LoopResult:
    """Seeded, resumable, data-parallel training loop shared by both stages.

    Each epoch's batches come from ``make_batches(epoch)`` (deterministic in the seed and the
    epoch), so a resumed run replays exactly the batches an uninterrupted run would see.
    Under torchrun each rank takes every ``world``-th batch and gradients are averaged.
    Every ``config.save_every`` steps and at each epoch end the module and optimiser states
    are written atomically to ``RUN/state/<stage>/state.pt`` (rank 0).

    With ``validate``, every epoch ends with ``validate(epoch)`` (metrics on the valid split);
    the modules of the epoch with the highest ``select`` metric are kept in the state file,
    training stops once ``patience`` epochs in a row brought no improvement, and the best
    epoch's modules are loaded back before returning (early stopping on valid, as the
    LightGCN trainer does). The validation results are part of the resumable state: a run
    killed at any point resumes to the same best epoch and the same modules.

    Args:
        stage: progress / state name (``"item_text"`` or ``"user_item"``).
        run_dir: the run directory.
        fingerprint: the dataset fingerprint (checked on resume).
        config: the stage config (``to_dict``, ``epochs``, ``save_every``).
        modules: trainable modules by name (their state is saved and restored).
        optimizer: over the modules' trainable parameters.
        make_batches: epoch -> list of batches (opaque to the loop).
        loss_fn: batch -> scalar loss (this rank's part).
        progress: ProgressEvent receiver.
        resume: continue from the saved state when present.
        on_step: called after each optimiser step (e.g. to drop a cached LoRA prefix).
        validate: epoch -> valid metrics (must hold ``select``); ``None`` = no validation,
            the last epoch's modules are kept.
        select: the metric that picks the best epoch (higher is better).
        patience: stop after this many epochs without improvement (``None``: run all epochs,
            still keeping the best one).

    Returns:
        A :class:`LoopResult`.
    """
    rank, world = dist_info()
    state_dir = run_dir / "state" / stage
    key = {k: v for k, v in config.to_dict().items() if k not in RESUMABLE_CHANGES}
    start_epoch, start_batch, result = 0, 0, LoopResult()
    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    best: dict[str, Any] = {"score": None, "epoch": None, "modules": None, "metrics": None,
                            "stale": 0, "pending": False}
    if resume:
        state = load_resume_state(state_dir, fingerprint=fingerprint, key=key, what=stage)
        if state is not None:
            for name, module in modules.items():
                module.load_state_dict(state["modules"][name])
            optimizer.load_state_dict(state["optimizer"])
            start_epoch, start_batch = int(state["epoch"]), int(state["batch"])
            result.steps = int(state["steps"])
            result.epoch_losses = list(json.loads(state["history"]))
            result.resumed_from = (start_epoch, start_batch)
            result.valid_history = list(json.loads(state.get("valid_history", "[]")))
            best.update(state.get("best") or {})

    def snapshot() -> dict[str, Any]:
        return {n: {k: v.detach().clone() for k, v in m.state_dict().items()}
                for n, m in modules.items()}

    def save(epoch: int, batch: int) -> None:
        if rank != 0:
            return
        payload = {
            "modules": {n: m.state_dict() for n, m in modules.items()},
            "optimizer": optimizer.state_dict(),
            "epoch": epoch, "batch": batch, "steps": result.steps,
            "history": json.dumps(result.epoch_losses), "config": json.dumps(config.to_dict()),
            "fingerprint": fingerprint, "valid_history": json.dumps(result.valid_history),
            "best": best,
        }
        save_resume_state(state_dir, payload)
        atomic_write_json(state_dir / STATE_JSON, {
            "epoch": epoch, "batch": batch, "steps": result.steps,
            "epoch_losses": result.epoch_losses, "valid_history": result.valid_history,
            "best_epoch": best["epoch"], "best_score": best["score"], "select": select,
            "stale_epochs": best["stale"]})

    def run_validation(epoch: int) -> None:
        assert validate is not None
        metrics = {k: float(v) for k, v in validate(epoch).items()}
        if select not in metrics:
            raise KeyError(f"{stage}: validation returned no {select!r} "
                           f"(got {', '.join(sorted(metrics))})")
        result.valid_history.append({"epoch": epoch, **metrics})
        score = metrics[select]
        if best["score"] is None or score > best["score"]:
            best.update(score=score, epoch=epoch, modules=snapshot(), metrics=metrics, stale=0)
        else:
            best["stale"] += 1
        best["pending"] = False
        emit(progress, ProgressEvent(
            stage, "info", step=epoch + 1, total=config.epochs, epoch=epoch,
            metrics={f"valid_{select}": score, f"best_{select}": best["score"]},
            message=f"{stage} epoch {epoch + 1}: valid {select} {score:.4f} (best "
                    f"{best['score']:.4f} at epoch {best['epoch'] + 1})"))
        save(epoch + 1, 0)

    def patience_spent() -> bool:
        return patience is not None and best["stale"] >= patience

    if validate is not None and best["pending"] and start_batch == 0 and start_epoch > 0:
        run_validation(start_epoch - 1)  # killed between an epoch's end and its validation
    for epoch in range(start_epoch, config.epochs):
        if validate is not None and patience_spent():
            result.stopped_early = True
            break
        batches = make_batches(epoch)
        usable = len(batches) // world * world if world > 1 else len(batches)
        mine = list(range(rank, usable, world))
        first = start_batch if epoch == start_epoch else 0
        emit(progress, ProgressEvent(stage, "start", step=first, total=len(mine), epoch=epoch,
                                     message=f"{stage} epoch {epoch + 1}/{config.epochs}"))
        losses: list[float] = []
        for j in range(first, len(mine)):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(batches[mine[j]])
            loss.backward()
            average_gradients(params, world)
            optimizer.step()
            result.steps += 1
            if on_step is not None:
                on_step()
            value = average_scalar(float(loss.detach()), world)
            losses.append(value)
            emit(progress, ProgressEvent(stage, "step", step=j + 1, total=len(mine),
                                         epoch=epoch, metrics={"loss": value}))
            if result.steps % config.save_every == 0 and j + 1 < len(mine):
                save(epoch, j + 1)
        mean = float(np.mean(losses)) if losses else float("nan")
        result.epoch_losses.append(mean)
        best["pending"] = validate is not None
        save(epoch + 1, 0)
        emit(progress, ProgressEvent(stage, "epoch", step=len(mine), total=len(mine),
                                     epoch=epoch, metrics={"loss": mean}))
        if validate is not None:
            run_validation(epoch)
    if validate is not None and patience_spent() and len(result.epoch_losses) < config.epochs:
        result.stopped_early = True
    if validate is not None and best["modules"] is not None:
        for name, module in modules.items():
            module.load_state_dict(best["modules"][name])
        result.best_epoch, result.best_metrics = int(best["epoch"]), dict(best["metrics"])
    barrier(world)
    return result
