"""LightGCN benchmarks: seconds per epoch per propagation backend, and quality runs.

Two sub-commands (run from the repository root):

``speed``  times training steps (propagation + BPR + backward + Adam) for each backend on
           each dataset and reports seconds per epoch (mean step time x steps per epoch,
           plus the epoch's sampling time), and peak memory.

    uv run python benchmarks/graph/lightgcn_bench.py speed \\
        --datasets ml-100k,ml-latest-small,gowalla --backends csr,coo --steps 20

           Backends: csr, coo, torch-sparse, auto, and torch-sparse-native (torch-sparse's own
           autograd instead of the library's symmetric backward; needs the extra).

``train``  trains through the public API (``train_lightgcn``), in chunks of ``--chunk``
           epochs that resume from ``RUN/state/graph``; after every chunk it ranks the test
           split and appends one JSON line (epoch, loss, seconds/epoch, valid and test
           metrics, wall time, peak memory) to ``--log``. Model selection is never done on
           test: with a validation split the saved embeddings are the best-valid epoch's,
           without one (Gowalla's published split has none) the last epoch's. The test
           numbers per chunk are a learning curve for the record, nothing more.

    uv run python benchmarks/graph/lightgcn_bench.py train --dataset gowalla \\
        --epochs 1000 --chunk 20 --batch-size 2048 --lr 1e-3 --max-minutes 60 \\
        --log benchmarks/graph/gowalla_cpu.jsonl

Datasets: ``ml-100k`` (embedded, RecBole's copy; default random 70/10/20 split, seed 0),
``ml-latest-small`` and ``gowalla`` read from ``../shared/data`` (or ``$GLTA_SHARED_DATA``)
in their public formats. Gowalla keeps the paper's train/test split with no validation
split (``presplit_valid_ratio=0``), as in the LightGCN paper.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch
from glta_graph.adjacency import GraphPropagator, normalized_adjacency
from glta_graph.data import PrepareConfig, load_dataset
from glta_graph.evaluate import evaluate_embeddings, update_metrics
from glta_graph.lightgcn import LightGCN
from glta_graph.malloc import keep_freed_memory
from glta_graph.train import (
    LightGCNConfig,
    NegativeSampler,
    _bpr_loss,
    load_graph_embeddings,
    train_lightgcn,
)

ROOT = Path(__file__).resolve().parents[2]


def shared_data() -> Path:
    env = os.environ.get("GLTA_SHARED_DATA")
    return Path(env) if env else ROOT / ".." / "shared" / "data"


def load(name: str, seed: int = 0):
    """Load one benchmark dataset as ``Interactions``."""
    if name == "ml-100k":  # the embedded copy, or a RecBole folder in the shared data
        local = shared_data() / "ml-100k"
        return load_dataset(local if local.is_dir() else "ml-100k",
                            config=PrepareConfig(seed=seed, name="ml-100k"))
    if name == "ml-latest-small":
        return load_dataset(shared_data() / "ml-latest-small", format="ml-latest",
                            config=PrepareConfig(seed=seed))
    if name == "gowalla":
        return load_dataset(shared_data() / "gowalla", format="lightgcn",
                            config=PrepareConfig(presplit_valid_ratio=0.0, name="gowalla"))
    raise SystemExit(f"unknown dataset {name!r}: ml-100k, ml-latest-small, gowalla")


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this process (MiB) and, on CUDA, peak allocated GPU MiB."""
    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def environment(device: torch.device) -> dict[str, object]:
    env = {"torch": torch.__version__, "python": platform.python_version(),
           "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
           "device": str(device), "loadavg_1m": os.getloadavg()[0],
           "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


class NativeTorchSparse(GraphPropagator):
    """``"torch-sparse"`` with torch-sparse's own autograd (``A^T dY`` through its CSC copy).

    Benchmark-only: the library's ``"torch-sparse"`` backend uses the symmetric backward
    ``dX = A dY``; ``--backends torch-sparse-native`` measures what that saves.
    """

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from torch_sparse import matmul

        return matmul(self._mat, x)


def cmd_speed(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    rows = []
    for name in args.datasets.split(","):
        data = load(name)
        adj = normalized_adjacency(data.train)
        sampler = NegativeSampler(data.train)
        n_pairs = sampler.users.numel()
        steps_per_epoch = -(-n_pairs // args.batch_size)
        gen = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        users, pos = sampler.positives(n_pairs, "user", gen)
        neg = sampler.sample(users, gen)
        sample_s = time.perf_counter() - t0
        users, pos, neg = (t.to(device) for t in (users, pos, neg))
        for backend in args.backends.split(","):
            if backend == "torch-sparse-native":
                prop = NativeTorchSparse(adj, backend="torch-sparse", device=device)
            else:
                prop = GraphPropagator(adj, backend=backend, device=device)
            model = LightGCN(data.num_users, data.num_items, args.dim, args.layers).to(device)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            n = min(args.steps, steps_per_epoch)
            times = []
            for step in range(n + args.warmup):
                sl = slice((step % steps_per_epoch) * args.batch_size,
                           (step % steps_per_epoch + 1) * args.batch_size)
                sync(device)
                t = time.perf_counter()
                ue, ie = model(prop)
                loss = _bpr_loss(model, ue, ie, users[sl], pos[sl], neg[sl], 1e-4)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                float(loss.detach())
                sync(device)
                if step >= args.warmup:
                    times.append(time.perf_counter() - t)
            times.sort()
            step_s = sum(times) / len(times)
            row = {
                "dataset": name,
                "backend": backend if backend == "torch-sparse-native" else prop.backend,
                "users": data.num_users, "items": data.num_items, "train": n_pairs,
                "nnz_adj": prop.nnz,
                "batch_size": args.batch_size, "steps_per_epoch": steps_per_epoch,
                "timed_steps": len(times), "step_s_mean": step_s,
                "step_s_median": times[len(times) // 2],
                "sampling_s_per_epoch": sample_s,
                "seconds_per_epoch": step_s * steps_per_epoch + sample_s,
                **peak_memory(device),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"environment": {**environment(device), "malloc": args.malloc_detail},
              "command": " ".join(sys.argv), "rows": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


def cmd_train(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    data = load(args.dataset, args.data_seed)
    has_valid = data.valid._nnz() > 0
    run = Path(args.run_dir or f"runs/bench-{args.dataset}")
    cfg = dict(dim=args.dim, layers=args.layers, batch_size=args.batch_size, lr=args.lr,
               l2=args.l2, eval_every=args.eval_every if has_valid else 0,
               patience=args.patience, seed=args.seed, backend=args.backend,
               device=args.device, sampling=args.sampling, num_threads=args.threads,
               loss=args.loss, negatives=args.negatives, temperature=args.temperature,
               similarity=args.similarity, warmup_epochs=args.warmup_epochs,
               warmup_lr=args.warmup_lr, hard_negatives=args.hard_negatives)
    log = Path(args.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    header = {"kind": "config", "dataset": data.stats(), "command": " ".join(sys.argv),
              "config": cfg, "max_epochs": args.epochs, "environment": environment(device)}
    with log.open("a") as fh:
        fh.write(json.dumps(header) + "\n")
    start = time.perf_counter()
    epochs_done, result = 0, None
    while epochs_done < args.epochs:
        target = min(args.epochs, epochs_done + args.chunk)
        result = train_lightgcn(data, LightGCNConfig(epochs=target, **cfg), run, resume=True)
        epochs_done = len(result.history)
        ue, ie = load_graph_embeddings(run, data.fingerprint, device=device)
        test = evaluate_embeddings(ue, ie, data, "test", (10, 20))
        recent = result.history[-min(args.chunk, len(result.history)):]
        line = {
            "kind": "chunk", "epoch": epochs_done, "saved_epoch": result.best_epoch,
            "loss": result.history[-1]["loss"],
            "seconds_per_epoch": sum(h["seconds"] for h in recent) / len(recent),
            "train_seconds": result.seconds, "wall_seconds": time.perf_counter() - start,
            "valid_recall@20": result.best_valid.get("recall@20"),
            "test_recall@20": test["recall@20"], "test_ndcg@20": test["ndcg@20"],
            **peak_memory(device),
        }
        with log.open("a") as fh:
            fh.write(json.dumps(line) + "\n")
        print(json.dumps(line), flush=True)
        if result.stopped_early or epochs_done < target:
            break
        if args.max_minutes and time.perf_counter() - start > args.max_minutes * 60:
            break
    ue, ie = load_graph_embeddings(run, data.fingerprint, device=device)
    final = evaluate_embeddings(ue, ie, data, "test", (5, 10, 20))
    update_metrics(run, "lightgcn", "test", final)
    summary = {"kind": "final", "epochs_run": epochs_done, "saved_epoch": result.best_epoch,
               "stopped_early": result.stopped_early, "train_seconds": result.seconds,
               "wall_seconds": time.perf_counter() - start, "test": final,
               "valid": result.best_valid, **peak_memory(device)}
    with log.open("a") as fh:
        fh.write(json.dumps(summary) + "\n")
    print(json.dumps(summary), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("speed", "train"):
        p = sub.add_parser(name)
        p.add_argument("--device", default="cpu")
        p.add_argument("--dim", type=int, default=64)
        p.add_argument("--layers", type=int, default=3)
        p.add_argument("--batch-size", type=int, default=2048)
        p.add_argument("--threads", type=int, default=None)
        p.add_argument("--malloc", choices=("system", "keep"), default="system",
                       help="glibc malloc as it is (system) or as `glta` sets it (keep: "
                            "glta_graph.malloc.keep_freed_memory)")
    s = sub.choices["speed"]
    s.add_argument("--datasets", default="ml-100k,ml-latest-small,gowalla")
    s.add_argument("--backends", default="csr,coo")
    s.add_argument("--steps", type=int, default=20)
    s.add_argument("--warmup", type=int, default=2)
    s.add_argument("--out", default=None)
    t = sub.choices["train"]
    t.add_argument("--dataset", default="ml-100k")
    t.add_argument("--data-seed", type=int, default=0)
    t.add_argument("--epochs", type=int, default=1000)
    t.add_argument("--chunk", type=int, default=20)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--l2", type=float, default=1e-4)
    t.add_argument("--eval-every", type=int, default=5)
    t.add_argument("--patience", type=int, default=10)
    t.add_argument("--seed", type=int, default=2020)
    t.add_argument("--backend", default="auto")
    t.add_argument("--sampling", default="user")
    t.add_argument("--loss", default="bpr", help="bpr (the paper) or softmax")
    t.add_argument("--negatives", type=int, default=1024, help="softmax: shared negatives")
    t.add_argument("--temperature", type=float, default=0.1, help="softmax: temperature")
    t.add_argument("--similarity", default="cosine", help="softmax: cosine or dot")
    t.add_argument("--warmup-epochs", type=int, default=0, help="softmax epochs before --loss")
    t.add_argument("--warmup-lr", type=float, default=5e-3, help="lr of the warm-up epochs")
    t.add_argument("--hard-negatives", type=int, default=1,
                   help="BPR: candidates per triple, the highest-scored one is used (1 = uniform)")
    t.add_argument("--max-minutes", type=float, default=0.0)
    t.add_argument("--run-dir", default=None)
    t.add_argument("--log", required=True)
    args = parser.parse_args(argv)
    args.malloc_detail = keep_freed_memory(env={"GLTA_MALLOC": args.malloc}).detail
    if args.threads:
        torch.set_num_threads(args.threads)
    {"speed": cmd_speed, "train": cmd_train}[args.command](args)


if __name__ == "__main__":
    main()
