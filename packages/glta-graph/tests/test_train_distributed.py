"""LightGCN under torch.distributed: 2 gloo ranks against one process on the same batches,
and a SIGKILL + resume under torchrun (slow: each launch starts 2 Python processes)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from glta_graph import train as train_mod
from glta_graph.train import LightGCNConfig, load_graph_embeddings, train_lightgcn

pytestmark = pytest.mark.slow

WORKER = Path(__file__).resolve().parent / "_distributed_worker.py"
_spec = importlib.util.spec_from_file_location("_distributed_worker", WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


def _union_sampler(world: int, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make a one-process run draw, per global batch, the ranks' batches one after another:
    rank 0's share from the run's own stream, rank r's from its own seeded stream."""
    original = train_mod._sample_share
    streams = [torch.Generator().manual_seed(train_mod._rank_seed(seed, r)) for r in range(world)]

    def union(sampler, config, phase, n, steps, num_items, gen):
        local = config.batch_size // world
        shares = [
            original(sampler, config, phase, n // world, steps, num_items, gen if r == 0 else s)
            for r, s in enumerate(streams)
        ]
        out = []
        for parts in zip(*shares, strict=True):
            blocks = [p[j * local : (j + 1) * local] for j in range(steps) for p in parts]
            out.append(torch.cat(blocks))
        return tuple(out)

    monkeypatch.setattr(train_mod, "_sample_share", union)


def teardown_abort(returncode: int, stderr: str, finished: bool) -> bool:
    """Whether a 2-rank run that exited with ``returncode`` failed only in gloo's teardown.

    With gloo on CPU, about 1 in 25-50 runs aborts (SIGABRT from a gloo thread, pytorch/gloo
    #514) while the ranks leave the process group, after every result is saved. Such a run
    counts as a pass only when ``finished`` (the caller's proof that all ranks got past their
    last barrier) holds and the failure is that signal; any other failure stays a failure.
    """
    if returncode == 0:
        return False
    aborted = "SIGABRT" in stderr or "exitcode  : -6" in stderr or returncode in (-6, 134)
    return finished and aborted


def test_teardown_abort_is_told_apart_from_real_failures() -> None:
    spawn_abort = "torch.multiprocessing.spawn.ProcessExitedException: process 1 terminated " \
                  "with signal SIGABRT"
    assert teardown_abort(1, spawn_abort, finished=True)
    assert not teardown_abort(1, spawn_abort, finished=False)  # died before its last barrier
    assert not teardown_abort(1, "ValueError: bad batch", finished=True)
    assert not teardown_abort(0, "", finished=True)
    assert teardown_abort(1, "exitcode  : -6 (pid: 12)\nerror_file: <N/A>", finished=True)


def _check_exit(returncode: int, err: str, finished: bool) -> None:
    """Fail unless a run exited 0 or aborted only in gloo's teardown (:func:`teardown_abort`)."""
    if teardown_abort(returncode, err, finished):
        warnings.warn("gloo aborted in teardown after the results were saved", stacklevel=2)
        return
    assert returncode == 0, err[-4000:]


def test_two_ranks_match_one_process_on_the_union_batch(tmp_path, monkeypatch) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(WORKER), str(tmp_path)], capture_output=True,
                          text=True, env=env)
    finished = all((tmp_path / f"teardown{r}").is_file() for r in range(2))
    _check_exit(proc.returncode, proc.stderr, finished)
    ranks = [torch.load(tmp_path / f"result{r}.pt", weights_only=False) for r in range(2)]
    data = worker.dataset()
    _union_sampler(2, worker.CONFIG["seed"], monkeypatch)
    ref = train_lightgcn(data, LightGCNConfig(**worker.CONFIG), tmp_path / "ref")
    for got in ranks:  # every rank returns rank 0's result
        assert got["best_epoch"] == ref.best_epoch
        assert got["stopped_early"] == ref.stopped_early
        assert [h["epoch"] for h in got["history"]] == [h["epoch"] for h in ref.history]
        for a, b in zip(got["history"], ref.history, strict=True):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
            assert a["valid"]["recall@20"] == pytest.approx(b["valid"]["recall@20"], abs=1e-6)
    two, one = load_graph_embeddings(tmp_path / "run"), load_graph_embeddings(tmp_path / "ref")
    for a, b in zip(two, one, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    state = torch.load(tmp_path / "run" / "state" / "graph" / "state.pt", weights_only=True)
    assert len(state["rank_rngs"]) == 2 and json.loads(state["config"])["world_size"] == 2


TORCHRUN_ARGS = ["--epochs", "8", "--eval-every", "2", "--dim", "16", "--layers", "2",
                 "--batch-size", "32", "--lr", "0.01", "--seed", "1", "--quiet"]


def _torchrun(data: Path, run: Path, **kwargs) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "glta_cli", "graph", "train", str(data), "--out", str(run), *TORCHRUN_ARGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True, **kwargs)


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (torchrun starts each rank in a session of
    its own, so killing the launcher's process group would leave the ranks running)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, tree = [pid], []
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    for p in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    for p in tree:  # the ranks are not our children: wait until they are gone
        while Path(f"/proc/{p}").exists() and "Z" not in _state(p):
            time.sleep(0.01)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def test_torchrun_kill_and_resume_continues_to_the_same_result(tmp_path) -> None:
    spec = importlib.util.spec_from_file_location(
        "_test_train", Path(__file__).resolve().parent / "test_train.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = tmp_path / "data"
    module.clustered_dataset(users=400, items=120).save(data)

    whole = _torchrun(data, tmp_path / "whole")
    out, err = whole.communicate(timeout=600)
    assert "best epoch" in out  # rank 0 prints it once the run's files are written
    _check_exit(whole.returncode, err, (tmp_path / "whole" / "graph").is_dir())

    killed = _torchrun(data, tmp_path / "killed")
    state_json = tmp_path / "killed" / "state" / "graph" / "state.json"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and killed.poll() is None:
        if state_json.is_file() and json.loads(state_json.read_text())["epoch"] >= 1:
            _kill_tree(killed.pid)
            break
        time.sleep(0.02)
    killed.wait(timeout=60)
    epoch = json.loads(state_json.read_text())["epoch"]
    time.sleep(1.0)
    assert json.loads(state_json.read_text())["epoch"] == epoch, "a rank outlived the kill"
    assert 1 <= epoch < 7 and not (tmp_path / "killed" / "graph").exists(), "not killed mid-run"

    resumed = _torchrun(data, tmp_path / "killed")
    out, err = resumed.communicate(timeout=600)
    assert "best epoch" in out
    _check_exit(resumed.returncode, err, (tmp_path / "killed" / "graph").is_dir())
    for a, b in zip(load_graph_embeddings(tmp_path / "whole"),
                    load_graph_embeddings(tmp_path / "killed"), strict=True):
        assert torch.equal(a, b)
    hist = [json.loads((tmp_path / r / "state" / "graph" / "state.json").read_text())["history"]
            for r in ("whole", "killed")]
    assert [h["loss"] for h in hist[0]] == [h["loss"] for h in hist[1]]
    assert [h.get("valid") for h in hist[0]] == [h.get("valid") for h in hist[1]]
