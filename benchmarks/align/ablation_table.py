"""The ablation table: every row of an ablation JSON over seeds, paired with the run it came from.

Joins committed ablation JSONs (``ablations.py``), runs nothing. Per dataset and row it
writes the mean, spread (max - min) and per-seed values of valid N@10 and test P@10 / N@10,
and, per seed, the row's difference from the run it was copied from (its *source*: the run
in ``RUN_ROOT/seedS/full``, or ``random-llm`` for the rows ``ablations.py`` copies from that
run; found by the ``--out`` of each recorded command, falling back to the seed's ``full``
row). Paired differences are what the ablations measure: two runs of one configuration at
one seed differ by as much as seeds do, so a row's mean alone mixes its effect with which
``full`` run it was copied from. ``full-repeat`` (a second run of ``full``) is paired with
``full``: its difference is the run-to-run variation, the yardstick for every other row.
The paper's ablation figures (MovieLens = ML-1M) are beside, as ratios to its GLTA row.
A second table sets every pretrained-LLM row beside its random-weight control (``X`` and
``X-random-llm``, ``full`` and ``random-llm``) seed by seed: pretrained minus random on
valid and test N@10, by user-activity quintile and on the long-tail items, the question of
whether and where SmolLM2's pretrained weights add anything.

    uv run python benchmarks/align/ablation_table.py \\
        benchmarks/align/results/ablation_default_cpu_xeon_amx_2026-12-04.json \\
        --out benchmarks/align/results/ablation_table_default_cpu_xeon_amx_2026-12-05.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections import Counter
from pathlib import Path

from ablations import COPY_FROM, PAPER, run_dir, spread_stats  # this folder's scripts
from profile_gen import git_commit

# Display order; rows not listed follow in the order first recorded.
ORDER = ("full", "full-repeat", "random-llm", "random-llm-repeat", "no-text", "filler-text",
         "no-pf", "no-pd", "no-ia", "no-ua", "fl", "ar", "plain-head")
WHAT = {
    "full": "the default preset with the paper's prompt order and head (pretrained SmolLM2, "
            "profile and prediction text on, no residual, lr 1e-3; the default until "
            "2026-12-05)",
    "full-repeat": "a second run of full (run-to-run variation)",
    "random-llm-repeat": "a second run of random-llm, copied from full-repeat",
    "random-llm": "randomly initialised LLM of the same shape (control)",
    "no-text": "profile and prediction text off [extra]",
    "no-pf": "profile text off (w/o PF)",
    "no-pd": "prediction text off (w/o PD)",
    "no-ia": "stage 2 skipped (w/o IA)",
    "no-ua": "no user soft token (w/o UA)",
    "fl": "top-10 of the first slot (FL)",
    "ar": "autoregressive ranking (AR)",
    "plain-head": "the paper's plain GLLM head",
    "attention-eager": "stage 3 retrained with eager attention kernels (execution only)",
    "lr-cosine": "stage 3's learning rate on a cosine schedule [extra]",
    "filler-text": "profile and prediction text replaced by as many '.' tokens [extra]",
    "history-30": "30 history items as soft tokens instead of the default's 5 [extra]",
    "no-text-random-llm": "random-llm without profile and prediction text [extra]",
    "residual": "residual head: LightGCN's score + the LLM's correction [extra]",
    "lora": "stage 3 also trains a LoRA adapter on the LLM (r 8, q/v) [extra]",
    "lora-random-llm": "lora with the randomly initialised LLM [extra]",
    "residual-lr1e-4": "residual head with stage 3 at lr 1e-4 instead of 1e-3 [extra]",
    "residual-lora": "residual head and the LoRA adapter together [extra]",
    "residual-lr1e-4-random-llm": "residual-lr1e-4 with the randomly initialised LLM [extra]",
    "residual-lr1e-4-text-first": "residual-lr1e-4 with the text first in the prompt (the "
                                  "default preset since 2026-12-05) [extra]",
    "residual-lr1e-4-text-first-random-llm": "residual-lr1e-4-text-first with the randomly "
                                             "initialised LLM [extra]",
    "text-first": "profile and prediction text before the soft tokens in the prompt [extra]",
    "profile-shared": "profile/prediction prompts with the item descriptions first, run once "
                      "for both texts [extra]",
}
METRICS = {"valid N@10": ("valid", "ndcg@10"), "test P@10": ("test", "precision@10"),
           "test N@10": ("test", "ndcg@10")}
# The paper's ablations as ratios to its GLTA row (MovieLens, ML-1M), with the metric used.
_G = PAPER["P@10 GLTA"]["MovieLens"]
_F = PAPER["N@10 first-k (GLTA)"]["MovieLens"]
PAPER_RATIO = {
    "no-ia": ("P@10", PAPER["P@10 w/o IA"]["MovieLens"] / _G),
    "no-ua": ("P@10", PAPER["P@10 w/o UA"]["MovieLens"] / _G),
    "fl": ("N@10", PAPER["N@10 FL"]["MovieLens"] / _F),
    "ar": ("N@10", PAPER["N@10 AR"]["MovieLens"] / _F),
}


def source_of(run: dict, runs: list[dict],
              pair_with: dict[str, str] | None = None) -> dict | None:
    """The recorded run ``run`` was copied from (same dataset and seed), or ``None``.

    ``pair_with`` (``{row: other row}``, ``--pair``) pairs a row with the seed's run of
    another row instead (a row that differs from that one in a single setting, e.g. a batch
    size tried on top of ``no-pd``, while both were copied from ``full``); ``None`` when the
    seed has no run of it.

    ``full`` has none; ``full-repeat`` pairs with ``full``; every other row with the run
    recorded at ``RUN_ROOT/seedS/<COPY_FROM.get(row, "full")>`` beside its own run directory
    (``row``: the name it ran under, ``renamed_from`` when merged under another), else with
    the seed's run of that row, else with its ``full`` row. A source finished before its copy
    started, so runs recorded on a later date than ``run`` are never its source (a directory
    rerun since, e.g. a ``random-llm-repeat``, is not what an earlier copy was made from).
    """
    row = run["row"]
    if row == "full":
        return None
    same = [r for r in runs if r["dataset"] == run["dataset"] and r["seed"] == run["seed"]
            and r is not run and r.get("date", "") <= run.get("date", "")]
    by_row = {r["row"]: r for r in same}
    if pair_with and row in pair_with:
        return by_row.get(pair_with[row])
    if row == "full-repeat":
        return by_row.get("full")
    # a run merged under a new name (``renamed_from``) was copied as its old row was
    base = COPY_FROM.get(run.get("renamed_from") or row, "full")
    out = run_dir(run)
    if out is not None:
        want = out.parent / base
        for r in same:
            if r["row"] != row and run_dir(r) == want:
                return r
    return by_row.get(base) or by_row.get("full")


def _value(run: dict, split: str, metric: str) -> float | None:
    """GLTA's ``metric`` on ``split`` in a recorded run (``None`` if absent)."""
    got = run["result"]["metrics"].get("glta", {}).get(split, {}).get(metric)
    return None if got is None else float(got)


def _activity(run: dict) -> dict[str, float]:
    """GLTA's test N@10 per user-activity quintile (``{"Q1": ..., ...}``; empty if absent)."""
    buckets = (run["result"].get("breakdown") or {}).get("models", {}).get("glta", {}).get(
        "activity", {})
    return {name.split()[0]: float(v["ndcg@10"]) for name, v in buckets.items()
            if "ndcg@10" in v}


def table(runs: list[dict], what: dict[str, str] | None = None,
          pair_with: dict[str, str] | None = None) -> dict:
    """Per dataset and row: seeds, the metrics' mean / spread / values, and the paired
    differences from each run's source (``what``: row descriptions, default :data:`WHAT`;
    ``pair_with``: rows paired with another row's runs, see :func:`source_of`).

    Returns:
        ``{dataset: {row: {"seeds", "what", metric: stats, "delta": {metric: stats},
        "ratio": {"test P@10" | "test N@10": stats}, "sources": [row per seed],
        "paper_ratio": [metric, value] | None, "stage3 TFLOP per epoch": stats (when
        every seed's run recorded its FLOPs)}}}`` where stats is
        ``{"mean", "spread", "values"}`` over the row's seeds (``delta`` / ``ratio`` over
        the seeds whose source is recorded); ``"machines"``: each seed's CPU model (None
        where its run names none).
    """
    out: dict = {}
    names = list(ORDER) + [r["row"] for r in runs if r["row"] not in ORDER]
    for ds in dict.fromkeys(r["dataset"] for r in runs):
        for row in dict.fromkeys(names):
            mine = sorted((r for r in runs if r["dataset"] == ds and r["row"] == row
                           and _value(r, "test", "ndcg@10") is not None),
                          key=lambda r: r["seed"])
            if not mine:
                continue
            entry: dict = {"seeds": [r["seed"] for r in mine], "what": (what or WHAT).get(row, row)}
            for name, (split, metric) in METRICS.items():
                xs = [v for r in mine if (v := _value(r, split, metric)) is not None]
                if xs:
                    entry[name] = spread_stats(xs)
            deltas: dict[str, list[float]] = {}
            ratios: dict[str, list[float]] = {}
            by_activity: dict[str, list[float]] = {}
            sources = []
            for r in mine:
                src = source_of(r, runs, pair_with)
                sources.append(None if src is None else src["row"])
                if src is None:
                    continue
                for name, (split, metric) in METRICS.items():
                    a, b = _value(r, split, metric), _value(src, split, metric)
                    if a is not None and b is not None:
                        deltas.setdefault(name, []).append(a - b)
                        if split == "test" and b > 0:
                            ratios.setdefault(name, []).append(a / b)
                mine_q, theirs_q = _activity(r), _activity(src)
                for q in sorted(set(mine_q) & set(theirs_q)):
                    by_activity.setdefault(q, []).append(mine_q[q] - theirs_q[q])
            entry["sources"] = sources
            entry["machines"] = [(r.get("machine") or {}).get("cpu") for r in mine]
            entry["delta"] = {k: spread_stats(v) for k, v in deltas.items()}
            entry["ratio"] = {k: spread_stats(v) for k, v in ratios.items()}
            entry["activity_delta"] = {k: spread_stats(v) for k, v in by_activity.items()}
            entry["paper_ratio"] = list(PAPER_RATIO[row]) if row in PAPER_RATIO else None
            per_epoch = [_stage3_tflop_per_epoch(r) for r in mine]
            if all(x is not None for x in per_epoch):
                entry["stage3 TFLOP per epoch"] = spread_stats(per_epoch)
            out.setdefault(ds, {})[row] = entry
    return out


def _stage3_tflop_per_epoch(run: dict) -> float | None:
    """Stage 3's model FLOPs per trained epoch of a run, in TFLOP, rounded to 0.1 (recorded
    since ablations.py reads ``model_flops``; None for older records)."""
    s = run["result"].get("stage3") or {}
    flops, epochs = s.get("model_flops"), s.get("epochs_run")
    return round(flops / epochs / 1e12, 1) if flops and epochs else None


def _tail_hits(run: dict) -> float | None:
    """GLTA's test hit rate@20 on the long-tail items (the popularity breakdown's bucket
    of items with few train interactions; ``None`` if absent)."""
    buckets = (run["result"].get("breakdown") or {}).get("models", {}).get("glta", {}).get(
        "popularity", {})
    for name, v in buckets.items():
        if name.startswith("tail") and "hit_rate@20" in v:
            return float(v["hit_rate@20"])
    return None


def pretrained_of(row: str) -> str | None:
    """The pretrained-LLM row a random-weight control row is the control of (``None`` for
    a row that is no such control): ``random-llm`` -> ``full``, ``random-llm-repeat`` ->
    ``full-repeat``, ``X-random-llm`` -> ``X``."""
    if row == "random-llm":
        return "full"
    if row == "random-llm-repeat":
        return "full-repeat"
    if row.endswith("-random-llm"):
        return row[: -len("-random-llm")]
    return None


def control_pairs(runs: list[dict]) -> dict:
    """Per dataset, each pretrained-LLM row against its random-weight control, seed by seed.

    ``random-llm`` (and ``random-llm-repeat``) is set against the run it was copied from
    (:func:`source_of`, as the main table pairs it: a ``full`` run of the same seed); every
    other control ``X-random-llm`` against the seed's recorded ``X`` run.

    Returns:
        ``{dataset: {row: {"control": control row, "seeds": [...], "valid N@10": stats,
        "test N@10": stats, "pretrained ahead on valid": int, "activity": {quintile:
        stats}, "tail hit@20": stats}}}`` with stats ``{"mean", "spread", "values"}`` of
        pretrained minus random over the seeds where both rows are recorded; rows without a
        recorded pair are left out.
    """
    out: dict = {}
    by_key = {(r["dataset"], r["seed"], r["row"]): r for r in runs}
    for ds, seed, control in sorted(by_key, key=lambda k: (k[0], k[2], k[1])):
        row = pretrained_of(control)
        if row is None:
            continue
        theirs = by_key[(ds, seed, control)]
        if row in ("full", "full-repeat"):
            mine = source_of(theirs, runs)
            mine = mine if mine is not None and mine["row"] in ("full", "full-repeat") else None
        else:
            mine = by_key.get((ds, seed, row))
        if mine is None:
            continue
        entry = out.setdefault(ds, {}).setdefault(row, {"control": control, "seeds": [],
                                                         "_d": {}})
        entry["seeds"].append(seed)
        for name, (split, metric) in (("valid N@10", ("valid", "ndcg@10")),
                                      ("test N@10", ("test", "ndcg@10"))):
            a, b = _value(mine, split, metric), _value(theirs, split, metric)
            if a is not None and b is not None:
                entry["_d"].setdefault(name, []).append(a - b)
        qa, qb = _activity(mine), _activity(theirs)
        for q in sorted(set(qa) & set(qb)):
            entry["_d"].setdefault(f"activity {q}", []).append(qa[q] - qb[q])
        ta, tb = _tail_hits(mine), _tail_hits(theirs)
        if ta is not None and tb is not None:
            entry["_d"].setdefault("tail hit@20", []).append(ta - tb)
    for rows in out.values():
        for entry in rows.values():
            d = entry.pop("_d")
            for name in ("valid N@10", "test N@10", "tail hit@20"):
                if name in d:
                    entry[name] = spread_stats(d[name])
            entry["pretrained ahead on valid"] = sum(x > 0 for x in d.get("valid N@10", []))
            entry["activity"] = {k.split()[1]: spread_stats(v) for k, v in d.items()
                                 if k.startswith("activity ")}
    return out


BASELINES = ("lightgcn", "lightgcn+")


def baseline_pairs(runs: list[dict]) -> dict:
    """Per dataset and row, GLTA minus the baselines trained in the same run (LightGCN, and
    LightGCN+ where the run has it), seed by seed: the question of whether GLTA is ahead.

    Returns:
        ``{dataset: {row: {baseline: {"seeds": [...], "valid N@10": stats, "test N@10":
        stats, "ahead on valid": int, "ahead on test": int}}}}`` with stats ``{"mean",
        "spread", "values"}`` of GLTA minus the baseline over the seeds where both are
        recorded; baselines a row's runs lack are left out.
    """
    out: dict = {}
    names = list(ORDER) + [r["row"] for r in runs if r["row"] not in ORDER]
    for ds in dict.fromkeys(r["dataset"] for r in runs):
        for row in dict.fromkeys(names):
            mine = sorted((r for r in runs if r["dataset"] == ds and r["row"] == row),
                          key=lambda r: r["seed"])
            for base in BASELINES:
                d: dict[str, list[float]] = {}
                seeds = []
                for r in mine:
                    metrics = r["result"]["metrics"]
                    if base not in metrics or "glta" not in metrics:
                        continue
                    pair = {}
                    for name, split in (("valid N@10", "valid"), ("test N@10", "test")):
                        a = metrics["glta"].get(split, {}).get("ndcg@10")
                        b = metrics[base].get(split, {}).get("ndcg@10")
                        if a is not None and b is not None:
                            pair[name] = float(a) - float(b)
                    if len(pair) == 2:
                        seeds.append(r["seed"])
                        for name, x in pair.items():
                            d.setdefault(name, []).append(x)
                if not seeds:
                    continue
                out.setdefault(ds, {}).setdefault(row, {})[base] = {
                    "seeds": seeds,
                    **{name: spread_stats(xs) for name, xs in d.items()},
                    "ahead on valid": sum(x > 0 for x in d["valid N@10"]),
                    "ahead on test": sum(x > 0 for x in d["test N@10"])}
    return out


def _cell(stats: dict | None, signed: bool = False, digits: int = 4) -> str:
    """``mean (spread)`` over several seeds, the value alone for one, or ``-``."""
    if not stats:
        return "-"
    fmt = ("{:+." if signed else "{:.") + f"{digits}f}}"
    if len(stats["values"]) == 1:
        return fmt.format(stats["mean"])
    return f"{fmt.format(stats['mean'])} ({stats['spread']:.{digits}f})"


def markdown(result: dict) -> str:
    """One table per dataset: mean (spread) over seeds, paired differences from each run's
    source (mean (spread) over seeds), the paired test ratio in the paper's metric (P@10
    where the paper gives none), and the paper's ratio to its GLTA row."""
    lines = []
    for ds, rows in result.items():
        lines += [f"**{ds}**", "",
                  "| row | seeds | valid N@10 | test P@10 | test N@10 | paired: valid N@10 "
                  "| paired: test N@10 | paired: test ratio | paper (ML-1M) ratio |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for row, e in rows.items():
            paper = e["paper_ratio"]
            metric = paper[0] if paper else "P@10"  # the paper's metric where it has one
            ratio = e["ratio"].get(f"test {metric}")
            lines.append(
                f"| `{row}`: {e['what']} | {','.join(map(str, e['seeds']))} | "
                f"{_cell(e.get('valid N@10'))} | {_cell(e.get('test P@10'))} | "
                f"{_cell(e.get('test N@10'))} | {_cell(e['delta'].get('valid N@10'), True)} | "
                f"{_cell(e['delta'].get('test N@10'), True)} | "
                f"{metric + ' ' + _cell(ratio, digits=2) if ratio else '-'} | "
                f"{f'{paper[0]} {paper[1]:.2f}' if paper else '-'} |")
        lines.append("")
        cpus = Counter(m for e in rows.values() for m in e["machines"] if m)
        if len(cpus) > 1:
            usual = cpus.most_common(1)[0][0]
            odd = [f"`{row}` seed {seed}: {m}" for row, e in rows.items()
                   for seed, m in zip(e["seeds"], e["machines"], strict=True)
                   if m and m != usual]
            lines += [f"Runs on {usual} except " + "; ".join(odd) + ".", ""]
        quintiles = sorted({q for e in rows.values() for q in e["activity_delta"]})
        if quintiles:
            lines += [f"Paired test N@10 difference by user-activity quintile ({ds}; Q1 the "
                      "lightest users; mean (spread) over seeds):", "",
                      "| row | " + " | ".join(quintiles) + " |",
                      "|---|" + "---:|" * len(quintiles)]
            for row, e in rows.items():
                if e["activity_delta"]:
                    lines.append(f"| `{row}` | " + " | ".join(
                        _cell(e["activity_delta"].get(q), True) for q in quintiles) + " |")
            lines.append("")
    return "\n".join(lines)


def control_markdown(pairs: dict) -> str:
    """One table per dataset: pretrained minus random-weight LLM, paired by seed (mean
    (spread) over seeds), overall, by user-activity quintile and on the long-tail items."""
    lines = []
    for ds, rows in pairs.items():
        quintiles = sorted({q for e in rows.values() for q in e["activity"]})
        lines += [f"Pretrained SmolLM2 minus its random-weight control ({ds}; same seed, "
                  "mean (spread) over seeds; test N@10 unless named):", "",
                  "| row (control) | seeds | pretrained ahead on valid | valid N@10 | "
                  "test N@10 | " + " | ".join(quintiles) + " | tail items: test hit@20 |",
                  "|---|---|---:|---:|---:|" + "---:|" * len(quintiles) + "---:|"]
        for row, e in rows.items():
            lines.append(
                f"| `{row}` (`{e['control']}`) | {','.join(map(str, e['seeds']))} | "
                f"{e['pretrained ahead on valid']} of {len(e['seeds'])} | "
                f"{_cell(e.get('valid N@10'), True)} | {_cell(e.get('test N@10'), True)} | "
                + " | ".join(_cell(e["activity"].get(q), True) for q in quintiles)
                + f" | {_cell(e.get('tail hit@20'), True)} |")
        lines.append("")
    return "\n".join(lines)


def baseline_markdown(pairs: dict) -> str:
    """One table per dataset: GLTA minus the LightGCN (and LightGCN+) of the same run,
    valid and test N@10, mean (spread) over seeds, and at how many seeds GLTA is ahead."""
    lines = []
    for ds, rows in pairs.items():
        lines += [f"GLTA minus the baselines of the same run ({ds}; N@10, mean (spread) over "
                  "seeds):", "",
                  "| row | baseline | seeds | valid | GLTA ahead on valid | test | "
                  "GLTA ahead on test |",
                  "|---|---|---|---:|---:|---:|---:|"]
        for row, bases in rows.items():
            for base, e in bases.items():
                n = len(e["seeds"])
                lines.append(
                    f"| `{row}` | {'LightGCN' if base == 'lightgcn' else 'LightGCN+'} | "
                    f"{','.join(map(str, e['seeds']))} | {_cell(e.get('valid N@10'), True)} | "
                    f"{e['ahead on valid']} of {n} | {_cell(e.get('test N@10'), True)} | "
                    f"{e['ahead on test']} of {n} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ablations", type=Path, nargs="+", help="ablation JSONs (ablations.py)")
    ap.add_argument("--out", type=Path, help="write the JSON here (else print only)")
    ap.add_argument("--what", nargs="+", default=[], metavar="ROW=TEXT",
                    help="describe ROW as TEXT (e.g. full=... for a file whose `full` runs "
                    "another preset)")
    ap.add_argument("--pair", nargs="+", default=[], metavar="ROW=BASE",
                    help="pair ROW's runs with BASE's runs of the same seed instead of the "
                    "run ROW was copied from")
    args = ap.parse_args(argv)

    def by_row(items: list[str], flag: str, form: str) -> dict[str, str]:  # ROW=X -> {ROW: X}
        out = {}
        for item in items:
            row, eq, value = item.partition("=")
            if not eq or not row or not value:
                ap.error(f"{flag} takes {form}, got {item!r}")
            out[row] = value
        return out

    pair_with = by_row(args.pair, "--pair", "ROW=BASE")
    what = {**WHAT, **by_row(args.what, "--what", "ROW=TEXT")}
    missing = [str(p) for p in args.ablations if not p.is_file()]
    if missing:
        ap.error(f"no such file: {', '.join(missing)}")
    runs: list[dict] = []
    seen: set = set()
    for path in args.ablations:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            ap.error(f"{path}: not JSON ({exc})")
        for run in doc.get("runs", []):
            key = (run["dataset"], run["seed"], run["row"])
            if key not in seen:  # the first file recording a run wins
                seen.add(key)
                runs.append({**run, "machine": run.get("machine", doc.get("machine"))})
    result = table(runs, what, pair_with)
    if not result:
        ap.error("no GLTA runs with test metrics in " + ", ".join(map(str, args.ablations)))
    pairs = control_pairs(runs)
    baselines = baseline_pairs(runs)
    print(markdown(result))
    print(control_markdown(pairs))
    print(baseline_markdown(baselines))
    if args.out:
        from glta_gllm.checkpoint import atomic_write_json

        doc = {
            "what": "GLTA's ablation rows over seeds: valid N@10 and test P@10 / N@10 mean, "
                    "spread and values, and each run's paired difference from the run it was "
                    "copied from; the paper's ablations as ratios to its GLTA row; "
                    "pretrained_vs_random: each pretrained-LLM row minus its random-weight "
                    "control, seed by seed, overall, by activity quintile and on tail "
                    "items; glta_vs_baselines: GLTA minus the LightGCN (and LightGCN+) "
                    "trained in the same run, seed by seed",
            "command": "python benchmarks/align/ablation_table.py " + " ".join(
                a if " " not in a else repr(a)
                for a in (argv if argv is not None else sys.argv[1:])),
            "commit": git_commit(),
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
            "sources": [str(p) for p in args.ablations],
            "table": result,
            "pretrained_vs_random": pairs,
            "glta_vs_baselines": baselines,
        }
        atomic_write_json(args.out, doc)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
