"""Tests of the rich progress renderer."""

from __future__ import annotations

import io

from glta_graph.progress import ProgressEvent
from rich.console import Console

from glta_cli.progress import RichProgress, format_metrics


def test_format_metrics_puts_loss_first():
    assert format_metrics({"recall@20": 0.1, "loss": 0.51234}) == "loss 0.5123  recall@20 0.1000"
    assert format_metrics({"n": 3}) == "n 3"


def test_renderer_tracks_tasks_history_and_messages():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    with RichProgress(console) as bar:
        bar(ProgressEvent("graph", "start", step=0, total=6, message="LightGCN"))
        for step in range(1, 4):
            bar(ProgressEvent("graph", "step", step=step, total=6, epoch=0,
                              metrics={"loss": 1.0 / step}))
        bar(ProgressEvent("graph", "epoch", step=3, total=6, epoch=0,
                          metrics={"loss": 0.6, "recall@20": 0.1}))
        for step in range(4, 7):
            bar(ProgressEvent("graph", "step", step=step, total=6, epoch=1,
                              metrics={"loss": 0.3}))
        bar(ProgressEvent("graph", "epoch", step=6, total=6, epoch=1,
                          metrics={"loss": 0.3, "recall@20": 0.2}))
        bar(ProgressEvent("graph", "info", message="saved graph/"))
        bar(ProgressEvent("graph", "end", step=6, total=6))
        bar(ProgressEvent("item_text", "start", total=None, message="stage 2"))
        bar(ProgressEvent("item_text", "step", step=2, metrics={"loss": 5.0}))
    hist = bar.history["graph"]
    assert [e["recall@20"] for e in hist.epochs] == [0.1, 0.2]
    assert hist.steps[0] == (1, 1.0) and hist.steps[-1] == (6, 0.3)
    task = next(t for t in bar.progress.tasks if t.id == bar.tasks["graph"])
    assert task.completed == 6 and task.finished
    assert "recall@20 0.2000" in task.fields["metrics"]
    assert bar.messages == ["graph: saved graph/"]
    assert bar.history["item_text"].steps == [(2, 5.0)]
    assert "saved graph/" in buf.getvalue()


def test_start_of_a_new_task_continues_global_steps():
    bar = RichProgress(Console(file=io.StringIO()), disable=True)
    bar(ProgressEvent("user_item", "start", total=2))
    bar(ProgressEvent("user_item", "step", step=2, total=2, metrics={"loss": 2.0}))
    bar(ProgressEvent("user_item", "start", total=2))
    bar(ProgressEvent("user_item", "step", step=1, total=2, metrics={"loss": 1.0}))
    assert bar.history["user_item"].steps == [(2, 2.0), (3, 1.0)]
    assert bar.history["user_item"].to_dict()["steps"] == [[2, 2.0], [3, 1.0]]


def test_info_messages_are_not_read_as_markup():
    buf = io.StringIO()
    with RichProgress(Console(file=buf, width=200)) as bar:
        bar(ProgressEvent("graph", "info", message="[graph] epochs: 4 -> 5"))
    assert "[graph] epochs: 4 -> 5" in buf.getvalue()
