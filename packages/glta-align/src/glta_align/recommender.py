"""``GLTARecommender``: load a finished run directory and rank the whole catalogue.

Prediction modes (``UserItemConfig.ranking``, overridable per call):

- ``first_k`` (paper): slot ``t`` gives rank ``t``: it takes its best item not already
  picked and not excluded. Ranks beyond the trained number of slots continue down the last
  slot's list [choice].
- ``first`` (FL): the top-k of the first slot.
- ``ar``: slot ``t > 0`` is fed the soft token of the item picked at ``t - 1`` (one forward
  per rank: slow, an ablation).

Evaluation uses ``glta_gllm.ranking_metrics`` on the same split and exclusions as LightGCN
(``valid``: train excluded; ``test``: train and valid excluded), over users that have at least
one relevant item.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from glta_gllm import ranking_metrics
from glta_gllm.checkpoint import CheckpointError, load_artifact
from glta_graph import load_graph_embeddings
from glta_graph.data import Interactions
from glta_graph.evaluate import exclusion_matrix, select_rows
from glta_graph.progress import ProgressCallback, ProgressEvent, emit

from glta_align.config import RANKINGS, UserItemConfig
from glta_align.heads import head_topk, load_head, slot_inputs
from glta_align.item_text import GLLM_HEAD_DIR, ITEM_PROJECTOR_DIR, LORA_DIR, slot_vector
from glta_align.llm import FrozenLLM, load_llm
from glta_align.profiles import PROFILES_NAME, generate_profiles, read_profiles
from glta_align.projector import NodeProjector
from glta_align.splice import SoftPromptRunner
from glta_align.user_item import (
    USER_PROJECTOR_DIR,
    UserPrompter,
    check_runner,
    eval_sample,
    user_item_layout,
    user_item_runner,
    warm_text_heads,
)

__all__ = ["GLTARecommender", "pick_first_k"]


def pick_first_k(cands: torch.Tensor, scores: torch.Tensor, k: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy first-k assembly: rank ``t`` = best candidate of slot ``min(t, S-1)`` not taken.

    Args:
        cands: (B, S, C) candidate items per slot, best first (already without exclusions).
        scores: (B, S, C) their scores.
        k: ranks to fill (each slot's list must hold >= k candidates, C >= k).

    Returns:
        ``(scores (B, k), items (B, k))``.
    """
    B, S, _ = cands.shape
    items = torch.empty(B, k, dtype=torch.int64)
    out = torch.empty(B, k, dtype=scores.dtype)
    c_np, s_np = cands.cpu().numpy(), scores.cpu().numpy()
    for b in range(B):
        taken: set[int] = set()
        pos = [0] * S
        for t in range(k):
            s = min(t, S - 1)
            while int(c_np[b, s, pos[s]]) in taken:
                pos[s] += 1
            it = int(c_np[b, s, pos[s]])
            taken.add(it)
            items[b, t] = it
            out[b, t] = float(s_np[b, s, pos[s]])
    return out, items


class GLTARecommender:
    """A trained GLTA model: frozen LLM + projectors + GLLM head over one dataset.

    Build it with :meth:`from_run`. Attributes: ``data`` (the run's dataset), ``config``
    (the stage-3 :class:`UserItemConfig`), ``llm``. ``runner``: the
    :class:`~glta_align.splice.SoftPromptRunner` to run the LLM with (default: a new one for
    the stage-3 layout; stage 3's validation passes its own, whose kept text keys/values
    then serve the ranking; one running another LLM object or another prompt prefix raises
    ``ValueError``).

    ``slots``: ``{user: (S, D) slot inputs}``, what the head scores at each of the ``S``
    slots (:func:`~glta_align.heads.slot_inputs` of the LLM's hidden states). The ``first``,
    ``first_k`` and ``mean`` modes read a user's entry instead of running the LLM, so valid
    and test (whose prompts are the same: :func:`~glta_align.user_item.eval_sample`) and
    every mode cost one LLM pass per user. Filled while ``keep_slots`` is on, or given by
    the caller (stage 3's validation of the epoch that was kept); entries are only right
    for this recommender's modules and LLM, and are never saved.

    ``ranking``: the prediction mode :meth:`recommend` and :meth:`evaluate` use when none is
    given (default: ``config.ranking``, the one stage 3 trained for; ``glta`` commands set
    the one the pipeline chose on valid).
    """

    def __init__(self, *, data: Interactions, llm: FrozenLLM, config: UserItemConfig,
                 user_emb: torch.Tensor, item_emb: torch.Tensor, user_projector: NodeProjector,
                 item_projector: NodeProjector, head: torch.nn.Module,
                 profiles: dict[int, dict[str, str]],
                 runner: SoftPromptRunner | None = None) -> None:
        self.data, self.llm, self.config = data, llm, config
        dev = llm.device
        self.user_emb, self.item_emb = user_emb.float().to(dev), item_emb.float().to(dev)
        self.user_projector = user_projector.to(dev).eval()
        self.item_projector = item_projector.to(dev).eval()
        self.head = head.to(dev).eval()
        layout = user_item_layout(llm.tokenizer, config)
        self.prompter = UserPrompter(layout, data, llm.tokenizer, config, profiles)
        if runner is None:
            runner = user_item_runner(llm, layout, config)
        else:
            check_runner(runner, llm, layout)
        self.runner = runner
        self.slot = slot_vector(llm).to(dev)
        self.run_dir: Path | None = None
        self.slots: dict[int, torch.Tensor] = {}
        self.ranking: str = config.ranking
        self.keep_slots = False

    def _ensure_profiles(self, users: np.ndarray, progress: ProgressCallback | None) -> None:
        """Generate the profile texts of users the run has none for (written to the run)."""
        cfg = self.config
        if not (cfg.use_profile or cfg.use_predict):
            return
        missing = [int(u) for u in users if int(u) not in self.prompter.profiles]
        if not missing:
            return
        if self.run_dir is None:
            raise ValueError(f"no profile text for users {missing[:5]}... and no run directory")
        self.prompter.profiles = generate_profiles(self.data, self.run_dir, self.llm, cfg,
                                                   users=missing, progress=progress)
        self.prompter._text_cache.clear()

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike[str], llm: FrozenLLM | None = None, *,
                 device: str | None = None,
                 runner: SoftPromptRunner | None = None) -> GLTARecommender:
        """Load ``RUN/dataset``, ``RUN/graph``, both projectors, ``RUN/gllm_head``,
        ``RUN/profiles.jsonl`` and (unless ``llm`` is given) the LLM named in the run.
        ``runner``: stage 3's runner of this ``llm`` (``train_user_item(runner=...)``), so
        the text keys/values it kept are not computed again (default: a new runner).

        Raises:
            CheckpointError: an artifact is missing or its shapes do not fit (named).
            FingerprintMismatchError: an artifact belongs to another dataset (both named).
            ValueError: ``runner`` runs another LLM object or another prompt prefix.
        """
        run_dir = Path(run_dir)
        data = Interactions.load(run_dir / "dataset")
        fp = data.fingerprint
        _, ucfg, _ = load_artifact(run_dir / USER_PROJECTOR_DIR, expected_fingerprint=fp)
        if "stage_config" not in ucfg:
            raise CheckpointError(f"{run_dir / USER_PROJECTOR_DIR}: no stage_config in config.json")
        config = UserItemConfig.from_dict(ucfg["stage_config"])
        if llm is None:
            lora = run_dir / LORA_DIR if (run_dir / LORA_DIR).is_dir() else None
            if ucfg.get("llm") == "tiny-llama":
                raise CheckpointError(f"{run_dir}: trained with a tiny in-memory test model; "
                                      "pass it as llm=")
            llm = load_llm(config.llm, dtype=config.dtype, device=device or config.device,
                           lora=lora, init=config.llm_init,
                           init_seed=int(ucfg.get("llm_init_seed", config.seed)),
                           attention="sdpa")  # ranking only: no training passes
        trained_in = ucfg.get("llm_precision")  # absent in runs made before it was recorded
        if trained_in is not None and trained_in != llm.precision:
            warnings.warn(f"{run_dir}: stage 3 ran the LLM in {trained_in}, ranking runs it in "
                          f"{llm.precision}; scores will differ slightly from training time "
                          f"(load the LLM with dtype={trained_in!r} to match)", stacklevel=2)
        user_emb, item_emb = load_graph_embeddings(run_dir, fp)
        uproj = NodeProjector.from_pretrained(run_dir / USER_PROJECTOR_DIR,
                                              expected_fingerprint=fp, in_dim=user_emb.shape[1],
                                              out_dim=llm.hidden_size)
        iproj = NodeProjector.from_pretrained(run_dir / ITEM_PROJECTOR_DIR,
                                              expected_fingerprint=fp, in_dim=item_emb.shape[1],
                                              out_dim=llm.hidden_size)
        head = load_head(run_dir / GLLM_HEAD_DIR, expected_fingerprint=fp,
                         hidden_size=llm.hidden_size, num_items=data.num_items)
        profiles: dict[int, dict[str, str]] = {}
        if config.use_profile or config.use_predict:
            meta, profiles = read_profiles(run_dir / PROFILES_NAME)
            if meta is not None and meta.get("fingerprint") not in (None, fp):
                from glta_gllm.checkpoint import FingerprintMismatchError

                raise FingerprintMismatchError(
                    f"{run_dir / PROFILES_NAME}: made for dataset fingerprint "
                    f"{meta.get('fingerprint')}, but the run's dataset has fingerprint {fp}")
        rec = cls(data=data, llm=llm, config=config, user_emb=user_emb, item_emb=item_emb,
                  user_projector=uproj, item_projector=iproj, head=head, profiles=profiles,
                  runner=runner)
        rec.run_dir = run_dir
        return rec

    def _check_users(self, users: Sequence[int] | torch.Tensor | np.ndarray) -> np.ndarray:
        arr = np.asarray(users, dtype=np.int64).reshape(-1)
        bad = arr[(arr < 0) | (arr >= self.data.num_users)]
        if bad.size:
            raise ValueError(f"user index {int(bad[0])} is not in the dataset "
                             f"({self.data.num_users} users, internal indices 0..)")
        return arr

    @torch.no_grad()
    def _slot_hidden(self, users: list[int], slot_items: list[list[int]] | None = None,
                     num_slots: int | None = None, keep_cache: bool = False) -> torch.Tensor:
        samples = [eval_sample(self.data, self.config, u) for u in users]
        if slot_items is not None:
            for s, extra in zip(samples, slot_items, strict=True):
                s.slot_items = extra
        seqs, us, items = self.prompter.build(samples, num_slots)
        dev = self.llm.device
        parts = [self.slot[None], self.user_projector(self.user_emb[torch.tensor(us, device=dev)])]
        if items:
            parts.append(self.item_projector(self.item_emb[torch.tensor(items, device=dev)]))
        hidden = self.runner.hidden_states(seqs, torch.cat(parts), keep_cache=keep_cache)
        return slot_inputs(self.head, hidden, self.user_emb[torch.tensor(us, device=dev)])

    def _slots_for(self, users: list[int]) -> torch.Tensor:
        """Slot inputs ``(B, S, D)`` of ``users``: from :attr:`slots` where present, the rest
        computed in one batch (and kept when :attr:`keep_slots` is on)."""
        have = {u: self.slots[u] for u in users if u in self.slots}
        missing = [u for u in users if u not in have]
        if missing:
            fresh = self._slot_hidden(missing)
            if self.keep_slots:
                self.slots.update(zip(missing, fresh, strict=True))
            if not have:
                return fresh
            have.update(zip(missing, fresh, strict=True))
        return torch.stack([have[u] for u in users])

    def _next_slot_hidden(self, users: list[int], items: list[int]) -> torch.Tensor:
        """Autoregressive ranking's next step: each user's last picked item appended as a
        soft token to the batch of the last ``_slot_hidden(..., keep_cache=True)`` call; the
        slot input read there ``(B, H)`` (the same as ``_slot_hidden`` with that item added
        to the slots, without running the prompt again)."""
        dev = self.llm.device
        vectors = self.item_projector(self.item_emb[torch.tensor(items, device=dev)])
        hidden = self.runner.extend(vectors)[:, None]
        return slot_inputs(self.head, hidden, self.user_emb[torch.tensor(users, device=dev)])[:, 0]

    @torch.no_grad()
    def recommend(self, users: Sequence[int] | torch.Tensor | np.ndarray, k: int = 10, *,
                  exclude: torch.Tensor | None = None, ranking: str | None = None,
                  progress: ProgressCallback | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` items for internal user indices, never returning excluded items.

        Args:
            users: (U,) internal user indices.
            k: list length (<= catalogue size minus the most items excluded for a user).
            exclude: (num_users x I) CSR of items never to return (default: train split).
            ranking: ``first_k | first | ar | mean`` instead of :attr:`ranking` (``mean``
                [choice]: top-``k`` of the slots' mean log-softmax, one list from all slots).
            progress: receives ``ProgressEvent(stage="evaluate")`` per batch.

        Returns:
            ``(scores (U, k) float32, items (U, k) int64)``, best first.
        """
        mode = ranking or self.ranking
        if mode not in RANKINGS:
            raise ValueError(f"ranking must be one of {RANKINGS}, got {mode!r}")
        arr = self._check_users(users)
        ex_all = self.data.train if exclude is None else exclude
        counts = np.diff(ex_all.crow_indices().numpy())
        worst = int(counts[arr].max()) if arr.size else 0
        if k < 1 or k > self.data.num_items - worst:
            raise ValueError(f"k = {k} is larger than the catalogue of {self.data.num_items} items "
                             f"minus the {worst} excluded for some user")
        self._ensure_profiles(arr, progress)
        warm_text_heads(self.runner, self.prompter, self.data, self.config,
                        [int(u) for u in arr if int(u) not in self.slots], progress)
        order = np.argsort([self.prompter.length(eval_sample(self.data, self.config, int(u)))
                            for u in arr], kind="stable")
        scores = torch.empty(len(arr), k)
        items = torch.empty(len(arr), k, dtype=torch.int64)
        bs = self.config.eval_batch_size
        emit(progress, ProgressEvent("evaluate", "start", total=len(arr),
                                     message=f"ranking {len(arr)} users"))
        for start in range(0, len(arr), bs):
            pos = order[start:start + bs]
            batch = [int(u) for u in arr[pos]]
            ex = select_rows(ex_all, torch.as_tensor(batch))
            s, i = self._rank_batch(batch, k, ex, mode)
            scores[torch.as_tensor(pos)] = s.float().cpu()
            items[torch.as_tensor(pos)] = i.cpu()
            emit(progress, ProgressEvent("evaluate", "step", step=min(start + bs, len(arr)),
                                         total=len(arr)))
        return scores, items

    def _rank_batch(self, batch: list[int], k: int, ex: torch.Tensor, mode: str
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        B = len(batch)
        if mode == "first":
            hidden = self._slots_for(batch)[:, 0]
            return head_topk(self.head, hidden, k, ex)
        if mode == "mean":
            # The slots' mean log-softmax over the catalogue: the head's logits are linear in
            # its input and each slot's log-normaliser is one constant per row, so ranking by
            # it equals ranking by the head applied to the slots' mean input.
            hidden = self._slots_for(batch).float().mean(dim=1)
            return head_topk(self.head, hidden, k, ex)
        if mode == "first_k":
            hidden = self._slots_for(batch)
            S = hidden.shape[1]
            rows = torch.arange(B).repeat_interleave(S)
            s, i = head_topk(self.head, hidden.reshape(B * S, -1), k, select_rows(ex, rows))
            return pick_first_k(i.reshape(B, S, k), s.reshape(B, S, k), k)
        return self._rank_ar(batch, k, ex)

    def _rank_ar(self, batch: list[int], k: int, ex: torch.Tensor, *,
                 kept_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Autoregressive top-``k``: each rank's pick fed back as the next slot's soft token.

        With ``kept_cache`` the prompt runs once and every later rank appends one position
        to its keys/values (:meth:`SoftPromptRunner.extend`); without it the whole prompt
        runs again at every rank with the picks as slot tokens (the earlier way, kept as the
        reference tests and ``benchmarks/align/ar_ranking.py`` compare against).

        Returns:
            ``(scores (B, k), items (B, k))``.
        """
        B = len(batch)
        picked: list[list[int]] = [[] for _ in range(B)]
        out_s = torch.empty(B, k)
        for t in range(k):
            if not kept_cache:
                hidden = self._slot_hidden(batch, picked, num_slots=t + 1)[:, t]
            elif t == 0:
                hidden = self._slot_hidden(batch, picked, num_slots=1, keep_cache=True)[:, 0]
            else:
                hidden = self._next_slot_hidden(batch, [p[-1] for p in picked])
            s, i = head_topk(self.head, hidden, t + 1, ex)
            for b in range(B):
                for j in range(t + 1):
                    if int(i[b, j]) not in picked[b]:
                        picked[b].append(int(i[b, j]))
                        out_s[b, t] = s[b, j]
                        break
        self.runner.release()
        return out_s, torch.tensor(picked, dtype=torch.int64)

    def evaluate(self, split: str = "test", ks: Sequence[int] = (5, 10, 20), *,
                 ranking: str | None = None, users: Sequence[int] | None = None,
                 progress: ProgressCallback | None = None) -> dict[str, Any]:
        """Full-ranking metrics on ``split`` (``valid``: train excluded; ``test``: train and
        valid excluded), over users with at least one relevant item.

        Returns:
            ``glta_gllm.ranking_metrics`` keys (``precision@K``, ``recall@K``, ``ndcg@K``,
            ``hit_rate@K``, ``users``).
        """
        if split not in ("valid", "test"):
            raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
        relevant = self.data.split(split)
        has = self.data.users_with(split)
        if users is not None:
            has = np.intersect1d(has, self._check_users(users))
        if has.size == 0:
            raise ValueError(f"split {split!r} has no user with a relevant item")
        ex = exclusion_matrix(self.data, ("train",) if split == "valid" else ("train", "valid"))
        _, ranked = self.recommend(has, max(ks), exclude=ex, ranking=ranking, progress=progress)
        metrics = ranking_metrics(ranked, select_rows(relevant, torch.as_tensor(has)), ks=ks)
        emit(progress, ProgressEvent("evaluate", "end", step=int(has.size), total=int(has.size),
                                     metrics={k: float(v) for k, v in metrics.items()}))
        return metrics
