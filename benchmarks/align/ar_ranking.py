"""Autoregressive ranking (``--ablation ar``): kept keys/values against re-running the prompt.

``GLTARecommender`` ranks ``ar`` by feeding each rank's pick back as the next slot's soft
token. It runs the prompt once and appends one position per rank to its kept keys/values
(``SoftPromptRunner.hidden_states(keep_cache=True)`` / ``extend``); the earlier way ran the
whole prompt again at every rank (``reference_ar`` below, the same arithmetic). Both rank the
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
from glta_align.heads import head_topk
from glta_align.recommender import GLTARecommender
from glta_gllm.checkpoint import atomic_write_json
from glta_graph.evaluate import exclusion_matrix, select_rows


@torch.no_grad()
def reference_ar(rec: GLTARecommender, users: list[int], k: int,
                 ex: torch.Tensor) -> tuple[torch.Tensor, list[list[int]]]:
    """The earlier ``ar``: the whole prompt again at every rank, the picks as slot tokens.

    Returns:
        ``(scores (U, k), items)`` for ``users`` in one batch.
    """
    picked: list[list[int]] = [[] for _ in users]
    out = torch.empty(len(users), k)
    for t in range(k):
        hidden = rec._slot_hidden(users, picked, num_slots=t + 1)[:, t]
        s, i = head_topk(rec.head, hidden, t + 1, ex)
        for b in range(len(users)):
            for j in range(t + 1):
                if int(i[b, j]) not in picked[b]:
                    picked[b].append(int(i[b, j]))
                    out[b, t] = s[b, j]
                    break
    return out, picked


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
        t = time.perf_counter()
        _, lists["rerun_prompt"] = reference_ar(rec, users, args.k, ex)
        secs["rerun_prompt"].append(time.perf_counter() - t)
        t = time.perf_counter()
        _, items = rec._rank_batch(users, args.k, ex, "ar")
        secs["kept_cache"].append(time.perf_counter() - t)
        lists["kept_cache"] = items.tolist()
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
