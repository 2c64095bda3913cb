"""Does GLTA's LLM carry signal LightGCN lacks? Score fusion of a finished run, chosen on valid.

For a finished ``glta pipeline`` run this script scores every item for every user twice:

- GLTA: the user's prompt through the frozen LLM, each of the k output slots through the
  GLLM head, log-softmax over the catalogue, averaged over the slots (``slots="mean"``) or
  slot 1 only (``slots="first"``);
- LightGCN: the dot product of the run's final user and item embeddings;

standardises each user's row of both (zero mean, unit variance over the catalogue) and ranks
by ``(1 - w) * GLTA + w * LightGCN`` for ``w`` on a grid in [0, 1]. ``w`` (and the slot mode)
is chosen on the valid split by N@10; the test split is then read once, at the chosen
setting, next to ``w = 1`` (LightGCN alone) and ``w = 0`` (GLTA alone). If the chosen ``w``
is below 1 and test improves on LightGCN, the LLM's scores carry something LightGCN's do not;
running it on a ``--ablation random-llm`` run of the same seed is the control.

``--over candidates`` standardises each row over the items the split can rank (those not
excluded) instead of the whole catalogue, so the scores of the user's train items, which are
never ranked, do not set the scale. ``--scorer lightgcn+`` is the control without an LLM: the
run's LightGCN+ (``RUN/baselines/lightgcn+``, LightGCN aligned with a sentence encoder's item
embeddings) in GLTA's place, fused the same way; a fusion gain GLTA shares with it is the
gain of a second model in an ensemble, not the LLM's.

    uv run python benchmarks/align/fusion.py RUN [RUN ...] --json OUT.json

An existing ``OUT.json`` is added to (a run analysed again replaces its entry); each entry
records its own command, commit, machine and load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from glta_gllm import ranking_metrics
from glta_graph import load_graph_embeddings
from glta_graph.evaluate import exclusion_matrix, select_rows

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_gen import cpu_model, git_commit  # this folder's benchmark helpers

GRID = tuple(round(x, 2) for x in np.linspace(0.0, 1.0, 21))
KS = (5, 10, 20)


def standardise(scores: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row zero mean and unit variance of ``scores`` (U, I) -> (U, I), over every item,
    or over the items not in ``exclude`` (U x I CSR) when given (excluded entries become 0)."""
    if exclude is None:
        mean = scores.mean(dim=1, keepdim=True)
        std = scores.std(dim=1, keepdim=True).clamp_min(1e-12)
        return (scores - mean) / std
    mask = exclude.to_dense().bool()
    s = scores.float().masked_fill(mask, float("nan"))
    mean = torch.nanmean(s, dim=1, keepdim=True)
    keep = (~mask).sum(dim=1, keepdim=True).clamp_min(2)
    var = torch.nansum((s - mean) ** 2, dim=1, keepdim=True) / (keep - 1)
    return ((s - mean) / var.sqrt().clamp_min(1e-12)).masked_fill(mask, 0.0)


@torch.no_grad()
def glta_scores(rec, users: np.ndarray, batch: int = 32) -> dict[str, torch.Tensor]:
    """GLTA's per-item scores for ``users`` (U,): ``{"mean": (U, I), "first": (U, I)}``.

    ``mean`` averages the k slots' log-softmax over the catalogue, ``first`` is slot 1's.
    """
    out_mean, out_first = [], []
    for start in range(0, len(users), batch):
        part = [int(u) for u in users[start:start + batch]]
        hidden = rec._slot_hidden(part)  # (B, S, H [+ d])
        logits = rec.head(hidden.float()).float()  # (B, S, I)
        logp = torch.log_softmax(logits, dim=-1)
        out_mean.append(logp.mean(dim=1).cpu())
        out_first.append(logp[:, 0].cpu())
    return {"mean": torch.cat(out_mean), "first": torch.cat(out_first)}


def rank(scores: torch.Tensor, exclude_rows: torch.Tensor, k: int) -> torch.Tensor:
    """Top-``k`` item indices (U, k) of ``scores`` (U, I), never an excluded (CSR) item."""
    s = scores.clone()
    crow, col = exclude_rows.crow_indices(), exclude_rows.col_indices()
    rows = torch.repeat_interleave(torch.arange(s.shape[0]), crow[1:] - crow[:-1])
    s[rows, col] = float("-inf")
    return s.topk(k, dim=1).indices


def fuse_eval(g: torch.Tensor, lgcn: torch.Tensor, w: float, ex: torch.Tensor,
              rel: torch.Tensor) -> dict[str, float]:
    """Metrics of the ranking by ``(1 - w) * g + w * lgcn`` (both (U, I), standardised)."""
    return ranking_metrics(rank((1 - w) * g + w * lgcn, ex, max(KS)), rel, ks=KS)


def eval_splits(data) -> dict[str, tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """``{"valid" | "test": (users (U,), excluded items (U x I CSR), relevant items (U x I
    CSR))}``: the users with at least one item in the split, the items their ranking skips
    (train; for test also valid) and the split's items, one row per user."""
    splits = {}
    for split in ("valid", "test"):
        relevant = data.split(split)
        users = np.flatnonzero(np.diff(relevant.crow_indices().numpy()) > 0)
        ex = exclusion_matrix(data, ("train",) if split == "valid" else ("train", "valid"))
        splits[split] = (users, select_rows(ex, torch.as_tensor(users)),
                         select_rows(relevant, torch.as_tensor(users)))
    return splits


def run_record(run: Path) -> dict:
    """What the run itself recorded: its metrics.json, stage 3's epoch choice and settings."""
    out: dict = {}
    if (run / "metrics.json").is_file():
        out["run_metrics"] = json.loads((run / "metrics.json").read_text())
    cfg_path = run / "user_projector" / "config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        stage = cfg.get("stage_config", {})
        out["stage3"] = {
            "best_epoch": cfg.get("best_epoch"), "epochs_run": cfg.get("epochs_run"),
            "valid_ndcg@10_per_epoch": [h.get("ndcg@10") for h in cfg.get("valid_history", [])],
            **{k: stage.get(k) for k in ("residual", "residual_init", "llm_init", "use_profile",
                                         "use_predict", "ranking", "patience", "epochs")}}
    return out


CONTROL = "lightgcn+"


def analyse(run: Path, scorer: str = "glta", over: str = "catalogue") -> dict:
    """Scores, the valid grid, the chosen setting and its test metrics for one run.

    Args:
        run: a finished ``glta pipeline`` run directory.
        scorer: ``glta`` (the run's GLTA model) or ``lightgcn+`` (the run's LightGCN+
            baseline in its place: the control without an LLM).
        over: standardise each user's scores over the whole ``catalogue`` or over the
            split's ``candidates`` (items not excluded).
    """
    from glta_graph.data import Interactions

    t0 = time.perf_counter()
    out: dict = {"run": str(run), "scorer": scorer, "over": over}
    if scorer == "glta":
        from glta_align.recommender import GLTARecommender

        rec = GLTARecommender.from_run(run)
        data = rec.data
        out.update({"llm_init": rec.config.llm_init,
                    "residual": bool(getattr(rec.config, "residual", False))})
    elif scorer == CONTROL:
        data = Interactions.load(run / "dataset")
        cu, ci = load_graph_embeddings(run / "baselines" / CONTROL, data.fingerprint)
    else:
        raise ValueError(f"scorer must be 'glta' or {CONTROL!r}, got {scorer!r}")
    ue, ie = load_graph_embeddings(run, data.fingerprint)
    splits = eval_splits(data)
    all_users = np.union1d(splits["valid"][0], splits["test"][0])
    u_all = torch.as_tensor(all_users)
    g_all = (glta_scores(rec, all_users) if scorer == "glta"
             else {"graph": cu.float()[u_all] @ ci.float().T})
    l_all = ue.float()[u_all] @ ie.float().T
    pos = {int(u): i for i, u in enumerate(all_users)}

    def part(split: str, scores: torch.Tensor) -> torch.Tensor:
        """The split's rows of ``scores``, standardised as ``over`` says."""
        r = torch.as_tensor([pos[int(u)] for u in splits[split][0]])
        return standardise(scores[r], splits[split][1] if over == "candidates" else None)

    grid: dict = {}
    _, ex, rel = splits["valid"]
    lz = {split: part(split, l_all) for split in ("valid", "test")}
    gz_valid = {mode: part("valid", g) for mode, g in g_all.items()}
    for mode, gs in gz_valid.items():
        grid[mode] = {str(w): fuse_eval(gs, lz["valid"], w, ex, rel)["ndcg@10"] for w in GRID}
    best_mode, best_w = max(((m, float(w)) for m in grid for w in grid[m]),
                            key=lambda mw: (grid[mw[0]][str(mw[1])], -mw[1]))
    out["valid_ndcg10_grid"] = grid
    out["chosen"] = {"slots": best_mode, "w": best_w, "valid_ndcg@10": grid[best_mode][str(best_w)]}
    res: dict = {}
    for split in ("valid", "test"):
        _, ex, rel = splits[split]
        gs = gz_valid[best_mode] if split == "valid" else part(split, g_all[best_mode])
        ls = lz[split]
        res[split] = {
            "fused": fuse_eval(gs, ls, best_w, ex, rel),
            "lightgcn_alone": fuse_eval(gs, ls, 1.0, ex, rel),
            "glta_scores_alone": fuse_eval(gs, ls, 0.0, ex, rel),
        }
    out["metrics"] = res
    metrics_json = run / "metrics.json"
    if metrics_json.is_file():  # sanity: w = 1 must reproduce the run's LightGCN figures
        m = json.loads(metrics_json.read_text())
        out["run_lightgcn_valid_ndcg@10"] = m.get("lightgcn", {}).get("valid", {}).get("ndcg@10")
    out["seconds"] = time.perf_counter() - t0
    return {**out, **run_record(run)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished glta pipeline run folders")
    ap.add_argument("--json", type=Path, required=True, help="results file (written atomically)")
    ap.add_argument("--scorer", choices=("glta", CONTROL), default="glta",
                    help=f"fuse GLTA's scores, or the run's {CONTROL} baseline's (the control)")
    ap.add_argument("--over", choices=("catalogue", "candidates"), default="catalogue",
                    help="standardise over every item, or over the split's rankable items")
    ap.add_argument("--note", default="")
    args = ap.parse_args(argv)
    doc = {"what": "score fusion of GLTA (LLM) and LightGCN, weight chosen on valid N@10",
           "cpu": cpu_model(), "runs": []}
    if args.json.is_file():  # add to (or redo runs of) an earlier file
        doc = json.loads(args.json.read_text())
    header = {"command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
              "commit": git_commit(), "cpu": cpu_model(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "loadavg": list(os.getloadavg()),
              "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
              "note": args.note}
    for run in args.runs:
        res = {**analyse(run, args.scorer, args.over), **header}
        same = (str(run), args.scorer, args.over)
        doc["runs"] = [r for r in doc["runs"] if (r["run"], r.get("scorer", "glta"),
                                                   r.get("over", "catalogue")) != same] + [res]
        c, t = res["chosen"], res["metrics"]["test"]
        print(f"{run}: chosen {c['slots']} w={c['w']} valid N@10 {c['valid_ndcg@10']:.4f}; "
              f"test N@10 fused {t['fused']['ndcg@10']:.4f} LightGCN "
              f"{t['lightgcn_alone']['ndcg@10']:.4f} "
              f"{args.scorer} alone {t['glta_scores_alone']['ndcg@10']:.4f}")
        tmp = args.json.with_name(f".{args.json.name}.tmp")
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
