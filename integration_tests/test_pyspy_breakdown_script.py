"""benchmarks/align/pyspy_breakdown.py: phase and operator shares of a py-spy raw profile."""

from __future__ import annotations

import json

import pytest

_MAIN = "main (app.py:1);"
_FWD = "loss_fn (user_item.py:7);SoftPromptRunner.hidden_states (splice.py:8);"
RAW = "".join(_MAIN + line + "\n" for line in (
    "train_user_item (user_item.py:9);validate (user_item.py:5);Linear.forward (linear.py:2) 25",
    "Tensor.backward (_tensor.py:3);_engine_run_backward (graph.py:4) 40",
    _FWD + "Linear.forward (linear.py:2) 20",
    _FWD + "repeat_kv (llama.py:5) 10",
    "loss_fn (user_item.py:7);masked_slot_loss (user_item.py:3) 5",
))

def test_shares_by_phase_and_forward_operator(align_script, tmp_path):
    spy = align_script("pyspy_breakdown")
    raw = tmp_path / "raw.txt"
    raw.write_text(RAW)
    got = spy.breakdown(spy.read_stacks(raw))
    assert got["samples"] == 100 and got["other_threads"] == 0
    assert got["phases"] == {"backward": 0.4, "forward": 0.3, "valid ranking": 0.25,
                             "loss": 0.05}
    # the validation's Linear is not the training forward's
    assert got["forward_ops"] == {"Linear.forward": pytest.approx(2 / 3, abs=1e-4),
                                  "repeat_kv": pytest.approx(1 / 3, abs=1e-4)}
    assert got["ranking_ops"] == {"Linear.forward": 1.0}
    out = tmp_path / "out.json"
    assert spy.main([str(raw), "--json", str(out), "--note", "toy"]) == 0
    assert json.loads(out.read_text())["phases"]["backward"] == 0.4


def test_a_malformed_line_is_named(align_script, tmp_path):
    spy = align_script("pyspy_breakdown")
    raw = tmp_path / "raw.txt"
    raw.write_text("main (app.py:1) 3\nnot a stack line\n")  # line 2: no count
    with pytest.raises(ValueError, match=r"raw\.txt:2"):
        spy.read_stacks(raw)


def test_samples_of_other_threads_are_counted_apart(align_script, tmp_path):
    spy = align_script("pyspy_breakdown")
    raw = tmp_path / "raw.txt"
    # a thread with no Python frame (an empty stack) and tqdm's monitor thread
    raw.write_text(RAW + " 30\nThread._bootstrap (threading.py:1);TMonitor.run (_monitor.py:2) 7\n")
    got = spy.breakdown(spy.read_stacks(raw))
    assert got["samples"] == 100 and got["other_threads"] == 37
    assert got["phases"]["backward"] == 0.4  # shares of the Python samples only
