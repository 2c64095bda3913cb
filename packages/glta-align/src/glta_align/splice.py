"""Soft-token splicing: projected vectors replace placeholder positions in ``inputs_embeds``.

A sample is a :class:`SoftSequence`: token ids, and for each position either ``-1`` (use the
token's embedding) or a row of a per-batch *soft table* (S, H) whose vector replaces it. The
table holds the projected user/item vectors and the fixed slot placeholder; it carries the
gradient, so training flows through the frozen LLM into the projectors.

:class:`SoftPromptRunner` runs a batch behind a shared, fixed prefix (the instruction text up
to the first placeholder). With ``reuse_prefix`` the prefix's key/value cache is computed once
(batch 1, no grad when the LLM is frozen; recomputed with grad per call when a LoRA adapter
trains) and expanded to the batch; the samples are then padded (right or left), with a 2-D
attention mask covering prefix + body and explicit position ids (prefix length + number of
real tokens before each position), so that the output equals the unpadded forward of
``prefix + sample`` alone. The hidden states at each sample's ``read`` positions (its output
slots) are returned.

With ``compile`` [choice] the per-batch call goes through ``torch.compile(backbone,
dynamic=True)`` and the batch length is padded up to a multiple of ``pad_multiple`` (16), so
a run compiles for a handful of lengths instead of one per distinct length. When compiling
fails (no C++ compiler, an unsupported model), a ``RuntimeWarning`` says why and the runner
goes on eagerly.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from glta_graph.progress import ProgressCallback, ProgressEvent, emit

from glta_align.flops import BatchShape
from glta_align.llm import FrozenLLM

__all__ = ["HEAD_BATCH", "SoftPromptRunner", "SoftSequence", "bucket_batches"]

# Most leading texts of one length computed in one call when they are kept (batch 1 runs the
# int8 / bf16 products on a few dozen rows, far below their rate).
HEAD_BATCH = 32


@dataclass
class SoftSequence:
    """One sample after the shared prefix.

    Attributes:
        ids: (L,) token ids; at soft positions the id is ignored.
        soft: (L,) ``-1`` for a text token, else the row of the soft table to splice in.
        read: positions (indices into ``ids``) whose last hidden state is returned.
    """

    ids: list[int] = field(default_factory=list)
    soft: list[int] = field(default_factory=list)
    read: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def add_text(self, ids: Sequence[int]) -> SoftSequence:
        """Append text token ids; returns self."""
        self.ids.extend(int(i) for i in ids)
        self.soft.extend([-1] * len(ids))
        return self

    def add_soft(self, rows: Sequence[int], *, read: bool = False) -> SoftSequence:
        """Append soft tokens (rows of the soft table); ``read`` marks them as output slots."""
        start = len(self.ids)
        self.ids.extend([0] * len(rows))
        self.soft.extend(int(r) for r in rows)
        if read:
            self.read.extend(range(start, start + len(rows)))
        return self


def bucket_batches(
    lengths: Sequence[int], batch_size: int, rng: np.random.Generator, *, window: int = 32
) -> list[list[int]]:
    """Length-bucketed batches: shuffle, sort within windows of ``window`` batches, split.

    Args:
        lengths: (N,) sequence lengths.
        batch_size: samples per batch (the last batch may be smaller).
        rng: the source of randomness (seeded by the caller for repeatable runs).
        window: how many batches' worth of samples are sorted together.

    Returns:
        Batches of sample indices, in shuffled order; every index appears exactly once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = rng.permutation(len(lengths))
    lens = np.asarray(lengths)
    batches: list[list[int]] = []
    span = batch_size * max(1, window)
    for start in range(0, len(order), span):
        chunk = order[start : start + span]
        chunk = chunk[np.argsort(lens[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size].tolist() for i in range(0, len(chunk), batch_size))
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


@functools.cache
def _cache_kwarg_of(forward_owner: type) -> str:
    params = inspect.signature(forward_owner.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _cache_kwarg(backbone: torch.nn.Module) -> str:
    """The key/value-cache argument of ``backbone.forward``: ``cache`` (transformers >= 5.2x)
    or ``past_key_values`` (earlier releases, e.g. 5.17)."""
    return _cache_kwarg_of(type(backbone))


def _output_cache(out: object) -> object:
    """The key/value cache of a decoder's output (``out.cache`` or ``out.past_key_values``)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


class SoftPromptRunner:
    """Run batches of :class:`SoftSequence` behind a fixed prefix through a frozen LLM.

    Args:
        llm: the loaded LLM.
        prefix_ids: the shared instruction prefix (token ids).
        reuse_prefix: compute the prefix's KV cache once and reuse it (else prepend the
            prefix to every sample: the plain path).
        padding_side: ``"right"`` or ``"left"``; results are identical either way.
        compile: [choice] run the per-batch call through ``torch.compile(dynamic=True)``.
        pad_multiple: pad each batch's length up to a multiple of this (default 16 when
            compiling, else 1): fewer distinct shapes, fewer recompiles.
        text_head: run each sample's leading text (before its first soft token) without
            gradient behind the cached prefix when the LLM is frozen or no gradient is
            recorded (needs ``reuse_prefix`` and a prefix; same outputs, no backward
            through that text).
        head_cache_mb: with ``text_head``, keep each distinct leading text's keys/values
            (computed without padding: alone, or batched with texts of the same length,
            the same keys/values up to float rounding) up to this many MiB and reuse them in later
            calls (later epochs, ranking; :meth:`warm_heads` computes them ahead in
            batches); 0 = recompute in every call. Never used while the LLM has trainable
            weights.
        head_cache_dtype: dtype the kept keys/values are stored in (cast back to the
            computing dtype when used). Default: bfloat16 for an int8 LLM (its keys/values
            are fp32 products of int8-rounded activations, whose rounding is coarser than
            bf16's: storing them in bf16 halves the memory, so twice the texts fit the
            budget), else the dtype they are computed in.

    Attributes:
        last_shape: the :class:`~glta_align.flops.BatchShape` the last
            :meth:`hidden_states` call computed (``None`` before one), for FLOP counting.
    """

    def __init__(
        self,
        llm: FrozenLLM,
        prefix_ids: Sequence[int],
        *,
        reuse_prefix: bool = True,
        padding_side: str = "right",
        compile: bool = False,
        pad_multiple: int | None = None,
        text_head: bool = False,
        head_cache_mb: float = 0,
        head_cache_dtype: torch.dtype | None = None,
    ) -> None:
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if pad_multiple is not None and pad_multiple < 1:
            raise ValueError(f"pad_multiple must be >= 1, got {pad_multiple}")
        self.llm = llm
        self.prefix_ids = [int(i) for i in prefix_ids]
        self.reuse_prefix = reuse_prefix
        self.text_head = text_head
        self.head_cache_mb = float(head_cache_mb)
        if head_cache_dtype is None and head_cache_mb > 0 and llm.precision == "int8":
            head_cache_dtype = torch.bfloat16
        self.head_cache_dtype = head_cache_dtype
        self._head_cache: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._head_cache_bytes = 0
        self._head_not_kept: set[tuple[int, ...]] = set()
        self._head_rows: tuple[int, ...] | None = None
        self._kept: tuple[Any, torch.Tensor, torch.Tensor] | None = None  # keep_cache's batch
        self.padding_side = padding_side
        self.compile = compile
        self.pad_multiple = pad_multiple if pad_multiple is not None else (16 if compile else 1)
        self._compiled: Callable[..., object] | None = None
        self._frozen_prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.last_shape: BatchShape | None = None
        self._prefix_run: tuple[int, bool] = (0, False)

    def _prefix_kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        trainable = bool(self.llm.trainable_parameters()) and torch.is_grad_enabled()
        if self._frozen_prefix is not None and not trainable:
            return self._frozen_prefix
        self._prefix_run = (len(self.prefix_ids), trainable)
        ids = torch.tensor([self.prefix_ids], device=self.llm.device)
        with torch.set_grad_enabled(trainable):
            out = self.llm.backbone(input_ids=ids, use_cache=True)
        kv = [(layer.keys, layer.values) for layer in _output_cache(out).layers]
        if not trainable:
            self._frozen_prefix = [(k.detach(), v.detach()) for k, v in kv]
        return kv

    def _model(self) -> Callable[..., object]:
        """The backbone, or its compiled wrapper (compiled on first use)."""
        if not self.compile:
            return self.llm.backbone
        if self._compiled is None:
            self._compiled = torch.compile(self.llm.backbone, dynamic=True)
        return self._compiled

    def reset(self) -> None:
        """Forget the cached prefix and text heads (call after the LLM's weights change, e.g.
        LoRA steps)."""
        self._frozen_prefix = None
        self._head_cache.clear()
        self._head_cache_bytes = 0
        self._head_not_kept.clear()
        self.release()

    @property
    def keeps_texts(self) -> bool:
        """Whether leading texts are computed once and kept: ``text_head`` with a cached
        prefix, ``head_cache_mb > 0`` and no trainable LLM weights (LoRA recomputes them)."""
        return bool(self.text_head and self.head_cache_mb > 0 and self.reuse_prefix
                    and self.prefix_ids and not self.llm.trainable_parameters())

    def head_cache_stats(self) -> dict[str, object]:
        """What the text-head cache holds: ``{"texts": kept, "not_kept": distinct texts met
        but over the budget (recomputed each time they come back), "mib": kept MiB,
        "budget_mib", "dtype": storage dtype or None (as computed)}``."""
        return {"texts": len(self._head_cache), "not_kept": len(self._head_not_kept),
                "mib": round(self._head_cache_bytes / 2**20, 1),
                "budget_mib": self.head_cache_mb,
                "dtype": None if self.head_cache_dtype is None
                else str(self.head_cache_dtype).removeprefix("torch.")}

    def _head_lengths(self, seqs: Sequence[SoftSequence], plen: int, past: int) -> list[int]:
        """Per sample, the leading positions (prefix included when not reused) before its first
        soft token or read position: all zeros unless ``text_head`` applies to this call (the
        LLM frozen or no gradient recorded, and a cached prefix for padding to attend to)."""
        frozen = not (torch.is_grad_enabled() and self.llm.trainable_parameters())
        if not (self.text_head and frozen and past > 0):
            return [0] * len(seqs)
        heads = []
        for s in seqs:
            marks = [i for i, r in enumerate(s.soft) if r >= 0][:1] + list(s.read[:1])
            heads.append(plen + (min(marks) if marks else len(s)))
        return heads

    def _rows_head(self, rows: list[list[int]], kv: list[tuple[torch.Tensor, torch.Tensor]]
                   ) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Leading texts of one length behind the prefix, no padding, no gradient: per row,
        per-layer ``(keys, values)`` of that text, ``(heads, h, d)``. Rows of one length run as
        one batch with nothing to mask, so each row's keys/values are those of the row run
        alone: bit for bit with an int8 LLM (integer products, per-row scales), within float
        rounding in fp32/bf16, whose products' kernels can depend on the number of rows
        (``test_batched_heads_match_rows_alone``)."""
        from transformers import DynamicCache

        if len({len(r) for r in rows}) != 1:
            raise ValueError("_rows_head needs rows of one length")
        dev = self.llm.device
        B, P, h = len(rows), kv[0][0].shape[-2], len(rows[0])
        ids = torch.tensor(rows, device=dev)
        cache = DynamicCache(ddp_cache_data=[(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1))
                                             for k, v in kv])
        with torch.no_grad():
            self.llm.backbone(inputs_embeds=self.llm.embed(ids), use_cache=True,
                              position_ids=torch.arange(P, P + h, device=dev)[None].expand(B, -1),
                              **{_cache_kwarg(self.llm.backbone): cache})
        return [[(layer.keys[b, :, P:].clone(), layer.values[b, :, P:].clone())
                 for layer in cache.layers] for b in range(B)]

    def _compute_heads(self, rows: Sequence[tuple[int, ...]],
                       kv: list[tuple[torch.Tensor, torch.Tensor]]
                       ) -> dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]]:
        """Keys/values of distinct non-empty ``rows`` (in the storage dtype), rows of one
        length batched together, at most :data:`HEAD_BATCH` per call."""
        by_len: dict[int, list[tuple[int, ...]]] = {}
        for r in dict.fromkeys(rows):
            by_len.setdefault(len(r), []).append(r)
        out = {}
        for group in by_len.values():
            for i in range(0, len(group), HEAD_BATCH):
                chunk = group[i:i + HEAD_BATCH]
                for r, got in zip(chunk, self._rows_head([list(r) for r in chunk], kv),
                                  strict=True):
                    if self.head_cache_dtype is not None:
                        got = [(k.to(self.head_cache_dtype), v.to(self.head_cache_dtype))
                               for k, v in got]
                    out[r] = got
        return out

    def _keep_heads(self, got: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]]
                    ) -> None:
        """Keep computed texts while they fit ``head_cache_mb`` (in the given order); the
        others are noted as not kept (computed again when met again)."""
        for key, kvs in got.items():
            size = sum(k.numel() * k.element_size() * 2 for k, _ in kvs)
            if self._head_cache_bytes + size <= self.head_cache_mb * 2**20:
                self._head_cache[key] = kvs
                self._head_cache_bytes += size
            else:
                self._head_not_kept.add(key)

    def warm_heads(self, seqs: Sequence[SoftSequence], *,
                   progress: ProgressCallback | None = None) -> int:
        """Compute and keep the leading texts of ``seqs`` that are not kept yet, texts of one
        length batched together (:meth:`_rows_head`: what a batch meeting the text would
        compute, up to float rounding; bit for bit in int8), so that later calls only read
        them. A no-op unless texts are kept (:attr:`keeps_texts`).

        Args:
            seqs: samples as :meth:`hidden_states` takes them (their soft rows are not read).
            progress: receives ``ProgressEvent(stage="text_cache")`` start/step/end.

        Returns:
            The number of texts computed.
        """
        if not self.keeps_texts:
            return 0
        with torch.no_grad():
            kv = self._prefix_kv()
            heads = self._head_lengths(seqs, 0, kv[0][0].shape[-2])
        todo = list(dict.fromkeys(
            key for s, h in zip(seqs, heads, strict=True)
            if h and (key := tuple(s.ids[:h])) not in self._head_cache))
        todo.sort(key=len)
        if not todo:
            return 0
        emit(progress, ProgressEvent("text_cache", "start", step=0, total=len(todo),
                                     message="text keys/values"))
        done = 0
        for i in range(0, len(todo), 4 * HEAD_BATCH):
            part = todo[i:i + 4 * HEAD_BATCH]
            self._keep_heads(self._compute_heads(part, kv))
            done += len(part)
            emit(progress, ProgressEvent("text_cache", "step", step=done, total=len(todo)))
        emit(progress, ProgressEvent("text_cache", "end", step=done, total=len(todo)))
        return len(todo)

    def _run_head(self, rows: list[list[int]], kv: list[tuple[torch.Tensor, torch.Tensor]]
                  ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """The samples' leading text behind the cached prefix, left-padded, without gradient:
        ``(per-layer (keys, values) (B, heads, P + H, d) of prefix + head, head mask (B, H))``.

        With ``head_cache_mb`` (and no trainable LLM weights) each distinct text is computed
        alone once and its keys/values kept, up to that many MiB; later calls reuse them.
        """
        from transformers import DynamicCache

        dev = self.llm.device
        B, H = len(rows), max(len(r) for r in rows)
        mask = np.zeros((B, H), dtype=np.int64)
        for b, r in enumerate(rows):
            mask[b, H - len(r):] = 1
        mask_t = torch.from_numpy(mask).to(dev)
        P = kv[0][0].shape[-2]
        self._head_rows = None
        if self.keeps_texts:  # _run_head is only called with text_head and a prefix
            missing = [tuple(r) for r in rows if r and tuple(r) not in self._head_cache]
            fresh = self._compute_heads(missing, kv)
            self._keep_heads(fresh)
            per_row = [self._head_cache.get(tuple(r), fresh.get(tuple(r))) if r else None
                       for r in rows]
            computed = [len(r) for r in fresh]
            out = []
            for li, (pk, pv) in enumerate(kv):
                keys = pk.new_zeros((B, pk.shape[1], P + H, pk.shape[-1]))
                values = pv.new_zeros((B, pv.shape[1], P + H, pv.shape[-1]))
                keys[:, :, :P] = pk[0]
                values[:, :, :P] = pv[0]
                for b, got in enumerate(per_row):
                    if got is not None:
                        h = got[li][0].shape[1]
                        keys[b, :, P + H - h:] = got[li][0]
                        values[b, :, P + H - h:] = got[li][1]
                out.append((keys, values))
            self._head_rows = tuple(computed)
            return out, mask_t
        pad = self.llm.tokenizer.pad_token_id or 0
        ids = np.full((B, H), pad, dtype=np.int64)
        for b, r in enumerate(rows):
            if r:
                ids[b, H - len(r):] = r
        pos = P + (mask_t.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(ddp_cache_data=[(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1))
                                             for k, v in kv])
        full_mask = torch.cat([torch.ones(B, P, dtype=mask_t.dtype, device=dev), mask_t], 1)
        with torch.no_grad():
            self.llm.backbone(inputs_embeds=self.llm.embed(torch.from_numpy(ids).to(dev)),
                              attention_mask=full_mask, position_ids=pos, use_cache=True,
                              **{_cache_kwarg(self.llm.backbone): cache})
        return [(layer.keys, layer.values) for layer in cache.layers], mask_t

    def release(self) -> None:
        """Drop the keys/values kept by ``hidden_states(..., keep_cache=True)`` (memory)."""
        self._kept = None

    def extend(self, vectors: torch.Tensor) -> torch.Tensor:
        """Append one soft token per row to the batch of the last :meth:`hidden_states` call
        made with ``keep_cache=True`` and return the last layer's hidden state there: the
        same as running that call's sequences with the token appended (up to rounding), at
        the cost of one position (autoregressive ranking).

        Args:
            vectors: (B, H) soft-token vectors, one per row of that call.

        Returns:
            (B, H) float32 hidden states at the appended positions.
        """
        state = self._kept
        if state is None:
            raise RuntimeError("extend() needs a hidden_states(..., keep_cache=True) call first")
        cache, mask, pos = state
        if vectors.shape[0] != mask.shape[0]:
            raise ValueError(f"extend: {vectors.shape[0]} vectors for a batch of {mask.shape[0]}")
        dev = self.llm.device
        mask = torch.cat([mask, torch.ones(mask.shape[0], 1, dtype=mask.dtype, device=dev)], 1)
        pos = pos + 1
        with torch.no_grad():
            out = self.llm.backbone(
                inputs_embeds=vectors.to(device=dev, dtype=self.llm.dtype)[:, None],
                attention_mask=mask, position_ids=pos, use_cache=True,
                **{_cache_kwarg(self.llm.backbone): cache})
        self._kept = (cache, mask, pos)
        return out.last_hidden_state[:, -1].float()

    def hidden_states(
        self, seqs: Sequence[SoftSequence], soft_table: torch.Tensor | None,
        keep_cache: bool = False,
    ) -> torch.Tensor:
        """Last-layer hidden states at each sample's ``read`` positions.

        With ``text_head`` (and the LLM frozen or no gradient recorded) each sample's leading
        text, up to its first soft token, first runs without gradient behind the prefix
        (left-padded) and the rest attends to its keys/values: the same outputs as one pass,
        with no backward through that text.

        Args:
            seqs: B samples; each must read the same number R of positions.
            soft_table: (S, H) vectors referenced by the samples' ``soft`` rows (any float
                dtype; cast to the LLM's dtype); gradients flow back into it.
            keep_cache: keep this batch's keys/values (no gradient, each sample ending with
                its last read position) so that :meth:`extend` can append tokens to it (a
                new last column: padding is masked, positions continue each row's own).

        Returns:
            (B, R, H) float32 hidden states.
        """
        from transformers import DynamicCache

        if not seqs:
            raise ValueError("hidden_states needs at least one sequence")
        self._kept = None
        if keep_cache and (torch.is_grad_enabled()
                           or any(not s.read or s.read[-1] != len(s) - 1 for s in seqs)):
            raise ValueError("keep_cache needs no gradient and sequences ending with their "
                             "last read position")
        reads = {len(s.read) for s in seqs}
        if len(reads) != 1:
            raise ValueError(f"all sequences must read the same number of positions, got {reads}")
        dev, dt = self.llm.device, self.llm.dtype
        prefix = [] if self.reuse_prefix else self.prefix_ids
        plen = len(prefix)
        kv = None
        self._prefix_run = (0, False)
        if self.reuse_prefix and self.prefix_ids:
            kv = self._prefix_kv()
        P = 0 if kv is None else kv[0][0].shape[-2]
        heads = self._head_lengths(seqs, plen, P)
        head_kv = head_mask = None
        if any(heads):
            head_kv, head_mask = self._run_head([(prefix + s.ids)[:h] for s, h in
                                               zip(seqs, heads, strict=True)], kv)
        H = 0 if head_mask is None else head_mask.shape[1]
        lengths = [plen + len(s) - h for s, h in zip(seqs, heads, strict=True)]
        B, L = len(seqs), max(lengths)
        L = -(-L // self.pad_multiple) * self.pad_multiple
        pad = self.llm.tokenizer.pad_token_id or 0
        ids = np.full((B, L), pad, dtype=np.int64)
        soft = np.full((B, L), -1, dtype=np.int64)
        mask = np.zeros((B, L), dtype=np.int64)
        read = np.zeros((B, len(seqs[0].read)), dtype=np.int64)
        for b, s in enumerate(seqs):
            off = 0 if self.padding_side == "right" else L - lengths[b]
            n, h = lengths[b], heads[b]
            ids[b, off : off + n] = (prefix + s.ids)[h:]
            soft[b, off : off + n] = ([-1] * plen + s.soft)[h:]
            mask[b, off : off + n] = 1
            read[b] = np.asarray(s.read, dtype=np.int64) + off + plen - h
        ids_t = torch.from_numpy(ids).to(dev)
        with torch.no_grad():  # token embeddings are frozen
            emb = self.llm.embed(ids_t)
        soft_t = torch.from_numpy(soft).to(dev)
        sel = soft_t >= 0
        if bool(sel.any()):
            if soft_table is None:
                raise ValueError("sequences reference soft rows but soft_table is None")
            bi, pi = sel.nonzero(as_tuple=True)
            rows = soft_t[bi, pi]
            if int(rows.max()) >= soft_table.shape[0]:
                raise ValueError(
                    f"soft row {int(rows.max())} out of range for a table of {soft_table.shape[0]}"
                )
            # index_select: its backward sums repeated rows in a fixed order (bitwise repeatable)
            emb = emb.index_put((bi, pi), soft_table.to(device=dev, dtype=dt).index_select(0, rows))
        mask_t = torch.from_numpy(mask).to(dev)
        pos = (mask_t.cumsum(-1) - 1).clamp(min=0)
        past = 0
        if kv is not None:
            before = [torch.ones(B, P, dtype=mask_t.dtype, device=dev)]
            if head_mask is not None:
                before.append(head_mask)
                pos = pos + torch.tensor(heads, dtype=pos.dtype, device=dev)[:, None]
            mask_t = torch.cat([*before, mask_t], 1)
            pos = pos + P
            past = P + H
        self.last_shape = BatchShape(B, L, past, *self._prefix_run, head_len=H,
                                     head_rows=self._head_rows if H else None)

        def call(model: Callable[..., object]) -> object:
            # a fresh cache per call: the forward appends the body's keys/values to it
            if head_kv is not None:
                fresh = DynamicCache(ddp_cache_data=head_kv)
            else:
                fresh = None if kv is None else DynamicCache(ddp_cache_data=[
                    (k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)) for k, v in kv])
            if keep_cache and fresh is None:
                fresh = DynamicCache()
            out = model(inputs_embeds=emb, attention_mask=mask_t, position_ids=pos,
                        use_cache=fresh is not None,
                        **{_cache_kwarg(self.llm.backbone): fresh})
            if keep_cache:
                self._kept = (fresh, mask_t, pos[:, -1:])
            return out

        model = self._model()
        scope = self.llm.attention_scope
        try:
            with scope():  # the training attention kernels when this pass records gradients
                out = call(model)
        except Exception as exc:  # compiling failed: no C++ compiler, an op inductor lacks, ...
            if model is self.llm.backbone:
                raise
            warnings.warn(f"torch.compile of the LLM failed ({type(exc).__name__}: "
                          f"{str(exc)[:200]}); running it eagerly", RuntimeWarning, stacklevel=2)
            self._compiled = self.llm.backbone  # this call and the later ones run eagerly
            with scope():
                out = call(self.llm.backbone)
        hidden = out.last_hidden_state
        idx = torch.from_numpy(read).to(dev)
        picked = hidden.gather(1, idx.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        return picked.float()
