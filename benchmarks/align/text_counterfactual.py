"""Does a trained GLTA model read its users' text? Rank again with each user's text swapped.

The profile and prediction text (``RUN/profiles.jsonl``) is the channel through which the
LLM's pretraining can reach a ranking. Ablations that retrain stage 3 without the text, or
with filler in its place, say whether training *needs* it; this script asks whether a
finished model *uses* it. It loads a finished ``glta pipeline`` run (nothing is retrained,
nothing in the run is written) and ranks the valid and test users in the prediction mode the
run's evaluation chose, under each condition:

- ``original``: the texts as generated (must reproduce the run's ``metrics.json``);
- ``shuffled``: every user gets the text of another user (a seeded random derangement of the
  users that have text), so the prompt keeps its length distribution and kind of words but
  says nothing true about this user;
- ``blank``: no profile or prediction text at all (the prompt without those words).

A model whose figures do not move under ``shuffled`` ignores what its users' texts say.
Running it on a run and on its ``--ablation random-llm`` control of the same seed tells
whether pretrained weights read the text more than random ones (the control's text is the
random LLM's own output, so its text is noise to begin with).

    uv run python benchmarks/align/text_counterfactual.py RUN [RUN ...] --json OUT.json

An existing ``OUT.json`` is added to (a run analysed again with the same ``--seed`` replaces
its entry; another seed, another derangement, adds one), so a list of runs resumes where it
stopped; each entry records its command, commit, machine and seconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_gen import cpu_model, git_commit  # this folder's benchmark helpers

CONDITIONS = ("original", "shuffled", "blank")
KS = (5, 10, 20)


def derangement(users: list[int], seed: int) -> dict[int, int]:
    """A seeded random permutation of ``users`` with no fixed point: ``{user: donor}``, the
    user whose text ``user`` gets. Needs at least two users."""
    if len(users) < 2:
        raise ValueError(f"a derangement needs at least two users, got {len(users)}")
    rng = random.Random(seed)
    while True:  # ~e tries on average
        donors = users[:]
        rng.shuffle(donors)
        if all(u != d for u, d in zip(users, donors, strict=True)):
            return dict(zip(users, donors, strict=True))


def texts_for(profiles: dict[int, dict[str, str]], condition: str, seed: int
              ) -> dict[int, dict[str, str]]:
    """The ``{user: {"profile", "predict"}}`` texts a condition ranks with (a new dict;
    ``profiles`` is left as it is)."""
    if condition == "original":
        return {u: dict(t) for u, t in profiles.items()}
    if condition == "blank":
        return {u: {k: "" for k in t} for u, t in profiles.items()}
    if condition == "shuffled":
        donor = derangement(sorted(profiles), seed)
        return {u: dict(profiles[donor[u]]) for u in profiles}
    raise ValueError(f"unknown condition {condition!r} (one of {', '.join(CONDITIONS)})")


def rank_split(rec, run_dir: Path, split: str, model: str = "glta", progress=None
               ) -> tuple:
    """Rank every user with a relevant item in ``split`` (``glta``: with the recommender
    ``rec``, as it is set up; ``lightgcn``: the run's graph embeddings) and score the lists.

    Returns:
        ``(ranked (n, max(KS)) int64, metrics)``: ``ranking_metrics`` keys at :data:`KS`
        plus ``users`` (n).
    """
    from glta_cli.evaluation import ranked_lists
    from glta_gllm import ranking_metrics
    from glta_graph.evaluate import select_rows

    users, ranked = ranked_lists(model, run_dir, rec.data, split, max(KS), recommender=rec,
                                 progress=progress)
    rel = select_rows(rec.data.split(split), users)
    found = {k: float(v) for k, v in ranking_metrics(ranked, rel, ks=KS).items()}
    found["users"] = len(users)
    return ranked, found


def refuse_missing_texts(run_dir: Path, rec) -> None:
    """Raise ``ValueError`` when ``RUN/profiles.jsonl`` lacks the text of a valid or test user
    the run's prompt needs (ranking would generate it and write it into the run)."""
    if not (rec.config.use_profile or rec.config.use_predict):
        return
    ranked_users = {int(u) for split in ("valid", "test") for u in rec.data.users_with(split)}
    without = sorted(ranked_users - set(rec.prompter.profiles))
    if without:
        raise ValueError(f"{run_dir}: profiles.jsonl has no text for {len(without)} ranked "
                         f"users (first: {without[:3]}); finish the run first")


def rank_under(run_dir: Path, conditions: tuple[str, ...], seed: int, llm=None,
               progress=None) -> dict:
    """Valid and test metrics of the run's GLTA model under each condition.

    Args:
        run_dir: a finished ``glta pipeline`` run with profile or prediction text.
        conditions: names from :data:`CONDITIONS`.
        seed: the derangement's seed.
        llm: the LLM to rank with (default: the run's own, as ``glta evaluate`` loads it).
        progress: ProgressEvent receiver.

    Raises:
        ValueError: the run has no profile/prediction text, or none for some ranked user
            (ranking would write their text into the run).

    Returns:
        ``{"ranking": mode, "texts": n, "conditions": {condition: {"valid": {metric: v},
        "test": {...}}}}`` with each split's metrics over its users (``users`` included).
    """
    from glta_cli.runs import _glta_recommender

    out: dict = {"conditions": {}}
    for condition in conditions:
        rec = _glta_recommender(run_dir, llm)  # as `glta evaluate`: the mode chosen on valid
        llm = rec.llm  # loaded once (with the run's adapter, where it has one)
        cfg = rec.config
        if not (cfg.use_profile or cfg.use_predict):
            raise ValueError(f"{run_dir}: the run's prompt has no profile or prediction text")
        profiles = rec.prompter.profiles
        if len(profiles) < 2:
            raise ValueError(f"{run_dir}: {len(profiles)} users with text; nothing to swap")
        refuse_missing_texts(run_dir, rec)
        rec.prompter.profiles = texts_for(profiles, condition, seed)
        rec.prompter._text_cache.clear()
        out["ranking"], out["texts"] = rec.ranking, len(profiles)
        found = {split: rank_split(rec, run_dir, split, progress=progress)[1]
                 for split in ("valid", "test")}
        out["conditions"][condition] = found
    return out


def main(argv: list[str] | None = None, llm=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("runs", type=Path, nargs="+", help="finished glta pipeline runs")
    ap.add_argument("--json", type=Path, required=True, help="result file (added to)")
    ap.add_argument("--conditions", default=",".join(CONDITIONS),
                    help=f"comma-separated, of {', '.join(CONDITIONS)}")
    ap.add_argument("--seed", type=int, default=0, help="the derangement's seed")
    args = ap.parse_args(argv)
    conditions = tuple(c for c in args.conditions.split(",") if c)
    bad = [c for c in conditions if c not in CONDITIONS]
    if bad:
        ap.error(f"--conditions: unknown {', '.join(bad)} (one of {', '.join(CONDITIONS)})")
    for run in args.runs:
        if not (run / "metrics.json").is_file():
            print(f"{run}: not a finished run (no metrics.json)", file=sys.stderr)
            return 2
        start = time.perf_counter()
        result = rank_under(run, conditions, args.seed, llm=llm)
        recorded = json.loads((run / "metrics.json").read_text()).get("glta", {})
        base = result["conditions"].get("original")
        entry = {"run": str(run), "seed": args.seed, "commit": git_commit(),
                 "date": dt.date.today().isoformat(), "machine": {"cpu": cpu_model()},
                 "command": " ".join(["python", "benchmarks/align/text_counterfactual.py",
                                      *(argv if argv is not None else sys.argv[1:])]),
                 "seconds": round(time.perf_counter() - start, 1),
                 "recorded": {s: recorded.get(s, {}).get("ndcg@10") for s in ("valid", "test")},
                 **result}
        if base is not None:
            entry["minus_original"] = {
                c: {s: round(m[s]["ndcg@10"] - base[s]["ndcg@10"], 6) for s in ("valid", "test")}
                for c, m in result["conditions"].items() if c != "original"}
        # read when writing, not when starting: another process may have added an entry
        # during the minutes this run took
        doc = json.loads(args.json.read_text()) if args.json.is_file() else {
            "what": __doc__.split("\n", 1)[0], "runs": []}
        doc["runs"] = [r for r in doc["runs"]
                       if (r["run"], r.get("seed")) != (str(run), args.seed)] + [entry]
        from glta_gllm.checkpoint import atomic_write_json

        atomic_write_json(args.json, doc)
        line = ", ".join(f"{c} valid {m['valid']['ndcg@10']:.4f} test {m['test']['ndcg@10']:.4f}"
                         for c, m in result["conditions"].items())
        print(f"{run}: N@10 {line} ({entry['seconds']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
