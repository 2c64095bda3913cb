"""The paper's Table 2 on this project's data: LightGCN, LightGCN+, RLMRec-Con, GLTA in one JSON.

Joins committed result files, runs nothing: the text baselines' final rows
(``benchmarks/graph/text_baselines.py``, JSON lines, one per model x seed, each tuned on
seed 0's valid split and read on test once) and the GLTA ``full`` rows of ablation JSONs
(``ablations.py``: the default pipeline per seed, its stage-3 epoch and ranking mode chosen
on valid, test read once). Per dataset and model it writes the mean, spread (max - min)
and per-seed values of the test metrics, in Table 2's row order, with the paper's
figures (ML-1M, Goodreads, Amazon) beside, and prints the markdown table. Seeds missing
for a model are listed under ``missing``. Example:

    uv run python benchmarks/align/table2.py \\
        --baselines benchmarks/graph/results/text_baselines_ml-100k_400ep_cpu.jsonl \\
        --glta benchmarks/align/results/ablation_ml100k_cpu_xeon_amx_2026-12-04.json \\
        --out benchmarks/align/results/table2_ml100k.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from ablations import spread_stats  # this folder's benchmark scripts
from profile_gen import git_commit

MODELS = ("lightgcn", "lightgcn+", "rlmrec-con", "glta")  # Table 2's row order
NAMES = {"lightgcn": "LightGCN", "lightgcn+": "LightGCN+ (text InfoNCE, MiniLM)",
         "rlmrec-con": "RLMRec-Con", "glta": "GLTA"}
METRICS = {"P@5": "precision@5", "P@10": "precision@10", "N@5": "ndcg@5",
           "N@10": "ndcg@10", "R@20": "recall@20"}
# Table 2 of the paper (P@10, N@10); its MovieLens is ML-1M.
PAPER = {
    "lightgcn": {"Goodreads": [0.1618, 0.2352], "Amazon": [0.0139, 0.0305],
                 "MovieLens": [0.0426, 0.0466]},
    "lightgcn+": {"Goodreads": [0.1616, 0.2358], "Amazon": [0.0150, 0.0290],
                  "MovieLens": [0.0451, 0.0469]},
    "rlmrec-con": {"Goodreads": [0.1676, 0.2542], "Amazon": [0.0142, 0.0358],
                   "MovieLens": [0.0460, 0.0492]},
    "glta": {"Goodreads": [0.1882, 0.2905], "Amazon": [0.0236, 0.0500],
             "MovieLens": [0.0821, 0.1403]},
}


def baseline_rows(path: Path) -> list[dict]:
    """The ``final`` rows of a text-baselines JSON-lines file (those with ``test``).

    Returns:
        ``[{"dataset", "model", "seed", "test": {metric: value}, "source", "commit",
        "cpu"}]``.
    """
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as exc:
            raise SystemExit(f"{path}:{n}: not JSON ({exc})") from None
        if "test" in rec:
            rows.append({"dataset": rec["dataset"], "model": rec["model"], "seed": rec["seed"],
                         "test": rec["test"], "source": path.name, "commit": rec.get("commit"),
                         "cpu": rec.get("cpu")})
    return rows


def glta_rows(path: Path) -> list[dict]:
    """GLTA's test metrics from the ``full`` runs of an ablation JSON (same row shape)."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    cpu = doc.get("machine", {}).get("cpu")
    return [{"dataset": run["dataset"], "model": "glta", "seed": run["seed"],
             "test": run["result"]["metrics"]["glta"]["test"], "source": path.name,
             "commit": run.get("commit"), "cpu": cpu}
            for run in doc.get("runs", []) if run.get("row") == "full"]


def table(rows: list[dict], seeds: list[int]) -> dict:
    """Mean, spread and per-seed values per dataset x model (later files win a seed).

    Returns:
        ``{dataset: {model: {"seeds", "missing_seeds", "sources", metric: {"mean",
        "spread", "values"}}}}`` with the metrics of :data:`METRICS`.
    """
    cells: dict[tuple[str, str], dict[int, dict]] = {}
    for row in rows:
        cells.setdefault((row["dataset"], row["model"]), {})[row["seed"]] = row
    out: dict = {}
    for (ds, model), by_seed in sorted(cells.items()):
        got = sorted(s for s in by_seed if s in seeds)
        if not got:
            continue
        entry: dict = {"seeds": got, "missing_seeds": [s for s in seeds if s not in by_seed],
                       "sources": sorted({by_seed[s]["source"] for s in got}),
                       "commits": sorted({str(by_seed[s]["commit"]) for s in got}),
                       "cpu": sorted({str(by_seed[s]["cpu"]) for s in got})}
        for short, key in METRICS.items():
            xs = [float(by_seed[s]["test"][key]) for s in got]
            entry[short] = spread_stats(xs)
        out.setdefault(ds, {})[model] = entry
    return out


def markdown(result: dict) -> str:
    """Table 2's rows per dataset: mean (spread, seeds) of test P@10 / N@10, paper beside."""
    lines = ["| dataset, model | seeds | P@10 mean (spread) | N@10 mean (spread) | "
             "paper ML-1M P@10 / N@10 |", "|---|---|---:|---:|---:|"]
    for ds, models in result.items():
        for model in MODELS:
            if model not in models:
                continue
            e = models[model]
            paper = PAPER[model]["MovieLens"]
            lines.append(
                f"| {ds}, {NAMES[model]} | {','.join(map(str, e['seeds']))} | "
                f"{e['P@10']['mean']:.4f} ({e['P@10']['spread']:.4f}) | "
                f"{e['N@10']['mean']:.4f} ({e['N@10']['spread']:.4f}) | "
                f"{paper[0]:.4f} / {paper[1]:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baselines", type=Path, nargs="*", default=[],
                    help="text_baselines JSON-lines files (final rows are read)")
    ap.add_argument("--glta", type=Path, nargs="*", default=[],
                    help="ablation JSONs (their `full` runs are GLTA's rows)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", type=Path, help="write the JSON here (else print only)")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    missing = [str(p) for p in [*args.baselines, *args.glta] if not p.is_file()]
    if missing:
        ap.error(f"no such file: {', '.join(missing)}")
    rows = [r for p in args.baselines for r in baseline_rows(p)]
    rows += [r for p in args.glta for r in glta_rows(p)]
    result = table(rows, seeds)
    if not result:
        ap.error("no test rows in the given files for seeds " + args.seeds)
    print(markdown(result))
    if args.out:
        from glta_gllm.checkpoint import atomic_write_json

        doc = {
            "what": "Table 2 on this project's data: test metrics, mean / spread / values over "
                    "seeds, each model selected on valid (see the sources)",
            "command": "python benchmarks/align/table2.py " + " ".join(
                a if " " not in a else repr(a) for a in (argv if argv is not None
                                                         else sys.argv[1:])),
            "commit": git_commit(),
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
            "seeds": seeds,
            "table": result,
            "missing": [{"dataset": ds, "model": m, "seeds": e["missing_seeds"]}
                        for ds, models in result.items() for m, e in models.items()
                        if e["missing_seeds"]]
            + [{"dataset": ds, "model": m, "seeds": seeds}
               for ds, models in result.items() for m in MODELS if m not in models],
            "paper": {"what": "Table 2 of the paper: [P@10, N@10]; MovieLens is ML-1M",
                      "rows": PAPER},
        }
        atomic_write_json(args.out, doc)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
