import subprocess

import pytest
import torch
from _ddp_worker import STEPS, WORLD, batch, build, loss_of
from align_testutil import PY, TESTS, subprocess_env

from glta_align._ddp import StageLoss, ddp_loss


def test_one_process_gets_the_loss_function_itself_and_the_wrapper_keeps_state_keys():
    modules, _ = build()
    fn = loss_of(modules)
    assert ddp_loss(modules, fn, 1) is fn
    wrapper = StageLoss(modules, fn)
    b = batch(0)
    assert torch.equal(wrapper(b), fn(b))
    assert set(modules["head"].state_dict()) == {"weight", "bias"}  # modules held as they are
    assert wrapper.parts["head"] is modules["head"]


@pytest.mark.slow  # two torchrun processes importing torch + transformers
def test_two_ranks_through_ddp_equal_one_process_on_the_union_batch(tmp_path):
    cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD),
           str(TESTS / "_ddp_worker.py"), str(tmp_path)]
    r = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{k}.pt", weights_only=True) for k in range(WORLD)]
    # one process, same start, batch j = the ranks' batches of step j together
    modules, optimizer = build()
    fn = loss_of(modules)
    for j in range(STEPS):
        parts = [batch(WORLD * j + k) for k in range(WORLD)]
        optimizer.zero_grad(set_to_none=True)
        fn(tuple(torch.cat(t) for t in zip(*parts, strict=True))).backward()
        optimizer.step()
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            # averaged gradients (and rank 0's start broadcast): the very same steps
            assert torch.equal(ranks[0]["modules"][name][key], ranks[1]["modules"][name][key]), (
                name, key)
            torch.testing.assert_close(ranks[0]["modules"][name][key], value, rtol=1e-5,
                                       atol=1e-6)
    assert ranks[0]["losses"] != ranks[1]["losses"]  # each rank did see its own batches
