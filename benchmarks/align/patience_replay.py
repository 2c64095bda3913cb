"""Stage 3's early-stopping patience replayed on recorded valid curves: which epoch each
patience keeps, its valid N@10, and how many epochs it runs.

Runs nothing: every run of an ablation JSON (``ablations.py``) records stage 3's valid N@10
after each epoch it trained (``result.stage3["valid_ndcg@10"]``). With patience ``p`` the
stage stops after ``p`` epochs without a new best and keeps the best, so a curve recorded
with patience 2 also tells what patience 1 would have done (it stops at the first epoch
that does not improve). Test metrics are not read: the choice is made on valid only.

    uv run python benchmarks/align/patience_replay.py \\
        benchmarks/align/results/ablation_default_preset_ml100k_cpu_amd_epyc_2026-12-05.json \\
        --patience 1,2 --out benchmarks/align/results/patience_replay_ml100k_2026-12-06.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from profile_gen import git_commit  # this folder's scripts


def replay(curve: Sequence[float], patience: int) -> dict:
    """The epoch early stopping with ``patience`` keeps on a recorded valid curve.

    Args:
        curve: valid metric after each trained epoch, in order (length E >= 1), recorded
            with a patience at least ``patience`` (or none), so every epoch this patience
            would have run is in it.
        patience: epochs without a new best before stopping (>= 1).

    Returns:
        ``{"kept": index of the kept epoch (0-based), "valid": its value, "epochs_run":
        epochs trained before stopping (<= E)}``; ties keep the earlier epoch, as the
        stage does (a new best must be strictly higher).

    Raises:
        ValueError: an empty curve or patience < 1.
    """
    if not curve:
        raise ValueError("empty valid curve")
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    best, kept, stale = float("-inf"), 0, 0
    for i, value in enumerate(curve):
        if value > best:
            best, kept, stale = value, i, 0
        else:
            stale += 1
            if stale >= patience:
                return {"kept": kept, "valid": best, "epochs_run": i + 1}
    return {"kept": kept, "valid": best, "epochs_run": len(curve)}


def summarise(files: Sequence[str], patiences: Sequence[int],
              rows: Sequence[str] | None = None) -> dict:
    """Every recorded stage-3 curve of ``files`` (of the ``rows`` named, or all) replayed at
    each of ``patiences``.

    The curves must have been recorded with a patience >= max(patiences) (or none): a run
    that stopped earlier would not show what a larger patience does.

    Returns:
        ``{"runs": [{file, dataset, row, seed, curve, stopped_early, by_patience: {p:
        replay}}], "summary": {p: {runs, epochs_run, kept_same_as_patience_M,
        valid_mean_diff_to_patience_M}}}`` with ``M = max(patiences)``.
    """
    runs = []
    for f in files:
        data = json.loads(Path(f).read_text(encoding="utf-8"))
        for r in data["runs"]:
            stage3 = r.get("result", {}).get("stage3", {})
            curve = stage3.get("valid_ndcg@10")
            if not isinstance(curve, list) or not curve or (rows and r["row"] not in rows):
                continue
            runs.append({"file": Path(f).name, "dataset": r["dataset"], "row": r["row"],
                         "seed": r["seed"], "curve": curve,
                         "stopped_early": bool(stage3.get("stopped_early")),
                         "by_patience": {str(p): replay(curve, p) for p in patiences}})
    ref = str(max(patiences))
    summary = {}
    for p in patiences:
        mine = [r["by_patience"][str(p)] for r in runs]
        top = [r["by_patience"][ref] for r in runs]
        summary[str(p)] = {
            "runs": len(runs),
            "epochs_run": sum(m["epochs_run"] for m in mine),
            f"kept_same_as_patience_{ref}": sum(
                m["kept"] == t["kept"] for m, t in zip(mine, top, strict=True)),
            f"valid_mean_diff_to_patience_{ref}": (sum(
                m["valid"] - t["valid"] for m, t in zip(mine, top, strict=True)) / len(runs)
                if runs else None),
        }
    return {"runs": runs, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    """Write the replay of every ablation JSON given; prints one line per patience."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+", help="ablation JSONs (ablations.py --out)")
    ap.add_argument("--patience", default="1,2", help="comma-separated patiences to replay")
    ap.add_argument("--rows", default="", help="comma-separated rows to replay (default: all)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    patiences = sorted({int(p) for p in args.patience.split(",")})
    rows = [r for r in args.rows.split(",") if r]
    result = {"command": " ".join(["python", "benchmarks/align/patience_replay.py",
                                   *(argv if argv is not None else sys.argv[1:])]),
              "commit": git_commit(), "date": dt.date.today().isoformat(),
              "what": "stage 3's valid N@10 curves of the runs in the files, replayed with "
                      "each patience (kept epoch, its valid N@10, epochs run); valid only",
              **summarise(args.files, patiences, rows)}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    for p, s in result["summary"].items():
        print(f"patience {p}: {s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
