"""The paper's Table 2 text baselines next to LightGCN: LightGCN+ and RLMRec-Con, seeds 0-2.

For each dataset and seed ``S`` the data are prepared exactly as ``glta pipeline --run.seed S``
does, and every model trains with the default preset's LightGCN budget (epochs, batch,
validation interval, patience, early-stopping metric: today up to 400 epochs, valid N@10,
patience 3 at every 5th epoch), so GLTA rows from the pipeline sit on the same splits.

Selection (valid only, the test split is read once per reported run):

1. ``tune`` (seed 0): LightGCN over ``lr x l2`` (4 settings); then LightGCN+ and RLMRec-Con
   on LightGCN's selected lr/l2 over ``text_weight x text_temperature`` (6 settings each),
   and ``lightgcn-softmax`` (LightGCN trained with the project's sampled-softmax loss, the
   objective family of GLTA's stage 3) on LightGCN's selected l2 over ``lr x temperature``
   (6 settings), every model picked by the preset's early-stopping metric on valid.
2. ``final`` (seeds 0, 1, 2): each model's selected setting, test metrics of the best-valid
   epoch. Seed 0 resumes the tuning run (no retraining).

Order: LightGCN and LightGCN+ on every dataset first, then RLMRec-Con (whose LLM profile
generation, once per split, dominates the cost).

RLMRec-Con's user profiles come from glta-align's profile generation with the default
preset's LLM and stage-3 prompt settings (cached per split in ``WORK/<dataset>/seed<S>``);
item profiles are the items' text (see glta_cli.baselines). Text embeddings (all-MiniLM-L6-v2,
offline copy) are cached in ``WORK/text_cache``.

Resumable: one JSON line per finished run in
``benchmarks/graph/results/text_baselines_<dataset>_<epochs>ep_cpu.jsonl`` (command, commit,
CPU model, torch version, date per row; the file name carries the epoch budget, so runs of
another budget are never mixed in); a restart skips finished runs and resumes a killed one.
``--summary`` prints the table of the finished ``final`` rows.

    nice -n 10 uv run python benchmarks/graph/text_baselines.py \\
        --datasets ml-100k,ml-latest-small --seeds 0,1,2 --work runs/text_baselines
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from glta_gllm.checkpoint import atomic_write_text
from glta_graph import evaluate_embeddings, load_graph_embeddings, train_lightgcn

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "graph" / "results"
MODELS = {"lightgcn": "none", "lightgcn+": "infonce", "rlmrec-con": "rlmrec-con",
          "lightgcn-softmax": "none"}
LIGHTGCN_GRID = [{"lr": lr, "l2": l2} for lr, l2 in itertools.product((0.01, 0.02), (1e-4, 1e-3))]
TEXT_GRID = [{"text_weight": w, "text_temperature": t}
             for w, t in itertools.product((0.005, 0.02, 0.2), (0.1, 0.5))]
# Temperatures doubling from 0.05; 0.4 and 0.8 added after valid chose 0.2, then the largest.
SOFTMAX_GRID = [{"loss": "softmax", "lr": lr, "temperature": t}
                for lr, t in itertools.product((0.001, 0.01), (0.05, 0.1, 0.2, 0.4, 0.8))]


def tuning_grid(model: str, lightgcn: dict) -> list[dict]:
    """The settings ``model`` is tuned over, given LightGCN's selected ``lightgcn`` setting
    (``{"lr", "l2"}``): the text models keep its lr and l2 and add the text grid; the
    softmax-loss LightGCN keeps its l2 and tunes lr and temperature."""
    if model == "lightgcn":
        return LIGHTGCN_GRID
    if model == "lightgcn-softmax":
        return [{**lightgcn, **g} for g in SOFTMAX_GRID]
    return [{**lightgcn, **g} for g in TEXT_GRID]


def shared_data() -> Path:
    env = os.environ.get("GLTA_SHARED_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def source_of(name: str) -> str:
    return "ml-100k" if name == "ml-100k" else str(shared_data() / name)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or "unknown"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Bench:
    """One dataset: prepared splits per seed, the JSON-lines file, the runs."""

    def __init__(self, dataset: str, work: Path, threads: int) -> None:
        self.dataset = dataset
        self.work = work / dataset
        self.cache = work / "text_cache"
        self.threads = threads
        self._config: dict[int, object] = {}
        self._data: dict[int, object] = {}
        self._llm = None
        self.path = result_path(dataset, self.config(0).graph.epochs)
        self.select = self.config(0).graph.select_metric
        self.rows = []
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    with contextlib.suppress(json.JSONDecodeError):  # a torn last line
                        self.rows.append(json.loads(line))
        self.stamp = {"command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
                      "commit": commit(), "cpu": cpu_model(), "torch": torch.__version__}

    def config(self, seed: int):
        if seed not in self._config:
            from glta_cli.config import load_config

            layers = {"run": {"seed": seed, "out": str(self.work / f"seed{seed}")},
                      "data": {"source": source_of(self.dataset), "format": "auto"}}
            self._config[seed] = load_config("default", None, layers)
        return self._config[seed]

    def data(self, seed: int):
        if seed not in self._data:
            from glta_cli.pipeline import prepare_dataset

            self._data[seed] = prepare_dataset(self.config(seed))
        return self._data[seed]

    def llm(self):
        if self._llm is None:
            from glta_align import load_llm

            c = self.config(0).llm
            self._llm = load_llm(c.model_name_or_path, dtype=c.dtype, device=c.device,
                                 cache_dir=c.cache_dir)
        return self._llm

    def find(self, phase: str, model: str, setting: dict, seed: int) -> dict | None:
        for row in self.rows:
            if (row["phase"], row["model"], row["setting"], row["seed"]) == (
                    phase, model, setting, seed):
                return row
        return None

    def append(self, row: dict) -> None:
        self.rows.append(row)
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.rows)
        atomic_write_text(self.path, text)

    def run(self, phase: str, model: str, setting: dict, seed: int) -> dict:
        done = self.find(phase, model, setting, seed)
        if done is not None:
            return done
        data = self.data(seed)
        cfg = self.config(seed)
        user_texts, profile_s = None, None
        if model == "rlmrec-con":
            from glta_cli.baselines import profile_texts

            t0 = time.perf_counter()
            user_texts = profile_texts(data, self.work / f"seed{seed}", cfg.user_item, self.llm,
                                       progress=_profile_log)
            profile_s = time.perf_counter() - t0
        graph = {**cfg.graph.to_dict(), **setting, "text_align": MODELS[model],
                 "text_cache_dir": str(self.cache), "num_threads": self.threads}
        name = "-".join(f"{k}{v}" for k, v in sorted(setting.items()))
        run_dir = self.work / f"seed{seed}" / model / name
        from glta_graph import LightGCNConfig

        log(f"{self.dataset} {phase} {model} {setting} seed {seed}")
        t0 = time.perf_counter()
        result = train_lightgcn(data, LightGCNConfig.from_dict(graph), run_dir,
                                user_texts=user_texts)
        wall = time.perf_counter() - t0
        row = {"dataset": self.dataset, "phase": phase, "model": model, "setting": setting,
               "seed": seed, "valid": result.best_valid, "best_epoch": result.best_epoch,
               "epochs_run": len(result.history), "train_seconds": round(result.seconds, 2),
               "seconds_per_epoch": round(result.seconds / max(1, len(result.history)), 4),
               "wall_seconds": round(wall, 2), "text": result.text,
               "dataset_stats": data.stats(),
               "graph_config": graph}
        if profile_s is not None:
            row["profile_seconds"] = round(profile_s, 2)
        if phase == "final":
            user_emb, item_emb = load_graph_embeddings(run_dir, data.fingerprint)
            row["test"] = evaluate_embeddings(user_emb, item_emb, data, "test", (5, 10, 20))
        row.update(self.stamp, date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
        self.append(row)
        shown = f"valid {self.select} {result.best_valid.get(self.select, float('nan')):.4f}"
        if "test" in row:
            shown += f", test P@10 {row['test']['precision@10']:.4f}"
        log(f"  -> {shown} ({wall:.1f} s)")
        return row

    def best(self, model: str, grid: list[dict]) -> dict:
        rows = [self.run("tune", model, s, 0) for s in grid]
        return max(rows, key=lambda r: r["valid"].get(self.select, -1.0))["setting"]


def _profile_log(event) -> None:
    if event.kind in ("start", "end") or (event.kind == "step" and event.step % 160 == 0):
        log(f"  profiles {event.kind} {event.step}/{event.total} {event.message}")


def result_path(dataset: str, epochs: int) -> Path:
    """The JSON-lines result file of ``dataset`` under an ``epochs`` LightGCN budget."""
    return RESULTS / f"text_baselines_{dataset}_{epochs}ep_cpu.jsonl"


def final_rows(path: Path, select: str | None = None) -> tuple[list[dict], dict[str, list[dict]]]:
    """All rows of one result file, and per model the ``final`` rows (seed order) of the
    setting valid selects today: where a grid grew and valid chose anew, the finals of the
    setting chosen before stay in the file but are not the model's result.

    The setting is that of the model's seed-0 ``tune`` row with the best valid ``select``
    among the settings that have ``final`` rows (the last final row's setting when none has
    a tune row). ``select`` defaults to the default preset's graph ``select_metric``, the
    metric :meth:`Bench.best` selects by."""
    if select is None:
        from glta_cli.config import load_config

        select = load_config("default", None, {}).graph.select_metric
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]
    out: dict[str, list[dict]] = {}
    for m in MODELS:
        finals = [r for r in rows if r["phase"] == "final" and r["model"] == m]
        if not finals:
            continue
        tuned = {json.dumps(r["setting"], sort_keys=True): r["valid"].get(select, -1.0)
                 for r in rows if r["phase"] == "tune" and r["model"] == m and r["seed"] == 0}
        candidates = {json.dumps(r["setting"], sort_keys=True) for r in finals}
        scored = [c for c in candidates if c in tuned]
        chosen = (max(scored, key=lambda c: tuned[c]) if scored
                  else json.dumps(finals[-1]["setting"], sort_keys=True))
        out[m] = sorted((r for r in finals if json.dumps(r["setting"], sort_keys=True) == chosen),
                        key=lambda r: r["seed"])
    return rows, out


def summary(path: Path) -> str:
    """Markdown table of the ``final`` rows of one result file: mean (per-seed values) per
    model."""
    rows, finals = final_rows(path)
    keys = ("precision@10", "recall@20", "ndcg@10", "ndcg@20")
    out = [f"{path.name} (test, best-valid epoch; mean over the seeds listed)", "",
           "| model | setting | seeds | " + " | ".join(keys) + " | s/epoch |",
           "|---|---|---|" + "---:|" * (len(keys) + 1)]
    for model, final in finals.items():
        cells = []
        for k in keys:
            vals = [r["test"][k] for r in final]
            cells.append(f"{sum(vals) / len(vals):.4f} ({' / '.join(f'{v:.4f}' for v in vals)})")
        tune = [r["seconds_per_epoch"] for r in rows if r["phase"] == "tune"
                and r["model"] == model]
        setting = ", ".join(f"{k} {v}" for k, v in sorted(final[0]["setting"].items()))
        out.append(f"| {model} | {setting} | {','.join(str(r['seed']) for r in final)} | "
                   + " | ".join(cells) + f" | {sum(tune) / max(1, len(tune)):.2f} |")
    return "\n".join(out)


def means(path: Path) -> dict:
    """Per model, the mean over seeds of the ``final`` rows' test metrics of one result file
    (with the seeds, the chosen setting and the commits that produced them)."""
    return {model: {"seeds": [r["seed"] for r in final], "setting": final[0]["setting"],
                    "commits": sorted({r["commit"] for r in final}),
                    "cpu": sorted({r["cpu"] for r in final}),
                    **{k: sum(r["test"][k] for r in final) / len(final)
                       for k in ("precision@5", "precision@10", "ndcg@5", "ndcg@10",
                                 "recall@20")}}
            for model, final in final_rows(path)[1].items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="ml-100k,ml-latest-small")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "text_baselines")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--summary", action="store_true",
                        help="print the results table of --datasets and exit (no training)")
    parser.add_argument("--means", type=Path, default=None,
                        help="with --summary: also write the per-model means of every result "
                        "file of --datasets to this JSON")
    args = parser.parse_args(argv)
    if args.summary:
        for dataset in args.datasets.split(","):
            for path in sorted(RESULTS.glob(f"text_baselines_{dataset}_*cpu.jsonl")):
                print(summary(path) + "\n")
        if args.means is not None:
            doc = {"what": "mean over seeds of the test metrics of the `final` rows (test read "
                           "once per run), per result file and model",
                   "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
                   "commit": commit(), "date": time.strftime("%Y-%m-%d", time.gmtime()),
                   "means": {p.name: means(p) for d in args.datasets.split(",")
                             for p in sorted(RESULTS.glob(f"text_baselines_{d}_*cpu.jsonl"))}}
            atomic_write_text(args.means, json.dumps(doc, indent=1) + "\n")
        return 0
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    models = [m for m in args.models.split(",") if m]
    # Models without LLM profiles first on every dataset, then RLMRec-Con (profile
    # generation dominates its cost), each dataset in the order given.
    benches = {d: Bench(d, args.work, args.threads) for d in args.datasets.split(",")}
    for group in ([m for m in models if m != "rlmrec-con"],
                  [m for m in models if m == "rlmrec-con"]):
        for dataset, bench in benches.items():
            if not group:
                continue
            chosen = {"lightgcn": bench.best("lightgcn", LIGHTGCN_GRID)}
            for model in group:
                if model != "lightgcn":
                    chosen[model] = bench.best(model, tuning_grid(model, chosen["lightgcn"]))
            log(f"{dataset}: selected {chosen}")
            for seed in seeds:
                for model in group:
                    bench.run("final", model, chosen[model], seed)
            bench._llm = None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
