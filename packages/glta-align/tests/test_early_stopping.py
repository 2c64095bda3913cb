"""Early stopping on valid in the shared stage loop and in stage 3."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import pytest
import torch
from glta_gllm.checkpoint import load_artifact

from glta_align._common import run_loop
from glta_align.config import AlignConfigError, ItemTextConfig, UserItemConfig
from glta_align.item_text import train_item_text
from glta_align.user_item import train_user_item


@dataclass
class _Cfg:
    epochs: int = 6
    save_every: int = 2
    seed: int = 0

    def to_dict(self):
        return asdict(self)


class _Killed(RuntimeError):
    pass


@dataclass
class _CfgWithSchedule(_Cfg):
    lr_schedule: str = "constant"


def _loop(run_dir, scores, patience, *, kill_at=None, resume=True, seen=None, cfg=None,
          lrs=None):
    """A linear model trained on fixed data; ``validate`` returns ``scores[epoch]``."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 3, generator=torch.Generator().manual_seed(1)), torch.ones(8, 1)
    calls = []

    def validate(epoch):
        calls.append(epoch)
        if kill_at is not None and epoch == kill_at:
            raise _Killed
        if seen is not None:
            seen[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
        return {"ndcg@10": scores[epoch], "precision@10": 0.0}

    def loss_fn(b):
        if lrs is not None:
            lrs.append(opt.param_groups[0]["lr"])
        return ((model(x[b]) - y[b]) ** 2).mean()

    res = run_loop(stage="t", run_dir=run_dir, fingerprint="fp", config=cfg or _Cfg(),
                   modules={"m": model}, optimizer=opt,
                   make_batches=lambda e: [[0, 1, 2, 3], [4, 5, 6, 7]], loss_fn=loss_fn,
                   progress=None, resume=resume, validate=validate, patience=patience)
    return res, model, calls


def test_loop_keeps_the_best_valid_epoch_and_stops_after_patience(tmp_path):
    seen = {}
    res, model, calls = _loop(tmp_path, [0.1, 0.3, 0.2, 0.25, 0.9, 0.9], patience=2, seen=seen)
    assert calls == [0, 1, 2, 3]  # epoch 4 (which would have been best) never runs
    assert res.best_epoch == 1 and res.stopped_early
    assert res.best_metrics["ndcg@10"] == 0.3 and len(res.epoch_losses) == 4
    assert [h["epoch"] for h in res.valid_history] == [0, 1, 2, 3]
    for key, value in model.state_dict().items():
        assert torch.equal(value, seen[1][key])  # the modules of epoch 1, not of epoch 3
    assert not torch.equal(seen[3]["weight"], seen[1]["weight"])
    state = json.loads((tmp_path / "state" / "t" / "state.json").read_text())
    assert state["best_epoch"] == 1 and state["stale_epochs"] == 2


def test_loop_without_patience_runs_every_epoch_and_keeps_the_best(tmp_path):
    res, _, calls = _loop(tmp_path, [0.1, 0.5, 0.2, 0.25, 0.3, 0.4], patience=None)
    assert calls == list(range(6)) and res.best_epoch == 1 and not res.stopped_early


@pytest.mark.parametrize("kill_at", [1, 2, 3])
def test_loop_killed_during_validation_resumes_to_the_same_result(tmp_path, kill_at):
    scores = [0.1, 0.3, 0.2, 0.25, 0.9, 0.9]
    straight, m1, _ = _loop(tmp_path / "a", scores, patience=2)
    with pytest.raises(_Killed):
        _loop(tmp_path / "b", scores, patience=2, kill_at=kill_at)
    resumed, m2, calls = _loop(tmp_path / "b", scores, patience=2)
    assert calls[0] == kill_at  # the pending validation runs first, nothing is retrained
    assert resumed.best_epoch == straight.best_epoch and resumed.stopped_early
    assert resumed.epoch_losses == straight.epoch_losses
    assert resumed.valid_history == straight.valid_history
    for key, value in m1.state_dict().items():
        assert torch.equal(m2.state_dict()[key], value)


def test_cosine_schedule_sets_each_steps_rate(tmp_path):
    from glta_graph.loop import cosine_lr_scale

    lrs: list[float] = []
    _loop(tmp_path / "c", [0.1] * 6, patience=None, cfg=_CfgWithSchedule(lr_schedule="cosine"),
          lrs=lrs)
    assert lrs == pytest.approx([0.1 * cosine_lr_scale((e + j / 2) / 6)
                                 for e in range(6) for j in range(2)])
    constant: list[float] = []
    _loop(tmp_path / "k", [0.1] * 6, patience=None, cfg=_CfgWithSchedule(), lrs=constant)
    assert constant == [0.1] * 12


def test_a_state_from_before_lr_schedule_resumes_as_constant_only(tmp_path):
    scores = [0.1, 0.3, 0.2, 0.25, 0.9, 0.9]
    with pytest.raises(_Killed):  # _Cfg stores no lr_schedule: an older state
        _loop(tmp_path / "old", scores, patience=None, kill_at=2)
    with pytest.raises(ValueError, match="lr_schedule was 'constant' and is now 'cosine'"):
        _loop(tmp_path / "old", scores, patience=None,
              cfg=_CfgWithSchedule(lr_schedule="cosine"))
    resumed, _, calls = _loop(tmp_path / "old", scores, patience=None, cfg=_CfgWithSchedule())
    assert calls[0] == 2 and len(resumed.epoch_losses) == 6


@dataclass
class _CfgLater(_Cfg):
    attention: str = "sdpa"
    mask_seen: bool = False


def test_attention_may_change_on_resume_and_older_states_read_the_added_settings(tmp_path):
    scores = [0.1, 0.3, 0.2, 0.25, 0.9, 0.9]
    with pytest.raises(_Killed):  # _Cfg stores neither setting: a state from before them
        _loop(tmp_path / "s", scores, patience=None, kill_at=2)
    with pytest.raises(ValueError, match="mask_seen was False and is now True"):
        _loop(tmp_path / "s", scores, patience=None, cfg=_CfgLater(mask_seen=True))
    resumed, _, calls = _loop(tmp_path / "s", scores, patience=None,
                              cfg=_CfgLater(attention="eager"))  # execution setting
    assert calls[0] == 2 and len(resumed.epoch_losses) == 6


def test_user_item_config_checks_patience_and_metric():
    with pytest.raises(AlignConfigError, match="patience"):
        UserItemConfig(patience=0)
    with pytest.raises(AlignConfigError, match="select_metric"):
        UserItemConfig(select_metric="auc")
    with pytest.raises(AlignConfigError, match="llm_init"):
        UserItemConfig(llm_init="scratch")
    with pytest.raises(AlignConfigError, match="lr_schedule"):
        ItemTextConfig(lr_schedule="linear")
    assert UserItemConfig(patience=2, select_metric="recall@20").patience == 2


def test_stage3_early_stopping_saves_the_best_epoch(toy_run, toy, tiny):
    train_item_text(toy, toy_run, ItemTextConfig(epochs=1, items_per_instance=3), llm=tiny)
    cfg = UserItemConfig(epochs=3, batch_size=4, num_slots=3, use_profile=False,
                         use_predict=False, lr=5e-2, patience=1, select_metric="ndcg@5")
    res = train_user_item(toy, toy_run, cfg, llm=tiny)
    assert res.best_epoch is not None and res.valid_history
    scores = [h["ndcg@5"] for h in res.valid_history]
    assert res.best_epoch == scores.index(max(scores))
    assert res.best_valid["ndcg@5"] == max(scores)
    _, config, _ = load_artifact(toy_run / "user_projector")
    assert config["best_epoch"] == res.best_epoch
    assert config["valid_metrics"]["ndcg@5"] == pytest.approx(max(scores))
    assert config["epochs_run"] == len(res.epoch_losses)
    # the saved model is the best epoch's: ranking it on valid gives the recorded metrics
    from glta_align.recommender import GLTARecommender

    rec = GLTARecommender.from_run(toy_run, llm=tiny)
    again = rec.evaluate("valid", ks=(5, 10, 20))
    assert again["ndcg@5"] == pytest.approx(max(scores), abs=1e-6)
    # the kept epoch's slot inputs: the saved model's, for every valid user
    assert sorted(res.slot_cache) == toy.users_with("valid").tolist()
    users = sorted(res.slot_cache)
    fresh = rec._slot_hidden(users)
    kept = torch.stack([res.slot_cache[u] for u in users])
    assert kept.shape == fresh.shape and torch.allclose(kept, fresh, atol=1e-5)
    # ranked from them, valid gives the recorded figures without running the LLM
    primed = GLTARecommender.from_run(toy_run, llm=tiny)
    primed.slots = dict(res.slot_cache)
    primed._slot_hidden = None  # any LLM pass would fail
    for mode in ("first_k", "mean", "first"):
        assert primed.evaluate("valid", ks=(5, 10), ranking=mode) == pytest.approx(
            rec.evaluate("valid", ks=(5, 10), ranking=mode), abs=1e-6)


def test_stage3_with_text_and_few_training_users_validates_every_user(toy_run, toy, tiny):
    # max_users caps the training users; validation still ranks every valid user with their
    # profile text, so their texts are generated up front (this raised "no profile text")
    from glta_align.profiles import read_profiles

    train_item_text(toy, toy_run, ItemTextConfig(epochs=1, items_per_instance=3), llm=tiny)
    valid_users = toy.users_with("valid")
    assert len(valid_users) > 2
    cfg = UserItemConfig(epochs=1, batch_size=4, num_slots=3, max_users=2, patience=1,
                         profile_new_tokens=2)
    res = train_user_item(toy, toy_run, cfg, llm=tiny)
    assert len(res.valid_history) == 1
    _, texts = read_profiles(toy_run / "profiles.jsonl")
    assert set(valid_users.tolist()) <= set(texts)


def test_stage3_with_the_cosine_schedule_trains_and_records_it(toy_run, toy, tiny):
    train_item_text(toy, toy_run, ItemTextConfig(epochs=1, items_per_instance=3), llm=tiny)
    cfg = UserItemConfig(epochs=2, batch_size=4, num_slots=3, use_profile=False,
                         use_predict=False, lr=5e-2, lr_schedule="cosine")
    res = train_user_item(toy, toy_run, cfg, llm=tiny)
    assert len(res.epoch_losses) == 2 and all(torch.isfinite(torch.tensor(res.epoch_losses)))
    _, config, _ = load_artifact(toy_run / "user_projector")
    assert config["stage_config"]["lr_schedule"] == "cosine"
