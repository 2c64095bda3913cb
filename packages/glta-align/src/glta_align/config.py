"""Configuration dataclasses of the two alignment stages (help on each field, checks).

The same dataclasses feed the CLI (``--item_text.epochs 2``) and the ``config.json`` of the
artifacts: :meth:`to_dict` / :meth:`from_dict` round-trip them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ADDED_SETTINGS", "HEADS", "LR_SCHEDULES", "RANKINGS", "AlignConfigError",
           "ItemTextConfig", "UserItemConfig"]

HEADS = ("plain", "projected")
RANKINGS = ("first_k", "first", "ar", "mean")
PROMPT_ORDERS = ("paper", "text-first")
PROFILE_PROMPTS = ("paper", "shared")
_HEAD_INITS = ("zeros", "random", "item_tokens")
_TARGETS = ("unseen", "any")
LR_SCHEDULES = ("constant", "cosine")
# [llm] pointwise / load_llm(pointwise=...): the LLM's element-wise parts in training
POINTWISE_CHOICES = ("auto", "compiled", "eager")
# Settings added to the stage configs after their first resume states and runs, with the
# value that gives the behaviour those had: a resume state (or a run's resolved config)
# written before a setting existed reads as this value (glta_align._common.run_loop,
# glta_cli.pipeline). A setting only one stage has applies to that stage.
ADDED_SETTINGS: dict[str, Any] = {
    "history_text": False, "residual": False, "residual_init": "stage2", "mask_seen": False,
    "compile": False, "lr_schedule": "constant", "text_filler": False,
    "prompt_order": "paper", "profile_prompt": "paper", "item_text_features": False,
    "item_text_dim": 64, "history_text_first": False, "history_text_tokens": 0,
}


class AlignConfigError(ValueError):
    """A configuration field has a bad value (the message names the field and the value)."""


def _help(text: str, default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    if "default_factory" in kw:
        return field(metadata={"help": text}, **kw)
    return field(default=default, metadata={"help": text})


@dataclass
class _StageConfig:
    llm: str | None = _help("LLM: None = SmolLM2-135M-Instruct (offline), a .gguf, a folder "
                            "or a hub id", None)
    dtype: str = _help("LLM dtype: auto (CUDA: bf16; CPU: the fastest of fp32, bf16 and "
                       "int8 in a probe of the LLM's layer shapes, cached per machine; int8 "
                       "not with LoRA), float32, bfloat16, int8 (CPU: int8 linear layers)",
                       "auto")
    device: str | None = _help("device: None = cuda when present, else cpu", None)
    attention: str = _help("attention kernels: auto (CPU: the fastest of eager, "
                           "eager_grouped and sdpa, measured once per machine; elsewhere "
                           "sdpa), sdpa, eager or eager_grouped (eager without copying "
                           "grouped-query keys/values per head); the same attention computed "
                           "differently, not part of stage keys", "auto")
    pointwise: str = _help("element-wise parts of the LLM's training passes (RMSNorm, SiLU x "
                           "up, rotary): auto (compiled for bf16 on the CPU), compiled "
                           "(torch.compile; eager with a warning when compiling fails) or "
                           "eager; the same math, not part of stage keys", "auto")
    llm_init: str = _help("LLM weights: pretrained, or random (a randomly initialised model "
                          "of the same shape, seeded by `seed`: the 'random-llm' control)",
                          "pretrained")
    prompt_style: str = _help("prompt: auto (chat template if the model has one), chat, paper",
                              "auto")
    padding_side: str = _help("padding of the per-sample part of the prompt: right or left",
                              "right")
    reuse_prefix: bool = _help("compute the fixed instruction prefix's KV cache once", True)
    compile: bool = _help("[choice] run the LLM through torch.compile(dynamic=True), batch "
                          "lengths padded to a multiple of 16 (tens of seconds of compiling "
                          "first; eager with a warning when compiling fails)", False)
    projector: str = _help("node projector: linear (paper) or mlp", "linear")
    head: str = _help("GLLM head: plain (free item x H matrix) or projected (matching head "
                      "over projected item tokens)", "plain")
    head_init: str = _help("plain head init: zeros (uniform first softmax), random "
                           "(N(0, 1/H)), or item_tokens (row directions = projected V_i, "
                           "norm 1/sqrt(H); an extension)", "zeros")
    head_bias: bool = _help("give the plain head a per-item bias", False)
    description_tokens: int = _help("token budget of one item description", 24)
    epochs: int = _help("passes over the training instances", 1)
    batch_size: int = _help("instances per optimiser step (per process under torchrun)", 8)
    lr: float = _help("Adam learning rate", 1e-3)
    lr_schedule: str = _help("[choice] learning rate over the stage: constant (the paper's), "
                             "or cosine (from `lr` down to 0 at the end of `epochs`, set "
                             "before every step; with early stopping `epochs` is the maximum)",
                             "constant")
    weight_decay: float = _help("Adam weight decay", 0.0)
    seed: int = _help("seed of every random choice (repeatable runs)", 0)
    save_every: int = _help("optimiser steps between resumable state saves", 20)
    bucket: bool = _help("length-bucketed batches (less padding)", True)
    lora: dict[str, Any] | None = field(
        default=None, metadata={"help": "LoRA settings (r, alpha, dropout, target_modules); "
                                        "None = frozen LLM as in the paper"})

    def _check(self) -> None:
        def bad(name: str, why: str) -> AlignConfigError:
            return AlignConfigError(
                f"{type(self).__name__}.{name} = {getattr(self, name)!r}: {why}")

        choices = {"prompt_style": ("auto", "chat", "paper"), "padding_side": ("left", "right"),
                   "llm_init": ("pretrained", "random"),
                   "attention": ("auto", "sdpa", "eager", "eager_grouped"),
                   "pointwise": POINTWISE_CHOICES,
                   "lr_schedule": LR_SCHEDULES,
                   "projector": ("linear", "mlp"), "head": HEADS, "head_init": _HEAD_INITS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise bad(name, f"expected one of {allowed}")
        for name in ("epochs", "batch_size", "save_every"):
            if getattr(self, name) < 1:
                raise bad(name, "must be >= 1")
        if self.description_tokens < 1:
            raise bad("description_tokens", "must be >= 1")
        if self.lr <= 0:
            raise bad("lr", "must be > 0")
        if self.weight_decay < 0:
            raise bad("weight_decay", "must be >= 0")
        if self.head == "projected" and self.head_init != "zeros":
            raise bad("head_init", "only the plain head has an init choice")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        """Build from a dict; unknown keys raise :class:`AlignConfigError` naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise AlignConfigError(f"{cls.__name__}: unknown field(s) {unknown}")
        return cls(**data)


@dataclass
class ItemTextConfig(_StageConfig):
    """Stage 2 (item-text alignment): trains the item projector and the GLLM head."""

    items_per_instance: int = _help("n: items (soft tokens + shuffled descriptions) per "
                                    "instance; also the number of output slots", 5)
    max_instances: int | None = _help("cap on instances per epoch (None = every item once "
                                      "per epoch)", None)
    description_separator: str = _help("text between shuffled descriptions", "; ")

    def __post_init__(self) -> None:
        self._check()
        if self.items_per_instance < 1:
            raise AlignConfigError(
                f"ItemTextConfig.items_per_instance = {self.items_per_instance!r}: must be >= 1")
        if self.max_instances is not None and self.max_instances < 1:
            raise AlignConfigError(
                f"ItemTextConfig.max_instances = {self.max_instances!r}: must be >= 1 or None")


@dataclass
class UserItemConfig(_StageConfig):
    """Stage 3 (user-item alignment): trains the user projector and the GLLM head."""

    num_slots: int = _help("k: output slots after the prompt (top-k list length)", 10)
    history_items: int = _help("cap on the user's train items shown as soft tokens "
                               "(random sample in training, fixed sample at test time)", 10)
    targets_from: str = _help("slot targets: unseen (train items not shown in the prompt when "
                              "the user has enough) or any train item", "unseen")
    user_token: bool = _help("user soft token (False = 'w/o UA': the user id as text)", True)
    use_profile: bool = _help("include the generated profile tags (PROFILE_TOKEN)", True)
    use_predict: bool = _help("include the generated interest words (PREDICT_TOKEN)", True)
    text_filler: bool = _help("[choice] replace the profile and prediction text by filler: "
                              "one '.' token repeated, as many tokens as the user's text (the "
                              "control that tells the text's words from its length)", False)
    history_text: bool = _help("[choice] write each history item's text (its description, "
                               "`history_text_tokens` at most) after its soft token, items "
                               "separated by '; '", False)
    history_text_first: bool = _help("[choice] with prompt_order = text-first: write the "
                                     "descriptions of a fixed sample of the user's train "
                                     "items (the ranking's history sample, `history_items` "
                                     "of them, `history_text_tokens` each, separated by '; ') "
                                     "on a line of the leading text, before the user token: "
                                     "the frozen LLM reads them without gradient and keeps "
                                     "their keys/values across epochs (`history_text` writes "
                                     "them after each soft token, inside the trained part)",
                                     False)
    history_text_tokens: int = _help("[choice] token budget of each history description that "
                                     "`history_text` / `history_text_first` write (8: about the "
                                     "title and year); 0 = `description_tokens` (the profile "
                                     "prompts keep `description_tokens` either way)", 0)
    train_item_projector: bool = _help("also train the item projector here ('w/o IA' when "
                                       "stage 2 was skipped)", False)
    ranking: str = _help("prediction: first_k (slot t gives rank t), first (FL: top-k of "
                         "slot 1), ar (feed predicted items back), mean (top-k of the slots' "
                         "mean log-softmax; [choice])", "first_k")
    profile_tags: int = _help("k in the profile prompt ('Use k tags ...')", 5)
    predict_words: int = _help("k in the prediction prompt ('Use k words ...')", 5)
    profile_items: int = _help("item descriptions given to the profile/prediction prompts", 10)
    profile_new_tokens: int = _help("max new tokens generated per profile/prediction", 24)
    profile_batch_size: int = _help("users per generation batch (paper prompts: one prompt "
                                    "kind per batch; shared: both kinds, two rows per user)", 64)
    profile_prompt: str = _help("[choice] profile/prediction prompts: paper (the paper's two, "
                                "each instruction before the item descriptions: every user's "
                                "descriptions run twice) or shared (the descriptions first, "
                                "then each instruction: they run once per user and both texts "
                                "continue from their keys/values, ~40% less prompt compute)",
                                "paper")
    profile_text_tokens: int = _help("token budget of profile / prediction text in the prompt",
                                     32)
    max_users: int | None = _help("cap on training users per epoch (None = all)", None)
    eval_batch_size: int = _help("users per inference batch", 32)
    patience: int | None = _help("early stopping on valid: after every epoch rank the valid "
                                 "split, keep the epoch with the best `select_metric`, stop "
                                 "after this many epochs without improvement (`epochs` is "
                                 "then the maximum); None = no validation, keep the last "
                                 "epoch", None)
    select_metric: str = _help("valid metric that picks the best epoch (precision@K, "
                               "recall@K, ndcg@K or hit_rate@K)", "ndcg@10")
    residual: bool = _help("[choice] residual head: the projected head's query gets the "
                           "user's LightGCN embedding added (times a trained alpha), so GLTA's "
                           "score = LightGCN's score + the LLM's correction (needs "
                           "head = projected)", False)
    residual_init: str = _help("[choice] starting point of the residual head's LLM part: zero "
                               "(GLTA starts as LightGCN's ranking exactly) or stage2 (the "
                               "stage-2 head's item map)", "zero")
    item_text_features: bool = _help("[choice] residual head only: also score every item by the "
                                     "frozen LLM's mean last hidden state over the item's "
                                     "description (`description_tokens` at most), reduced to "
                                     "`item_text_dim` principal components, through a trained "
                                     "map from the slot's hidden state that starts at zero (the "
                                     "LLM's own reading of the items reaches the scores)", False)
    item_text_dim: int = _help("principal components of the item text features kept "
                               "(`item_text_features`)", 64)
    prompt_order: str = _help("[choice] order of the stage-3 prompt: paper (user token, item "
                              "tokens, then profile and prediction text) or text-first (the "
                              "text before the soft tokens: with a frozen LLM that leading text "
                              "runs without gradient, so a step back-propagates through the "
                              "soft tokens and slots only)", "paper")
    mask_seen: bool = _help("[choice] leave the user's other train items out of each slot's "
                            "softmax (evaluation ranks only items the user has not seen, and "
                            "LightGCN's BPR never samples them as negatives); materialises "
                            "the slots' full logits, for catalogues up to ~1M items", False)

    def __post_init__(self) -> None:
        self._check()
        if self.patience is not None and self.patience < 1:
            raise AlignConfigError(
                f"UserItemConfig.patience = {self.patience!r}: must be >= 1 or None")
        if self.residual_init not in ("zero", "stage2"):
            raise AlignConfigError(f"UserItemConfig.residual_init = {self.residual_init!r}: "
                                   "expected 'zero' or 'stage2'")
        if self.residual and self.head != "projected":
            raise AlignConfigError(
                f"UserItemConfig.residual = True needs head = 'projected', got {self.head!r}")
        if self.item_text_features and not self.residual:
            raise AlignConfigError("UserItemConfig.item_text_features = True needs residual = "
                                   "True (the text features extend the residual head)")
        if self.item_text_dim < 1:
            raise AlignConfigError(
                f"UserItemConfig.item_text_dim = {self.item_text_dim!r}: must be >= 1")
        name, _, k = self.select_metric.partition("@")
        if name not in ("precision", "recall", "ndcg", "hit_rate") or not k.isdigit() \
                or int(k) < 1:
            raise AlignConfigError(
                f"UserItemConfig.select_metric = {self.select_metric!r}: expected "
                "precision@K, recall@K, ndcg@K or hit_rate@K with K >= 1")
        for name in ("num_slots", "history_items", "profile_tags", "predict_words",
                     "profile_items", "profile_new_tokens", "profile_batch_size",
                     "profile_text_tokens", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise AlignConfigError(
                    f"UserItemConfig.{name} = {getattr(self, name)!r}: must be >= 1")
        if self.targets_from not in _TARGETS:
            raise AlignConfigError(
                f"UserItemConfig.targets_from = {self.targets_from!r}: expected one of {_TARGETS}")
        if self.profile_prompt not in PROFILE_PROMPTS:
            raise AlignConfigError(f"UserItemConfig.profile_prompt = {self.profile_prompt!r}: "
                                   f"expected one of {PROFILE_PROMPTS}")
        if self.prompt_order not in PROMPT_ORDERS:
            raise AlignConfigError(f"UserItemConfig.prompt_order = {self.prompt_order!r}: "
                                   f"expected one of {PROMPT_ORDERS}")
        if self.history_text_tokens < 0:
            raise AlignConfigError(f"UserItemConfig.history_text_tokens = "
                                   f"{self.history_text_tokens!r}: must be >= 0 (0 = "
                                   "description_tokens)")
        if self.history_text_first and self.prompt_order != "text-first":
            raise AlignConfigError(
                "UserItemConfig.history_text_first = True needs prompt_order = 'text-first' "
                f"(the line goes in the leading text), got {self.prompt_order!r}")
        if self.ranking not in RANKINGS:
            raise AlignConfigError(
                f"UserItemConfig.ranking = {self.ranking!r}: expected one of {RANKINGS}")
        if self.max_users is not None and self.max_users < 1:
            raise AlignConfigError(
                f"UserItemConfig.max_users = {self.max_users!r}: must be >= 1 or None")
