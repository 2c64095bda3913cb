import json
import subprocess

import pytest
import torch
from align_testutil import PY, TESTS, make_run, subprocess_env, toy_data
from glta_gllm.checkpoint import read_metadata


@pytest.mark.slow  # two torchrun processes importing torch + transformers, then one process
def test_stage2_under_torchrun_ranks_agree_and_equal_one_process_on_the_union_batch(tmp_path):
    data = toy_data()
    two = make_run(tmp_path / "two", data)
    cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(TESTS / "_worker.py"), "item_text_union", str(two), "0", "2"]
    r = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    state = json.loads((two / "state" / "item_text" / "state.json").read_text())
    # 8 instances, batch 2 -> 4 batches; each rank takes every other one: 2 steps per epoch
    assert state["steps"] == 2 * 2 and state["epoch"] == 2
    assert read_metadata(two / "gllm_head")["dataset_fingerprint"] == data.fingerprint
    # One process on the union of the ranks' batches (batch 4 = batches 2j and 2j + 1).
    one = make_run(tmp_path / "one", data)
    cmd = [PY, str(TESTS / "_worker.py"), "item_text_union", str(one), "0", "4"]
    r = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [torch.load(two / f"modules_rank{k}.pt", weights_only=True) for k in (0, 1)]
    ref = torch.load(one / "modules_rank0.pt", weights_only=True)
    assert set(ranks[0]) == set(ref) == {"projector", "head"}
    for name, states in ref.items():
        for key, value in states.items():
            # all-reduced gradients: both ranks take the very same steps
            assert torch.equal(ranks[0][name][key], ranks[1][name][key]), (name, key)
            torch.testing.assert_close(ranks[0][name][key], value, rtol=1e-4, atol=1e-5)
