"""GLTA with SmolLM2 on MovieLens-100K next to LightGCN on the same split (one run dir).

Stages: dataset (embedded ml-100k, seeded 70/10/20 split) -> LightGCN -> stage 2 -> stage 3
(profiles generated first) -> test metrics of both models into RUN/metrics.json, plus the
seconds each stage took. Progress goes to stderr as one line per epoch.

    uv run python benchmarks/align/ml100k_quality.py --run /tmp/glta-ml100k
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from glta_align import GLTARecommender, ItemTextConfig, UserItemConfig, load_llm
from glta_align.item_text import train_item_text
from glta_align.user_item import train_user_item
from glta_gllm import ranking_metrics, topk_excluding
from glta_graph import (
    LightGCNConfig,
    evaluate_embeddings,
    exclusion_matrix,
    load_graph_embeddings,
    select_rows,
    train_lightgcn,
    update_metrics,
)
from glta_graph.data import Interactions, load_dataset

KEYS = ("precision@5", "precision@10", "ndcg@5", "ndcg@10", "recall@20")


def log(event) -> None:
    if event.kind in ("epoch", "end", "start"):
        print(f"[{time.strftime('%H:%M:%S')}] {event.stage} {event.kind} "
              f"{event.step}/{event.total} {event.message} "
              f"{ {k: round(v, 4) for k, v in event.metrics.items()} }", file=sys.stderr,
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--graph-epochs", type=int, default=200)
    ap.add_argument("--s2-epochs", type=int, default=1)
    ap.add_argument("--s2-max-instances", type=int, default=None)
    ap.add_argument("--s3-epochs", type=int, default=1)
    ap.add_argument("--s3-max-users", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--num-slots", type=int, default=10)
    ap.add_argument("--head-init", default="zeros")
    ap.add_argument("--no-profile", action="store_true",
                    help="leave out the generated profile and prediction texts (saves the "
                         "generation cost)")
    ap.add_argument("--eval-users", type=int, default=None,
                    help="evaluate only the first N test users (both models)")
    args = ap.parse_args()
    run = Path(args.run)
    times: dict[str, float] = {}
    t = time.perf_counter()
    if (run / "dataset").is_dir():
        data = Interactions.load(run / "dataset")
    else:
        data = load_dataset("ml-100k")
        data.save(run / "dataset")
    times["dataset"] = time.perf_counter() - t
    t = time.perf_counter()
    train_lightgcn(data, LightGCNConfig(epochs=args.graph_epochs), run, progress=log)
    eu, ei = load_graph_embeddings(run, data.fingerprint)
    users = None
    if args.eval_users is not None:
        has = torch.diff(data.test.crow_indices()) > 0
        users = torch.nonzero(has).flatten()[: args.eval_users].tolist()
    if users is None:
        lg = evaluate_embeddings(eu, ei, data, split="test", ks=(5, 10, 20))
    else:  # the same users as GLTA below, same exclusions (train + valid)
        rows = torch.tensor(users)
        ex = select_rows(exclusion_matrix(data, ("train", "valid")), rows)
        _, ranked = topk_excluding(eu[rows], ei, 20, exclude=ex)
        lg = ranking_metrics(ranked, select_rows(data.test, rows), ks=(5, 10, 20))
    update_metrics(run, "lightgcn", "test", lg)
    times["lightgcn"] = time.perf_counter() - t
    llm = load_llm()
    t = time.perf_counter()
    train_item_text(data, run, ItemTextConfig(
        epochs=args.s2_epochs, max_instances=args.s2_max_instances, batch_size=args.batch_size,
        lr=args.lr, head_init=args.head_init), llm=llm, progress=log)
    times["item_text"] = time.perf_counter() - t
    t = time.perf_counter()
    cfg3 = UserItemConfig(epochs=args.s3_epochs, max_users=args.s3_max_users,
                          batch_size=args.batch_size, lr=args.lr, num_slots=args.num_slots,
                          use_profile=not args.no_profile, use_predict=not args.no_profile)
    train_user_item(data, run, cfg3, llm=llm, progress=log)
    times["profiles+user_item"] = time.perf_counter() - t
    t = time.perf_counter()
    rec = GLTARecommender.from_run(run, llm=llm)
    gl = rec.evaluate("test", (5, 10, 20), users=users, progress=log)
    update_metrics(run, "glta", "test", gl)
    times["evaluate"] = time.perf_counter() - t
    out = {"lightgcn": {k: lg[k] for k in KEYS}, "glta": {k: gl[k] for k in KEYS},
           "users": gl["users"], "seconds": times, "threads": torch.get_num_threads(),
           "args": vars(args)}
    print(json.dumps(out, indent=2))
    (run / "quality.json").write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
