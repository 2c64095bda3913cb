"""Stage 3 under 2 gloo processes: the flat gradient all-reduce against DistributedDataParallel.

The real stage-3 (user-item) training step on MovieLens-100K: ``train_user_item`` builds its
modules, optimiser, batches and loss exactly as in training, and this script takes them over
just before the loop (``run_loop`` is swapped for a function that hands them back). Two
processes (``torch.multiprocessing.spawn``, gloo, CPU) then run, per model:

- ``flat``: ``loss_fn`` on the rank's batch, backward, ``_common.average_gradients`` (one
  all-reduce of one flat buffer after the backward), Adam step, as ``run_loop`` does;
- ``ddp``: ``_ddp.ddp_loss``: the modules in a wrapper whose ``forward`` is the stage's
  loss, in ``torch.nn.parallel.DistributedDataParallel`` (bucketed all-reduces started by
  autograd hooks during the backward), backward, Adam step. (The result files of
  2026-12-03 were made with the same wrapper defined in this script, before ``ddp_loss``
  existed; it differed only in also broadcasting the frozen LLM at construction.)

Recorded per model: both paths from the same start for ``--check-steps`` steps (max abs
difference of the trained parameters between the paths and between the ranks), one process
on the union batch (rank ``r``'s batch of step ``j`` is batch ``2j + r``, as in ``run_loop``)
for the same steps, a control without any reduction (the ranks' parameters must differ),
then ``--time-steps`` timed steps of each path interleaved (ABBA order, a barrier before
each step; a step's wall time is the slower rank's, its CPU time the sum of both processes'
CPU seconds, which machine load disturbs less) and the bytes each path all-reduces per
step. Graph embeddings are seeded random (their values do not change the step's cost); the
item projector is a seeded stand-in for stage 2's; profile/prediction text is left out (no
generation).

    nice -n 10 uv run python benchmarks/align/ddp_vs_flat.py --models tiny,smollm2 \\
        --json benchmarks/align/results/ddp_vs_flat_ml100k_cpu_xeon_amx_2026-12-03.json
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from profile_gen import cpu_model, git_commit  # this folder's benchmark helpers
from torch import nn

WORLD = 2
MODELS = ("tiny", "smollm2", "smollm2-lora")
GRAPH_DIM = 64


class _Captured(Exception):
    """Raised by the stand-in ``run_loop`` to hand the stage's training pieces back."""

    def __init__(self, kwargs: dict) -> None:
        super().__init__("captured")
        self.kwargs = kwargs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare_run(run: Path, data, hidden: int, seed: int) -> None:
    """RUN/dataset, seeded random RUN/graph and a seeded item projector (stage 2 stand-in)."""
    from glta_align.item_text import ITEM_PROJECTOR_DIR, STAGE2_OUTPUT_DIR
    from glta_align.projector import NodeProjector
    from glta_gllm.checkpoint import save_artifact

    g = torch.Generator().manual_seed(seed)
    data.save(run / "dataset")
    save_artifact(run / "graph",
                  {"user_embedding": torch.randn(data.num_users, GRAPH_DIM, generator=g),
                   "item_embedding": torch.randn(data.num_items, GRAPH_DIM, generator=g)},
                  {"dim": GRAPH_DIM}, dataset_fingerprint=data.fingerprint)
    torch.manual_seed(seed)
    NodeProjector(GRAPH_DIM, hidden, init_scale=0.02).save_pretrained(
        run / STAGE2_OUTPUT_DIR / ITEM_PROJECTOR_DIR, dataset_fingerprint=data.fingerprint,
        role="item")


def _load_llm(name: str, dtype: str):
    from glta_align import load_llm, load_tokenizer, tiny_llm

    if name == "tiny":  # the glta-align tests' LLM
        return tiny_llm(load_tokenizer(), hidden_size=64, num_layers=2, seed=0)
    # smollm2-lora: LoraSettings' defaults (r 8 on q_proj, v_proj) trained too
    return load_llm(None, dtype=dtype, device="cpu",
                    lora={} if name == "smollm2-lora" else None)


def _capture(data, run: Path, llm, cfg) -> dict:
    """``train_user_item``'s ``run_loop`` arguments (modules, optimiser, batches, loss)."""
    import glta_align.user_item as ui

    original = ui.run_loop

    def grab(**kwargs):
        raise _Captured(kwargs)

    ui.run_loop = grab
    try:
        ui.train_user_item(data, run, cfg, llm=llm, resume=False)
    except _Captured as c:
        return c.kwargs
    finally:
        ui.run_loop = original
    raise RuntimeError("train_user_item returned without reaching its loop")


def _bootstrap_ratio(flat: list[float], ddp: list[float], n: int = 2000) -> list[float]:
    """95% interval of median(ddp) / median(flat), resampling the interleaved step pairs."""
    rng = np.random.default_rng(0)
    a, b = np.asarray(flat), np.asarray(ddp)
    idx = rng.integers(0, len(a), size=(n, len(a)))
    ratios = np.median(b[idx], axis=1) / np.median(a[idx], axis=1)
    return [round(float(x), 4) for x in np.percentile(ratios, [2.5, 97.5])]


def _flat_params(params: list[nn.Parameter]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).double() for p in params])


def _model(name: str, args, rank: int, data, root: Path) -> dict:
    from glta_align import UserItemConfig
    from glta_align._common import average_gradients
    from glta_align._ddp import ddp_loss
    from glta_align.user_item import IGNORE

    torch.manual_seed(0)  # the LoRA init: the same on every rank, as in train_user_item
    llm = _load_llm(name, args.dtype)
    run = root / name
    if rank == 0:
        _prepare_run(run, data, llm.hidden_size, seed=0)
    dist.barrier()
    cfg = UserItemConfig(batch_size=args.batch_size, use_profile=False, use_predict=False,
                         epochs=1, seed=0)
    kw = _capture(data, run, llm, cfg)
    modules, optimizer, loss_fn = kw["modules"], kw["optimizer"], kw["loss_fn"]
    on_step = kw["on_step"] or (lambda: None)
    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    # full batches whose targets are all real items: the mean loss of the union batch then
    # equals the mean of the ranks' losses
    batches = [b for b in kw["make_batches"](0) if len(b) == args.batch_size
               and all(t != IGNORE for s in b for t in s.targets)]
    need = WORLD * max(args.check_steps, args.time_steps)
    if len(batches) < need:
        raise SystemExit(f"{name}: {len(batches)} usable batches, need {need}")
    start_modules = copy.deepcopy({n: m.state_dict() for n, m in modules.items()})
    start_optim = copy.deepcopy(optimizer.state_dict())

    def reset() -> None:
        for n, m in modules.items():
            m.load_state_dict(start_modules[n])
        optimizer.load_state_dict(copy.deepcopy(start_optim))
        optimizer.zero_grad(set_to_none=True)

    def flat_step(batch) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(batch).backward()
        average_gradients(params, WORLD)
        optimizer.step()
        on_step()

    t = time.perf_counter()
    ddp = ddp_loss(modules, loss_fn, WORLD)
    ddp_init_s = time.perf_counter() - t

    def ddp_step(batch) -> None:
        optimizer.zero_grad(set_to_none=True)
        ddp(batch).backward()
        optimizer.step()
        on_step()

    def unreduced_step(batch) -> None:  # control: no reduction, the ranks must drift apart
        optimizer.zero_grad(set_to_none=True)
        loss_fn(batch).backward()
        optimizer.step()
        on_step()

    steps = {"flat": flat_step, "ddp": ddp_step}
    mine = lambda j: batches[WORLD * j + rank]  # noqa: E731  (run_loop's assignment)

    # equality: each path from the same start, then one process on the union batch
    trained, ranks_diff = {}, {}
    for path, step in {**steps, "unreduced": unreduced_step}.items():
        reset()
        for j in range(args.check_steps):
            step(mine(j))
        trained[path] = _flat_params(params)
        both = [torch.empty_like(trained[path]) for _ in range(WORLD)]
        dist.all_gather(both, trained[path])
        ranks_diff[path] = float((both[0] - both[1]).abs().max())
    union_diff = None
    if rank == 0:  # hooks of the DDP reducer stay idle outside ddp.forward
        reset()
        for j in range(args.check_steps):
            optimizer.zero_grad(set_to_none=True)
            loss_fn(batches[WORLD * j] + batches[WORLD * j + 1]).backward()
            optimizer.step()
            on_step()
        union_diff = float((_flat_params(params) - trained["flat"]).abs().max())
    dist.barrier()

    # timing: interleaved ABBA, a barrier before each step, slower rank's time
    reset()
    times: dict[str, list[float]] = {"flat": [], "ddp": []}
    cpu: dict[str, list[float]] = {"flat": [], "ddp": []}
    for j in range(args.time_steps):
        order = ("flat", "ddp") if j % 2 == 0 else ("ddp", "flat")
        for path in order:
            dist.barrier()
            t, c = time.perf_counter(), time.process_time()
            steps[path](mine(j))
            took = torch.tensor([time.perf_counter() - t], dtype=torch.float64)
            used = torch.tensor([time.process_time() - c], dtype=torch.float64)
            dist.all_reduce(took, op=dist.ReduceOp.MAX)
            dist.all_reduce(used, op=dist.ReduceOp.SUM)
            times[path].append(float(took))
            cpu[path].append(float(used))
    # the flat all-reduce alone on a buffer of the same size (median of 20)
    flat_buf = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype)
    reduce_s = []
    for _ in range(20):
        dist.barrier()
        t = time.perf_counter()
        dist.all_reduce(flat_buf)
        reduce_s.append(time.perf_counter() - t)
    log = ddp._get_ddp_logging_data()
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "llm": llm.source, "llm_precision": llm.precision, "hidden_size": llm.hidden_size,
        "lora": llm.lora is not None, "trainable_modules": sorted(modules),
        "trainable_params": sum(p.numel() for p in params),
        "bytes_allreduced_per_step": {
            "flat": sum(p.numel() * p.element_size() for p in params),
            "ddp": int(sum(p.numel() * p.element_size() for p in ddp.parameters()
                           if p.requires_grad)),
            "ddp_logged_total_parameter_size_bytes": log.get("total_parameter_size_bytes"),
            "ddp_bucket_sizes": log.get("bucket_sizes"),
        },
        "all_reduces_per_step": {"flat": 1,
                                 "ddp": len(str(log.get("bucket_sizes", "")).split(","))},
        "step_seconds": {k: [round(x, 5) for x in v] for k, v in times.items()},
        "median_step_seconds": {k: round(v, 5) for k, v in med.items()},
        "ratio_ddp_over_flat": round(med["ddp"] / med["flat"], 4),
        "ratio_bootstrap_95": _bootstrap_ratio(times["flat"], times["ddp"]),
        "step_cpu_seconds_both_ranks": {k: [round(x, 5) for x in v] for k, v in cpu.items()},
        "median_step_cpu_seconds": {k: round(statistics.median(v), 5) for k, v in cpu.items()},
        "cpu_ratio_ddp_over_flat": round(statistics.median(cpu["ddp"])
                                         / statistics.median(cpu["flat"]), 4),
        "cpu_ratio_bootstrap_95": _bootstrap_ratio(cpu["flat"], cpu["ddp"]),
        "flat_allreduce_alone_median_seconds": round(statistics.median(reduce_s), 6),
        "ddp_construction_seconds": round(ddp_init_s, 3),
        "check_steps": args.check_steps,
        "max_abs_diff": {"ddp_vs_flat": float((trained["ddp"] - trained["flat"]).abs().max()),
                         **{f"rank0_vs_rank1_{k}": v for k, v in ranks_diff.items()},
                         "one_process_union_vs_flat": union_diff},
        "ddp_options": {"forward_sync_buffers": False, "find_unused_parameters": False,
                        "gradient_as_bucket_view": False, "static_graph": False},
    }
    return out


def _worker(rank: int, args, port: int, result_file: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    from glta_graph.data import load_dataset

    data = load_dataset("ml-100k")
    results = {}
    for name in args.models.split(","):
        t = time.perf_counter()
        results[name] = _model(name, args, rank, data, Path(args.root))
        results[name]["model_seconds"] = round(time.perf_counter() - t, 1)
        if rank == 0:
            print(f"{name}: {json.dumps(results[name])}", file=sys.stderr, flush=True)
    if rank == 0:
        Path(result_file).write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="tiny,smollm2",
                    help="comma list of tiny, smollm2, smollm2-lora")
    ap.add_argument("--dtype", default="float32", help="SmolLM2 dtype (load_llm's)")
    ap.add_argument("--batch-size", type=int, default=8, help="users per rank and step")
    ap.add_argument("--check-steps", type=int, default=3)
    ap.add_argument("--time-steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    for name in args.models.split(","):
        if name not in MODELS:
            raise SystemExit(f"--models: unknown model {name!r} ({', '.join(MODELS)})")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        args.root = root
        result_file = str(Path(root) / "result.json")
        mp.spawn(_worker, args=(args, _free_port(), result_file), nprocs=WORLD, join=True)
        models = json.loads(Path(result_file).read_text())
    out = {
        "command": " ".join(["uv run python", *sys.argv]),
        "commit": git_commit(), "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
        "amx": "amx_tile" in Path("/proc/cpuinfo").read_text(),
        "load_average_at_end": os.getloadavg(),
        "processes": WORLD, "backend": "gloo", "threads_per_process": args.threads,
        "torch": torch.__version__, "dataset": "ml-100k",
        "batch_size_per_rank": args.batch_size, "wall_seconds": round(time.perf_counter() - t0, 1),
        "models": models,
    }
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        path = Path(args.json)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(path)


if __name__ == "__main__":
    main()
