"""Shared machinery of the stage trainers: seeding, torchrun/DDP, the stages' training loop.

The loop itself is glta-graph's :class:`glta_graph.loop.TrainingLoop` (the LightGCN trainer
runs on it too); :func:`run_loop` gives it the stages' settings.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from glta_graph.loop import (
    LoopResult,
    ModuleStateFormat,
    TrainingLoop,
    cosine_lr_scale,
    restore_modules,
    snapshot_modules,
)
from glta_graph.progress import ProgressCallback
from torch import nn

from glta_align._ddp import ddp_loss
from glta_align.config import ADDED_SETTINGS

__all__ = ["LoopResult", "TrainableParameters", "average_gradients", "average_scalar", "barrier",
           "dist_info", "embedding_rms", "rng_for", "run_loop"]

# config fields that may change between a killed run and its resumption
# "attention" and "pointwise" are execution settings (the same math by other kernels).
RESUMABLE_CHANGES = frozenset({"epochs", "save_every", "device", "eval_batch_size", "patience",
                               "attention", "pointwise"})


class TrainableParameters(nn.Module):
    """The trainable parameters of a mostly frozen model (e.g. the LLM's LoRA adapters).

    A stage's resumable state and its best-epoch snapshot hold each module's ``state_dict``;
    for the LLM that would be every frozen weight too (270 MB for SmolLM2-135M in bf16,
    written every ``save_every`` steps and once more for the best epoch), although the frozen
    weights are reloaded from the LLM's own file. This view holds the *same* parameter
    objects (training it trains the model) and its state dict has only them, under the
    model's own names. ``load_state_dict`` also takes a whole-model state dict (a state
    written before this view existed) and reads only the trainable entries from it.

    Args:
        model: the module whose parameters with ``requires_grad`` are viewed.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = nn.ParameterList([p for _, p in named])

    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "",
                   keep_vars: bool = False) -> dict[str, torch.Tensor]:
        """``{model parameter name: tensor}`` of the trainable parameters only."""
        out = {} if destination is None else destination
        for name, p in zip(self.names, self.params, strict=True):
            out[prefix + name] = p if keep_vars else p.detach()
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,
                        assign: bool = False) -> Any:
        """Copy the trainable entries of ``state_dict`` in place (other keys are ignored).

        Raises:
            KeyError: a trainable parameter is missing from ``state_dict`` (names the first).
        """
        missing = [n for n in self.names if n not in state_dict]
        if missing:
            raise KeyError(f"state has no entry for trainable parameter {missing[0]!r} "
                           f"({len(missing)} of {len(self.names)} missing)")
        with torch.no_grad():
            for name, p in zip(self.names, self.params, strict=True):
                p.copy_(state_dict[name])
        return nn.modules.module._IncompatibleKeys([], [])


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    """A numpy Generator determined by ``seed`` and integer keys (epoch, user, ...)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, keys)]))


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)``; initialises the process group under torchrun when needed.

    Backend: nccl when CUDA is available, gloo otherwise. A group started here is destroyed
    at interpreter exit (gloo's threads abort the process if left to the interpreter's
    teardown).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        atexit.register(_leave_group)
    return dist.get_rank(), dist.get_world_size()


def _leave_group() -> None:
    """Destroy the default process group if it is still up (registered by :func:`dist_info`)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


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
    """A stage's training: :class:`glta_graph.loop.TrainingLoop` with the stages' settings.

    Each epoch's batches come from ``make_batches(epoch)`` (deterministic in the seed and the
    epoch), so a resumed run replays exactly the batches an uninterrupted run would see.
    Under torchrun each rank takes every ``world``-th batch and gradients are averaged by
    DistributedDataParallel (:func:`~glta_align._ddp.ddp_loss`).
    Every ``config.save_every`` steps and at each epoch end the module and optimiser states
    are written atomically to ``RUN/state/<stage>/state.pt`` (rank 0).

    With ``validate``, every epoch ends with ``validate(epoch)`` (metrics on the valid split,
    on every rank); the modules of the epoch with the highest ``select`` metric are kept in
    the state file, training stops once ``patience`` epochs in a row brought no improvement,
    and the best epoch's modules are loaded back before returning (early stopping on valid,
    as the LightGCN trainer does). The validation results are part of the resumable state:
    a run killed at any point resumes to the same best epoch and the same modules.

    Args:
        stage: progress / state name (``"item_text"`` or ``"user_item"``).
        run_dir: the run directory.
        fingerprint: the dataset fingerprint (checked on resume).
        config: the stage config (``to_dict``, ``epochs``, ``save_every``; optional
            ``lr_schedule``: ``"cosine"`` decays the optimiser's rates to 0 over ``epochs``).
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
        A :class:`~glta_graph.loop.LoopResult`.
    """
    rank, world = dist_info()

    def reduce(loss: torch.Tensor) -> float:  # the gradients were averaged by DDP's backward
        return average_scalar(float(loss.detach()), world)

    def valid_floats(epoch: int) -> dict[str, float]:
        return {k: float(v) for k, v in validate(epoch).items()}  # type: ignore[misc]

    config_dict = config.to_dict()
    loop = TrainingLoop(
        stage=stage, state_dir=run_dir / "state" / stage, fingerprint=fingerprint,
        stored_config=config_dict,
        key={k: v for k, v in config_dict.items() if k not in RESUMABLE_CHANGES},
        optimizer=optimizer, epochs=config.epochs, loss_fn=loss_fn,
        make_batches=lambda epoch: _rank_share(make_batches(epoch), rank, world),
        fmt=ModuleStateFormat(modules, select), reduce=reduce, progress=progress,
        rank=rank, world=world, save_every=config.save_every, on_step=on_step,
        validate=valid_floats if validate is not None else None,
        snapshot=lambda: snapshot_modules(modules),
        restore=(lambda best: restore_modules(modules, best)) if validate is not None else None,
        select=select, patience=patience, defaults=ADDED_SETTINGS,  # older states resume
        lr_scale=cosine_lr_scale if getattr(config, "lr_schedule", None) == "cosine" else None,
    )
    if resume:
        loop.load()
    # after the resume load: DDP's construction broadcasts rank 0's trainable state
    loop.loss_fn = ddp_loss(modules, loss_fn, world)
    return loop.run()


def _rank_share(batches: list[Any], rank: int, world: int) -> list[Any]:
    """Rank ``rank``'s batches: every ``world``-th, from the same number on every rank."""
    usable = len(batches) // world * world if world > 1 else len(batches)
    return [batches[i] for i in range(rank, usable, world)]
