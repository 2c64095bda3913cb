"""Model FLOPs of an alignment training step, counted from the batch shape.

Stages 2 and 3 divide the FLOPs counted here by their measured training time to report the
GFLOP/s they achieve, next to the GEMM rate the precision probe measured
(:func:`glta_align.llm.precision_probe`).

What is counted (matrix products only; a multiply-add is 2 FLOPs):

- **decoder linears**: ``2 x tokens x sum(in x out)`` over every linear layer of the decoder
  stack (:attr:`FrozenLLM.backbone`: attention and MLP projections, LoRA adapters included;
  the ``lm_head`` is not part of it: the stages read hidden states). ``tokens`` is
  ``batch x seq_len`` of the padded block: padding is computed, so it is counted.
- **attention**: scores ``Q K^T`` and the value product ``P V``, each
  ``2 x width x q_len x k_len`` per layer and sequence, with ``width = heads x head_dim``
  (query heads: grouped-query attention shares K/V but not the products) and ``k_len`` the
  cached prefix plus the padded block (the whole rectangle: the kernels are given an explicit
  mask and compute it all), i.e. ``4 x layers x width x batch x seq_len x (past + seq_len)``.
- **backward** (the weights are frozen, gradients flow to the soft tokens): the input
  gradient of every linear (``1x`` its forward), plus the weight gradient of linears whose
  weight trains (LoRA adapters: another ``1x``); attention has activations on both sides of
  each product, so its backward (dQ, dK, dV and dP) is ``2x`` its forward.
- **the GLLM head**: a plain head (``I x H`` item matrix): ``2 x rows x H x I`` forward,
  the same for the input gradient and again for the item matrix's gradient when it trains.
  A projected head (and the residual head built on it) is computed re-associated:
  ``2 x query_rows x H x d`` for the query ``h P``, ``2 x rows x d x I`` for the logits;
  backward ``2 x rows x d x I`` (query gradient; the item embeddings are frozen), and
  ``2 x query_rows x H x d`` for the input gradient plus as much for ``P``'s gradient when
  it trains. ``rows`` are the slots with a target (the fused cross-entropy drops ignored
  ones); ``query_rows`` all slots.

Not counted: the logits the fused cross-entropy recomputes in its backward (model FLOPs, not
hardware FLOPs), softmax / norms / activations (element-wise), the node projectors (``d x H``
per soft token: well under 0.1 % of a SmolLM2 step) and the optimiser update.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["BatchShape", "DecoderCost", "decoder_flops", "head_flops", "step_flops",
           "throughput_record"]


@dataclass(frozen=True)
class BatchShape:
    """The shape of what one :meth:`SoftPromptRunner.hidden_states` call computed.

    Attributes:
        batch: B sequences.
        seq_len: L, the padded length of the block run through the decoder (the prefix
            included when it is not reused from a cache).
        past_len: P, cached prefix positions every sequence attends to (0 without a cache).
        prefix_tokens: prefix positions computed during this call to build that cache
            (batch 1; 0 when a cached prefix was reused).
        prefix_grad: whether that prefix computation carried gradients (a LoRA adapter
            trains, so the prefix is recomputed with grad on every call).
        head_len: H, positions per sequence run without gradient before the block (each
            sample's leading text, left-padded; ``text_head``), behind ``past_len - H``
            prefix positions; they are part of ``past_len``.
        head_rows: ``None`` when that ``(B, H)`` block was computed in this call; else the
            lengths of the leading texts computed alone (batch 1) in it, the others' keys and
            values having come from the runner's cache.
    """

    batch: int
    seq_len: int
    past_len: int = 0
    prefix_tokens: int = 0
    prefix_grad: bool = False
    head_len: int = 0
    head_rows: tuple[int, ...] | None = None


@dataclass(frozen=True)
class DecoderCost:
    """Per-token product sizes of a decoder stack (what :func:`decoder_flops` multiplies).

    Attributes:
        frozen_macs: sum of ``in x out`` over the linear layers whose weights are frozen.
        trained_macs: the same over linear layers whose weights train (LoRA adapters).
        layers: decoder layers (attention blocks).
        attention_width: ``heads x head_dim`` of the query (width of both attention products).
    """

    frozen_macs: int
    trained_macs: int
    layers: int
    attention_width: int

    @classmethod
    def of(cls, llm) -> DecoderCost:
        """The cost of ``llm``'s decoder stack (a :class:`~glta_align.llm.FrozenLLM`).

        Linear layers are the leaf modules with ``in_features`` / ``out_features``
        (``nn.Linear``, :class:`~glta_align.int8.Int8Linear`, and the ``lora_A`` /
        ``lora_B`` layers peft puts beside a wrapped base layer).
        """
        frozen = trained = 0
        for module in llm.backbone.modules():
            if next(module.children(), None) is not None:
                continue
            fin, fout = getattr(module, "in_features", None), getattr(module, "out_features", None)
            if not isinstance(fin, int) or not isinstance(fout, int):
                continue
            weight = getattr(module, "weight", None)
            if isinstance(weight, nn.Parameter) and weight.requires_grad:
                trained += fin * fout
            else:
                frozen += fin * fout
        cfg = llm.causal_lm.config
        heads = int(cfg.num_attention_heads)
        head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
        return cls(frozen, trained, int(cfg.num_hidden_layers), heads * head_dim)


def decoder_flops(cost: DecoderCost, *, batch: int, seq_len: int, past_len: int = 0,
                  backward: bool = True) -> float:
    """FLOPs of the decoder stack on a padded ``(batch, seq_len)`` block.

    Args:
        cost: the stack's :class:`DecoderCost`.
        batch: B; seq_len: L (padded, padding counted).
        past_len: P cached positions each query also attends to.
        backward: add the backward (input gradients, trained weights' gradients).

    Returns:
        ``2 T (F + A) + 4 n w B L (P + L)`` forward, with ``T = B L`` tokens, ``F`` / ``A``
        the frozen / trained ``in x out`` sums, ``n`` layers, ``w`` the attention width;
        the backward adds ``2 T F + 4 T A + 8 n w B L (P + L)``.
    """
    tokens = batch * seq_len
    linear = 2.0 * tokens * (cost.frozen_macs + cost.trained_macs)
    attention = 4.0 * cost.layers * cost.attention_width * batch * seq_len * (past_len + seq_len)
    total = linear + attention
    if backward:
        total += linear + 2.0 * tokens * cost.trained_macs + 2.0 * attention
    return total


def head_flops(head: nn.Module, rows: int, *, query_rows: int | None = None,
               backward: bool = True) -> float:
    """FLOPs of the GLLM head's cross-entropy on ``rows`` target slots.

    Args:
        head: a ``GLLMHead`` (``weight`` (I, H)), a ``ProjectedItemHead`` (projector ``P``
            (H, d), frozen ``item_embeddings`` (I, d)) or a
            :class:`~glta_align.heads.ResidualHead` around one (its ``text_dim`` item text
            features widen ``d``); another module with
            ``hidden_size`` and ``num_items`` is counted as a plain head.
        rows: slots with a target (N valid rows of the (N, H) hidden states).
        query_rows: all slots (the query ``h P`` of a projected head is computed for every
            row); default ``rows``.
        backward: add the backward (input gradient, trained weights' gradients).

    Returns:
        Plain: ``2 N H I`` forward, ``+ 2 N H I`` backward, ``+ 2 N H I`` when the item matrix
        trains. Projected: ``2 Q H d + 2 N d I`` forward, ``+ 2 N d I + 2 Q H d`` backward,
        ``+ 2 Q H d`` when ``P`` trains (``Q = query_rows``). Items are this rank's shard.
    """
    q_rows = rows if query_rows is None else query_rows
    base = getattr(head, "base", head)  # ResidualHead -> its ProjectedItemHead
    proj = getattr(base, "projector", None)
    items_tensor = getattr(base, "item_embeddings", None)
    if proj is not None and items_tensor is not None:
        h, d = proj.weight.shape
        d += int(getattr(head, "text_dim", 0))  # a residual head's item text features
        items = int(items_tensor.shape[0])
        query, logits = 2.0 * q_rows * h * d, 2.0 * rows * d * items
        total = query + logits
        if backward:
            total += logits + query + (query if proj.weight.requires_grad else 0.0)
        return total
    weight = getattr(head, "weight", None)
    if isinstance(weight, nn.Parameter) and weight.dim() == 2:
        items, h = weight.shape
        trains = weight.requires_grad
    else:
        items, h = int(head.num_items), int(head.hidden_size)
        trains = any(p.requires_grad for p in head.parameters())
    one = 2.0 * rows * h * items
    return one * (1 + (1 + int(trains) if backward else 0))


def step_flops(cost: DecoderCost, head: nn.Module, shape: BatchShape, rows: int,
               query_rows: int | None = None) -> float:
    """Model FLOPs of one training step (forward and backward) of stage 2 or 3.

    The decoder on the padded ``(B, L)`` block behind ``P`` cached positions, the samples'
    leading text run before it (``(B, head_len)``, or only the rows in ``head_rows`` alone;
    forward only), the prefix computed for that
    cache in this step (batch 1, forward only unless ``prefix_grad``), and the head on the
    slots.

    Args:
        cost: :meth:`DecoderCost.of` the LLM.
        head: the GLLM head (see :func:`head_flops`).
        shape: what the runner computed (``SoftPromptRunner.last_shape``).
        rows: slots with a target; query_rows: all slots (default ``rows``).

    Returns:
        The step's FLOPs (a float).
    """
    total = decoder_flops(cost, batch=shape.batch, seq_len=shape.seq_len,
                          past_len=shape.past_len)
    if shape.head_len:
        behind = shape.past_len - shape.head_len
        if shape.head_rows is None:
            total += decoder_flops(cost, batch=shape.batch, seq_len=shape.head_len,
                                   past_len=behind, backward=False)
        else:
            total += sum(decoder_flops(cost, batch=1, seq_len=h, past_len=behind,
                                       backward=False) for h in shape.head_rows)
    if shape.prefix_tokens:
        total += decoder_flops(cost, batch=1, seq_len=shape.prefix_tokens,
                               backward=shape.prefix_grad)
    return total + head_flops(head, rows, query_rows=query_rows)


def throughput_record(model_flops: float, train_seconds: float, timed_steps: int
                      ) -> dict[str, float | int | None]:
    """What a stage saves about its speed (next to its selection metadata).

    Args:
        model_flops: FLOPs of the steps timed (sum of :func:`step_flops`).
        train_seconds: their wall time (``LoopResult.train_seconds``).
        timed_steps: how many steps that is (``LoopResult.timed_steps``; fewer than the
            run's steps when this attempt resumed a killed one).

    Returns:
        ``{"train_seconds", "model_flops", "achieved_gflops", "timed_steps"}``;
        ``achieved_gflops`` is ``model_flops / train_seconds / 1e9`` (``None`` when no step
        was timed, e.g. a run resumed after its last step).
    """
    rate = model_flops / train_seconds / 1e9 if train_seconds > 0 and timed_steps else None
    return {"train_seconds": float(train_seconds), "model_flops": float(model_flops),
            "achieved_gflops": rate, "timed_steps": int(timed_steps)}
