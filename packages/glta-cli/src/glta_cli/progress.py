"""Render the libraries' :class:`glta_graph.progress.ProgressEvent` stream with rich.

Libraries never print; they call a callback with events. :class:`RichProgress` is that
callback for the command line: one progress bar per task (description, M/N, the latest
loss / metric values, elapsed time and ETA), and it records what it saw (per-epoch metrics
and per-step losses of each stage) so the front end can draw training curves afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from glta_graph.progress import ProgressEvent
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

__all__ = ["RichProgress", "StageHistory", "format_metrics"]

_MAX_STEP_POINTS = 2000
_PRIORITY = ["loss", "recall@20", "ndcg@20", "precision@10", "ndcg@10", "recall@10", "accuracy"]


def format_metrics(metrics: dict[str, Any], limit: int = 4) -> str:
    """Format up to ``limit`` metrics as ``"loss 0.4123  recall@20 0.1021"``.

    ``loss`` first, then the headline ranking metrics; floats with 4 decimals, integers
    as they are.
    """
    keys = sorted(metrics, key=lambda k: (_PRIORITY.index(k) if k in _PRIORITY else 99, k))
    keys = keys[:limit]
    parts = []
    for key in keys:
        value = metrics[key]
        if isinstance(value, float):
            parts.append(f"{key} {value:.4g}" if abs(value) >= 1e4 else f"{key} {value:.4f}")
        else:
            parts.append(f"{key} {value}")
    return "  ".join(parts)


@dataclass
class StageHistory:
    """What one stage reported.

    Attributes:
        epochs: one dict per ``"epoch"`` event: ``{"epoch": e, **metrics}``.
        steps: ``(global step, loss)`` pairs from ``"step"`` events carrying a ``loss``
            (thinned to at most 2000 points).
    """

    epochs: list[dict[str, float]] = field(default_factory=list)
    steps: list[tuple[int, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"epochs": self.epochs, "steps": [list(p) for p in self.steps]}


class RichProgress:
    """A ``ProgressCallback`` drawing rich progress bars; use as a context manager.

    Example:
        >>> with RichProgress() as bar:
        ...     train_lightgcn(data, config, run_dir, progress=bar)

    Args:
        console: where to draw (default: a stderr console, so stdout stays clean for JSON
            and tables).
        disable: record events but draw nothing (``--quiet``).
    """

    def __init__(self, console: Console | None = None, *, disable: bool = False) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold blue]{task.description}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("{task.fields[metrics]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            disable=disable,
        )
        self.tasks: dict[str, TaskID] = {}
        self.metrics: dict[str, dict[str, Any]] = {}
        self.history: dict[str, StageHistory] = {}
        self._step_offset: dict[str, int] = {}
        self._last_step: dict[str, int] = {}
        self.messages: list[str] = []

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _task(self, event: ProgressEvent) -> TaskID:
        if event.stage not in self.tasks:
            self.tasks[event.stage] = self.progress.add_task(
                event.message or event.stage, total=event.total, metrics=""
            )
            self.metrics[event.stage] = {}
        return self.tasks[event.stage]

    def _describe(self, event: ProgressEvent) -> str:
        text = event.message or event.stage
        if event.epoch is not None:
            text = f"{text} (epoch {event.epoch + 1})"
        return text

    def __call__(self, event: ProgressEvent) -> None:
        """Handle one event (``start``, ``step``, ``epoch``, ``end`` or ``info``)."""
        stage = event.stage
        history = self.history.setdefault(stage, StageHistory())
        if event.kind == "info":
            self.messages.append(f"{stage}: {event.message}")
            self.progress.console.print(
                Text.assemble((f"{stage}: ", "dim"), event.message), soft_wrap=True
            )
            return
        task = self._task(event)
        shown = self.metrics.setdefault(stage, {})
        shown.update(event.metrics)
        if event.kind == "start":
            # A new task within the stage (e.g. the next epoch): keep counting global steps.
            self._step_offset[stage] = self._step_offset.get(stage, 0) + self._last_step.get(
                stage, 0
            )
            self._last_step[stage] = 0
            self.progress.reset(
                task,
                total=event.total,
                completed=event.step,
                description=self._describe(event),
                metrics=format_metrics(shown),
            )
            return
        if event.kind == "step":
            self._last_step[stage] = event.step
            if "loss" in event.metrics:
                point = (self._step_offset.get(stage, 0) + event.step, float(event.metrics["loss"]))
                history.steps.append(point)
                if len(history.steps) > _MAX_STEP_POINTS:
                    history.steps = history.steps[::2]
        elif event.kind == "epoch":
            record: dict[str, float] = {}
            if event.epoch is not None:
                record["epoch"] = event.epoch
            record.update({k: float(v) for k, v in event.metrics.items()})
            history.epochs.append(record)
        update: dict[str, Any] = {"metrics": format_metrics(shown)}
        if event.total is not None:
            update["total"] = event.total
        if event.kind == "end":
            total = event.total or self.progress.tasks[self._index(task)].total or event.step
            update["total"] = total
            update["completed"] = total
        elif event.kind == "step":
            update["completed"] = event.step
            update["description"] = self._describe(event)
        self.progress.update(task, **update)

    def _index(self, task: TaskID) -> int:
        for i, t in enumerate(self.progress.tasks):
            if t.id == task:
                return i
        raise KeyError(task)
