import json
import subprocess

import pytest
from align_testutil import PY, TESTS, make_run, subprocess_env, toy_data
from glta_gllm.checkpoint import read_metadata


@pytest.mark.slow  # two torchrun processes importing torch + transformers: ~40 s
def test_stage2_under_torchrun_two_cpu_processes(tmp_path):
    data = toy_data()
    run = make_run(tmp_path / "run", data)
    cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(TESTS / "_worker.py"), "item_text", str(run), "0"]
    r = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    state = json.loads((run / "state" / "item_text" / "state.json").read_text())
    # 30 items / 3 per instance = 10 instances, batch 2 -> 5 batches; each rank takes 2
    assert state["steps"] == 2 * 2 and state["epoch"] == 2
    assert read_metadata(run / "gllm_head")["dataset_fingerprint"] == data.fingerprint
