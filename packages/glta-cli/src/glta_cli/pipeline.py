"""The pipeline as plain functions: prepare -> LightGCN -> stage 2 -> stage 3 -> evaluation.

``run_pipeline(config, ...)`` is what ``glta pipeline`` calls after parsing. Each stage
writes its artifact into the run directory (DESIGN.md's layout) and is skipped on a rerun
when its artifact is there and complete and its configuration key (see
:func:`stage_keys`) is unchanged; a stage killed half-way resumes from the library's own
``RUN/state/<stage>/``. A changed stage reruns with every stage after it. The
pipeline's bookkeeping (which stages finished, seconds spent, training curves) lives in
``RUN/state/pipeline/stages.json``, written atomically.

``--restart`` semantics: the existing run directory is renamed to ``RUN.previous`` (one
atomic rename; nothing is deleted yet) and a fresh run starts in ``RUN``. When the new run
completes, ``RUN.previous`` is removed. If the restarted run is killed, rerunning without
``--restart`` resumes it and the old run is still in ``RUN.previous``; restarting again while
``RUN.previous`` exists discards only the unfinished ``RUN`` and keeps ``RUN.previous``.
While it runs the pipeline holds ``RUN``'s lock (:func:`glta_cli.outputs.lock_run`): a second
``glta pipeline`` on the same folder, with or without ``--restart``, exits 2 naming the pid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import os
import shutil
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glta_gllm.checkpoint import FingerprintMismatchError, atomic_write_json
from glta_graph.malloc import last_setting

from glta_cli.config import ConfigError, GLTAConfig, load_config, write_config
from glta_cli.runs import (
    DATASET_DIR,
    GLTA_ARTIFACTS,
    RESOLVED_CONFIG_NAME,
    load_dataset_dir,
    read_metrics,
    read_run_json,
)

__all__ = [
    "STAGES",
    "STAGE_SECTIONS",
    "PipelineResult",
    "config_differences",
    "precision_text",
    "prepare_dataset",
    "previous_dir",
    "resolve_pipeline_config",
    "run_pipeline",
    "stage_keys",
    "subsample_users",
    "train_graph_run",
]

STAGES = ("dataset", "graph", "item_text", "user_item", "evaluate")
STATE_FILE = Path("state") / "pipeline" / "stages.json"


@dataclass
class PipelineResult:
    """What :func:`run_pipeline` did.

    Attributes:
        run_dir: the run directory.
        metrics: ``metrics.json`` content ``{model: {split: {metric: value}}}``.
        split: the evaluation split.
        stage_seconds: stage -> seconds (accumulated over resumed attempts where known).
        train_seconds: model -> training seconds (GLTA includes its LightGCN pretraining).
        skipped: stages found complete and not rerun.
        files: report/chart name -> path.
    """

    run_dir: Path
    metrics: dict[str, Any]
    split: str
    stage_seconds: dict[str, float]
    train_seconds: dict[str, float]
    skipped: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)


def previous_dir(run_dir: Path) -> Path:
    """Where ``--restart`` parks the old run until the new one completes."""
    return run_dir.with_name(run_dir.name + ".previous")


# -- configuration -------------------------------------------------------------------------


def resolve_pipeline_config(
    preset: str | None,
    config_file: str | os.PathLike[str] | None,
    overrides: Sequence[str],
    out: str | os.PathLike[str] | None,
) -> GLTAConfig:
    """Resolve the configuration of ``glta pipeline``.

    With no preset, file or override, a run directory that already has a
    ``resolved-config.toml`` is resumed with that configuration. ``--out`` overrides
    ``[run] out``.
    """
    out_override = ["--run.out", str(out)] if out is not None else []
    if preset is None and config_file is None and not overrides:
        default_out = Path(str(out)) if out is not None else None
        if default_out is None:
            default_out = Path(load_config("default").run.out)
        saved = default_out / RESOLVED_CONFIG_NAME
        if saved.is_file():
            return load_config("default", saved, ["--run.out", str(default_out)])
    return load_config(preset or "default", config_file, [*overrides, *out_override])


# Settings of how a stage computes, not what: the same attention by other kernels. They are
# left out of the stage keys and of configuration differences, so changing them (or "auto"
# choosing otherwise on another machine) never reruns a stage, like the thread count.
_EXECUTION_KEYS = ("attention", "pointwise")


def config_differences(old: GLTAConfig, new: GLTAConfig, limit: int = 4) -> list[str]:
    """Keys whose values differ (``[section] key: old -> new``), ignoring ``[run] out`` and
    the execution settings (:data:`_EXECUTION_KEYS`)."""
    a, b = old.to_dict(), new.to_dict()
    diffs = []
    for section in b:
        for key, value in b[section].items():
            if (section, key) == ("run", "out") or key in _EXECUTION_KEYS:
                continue
            before = a.get(section, {}).get(key)
            if before != value:
                diffs.append(f"[{section}] {key}: {before!r} -> {value!r}")
    return diffs[:limit]


# -- data ----------------------------------------------------------------------------------


def subsample_users(data: Any, max_users: int, seed: int) -> Any:
    """Keep a seeded random sample of ``max_users`` users (all splits), drop empty items.

    Args:
        data: an ``Interactions``.
        max_users: users to keep; the dataset is returned unchanged when it has no more.
        seed: seed of the sample.

    Returns:
        A new ``Interactions`` (users and items keep their relative order).
    """
    import numpy as np
    from glta_graph.data import SPLITS, Interactions, csr_from_pairs

    if data.num_users <= max_users:
        return data
    rng = np.random.default_rng(seed)
    keep_users = np.sort(rng.choice(data.num_users, size=max_users, replace=False))
    user_map = np.full(data.num_users, -1, dtype=np.int64)
    user_map[keep_users] = np.arange(len(keep_users))
    pairs = {}
    for split in SPLITS:
        u, i = data.pairs(split)
        sel = user_map[u] >= 0
        pairs[split] = (user_map[u[sel]], i[sel])
    used = np.zeros(data.num_items, dtype=bool)
    for _, i in pairs.values():
        used[i] = True
    keep_items = np.flatnonzero(used)
    item_map = np.full(data.num_items, -1, dtype=np.int64)
    item_map[keep_items] = np.arange(len(keep_items))
    mats = {
        split: csr_from_pairs(u, item_map[i], len(keep_users), len(keep_items))
        for split, (u, i) in pairs.items()
    }
    return Interactions(
        [data.user_ids[j] for j in keep_users],
        [data.item_ids[j] for j in keep_items],
        item_text=[data.item_text[j] for j in keep_items],
        name=f"{data.name}[{max_users} users]",
        **mats,
    )


def prepare_dataset(config: GLTAConfig) -> Any:
    """Load and preprocess ``[data]`` with ``[prepare]``; a prepared folder loads as is."""
    from glta_graph.data import load_dataset

    source = config.data.source
    path = Path(source)
    if path.is_dir() and (path / "dataset.json").is_file():
        data = load_dataset_dir(path)
    else:
        data = load_dataset(
            source, format=config.data.format, config=config.prepare, **config.data.options
        )
    if config.data.max_users is not None:
        data = subsample_users(data, config.data.max_users, config.run.seed)
    return data


# -- bookkeeping ---------------------------------------------------------------------------


def _read_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATE_FILE
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            pass  # a torn file cannot happen (atomic writes); treat garbage as no state
    return {"stages": {}, "histories": {}}


def _write_state(run_dir: Path, state: Mapping[str, Any]) -> None:
    atomic_write_json(run_dir / STATE_FILE, state)


def _kwargs_for(func: Callable[..., Any], **candidates: Any) -> dict[str, Any]:
    params = inspect.signature(func).parameters
    return {k: v for k, v in candidates.items() if k in params}


def _graph_history(result: Any) -> list[dict[str, float]]:
    out = []
    for rec in getattr(result, "history", None) or []:
        row: dict[str, float] = {}
        for key, value in rec.items():
            if isinstance(value, Mapping):
                row.update({k: float(v) for k, v in value.items() if k != "users"})
            elif isinstance(value, int | float):
                row[key] = float(value)
        out.append(row)
    return out


def _stage_history(result: Any, recorded: Any) -> dict[str, Any]:
    """Prefer the library's own per-epoch history (it survives resumes) over what we saw."""
    epochs = _graph_history(result)
    losses = getattr(result, "epoch_losses", None)
    if not epochs and losses:
        epochs = [{"epoch": float(i), "loss": float(v)} for i, v in enumerate(losses)]
    steps = [list(p) for p in recorded.steps] if recorded is not None else []
    if not epochs and recorded is not None:
        epochs = list(recorded.epochs)
    return {"epochs": epochs, "steps": steps}


def _seconds(result: Any, measured: float) -> float:
    value = getattr(result, "seconds", None)
    return float(value) if isinstance(value, int | float) and value > 0 else measured


def _drop_metrics(run_dir: Path, split: str) -> None:
    """Remove both models' ``split`` entries from metrics.json before re-evaluating them."""
    metrics = read_metrics(run_dir)
    touched = False
    for model in ("lightgcn", "glta"):
        if split in metrics.get(model, {}):
            del metrics[model][split]
            touched = True
    if touched:
        atomic_write_json(run_dir / "metrics.json", metrics)


def _note_resume(run_dir: Path, stage: str, log: Callable[[str], None]) -> None:
    state = run_dir / "state" / stage
    if state.is_dir() and any(state.iterdir()):
        log(f"{stage}: resuming from the saved state in {state}")


def _ensure_run_dataset(run_dir: Path, data: Any) -> Any:
    """Save ``data`` as ``RUN/dataset`` or check the one there is the same dataset."""
    target = run_dir / DATASET_DIR
    if (target / "dataset.json").is_file():
        existing = load_dataset_dir(target)
        if existing.fingerprint != data.fingerprint:
            raise FingerprintMismatchError(
                f"{target}: the run holds dataset fingerprint {existing.fingerprint}, but the "
                f"dataset given has fingerprint {data.fingerprint}; use another --out or --restart"
            )
        return existing
    data.save(target)
    return data


# -- graph train (glta graph train) ----------------------------------------------------------


def train_graph_run(
    dataset_dir: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    options: Mapping[str, Any],
    extra_args: Sequence[str] = (),
    *,
    restart: bool = False,
    quiet: bool = False,
    progress: Any | None = None,
    user_texts: Callable[[Any, Path], Sequence[str]] | None = None,
) -> tuple[Any, dict[str, float]]:
    """Train LightGCN on a prepared dataset folder into ``run_dir`` (``glta graph train``).

    Copies the dataset into ``RUN/dataset`` (or checks the one there matches), writes
    ``RUN/resolved-config.toml``, trains (resuming from ``RUN/state/graph`` unless
    ``restart``) and merges the best validation metrics into ``metrics.json``. Under
    ``torchrun`` every rank trains (:func:`glta_graph.train.init_distributed`: gloo on the
    CPU, NCCL on CUDA) and rank 0 alone writes files and draws progress. With
    ``[graph] text_align = "rlmrec-con"``, ``user_texts(data, run_dir)`` gives the profiles.

    Returns:
        ``(TrainResult, best validation metrics)``.
    """
    import torch.distributed as dist
    from glta_graph import train_lightgcn, update_metrics
    from glta_graph.train import init_distributed

    from glta_cli.config import parse_overrides
    from glta_cli.progress import RichProgress

    run_dir = Path(run_dir)
    layers: dict[str, dict[str, Any]] = {
        "run": {"out": str(run_dir)},
        "data": {"source": str(dataset_dir)},
        "graph": dict(options),
    }
    for section, values in parse_overrides(extra_args).items():
        layers.setdefault(section, {}).update(values)
    config = load_config("default", None, layers, sections=("run", "data", "prepare", "graph"))
    started = not (dist.is_available() and dist.is_initialized())
    multi = init_distributed(config.graph.device)
    started = started and multi
    main = not multi or dist.get_rank() == 0
    quiet = quiet or not main
    data = load_dataset_dir(dataset_dir)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        data = _ensure_run_dataset(run_dir, data)
        write_config(config, run_dir / RESOLVED_CONFIG_NAME)
    if multi:
        dist.barrier()
    texts = {"user_texts": user_texts(data, run_dir)} if (
        user_texts and config.graph.text_align == "rlmrec-con") else {}
    if progress is None:
        with RichProgress(disable=quiet) as bar:
            result = train_lightgcn(data, config.graph, run_dir, progress=bar, resume=not restart,
                                    **texts)
    else:
        result = train_lightgcn(data, config.graph, run_dir, progress=progress, resume=not restart,
                                **texts)
    valid = {k: float(v) for k, v in (result.best_valid or {}).items()}
    if valid and main:
        update_metrics(run_dir, "lightgcn", "valid", valid)
    if started:  # this call joined the torchrun job: leave it
        dist.barrier()
        dist.destroy_process_group()
    return result, valid


# -- the pipeline --------------------------------------------------------------------------


def _start_run_dir(run_dir: Path, restart: bool, inputs: Sequence[Any] = (),
                   locks: contextlib.ExitStack | None = None) -> str | None:
    """Check ``run_dir`` may hold a run, apply ``--restart``; return a note for the user.

    ``run_dir`` must be absent, empty or a glta run (marker, or ``resolved-config.toml`` +
    ``state/`` from earlier versions), and not one of ``inputs``. ``--restart`` moves only
    a glta run aside. On return ``run_dir`` exists and carries the run marker. With
    ``locks``, the run's lock (:func:`glta_cli.outputs.lock_run`) is taken before anything
    is moved and entered into ``locks``, so it is held until the caller's stack closes.

    Raises:
        OutputError: a file, a folder of other files, another kind of glta output, an
            input, a ``RUN.previous`` that glta did not write, or a run another process
            is writing.
    """
    from glta_cli.outputs import OutputError, check_output_dir, lock_run, output_kind, write_marker

    previous = previous_dir(run_dir)
    state = check_output_dir(run_dir, "run", inputs=inputs, option="run directory")
    held = state == "same" and locks is not None
    if held:  # before --restart moves anything: a running process keeps its run
        locks.enter_context(lock_run(run_dir))
    note = None
    if restart and state == "same":
        if previous.exists():
            if output_kind(previous) != "run":
                raise OutputError(
                    f"{previous}: --restart would park the old run there, but that path holds "
                    f"files glta did not write; move it away first"
                )
            # RUN is an unfinished restart; RUN.previous is the last complete run: keep it.
            shutil.rmtree(run_dir)
            note = f"discarded the unfinished restart in {run_dir}; {previous} is kept until done"
        else:
            os.replace(run_dir, previous)
            note = f"moved the old run to {previous}; it is removed when this run completes"
        held = False  # the lock taken above went with the old folder
    run_dir.mkdir(parents=True, exist_ok=True)
    write_marker(run_dir, "run")
    if locks is not None and not held:
        locks.enter_context(lock_run(run_dir))
    return note


# The configuration sections each stage depends on; a stage's key also covers every
# earlier stage, so a change reruns that stage and everything after it.
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "dataset": ("data", "prepare"),
    "graph": ("graph",),
    "item_text": ("llm", "item_text"),
    "user_item": ("llm", "user_item"),
    "evaluate": ("eval",),
}
# Stage-3 settings baked into RUN/profiles.jsonl (a change means regenerating it).
_PROFILE_KEYS = ("profile_tags", "predict_words", "profile_items", "profile_new_tokens",
                 "description_tokens", "seed", "prompt_style", "llm", "dtype", "llm_init",
                 "profile_prompt")
# Stage-2 outputs removed when the no-ia ablation skips stage 2 (all written by glta).
_STAGE2_OUTPUTS = ("item_text", "item_projector", "gllm_head")


def _skips_stage2(config: GLTAConfig) -> bool:
    """The no-ia ablation: stage 2 does not run, stage 3 trains the item projector."""
    return getattr(config.run, "ablation", "full") == "no-ia"


def stage_keys(config: GLTAConfig) -> dict[str, str]:
    """Stage -> 16-hex key of its configuration sections chained with the earlier stages'
    (:data:`_EXECUTION_KEYS` left out)."""
    d = config.to_dict()
    keys: dict[str, str] = {}
    previous = ""
    for name in STAGES:
        part: dict[str, Any] = {
            s: {k: v for k, v in d[s].items() if k not in _EXECUTION_KEYS}
            if isinstance(d[s], dict) else d[s]
            for s in STAGE_SECTIONS[name] if s in d}
        if name == "dataset":
            part["run.seed"] = d.get("run", {}).get("seed")
        if name == "item_text" and _skips_stage2(config):
            part["skipped"] = True
        blob = json.dumps([previous, part], sort_keys=True, default=str).encode("utf-8")
        previous = keys[name] = hashlib.sha256(blob).hexdigest()[:16]
    return keys


def _stage_diffs(old: GLTAConfig | None, new: GLTAConfig, stage: str) -> list[str]:
    if old is None:
        return []
    sections = set(STAGE_SECTIONS[stage])
    return [d for d in config_differences(old, new, limit=100)
            if d.split("]", 1)[0].lstrip("[") in sections][:4]


def _saved_config(run_dir: Path, current: GLTAConfig) -> GLTAConfig | None:
    """The run's saved configuration; a setting of ``current``'s sections added since it was
    written (see :func:`_added_settings`) reads as its earlier behaviour, not as today's
    preset value."""
    saved = run_dir / RESOLVED_CONFIG_NAME
    if not saved.is_file():
        return None
    try:
        raw = tomllib.loads(saved.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        raw = {}
    earlier: dict[str, dict[str, Any]] = {}
    known = current.to_dict()  # the registry also holds trainer keys the CLI lacks
    for (sec, key), value in _added_settings().items():
        if isinstance(raw.get(sec), dict) and key not in raw[sec] and key in known.get(sec, {}):
            earlier.setdefault(sec, {})[key] = value
    try:
        return load_config("default", saved, earlier or None)
    except ConfigError as exc:
        raise ConfigError(f"{saved}: cannot be read ({exc}); pass --restart") from exc


# Settings added to a stage's sections after runs were first made, with the value that gives
# the behaviour runs had before the setting existed. A run whose saved configuration lacks
# one of them keeps its stage when the current value is this one (the stage's key alone
# changed because it hashes the new setting); any other value reruns the stage.
def _added_settings() -> dict[tuple[str, str], Any]:
    """``(section, key) -> value``: the trainers' own registries
    (:data:`glta_graph.train.ADDED_SETTINGS`, :data:`glta_align.config.ADDED_SETTINGS`, each
    setting under the stages that have it) and the pipeline's settings added since runs were
    first made."""
    from glta_align.config import ADDED_SETTINGS as align_added
    from glta_align.config import ItemTextConfig, UserItemConfig
    from glta_graph.train import ADDED_SETTINGS as graph_added

    stages = {"item_text": ItemTextConfig, "user_item": UserItemConfig}
    align = {(sec, k): v for sec, cls in stages.items()
             for k, v in align_added.items() if k in {f.name for f in dataclasses.fields(cls)}}
    return {**{("graph", k): v for k, v in graph_added.items()}, **align,
            ("graph", "text_cache_dir"): None,  # where text embeddings are cached
            ("eval", "baselines"): []}


def _added_settings_only(run_dir: Path, old: GLTAConfig | None, new: GLTAConfig,
                         stage: str) -> list[str] | None:
    """The ``[section] key`` settings of ``stage`` that ``RUN/resolved-config.toml`` lacks
    (possibly none), when they are all in :func:`_added_settings` at their earlier behaviour and
    nothing else of the stage differs; ``None`` otherwise (the stage must rerun)."""
    saved = run_dir / RESOLVED_CONFIG_NAME
    if old is None or _stage_diffs(old, new, stage) or not saved.is_file():
        return None
    if stage == "item_text" and _skips_stage2(old) != _skips_stage2(new):
        return None
    try:
        raw = tomllib.loads(saved.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return None
    current = new.to_dict()
    added = [(sec, key) for sec in STAGE_SECTIONS[stage] for key in current.get(sec, {})
             if key not in raw.get(sec, {}) and key not in _EXECUTION_KEYS]
    known = _added_settings()
    if any((sec, key) not in known or current[sec][key] != known[(sec, key)]
           for sec, key in added):
        return None
    return [f"[{sec}] {key}" for sec, key in added]


def _reconcile_stages(
    run_dir: Path,
    config: GLTAConfig,
    stages: dict[str, Any],
    log: Callable[[str], None],
) -> dict[str, str]:
    """Drop the records (and resumable state) of stages whose configuration changed.

    A changed dataset configuration is refused (the run's artifacts all belong to its
    dataset); a change in a later stage reruns that stage and every stage after it, its
    old resumable state being removed first so nothing of the old settings leaks in.

    Returns:
        The new stage keys.
    """
    keys = stage_keys(config)
    old = _saved_config(run_dir, config)
    old_keys = stage_keys(old) if old is not None else {}
    changed = rekeyed = False
    for name in STAGES:
        record = stages.get(name)
        if record is None and not changed:
            continue
        before = (record or {}).get("key") or old_keys.get(name)
        if not changed and before == keys[name]:
            continue
        added = None if changed or record is None else _added_settings_only(
            run_dir, old, config, name)
        # keep the stage when settings it predates are at their earlier behaviour, or when
        # only its key's chain moved (an earlier stage was kept that way)
        if added or (added == [] and rekeyed):
            record["key"] = keys[name]
            rekeyed = True
            if added:
                log(f"{name}: kept (made before {', '.join(added)} existed; the current "
                    "values give the behaviour it was made with)")
            continue
        if name == "dataset" and record is not None:
            diffs = _stage_diffs(old, config, name) or ["the dataset settings"]
            raise ConfigError(
                f"{run_dir} holds a dataset prepared with other settings ({'; '.join(diffs)}); "
                "use another --out, or --restart to start over"
            )
        if not changed:
            diffs = _stage_diffs(old, config, name)
            why = "; ".join(diffs) or "a setting its saved configuration lacks, or the ablation"
            log(f"{name}: configuration changed ({why}); "
                f"rerunning it and the stages after it")
        changed = True
        stages.pop(name, None)
        shutil.rmtree(run_dir / "state" / name, ignore_errors=True)
        if name == "user_item" and old is not None:
            a, b = old.to_dict().get("user_item", {}), config.to_dict().get("user_item", {})
            earlier = _added_settings()  # a key an older run lacks reads as its old value
            if any(a.get(k, earlier.get(("user_item", k))) != b.get(k) for k in _PROFILE_KEYS):
                (run_dir / "profiles.jsonl").unlink(missing_ok=True)
    return keys


def _llm_summary(run_dir: Path, model: str) -> str | None:
    """``"`model` (precision)"`` from stage 3's saved config; ``None`` before stage 3."""
    cfg_path = run_dir / "user_projector" / "config.json"
    if not cfg_path.is_file():
        return None
    saved = json.loads(cfg_path.read_text(encoding="utf-8"))
    precision = precision_text(saved)
    return f"`{model}`" + (f" ({precision})" if precision else "")


def precision_text(meta: dict[str, Any]) -> str | None:
    """``glta_align.llm.precision_label`` of a stage's saved ``llm_precision`` and
    ``llm_dtype`` (``"int8 with bfloat16 activations"``); ``None`` without a precision."""
    from glta_align.llm import precision_label

    precision = meta.get("llm_precision")
    return precision_label(precision, meta.get("llm_dtype")) if precision else None


def _report_sections(run_dir: Path, config: GLTAConfig) -> str:
    """report.md's ablation line, stage 3's epoch selection, stages 2 and 3's achieved
    GFLOP/s and the per-bucket tables."""
    from glta_cli.evaluation import (
        BREAKDOWN_NAME,
        breakdown_markdown,
        stage2_speed,
        stage3_selection,
    )

    breakdown = read_run_json(run_dir, BREAKDOWN_NAME)
    return breakdown_markdown(breakdown, stage3_selection(run_dir),
                              ablation=getattr(config.run, "ablation", None),
                              metric=config.user_item.select_metric,
                              stage2=stage2_speed(run_dir))


@dataclass
class _Run:
    """One pipeline run in progress: its settings, its bookkeeping and the shared LLM.

    ``state`` is ``RUN/state/pipeline/stages.json``'s content (``stages``: name -> done,
    key, seconds; ``histories``: training curves); ``keys`` are the stages' configuration
    keys of this run (:func:`stage_keys`).
    """

    config: GLTAConfig
    run_dir: Path
    state: dict[str, Any]
    keys: dict[str, str]
    progress: Any | None
    log: Callable[[str], None]
    skipped: list[str] = field(default_factory=list)
    llm: Any = None
    # stage 3's SoftPromptRunner when stage 3 ran in this process on the shared LLM: the
    # evaluation ranks with it, so the text keys/values it kept are not computed again
    runner: Any = None
    # stage 3's kept-epoch slot inputs ({user: (S, D)}) when it ran here on the shared LLM:
    # the evaluation ranks those users in first / first_k / mean without an LLM pass
    slots: Any = None

    @property
    def stages(self) -> dict[str, Any]:
        """Stage name -> ``{"done", "key", "seconds"}``."""
        return self.state["stages"]

    @property
    def histories(self) -> dict[str, Any]:
        """Stage name -> training curves (for the report)."""
        return self.state["histories"]

    @property
    def recorded(self) -> dict[str, Any]:
        """The progress receiver's recorded histories, by stage (empty without one)."""
        return getattr(self.progress, "history", {}) if self.progress is not None else {}

    def finished(self, name: str) -> bool:
        """Whether ``stages.json`` marks stage ``name`` done."""
        return bool(self.stages.get(name, {}).get("done"))

    def begin(self, name: str) -> None:
        """Mark stage ``name`` started (not done) and save the bookkeeping."""
        self.stages[name] = {"done": False, "key": self.keys[name]}
        _write_state(self.run_dir, self.state)

    def done(self, name: str, seconds: float, **extra: Any) -> None:
        """Mark stage ``name`` done after ``seconds`` and save the bookkeeping."""
        self.stages[name] = {"done": True, "key": self.keys[name],
                             "seconds": round(float(seconds), 3), **extra}
        _write_state(self.run_dir, self.state)

    def get_llm(self) -> Any:
        """The frozen LLM of ``[llm]``, loaded on first use and then shared."""
        if self.llm is None:
            from glta_align import load_llm

            t = time.perf_counter()
            cfg = self.config.llm
            self.llm = load_llm(
                cfg.model_name_or_path, dtype=cfg.dtype, device=cfg.device,
                cache_dir=cfg.cache_dir, init=cfg.init, init_seed=self.config.user_item.seed,
                progress=self.progress, attention=cfg.attention, pointwise=cfg.pointwise,
            )
            self.log(f"loaded LLM {cfg.model} ({self.llm.precision_label}, "
                     f"{self.llm.train_attention} "
                     f"attention in training, on {self.llm.device}) in "
                     f"{time.perf_counter() - t:.1f} s")
        return self.llm


def run_pipeline(
    config: GLTAConfig,
    *,
    restart: bool = False,
    progress: Any | None = None,
    log: Callable[[str], None] = lambda msg: None,
    command: str | None = None,
) -> PipelineResult:
    """Run (or resume) the whole GLTA pipeline into ``config.run.out``.

    Stages: ``dataset`` (prepare and save ``RUN/dataset``), ``graph`` (LightGCN,
    ``RUN/graph``), ``item_text`` (stage 2: ``RUN/item_projector`` + ``RUN/gllm_head``, and
    a copy of both in ``RUN/item_text`` that stage 3 starts from, so a rerun of stage 3
    starts where stage 2 ended), ``user_item`` (stage 3: ``RUN/user_projector`` +
    ``RUN/gllm_head``) and ``evaluate``
    (both models on ``[eval] split`` into ``RUN/metrics.json``); then ``report.md`` and
    the charts. Finished stages are skipped; a killed one resumes from its saved state.

    Args:
        config: the resolved configuration.
        restart: start over (see the module docstring for how the old run is kept).
        progress: a ``ProgressCallback`` (e.g. :class:`glta_cli.progress.RichProgress`);
            its ``history`` attribute, when present, feeds the training curves.
        log: receives one-line notes (stage skipped, restart moves, ...).
        command: the command line, recorded in ``report.md``.

    Returns:
        A :class:`PipelineResult`.
    """
    if config.eval.baselines:  # the text encoder is needed only at the end: check it first
        from glta_graph.text_align import check_encoder

        check_encoder(config.graph.text_encoder)
    with contextlib.ExitStack() as locks:  # the run's lock, held until the run returns
        run = _open_run(config, restart, progress, log, locks)
        data = _dataset_step(run)
        _graph_step(run, data)
        need_eval = _evaluation_needed(run)
        _alignment_steps(run, data)
        if need_eval:
            _evaluate_step(run, data)
        else:
            run.skipped.append("evaluate")
        run.runner = None  # its kept text keys/values (up to 2 GiB) are not needed past here
        run.slots = None
        return _finish(run, data, command)


def _open_run(config: GLTAConfig, restart: bool, progress: Any | None,
              log: Callable[[str], None], locks: contextlib.ExitStack | None = None) -> _Run:
    """Start (or reopen) ``RUN``: its lock (into ``locks``), the restart move, the
    bookkeeping, the resolved config.

    Stages whose configuration key changed since the last attempt are marked not done (with
    every stage after them, see :func:`_reconcile_stages`).
    """
    run_dir = Path(config.run.out)
    note = _start_run_dir(run_dir, restart, inputs=[config.data.source], locks=locks)
    if note:
        log(note)
    if (malloc := last_setting()) is not None:
        log(f"memory: {malloc.detail}")
    state = _read_state(run_dir)
    stages: dict[str, Any] = state.setdefault("stages", {})
    state.setdefault("histories", {})
    keys = _reconcile_stages(run_dir, config, stages, log)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_state(run_dir, state)
    write_config(config, run_dir / RESOLVED_CONFIG_NAME)
    return _Run(config, run_dir, state, keys, progress, log)


def _dataset_step(run: _Run) -> Any:
    """Stage 1: prepare the dataset into ``RUN/dataset`` (or load it when done); return it."""
    from glta_graph.progress import ProgressEvent, emit

    t0 = time.perf_counter()
    if (run.run_dir / DATASET_DIR / "dataset.json").is_file() and run.finished("dataset"):
        data = load_dataset_dir(run.run_dir / DATASET_DIR)
        run.skipped.append("dataset")
    else:
        run.begin("dataset")
        emit(run.progress, ProgressEvent("dataset", "start", total=1,
                                         message=f"preparing {run.config.data.source}"))
        data = _ensure_run_dataset(run.run_dir, prepare_dataset(run.config))
        emit(run.progress, ProgressEvent("dataset", "end", step=1, total=1))
        run.done("dataset", time.perf_counter() - t0)
    run.log(
        f"dataset {data.name}: {data.num_users} users, {data.num_items} items, "
        f"fingerprint {data.fingerprint}"
    )
    return data


def _graph_step(run: _Run, data: Any) -> None:
    """Stage 2: LightGCN into ``RUN/graph`` (resuming a killed attempt), unless done."""
    from glta_graph import load_graph_embeddings, train_lightgcn

    if run.finished("graph") and (run.run_dir / "graph").is_dir():
        load_graph_embeddings(run.run_dir, expected_fingerprint=data.fingerprint)
        run.skipped.append("graph")
        return
    _note_resume(run.run_dir, "graph", run.log)
    run.begin("graph")
    t0 = time.perf_counter()
    result = train_lightgcn(data, run.config.graph, run.run_dir, progress=run.progress,
                            resume=True)
    run.histories["graph"] = _stage_history(result, run.recorded.get("graph"))
    run.done("graph", _seconds(result, time.perf_counter() - t0))


def _evaluation_needed(run: _Run) -> bool:
    """Whether both models still need ranking on valid and test (their old metrics dropped).

    Decided before the alignment stages run, so that metrics of an older model never
    survive a retrained one.
    """
    metrics = read_metrics(run.run_dir)
    need_eval = not (
        run.finished("evaluate")
        and all(s in metrics.get(m, {}) for m in ("lightgcn", "glta") for s in ("valid", "test"))
    )
    if need_eval:
        for name in ("valid", "test"):
            _drop_metrics(run.run_dir, name)
    return need_eval


def _alignment_steps(run: _Run, data: Any) -> None:
    """Stages 3 and 4: item-text then user-item alignment (the LLM loaded only when needed).

    ``item_text`` is skipped, its leftovers removed, under the ``no-ia`` ablation; a stage
    with LoRA loads its own LLM. Raises ConfigError when an artifact is missing afterwards.
    """
    from glta_align import train_item_text, train_user_item

    config, run_dir = run.config, run.run_dir
    for name, func, section, artifact in (
        ("item_text", train_item_text, config.item_text, "item_projector"),
        ("user_item", train_user_item, config.user_item, "user_projector"),
    ):
        if name == "item_text" and _skips_stage2(config):
            if not run.finished(name):
                for leftover in _STAGE2_OUTPUTS:  # e.g. from a full run this one was copied from
                    shutil.rmtree(run_dir / leftover, ignore_errors=True)
                run.done(name, 0.0, skipped=True)
                run.log("item_text: skipped (ablation no-ia: stage 3 trains the item projector)")
            run.skipped.append(name)
            continue
        if run.finished(name) and (run_dir / artifact).is_dir():
            run.skipped.append(name)
            continue
        t0 = time.perf_counter()
        _note_resume(run_dir, name, run.log)
        run.begin(name)
        # With LoRA the stage loads its own LLM (the adapter is trained and saved by it).
        shared = None if getattr(section, "lora", None) else run.get_llm()
        extra = {}
        if name == "user_item" and shared is not None:
            from glta_align.user_item import user_item_layout, user_item_runner

            run.runner = user_item_runner(
                shared, user_item_layout(shared.tokenizer, section), section)
            extra["runner"] = run.runner
        # profiles.jsonl is the pipeline's own: texts made with other settings (e.g. in int8
        # before LoRA, which needs bf16, was turned on) are regenerated, not refused
        result = func(data, run_dir, section, **_kwargs_for(
            func, llm=shared, progress=run.progress, resume=True, stale_profiles="regenerate",
            **extra))
        if name == "user_item" and shared is not None:
            run.slots = getattr(result, "slot_cache", None)
        run.histories[name] = _stage_history(result, run.recorded.get(name))
        run.done(name, _seconds(result, time.perf_counter() - t0))
    missing = [a for a in GLTA_ARTIFACTS if not (run_dir / a).is_dir()]
    if missing:
        raise ConfigError(
            f"{run_dir}: the alignment stages finished but {', '.join(missing)} are missing"
        )


def _evaluate_step(run: _Run, data: Any) -> None:
    """Stage 5: rank valid and test with both models into ``metrics.json`` and the breakdown.

    The same ranked lists give the per-bucket breakdown of the headline split.
    """
    from glta_align import GLTARecommender
    from glta_graph import update_metrics
    from glta_graph.progress import ProgressEvent, emit

    from glta_cli.evaluation import BREAKDOWN_NAME, evaluate_run_models
    from glta_cli.runs import code_fingerprint

    run_dir, config = run.run_dir, run.config
    run.begin("evaluate")
    t0 = time.perf_counter()

    def get_recommender() -> Any:
        if (run_dir / "lora").is_dir():
            return GLTARecommender.from_run(run_dir)
        # stage 3's runner when it ran here (built from the settings the run saved, so it
        # fits): its kept text keys/values serve the ranking; None: a runner of its own
        rec = GLTARecommender.from_run(run_dir, llm=run.get_llm(), runner=run.runner)
        if run.slots:  # the same modules (saved at that epoch) and the same LLM
            rec.slots = dict(run.slots)
        return rec

    emit(run.progress, ProgressEvent("evaluate", "start", total=None,
                                     message="ranking valid and test with both models"))
    evaluated, breakdown = evaluate_run_models(
        run_dir, data, tuple(config.eval.ks), config.eval.split, get_recommender,
        ranking=config.eval.ranking, progress=run.progress)
    for model, per_split in evaluated.items():
        for split_name, values in per_split.items():
            update_metrics(run_dir, model, split_name, values)
    breakdown["glta_code"] = code_fingerprint()  # what `glta evaluate` compares against
    atomic_write_json(run_dir / BREAKDOWN_NAME, breakdown)
    run.done("evaluate", time.perf_counter() - t0)


def _finish(run: _Run, data: Any, command: str | None) -> PipelineResult:
    """The ``[eval] baselines``, ``report.md`` and charts, the old run's removal; the result."""
    from glta_cli.baselines import run_baselines  # [eval] baselines: LightGCN+, RLMRec-Con
    from glta_cli.outputs import output_kind
    from glta_cli.report import write_report

    config, run_dir, stages = run.config, run.run_dir, run.stages
    baseline_s = run_baselines(config, data, run_dir, get_llm=run.get_llm,
                               progress=run.progress, log=run.log)
    stage_seconds = {
        s: float(stages[s]["seconds"]) for s in STAGES if s in stages and "seconds" in stages[s]
    }
    graph_s = stage_seconds.get("graph", 0.0)
    train_seconds = {
        "lightgcn": graph_s,
        "glta": graph_s + stage_seconds.get("item_text", 0.0) + stage_seconds.get("user_item", 0.0),
        **baseline_s,
    }
    metrics = read_metrics(run_dir)
    files = write_report(
        run_dir, metrics, split=config.eval.split, stage_seconds=stage_seconds,
        train_seconds=train_seconds, histories=run.histories, dataset=data.stats(),
        command=command, llm=_llm_summary(run_dir, config.llm.model),
        extra=_report_sections(run_dir, config),
    )
    _write_state(run_dir, run.state)
    previous = previous_dir(run_dir)
    if previous.exists() and output_kind(previous) == "run":  # never a folder of other files
        shutil.rmtree(previous)
        run.log(f"removed the old run {previous}")
    return PipelineResult(run_dir=run_dir, metrics=metrics, split=config.eval.split,
                          stage_seconds=stage_seconds, train_seconds=train_seconds,
                          skipped=run.skipped, files=files)
