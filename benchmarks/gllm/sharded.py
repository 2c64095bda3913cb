"""The item-sharded GLLM head on several processes: traffic per step and equality with one.

Spawns ``--world`` ranks (gloo on the CPU, NCCL with ``--device cuda``), each holding its
``torch.tensor_split`` share of an ``(items, H)`` head, and runs one training step of
``linear_cross_entropy`` (forward + backward) and one ``topk_excluding`` with
``process_group``. Every collective the kernels issue is counted (its payload per rank:
the bytes of the tensor this rank contributes). Rank 0 then runs the same step unsharded
on the whole weight and reports the largest differences. On a 2-core CPU this is a
correctness and traffic check, not a speed-up (the ranks share the cores).

    uv run python benchmarks/gllm/sharded.py --world 2 --rows 256 --hidden 576 \\
        --items 100003 --out benchmarks/gllm/results/cpu_sharded_gloo.jsonl

Writes one JSON line (appended to ``--out``) with the command, git commit, CPU model
(``lscpu``), torch version and date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from glta_gllm import linear_cross_entropy, shard_range, topk_excluding
from glta_gllm._sharded import gather_rows

_COUNTED = ("all_reduce", "all_gather", "gather", "broadcast")


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class _Traffic:
    """Counts the collectives issued through ``torch.distributed`` (payload per rank)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self._orig = {name: getattr(dist, name) for name in _COUNTED}
        for name in _COUNTED:
            setattr(dist, name, self._wrap(name))

    def _wrap(self, name):
        orig = self._orig[name]

        def counted(*args, **kwargs):
            tensor = args[1] if name == "all_gather" else args[0]
            self.calls.append((name, tensor.numel() * tensor.element_size()))
            return orig(*args, **kwargs)

        return counted

    def take(self) -> list[tuple[str, int]]:
        calls, self.calls = self.calls, []
        return calls

    def restore(self) -> None:
        for name, fn in self._orig.items():
            setattr(dist, name, fn)


def _inputs(args, device):
    g = torch.Generator().manual_seed(0)
    dtype = getattr(torch, args.dtype)
    hidden = torch.randn(args.rows, args.hidden, generator=g).to(device, dtype)
    weight = (torch.randn(args.items, args.hidden, generator=g) / args.hidden**0.5).to(
        device, dtype
    )
    targets = torch.randint(0, args.items, (args.rows,), generator=g).to(device)
    queries = torch.randn(args.users, args.hidden, generator=g).to(device, dtype)
    mask = torch.rand(args.users, args.items, generator=g) < args.exclude
    return hidden, weight, targets, queries, mask.float().to_sparse_csr().to(device)


def _step(h, w, t, group):
    h = h.clone().requires_grad_()
    w = w.clone().requires_grad_()
    loss = linear_cross_entropy(h, w, t, process_group=group)
    loss.backward()
    return loss.detach(), h.grad, w.grad


def _rank(rank: int, args, rendezvous: str, queue) -> None:
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    dist.init_process_group(
        "nccl" if cuda else "gloo",
        init_method=f"file://{rendezvous}",
        rank=rank,
        world_size=args.world,
    )
    group = dist.group.WORLD
    hidden, weight, targets, queries, exclude = _inputs(args, device)
    a, e = shard_range(args.items, group)
    shard = weight[a:e].clone()

    def sync():
        if cuda:
            torch.cuda.synchronize()

    traffic = _Traffic()
    _step(hidden, shard, targets, group)  # warm-up
    traffic.take()
    times = []
    for _ in range(args.repeats):
        dist.barrier()
        sync()
        t0 = time.perf_counter()
        loss, gh, gw = _step(hidden, shard, targets, group)
        sync()
        times.append(time.perf_counter() - t0)
    step_calls = traffic.take()
    per_step = step_calls[: len(step_calls) // args.repeats]
    dist.barrier()
    t0 = time.perf_counter()
    scores, idx = topk_excluding(queries, shard, args.k, exclude=exclude, process_group=group)
    sync()
    topk_seconds = time.perf_counter() - t0
    topk_calls = traffic.take()
    traffic.restore()
    full_gw = gather_rows(gw, group)
    if rank == 0:
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            ref_loss, ref_gh, ref_gw = _step(hidden, weight, targets, None)
        sync()
        one = (time.perf_counter() - t0) / args.repeats
        ref_scores, ref_idx = topk_excluding(queries, weight, args.k, exclude=exclude)
        elem = torch.finfo(getattr(torch, args.dtype)).bits // 8
        queue.put(
            {
                "world": args.world,
                "backend": "nccl" if cuda else "gloo",
                "device": args.device,
                "threads_per_rank": args.threads,
                "dtype": args.dtype,
                "shape": {
                    "rows": args.rows,
                    "hidden": args.hidden,
                    "items": args.items,
                    "users": args.users,
                    "k": args.k,
                },
                "rank0_items": e - a,
                "weight_shard_bytes_rank0": (e - a) * args.hidden * elem,
                "weight_bytes_whole": args.items * args.hidden * elem,
                "step_collectives_rank0": per_step,
                "step_bytes_per_rank": sum(b for _, b in per_step),
                "step_bytes_formula": 4 * (3 * args.rows + args.rows * args.hidden) + 16,
                "logits_bytes_if_gathered": args.rows * args.items * 4,
                "topk_collectives_rank0": topk_calls,
                "topk_bytes_per_rank": sum(b for _, b in topk_calls),
                "loss_sharded": float(loss),
                "loss_one_process": float(ref_loss),
                "loss_abs_diff": abs(float(loss) - float(ref_loss)),
                "grad_hidden_max_abs_diff": float((gh - ref_gh).abs().max()),
                "grad_weight_max_abs_diff": float((full_gw - ref_gw).abs().max()),
                "grad_weight_max_abs": float(ref_gw.abs().max()),
                "topk_indices_equal": bool(torch.equal(idx, ref_idx)),
                "topk_scores_max_abs_diff": float((scores - ref_scores).abs().max()),
                "seconds_sharded_step_median": sorted(times)[len(times) // 2],
                "seconds_one_process_step": one,
                "seconds_sharded_topk": topk_seconds,
            }
        )
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--items", type=int, default=100_003)
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument(
        "--exclude",
        type=float,
        default=0.001,
        help="share of (user, item) pairs excluded from the top-k",
    )
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64", "bfloat16"))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="append the JSON line to this file")
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(
            _rank,
            args=(args, os.path.join(tmp, "rendezvous"), queue),
            nprocs=args.world,
            start_method="spawn",
        )
    row = {
        "benchmark": "gllm_sharded",
        "command": " ".join(["uv run python", *sys.argv]),
        "git_commit": _git_commit(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **queue.get(),
    }
    line = json.dumps(row)
    print(line)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")


if __name__ == "__main__":
    main()
