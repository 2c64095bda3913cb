"""Every pretrained-against-random-weights pair in the committed ablation JSONs, pooled.

The question of the ``random-llm`` control: does SmolLM2's pretraining add anything? Each
ablation JSON (``ablations.py``) holds rows with pretrained SmolLM2 (``X``) beside the same
configuration with a randomly initialised LLM of its shape (``X-random-llm``; ``full`` and
``random-llm``; ``full-repeat`` and ``random-llm-repeat``), at one or more seeds. This script
reads them all, pairs the two runs of a configuration at each seed (within one file, so the
two share the file's settings), drops pairs recorded in more than one file (the same four
metric values), and writes per configuration and overall: how many pairs, at how many the
pretrained LLM is ahead on valid / test N@10, the mean and spread (max - min) of the paired
differences, and a two-sided sign test of "ahead at as many pairs as behind" (exact
binomial). Runs nothing.

Where, not only whether: each run's test breakdown (``glta evaluate --by activity`` /
``--by popularity``, in the ablation JSON) gives the same paired differences per user-activity
quintile (Q1 the lightest users) and per item-popularity bucket (``tail``: items with <= 5
train interactions), with the tail's recommendation share (``share@10``: the fraction of
top-10 slots given to tail items) beside its N@10; ``by_bucket`` pools them per dataset.

The pairs are not independent (configurations share seeds, splits and LightGCN runs, and
several configurations differ by one setting), so the pooled sign test overstates the
evidence in either direction; the per-configuration rows are the ones to read.

    cd benchmarks/align && uv run python pretrained_vs_random.py results/ablation_*.json \\
        --out results/pretrained_vs_random_pooled_2026-12-07.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import statistics
import sys
from pathlib import Path

from profile_gen import git_commit  # this folder's benchmark helpers

METRIC = "ndcg@10"
#: per-bucket figures pooled in ``by_bucket``: (breakdown, metric); the breakdowns are test's
BUCKET_METRICS = (("activity", "ndcg@10"), ("popularity", "ndcg@10"), ("popularity", "share@10"))


def control_of(row: str) -> str | None:
    """The pretrained row a random-weight row is the control of (``None`` for other rows):
    ``X-random-llm`` -> ``X``, ``random-llm`` -> ``full``, ``random-llm-repeat`` ->
    ``full-repeat``."""
    if row.startswith("random-llm"):
        return "full" + row.removeprefix("random-llm")
    if "-random-llm" in row:
        return row.replace("-random-llm", "", 1)
    return None


def _metric(run: dict, split: str) -> float | None:
    return run.get("result", {}).get("metrics", {}).get("glta", {}).get(split, {}).get(METRIC)


def bucket_name(label: str) -> str:
    """The short name of a breakdown bucket, the same across seeds and datasets:
    ``"Q1 (14-20 train items)"`` -> ``"Q1"``, ``"tail (<= 5 train interactions)"`` ->
    ``"tail"``, ``"head (> 5)"`` -> ``"head"``."""
    return label.split(" ", 1)[0]


def _buckets(run: dict) -> dict[str, float]:
    """``{"activity/Q1/ndcg@10": value, ...}``: the GLTA model's test breakdown of ``run``
    for :data:`BUCKET_METRICS` (empty where the run has none)."""
    models = run.get("result", {}).get("breakdown", {}).get("models", {})
    out = {}
    for kind, metric in BUCKET_METRICS:
        for label, values in models.get("glta", {}).get(kind, {}).items():
            if isinstance(values, dict) and metric in values:
                out[f"{kind}/{bucket_name(label)}/{metric}"] = values[metric]
    return out


def pairs(docs: dict[str, dict]) -> list[dict]:
    """Every (pretrained, random) pair of runs in ``docs`` (file name -> ablation JSON), one
    per (file, dataset, seed, configuration). A pair recorded in several files (the same
    dataset, seed and four metric values; the row names may differ, as where a file renamed
    the rows it merged) is kept once, in the file that holds the most pairs of its
    configuration (the first such file by name on a tie), so a configuration's seeds stay
    together; it then counts under that file's row name.

    Returns:
        ``[{"file", "dataset", "seed", "config", "machine", "valid", "test"}]`` with
        ``valid`` / ``test`` = pretrained minus random N@10 and ``machine`` the run's CPU
        (the file's where the run does not say), sorted by file, dataset, configuration,
        seed; plus ``"buckets": {"activity/Q1/ndcg@10": difference, ...}`` (test split) for
        the buckets both runs of the pair have.
    """
    found = []
    for name in sorted(docs):
        doc = docs[name]
        by_key = {(r["dataset"], r["seed"], r["row"]): r for r in doc.get("runs", [])}
        for (dataset, seed, row), rand in by_key.items():
            base = control_of(row)
            pre = by_key.get((dataset, seed, base)) if base else None
            if pre is None:
                continue
            values = [_metric(pre, "valid"), _metric(pre, "test"), _metric(rand, "valid"),
                      _metric(rand, "test")]
            if any(v is None for v in values):
                continue
            machine = pre.get("machine") or doc.get("machine")
            bp, br = _buckets(pre), _buckets(rand)
            found.append({"file": name, "dataset": dataset, "seed": seed, "config": base,
                          "machine": machine.get("cpu") if isinstance(machine, dict)
                          else machine,
                          "valid": values[0] - values[2], "test": values[1] - values[3],
                          "buckets": {k: bp[k] - br[k] for k in sorted(bp) if k in br},
                          "_key": (dataset, seed, *(round(v, 9) for v in values))})
    size: dict = {}
    for p in found:
        group = (p["file"], p["dataset"], p["config"])
        size[group] = size.get(group, 0) + 1
    keep: dict = {}
    for p in found:  # files in name order: a later file replaces only with a larger group
        group = (p["file"], p["dataset"], p["config"])
        held = keep.get(p["_key"])
        if held is None or size[group] > size[(held["file"], held["dataset"], held["config"])]:
            keep[p["_key"]] = p
    out = [{k: v for k, v in p.items() if k != "_key"} for p in keep.values()]
    return sorted(out, key=lambda p: (p["file"], p["dataset"], p["config"], p["seed"]))


def sign_test(ahead: int, behind: int) -> float:
    """Two-sided exact binomial p-value of ``ahead`` against ``behind`` under p = 1/2 (ties
    left out); 1.0 without any."""
    n = ahead + behind
    if n == 0:
        return 1.0
    k = min(ahead, behind)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def summarise(items: list[dict]) -> dict:
    """The pretrained lead over ``items`` (a non-empty list of :func:`pairs`' pairs).

    Returns:
        ``{"pairs": n, "seeds": [...], "valid": {...}, "test": {...}}``, each split with
        ``mean`` and ``spread`` (max - min) of the differences, ``ahead`` / ``behind`` (pairs
        with a positive / negative difference) and ``sign_test_p`` (:func:`sign_test`).
    """
    out: dict = {"pairs": len(items), "seeds": sorted({p["seed"] for p in items})}
    for split in ("valid", "test"):
        out[split] = lead([p[split] for p in items])
    return out


def lead(xs: list[float]) -> dict:
    """``mean`` and ``spread`` (max - min) of the differences ``xs`` (non-empty), ``ahead`` /
    ``behind`` (positive / negative ones) and ``sign_test_p`` (:func:`sign_test`)."""
    ahead, behind = sum(x > 0 for x in xs), sum(x < 0 for x in xs)
    return {"mean": round(statistics.fmean(xs), 5), "spread": round(max(xs) - min(xs), 5),
            "ahead": ahead, "behind": behind,
            "sign_test_p": round(sign_test(ahead, behind), 4)}


def by_bucket(items: list[dict]) -> dict:
    """Pretrained minus random per breakdown bucket over ``items`` (:func:`pairs`' pairs).

    Returns:
        ``{"activity/Q1/ndcg@10": {"pairs", "mean", "spread", "ahead", "behind",
        "sign_test_p"}, ...}`` (test split), for each bucket at least one pair has.
    """
    keys = sorted({k for p in items for k in p.get("buckets", {})})
    out = {}
    for key in keys:
        xs = [p["buckets"][key] for p in items if key in p.get("buckets", {})]
        out[key] = {"pairs": len(xs), **lead(xs)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("ablations", type=Path, nargs="+", help="ablation JSONs (ablations.py)")
    ap.add_argument("--out", type=Path, help="write the JSON here (else print only)")
    args = ap.parse_args(argv)
    docs = {p.name: json.loads(p.read_text()) for p in args.ablations
            if "ablation_table" not in p.name}
    found = pairs(docs)
    configs: dict = {}
    for p in found:
        configs.setdefault((p["file"], p["dataset"], p["config"]), []).append(p)
    by_config = [{"file": f, "dataset": d, "config": c,
                  "machines": sorted({str(p["machine"]) for p in ps}), **summarise(ps)}
                 for (f, d, c), ps in configs.items()]
    datasets = sorted({p["dataset"] for p in found})
    result = {
        "what": __doc__.split("\n", 1)[0],
        "command": " ".join(["python", "benchmarks/align/pretrained_vs_random.py",
                             *(argv if argv is not None else sys.argv[1:])]),
        "commit": git_commit(), "date": dt.date.today().isoformat(), "metric": METRIC,
        "files": sorted(docs),
        "overall": {d: summarise([p for p in found if p["dataset"] == d]) for d in datasets},
        "by_bucket": {d: by_bucket([p for p in found if p["dataset"] == d]) for d in datasets},
        "configurations_ahead_beyond_spread": [
            {k: c[k] for k in ("file", "dataset", "config", "pairs")} | {split: c[split]["mean"]}
            for c in by_config for split in ("valid", "test")
            if c["pairs"] >= 3 and c[split]["mean"] > 0 and c[split]["ahead"] == c["pairs"]
            and c[split]["mean"] > c[split]["spread"]],
        "by_configuration": by_config,
        "pairs": found,
    }
    for d, s in result["overall"].items():
        v, t = s["valid"], s["test"]
        print(f"{d}: {s['pairs']} pairs; pretrained ahead on valid at {v['ahead']}, behind at "
              f"{v['behind']} (mean {v['mean']:+.4f}, sign test p {v['sign_test_p']}); on test "
              f"ahead at {t['ahead']}, behind at {t['behind']} (mean {t['mean']:+.4f}, "
              f"p {t['sign_test_p']})")
        for key, b in result["by_bucket"][d].items():
            print(f"  {key} (test): {b['pairs']} pairs, ahead at {b['ahead']}, behind at "
                  f"{b['behind']}, mean {b['mean']:+.4f}, p {b['sign_test_p']}")
    if args.out:
        from glta_gllm.checkpoint import atomic_write_json

        atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
