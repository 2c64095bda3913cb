"""Plain progress lines for logs (output that is not a terminal)."""

from __future__ import annotations

import io

from glta_graph.progress import ProgressEvent
from rich.console import Console

from glta_cli.app import app
from glta_cli.progress import PlainLines, RichProgress, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_format_duration():
    assert format_duration(5) == "0:05" and format_duration(125.4) == "2:05"
    assert format_duration(3725) == "1:02:05" and format_duration(None) == "?"


def test_lines_per_epoch_and_every_interval_with_eta():
    lines: list[str] = []
    clock = FakeClock()
    plain = PlainLines(lines.append, interval=15.0, clock=clock)
    for epoch in range(2):
        plain(ProgressEvent("user_item", "start", total=100, epoch=epoch,
                            message=f"user_item epoch {epoch + 1}/4"))
        for step in range(1, 101):
            clock.t += 1.0  # 1 s per step: 100 s per epoch
            plain(ProgressEvent("user_item", "step", step=step, total=100, epoch=epoch,
                                metrics={"loss": 2.0 - step / 100}))
        plain(ProgressEvent("user_item", "epoch", step=100, total=100, epoch=epoch,
                            metrics={"loss": 1.5}))
    plain(ProgressEvent("user_item", "end", step=100, total=100, message="best epoch 2"))
    assert lines[0].startswith("[user_item] user_item epoch 1/4  step 0/100")
    epoch_lines = [ln for ln in lines if "loss 1.5000" in ln and "done" not in ln]
    assert len(epoch_lines) == 2
    # a line at least every 15 s of a running stage: 100 s epochs -> 6 step lines each
    step_lines = [ln for ln in lines if "step 100/100" not in ln and "step 0/" not in ln]
    assert len(step_lines) == 12
    mid = next(ln for ln in lines if "epoch 1/4  step 15/100" in ln)
    # 85 steps left at 1 s/step + 3 later epochs of ~100 s
    assert "elapsed 0:15" in mid and "eta 6:25" in mid
    after_first = epoch_lines[0]
    assert "elapsed 1:40" in after_first and "eta 5:00" in after_first
    assert lines[-1].endswith("done (best epoch 2)") and "elapsed 3:20" in lines[-1]


def test_graph_epochs_from_global_steps():
    lines: list[str] = []
    clock = FakeClock()
    plain = PlainLines(lines.append, clock=clock)
    plain(ProgressEvent("graph", "start", total=40, epoch=0, message="LightGCN"))
    for epoch in range(2):
        clock.t += 10
        plain(ProgressEvent("graph", "epoch", step=(epoch + 1) * 4, total=40, epoch=epoch,
                            metrics={"loss": 0.5, "recall@20": 0.1}))
    assert lines[-1].startswith("[graph] epoch 2/10  step 8/40  loss 0.5000  recall@20 0.1000")
    assert lines[-1].endswith("elapsed 0:20  eta 1:20")


def test_renderer_writes_plain_lines_when_not_a_terminal():
    buf = io.StringIO()
    with RichProgress(Console(file=buf, width=80)) as bar:
        bar(ProgressEvent("graph", "start", total=4, epoch=0, message="LightGCN"))
        bar(ProgressEvent("graph", "epoch", step=2, total=4, epoch=0, metrics={"loss": 0.7}))
        bar(ProgressEvent("graph", "info", message="saved graph/"))
    text = buf.getvalue()
    assert "[graph] epoch 1/2  step 2/4  loss 0.7000" in text
    assert "[graph] saved graph/" in text and "\x1b[" not in text
    assert bar.history["graph"].epochs == [{"epoch": 0, "loss": 0.7}]
    quiet = io.StringIO()
    with RichProgress(Console(file=quiet), disable=True) as bar:
        bar(ProgressEvent("graph", "epoch", step=2, total=4, epoch=0, metrics={"loss": 0.7}))
    assert quiet.getvalue() == ""


def test_cli_run_to_a_log_prints_per_epoch_lines(runner, prepared, tmp_path):
    result = runner.invoke(app, ["graph", "train", str(prepared), "--out", str(tmp_path / "r"),
                                 "--epochs", "3", "--eval-every", "1", "--dim", "8",
                                 "--layers", "1", "--batch-size", "64", "--seed", "1"])
    assert result.exit_code == 0, result.output
    out = result.output
    for epoch in (1, 2, 3):
        assert f"[graph] epoch {epoch}/3" in out, out
    assert "loss " in out and "eta " in out and "done" in out
