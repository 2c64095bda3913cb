"""The paper's text baselines in the pipeline: LightGCN+ and RLMRec-Con (``[eval] baselines``).

Both are LightGCN trained with ``[graph]``'s settings plus a text-alignment term
(:mod:`glta_graph.text_align`), each in its own run folder ``RUN/baselines/<name>``, and
ranked on the valid split and ``[eval] split`` like LightGCN; their rows go into
``RUN/metrics.json`` as ``lightgcn+`` and ``rlmrec-con``.

- ``lightgcn+``: ``text_align="infonce"`` on the items' own text (title, genres,
  description).
- ``rlmrec-con``: ``text_align="rlmrec-con"``. User profiles are the LLM-written texts of
  glta-align's profile generation (``RUN/profiles.jsonl``, shared with stage 3 and generated
  only for users missing from it): a user's profile is its tags and its predicted interests
  joined by ``"; "``. Item profiles are the items' own text (RLMRec has the LLM write them
  too; generating one per item with the local LLM would cost as much again as the user
  profiles, so the item text stands in for it).

The text embeddings are cached in ``RUN/text_embeddings``. A baseline whose
``RUN/baselines/<name>/key.json`` matches the current settings and whose metrics are in
``metrics.json`` is skipped on a rerun.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from glta_gllm.checkpoint import atomic_write_json

from glta_cli.config import BASELINE_NAMES

__all__ = [
    "BASELINE_DIR",
    "BASELINE_MODES",
    "graph_user_texts",
    "profile_texts",
    "run_baselines",
    "text_line",
]

BASELINE_DIR = "baselines"
# model name in metrics.json -> LightGCNConfig.text_align
BASELINE_MODES = {"lightgcn+": "infonce", "rlmrec-con": "rlmrec-con"}
assert tuple(BASELINE_MODES) == BASELINE_NAMES
_TEXT_CACHE = "text_embeddings"


def profile_texts(
    data: Any,
    run_dir: str | os.PathLike[str],
    user_item: Any,
    get_llm: Callable[[], Any],
    *,
    progress: Any | None = None,
) -> list[str]:
    """One LLM-written profile text per user, from ``RUN/profiles.jsonl``.

    Users missing from the file are generated with ``get_llm()`` (loaded only then) by
    :func:`glta_align.profiles.generate_profiles` with the stage-3 settings ``user_item``.

    Args:
        data: the dataset (``Interactions``).
        run_dir: the run holding ``profiles.jsonl``.
        user_item: a ``glta_align.UserItemConfig`` (profile prompt settings).
        get_llm: returns the ``FrozenLLM`` that writes missing profiles.
        progress: receives the ``profiles`` progress events.

    Returns:
        ``U`` strings: ``"<profile tags>; <predicted interests>"`` (blank parts dropped).
    """
    from glta_align.profiles import PROFILES_NAME, generate_profiles, read_profiles

    meta, rows = read_profiles(Path(run_dir) / PROFILES_NAME)
    complete = (meta is not None and meta.get("fingerprint") == data.fingerprint
                and all(u in rows for u in range(data.num_users)))
    if not complete:
        rows = generate_profiles(data, run_dir, get_llm(), user_item, progress=progress)
    return _join(rows, data.num_users)


def graph_user_texts(
    profiles: str | os.PathLike[str] | None = None,
) -> Callable[[Any, Path], list[str]]:
    """The user-profile source of ``glta graph train --text-align rlmrec-con``.

    Args:
        profiles: a ``profiles.jsonl`` (glta-align's format) to read; ``None``: use
            ``RUN/profiles.jsonl``, generating the missing users with the default preset's LLM
            and stage-3 prompt settings.

    Returns:
        ``f(data, run_dir) -> U profile strings`` (see :func:`profile_texts`).

    Raises (when called):
        ValueError: the file is missing, or was made for another dataset.
    """

    def texts(data: Any, run_dir: Path) -> list[str]:
        from glta_cli.config import load_config

        if profiles is not None:
            from glta_align.profiles import read_profiles

            path = Path(profiles)
            if not path.is_file():
                raise ValueError(f"--profiles {path}: no such file")
            meta, rows = read_profiles(path)
            if meta is not None and meta.get("fingerprint") != data.fingerprint:
                raise ValueError(f"--profiles {path}: made for dataset fingerprint "
                                 f"{meta.get('fingerprint')}, not {data.fingerprint}")
            return _join(rows, data.num_users)
        cfg = load_config("default", None, {}, sections=("llm", "user_item"))

        def get_llm() -> Any:
            from glta_align import load_llm

            c = cfg.llm
            return load_llm(c.model_name_or_path, dtype=c.dtype, device=c.device,
                            cache_dir=c.cache_dir, attention="sdpa")  # generation only

        return profile_texts(data, run_dir, cfg.user_item, get_llm)

    return texts


def _join(rows: dict[int, dict[str, str]], num_users: int) -> list[str]:
    out = []
    for u in range(num_users):
        row = rows.get(u, {})
        parts = [str(row.get(k, "")).strip() for k in ("profile", "predict")]
        out.append("; ".join(p for p in parts if p))
    return out


def _key(graph: Any, data: Any, name: str, user_item: Any, split: str, ks: Sequence[int]) -> str:
    blob = {"graph": dataclasses.asdict(graph), "fingerprint": data.fingerprint, "name": name,
            "split": split, "ks": list(ks)}
    if name == "rlmrec-con":
        blob["profiles"] = {k: getattr(user_item, k, None) for k in (
            "profile_tags", "predict_words", "profile_items", "profile_new_tokens",
            "description_tokens", "seed", "prompt_style", "llm")}
        if hasattr(user_item, "use_predict"):
            from glta_align.profiles import TEXT_KINDS, text_kinds

            kinds = text_kinds(user_item)
            if kinds != list(TEXT_KINDS):  # keys of both-text runs stay as they were
                blob["profiles"]["texts"] = kinds
    text = json.dumps(blob, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def run_baselines(
    config: Any,
    data: Any,
    run_dir: str | os.PathLike[str],
    *,
    get_llm: Callable[[], Any],
    progress: Any | None = None,
    log: Callable[[str], None] = lambda msg: None,
) -> dict[str, float]:
    """Train ``config.eval.baselines`` in ``RUN/baselines``; rank valid and test to metrics.json.

    Each baseline is ranked on the valid split and on ``[eval] split`` (the same rows LightGCN
    and GLTA get); a baseline trained by an older glta that ranked only ``[eval] split`` has
    its missing split ranked on a rerun, without training again.

    Args:
        config: the resolved ``GLTAConfig`` (``graph``, ``user_item``, ``eval``).
        data: the run's dataset.
        run_dir: the run directory.
        get_llm: returns the pipeline's ``FrozenLLM`` (for missing user profiles).
        progress: a ``ProgressCallback``; the baselines report as stage ``graph:<name>``.
        log: receives one line per baseline (text counts, skipped).

    Returns:
        ``{name: training seconds}`` of the baselines run or skipped. A dataset where no
        item has text skips them all with a note (both need item text; the GLTA results
        are kept rather than failing at the end of the pipeline).
    """
    from glta_graph import train_lightgcn

    from glta_cli.runs import read_metrics

    run_dir = Path(run_dir)
    split, ks = config.eval.split, tuple(config.eval.ks)
    splits = ("valid", split) if split != "valid" else ("valid",)
    seconds: dict[str, float] = {}
    if config.eval.baselines and not any(t.strip() for t in data.item_text):
        log(f"baselines {', '.join(config.eval.baselines)} skipped: none of the "
            f"{data.num_items} items has text")
        return seconds
    for name in config.eval.baselines:
        sub = run_dir / BASELINE_DIR / name
        graph = dataclasses.replace(config.graph, text_align=BASELINE_MODES[name],
                                    text_cache_dir=str(run_dir / _TEXT_CACHE))
        key = _key(graph, data, name, config.user_item, split, ks)
        key_file = sub / "key.json"
        saved = json.loads(key_file.read_text(encoding="utf-8")) if key_file.is_file() else {}
        same = saved.get("key") == key
        if same and saved.get("done"):
            have = read_metrics(run_dir).get(name, {})
            missing = [s for s in splits if s not in have]
            if missing:  # trained by an older glta that ranked one split: rank the rest
                _evaluate(sub, data, name, run_dir, missing, ks)
                log(f"baseline {name}: already trained, ranked {', '.join(missing)}")
            else:
                log(f"baseline {name}: already done, skipped")
            seconds[name] = float(saved.get("seconds", 0.0))
            continue
        if not same:  # new settings: train afresh (a killed run with these resumes)
            atomic_write_json(key_file, {"key": key, "done": False})
        users = (profile_texts(data, run_dir, config.user_item, get_llm, progress=progress)
                 if name == "rlmrec-con" else None)

        def relabel(event: Any, name: str = name) -> None:
            if progress is not None:
                progress(dataclasses.replace(event, stage=f"graph:{name}"))

        result = train_lightgcn(data, graph, sub, progress=relabel, resume=same,
                                user_texts=users)
        if result.text:
            log(f"baseline {name}: " + text_line(result.text))
        _evaluate(sub, data, name, run_dir, splits, ks)
        seconds[name] = float(result.seconds)
        atomic_write_json(key_file, {"key": key, "done": True, "seconds": seconds[name],
                                     "best_epoch": result.best_epoch, "text": result.text})
    return seconds


def _evaluate(sub: Path, data: Any, name: str, run_dir: Path, splits: Sequence[str],
              ks: Sequence[int]) -> None:
    """Rank ``splits`` with the baseline's LightGCN in ``sub``; rows go to metrics.json."""
    from glta_graph import evaluate_embeddings, load_graph_embeddings, update_metrics

    user_emb, item_emb = load_graph_embeddings(sub, expected_fingerprint=data.fingerprint)
    for split in splits:
        metrics = evaluate_embeddings(user_emb, item_emb, data, split, ks)
        update_metrics(run_dir, name, split, {k: float(v) for k, v in metrics.items()})


def text_line(text: dict[str, Any]) -> str:
    """One line from ``TrainResult.text``: how many items (and users) had text, the encoder."""
    line = f"{text['items_with_text']} of {text['num_items']} items have text"
    if text.get("users_with_text") is not None:
        line += f", {text['users_with_text']} of {text['num_users']} users have a profile"
    return f"{line} (encoder {text['encoder']})"
