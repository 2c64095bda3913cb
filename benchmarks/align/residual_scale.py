"""How much of the LLM's correction should a residual-head run rank with? A scale chosen on valid.

A run trained with the residual head (``[user_item] residual = true``, the default preset's)
scores item ``i`` for user ``u`` as ``(h P + alpha e_u) . e_i`` plus a constant per user:
LightGCN's score ``e_u . e_i`` (times the trained ``alpha``) plus the LLM's correction
``h P . e_i`` (``h`` the LLM's hidden state at the slots). This script ranks a finished
run's valid users with the correction multiplied by each ``lambda`` of a grid: ``lambda =
0`` is LightGCN's own ranking (exactly: ``alpha`` only scales it), ``lambda = 1`` the run as
trained. It keeps the ``lambda`` with the best valid N@10 (ties: the one nearest 1, then the
smaller) and reads the test split for two configurations only: the run as trained
(``lambda = 1``) and the chosen ``lambda``. LightGCN is ranked on both splits beside them.
Whether choosing is worth anything is also estimated on valid alone: the scale chosen on
one half of the valid users, scored on the other half (``valid_held_out``).
Nothing is retrained, nothing in the run is written; the LLM runs once per user (its slot
inputs are kept across the grid: the scale acts after it).

    uv run python benchmarks/align/residual_scale.py RUN [RUN ...] --json OUT.json

An existing ``OUT.json`` is added to (a run analysed again replaces its entry), so a list of
runs resumes where it stopped; each entry records its command, commit, machine and seconds.
``summary`` pools the entries by configuration (the run directory's name).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrained_vs_random import lead  # this folder's benchmark helpers
from profile_gen import cpu_model, git_commit
from text_counterfactual import rank_split, refuse_missing_texts

SCALES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)
METRIC = "ndcg@10"


@contextlib.contextmanager
def scaled_correction(head: torch.nn.Module, scale: float) -> Iterator[None]:
    """Multiply the LLM-dependent parts of a :class:`~glta_align.heads.ResidualHead` (its
    projector's weight and bias, and its text query where it has one) by ``scale`` inside
    the block; restored on exit (bit for bit: the originals are kept, not divided back).

    Raises:
        ValueError: ``head`` is not a ``ResidualHead`` (the run was not trained with
            ``[user_item] residual = true``).
    """
    from glta_align.heads import ResidualHead

    if not isinstance(head, ResidualHead):
        raise ValueError(f"the run's head is a {type(head).__name__}, not a ResidualHead: "
                         "only a run trained with [user_item] residual = true has a "
                         "correction to scale")
    params = [p for p in (head.base.projector.weight, head.base.projector.bias,
                          None if head.text_query is None else head.text_query.weight)
              if p is not None]
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p in params:
                p.mul_(scale)
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)


def choose(valid: dict[float, float]) -> float:
    """The scale with the best valid figure; ties go to the one nearest 1, then the smaller.

    Args:
        valid: ``{scale: valid metric}``.
    """
    best = max(valid.values())
    return min((s for s, v in valid.items() if v == best), key=lambda s: (abs(s - 1.0), s))


def held_out_gain(lists: dict[float, torch.Tensor], relevant: torch.Tensor, *,
                  repeats: int = 20, seed: int = 0) -> dict:
    """What choosing the scale on valid is worth on valid users it was not chosen on.

    The valid users are split in two halves (seeded, ``repeats`` times); the scale is chosen
    on one half (:func:`choose`) and scored on the other, both ways round. A valid-only
    estimate of the choice's gain, free of the selection's own optimism (the chosen
    scale's figure on the users that chose it is biased upwards).

    Args:
        lists: ``{scale: (n, k) ranked items}`` of the same ``n`` valid users.
        relevant: (n x I) CSR of their valid items.

    Returns:
        ``{"repeats", "chosen_minus_scale_1", "chosen_minus_scale_0": mean over repeats and
        both halves of the held-out half's N@10 difference, "per_repeat": [...]}``.
    """
    from glta_gllm import ranking_metrics
    from glta_graph.evaluate import select_rows

    n = next(iter(lists.values())).shape[0]
    gen = torch.Generator().manual_seed(seed)

    def score(scale: float, rows: torch.Tensor) -> float:
        return float(ranking_metrics(lists[scale][rows], select_rows(relevant, rows),
                                     ks=(10,))[METRIC])

    per_repeat = []
    for _ in range(repeats):
        perm = torch.randperm(n, generator=gen)
        halves = (perm[: n // 2].sort().values, perm[n // 2:].sort().values)
        one = zero = 0.0
        for pick, held in (halves, halves[::-1]):
            chosen = choose({s: score(s, pick) for s in lists})
            one += (score(chosen, held) - score(1.0, held)) / 2
            if 0.0 in lists:
                zero += (score(chosen, held) - score(0.0, held)) / 2
        per_repeat.append({"minus_scale_1": round(one, 6), "minus_scale_0": round(zero, 6)})
    return {"repeats": repeats,
            "chosen_minus_scale_1": round(statistics.fmean(r["minus_scale_1"]
                                                           for r in per_repeat), 6),
            "chosen_minus_scale_0": round(statistics.fmean(r["minus_scale_0"]
                                                           for r in per_repeat), 6),
            "per_repeat": per_repeat}


def scale_run(run_dir: Path, scales: Sequence[float] = SCALES, llm=None,
              progress=None) -> dict:
    """Valid metrics of the run's GLTA model at each correction scale; test at 1 and at the
    scale chosen on valid; LightGCN on both splits.

    Args:
        run_dir: a finished ``glta pipeline`` run trained with the residual head.
        scales: the grid (must contain 1.0, the run as trained).
        llm: the LLM to rank with (default: the run's own, as ``glta evaluate`` loads it).
        progress: ProgressEvent receiver.

    Raises:
        ValueError: the run's head is not residual, the grid lacks 1.0, or the run has no
            profile text for a ranked user (ranking would write it into the run).

    Returns:
        ``{"ranking", "alpha", "valid": {scale: metrics}, "chosen", "test": {"1.0": metrics,
        "<chosen>": metrics}, "lightgcn": {"valid": metrics, "test": metrics}}``; metrics are
        ``ranking_metrics`` keys at :data:`KS` plus ``users``.
    """
    from glta_cli.runs import _glta_recommender
    from glta_graph.evaluate import select_rows

    if 1.0 not in scales:
        raise ValueError(f"the grid must contain 1.0 (the run as trained), got {list(scales)}")
    rec = _glta_recommender(run_dir, llm)  # as `glta evaluate`: the mode chosen on valid
    refuse_missing_texts(run_dir, rec)
    rec.keep_slots = True  # the LLM runs once per user; the scale acts after it
    valid, lists = {}, {}
    for s in scales:
        with scaled_correction(rec.head, s):
            lists[float(s)], valid[float(s)] = rank_split(rec, run_dir, "valid",
                                                          progress=progress)
    heldout = held_out_gain(lists, select_rows(rec.data.split("valid"),
                                               rec.data.users_with("valid")))
    chosen = choose({s: m[METRIC] for s, m in valid.items()})
    test = {}
    for s in dict.fromkeys((1.0, chosen)):
        with scaled_correction(rec.head, s):
            test[str(s)] = rank_split(rec, run_dir, "test", progress=progress)[1]
    return {"ranking": rec.ranking, "alpha": float(rec.head.alpha.detach()),
            "valid": {str(s): m for s, m in valid.items()}, "chosen": chosen,
            "valid_held_out": heldout, "test": test,
            "lightgcn": {sp: rank_split(rec, run_dir, sp, "lightgcn", progress)[1]
                         for sp in ("valid", "test")}}


def _figure(entry: dict, split: str, which: str) -> float:
    """An entry's N@10 on ``split`` at ``which``: ``scale_1``, ``chosen`` or ``lightgcn``."""
    if which == "lightgcn":
        return entry["lightgcn"][split][METRIC]
    return entry[split][str(entry["chosen"]) if which == "chosen" else "1.0"][METRIC]


def summarise(runs: list[dict]) -> dict:
    """Entries pooled by configuration (the run directory's name): per configuration the
    chosen scales, the mean valid and test N@10 at scale 1, at the chosen scale and
    LightGCN's, the mean held-out estimates, and the chosen scale's test lead over scale 1
    and over LightGCN (:func:`pretrained_vs_random.lead`: mean, spread, ahead, behind, sign
    test)."""
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(Path(r["run"]).name, []).append(r)
    whos = ("scale_1", "chosen", "lightgcn")
    out = {}
    for name, rs in sorted(groups.items()):
        out[name] = {
            "runs": len(rs), "chosen": [r["chosen"] for r in rs],
            **{f"{split}_ndcg@10": {w: round(statistics.fmean(_figure(r, split, w) for r in rs),
                                             6) for w in whos}
               for split in ("test", "valid")},
            **{f"valid_held_out_chosen_minus_scale_{k}": round(statistics.fmean(
                r["valid_held_out"][f"chosen_minus_scale_{k}"] for r in rs), 6) for k in (1, 0)},
            **{f"chosen_minus_{w}_test": lead([_figure(r, "test", "chosen")
                                                - _figure(r, "test", w) for r in rs])
               for w in ("scale_1", "lightgcn")},
        }
    return out


def main(argv: list[str] | None = None, llm=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("runs", type=Path, nargs="+", help="finished glta pipeline runs")
    ap.add_argument("--json", type=Path, required=True, help="result file (added to)")
    ap.add_argument("--scales", default=",".join(str(s) for s in SCALES),
                    help="comma-separated correction scales (must include 1)")
    args = ap.parse_args(argv)
    try:
        scales = tuple(float(s) for s in args.scales.split(",") if s.strip())
    except ValueError:
        ap.error(f"--scales: not a comma-separated list of numbers: {args.scales!r}")
    if 1.0 not in scales or any(s < 0 for s in scales):
        ap.error(f"--scales: must include 1 and no negative value, got {args.scales!r}")
    for run in args.runs:
        if not (run / "metrics.json").is_file():
            print(f"{run}: not a finished run (no metrics.json)", file=sys.stderr)
            return 2
    from glta_gllm.checkpoint import atomic_write_json

    for run in args.runs:
        start = time.perf_counter()
        result = scale_run(run, scales, llm=llm)
        entry = {"run": str(run), "commit": git_commit(), "date": dt.date.today().isoformat(),
                 "machine": {"cpu": cpu_model()},
                 "command": " ".join(["python", "benchmarks/align/residual_scale.py",
                                      *(argv if argv is not None else sys.argv[1:])]),
                 "seconds": round(time.perf_counter() - start, 1), **result}
        # read when writing, not when starting: another process may have added an entry
        doc = json.loads(args.json.read_text()) if args.json.is_file() else {
            "what": __doc__.split("\n", 1)[0], "runs": []}
        doc["runs"] = [r for r in doc["runs"] if r["run"] != str(run)] + [entry]
        doc["summary"] = summarise(doc["runs"])
        atomic_write_json(args.json, doc)
        c = result["chosen"]
        print(f"{run}: chosen scale {c} (valid N@10 {result['valid'][str(c)][METRIC]:.4f} "
              f"against {result['valid']['1.0'][METRIC]:.4f} at 1); test N@10 "
              f"{result['test'][str(c)][METRIC]:.4f} against {result['test']['1.0'][METRIC]:.4f}"
              f" at 1, LightGCN {result['lightgcn']['test'][METRIC]:.4f} "
              f"({entry['seconds']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
