"""The pipeline's final evaluation: every model on valid and test, plus where each wins.

Both splits are ranked for LightGCN and GLTA (``metrics.json`` holds
``{model: {"valid": ..., "test": ...}}``); GLTA's valid metrics are taken from stage 3's
early stopping when it ranked the same model the same way (no second pass). On the
headline split the same ranked lists also give the per-bucket views of
:mod:`glta_graph.buckets` (user activity quintiles, long-tail vs head items), written to
``RUN/breakdown.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glta_cli.report import attention_text, text_cache_text, throughput_line

__all__ = ["BREAKDOWN_NAME", "BY_CHOICES", "SELECT", "SELECT_RANKINGS", "breakdown_markdown",
           "breakdown_run", "evaluate_run_models", "ranked_lists", "select_ranking",
           "stage2_speed", "stage3_selection"]

BREAKDOWN_NAME = "breakdown.json"
# ``[eval] ranking = "select"``: the prediction modes compared on valid (with the trained one).
SELECT = "select"
SELECT_RANKINGS = ("first_k", "mean")
_EXCLUDE = {"valid": ("train",), "test": ("train", "valid")}


def ranked_lists(model: str, run_dir: Path, data: Any, split: str, k: int, *,
                 recommender: Any = None, ranking: str | None = None,
                 progress: Any = None) -> tuple[np.ndarray, torch.Tensor]:
    """Top-``k`` lists of every user with a relevant item in ``split``.

    Args:
        model: ``lightgcn`` or ``glta``.
        run_dir: the run directory (LightGCN's embeddings are read from it).
        data: the run's ``Interactions``.
        split: ``valid`` (train excluded) or ``test`` (train and valid excluded).
        k: list length.
        recommender: a ``GLTARecommender`` (for ``glta``).
        ranking: GLTA's prediction mode (``None``: the trained one).
        progress: ProgressEvent receiver.

    Returns:
        ``(users (n,), ranked (n, k) int64)``.
    """
    from glta_graph import load_graph_embeddings, recommend_embeddings
    from glta_graph.evaluate import exclusion_matrix

    users = data.users_with(split)
    if model == "lightgcn":
        user_emb, item_emb = load_graph_embeddings(run_dir, expected_fingerprint=data.fingerprint)
        _, ranked = recommend_embeddings(user_emb, item_emb, data, users, k,
                                         exclude=_EXCLUDE[split])
        return users, ranked
    if recommender is None:
        raise ValueError("ranking GLTA needs a GLTARecommender")
    ex = exclusion_matrix(data, _EXCLUDE[split])
    _, ranked = recommender.recommend(users, k, exclude=ex, ranking=ranking, progress=progress)
    return users, ranked


def evaluate_run_models(run_dir: Path, data: Any, ks: Sequence[int], headline: str,
                        get_recommender: Callable[[], Any], *, ranking: str | None = None,
                        progress: Any = None) -> tuple[dict[str, dict[str, dict[str, float]]],
                                                       dict[str, Any]]:
    """Evaluate LightGCN and GLTA on valid and test; break the headline split down.

    Args:
        run_dir: the run directory.
        data: the run's ``Interactions``.
        ks: cut-offs.
        headline: the split of the report's headline table (gets the breakdown).
        get_recommender: builds the ``GLTARecommender`` (called once).
        ranking: GLTA's prediction mode at evaluation (``None``: the trained one;
            ``"select"``: chosen on valid by :func:`select_ranking`).
        progress: ProgressEvent receiver.

    Returns:
        ``(metrics {model: {split: {metric: value}}}, breakdown)`` where breakdown is
        ``{"split": headline, "models": {model: {"activity": ..., "popularity": ...}}}``
        (plus ``"glta_ranking"``, the valid choice, with ``ranking="select"``).
    """
    from glta_gllm import ranking_metrics
    from glta_graph.buckets import metrics_by_activity, metrics_by_popularity
    from glta_graph.evaluate import select_rows

    ks = tuple(sorted(int(k) for k in ks))
    rec = get_recommender()
    selection = stage3_selection(run_dir)
    stage3_valid = (selection.get("valid_metrics")
                    if selection.get("valid_metrics")
                    and all(f"ndcg@{k}" in selection["valid_metrics"] for k in ks) else None)
    metrics: dict[str, dict[str, dict[str, float]]] = {"lightgcn": {}, "glta": {}}
    breakdown: dict[str, Any] = {"split": headline, "models": {}}
    glta_valid: dict[str, float] | None = None
    if ranking == SELECT:
        ranking, glta_valid, breakdown["glta_ranking"] = select_ranking(
            run_dir, data, ks, rec, stage3_valid, progress=progress)
    elif stage3_valid is not None and ranking in (None, rec.config.ranking):
        glta_valid = {k: float(v) for k, v in stage3_valid.items()}
    for split in ("valid", "test"):
        relevant = data.split(split)
        for model in ("lightgcn", "glta"):
            if model == "glta" and split == "valid" and glta_valid and split != headline:
                metrics[model][split] = glta_valid
                continue
            users, ranked = ranked_lists(model, run_dir, data, split, max(ks), recommender=rec,
                                         ranking=ranking, progress=progress)
            if not len(users):
                continue
            rel = select_rows(relevant, users)
            metrics[model][split] = {k: float(v)
                                     for k, v in ranking_metrics(ranked, rel, ks=ks).items()}
            if split == headline:
                breakdown["models"][model] = {
                    "activity": metrics_by_activity(ranked, rel, users, data, ks),
                    "popularity": metrics_by_popularity(ranked, rel, data, ks),
                }
    return metrics, breakdown


def select_ranking(run_dir: Path, data: Any, ks: Sequence[int], rec: Any,
                   stage3_valid: dict[str, float] | None, *, progress: Any = None
                   ) -> tuple[str, dict[str, float], dict[str, Any]]:
    """Pick GLTA's prediction mode on the valid split (``[eval] ranking = "select"``).

    Ranks the valid users with each of :data:`SELECT_RANKINGS` (the mode stage 3 validated
    with reuses its figures) and keeps the best by stage 3's ``select_metric``; the test split
    is then read with that mode only.

    Args:
        run_dir: the run directory.
        data: the run's ``Interactions``.
        ks: cut-offs.
        rec: the run's ``GLTARecommender``.
        stage3_valid: stage 3's valid metrics of its own mode (``None``: rank it again).
        progress: ProgressEvent receiver.

    Returns:
        ``(mode, its valid metrics, record)`` with record ``{"chosen", "metric",
        "valid": {mode: value}}`` (kept in breakdown.json and the report).
    """
    from glta_gllm import ranking_metrics
    from glta_graph.evaluate import select_rows

    metric = rec.config.select_metric
    trained = rec.config.ranking
    modes = list(dict.fromkeys((trained, *SELECT_RANKINGS)))
    found: dict[str, dict[str, float]] = {}
    for mode in modes:
        if mode == trained and stage3_valid is not None and metric in stage3_valid:
            found[mode] = {k: float(v) for k, v in stage3_valid.items()}
            continue
        users, ranked = ranked_lists("glta", run_dir, data, "valid", max(ks), recommender=rec,
                                     ranking=mode, progress=progress)
        rel = select_rows(data.split("valid"), users)
        found[mode] = {k: float(v) for k, v in ranking_metrics(ranked, rel, ks=ks).items()}
    chosen = max(modes, key=lambda m: found[m].get(metric, float("-inf")))  # ties: first
    record = {"chosen": chosen, "metric": metric,
              "valid": {m: found[m].get(metric) for m in modes}}
    return chosen, found[chosen], record


def stage3_selection(run_dir: Path) -> dict[str, Any]:
    """Stage 3's epoch choice from ``RUN/user_projector/config.json`` (``best_epoch``,
    ``valid_metrics``, ``stopped_early``, ``epochs_run``, ``valid_history``), its speed and
    what its text cache kept (``text_cache``); ``{}`` before stage 3 or without early
    stopping."""
    path = Path(run_dir) / "user_projector" / "config.json"
    return _config_keys(path, _SELECTION_KEYS + _SPEED_KEYS + ("text_cache",))


_SELECTION_KEYS = ("best_epoch", "valid_metrics", "stopped_early", "epochs_run",
                   "valid_history")
_SPEED_KEYS = ("achieved_gflops", "train_seconds", "model_flops", "timed_steps", "steps",
               "llm_precision", "llm_dtype", "llm_precision_probe", "llm_attention",
               "llm_attention_probe",
               "llm_pointwise", "llm_compiled_layers")


def stage2_speed(run_dir: Path) -> dict[str, Any]:
    """Stage 2's training speed from ``RUN/item_text/item_projector/config.json``
    (``achieved_gflops``, ``train_seconds``, ``model_flops``, ``timed_steps``, ``steps``, the
    LLM precision and probe); ``{}`` before stage 2 or for runs made before it was saved."""
    return _config_keys(Path(run_dir) / "item_text" / "item_projector" / "config.json",
                        _SPEED_KEYS)


def _config_keys(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """The ``keys`` an artifact's ``config.json`` holds; ``{}`` when the file is absent."""
    if not path.is_file():
        return {}
    cfg = json.loads(path.read_text(encoding="utf-8"))
    return {k: cfg[k] for k in keys if k in cfg}


def breakdown_markdown(breakdown: dict[str, Any], selection: dict[str, Any] | None = None,
                       ablation: str | None = None, metric: str = "ndcg@10",
                       stage2: dict[str, Any] | None = None) -> str:
    """Report sections: the ablation, stage 3's epoch selection, the stages' achieved
    GFLOP/s, and the per-bucket tables.

    Args:
        breakdown: what :func:`evaluate_run_models` returned as breakdown.
        selection: stage 3's ``best_epoch`` / ``valid_metrics`` / ``epochs_run`` record and
            speed (:func:`stage3_selection`).
        stage2: stage 2's speed (:func:`stage2_speed`).
        ablation: the run's ``[run] ablation``.
        metric: the metric shown per bucket (``precision@10`` is shown too).

    Returns:
        Markdown text (may be empty).
    """
    lines: list[str] = []
    if ablation:
        lines += [f"Ablation: `{ablation}`.", ""]
    choice = breakdown.get("glta_ranking")
    if choice:
        tried = ", ".join(f"{m} {v:.4f}" for m, v in choice["valid"].items() if v is not None)
        lines += [f"GLTA's prediction mode, chosen on valid {choice['metric']}: "
                  f"`{choice['chosen']}` ({tried}).", ""]
    if selection and selection.get("best_epoch") is not None:
        vm = selection.get("valid_metrics") or {}
        best = ", ".join(f"{k} {v:.4f}" for k, v in vm.items() if k in (metric, "precision@10"))
        lines += [f"Stage 3 kept epoch {int(selection['best_epoch']) + 1} of "
                  f"{selection.get('epochs_run', '?')} run (best valid {best}"
                  f"{'; stopped early' if selection.get('stopped_early') else ''}).", ""]
    for stage, meta in (("Stage 2", stage2), ("Stage 3", selection)):
        speed = throughput_line(meta or {}, stage)
        if speed:
            lines += [speed, ""]
    attention = attention_text(selection or {})
    if attention:
        lines += [attention + ".", ""]
    cached = text_cache_text(selection or {})
    if cached:
        lines += [cached + ".", ""]
    models = breakdown.get("models") or {}
    if not models:
        return "\n".join(lines)
    names = list(models)
    shown = [m for m in (metric, "precision@10") if m]
    lines += [f"## Where each model wins ({breakdown.get('split')} split)", "",
              "By user activity (quintiles of train interactions):", "",
              "| users | n | " + " | ".join(f"{n} {m}" for m in shown for n in names) + " |",
              "|---|---:|" + "---:|" * (len(shown) * len(names))]
    first = models[names[0]]["activity"]
    for label in first:
        cells = [label, f"{first[label]['users']:.0f}"]
        cells += [f"{models[n]['activity'].get(label, {}).get(m, float('nan')):.4f}"
                  for m in shown for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "By item popularity (hits split by the hit item's bucket; the two rows add "
              "up to the overall precision/recall/NDCG; share = fraction of top-10 slots):", "",
              "| items | " + " | ".join(f"{n} {m}" for m in (*shown, "share@10")
                                       for n in names) + " |",
              "|---|" + "---:|" * (3 * len(names))]
    for label in models[names[0]]["popularity"]:
        cells = [label]
        cells += [f"{models[n]['popularity'][label].get(m, float('nan')):.4f}"
                  for m in (*shown, "share@10") for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


BY_CHOICES = ("activity", "popularity")


def breakdown_run(run_dir: str | Path, models: Sequence[str], split: str, ks: Sequence[int],
                  by: str, *, progress: Any = None, groups: int = 5, threshold: int = 5
                  ) -> dict[str, dict[str, dict[str, float]]]:
    """Per-bucket metrics of a run's models (``glta evaluate --by``).

    Args:
        run_dir: the run directory.
        models: ``lightgcn`` and/or ``glta``.
        split: ``valid`` or ``test``.
        ks: cut-offs.
        by: ``activity`` (user quintiles of train interactions) or ``popularity`` (long-tail
            items with <= ``threshold`` train interactions vs the rest).
        progress: ProgressEvent receiver.
        groups: number of activity groups.
        threshold: the long-tail threshold.

    Returns:
        ``{model: {bucket label: {metric: value}}}``.
    """
    from glta_graph.buckets import metrics_by_activity, metrics_by_popularity
    from glta_graph.evaluate import select_rows

    from glta_cli.runs import _glta_recommender, load_run_dataset

    if by not in BY_CHOICES:
        raise ValueError(f"--by: {by!r} is not one of {', '.join(BY_CHOICES)}")
    if split not in _EXCLUDE:
        raise ValueError(f"--split: {split!r} is not valid or test")
    run_dir = Path(run_dir)
    data = load_run_dataset(run_dir)
    ks = tuple(sorted(int(k) for k in ks))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for model in models:
        rec = _glta_recommender(run_dir, None) if model == "glta" else None
        users, ranked = ranked_lists(model, run_dir, data, split, max(ks), recommender=rec,
                                     progress=progress)
        rel = select_rows(data.split(split), users)
        out[model] = (metrics_by_activity(ranked, rel, users, data, ks, groups)
                      if by == "activity" else
                      metrics_by_popularity(ranked, rel, data, ks, threshold))
    return out
