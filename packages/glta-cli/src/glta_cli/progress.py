"""Render the libraries' :class:`glta_graph.progress.ProgressEvent` stream with rich.

Libraries never print; they call a callback with events. :class:`RichProgress` is that
callback for the command line: one progress bar per task (description, M/N, the latest
loss / metric values, elapsed time and ETA), and it records what it saw (per-epoch metrics
and per-step losses of each stage) so the front end can draw training curves afterwards.

When its console is not a terminal (output to a file, a pipe, a CI log, ``nohup``), bars
cannot draw; it prints plain lines instead (:class:`PlainLines`): one when a stage starts,
one per epoch, one at least every ``interval`` seconds within a long epoch, and one at the
end, each with the stage, epoch and step of the total, the latest loss/metrics, the time
elapsed in the stage and an estimate of the time left.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
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

__all__ = ["PlainLines", "RichProgress", "StageHistory", "format_duration", "format_metrics"]

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


def format_duration(seconds: float | None) -> str:
    """``h:mm:ss`` (or ``m:ss`` under an hour); ``"?"`` for ``None``."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


_EPOCH_OF = re.compile(r"epoch (\d+)/(\d+)")


@dataclass
class _StageClock:
    """Timing state of one stage for :class:`PlainLines`."""

    started: float
    description: str = ""
    task_started: float = 0.0
    task_first_step: int = 0
    last_line: float = 0.0
    epoch: int | None = None
    epochs: int | None = None
    epoch_seconds: list[float] = field(default_factory=list)


class PlainLines:
    """Progress as plain text lines (for logs), fed the same events as :class:`RichProgress`.

    Args:
        write: receives each line (no trailing newline).
        interval: the most seconds between two lines of a running stage (a line is written
            at the first step event after it has passed).
        clock: time source (seconds); tests pass a fake one.

    A line reads ``"[user_item] epoch 3/8  step 40/118  loss 5.1234  elapsed 2:31  eta
    11:02"``: the epoch of the total where the events say it (the task message ``"... epoch
    e/E"``, or LightGCN's global step count), the step of the current task's total, up to four
    metrics, the stage's elapsed time and the estimated time left (the current task's step
    rate; for per-epoch tasks plus the remaining epochs at the mean epoch time so far).
    """

    def __init__(self, write: Callable[[str], None], *, interval: float = 15.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.write = write
        self.interval = float(interval)
        self.clock = clock
        self.stages: dict[str, _StageClock] = {}
        self.metrics: dict[str, dict[str, Any]] = {}

    def __call__(self, event: ProgressEvent) -> None:
        """Handle one event; writes zero or one line."""
        now = self.clock()
        if event.kind == "info":
            self.write(f"[{event.stage}] {event.message}")
            return
        st = self.stages.get(event.stage)
        first = st is None
        if st is None:
            st = self.stages[event.stage] = _StageClock(started=now)
        shown = self.metrics.setdefault(event.stage, {})
        shown.update(event.metrics)
        if event.epoch is not None:
            st.epoch = event.epoch
        if event.kind == "start":
            if event.message:
                st.description = event.message
                m = _EPOCH_OF.search(event.message)
                if m:
                    st.epochs = int(m.group(2))
            st.task_started, st.task_first_step = now, event.step
            if first:
                self._line(event, st, now)
            return
        if event.kind == "epoch":
            st.epoch_seconds.append(now - st.task_started)
            if st.epochs is None and event.total and event.epoch is not None and event.step:
                per_epoch = event.step / (event.epoch + 1)
                if per_epoch == int(per_epoch) and per_epoch > 0:
                    st.epochs = round(event.total / per_epoch)
            self._line(event, st, now)
        elif event.kind == "end":
            self._line(event, st, now, done=True)
        elif event.kind == "step" and now - st.last_line >= self.interval:
            self._line(event, st, now)

    def _eta(self, event: ProgressEvent, st: _StageClock, now: float) -> float | None:
        if not event.total:
            return None
        done = event.step - st.task_first_step
        left = 0.0
        if done > 0:
            left = (now - st.task_started) / done * max(event.total - event.step, 0)
        elif event.step < event.total:
            return None
        if st.epochs is not None and st.epoch is not None and st.description and \
                _EPOCH_OF.search(st.description):
            later = st.epochs - st.epoch - 1
            if later > 0:
                per = (sum(st.epoch_seconds) / len(st.epoch_seconds) if st.epoch_seconds
                       else (now - st.task_started) / max(done, 1) * event.total)
                left += later * per
        return left

    def _line(self, event: ProgressEvent, st: _StageClock, now: float, *,
              done: bool = False) -> None:
        st.last_line = now
        starting = event.kind == "start" and bool(st.description)
        parts: list[str] = [st.description] if starting else []
        if st.epoch is not None and not done and not (
                starting and _EPOCH_OF.search(st.description)):
            parts.append(f"epoch {st.epoch + 1}" + (f"/{st.epochs}" if st.epochs else ""))
        if event.total:
            parts.append(f"step {event.step}/{event.total}")
        elif event.step:
            parts.append(f"step {event.step}")
        metrics = format_metrics(self.metrics.get(event.stage, {}))
        if metrics:
            parts.append(metrics)
        parts.append(f"elapsed {format_duration(now - st.started)}")
        if done:
            parts.append("done" + (f" ({event.message})" if event.message else ""))
        else:
            parts.append(f"eta {format_duration(self._eta(event, st, now))}")
        self.write(f"[{event.stage}] {'  '.join(parts)}")


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
        plain: write :class:`PlainLines` instead of bars; ``None`` (default): when the
            console is not a terminal.
        interval: the most seconds between two plain lines of a running stage.
    """

    def __init__(self, console: Console | None = None, *, disable: bool = False,
                 plain: bool | None = None, interval: float = 15.0) -> None:
        self.console = console or Console(stderr=True)
        if plain is None:
            plain = not self.console.is_terminal
        self.plain: PlainLines | None = None
        if plain and not disable:
            self.plain = PlainLines(self._print_plain, interval=interval)
        draw_disabled = disable or self.plain is not None
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
            disable=draw_disabled,
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

    def _print_plain(self, line: str) -> None:
        self.console.print(Text(line), soft_wrap=True, highlight=False)

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
        if self.plain is not None:
            self.plain(event)
        if event.kind == "info":
            self.messages.append(f"{stage}: {event.message}")
            if self.plain is not None:
                return
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
