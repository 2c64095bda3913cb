"""Autoregressive ranking (``--ablation ar``): kept keys/values against re-running the prompt.

``GLTARecommender`` ranks ``ar`` by feeding each rank's pick back as the next slot's soft
token. It runs the prompt once and appends one position per rank to its kept keys/values
(``SoftPromptRunner.hidden_states(keep_cache=True)`` / ``extend``); the earlier way ran the
whole prompt again at every rank (``GLTARecommender._rank_ar(kept_cache=False)``, the same
picks from the same arithmetic). Both rank the
same ``--users`` valid users of a finished run, alternating over ``--rounds``; the lists are
compared. Writes one JSON file:

    uv run python benchmarks/align/ar_ranking.py RUN --users 16 --k 10 \\
        --json benchmarks/align/results/ar_ranking_cpu_amd_epyc_2026-12-05.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import time
from pathlib import Path

import profile_gen  # this folder's benchmark helpers: cpu_model, git_commit
import torch
from glta_align.recommender import GLTARecommender
from glta_gllm.checkpoint import atomic_write_json
from glta_graph.evaluate import exclusion_matrix, select_rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a finished glta pipeline run directory")
    ap.add_argument("--users", type=int, default=16, help="valid users ranked (one batch)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--note", default="")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    result: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "commit": profile_gen.git_commit(), "cpu": profile_gen.cpu_model(),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "note": args.note,
        "loadavg_start": list(os.getloadavg()), "run": str(args.run), "k": args.k,
    }
    rec = GLTARecommender.from_run(args.run)
    result["llm_precision"] = rec.llm.precision
    users = [int(u) for u in rec.data.users_with("valid")[: args.users]]
    ex = select_rows(exclusion_matrix(rec.data, ("train",)), torch.tensor(users))
    rec.recommend(users[:2], 2, exclude=exclusion_matrix(rec.data, ("train",)), ranking="ar")
    secs: dict[str, list[float]] = {"rerun_prompt": [], "kept_cache": []}
    lists = {}
    for _ in range(args.rounds):
        for name in secs:
            t = time.perf_counter()
            with torch.no_grad():
                _, items = rec._rank_ar(users, args.k, ex, kept_cache=name == "kept_cache")
            secs[name].append(time.perf_counter() - t)
            lists[name] = items.tolist()
        print({name: round(v[-1], 2) for name, v in secs.items()}, flush=True)
    mean = {name: sum(v) / len(v) for name, v in secs.items()}
    result.update({
        "users": len(users), "seconds": secs,
        "speedup": mean["rerun_prompt"] / mean["kept_cache"],
        "users_with_identical_lists": sum(a == b for a, b in zip(
            lists["rerun_prompt"], lists["kept_cache"], strict=True)),
        "loadavg_end": list(os.getloadavg()),
    })
    print(result)
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
