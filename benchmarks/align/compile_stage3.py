"""Stage 3 eagerly and with ``[user_item] compile`` (torch.compile of the LLM), on a run's inputs.

For a run whose stages 1-2 (and profile generation) have finished, this copies the inputs
stage 3 reads (``dataset``, ``graph``, stage 2's outputs, ``profiles.jsonl``) into a scratch
folder per variant and runs ``glta_align.train_user_item`` with the run's own stage-3
settings, except ``--epochs`` epochs over ``--max-users`` training users, each followed by
the valid evaluation of every user (patience 1: one validation per epoch, as the pipeline
does). Both variants share one loaded LLM; ``--order`` sets which goes first. Reported per
variant: wall seconds of the stage, its training throughput record (``train_seconds``,
achieved GFLOP/s), and the valid metrics (the two should agree closely; bf16 compiled and
eager kernels round differently).

    uv run python benchmarks/align/compile_stage3.py RUN --max-users 160 --json OUT.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from glta_align import load_llm, train_user_item
from glta_align.item_text import GLLM_HEAD_DIR, ITEM_PROJECTOR_DIR, STAGE2_OUTPUT_DIR
from glta_align.profiles import PROFILES_NAME
from glta_cli.config import load_config
from glta_cli.runs import load_dataset_dir
from profile_gen import cpu_model, git_commit  # this folder's benchmark helpers

# what stage 3 reads from a run (the dataset and graph folders are the pipeline's own names)
INPUTS = ("dataset", "graph", STAGE2_OUTPUT_DIR, ITEM_PROJECTOR_DIR, GLLM_HEAD_DIR, PROFILES_NAME)


def copy_inputs(run: Path, dest: Path) -> None:
    """Copy what stage 3 reads from the finished ``run`` (:data:`INPUTS`, those present) into
    the existing folder ``dest``."""
    for name in INPUTS:
        src = run / name
        if src.is_dir():
            shutil.copytree(src, dest / name)
        elif src.is_file():
            shutil.copy2(src, dest / name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="a run directory with stages 1-2 finished")
    ap.add_argument("--max-users", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--order", default="eager,compiled")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    config = load_config("default", args.run / "resolved-config.toml")
    data = load_dataset_dir(args.run / "dataset")
    base = dataclasses.replace(config.user_item, epochs=args.epochs, max_users=args.max_users,
                               patience=1)
    llm_cfg = config.llm
    t = time.perf_counter()
    llm = load_llm(llm_cfg.model_name_or_path, dtype=llm_cfg.dtype, device=llm_cfg.device,
                   cache_dir=llm_cfg.cache_dir, init=llm_cfg.init, init_seed=base.seed)
    load_s = time.perf_counter() - t
    results = {}
    with tempfile.TemporaryDirectory(prefix="glta-compile-ab-") as scratch:
        for variant in args.order.split(","):
            run = Path(scratch) / variant
            run.mkdir()
            copy_inputs(args.run, run)
            cfg = dataclasses.replace(base, compile=variant == "compiled")
            t = time.perf_counter()
            res = train_user_item(data, run, cfg, llm=llm, resume=False)
            results[variant] = {"seconds": time.perf_counter() - t,
                                "throughput": res.throughput,
                                "valid": res.valid_history,
                                "epoch_losses": res.epoch_losses}
            print(variant, json.dumps(results[variant]), flush=True)
    out = {
        "command": "python benchmarks/align/compile_stage3.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" if k != "run" else str(v)
            for k, v in vars(args).items() if k != "json" and v is not None),
        "commit": git_commit(), "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "llm_precision": llm.precision, "llm_load_s": load_s,
        "load_at_end": os.getloadavg()[0], "results": results,
    }
    if "eager" in results and "compiled" in results:
        out["eager_over_compiled_seconds"] = (results["eager"]["seconds"]
                                              / results["compiled"]["seconds"])
    print(json.dumps({k: v for k, v in out.items() if k != "results"}, indent=1))
    if args.json:
        from glta_gllm.checkpoint import atomic_write_json

        atomic_write_json(args.json, out)


if __name__ == "__main__":
    main()
