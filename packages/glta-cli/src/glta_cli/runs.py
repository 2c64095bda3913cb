"""Pure helpers over a run directory: load its dataset, evaluate, recommend, inspect.

The commands in :mod:`glta_cli.commands` only parse options and call these.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import importlib
import io
import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from glta_gllm.checkpoint import CheckpointError, atomic_write_text

__all__ = [
    "DATASET_DIR",
    "GLTA_ARTIFACTS",
    "METRICS_NAME",
    "RESOLVED_CONFIG_NAME",
    "RunError",
    "available_models",
    "chosen_ranking",
    "code_fingerprint",
    "evaluate_run",
    "inspect_run",
    "load_dataset_dir",
    "load_run_dataset",
    "metric_rows",
    "read_metrics",
    "read_run_json",
    "recommend_run",
    "resolve_users",
    "write_recommendations",
]

DATASET_DIR = "dataset"
METRICS_NAME = "metrics.json"
RESOLVED_CONFIG_NAME = "resolved-config.toml"
GRAPH_DIR = "graph"
# Artifacts that must all be present for the run to hold a trained GLTA model.
GLTA_ARTIFACTS = ("item_projector", "user_projector", "gllm_head")
ARTIFACTS = ("graph", "item_projector", "user_projector", "gllm_head", "lora")
MODELS = ("lightgcn", "glta")


class RunError(ValueError):
    """A run directory lacks what a command needs (the message names the path)."""


def load_dataset_dir(path: str | os.PathLike[str]) -> Any:
    """Load a prepared dataset folder (``Interactions.save`` layout) as ``Interactions``."""
    from glta_graph.data import Interactions

    path = Path(path)
    if not path.exists():
        raise RunError(f"{path}: dataset folder does not exist (make one with `glta data prepare`)")
    return Interactions.load(path)


def load_run_dataset(run_dir: str | os.PathLike[str]) -> Any:
    """Load ``RUN/dataset`` as ``Interactions``; errors name the run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: run directory does not exist")
    if not (run_dir / DATASET_DIR).is_dir():
        raise RunError(
            f"{run_dir}: not a GLTA run directory (no {DATASET_DIR}/; make one with "
            "`glta graph train` or `glta pipeline`)"
        )
    return load_dataset_dir(run_dir / DATASET_DIR)


def available_models(run_dir: str | os.PathLike[str]) -> list[str]:
    """Models a run can rank with: ``lightgcn`` when ``graph/`` exists, ``glta`` when the
    item projector, user projector and GLLM head all exist."""
    run_dir = Path(run_dir)
    models = []
    if (run_dir / GRAPH_DIR).is_dir():
        models.append("lightgcn")
    if all((run_dir / a).is_dir() for a in GLTA_ARTIFACTS):
        models.append("glta")
    return models


def _check_model(run_dir: Path, model: str) -> str:
    have = available_models(run_dir)
    if model == "auto":
        if not have:
            raise RunError(f"{run_dir}: no trained model (no graph/ artifact); train one first")
        return "glta" if "glta" in have else "lightgcn"
    if model not in MODELS:
        raise RunError(f"unknown model {model!r}; choose lightgcn, glta or auto")
    if model not in have:
        missing = [GRAPH_DIR] if model == "lightgcn" else [
            a for a in GLTA_ARTIFACTS if not (run_dir / a).is_dir()
        ]
        raise RunError(
            f"{run_dir}: model {model!r} is not trained in this run "
            f"(missing {', '.join(m + '/' for m in missing)})"
        )
    return model


def _glta_recommender(run_dir: Path, llm: Any | None) -> Any:
    """``GLTARecommender.from_run``; without ``llm`` it loads the LLM the run was trained with.
    It ranks in the prediction mode the pipeline chose on valid (:func:`chosen_ranking`),
    so ``glta evaluate`` / ``recommend`` give the model ``metrics.json`` reports. Warns when
    the run's evaluation was made by other glta code (:func:`code_fingerprint` against the
    ``glta_code`` of ``RUN/breakdown.json``): the figures may then differ in the last digits."""
    from glta_align import GLTARecommender

    rec = GLTARecommender.from_run(run_dir, llm=llm)
    rec.ranking = chosen_ranking(run_dir) or rec.ranking
    made = _breakdown(run_dir).get("glta_code")
    if made is not None and made != code_fingerprint():
        warnings.warn(f"{run_dir}: metrics.json was written by other glta code (code "
                      f"{made}, this glta: {code_fingerprint()}); rankings can differ from "
                      "it in the last digits (kernels change rounding: int8 runs by up to "
                      "about 0.002 N@10). Rank with the glta the run was made with to "
                      "reproduce it", UserWarning, stacklevel=2)
    return rec


GLTA_PACKAGES = ("glta_gllm", "glta_graph", "glta_align", "glta_cli")


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """16 hex digits naming the glta code installed here: the SHA-256 of the four packages'
    Python sources (each file's path inside its package and its bytes, in sorted order).
    Two installs give the same fingerprint when they run the same glta code; the pipeline's
    evaluation records it in ``RUN/breakdown.json`` (``glta_code``), and ``glta evaluate`` /
    ``recommend`` warn when a run's differs from theirs."""
    digest = hashlib.sha256()
    for name in GLTA_PACKAGES:
        root = Path(importlib.import_module(name).__file__).parent
        for path in sorted(root.rglob("*.py")):
            digest.update(f"{name}/{path.relative_to(root).as_posix()}\0".encode())
            digest.update(path.read_bytes())
            digest.update(b"\0")
    return digest.hexdigest()[:16]


def chosen_ranking(run_dir: str | os.PathLike[str]) -> str | None:
    """The prediction mode the pipeline's evaluation chose on valid for GLTA
    (``[eval] ranking = "select"``, recorded in ``RUN/breakdown.json``), or ``None`` (no
    such record: the mode stage 3 trained for applies).

    Raises:
        RunError: ``breakdown.json`` is not valid JSON (named).
    """
    choice = _breakdown(run_dir).get("glta_ranking")
    return choice.get("chosen") if isinstance(choice, dict) else None


def _breakdown(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``RUN/breakdown.json`` (the pipeline evaluation's record) as a dict, ``{}`` when absent.

    Raises:
        RunError: it is not valid JSON (named).
    """
    from glta_cli.evaluation import BREAKDOWN_NAME

    record = read_run_json(run_dir, BREAKDOWN_NAME)
    return record if isinstance(record, dict) else {}


def evaluate_run(
    run_dir: str | os.PathLike[str],
    model: str,
    split: str = "test",
    ks: Sequence[int] = (5, 10, 20),
    *,
    llm: Any | None = None,
    progress: Callable[[Any], None] | None = None,
    save: bool = True,
) -> dict[str, float]:
    """Full-ranking metrics of ``model`` (``lightgcn`` or ``glta``) on ``split`` of the run.

    Test ranks every item not in the user's train or valid items; valid excludes train.
    With ``save`` the numbers are merged into ``RUN/metrics.json`` (atomic).

    Returns:
        ``{"precision@K", "recall@K", "ndcg@K", "hit_rate@K", "users"}``.
    """
    from glta_graph import evaluate_embeddings, load_graph_embeddings, update_metrics

    run_dir = Path(run_dir)
    model = _check_model(run_dir, model)
    data = load_run_dataset(run_dir)
    if split not in ("valid", "test"):
        raise RunError(f"--split: {split!r} is not valid or test")
    if model == "lightgcn":
        user_emb, item_emb = load_graph_embeddings(run_dir, expected_fingerprint=data.fingerprint)
        metrics = evaluate_embeddings(user_emb, item_emb, data, split, tuple(ks))
    else:
        rec = _glta_recommender(run_dir, llm)
        metrics = _call_with_progress(rec.evaluate, progress, split=split, ks=tuple(ks))
    metrics = {k: float(v) for k, v in metrics.items()}
    if save:
        update_metrics(run_dir, model, split, metrics)
    return metrics


def _call_with_progress(func: Callable[..., Any], progress: Any, **kwargs: Any) -> Any:
    import inspect

    if progress is not None and "progress" in inspect.signature(func).parameters:
        kwargs["progress"] = progress
    return func(**kwargs)


def resolve_users(data: Any, spec: str) -> list[int]:
    """Internal indices of ``spec``: ``all`` or comma-separated ORIGINAL user ids.

    Raises:
        RunError: an id is not in the dataset (the message names it).
    """
    spec = spec.strip()
    if spec.lower() == "all":
        return list(range(data.num_users))
    index = {uid: i for i, uid in enumerate(data.user_ids)}
    out = []
    for raw in spec.split(","):
        uid = raw.strip()
        if not uid:
            continue
        if uid not in index:
            raise RunError(
                f"--users: user id {uid!r} is not in dataset {data.name!r} "
                f"({data.num_users} users, e.g. {', '.join(data.user_ids[:3])})"
            )
        out.append(index[uid])
    if not out:
        raise RunError("--users: give `all` or a comma-separated list of user ids")
    return out


def recommend_run(
    run_dir: str | os.PathLike[str],
    users: str | Sequence[int],
    k: int,
    *,
    model: str = "auto",
    llm: Any | None = None,
) -> tuple[str, list[tuple[str, str, int, float]]]:
    """Top-``k`` recommendations with ORIGINAL ids, excluding each user's train+valid items.

    Args:
        run_dir: the run directory.
        users: ``"all"`` / ``"ID,ID"`` (original ids) or internal indices.
        k: list length (at most the number of items).
        model: ``auto`` (GLTA when the run has its artifacts, else LightGCN), ``lightgcn``
            or ``glta``.
        llm: an already loaded LLM for GLTA (else loaded from the run's config).

    Returns:
        ``(model used, rows)`` with rows ``(user id, item id, rank 1..k, score)``.
    """
    import torch
    from glta_graph import load_graph_embeddings, recommend_embeddings

    run_dir = Path(run_dir)
    model = _check_model(run_dir, model)
    data = load_run_dataset(run_dir)
    idx = resolve_users(data, users) if isinstance(users, str) else [int(u) for u in users]
    if int(k) < 1:
        raise RunError(f"--k: must be >= 1, got {k}")
    if int(k) > data.num_items:
        raise RunError(f"--k: K={k} is larger than the catalogue of {data.num_items} items")
    if model == "lightgcn":
        user_emb, item_emb = load_graph_embeddings(run_dir, expected_fingerprint=data.fingerprint)
        scores, items = recommend_embeddings(user_emb, item_emb, data, idx, int(k))
    else:
        from glta_graph import exclusion_matrix

        rec = _glta_recommender(run_dir, llm)
        scores, items = rec.recommend(
            torch.as_tensor(idx, dtype=torch.int64),
            int(k),
            exclude=exclusion_matrix(data, ("train", "valid")),
        )
    scores, items = scores.float().cpu().tolist(), items.cpu().tolist()
    rows = []
    for row, user in enumerate(idx):
        for rank, (item, score) in enumerate(zip(items[row], scores[row], strict=True), start=1):
            rows.append((data.user_ids[user], data.item_ids[item], rank, float(score)))
    return model, rows


def write_recommendations(
    rows: Sequence[tuple[str, str, int, float]], path: str | os.PathLike[str]
) -> Path:
    """Write ``rows`` as CSV (``user,item,rank,score``) atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["user", "item", "rank", "score"])
    for user, item, rank, score in rows:
        writer.writerow([user, item, rank, f"{score:.6g}"])
    return atomic_write_text(path, buf.getvalue())


def read_run_json(run_dir: str | os.PathLike[str], name: str) -> dict[str, Any]:
    """The run's JSON file ``RUN/name`` (``metrics.json``, ``breakdown.json``...) as a dict
    (empty when absent).

    Raises:
        RunError: the file is not valid JSON (named).
    """
    path = Path(run_dir) / name
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"{path}: not valid JSON ({exc})") from exc


def read_metrics(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``RUN/metrics.json`` as a dict (empty when absent)."""
    return read_run_json(run_dir, METRICS_NAME)


_SPLIT_ORDER = ("train", "valid", "test")


def _metric_sort_key(name: str) -> tuple[str, int, str]:
    base, _, k = name.partition("@")
    return (base, int(k) if k.isdigit() else -1, k)


def metric_rows(
    metrics: dict[str, Any],
) -> tuple[list[tuple[str, str]], list[tuple[str, list[float | int | None]]]]:
    """``metrics.json`` as rows: one per metric, one column per (model, split).

    Args:
        metrics: ``{model: {split: {metric: number}}}``; entries of another shape are skipped.

    Returns:
        ``(columns, rows)``: columns ``[(model, split), ...]`` (models in file order, splits
        train/valid/test first), rows ``[(metric, [value or None per column]), ...]`` sorted
        by metric family then cut-off (``ndcg@5`` before ``ndcg@10``), ``users`` last.
    """
    columns: list[tuple[str, str]] = []
    names: set[str] = set()
    for model, per_split in metrics.items():
        if not isinstance(per_split, dict):
            continue
        splits = [s for s, v in per_split.items() if isinstance(v, dict)]
        splits.sort(key=lambda s: (_SPLIT_ORDER.index(s) if s in _SPLIT_ORDER else 9, s))
        for split in splits:
            values = per_split[split]
            numeric = {k for k, v in values.items() if isinstance(v, (int, float))
                       and not isinstance(v, bool)}
            if numeric:
                columns.append((model, split))
                names |= numeric
    ordered = sorted(names - {"users"}, key=_metric_sort_key) + (
        ["users"] if "users" in names else [])
    rows = []
    for name in ordered:
        cells: list[float | int | None] = []
        for model, split in columns:
            v = metrics[model][split].get(name)
            cells.append(v if isinstance(v, (int, float)) and not isinstance(v, bool) else None)
        rows.append((name, cells))
    return columns, rows


def inspect_run(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Summarise a run: dataset stats, each artifact's fingerprint and config, metrics, config.

    Returns:
        ``{"run_dir", "dataset": stats or None, "artifacts": {name: {"fingerprint",
        "matches_dataset", "config", "files"}}, "metrics", "config": TOML text or None,
        "models": [...], "stages": {stage: {"done", "seconds"}} (pipeline runs), "state":
        [stages with resumable state], "files": [...]}``.
    """
    from glta_gllm.checkpoint import read_metadata

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: run directory does not exist")
    dataset = None
    fingerprint = None
    meta_path = run_dir / DATASET_DIR / "dataset.json"
    if meta_path.is_file():
        dataset = json.loads(meta_path.read_text(encoding="utf-8"))
        fingerprint = dataset.get("fingerprint")
    artifacts: dict[str, Any] = {}
    for name in ARTIFACTS:
        folder = run_dir / name
        if not folder.is_dir():
            continue
        entry: dict[str, Any] = {"files": sorted(p.name for p in folder.iterdir())}
        try:
            meta = read_metadata(folder)
            entry["fingerprint"] = meta.get("dataset_fingerprint")
            entry["matches_dataset"] = (
                None if fingerprint is None or entry["fingerprint"] is None
                else entry["fingerprint"] == fingerprint
            )
        except CheckpointError as exc:
            entry["error"] = str(exc)
        cfg = folder / "config.json"
        if cfg.is_file():
            try:
                entry["config"] = json.loads(cfg.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                entry["config"] = None
        artifacts[name] = entry
    config_path = run_dir / RESOLVED_CONFIG_NAME
    state = run_dir / "state"
    stages_path = state / "pipeline" / "stages.json"
    stages = {}
    if stages_path.is_file():
        try:
            stages = json.loads(stages_path.read_text(encoding="utf-8")).get("stages", {})
        except json.JSONDecodeError:
            stages = {}
    return {
        "stages": stages,
        "run_dir": str(run_dir),
        "dataset": dataset,
        "artifacts": artifacts,
        "models": available_models(run_dir),
        "metrics": read_metrics(run_dir),
        "config": config_path.read_text(encoding="utf-8") if config_path.is_file() else None,
        "state": sorted(p.name for p in state.iterdir()) if state.is_dir() else [],
        "files": sorted(p.name for p in run_dir.iterdir() if p.is_file()),
    }
