import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from glta_gllm.checkpoint import CheckpointError, load_artifact

from glta_align.config import ItemTextConfig, UserItemConfig
from glta_align.item_text import train_item_text
from glta_align.prompts import USER_ITEM_SYSTEM, USER_ITEM_TEMPLATE, USER_ITEM_USER, build_layout
from glta_align.user_item import (
    IGNORE,
    UserPrompter,
    UserSample,
    eval_sample,
    train_sample,
    train_user_item,
    user_item_layout,
    user_item_runner,
)


@pytest.mark.parametrize("targets_from", ["unseen", "any"])
def test_train_sample(toy, targets_from):
    cfg = UserItemConfig(num_slots=3, history_items=4, targets_from=targets_from)
    for u in range(toy.num_users):
        s = train_sample(toy, cfg, u, epoch=0)
        train = set(toy.user_items("train", u).tolist())
        assert set(s.history) <= train and len(s.history) <= 4
        real = [t for t in s.targets if t != IGNORE]
        assert len(s.targets) == 3 and set(real) <= train and len(set(real)) == len(real)
        if targets_from == "unseen" and len(train) >= 3 + len(s.history):
            assert not set(real) & set(s.history)
        assert train_sample(toy, cfg, u, epoch=0) == s  # seeded
    assert any(train_sample(toy, cfg, u, 1) != train_sample(toy, cfg, u, 0) for u in range(5))


def test_eval_sample_is_fixed(toy):
    cfg = UserItemConfig(history_items=3)
    assert eval_sample(toy, cfg, 2) == eval_sample(toy, cfg, 2)
    assert len(eval_sample(toy, cfg, 2).history) == 3


def _prompter(toy, tokenizer, **kw):
    cfg = UserItemConfig(num_slots=3, **kw)
    lay = build_layout(tokenizer, USER_ITEM_SYSTEM, USER_ITEM_USER, USER_ITEM_TEMPLATE)
    profiles = {0: {"profile": "action fan", "predict": "space films"}}
    return UserPrompter(lay, toy, tokenizer, cfg, profiles), tokenizer


def test_prompter_rows_and_texts(toy, tokenizer):
    p, tok = _prompter(toy, tokenizer)
    seqs, users, items = p.build([UserSample(0, [4, 5]), UserSample(1, [6])])
    assert users == [0, 1] and items == [4, 5, 6]
    s0 = seqs[0]
    assert [r for r in s0.soft if r > 0] == [1, 3, 4]  # user row, then its item rows
    assert [r for r in seqs[1].soft if r > 0] == [2, 5]
    assert len(s0.read) == 3 and all(s0.soft[i] == 0 for i in s0.read)
    text = tok.decode([t for t, r in zip(s0.ids, s0.soft, strict=True) if r < 0])
    assert "User tags: action fan" in text and "potential interest: space films" in text
    assert p.length(UserSample(0, [4, 5])) == len(s0)


def test_prompter_history_text_follows_each_item_token(toy, tokenizer):
    p, tok = _prompter(toy, tokenizer, history_text=True, description_tokens=4,
                       use_profile=False, use_predict=False)
    seqs, _, items = p.build([UserSample(0, [4, 5])])
    s = seqs[0]
    assert items == [4, 5] and [r for r in s.soft if r > 0] == [1, 2, 3]
    first, second = s.soft.index(2), s.soft.index(3)
    between = s.ids[first + 1:second]
    desc = tok(" " + toy.item_text[4], add_special_tokens=False)["input_ids"][:4]
    assert len(desc) == 4
    sep = tok("; ", add_special_tokens=False)["input_ids"]
    assert between == desc + sep  # item 4's text (budget 4), the separator, item 5's token
    after = s.ids[second + 1:second + 1 + len(desc)]
    assert after == tok(" " + toy.item_text[5], add_special_tokens=False)["input_ids"][:4]
    assert p.length(UserSample(0, [4, 5])) == len(s)
    plain, _ = _prompter(toy, tokenizer, use_profile=False, use_predict=False)
    assert len(plain.build([UserSample(0, [4, 5])])[0][0]) == len(s) - 2 * len(desc) - len(sep)


def test_history_text_tokens_cuts_only_the_history_descriptions(toy, tokenizer):
    # history_text_tokens = 2 cuts each history description to 2 tokens; 0 (the default)
    # means description_tokens, as does naming it; the profile text is not touched
    short, tok = _prompter(toy, tokenizer, history_text=True, description_tokens=4,
                           history_text_tokens=2)
    full, _ = _prompter(toy, tokenizer, history_text=True, description_tokens=4)
    same, _ = _prompter(toy, tokenizer, history_text=True, description_tokens=4,
                        history_text_tokens=4)
    sample = UserSample(0, [4, 5])
    s, f = short.build([sample])[0][0], full.build([sample])[0][0]
    assert same.build([sample])[0][0].ids == f.ids
    assert len(f) - len(s) == 2 * 2 and short.length(sample) == len(s)
    first, second = s.soft.index(2), s.soft.index(3)
    desc = tok(" " + toy.item_text[4], add_special_tokens=False)["input_ids"][:2]
    assert s.ids[first + 1:second] == desc + tok("; ", add_special_tokens=False)["input_ids"]
    assert "User tags: action fan" in tok.decode(s.ids)
    with pytest.raises(ValueError, match="history_text_tokens = -1"):
        UserItemConfig(history_text_tokens=-1)


def test_history_text_first_writes_the_fixed_sample_before_the_user_token(toy, tokenizer):
    cfg = UserItemConfig(num_slots=3, history_items=2, description_tokens=4,
                         prompt_order="text-first", history_text_first=True)
    lay = user_item_layout(tokenizer, cfg)
    assert "HISTORY_TOKEN" in lay.pieces
    p = UserPrompter(lay, toy, tokenizer, cfg, {0: {"profile": "action fan"}})
    fixed = eval_sample(toy, cfg, 0).history
    desc = [tokenizer(" " + toy.item_text[i], add_special_tokens=False)["input_ids"][:4]
            for i in fixed]
    sep = tokenizer("; ", add_special_tokens=False)["input_ids"]
    line = desc[0] + sep + desc[1]
    seqs = [p.build([train_sample(toy, cfg, 0, epoch)])[0][0] for epoch in (0, 1, 2)]
    for s in seqs:
        lead = s.ids[:s.soft.index(1)]  # after the shared prefix, before the user token
        assert all(r < 0 for r in s.soft[:len(lead)])
        assert any(lead[i:i + len(line)] == line for i in range(len(lead)))
        text = tokenizer.decode(lead)
        assert text.startswith("action fan\nUser's potential interest:\nUser's items:")
    # the leading text is the same every epoch (the soft tokens' items are redrawn)
    assert len({tuple(s.ids[:s.soft.index(1)]) for s in seqs}) == 1
    s = seqs[0]
    assert p.length(train_sample(toy, cfg, 0, 0)) == len(s)
    plain_cfg = UserItemConfig(num_slots=3, history_items=2, description_tokens=4,
                               prompt_order="text-first")
    plain = UserPrompter(user_item_layout(tokenizer, plain_cfg), toy, tokenizer, plain_cfg,
                         {0: {"profile": "action fan"}})
    extra = len(s) - len(plain.build([train_sample(toy, cfg, 0, 0)])[0][0])
    line_ids = tokenizer("\nUser's items:", add_special_tokens=False)["input_ids"]
    assert len(line) < extra <= len(line) + len(line_ids) + 1
    with pytest.raises(ValueError, match="history_text_first = True needs prompt_order"):
        UserItemConfig(history_text_first=True, prompt_order="paper")


def test_prompter_text_filler_keeps_lengths_and_drops_words(toy, tokenizer):
    p, tok = _prompter(toy, tokenizer)
    f, _ = _prompter(toy, tokenizer, text_filler=True)
    real, filled = p.build([UserSample(0, [4, 5])])[0][0], f.build([UserSample(0, [4, 5])])[0][0]
    assert len(filled) == len(real) and filled.soft == real.soft  # same positions and rows
    dot = tok(".", add_special_tokens=False)["input_ids"][0]
    changed = [i for i, (a, b) in enumerate(zip(real.ids, filled.ids, strict=True)) if a != b]
    words = len(tok("action fan", add_special_tokens=False)["input_ids"]) + len(
        tok(" space films", add_special_tokens=False)["input_ids"])
    assert changed and all(filled.ids[i] == dot for i in changed) and len(changed) <= words
    text = tok.decode([t for t, r in zip(filled.ids, filled.soft, strict=True) if r < 0])
    assert "action fan" not in text and "space films" not in text and "User tags: ." in text
    assert f.length(UserSample(0, [4, 5])) == len(filled)


def test_prompter_ablations(toy, tokenizer):
    p, tok = _prompter(toy, tokenizer, user_token=False, use_profile=False, use_predict=False,
                       ranking="ar")
    s = UserSample(0, [4], slot_items=[7, 8])
    seqs, _, items = p.build([s])
    text = tok.decode([t for t, r in zip(seqs[0].ids, seqs[0].soft, strict=True) if r < 0])
    assert text.startswith("user u0\nItem tokens:") and "action fan" not in text
    assert items == [4, 7, 8]
    assert [seqs[0].soft[i] for i in seqs[0].read] == [0, 3, 4]  # AR: previous targets fed in


def test_stage3_trains_user_projector_and_head(toy_run, toy, tiny):
    train_item_text(toy, toy_run, ItemTextConfig(epochs=1, items_per_instance=3), llm=tiny)
    head_before = load_artifact(toy_run / "gllm_head")[0]["weight"].clone()
    item_before = load_artifact(toy_run / "item_projector")[0]
    cfg = UserItemConfig(epochs=2, batch_size=4, num_slots=3, profile_new_tokens=2, lr=1e-2)
    events = []
    res = train_user_item(toy, toy_run, cfg, llm=tiny, progress=events.append)
    assert res.steps == 2 * 6 and res.epoch_losses[-1] < res.epoch_losses[0]
    assert {"profiles", "user_item"} <= {e.stage for e in events}
    assert (toy_run / "profiles.jsonl").is_file()
    _, config, _ = load_artifact(toy_run / "user_projector",
                                       expected_fingerprint=toy.fingerprint)
    assert config["stage_config"]["num_slots"] == 3
    # the speed of the steps: model FLOPs over their time, saved beside the selection
    assert config["timed_steps"] == config["steps"] == 12 and config["train_seconds"] > 0
    assert config["model_flops"] > 0 and res.throughput == {
        k: config[k] for k in ("train_seconds", "model_flops", "achieved_gflops", "timed_steps")}
    assert config["achieved_gflops"] == pytest.approx(
        config["model_flops"] / config["train_seconds"] / 1e9, rel=1e-3)
    assert not torch.equal(load_artifact(toy_run / "gllm_head")[0]["weight"], head_before)
    item_after = load_artifact(toy_run / "item_projector")[0]
    assert all(torch.equal(item_after[k], item_before[k]) for k in item_before)  # frozen
    # stage 2's own copy is what stage 3 started from, and stage 3 left it alone
    assert torch.equal(load_artifact(toy_run / "item_text" / "gllm_head")[0]["weight"],
                       head_before)


def _stage3_outputs(run):
    return {name: load_artifact(run / name)[0] for name in ("gllm_head", "user_projector")}


def test_stage3_rerun_starts_from_stage2_not_from_the_last_stage3(toy_run, toy, tiny):
    """A rerun of stage 3 (the pipeline drops its state when its settings change) must equal
    the first run: it starts from stage 2's head, not from the head stage 3 wrote."""
    train_item_text(toy, toy_run, ItemTextConfig(epochs=1, items_per_instance=3), llm=tiny)
    cfg = UserItemConfig(epochs=1, batch_size=4, num_slots=3, use_profile=False,
                         use_predict=False, lr=1e-2)
    train_user_item(toy, toy_run, cfg, llm=tiny)
    first = _stage3_outputs(toy_run)
    shutil.rmtree(toy_run / "state" / "user_item")
    train_user_item(toy, toy_run, cfg, llm=tiny)
    second = _stage3_outputs(toy_run)
    for name, tensors in first.items():
        for key, value in tensors.items():
            assert torch.equal(second[name][key], value), (name, key)


def test_stage3_on_a_run_without_the_stage2_copy_warns(toy_run, toy, tiny):
    train_item_text(toy, toy_run, ItemTextConfig(epochs=1, items_per_instance=3), llm=tiny)
    cfg = UserItemConfig(epochs=1, batch_size=4, num_slots=3, use_profile=False,
                         use_predict=False)
    shutil.rmtree(toy_run / "item_text")  # as made by a version without the copy
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # stage 2's head is still the top-level one: no warning
        train_user_item(toy, toy_run, cfg, llm=tiny)
    shutil.rmtree(toy_run / "state" / "user_item")
    with pytest.warns(UserWarning, match="written by an earlier stage 3"):
        train_user_item(toy, toy_run, cfg, llm=tiny)


def test_stage3_needs_stage2_unless_it_trains_the_item_projector(toy_run, toy, tiny):
    cfg = UserItemConfig(epochs=1, batch_size=8, num_slots=2, use_profile=False,
                         use_predict=False)
    with pytest.raises(CheckpointError, match="item_projector"):
        train_user_item(toy, toy_run, cfg, llm=tiny)
    cfg.train_item_projector = True
    res = train_user_item(toy, toy_run, cfg, llm=tiny)
    assert np.isfinite(res.epoch_losses[0])
    assert (toy_run / "item_projector").is_dir() and (toy_run / "gllm_head").is_dir()
    assert not (toy_run / "item_text").exists()  # no stage 2 ran: nothing to copy


def test_stage3_with_lora_saves_only_the_adapters_and_resumes_to_the_same_result(
        toy_run, toy, tiny, tiny_dir, tmp_path):
    from glta_align.llm import load_llm

    def lora_llm():
        torch.manual_seed(0)  # the adapters' random starting point
        return load_llm(tiny_dir, dtype="float32", lora={"r": 2, "alpha": 4})

    train_item_text(toy, toy_run, ItemTextConfig(epochs=1, items_per_instance=3), llm=tiny)
    other = tmp_path / "other"
    shutil.copytree(toy_run, other)
    cfg = dict(batch_size=4, num_slots=3, use_profile=False, use_predict=False, lr=1e-2,
               patience=2, lora={"r": 2, "alpha": 4})
    llm = lora_llm()
    adapters = [n for n, p in llm.model.named_parameters() if p.requires_grad]
    train_user_item(toy, toy_run, UserItemConfig(epochs=2, **cfg), llm=llm)
    state = torch.load(toy_run / "state" / "user_item" / "state.pt", weights_only=False)
    # the resumable state and the best epoch's snapshot hold the adapters, not the frozen LLM
    assert list(state["modules"]["llm"]) == adapters
    assert list(state["best"]["modules"]["llm"]) == adapters
    assert (toy_run / "lora" / "adapter_model.safetensors").is_file()
    # one epoch, then (a new process: the LLM loaded afresh) resumed to two: the same result
    train_user_item(toy, other, UserItemConfig(epochs=1, **cfg), llm=lora_llm())
    train_user_item(toy, other, UserItemConfig(epochs=2, **cfg), llm=lora_llm())
    for name in ("gllm_head", "user_projector"):
        a, b = load_artifact(toy_run / name)[0], load_artifact(other / name)[0]
        assert all(torch.equal(a[k], b[k]) for k in a), name
    from safetensors.torch import load_file

    a = load_file(str(toy_run / "lora" / "adapter_model.safetensors"))
    b = load_file(str(other / "lora" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_masked_slot_loss_leaves_other_seen_items_out_of_each_softmax():
    from glta_align.user_item import masked_slot_loss

    torch.manual_seed(0)
    logits = torch.randn(3, 6, requires_grad=True)
    targets = torch.tensor([1, 4, IGNORE])
    seen = [np.array([0, 1, 2]), np.array([1, 4]), np.array([5])]
    loss = masked_slot_loss(logits, targets, seen)
    # by hand: row 0 competes over items {1, 3, 4, 5}, row 1 over {0, 2, 3, 4, 5}
    want = torch.stack([
        -torch.log_softmax(logits[0, [1, 3, 4, 5]], 0)[0],
        -torch.log_softmax(logits[1, [0, 2, 3, 4, 5]], 0)[3],
    ]).mean()
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert logits.grad[0, [0, 2]].abs().max() == 0  # masked: neither pushed up nor down
    assert logits.grad[1, 1] == 0 and logits.grad[2].abs().max() == 0  # ignored row
    # without anything seen it is the plain cross-entropy
    plain = masked_slot_loss(logits, targets, [np.zeros(0, dtype=np.int64)] * 3)
    torch.testing.assert_close(plain, torch.nn.functional.cross_entropy(
        logits, targets, ignore_index=IGNORE))
    all_ignored = masked_slot_loss(logits, torch.full((3,), IGNORE), seen)
    assert all_ignored.item() == 0 and all_ignored.requires_grad
    with pytest.raises(ValueError, match="2 seen lists"):
        masked_slot_loss(logits, targets, seen[:2])


def test_stage3_with_mask_seen_trains_and_records_it(toy_run, toy, tiny):
    train_item_text(toy, toy_run, ItemTextConfig(epochs=1, items_per_instance=3), llm=tiny)
    cfg = UserItemConfig(epochs=2, batch_size=4, num_slots=3, profile_new_tokens=2, lr=1e-2,
                         mask_seen=True, use_profile=False, use_predict=False)
    res = train_user_item(toy, toy_run, cfg, llm=tiny)
    assert res.steps == 2 * 6 and np.isfinite(res.epoch_losses).all()
    assert res.epoch_losses[-1] < res.epoch_losses[0]
    _, config, _ = load_artifact(toy_run / "user_projector", expected_fingerprint=toy.fingerprint)
    assert config["stage_config"]["mask_seen"] is True


def test_text_first_prompt_puts_the_text_before_the_soft_tokens(toy, tokenizer):
    from glta_align.user_item import user_item_layout

    cfg = UserItemConfig(num_slots=3, prompt_order="text-first")
    lay = user_item_layout(tokenizer, cfg)
    names = [p for p in lay.pieces if isinstance(p, str)]
    assert names == ["PROFILE_TOKEN", "PREDICT_TOKEN", "USER_TOKEN", "ITEM_TOKEN"]
    assert user_item_layout(tokenizer, UserItemConfig()).pieces != lay.pieces
    profiles = {0: {"profile": "action fan", "predict": "space films"}}
    s = UserPrompter(lay, toy, tokenizer, cfg, profiles).build([UserSample(0, [4, 5])])[0][0]
    first = min(i for i, r in enumerate(s.soft) if r >= 0)
    head = tokenizer.decode(s.ids[:first])
    assert tokenizer.decode(lay.prefix_ids).endswith("User tags: ")  # shared by all users
    assert head.startswith("action fan") and "potential interest: space films" in head
    with pytest.raises(ValueError, match="prompt_order"):
        UserItemConfig(prompt_order="last")


def test_stage3_text_first_trains_and_ranks_as_saved(toy_run, toy, tiny, tmp_path):
    # the text runs without gradient (the runner's text head, its keys/values kept across
    # epochs); the saved model, reloaded, ranks valid exactly as the best epoch recorded, and
    # a run resumed after one epoch (an empty cache) ends exactly where a straight one does
    from glta_align.recommender import GLTARecommender

    train_item_text(toy, toy_run, ItemTextConfig(epochs=1, items_per_instance=3), llm=tiny)
    other = tmp_path / "other"
    shutil.copytree(toy_run, other)
    kw = dict(batch_size=4, num_slots=3, profile_new_tokens=2, lr=1e-2,
              prompt_order="text-first", patience=2, select_metric="ndcg@5")
    cfg = UserItemConfig(epochs=2, **kw)
    res = train_user_item(toy, toy_run, cfg, llm=tiny)
    train_user_item(toy, other, UserItemConfig(epochs=1, **kw), llm=tiny)
    train_user_item(toy, other, cfg, llm=tiny)
    for name in ("gllm_head", "user_projector"):
        a, b = load_artifact(toy_run / name)[0], load_artifact(other / name)[0]
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert res.steps == 2 * 6 and res.epoch_losses[-1] < res.epoch_losses[0]
    _, config, _ = load_artifact(toy_run / "user_projector", expected_fingerprint=toy.fingerprint)
    assert config["stage_config"]["prompt_order"] == "text-first"
    rec = GLTARecommender.from_run(toy_run, llm=tiny)
    assert rec.runner.text_head
    again = rec.evaluate("valid", ks=(5, 10, 20))
    assert again["ndcg@5"] == pytest.approx(res.best_valid["ndcg@5"], abs=1e-6)
    assert rec.runner.last_shape.head_len > 0


def test_stage3_text_first_validation_reuses_the_texts_training_kept(
        toy_run, toy, tiny, monkeypatch):
    # each epoch's valid ranking runs on the stage's own runner, so a user's text, computed
    # once in training, is never computed again (a fresh runner per validation recomputed all)
    from glta_align.testing import record_text_heads

    computed = record_text_heads(monkeypatch)
    train_item_text(toy, toy_run, ItemTextConfig(epochs=1, items_per_instance=3), llm=tiny)
    res = train_user_item(toy, toy_run, UserItemConfig(
        epochs=2, batch_size=4, num_slots=3, profile_new_tokens=2, lr=1e-2,
        prompt_order="text-first", patience=2, select_metric="ndcg@5"), llm=tiny)
    assert len(res.valid_history) == 2  # validated after each epoch
    assert computed and len(computed) == len(set(computed))


def test_a_runner_handed_in_must_fit_the_stage(toy_run, toy, tiny, tokenizer):
    # a runner of another prompt prefix or another LLM object would serve kept keys/values
    # that belong to another prompt: refused, naming why
    from glta_align.llm import tiny_llm
    from glta_align.recommender import GLTARecommender

    train_item_text(toy, toy_run, ItemTextConfig(epochs=1, items_per_instance=3), llm=tiny)
    cfg = UserItemConfig(epochs=1, batch_size=4, num_slots=3, profile_new_tokens=2,
                         prompt_order="text-first")
    layout = user_item_layout(tiny.tokenizer, cfg)
    other_llm = tiny_llm(tokenizer, hidden_size=64, num_layers=2, seed=0)
    with pytest.raises(ValueError, match="another LLM object"):
        train_user_item(toy, toy_run, cfg, llm=tiny,
                        runner=user_item_runner(other_llm, layout, cfg))
    paper = user_item_layout(tiny.tokenizer, UserItemConfig(prompt_style="paper"))
    assert paper.prefix_ids != layout.prefix_ids
    with pytest.raises(ValueError, match="another prompt prefix"):
        train_user_item(toy, toy_run, cfg, llm=tiny, runner=user_item_runner(tiny, paper, cfg))
    runner = user_item_runner(tiny, layout, cfg)
    train_user_item(toy, toy_run, cfg, llm=tiny, runner=runner)
    assert runner._head_cache  # the texts stage 3 kept, in the caller's runner
    # what it kept is saved with the stage (report.md says it)
    saved = json.loads((toy_run / "user_projector" / "config.json").read_text())
    assert saved["text_cache"] == runner.head_cache_stats()
    assert saved["text_cache"]["texts"] == len(runner._head_cache) > 0
    assert saved["text_cache"]["not_kept"] == 0 and saved["text_cache"]["dtype"] is None
    rec = GLTARecommender.from_run(toy_run, llm=tiny, runner=runner)
    assert rec.runner is runner
    with pytest.raises(ValueError, match="another LLM object"):
        GLTARecommender.from_run(toy_run, llm=other_llm, runner=runner)


def test_stage3_computes_the_texts_ahead_batched_by_length(toy_run, toy, tiny, monkeypatch):
    # text first: every text the first epoch and the validation meet is computed before the
    # first training step (texts of one length together: test_splice); training and the
    # validation then compute none
    from glta_align.splice import SoftPromptRunner

    log: list[object] = []
    rows_head, hidden = SoftPromptRunner._rows_head, SoftPromptRunner.hidden_states

    def rows_spy(self, rows, kv):
        log.append(len(rows))
        return rows_head(self, rows, kv)

    def hidden_spy(self, seqs, table, **kw):
        if torch.is_grad_enabled():
            log.append("step")
        return hidden(self, seqs, table, **kw)

    monkeypatch.setattr(SoftPromptRunner, "_rows_head", rows_spy)
    monkeypatch.setattr(SoftPromptRunner, "hidden_states", hidden_spy)
    train_item_text(toy, toy_run, ItemTextConfig(epochs=1, items_per_instance=3), llm=tiny)
    log.clear()
    train_user_item(toy, toy_run, UserItemConfig(
        epochs=2, batch_size=4, num_slots=3, profile_new_tokens=2, lr=1e-2,
        prompt_order="text-first", patience=2, select_metric="ndcg@5"), llm=tiny)
    first = log.index("step")
    assert log[:first] and len(log[:first]) == len([n for n in log if n != "step"])
