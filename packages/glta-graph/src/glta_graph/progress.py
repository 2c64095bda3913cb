"""Progress events: libraries emit them, only front ends (glta-cli) draw them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["ProgressCallback", "ProgressEvent", "emit"]


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report from a long-running library function.

    Attributes:
        stage: what is running, e.g. ``"graph"``, ``"item_text"``, ``"user_item"``,
            ``"profiles"``, ``"evaluate"``.
        kind: ``"start"`` (a task of ``total`` steps begins), ``"step"`` (``step`` of
            ``total`` steps done), ``"epoch"`` (an epoch ended; ``metrics`` has its results),
            ``"end"`` (the task finished), or ``"info"`` (a message only).
        step: steps done so far within the task.
        total: steps in the task, or ``None`` when unknown.
        epoch: the current epoch (0-based) where it applies.
        metrics: named numbers to show, e.g. ``{"loss": 0.41, "recall@20": 0.12}``.
        message: a short human-readable description of the task.
    """

    stage: str
    kind: str
    step: int = 0
    total: int | None = None
    epoch: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""


ProgressCallback = Callable[[ProgressEvent], None]


def emit(callback: ProgressCallback | None, event: ProgressEvent) -> None:
    """Send ``event`` to ``callback`` when there is one (a no-op for ``None``)."""
    if callback is not None:
        callback(event)
