"""Model FLOPs of an alignment step (glta_align.flops) against hand counts and torch's counter."""

from __future__ import annotations

import pytest
import torch
from glta_gllm import GLLMHead, ProjectedItemHead
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from glta_align.flops import (
    BatchShape,
    DecoderCost,
    decoder_flops,
    head_flops,
    step_flops,
    throughput_record,
)
from glta_align.heads import ResidualHead
from glta_align.splice import SoftPromptRunner, SoftSequence

# the tiny Llama of conftest: H 64, 2 layers, 4 heads of 16, 2 KV heads, MLP 128:
# per layer q 64x64 + k 64x32 + v 64x32 + o 64x64 + gate 64x128 + up 64x128 + down 128x64
PER_LAYER = 4096 + 2048 + 2048 + 4096 + 8192 + 8192 + 8192


def test_decoder_cost_of_the_tiny_llama(tiny):
    cost = DecoderCost.of(tiny)
    assert cost == DecoderCost(frozen_macs=2 * PER_LAYER, trained_macs=0, layers=2,
                               attention_width=64)


def test_decoder_flops_by_hand():
    cost = DecoderCost(frozen_macs=2 * PER_LAYER, trained_macs=0, layers=2, attention_width=64)
    # B 3, L 5 (padding included), 7 cached prefix positions: 15 tokens, 5 x 12 scores each
    linear = 2 * 15 * 73728  # 2,211,840
    attention = 4 * 2 * 64 * 3 * 5 * 12  # 92,160
    assert linear == 2_211_840 and attention == 92_160
    assert decoder_flops(cost, batch=3, seq_len=5, past_len=7, backward=False) == 2_304_000
    # backward: linear input gradients 1x, attention (dQ, dK, dV, dP) 2x
    assert decoder_flops(cost, batch=3, seq_len=5, past_len=7) == 2_304_000 + linear + 2 * attention
    # a trained linear (LoRA) adds its weight gradient: 3x its forward in all
    lora = DecoderCost(frozen_macs=0, trained_macs=100, layers=1, attention_width=0)
    assert decoder_flops(lora, batch=1, seq_len=2) == 3 * 2 * 2 * 100


def test_lora_adapters_are_trained_macs(tiny):
    from peft import LoraConfig, get_peft_model

    tiny.model = get_peft_model(tiny.model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    cost = DecoderCost.of(tiny)
    # per layer: q A 64x2 + B 2x64, v A 64x2 + B 2x32; base layers unchanged and frozen
    assert cost.trained_macs == 2 * (128 + 128 + 128 + 64)
    assert cost.frozen_macs == 2 * PER_LAYER


def test_head_flops_by_hand():
    plain = GLLMHead(64, 30)
    assert head_flops(plain, 4) == 3 * 2 * 4 * 64 * 30  # forward, input grad, weight grad
    plain.requires_grad_(False)
    assert head_flops(plain, 4) == 2 * 2 * 4 * 64 * 30
    assert head_flops(plain, 4, backward=False) == 2 * 4 * 64 * 30
    proj = nn.Linear(8, 64).requires_grad_(False)
    projected = ProjectedItemHead(torch.randn(30, 8), proj)
    query, logits = 2 * 6 * 64 * 8, 2 * 4 * 8 * 30  # 6 slots, 4 of them with a target
    assert head_flops(projected, 4, query_rows=6) == 2 * query + 2 * logits
    proj.requires_grad_(True)
    assert head_flops(projected, 4, query_rows=6) == 3 * query + 2 * logits
    assert head_flops(ResidualHead(projected), 4, query_rows=6) == 3 * query + 2 * logits
    # item text features widen the scored width from d = 8 to 8 + 3
    text = ResidualHead(projected, text_items=torch.randn(30, 3))
    query, logits = 2 * 6 * 64 * 11, 2 * 4 * 11 * 30
    assert head_flops(text, 4, query_rows=6) == 3 * query + 2 * logits


def test_step_flops_adds_prefix_and_head():
    cost = DecoderCost(frozen_macs=1000, trained_macs=0, layers=1, attention_width=8)
    head = GLLMHead(8, 5)
    shape = BatchShape(batch=2, seq_len=3, past_len=4, prefix_tokens=4, prefix_grad=False)
    want = (decoder_flops(cost, batch=2, seq_len=3, past_len=4)
            + decoder_flops(cost, batch=1, seq_len=4, backward=False) + head_flops(head, 6))
    assert step_flops(cost, head, shape, rows=6) == want


def test_step_flops_counts_a_text_head_forward_only(tiny):
    """A text head (leading text without gradient) adds its forward behind the prefix; with
    the runner's split the linear products torch counts are the head's forward plus the
    block's forward and input gradient."""
    cost = DecoderCost(frozen_macs=1000, trained_macs=0, layers=1, attention_width=8)
    head = GLLMHead(8, 5)
    shape = BatchShape(batch=2, seq_len=3, past_len=4 + 2, head_len=2)
    want = (decoder_flops(cost, batch=2, seq_len=3, past_len=6)
            + decoder_flops(cost, batch=2, seq_len=2, past_len=4, backward=False)
            + head_flops(head, 6))
    assert step_flops(cost, head, shape, rows=6) == want
    # texts computed alone (the rest from the runner's cache): only those are counted
    alone = BatchShape(batch=2, seq_len=3, past_len=6, head_len=2, head_rows=(2,))
    assert step_flops(cost, head, alone, rows=6) == (
        decoder_flops(cost, batch=2, seq_len=3, past_len=6)
        + decoder_flops(cost, batch=1, seq_len=2, past_len=4, backward=False)
        + head_flops(head, 6))
    runner = SoftPromptRunner(tiny, [1, 2, 3, 4, 5, 6, 7], text_head=True)
    seqs = [SoftSequence().add_text([10, 11, 12]).add_soft([1, 2], read=True),
            SoftSequence().add_text([10]).add_soft([1, 2], read=True)]
    table = torch.randn(3, 64, requires_grad=True)
    runner.hidden_states(seqs, table)
    with FlopCounterMode(display=False) as counter:
        runner.hidden_states(seqs, table).sum().backward()
    shape = runner.last_shape
    assert shape == BatchShape(2, 2, 7 + 3, 0, False, head_len=3)
    counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    macs = DecoderCost.of(tiny).frozen_macs
    assert sum(v for k, v in counts.items() if k in ("aten.mm", "aten.addmm", "aten.bmm")) \
        == 2 * 2 * 3 * macs + 2 * (2 * 2 * 2 * macs)


@pytest.mark.parametrize("reuse", [False, True])
def test_runner_shape_and_torch_flop_counter_agree(tiny, reuse):
    """Linear products and the attention forward match torch's FlopCounterMode exactly; its
    attention backward counts the flash kernel's recomputed scores too (2.5x, ours 2x)."""
    runner = SoftPromptRunner(tiny, [1, 2, 3, 4, 5, 6, 7], reuse_prefix=reuse)
    seqs = [SoftSequence().add_text([10, 11, 12]).add_soft([1, 2], read=True),
            SoftSequence().add_text([10]).add_soft([1, 2], read=True)]
    table = torch.randn(3, 64, requires_grad=True)
    runner.hidden_states(seqs, table)
    first = runner.last_shape
    assert first.prefix_tokens == (7 if reuse else 0) and not first.prefix_grad
    with FlopCounterMode(display=False) as counter:
        runner.hidden_states(seqs, table).sum().backward()
    shape = runner.last_shape
    assert shape == BatchShape(2, 5 if reuse else 12, 7 if reuse else 0, 0, False)
    counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    cost = DecoderCost.of(tiny)
    linear = 2 * 2 * shape.seq_len * cost.frozen_macs
    assert sum(v for k, v in counts.items() if k in ("aten.mm", "aten.addmm", "aten.bmm")) \
        == 2 * linear
    attention = decoder_flops(cost, batch=2, seq_len=shape.seq_len, past_len=shape.past_len,
                              backward=False) - linear
    attn_fwd = [v for k, v in counts.items() if "attention" in k and "backward" not in k]
    if attn_fwd:  # a fused attention kernel (not decomposed into bmm)
        assert attn_fwd == [attention]
    assert decoder_flops(cost, batch=2, seq_len=shape.seq_len, past_len=shape.past_len) \
        == 2 * linear + 3 * attention


def test_throughput_record():
    rec = throughput_record(6e9, 2.0, 3)
    assert rec == {"train_seconds": 2.0, "model_flops": 6e9, "achieved_gflops": 3.0,
                   "timed_steps": 3}
    assert throughput_record(0.0, 0.0, 0)["achieved_gflops"] is None
