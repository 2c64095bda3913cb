"""Worker for test_train_distributed.py: ``train_lightgcn`` on 2 gloo ranks (CPU).

``python _distributed_worker.py OUT`` spawns the ranks; they train into ``OUT/run``, each
writes its returned result to ``OUT/result{rank}.pt`` and, once every rank has, touches
``OUT/teardown{rank}`` before leaving the process group.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from glta_graph.train import LightGCNConfig, train_lightgcn

WORLD = 2
# batch_size is the global batch: 32 triples per rank per step
CONFIG = dict(dim=16, layers=2, batch_size=64, lr=0.01, eval_every=1, patience=2, seed=3,
              ks=(5, 10, 20), num_threads=1, epochs=3, hard_negatives=2)


def dataset():
    """The clustered synthetic dataset of test_train.py (80 users, 480 training pairs)."""
    path = Path(__file__).resolve().parent / "test_train.py"
    spec = importlib.util.spec_from_file_location("_test_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.clustered_dataset()


def _run(rank: int, out: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{Path(out) / 'rendezvous'}", rank=rank, world_size=WORLD
    )
    result = train_lightgcn(dataset(), LightGCNConfig(**CONFIG), Path(out) / "run")
    torch.save(
        {"best_epoch": result.best_epoch, "best_valid": result.best_valid,
         "history": result.history, "stopped_early": result.stopped_early},
        Path(out) / f"result{rank}.pt",
    )
    dist.barrier()  # no rank tears gloo down while a peer still talks to it
    # past the barrier every rank has saved its result: what follows is teardown only (gloo
    # can abort there, see test_train_distributed.teardown_abort)
    (Path(out) / f"teardown{rank}").touch()
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(_run, args=(sys.argv[1],), nprocs=WORLD)
