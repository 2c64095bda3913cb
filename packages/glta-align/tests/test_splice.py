import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from glta_align.splice import (
    SoftPromptRunner,
    SoftSequence,
    _cache_kwarg,
    _output_cache,
    bucket_batches,
)


def _seqs():
    a = SoftSequence().add_text([100, 101, 102]).add_soft([0, 1]).add_text([7]).add_soft(
        [2, 2], read=True)
    b = SoftSequence().add_soft([1]).add_text([55]).add_soft([2, 2], read=True)
    return [a, b]


def _hand_built(llm, prefix, seq, table):
    """Reference: the unpadded forward of prefix + sample with a hand-built inputs_embeds."""
    ids = torch.tensor([prefix + seq.ids])
    emb = llm.embed(ids).clone()
    for j, row in enumerate(seq.soft):
        if row >= 0:
            emb[0, len(prefix) + j] = table[row]
    out = llm.backbone(inputs_embeds=emb).last_hidden_state
    return out[0, [len(prefix) + r for r in seq.read]]


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("reuse_prefix", [True, False])
def test_spliced_forward_matches_hand_built(tiny, padding_side, reuse_prefix):
    torch.manual_seed(0)
    prefix = [1, 2, 3, 4, 5]
    table = torch.randn(5, tiny.hidden_size)
    seqs = _seqs()
    runner = SoftPromptRunner(tiny, prefix, reuse_prefix=reuse_prefix, padding_side=padding_side)
    got = runner.hidden_states(seqs, table)
    assert got.shape == (2, 2, tiny.hidden_size)
    for b, s in enumerate(seqs):
        want = _hand_built(tiny, prefix, s, table)
        torch.testing.assert_close(got[b], want, atol=1e-5, rtol=1e-4)
    # kept keys/values: extend() appends a soft token per row, as if the sequences were longer
    with torch.no_grad():
        first = runner.hidden_states(_seqs(), table, keep_cache=True)
        steps = [runner.extend(table[[3, 4]]), runner.extend(table[[4, 3]])]
    torch.testing.assert_close(first, got.detach())
    for b, s in enumerate(_seqs()):  # (rows of different lengths: padding in between)
        longer = s.add_soft([3 if b == 0 else 4], read=True).add_soft([4 if b == 0 else 3],
                                                                     read=True)
        want = _hand_built(tiny, prefix, longer, table)
        torch.testing.assert_close(first[b], want[:2], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(steps[0][b], want[2], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(steps[1][b], want[3], atol=1e-5, rtol=1e-4)
    runner.release()
    with pytest.raises(RuntimeError, match="extend"):
        runner.extend(table[[0, 1]])
    with pytest.raises(ValueError, match="keep_cache"):  # a batch that does not end reading
        runner.hidden_states([SoftSequence().add_soft([0], read=True).add_text([9])], table,
                             keep_cache=True)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_padding_to_a_multiple_changes_nothing(tiny, padding_side):
    # the compiled path pads every batch to a multiple of 16 tokens: outputs and gradients
    # at the real positions stay those of the unpadded forward
    torch.manual_seed(0)
    table = torch.randn(3, tiny.hidden_size, requires_grad=True)
    plain = SoftPromptRunner(tiny, [1, 2, 3], padding_side=padding_side)
    padded = SoftPromptRunner(tiny, [1, 2, 3], padding_side=padding_side, pad_multiple=16)
    want = plain.hidden_states(_seqs(), table)
    (gw,) = torch.autograd.grad(want.sum(), table)
    got = padded.hidden_states(_seqs(), table)
    (gg,) = torch.autograd.grad(got.sum(), table)
    assert padded.last_shape.seq_len == 16 and plain.last_shape.seq_len == 8
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gg, gw, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="pad_multiple"):
        SoftPromptRunner(tiny, [1], pad_multiple=0)


@pytest.mark.slow
def test_compiled_runner_matches_eager(tiny):
    torch.manual_seed(0)
    table = torch.randn(3, tiny.hidden_size, requires_grad=True)
    eager = SoftPromptRunner(tiny, [1, 2, 3])
    compiled = SoftPromptRunner(tiny, [1, 2, 3], compile=True)
    assert compiled.pad_multiple == 16
    for _ in range(2):  # the second call reuses the compiled graph
        want = eager.hidden_states(_seqs(), table)
        (gw,) = torch.autograd.grad(want.sum(), table)
        got = compiled.hidden_states(_seqs(), table)
        (gg,) = torch.autograd.grad(got.sum(), table)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(gg, gw, atol=1e-4, rtol=1e-3)
    with torch.no_grad():  # inference (another graph) agrees too
        torch.testing.assert_close(compiled.hidden_states(_seqs(), table),
                                   eager.hidden_states(_seqs(), table), atol=1e-4, rtol=1e-3)


def test_compile_failure_warns_and_runs_eagerly(tiny, monkeypatch):
    def broken(model, **kwargs):
        def fail(**kw):
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")
        return fail

    monkeypatch.setattr(torch, "compile", broken)
    table = torch.randn(3, tiny.hidden_size)
    runner = SoftPromptRunner(tiny, [1, 2, 3], compile=True)
    with pytest.warns(RuntimeWarning, match="torch.compile of the LLM failed.*C\\+\\+"):
        got = runner.hidden_states(_seqs(), table)
    want = SoftPromptRunner(tiny, [1, 2, 3]).hidden_states(_seqs(), table)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    with warnings.catch_warnings():  # eager from then on, without warning again
        warnings.simplefilter("error")
        runner.hidden_states(_seqs(), table)


def test_gradient_reaches_soft_table_only(tiny):
    table = torch.randn(3, tiny.hidden_size, requires_grad=True)
    runner = SoftPromptRunner(tiny, [1, 2, 3])
    runner.hidden_states(_seqs(), table).sum().backward()
    assert table.grad is not None and table.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny.model.parameters())
    # the second call reuses the cached prefix and gives the same result
    again = runner.hidden_states(_seqs(), table.detach())
    torch.testing.assert_close(again, runner.hidden_states(_seqs(), table.detach()))


def test_soft_table_gradient_repeats_bit_for_bit_with_two_threads(tiny):
    # 32 samples x 64 soft positions drawn from 40 rows: enough repeated rows for torch to
    # parallelise their gradient sum (plain advanced indexing made it vary in the last bits)
    gen = torch.Generator().manual_seed(0)
    rows = torch.randint(0, 40, (32, 64), generator=gen).tolist()
    seqs = [SoftSequence().add_text([100, 101]).add_soft(r, read=False).add_soft([0], read=True)
            for r in rows]
    runner = SoftPromptRunner(tiny, [1, 2, 3])
    weights = torch.randn(32, 1, tiny.hidden_size, generator=gen)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(4):
            table = torch.randn(40, tiny.hidden_size, generator=torch.Generator().manual_seed(1))
            table.requires_grad_()
            (runner.hidden_states(seqs, table) * weights).sum().backward()
            grads.append(table.grad)
    finally:
        torch.set_num_threads(old)
    assert all(torch.equal(grads[0], g) for g in grads[1:])


def test_bad_inputs(tiny):
    runner = SoftPromptRunner(tiny, [1])
    with pytest.raises(ValueError, match="same number"):
        runner.hidden_states([SoftSequence().add_text([3]).add_soft([0], read=True),
                              SoftSequence().add_text([3])], torch.zeros(1, 64))
    with pytest.raises(ValueError, match="out of range"):
        runner.hidden_states([SoftSequence().add_soft([5], read=True)], torch.zeros(1, 64))
    with pytest.raises(ValueError, match="padding_side"):
        SoftPromptRunner(tiny, [1], padding_side="middle")


def test_bucket_batches_cover_all_and_group_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 100, size=103)
    batches = bucket_batches(lengths, 8, np.random.default_rng(1), window=100)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(103))
    spread = np.mean([np.ptp(lengths[b]) for b in batches if len(b) > 1])
    assert spread < np.ptp(lengths) / 4
    again = bucket_batches(lengths, 8, np.random.default_rng(1), window=100)
    assert again == batches


def test_cache_argument_follows_the_transformers_release(tiny):
    """transformers 5.17 (the GPU image's) names the cache past_key_values, 5.24 cache."""

    class Old(torch.nn.Module):
        def forward(self, inputs_embeds=None, past_key_values=None, use_cache=None):
            return inputs_embeds

    class New(torch.nn.Module):
        def forward(self, inputs_embeds=None, cache=None, use_cache=None):
            return inputs_embeds

    assert _cache_kwarg(Old()) == "past_key_values"
    assert _cache_kwarg(New()) == "cache"
    assert _output_cache(SimpleNamespace(past_key_values="old")) == "old"
    assert _output_cache(SimpleNamespace(cache="new", past_key_values=None)) == "new"
    # the installed release: the name it picks is a real argument, and the cache comes back
    name = _cache_kwarg(tiny.backbone)
    out = tiny.backbone(input_ids=torch.tensor([[1, 2, 3]]), use_cache=True, **{name: None})
    assert len(_output_cache(out).layers) == 2


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("reuse_prefix", [True, False])
def test_eager_attention_matches_sdpa(tokenizer, padding_side, reuse_prefix):
    # `attention="auto"` may pick either kernel: through the runner (cached prefix, padded
    # batch) both give the same hidden states and soft-table gradients
    from glta_align.llm import tiny_llm

    torch.manual_seed(0)
    table = torch.randn(3, 64, requires_grad=True)
    outs = {}
    for impl in ("sdpa", "eager"):
        llm = tiny_llm(tokenizer, hidden_size=64, num_layers=2, seed=0)
        llm.train_attention = impl
        runner = SoftPromptRunner(llm, [1, 2, 3, 4], reuse_prefix=reuse_prefix,
                                  padding_side=padding_side)
        hidden = runner.hidden_states(_seqs(), table)
        outs[impl] = (hidden, *torch.autograd.grad(hidden.square().sum(), table))
    for a, b in zip(outs["eager"], outs["sdpa"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_training_attention_only_inside_gradient_passes(tiny, monkeypatch):
    # eager runs the passes that train; generation and ranking (no grad) keep the model's
    # sdpa (grouped: glta_align.llm.grouped_sdpa_attention), so profile texts never depend
    # on the machine's choice
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from glta_align.llm import SDPA_GROUPED

    seen = []
    for name in ("sdpa", SDPA_GROUPED):
        def spy(*args, _fn=ALL_ATTENTION_FUNCTIONS[name], _name=name, **kwargs):
            seen.append(_name)
            return _fn(*args, **kwargs)

        monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, name, spy)
    tiny.train_attention = "eager"
    runner = SoftPromptRunner(tiny, [1, 2, 3])
    table = torch.randn(3, tiny.hidden_size, requires_grad=True)
    with torch.no_grad():
        runner.hidden_states(_seqs(), table)
    assert set(seen) == {SDPA_GROUPED}
    assert tiny.causal_lm.config._attn_implementation == SDPA_GROUPED
    seen.clear()
    runner.hidden_states(_seqs(), table).sum().backward()
    assert not seen and table.grad is not None  # eager: no sdpa function ran
    assert tiny.causal_lm.config._attn_implementation == SDPA_GROUPED  # restored


def _text_first_seqs():
    # leading text of different lengths (3, 1, 0 tokens) before the first soft token
    a = SoftSequence().add_text([100, 101, 102]).add_soft([0, 1]).add_text([7]).add_soft(
        [2, 2], read=True)
    b = SoftSequence().add_text([55]).add_soft([1]).add_soft([2, 2], read=True)
    c = SoftSequence().add_soft([1]).add_text([9, 10]).add_soft([2, 2], read=True)
    return [a, b, c]


def _one_pass(tiny, prefix, padding_side):
    """The text-first samples' outputs and squared-sum soft-table gradient in one pass (the
    reference the split runners must equal): ``(table, want, grad)``."""
    torch.manual_seed(0)
    table = torch.randn(3, tiny.hidden_size, requires_grad=True)
    plain = SoftPromptRunner(tiny, prefix, padding_side=padding_side)
    want = plain.hidden_states(_text_first_seqs(), table)
    (grad,) = torch.autograd.grad(want.square().sum(), table)
    assert plain.last_shape.head_len == 0 and plain.last_shape.seq_len == 8
    return table, want, grad


def _assert_same_as_one_pass(runner, table, want, grad):
    got = runner.hidden_states(_text_first_seqs(), table)
    (gg,) = torch.autograd.grad(got.square().sum(), table)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gg, grad, atol=1e-5, rtol=1e-4)
    return got


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_text_head_matches_one_pass_and_trains_only_the_rest(tiny, padding_side):
    # the leading text runs without gradient behind the prefix: the outputs and the soft
    # table's gradient are those of the single pass; the FLOP shape records the split
    prefix = [1, 2, 3, 4, 5]
    table, want, gw = _one_pass(tiny, prefix, padding_side)
    split = SoftPromptRunner(tiny, prefix, padding_side=padding_side, text_head=True)
    got = _assert_same_as_one_pass(split, table, want, gw)
    for b, s in enumerate(_text_first_seqs()):
        torch.testing.assert_close(got[b], _hand_built(tiny, prefix, s, table.detach()),
                                   atol=1e-5, rtol=1e-4)
    assert split.last_shape.head_len == 3  # the longest leading text
    assert split.last_shape.seq_len == 5 and split.last_shape.past_len == 5 + 3
    with torch.no_grad():  # ranking: the same split
        torch.testing.assert_close(split.hidden_states(_text_first_seqs(), table), want,
                                   atol=1e-5, rtol=1e-4)


def test_text_head_needs_a_cached_prefix_and_a_frozen_llm(tiny):
    # without a cached prefix (padding would attend to nothing) the runner does one pass;
    # with a trainable LLM (LoRA) the leading text must carry gradients: one pass too
    table = torch.randn(3, tiny.hidden_size)
    no_cache = SoftPromptRunner(tiny, [1, 2, 3], reuse_prefix=False, text_head=True)
    no_cache.hidden_states(_text_first_seqs(), table)
    assert no_cache.last_shape.head_len == 0
    split = SoftPromptRunner(tiny, [1, 2, 3], text_head=True)
    weight = tiny.backbone.layers[0].mlp.up_proj.weight
    weight.requires_grad_(True)
    try:
        split.hidden_states(_text_first_seqs(), table)
        assert split.last_shape.head_len == 0
    finally:
        weight.requires_grad_(False)
    split.hidden_states(_text_first_seqs(), table)
    assert split.last_shape.head_len == 3


def test_int8_llm_keeps_its_texts_in_bf16_half_the_bytes(tokenizer):
    # an int8 LLM's keys/values are fp32 products of int8-rounded activations: kept in bf16
    # they take half the budget; the outputs stay within int8's own rounding of the exact run
    from glta_align.int8 import quantize_linears_int8
    from glta_align.llm import tiny_llm

    llm = tiny_llm(tokenizer, hidden_size=64, num_layers=2, seed=0)
    quantize_linears_int8(llm.model)
    assert llm.precision == "int8"
    prefix = [1, 2, 3, 4, 5]
    torch.manual_seed(0)
    table = torch.randn(3, llm.hidden_size)
    exact = SoftPromptRunner(llm, prefix, text_head=True, head_cache_mb=1,
                             head_cache_dtype=torch.float32)
    half = SoftPromptRunner(llm, prefix, text_head=True, head_cache_mb=1)
    assert half.head_cache_dtype == torch.bfloat16
    with torch.no_grad():
        want = exact.hidden_states(_text_first_seqs(), table)
        for _ in range(2):  # computed and kept, then read back from the cache
            got = half.hidden_states(_text_first_seqs(), table)
            torch.testing.assert_close(got, want, atol=0.05, rtol=0.05)
    kept = [t for rows in half._head_cache.values() for pair in rows for t in pair]
    assert kept and all(t.dtype == torch.bfloat16 for t in kept)
    assert all(t.dtype == torch.float32 for rows in exact._head_cache.values()
               for pair in rows for t in pair)
    assert half._head_cache_bytes * 2 == exact._head_cache_bytes
    assert half.last_shape.head_rows == ()  # the second call computed no text


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_text_head_cache_reuses_each_text_and_changes_nothing(tiny, padding_side):
    # each leading text computed alone once; later calls (other batches, ranking) reuse its
    # keys/values: outputs and gradients those of one pass, FLOPs only for what was computed
    prefix = [1, 2, 3, 4, 5]
    table, want, gw = _one_pass(tiny, prefix, padding_side)
    cached = SoftPromptRunner(tiny, prefix, padding_side=padding_side, text_head=True,
                              head_cache_mb=1)
    for call in range(2):
        _assert_same_as_one_pass(cached, table, want, gw)
        assert cached.last_shape.head_len == 3
        assert cached.last_shape.head_rows == ((3, 1) if call == 0 else ())
    assert len(cached._head_cache) == 2 and cached._head_cache_bytes > 0
    # one sample alone reuses its text too, and matches its batched result
    alone = cached.hidden_states(_text_first_seqs()[1:2], table)
    torch.testing.assert_close(alone[0], want[1], atol=1e-5, rtol=1e-4)
    cached.reset()
    assert not cached._head_cache and cached._head_cache_bytes == 0
    tight = SoftPromptRunner(tiny, prefix, text_head=True, head_cache_mb=1e-9)
    torch.testing.assert_close(tight.hidden_states(_text_first_seqs(), table), want,
                               atol=1e-5, rtol=1e-4)
    assert not tight._head_cache  # over budget: computed, not kept
    assert tight.head_cache_stats() == {"texts": 0, "not_kept": 2, "mib": 0.0,
                                        "budget_mib": 1e-9, "dtype": None}


@pytest.mark.parametrize("precision", ["float32", "int8", "bfloat16"])
def test_batched_heads_match_rows_alone(tokenizer, precision):
    # texts of one length run as one batch with nothing to mask: in int8 (integer products,
    # per-row scales) each row's keys/values are those of the row run alone, bit for bit; in
    # fp32/bf16 the product's kernel may depend on the number of rows: float rounding apart
    from glta_align.int8 import quantize_linears_int8
    from glta_align.llm import tiny_llm

    llm = tiny_llm(tokenizer, hidden_size=64, num_layers=2, seed=0)
    if precision == "int8":
        quantize_linears_int8(llm.model)
    elif precision == "bfloat16":
        llm.model.to(torch.bfloat16)
    runner = SoftPromptRunner(llm, [1, 2, 3, 4, 5], text_head=True, head_cache_mb=1)
    kv = runner._prefix_kv()
    rows = torch.randint(100, 5000, (7, 11), generator=torch.Generator().manual_seed(0)).tolist()
    together = runner._rows_head(rows, kv)
    for b, row in enumerate(rows):
        (alone,) = runner._rows_head([row], kv)
        for pa, pt in zip(alone, together[b], strict=True):
            for a, t in zip(pa, pt, strict=True):
                if precision == "int8":
                    assert torch.equal(a, t), b
                else:
                    torch.testing.assert_close(a, t)
    with pytest.raises(ValueError, match="one length"):
        runner._rows_head([[5, 6], [7]], kv)


def _warm_seqs():
    # leading texts of lengths 3, 3, 1, 3 (one repeated) before the first soft token
    return [SoftSequence().add_text(t).add_soft([1]).add_soft([2, 2], read=True)
            for t in ([100, 101, 102], [200, 201, 202], [55], [100, 101, 102])]


def test_warm_heads_computes_each_text_once_batched_and_changes_nothing(tiny, monkeypatch):
    # warming computes the distinct texts ahead, texts of one length in one call; the calls
    # after it compute no text and give the outputs of a runner without the warm-up, exactly
    from glta_align.testing import record_text_heads

    prefix = [1, 2, 3, 4, 5]
    table = torch.randn(3, tiny.hidden_size, generator=torch.Generator().manual_seed(0))
    cold = SoftPromptRunner(tiny, prefix, text_head=True, head_cache_mb=1)
    with torch.no_grad():
        want = cold.hidden_states(_warm_seqs(), table)
    calls: list[int] = []
    rows_head = SoftPromptRunner._rows_head
    monkeypatch.setattr(SoftPromptRunner, "_rows_head",
                        lambda self, rows, kv: calls.append(len(rows)) or rows_head(self, rows, kv))
    computed = record_text_heads(monkeypatch)
    events = []
    warm = SoftPromptRunner(tiny, prefix, text_head=True, head_cache_mb=1)
    assert warm.warm_heads(_warm_seqs(), progress=events.append) == 3
    assert sorted(calls) == [1, 2]  # the two 3-token texts in one call
    assert sorted(computed) == sorted({(100, 101, 102), (200, 201, 202), (55,)})
    assert [e.kind for e in events] == ["start", "step", "end"]
    assert events[0].stage == "text_cache" and events[-1].step == events[-1].total == 3
    events.clear()
    assert warm.warm_heads(_warm_seqs(), progress=events.append) == 0  # all kept already
    assert not events
    with torch.no_grad():
        got = warm.hidden_states(_warm_seqs(), table)
    assert torch.equal(got, want)
    assert warm.last_shape.head_rows == () and len(computed) == 3
    # nothing to keep: a no-op
    assert SoftPromptRunner(tiny, prefix, text_head=True).warm_heads(_warm_seqs()) == 0
    assert SoftPromptRunner(tiny, prefix, head_cache_mb=1).warm_heads(_warm_seqs()) == 0
    lora_like = SoftPromptRunner(tiny, prefix, text_head=True, head_cache_mb=1)
    assert lora_like.keeps_texts
    weight = tiny.backbone.layers[0].mlp.up_proj.weight
    weight.requires_grad_(True)  # trainable LLM weights (LoRA): texts are recomputed
    try:
        assert not lora_like.keeps_texts and lora_like.warm_heads(_warm_seqs()) == 0
    finally:
        weight.requires_grad_(False)
    # over the budget: computed, noted, not kept
    tight = SoftPromptRunner(tiny, prefix, text_head=True, head_cache_mb=1e-9)
    assert tight.warm_heads(_warm_seqs()) == 3
    assert tight.head_cache_stats()["texts"] == 0 and tight.head_cache_stats()["not_kept"] == 3
