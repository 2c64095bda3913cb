"""The shared resumable training loop (glta_graph.loop) on a small linear model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from glta_gllm.checkpoint import CheckpointError, FingerprintMismatchError

from glta_graph.loop import (
    ModuleStateFormat,
    TrainingLoop,
    cosine_lr_scale,
    restore_modules,
    snapshot_modules,
)

EPOCHS = 6
SCORES = [0.1, 0.3, 0.2, 0.25, 0.9, 0.95]  # epoch 4 would be best, patience 2 stops before


class _Killed(RuntimeError):
    """Stands for a SIGKILL: the loop stops where it is, nothing is cleaned up."""


def _run(state_dir, *, patience=2, kill_step=None, kill_valid=None, resume=True,
         seen=None, calls=None, key=None, fingerprint="fp", save_every=2, lr_scale=None,
         lrs=None):
    """Train ``Linear(3, 1)`` on seeded batches (4 per epoch); validation returns SCORES.

    ``kill_step``: ``(epoch, batch)`` at whose ``step`` event the run dies;
    ``kill_valid``: the epoch whose validation dies.
    """
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    modules = {"m": model}
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(1))
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])

    def make_batches(epoch):
        order = torch.randperm(16, generator=torch.Generator().manual_seed(epoch))
        return [order[i:i + 4] for i in range(0, 16, 4)]

    def validate(epoch):
        if calls is not None:
            calls.append(epoch)
        if epoch == kill_valid:
            raise _Killed
        if seen is not None:
            seen[epoch] = snapshot_modules(modules)["m"]
        return {"ndcg@10": SCORES[epoch], "recall@20": 0.0}

    def loss_fn(b):
        if lrs is not None:
            lrs.append(opt.param_groups[0]["lr"])
        return ((model(x[b]) - y[b]) ** 2).mean()

    def progress(event):
        if kill_step is not None and event.kind == "step" and (
                event.epoch, event.step) == kill_step:
            raise _Killed

    loop = TrainingLoop(
        stage="t", state_dir=state_dir, fingerprint=fingerprint,
        stored_config={"lr": 0.05, "epochs": EPOCHS}, key=key or {"lr": 0.05},
        optimizer=opt, epochs=EPOCHS, make_batches=make_batches,
        loss_fn=loss_fn, fmt=ModuleStateFormat(modules),
        progress=progress, save_every=save_every, validate=validate,
        snapshot=lambda: snapshot_modules(modules),
        restore=lambda best: restore_modules(modules, best), patience=patience,
        lr_scale=lr_scale,
    )
    if resume:
        loop.load()
    return loop.run(), model, opt


def _same(a, b):
    """Whether two results trained to the same place (modules, optimiser, bookkeeping)."""
    (ra, ma, oa), (rb, mb, ob) = a, b
    assert ra.steps == rb.steps and ra.best_epoch == rb.best_epoch
    assert ra.epoch_losses == pytest.approx(rb.epoch_losses, rel=1e-6)
    assert ra.valid_history == rb.valid_history and ra.stopped_early == rb.stopped_early
    for k, v in ma.state_dict().items():
        torch.testing.assert_close(mb.state_dict()[k], v)
    sa, sb = oa.state_dict()["state"], ob.state_dict()["state"]
    for i in sa:
        torch.testing.assert_close(sb[i]["exp_avg"], sa[i]["exp_avg"])


@pytest.mark.parametrize("kill_step", [(0, 3), (2, 1), (3, 4)])
def test_killed_at_a_batch_resumes_to_the_uninterrupted_result(tmp_path, kill_step):
    straight = _run(tmp_path / "a", patience=None)
    with pytest.raises(_Killed):
        _run(tmp_path / "b", patience=None, kill_step=kill_step)
    saved = json.loads((tmp_path / "b" / "state.json").read_text())
    assert (saved["epoch"], saved["batch"]) < (kill_step[0], kill_step[1] + 1)
    resumed = _run(tmp_path / "b", patience=None)
    assert resumed[0].resumed_from == (saved["epoch"], saved["batch"])
    _same(straight, resumed)


def test_cosine_lr_scale():
    assert cosine_lr_scale(0.0) == 1.0 and cosine_lr_scale(1.0) == pytest.approx(0.0)
    assert cosine_lr_scale(0.5) == pytest.approx(0.5)
    assert cosine_lr_scale(0.25) == pytest.approx((1 + 2 ** -0.5) / 2)
    with pytest.raises(ValueError, match="outside"):
        cosine_lr_scale(1.5)


def test_lr_scale_sets_every_steps_rate_and_resumes_with_the_same_rates(tmp_path):
    plain: list[float] = []
    _run(tmp_path / "plain", patience=None, lrs=plain)
    assert plain == [0.05] * EPOCHS * 4  # no lr_scale: the optimiser's rate throughout
    lrs: list[float] = []
    straight = _run(tmp_path / "a", patience=None, lr_scale=cosine_lr_scale, lrs=lrs)
    expected = [0.05 * cosine_lr_scale((e + j / 4) / EPOCHS)
                for e in range(EPOCHS) for j in range(4)]
    assert lrs == pytest.approx(expected)
    with pytest.raises(_Killed):
        _run(tmp_path / "b", patience=None, kill_step=(2, 3), lr_scale=cosine_lr_scale)
    saved = json.loads((tmp_path / "b" / "state.json").read_text())
    later: list[float] = []
    resumed = _run(tmp_path / "b", patience=None, lr_scale=cosine_lr_scale, lrs=later)
    first = saved["epoch"] * 4 + saved["batch"]
    assert first > 0 and later == pytest.approx(expected[first:])
    _same(straight, resumed)


@pytest.mark.parametrize("kill_valid", [0, 2, 3])
def test_killed_during_validation_resumes_without_retraining(tmp_path, kill_valid):
    straight = _run(tmp_path / "a")
    with pytest.raises(_Killed):
        _run(tmp_path / "b", kill_valid=kill_valid)
    calls = []
    resumed = _run(tmp_path / "b", calls=calls)
    assert calls[0] == kill_valid  # the pending validation first
    assert resumed[0].resumed_from == (kill_valid + 1, 0)  # the epoch itself is not retrained
    _same(straight, resumed)


def test_patience_stops_and_restores_the_best_epoch(tmp_path):
    seen, calls = {}, []
    result, model, _ = _run(tmp_path, seen=seen, calls=calls)
    assert calls == [0, 1, 2, 3] and result.stopped_early
    assert result.best_epoch == 1 and result.best_metrics["ndcg@10"] == 0.3
    assert len(result.epoch_losses) == 4
    for k, v in model.state_dict().items():
        assert torch.equal(v, seen[1][k])
    assert not torch.equal(seen[3]["weight"], seen[1]["weight"])
    summary = json.loads((tmp_path / "state.json").read_text())
    assert summary["best_epoch"] == 1 and summary["stale_epochs"] == 2


def test_without_patience_every_epoch_runs_and_the_best_is_kept(tmp_path):
    seen, calls = {}, []
    result, model, _ = _run(tmp_path, patience=None, seen=seen, calls=calls)
    assert calls == list(range(EPOCHS)) and not result.stopped_early
    assert result.best_epoch == 5
    assert torch.equal(model.weight, seen[5]["weight"])


def test_a_corrupt_state_is_refused_with_one_line(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "state.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError) as info:
        _run(tmp_path)
    message = str(info.value)
    assert "\n" not in message and "state.pt" in message and "resume=False" in message


def test_a_state_of_other_settings_or_data_is_refused_with_one_line(tmp_path):
    _run(tmp_path, kill_step=None, patience=1)
    with pytest.raises(ValueError) as info:
        _run(tmp_path, key={"lr": 0.1})
    assert "\n" not in str(info.value) and "lr was 0.05 and is now 0.1" in str(info.value)
    with pytest.raises(FingerprintMismatchError, match="fingerprint fp"):
        _run(tmp_path, fingerprint="other")


def test_a_state_missing_an_entry_is_refused_with_one_line(tmp_path):
    _run(tmp_path, patience=1)
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    del state["optimizer"]  # as a state written by another version might
    torch.save(state, tmp_path / "state.pt")
    with pytest.raises(CheckpointError) as info:
        _run(tmp_path)
    message = str(info.value)
    assert "\n" not in message and "'optimizer'" in message and "another version" in message


def test_run_progress_counts_steps_over_the_run_and_validates_every_n(tmp_path):
    events, calls = [], []
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.ones(6, 2)

    def validate(epoch):
        calls.append(epoch)
        return {"recall@20": float(epoch)}

    loop = TrainingLoop(
        stage="g", state_dir=tmp_path, fingerprint="fp", stored_config={}, key={},
        optimizer=opt, epochs=5, make_batches=lambda e: [0, 1, 2],
        loss_fn=lambda b: model(x[b:b + 1]).pow(2).sum(), fmt=ModuleStateFormat({"m": model}),
        progress=events.append, progress_per="run", validate=validate, select="recall@20",
        eval_every=2,
    )
    result = loop.run()
    assert calls == [1, 3, 4]  # every 2nd epoch and the last
    steps = [e.step for e in events if e.kind == "step"]
    assert steps == list(range(1, 16)) and {e.total for e in events} == {15}
    epochs = [e for e in events if e.kind == "epoch"]
    assert [("recall@20" in e.metrics) for e in epochs] == [False, True, False, True, True]
    assert not any(e.kind in ("start", "info") for e in events)
    assert result.best_epoch == 4 and len(result.records) == 5


def _train_module():
    spec = importlib.util.spec_from_file_location(
        "_test_train", Path(__file__).resolve().parent / "test_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kill_at", [1, 3])
def test_lightgcn_killed_during_validation_resumes_to_the_same_run(tmp_path, monkeypatch,
                                                                     kill_at):
    import glta_graph.train as train

    tt = _train_module()
    data = tt.clustered_dataset()
    cfg = train.LightGCNConfig(epochs=6, **{**tt.FAST, "eval_every": 1}, patience=2)
    straight = train.train_lightgcn(data, cfg, tmp_path / "a")
    real, calls = train.evaluate_embeddings, []

    def dying(*args, **kwargs):
        calls.append(len(calls))
        if len(calls) == kill_at + 1:
            raise _Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "evaluate_embeddings", dying)
    with pytest.raises(_Killed):
        train.train_lightgcn(data, cfg, tmp_path / "b")
    saved = json.loads((tmp_path / "b" / "state" / "graph" / "state.json").read_text())
    assert saved["epoch"] == kill_at  # the epoch is trained and saved, its validation due
    monkeypatch.setattr(train, "evaluate_embeddings", real)
    resumed = train.train_lightgcn(data, cfg, tmp_path / "b")
    assert resumed.best_epoch == straight.best_epoch
    assert resumed.stopped_early == straight.stopped_early
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    assert [h.get("valid") for h in resumed.history] == [h.get("valid") for h in straight.history]
    for a, b in zip(train.load_graph_embeddings(tmp_path / "a"),
                    train.load_graph_embeddings(tmp_path / "b"), strict=True):
        assert torch.equal(a, b)


def test_states_written_before_the_shared_loop_still_resume(tmp_path):
    """States without the entries the shared loop added (``pending``, ``partial``) load."""
    import glta_graph.train as train

    tt = _train_module()
    data = tt.clustered_dataset()
    cfg = {**tt.FAST, "eval_every": 1}
    train.train_lightgcn(data, train.LightGCNConfig(epochs=2, **cfg), tmp_path / "g")
    path = tmp_path / "g" / "state" / "graph" / "state.pt"
    state = torch.load(path, weights_only=True)
    del state["pending"]
    torch.save(state, path)
    resumed = train.train_lightgcn(data, train.LightGCNConfig(epochs=4, **cfg), tmp_path / "g")
    straight = train.train_lightgcn(data, train.LightGCNConfig(epochs=4, **cfg), tmp_path / "s")
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    assert torch.equal(train.load_graph_embeddings(tmp_path / "g")[0],
                       train.load_graph_embeddings(tmp_path / "s")[0])

    with pytest.raises(_Killed):
        _run(tmp_path / "m", patience=None, kill_step=(2, 1))
    path = tmp_path / "m" / "state.pt"
    state = torch.load(path, weights_only=True)
    del state["partial"]
    torch.save(state, path)
    _same(_run(tmp_path / "m2", patience=None), _run(tmp_path / "m", patience=None))


def test_step_time_covers_this_attempts_steps_only(tmp_path):
    """``train_seconds`` / ``timed_steps``: the optimiser steps this attempt ran, no more."""
    with pytest.raises(_Killed):
        _run(tmp_path / "s", kill_step=(2, 1))
    resumed, _, _ = _run(tmp_path / "s")
    whole, _, _ = _run(tmp_path / "w", resume=False)
    assert whole.timed_steps == whole.steps and whole.train_seconds > 0
    assert 0 < resumed.timed_steps < resumed.steps == whole.steps
    assert resumed.train_seconds > 0
