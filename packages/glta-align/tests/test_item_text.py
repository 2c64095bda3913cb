import json
import subprocess

import numpy as np
import pytest
import torch
from align_testutil import PY, TESTS, subprocess_env
from glta_gllm.checkpoint import FingerprintMismatchError, read_metadata
from safetensors.torch import load_file

from glta_align.config import ItemTextConfig
from glta_align.item_text import build_instance, train_item_text
from glta_align.projector import NodeProjector


def test_instance_targets_follow_description_order():
    descs = [[100 + i] for i in range(10)]
    items = np.array([7, 2, 5])
    order = np.array([2, 0, 1])  # descriptions shown: item 5, item 7, item 2
    seq, targets = build_instance(((1, 2), "DESCRPTION_TOKEN", (3,), "ITEM_TOKEN", (4,)),
                                  items, order, descs, [9], first_row=1)
    assert targets == [5, 7, 2]
    assert seq.ids[:7] == [1, 2, 105, 9, 107, 9, 102]
    assert seq.soft[8:11] == [1, 2, 3]  # item soft tokens in item order
    assert seq.read == [12, 13, 14] and seq.soft[12:] == [0, 0, 0]


def test_stage2_trains_saves_and_checks_fingerprint(toy_run, toy, tiny):
    events = []
    cfg = ItemTextConfig(epochs=3, batch_size=2, items_per_instance=3, lr=1e-2)
    res = train_item_text(toy, toy_run, cfg, llm=tiny, progress=events.append)
    assert res.steps == 3 * 5 and len(res.epoch_losses) == 3
    assert res.epoch_losses[-1] < res.epoch_losses[0]
    assert {e.kind for e in events} >= {"start", "step", "epoch", "end"}
    assert read_metadata(toy_run / "item_projector")["dataset_fingerprint"] == toy.fingerprint
    assert read_metadata(toy_run / "gllm_head")["dataset_fingerprint"] == toy.fingerprint
    NodeProjector.from_pretrained(toy_run / "item_projector", expected_fingerprint=toy.fingerprint)
    for folder in (toy_run / "item_projector", toy_run / "item_text" / "item_projector"):
        meta = json.loads((folder / "config.json").read_text())
        assert meta["timed_steps"] == meta["steps"] == 15 and meta["model_flops"] > 0
        assert meta["achieved_gflops"] > 0 and meta["llm_precision"] == "float32"
        assert meta["llm_dtype"] == "float32"
        assert meta["llm_pointwise"] is False and meta["llm_compiled_layers"] == 0
    assert res.throughput["achieved_gflops"] == meta["achieved_gflops"]
    # a dataset with another split is refused
    other = toy.__class__(toy.user_ids, toy.item_ids, toy.test, toy.valid, toy.train,
                          item_text=toy.item_text)
    with pytest.raises(FingerprintMismatchError, match=toy.fingerprint):
        train_item_text(other, toy_run, cfg, llm=tiny, resume=False)


def test_stage2_runs_the_descriptions_without_gradient(toy_run, toy, tiny, monkeypatch):
    # the shuffled descriptions lead each sample: they run without gradient behind the
    # prefix (no backward through them); the outputs are those of one whole pass
    from glta_align.splice import SoftPromptRunner

    shapes, pairs = [], []
    hidden = SoftPromptRunner.hidden_states

    def spy(self, seqs, table, **kw):
        out = hidden(self, seqs, table, **kw)
        shapes.append(self.last_shape)
        with torch.no_grad():  # one whole pass, for comparison
            pairs.append((out.detach(), hidden(SoftPromptRunner(self.llm, self.prefix_ids),
                                               seqs, table)))
        return out

    monkeypatch.setattr(SoftPromptRunner, "hidden_states", spy)
    train_item_text(toy, toy_run, ItemTextConfig(epochs=1, batch_size=4, items_per_instance=3),
                    llm=tiny)
    assert shapes and all(s.head_len > 0 for s in shapes)
    for split, whole in pairs:
        torch.testing.assert_close(split, whole, atol=1e-5, rtol=1e-4)


def test_stage2_projected_head(toy_run, toy, tiny):
    cfg = ItemTextConfig(epochs=1, batch_size=4, items_per_instance=3, head="projected")
    res = train_item_text(toy, toy_run, cfg, llm=tiny)
    assert np.isfinite(res.epoch_losses[0])
    head = load_file(str(toy_run / "gllm_head" / "model.safetensors"))
    proj = load_file(str(toy_run / "item_projector" / "model.safetensors"))
    torch.testing.assert_close(head["projector.weight"], proj["net.weight"])  # tied


@pytest.mark.slow  # subprocesses: ~30 s on a quiet 2-core machine
def test_stage2_resumes_after_sigkill_to_the_same_result(tmp_path):
    env = subprocess_env()
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run([PY, str(TESTS / "_worker.py"), "item_text", str(full), "0"], env=env,
                   check=True)
    r = subprocess.run([PY, str(TESTS / "_worker.py"), "item_text", str(killed), "4"], env=env)
    assert r.returncode == -9  # really killed
    assert (killed / "state" / "item_text" / "state.pt").is_file()
    assert not (killed / "item_projector").exists()
    subprocess.run([PY, str(TESTS / "_worker.py"), "item_text", str(killed), "0"], env=env,
                   check=True)
    a = load_file(str(full / "gllm_head" / "model.safetensors"))
    b = load_file(str(killed / "gllm_head" / "model.safetensors"))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


class _Crash(Exception):
    pass


def test_stage2_resume_in_process_matches_uninterrupted(tmp_path, toy, tiny):
    from align_testutil import make_run

    cfg = ItemTextConfig(epochs=2, batch_size=2, items_per_instance=3, save_every=1)
    full = make_run(tmp_path / "full", toy)
    ref = train_item_text(toy, full, cfg, llm=tiny)

    def crash(event):
        if event.kind == "step" and event.epoch == 1 and event.step == 2:
            raise _Crash

    part = make_run(tmp_path / "part", toy)
    with pytest.raises(_Crash):
        train_item_text(toy, part, cfg, llm=tiny, progress=crash)
    res = train_item_text(toy, part, cfg, llm=tiny)
    assert res.resumed_from == (1, 1) and res.steps == ref.steps  # step 2 was not saved
    a = load_file(str(full / "gllm_head" / "model.safetensors"))
    b = load_file(str(part / "gllm_head" / "model.safetensors"))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="cannot resume item_text: batch_size was 2"):
        train_item_text(toy, part, ItemTextConfig(items_per_instance=3), llm=tiny)


def test_stage2_with_lora_trains_and_saves_the_adapter(toy_run, toy, tiny_dir):
    from glta_align.llm import load_llm

    llm = load_llm(tiny_dir, dtype="float32", lora={"r": 2, "alpha": 4})
    before = [p.detach().clone() for p in llm.trainable_parameters()]
    cfg = ItemTextConfig(epochs=1, batch_size=4, items_per_instance=3, lora={"r": 2, "alpha": 4})
    train_item_text(toy, toy_run, cfg, llm=llm)
    after = llm.trainable_parameters()
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert (toy_run / "lora" / "adapter_model.safetensors").is_file()


def test_config_import_does_not_pull_transformers():
    import subprocess
    import sys

    code = "import sys, glta_align.config, glta_align; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
