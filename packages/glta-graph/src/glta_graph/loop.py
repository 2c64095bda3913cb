"""The resumable training loop shared by every GLTA trainer (LightGCN and both alignment stages).

One loop does the bookkeeping every trainer needs, so each trainer only says how to draw an
epoch's batches, how to compute a batch's loss and how to validate:

- epochs of batches; a batch is one optimiser step (``zero_grad``, loss, backward, the
  trainer's gradient all-reduce under ``torchrun``, ``step``);
- an atomic resume state in ``RUN/state/<stage>/`` (``state.pt`` + a readable
  ``state.json``), written at every epoch end, every ``save_every`` steps within an epoch,
  and around each validation, so a run killed anywhere (also during validation) resumes to
  the result of an uninterrupted run;
- per-epoch validation (every ``eval_every`` epochs and after the last) with patience: the
  best epoch's snapshot is kept in the state and handed back (or restored) at the end;
- progress events (the front end draws rich bars on a terminal, plain lines otherwise);
- ``torchrun`` ranks: rank 0 writes the state; with ``validate_on="main"`` rank 0 alone
  validates and sends its early-stopping count to the others.

What the state file holds is a :class:`StateFormat`'s business: :class:`ModuleStateFormat`
(module and optimiser state dicts plus the loop's counters) unless a trainer keeps a layout
of its own (the LightGCN trainer does, so that its older resume states still load).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from glta_gllm.checkpoint import (
    STATE_NAME,
    CheckpointError,
    atomic_write_json,
    load_resume_state,
    save_resume_state,
)

from glta_graph.progress import ProgressCallback, ProgressEvent, emit

__all__ = [
    "STATE_JSON",
    "LoopResult",
    "LoopState",
    "ModuleStateFormat",
    "StateFormat",
    "TrainingLoop",
    "cosine_lr_scale",
    "restore_modules",
    "snapshot_modules",
]

STATE_JSON = "state.json"
_PROGRESS = ("epoch", "run")
_VALIDATE_ON = ("all", "main")


@dataclass
class LoopState:
    """Where a training run stands: everything the loop needs to continue after a kill.

    Attributes:
        epoch: the next epoch to train (0-based).
        batch: the next batch of ``epoch`` (0 at an epoch's start).
        steps: optimiser steps taken by this rank, over all attempts.
        records: one dict per finished epoch: ``epoch``, ``loss`` (mean batch loss),
            ``seconds`` where measured, and ``valid`` (the metrics) on validated epochs.
        partial: the losses of ``epoch``'s batches before ``batch`` (so that an epoch
            resumed half-way reports the mean over all its batches).
        best_score: the best ``select`` metric so far (``None`` before any validation).
        best_epoch: the epoch it came from.
        best_metrics: that epoch's validation metrics.
        best: the trainer's snapshot of that epoch (e.g. module state dicts).
        stale: validations in a row without improvement.
        pending: the last finished epoch still has to be validated (killed before it was).
        resumed_from: ``(epoch, batch)`` this attempt resumed from, or ``None``.
    """

    epoch: int = 0
    batch: int = 0
    steps: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    partial: list[float] = field(default_factory=list)
    best_score: float | None = None
    best_epoch: int | None = None
    best_metrics: dict[str, float] | None = None
    best: Any = None
    stale: int = 0
    pending: bool = False
    resumed_from: tuple[int, int] | None = None

    @property
    def epoch_losses(self) -> list[float]:
        """The mean training loss of each finished epoch."""
        return [float(r["loss"]) for r in self.records]

    @property
    def valid_history(self) -> list[dict[str, float]]:
        """``{"epoch": e, metric: value, ...}`` for each validated epoch, in order."""
        return [{"epoch": r["epoch"], **r["valid"]} for r in self.records if "valid" in r]


@dataclass
class LoopResult:
    """What :meth:`TrainingLoop.run` returns.

    Attributes:
        steps: optimiser steps taken (over all attempts).
        epoch_losses: mean training loss of each finished epoch.
        resumed_from: ``(epoch, batch)`` the last attempt resumed from, or ``None``.
        valid_history: one ``{"epoch": e, metric: value, ...}`` per validated epoch.
        best_epoch: the epoch whose snapshot was kept (best ``select`` metric on valid), or
            ``None`` without validation.
        best_metrics: that epoch's validation metrics.
        stopped_early: whether patience ended the loop before its last epoch.
        records: the per-epoch records (see :class:`LoopState`).
        best: the best epoch's snapshot (``None`` without validation).
        train_seconds: wall time of the optimiser steps this process ran (``zero_grad``,
            loss, backward, reduce, ``step``; validation, state saves and batch building
            excluded). A resumed run counts only the steps of this attempt.
        timed_steps: the optimiser steps ``train_seconds`` covers (this attempt's).
    """

    steps: int = 0
    epoch_losses: list[float] = field(default_factory=list)
    resumed_from: tuple[int, int] | None = None
    valid_history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    best_metrics: dict[str, float] | None = None
    stopped_early: bool = False
    records: list[dict[str, Any]] = field(default_factory=list)
    best: Any = None
    train_seconds: float = 0.0
    timed_steps: int = 0


class StateFormat(Protocol):
    """How a trainer lays out its resume state (``state.pt`` and ``state.json``)."""

    def payload(self, loop: TrainingLoop) -> dict[str, Any]:
        """The ``state.pt`` entries (called on every rank; may gather across ranks)."""
        ...

    def summary(self, loop: TrainingLoop) -> dict[str, Any]:
        """The readable ``state.json`` (rank 0 only)."""
        ...

    def restore(self, loop: TrainingLoop, state: Mapping[str, Any]) -> None:
        """Load a ``state.pt`` dict into ``loop.state``, the modules and the optimiser."""
        ...


def snapshot_modules(modules: Mapping[str, torch.nn.Module]) -> dict[str, dict[str, Any]]:
    """Detached copies of the modules' state dicts, by module name."""
    return {n: {k: v.detach().clone() for k, v in m.state_dict().items()}
            for n, m in modules.items()}


def restore_modules(modules: Mapping[str, torch.nn.Module],
                    snapshot: Mapping[str, Mapping[str, Any]]) -> None:
    """Load a :func:`snapshot_modules` copy back into the modules."""
    for name, module in modules.items():
        module.load_state_dict(snapshot[name])


@dataclass
class ModuleStateFormat:
    """The default resume state: module and optimiser state dicts plus the loop's counters.

    ``state.pt`` holds ``modules``, ``optimizer``, ``epoch``/``batch`` (where to continue),
    ``steps``, ``history`` (JSON list of epoch losses), ``valid_history`` (JSON),
    ``partial`` (JSON: the losses of the current epoch's batches so far) and ``best``
    (score, epoch, module snapshot, metrics, stale count, pending flag);
    ``state.json`` the same counters without tensors.

    Args:
        modules: the trainable modules by name.
        select: the metric that picks the best epoch (named in ``state.json``).
    """

    modules: Mapping[str, torch.nn.Module]
    select: str = "ndcg@10"

    def payload(self, loop: TrainingLoop) -> dict[str, Any]:
        """``state.pt`` entries of the loop's current state."""
        s = loop.state
        return {
            "modules": {n: m.state_dict() for n, m in self.modules.items()},
            "optimizer": loop.optimizer.state_dict(),
            "epoch": s.epoch, "batch": s.batch, "steps": s.steps,
            "history": json.dumps(s.epoch_losses),
            "valid_history": json.dumps(s.valid_history),
            "partial": json.dumps(s.partial),
            "best": {"score": s.best_score, "epoch": s.best_epoch, "modules": s.best,
                     "metrics": s.best_metrics, "stale": s.stale, "pending": s.pending},
        }

    def summary(self, loop: TrainingLoop) -> dict[str, Any]:
        """``state.json``: counters, losses, validation history, best epoch."""
        s = loop.state
        return {"epoch": s.epoch, "batch": s.batch, "steps": s.steps,
                "epoch_losses": s.epoch_losses, "valid_history": s.valid_history,
                "best_epoch": s.best_epoch, "best_score": s.best_score, "select": self.select,
                "stale_epochs": s.stale}

    def restore(self, loop: TrainingLoop, state: Mapping[str, Any]) -> None:
        """Load the modules, the optimiser and the counters from a ``state.pt`` dict."""
        restore_modules(self.modules, state["modules"])
        loop.optimizer.load_state_dict(state["optimizer"])
        s = loop.state
        s.epoch, s.batch, s.steps = int(state["epoch"]), int(state["batch"]), int(state["steps"])
        s.records = [{"epoch": e, "loss": loss}
                     for e, loss in enumerate(json.loads(state["history"]))]
        by_epoch = {r["epoch"]: r for r in s.records}
        for entry in json.loads(state.get("valid_history", "[]")):
            metrics = {k: v for k, v in entry.items() if k != "epoch"}
            by_epoch[int(entry["epoch"])]["valid"] = metrics
        s.partial = [float(v) for v in json.loads(state.get("partial", "[]"))]
        best = state.get("best") or {}
        s.best_score, s.best_epoch = best.get("score"), best.get("epoch")
        s.best, s.best_metrics = best.get("modules"), best.get("metrics")
        s.stale, s.pending = int(best.get("stale", 0)), bool(best.get("pending", False))


class TrainingLoop:
    """Seeded, resumable, data-parallel epochs with validation and early stopping.

    Use: build it, :meth:`load` the resume state (when resuming), then :meth:`run`.

    Args:
        stage: progress and state name (``"graph"``, ``"item_text"``, ``"user_item"``).
        state_dir: the stage's state folder, e.g. ``RUN/state/<stage>``.
        fingerprint: the dataset fingerprint (stored, and checked on resume).
        stored_config: the settings stored in the state (JSON-ready dict).
        key: the settings that must not have changed when resuming.
        optimizer: the optimiser; a ``make_batches`` hook may replace ``loop.optimizer``
            (e.g. a fresh one after a warm-up), the loop always steps the current one.
        epochs: the number of epochs.
        make_batches: ``epoch -> this rank's batches`` (opaque to the loop). It must be
            repeatable from the saved state (seeded by the epoch, or drawn from a generator
            saved in the state), so a resumed run replays the batches an uninterrupted run
            sees. Called at each epoch's start, also by a run resumed within that epoch.
        loss_fn: ``batch -> scalar loss`` (this rank's part).
        reduce: called after ``backward`` with the loss: averages the gradients (and the
            loss) over the ranks and returns the loss as a float (default: ``float(loss)``).
        fmt: the :class:`StateFormat` of ``state.pt`` / ``state.json``.
        progress: ProgressEvent receiver (``None`` = silent).
        progress_per: ``"epoch"``: a ``start`` event per epoch, ``step`` counts within the
            epoch, an ``info`` line per validation; ``"run"``: ``step`` counts over the whole
            run (the caller emits ``start``), ``epoch`` events carry the ``select`` metric.
        rank: this process's rank under ``torchrun`` (0 otherwise).
        world: the number of ranks (1 without ``torchrun``).
        save_every: also write the state every this many steps within an epoch (``None``:
            at epoch ends only).
        on_step: called after each optimiser step (e.g. to drop a cached LoRA prefix).
        check_loss: ``(value, epoch, batch)`` after each step; raises to stop on a bad loss.
        validate: ``epoch -> valid metrics`` (must hold ``select``); ``None`` = never
            validate, the last epoch is what training leaves.
        snapshot: ``() -> the trainer's copy of the current epoch``, taken when validation
            improves (default: ``None``).
        restore: loads the best snapshot back at the end (``None``: leave the last epoch's
            modules; the snapshot is in the result).
        select: the metric that picks the best epoch (higher is better).
        patience: stop after this many validations in a row without improvement (``None``:
            run every epoch, still keeping the best).
        eval_every: validate after every this many epochs (and after the last).
        validate_on: ``"all"``: every rank validates (a collective evaluation); ``"main"``:
            rank 0 alone, whose patience count the other ranks receive.
        defaults: settings assumed for a state written before they existed.
        what: the trainer's name in error messages.
        lr_scale: ``progress -> multiplier`` of every parameter group's learning rate, where
            progress = ``(epoch + batch / batches) / epochs`` in ``[0, 1)`` is taken before
            each step (``None``: the optimiser's rates are left alone). The base rates are
            the optimiser's at construction, so a resumed run steps with the same rates as an
            uninterrupted one.
    """

    def __init__(
        self,
        *,
        stage: str,
        state_dir: Path,
        fingerprint: str,
        stored_config: Mapping[str, Any],
        key: Mapping[str, Any],
        optimizer: torch.optim.Optimizer,
        epochs: int,
        make_batches: Callable[[int], Sequence[Any]],
        loss_fn: Callable[[Any], torch.Tensor],
        fmt: StateFormat,
        reduce: Callable[[torch.Tensor], float] | None = None,
        progress: ProgressCallback | None = None,
        progress_per: str = "epoch",
        rank: int = 0,
        world: int = 1,
        save_every: int | None = None,
        on_step: Callable[[], None] | None = None,
        check_loss: Callable[[float, int, int], None] | None = None,
        validate: Callable[[int], Mapping[str, float]] | None = None,
        snapshot: Callable[[], Any] | None = None,
        restore: Callable[[Any], None] | None = None,
        select: str = "ndcg@10",
        patience: int | None = None,
        eval_every: int = 1,
        validate_on: str = "all",
        defaults: Mapping[str, Any] | None = None,
        what: str | None = None,
        lr_scale: Callable[[float], float] | None = None,
    ) -> None:
        if progress_per not in _PROGRESS:
            raise ValueError(f"progress_per {progress_per!r} is not one of {_PROGRESS}")
        if validate_on not in _VALIDATE_ON:
            raise ValueError(f"validate_on {validate_on!r} is not one of {_VALIDATE_ON}")
        if eval_every < 1 or (save_every is not None and save_every < 1):
            raise ValueError(f"eval_every ({eval_every}) and save_every ({save_every}) "
                             "must be >= 1")
        self.stage, self.state_dir = stage, Path(state_dir)
        self.fingerprint, self.stored_config, self.key = fingerprint, stored_config, key
        self.optimizer, self.epochs = optimizer, int(epochs)
        self.make_batches, self.loss_fn, self.fmt = make_batches, loss_fn, fmt
        self.reduce = reduce or (lambda loss: float(loss.detach()))
        self.progress, self.progress_per = progress, progress_per
        self.rank, self.world, self.save_every = rank, world, save_every
        self.on_step, self.check_loss = on_step, check_loss
        self.validate, self.snapshot, self.restore = validate, snapshot, restore
        self.select, self.patience, self.eval_every = select, patience, eval_every
        self.validate_on, self.defaults, self.what = validate_on, defaults, what or stage
        self.lr_scale = lr_scale
        self._base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.state = LoopState()
        self.train_seconds = 0.0  # this attempt's optimiser steps only (see LoopResult)
        self.timed_steps = 0

    # -- the resume state ---------------------------------------------------------------

    def load(self) -> bool:
        """Continue from ``state_dir`` when it holds a state; return whether it did.

        Raises:
            CheckpointError: the state cannot be read, or lacks an entry this version needs
                (written by another version of the trainer).
            FingerprintMismatchError: the state was made for another dataset.
            ValueError: a setting in ``key`` changed since the state was written.
        """
        state = load_resume_state(self.state_dir, fingerprint=self.fingerprint, key=self.key,
                                  what=self.what, defaults=self.defaults)
        if state is None:
            return False
        try:
            self.fmt.restore(self, state)
        except (KeyError, TypeError, IndexError) as exc:
            raise CheckpointError(
                f"{self.state_dir / STATE_NAME}: cannot resume {self.what}: the state lacks "
                f"or garbles {exc} (another version wrote it); delete it or pass resume=False"
            ) from exc
        self.state.resumed_from = (self.state.epoch, self.state.batch)
        return True

    def save(self) -> None:
        """Write the state atomically (``state.pt``, then ``state.json``) on rank 0."""
        payload = self.fmt.payload(self)  # every rank: a format may gather across ranks
        if self.rank != 0:
            return
        save_resume_state(self.state_dir, {
            "fingerprint": self.fingerprint, "config": json.dumps(dict(self.stored_config)),
            **payload})
        atomic_write_json(self.state_dir / STATE_JSON, self.fmt.summary(self))

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> LoopResult:
        """Train the remaining epochs; return what happened over all attempts.

        A run killed after an epoch's end but before its validation first validates that
        epoch. With validation, the best epoch's snapshot is restored (``restore``) before
        returning; every rank waits for the others at the end.
        """
        s = self.state
        if s.pending and s.batch == 0 and s.epoch > 0:
            self._validate(s.epoch - 1)  # killed between an epoch's end and its validation
        stopped_early = False
        for epoch in range(s.epoch, self.epochs):
            if self._patience_spent():
                stopped_early = True
                break
            self._train_epoch(epoch)
        if self._patience_spent() and len(s.records) < self.epochs:
            stopped_early = True
        if self.restore is not None and s.best is not None:
            self.restore(s.best)
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()
        return LoopResult(
            steps=s.steps, epoch_losses=s.epoch_losses, resumed_from=s.resumed_from,
            valid_history=s.valid_history, best_epoch=s.best_epoch,
            best_metrics=dict(s.best_metrics) if s.best_metrics is not None else None,
            stopped_early=stopped_early, records=s.records, best=s.best,
            train_seconds=self.train_seconds, timed_steps=self.timed_steps)

    def _train_epoch(self, epoch: int) -> None:
        """One epoch: its batches from ``state.batch`` on, the epoch-end state, validation."""
        s = self.state
        t0 = time.perf_counter()
        batches = self.make_batches(epoch)
        n, first = len(batches), s.batch
        if self.progress_per == "epoch":
            self._emit("start", step=first, total=n, epoch=epoch,
                       message=f"{self.stage} epoch {epoch + 1}/{self.epochs}")
        losses = s.partial if first else []
        for j in range(first, n):
            if self.lr_scale is not None:
                self._set_lr((epoch + j / n) / self.epochs)
            value = self._step(batches[j])
            if self.check_loss is not None:
                self.check_loss(value, epoch, j)
            losses.append(value)
            self._emit("step", **self._count(epoch, j + 1, n), epoch=epoch,
                       metrics={"loss": value})
            if self.save_every and s.steps % self.save_every == 0 and j + 1 < n:
                s.batch, s.partial = j + 1, losses
                self.save()
        record: dict[str, Any] = {"epoch": epoch, "loss": _mean(losses)}
        s.records.append(record)
        s.epoch, s.batch, s.partial = epoch + 1, 0, []
        validating = self.validate is not None and (
            (epoch + 1) % self.eval_every == 0 or epoch == self.epochs - 1)
        record["seconds"] = time.perf_counter() - t0
        s.pending = validating
        self.save()
        if self.progress_per == "epoch":
            self._emit("epoch", step=n, total=n, epoch=epoch, metrics={"loss": record["loss"]})
        if validating:
            self._validate(epoch)
        elif self.validate_on == "main" and self.world > 1:
            self._share_patience()
        if self.progress_per == "run":
            shown = {"loss": record["loss"]}
            if "valid" in record:
                shown[self.select] = record["valid"][self.select]
            self._emit("epoch", **self._count(epoch, n, n), epoch=epoch, metrics=shown)

    def _set_lr(self, progress: float) -> None:
        """Every parameter group's rate = its base rate x ``lr_scale(progress)``."""
        groups = self.optimizer.param_groups
        if len(groups) != len(self._base_lrs):
            raise ValueError(f"{self.what}: the optimiser has {len(groups)} parameter groups, "
                             f"{len(self._base_lrs)} when the loop was built (lr_scale needs "
                             "the same groups)")
        scale = float(self.lr_scale(progress))  # type: ignore[misc]
        for group, base in zip(groups, self._base_lrs, strict=True):
            group["lr"] = base * scale

    def _step(self, batch: Any) -> float:
        """One optimiser step on ``batch``; the (rank-averaged) loss. Its wall time adds to
        ``train_seconds`` (on CUDA the update is asynchronous: it lands in the next step's
        time, which syncs on the loss, so only the last step's update goes uncounted)."""
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(batch)
        loss.backward()
        value = self.reduce(loss)
        self.optimizer.step()
        self.train_seconds += time.perf_counter() - t0
        self.timed_steps += 1
        self.state.steps += 1
        if self.on_step is not None:
            self.on_step()
        return value

    def _validate(self, epoch: int) -> None:
        """Validate ``epoch`` (on the ranks that do), keep it if best, write the state."""
        s = self.state
        record = s.records[-1]  # the epoch validated is always the last one finished
        if self.validate_on == "all" or self.rank == 0:
            t0 = time.perf_counter()
            metrics = dict(self.validate(epoch))
            if self.select not in metrics:
                raise KeyError(f"{self.stage}: validation returned no {self.select!r} "
                               f"(got {', '.join(sorted(metrics))})")
            record["valid"] = metrics
            if "seconds" in record:  # validation time counts in the epoch's, after "valid"
                record["seconds"] = record.pop("seconds") + time.perf_counter() - t0
            score = metrics[self.select]
            if s.best_score is None or score > s.best_score:
                s.best_score, s.best_epoch, s.best_metrics, s.stale = score, epoch, metrics, 0
                s.best = self.snapshot() if self.snapshot is not None else None
            else:
                s.stale += 1
            if self.progress_per == "epoch":
                self._emit("info", step=epoch + 1, total=self.epochs, epoch=epoch,
                           metrics={f"valid_{self.select}": score,
                                    f"best_{self.select}": s.best_score},
                           message=f"{self.stage} epoch {epoch + 1}: valid {self.select} "
                                   f"{score:.4f} (best {s.best_score:.4f} at epoch "
                                   f"{s.best_epoch + 1})")
        if self.validate_on == "main" and self.world > 1:
            self._share_patience()
        s.pending = False
        self.save()

    def _share_patience(self) -> None:
        """Rank 0's count of validations without improvement, on every rank."""
        import torch.distributed as dist

        box = [self.state.stale]
        dist.broadcast_object_list(box, src=0)
        self.state.stale = box[0]

    def _patience_spent(self) -> bool:
        return (self.validate is not None and self.patience is not None
                and self.state.stale >= self.patience)

    def _count(self, epoch: int, step: int, n: int) -> dict[str, int]:
        """``step``/``total`` of a progress event: within the epoch, or over the run."""
        if self.progress_per == "run":
            return {"step": epoch * n + step, "total": self.epochs * n}
        return {"step": step, "total": n}

    def _emit(self, kind: str, **fields: Any) -> None:
        emit(self.progress, ProgressEvent(self.stage, kind, **fields))


def cosine_lr_scale(progress: float) -> float:
    """Cosine decay for :class:`TrainingLoop`'s ``lr_scale``: 1 at the start, 0 at the end.

    Args:
        progress: the fraction of the run done, in ``[0, 1]``.

    Returns:
        ``(1 + cos(pi * progress)) / 2``.
    """
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress {progress!r} is outside [0, 1]")
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else math.nan
