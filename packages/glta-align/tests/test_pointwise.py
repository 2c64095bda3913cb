"""glta_align.pointwise: compiled RMSNorm / SiLU x up / rotary in the LLM's training passes."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch._dynamo
from torch import nn

from glta_align import pointwise
from glta_align.llm import GROUPED, FrozenLLM, LLMError, load_llm, tiny_llm


@pytest.fixture
def tiny_bf16(tokenizer):
    """A frozen random Llama (hidden 64, 2 layers, 4 heads, 2 kv heads) in bf16, training
    with grouped eager attention (as bf16 does on the CPU: ``attention_rule``)."""
    llm = tiny_llm(tokenizer, hidden_size=64, num_layers=2, seed=0, dtype=torch.bfloat16)
    llm.train_attention = GROUPED
    return llm


def _installed(llm: FrozenLLM) -> tuple[FrozenLLM, dict[str, int]]:
    """A deep copy of ``llm`` with the compiled parts installed (skips without a compiler)."""
    twin = copy.deepcopy(llm)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        counts = pointwise.install(twin.model)
    if not any(counts.values()):
        pytest.skip(f"torch.compile unavailable here: {[str(w.message) for w in caught]}")
    twin.pointwise = True
    return twin, counts


def _fwd_bwd(llm: FrozenLLM, x: torch.Tensor, grad: bool = True):
    """Last hidden states (B, T, H) and the input gradient (B, T, H), through the scope."""
    xe = x.clone().requires_grad_(grad)
    with torch.set_grad_enabled(grad), llm.attention_scope():
        out = llm.backbone(inputs_embeds=xe).last_hidden_state
    if grad:
        out[:, -3:].float().sum().backward()
    return out.detach().float(), None if xe.grad is None else xe.grad.float()


def _counting(monkeypatch) -> dict[str, int]:
    """Count calls of each compiled kernel (the dict the installed modules read)."""
    fns, calls = pointwise.kernels(), {}
    for name, fn in list(fns.items()):
        calls[name] = 0

        def wrapped(*a, _fn=fn, _name=name):
            calls[_name] += 1
            return _fn(*a)

        monkeypatch.setitem(fns, name, wrapped)
    return calls


def test_install_counts_and_keeps_parameters(tiny_bf16):
    twin, counts = _installed(tiny_bf16)
    # 2 layers x 2 norms + the final norm; 2 MLPs; one modelling module's rotary; 2 layers
    assert counts == {"rms_norm": 5, "gated_mlp": 2, "rotary": 1, "decoder_layer": 2}
    assert twin.model.state_dict().keys() == tiny_bf16.model.state_dict().keys()
    from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

    norms = [m for m in twin.model.modules() if isinstance(m, LlamaRMSNorm)]
    assert len(norms) == 5 and all(type(m) is not LlamaRMSNorm for m in norms)
    assert sum(isinstance(m, LlamaMLP) for m in twin.model.modules()) == 2
    assert pointwise.install(twin.model) == counts  # a second install changes nothing


def test_compiled_training_pass_matches_eager(tiny_bf16, monkeypatch):
    twin, _ = _installed(tiny_bf16)
    calls = _counting(monkeypatch)
    x = torch.randn(3, 7, 64, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    h_ref, g_ref = _fwd_bwd(tiny_bf16, x)
    h, g = _fwd_bwd(twin, x)
    # both layers as two compiled regions each; the final norm on its own
    assert calls == {"rms_norm": 1, "silu_mul": 0, "rotary": 0, "layer_in": 2, "layer_out": 2}
    # the same math; only bf16 rounding of the intermediates differs
    torch.testing.assert_close(h, h_ref, rtol=0.05, atol=0.05)
    cos = torch.nn.functional.cosine_similarity(g.flatten(), g_ref.flatten(), dim=0)
    assert cos > 0.99


def test_passes_without_gradients_or_outside_the_scope_run_eager(tiny_bf16, monkeypatch):
    twin, _ = _installed(tiny_bf16)
    calls = _counting(monkeypatch)
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    h, _ = _fwd_bwd(twin, x, grad=False)  # generation and ranking: no gradients
    h_ref, _ = _fwd_bwd(tiny_bf16, x, grad=False)
    torch.testing.assert_close(h, h_ref, rtol=0, atol=0)  # bitwise: the eager code
    out = twin.backbone(inputs_embeds=x.clone().requires_grad_()).last_hidden_state
    out.float().sum().backward()  # gradients, but outside attention_scope
    off = copy.copy(twin)
    off.pointwise = False  # the scope of an LLM without the compiled parts
    _fwd_bwd(off, x)
    assert set(calls.values()) == {0}


def test_one_graph_per_kernel_for_every_layer_and_length(tiny_bf16):
    """After install's warm-up no batch shape compiles again (a size of 1 too: dynamo would
    specialise it into a graph of its own, seconds of compiling mid-stage; such calls run
    eager), and past dynamo's recompile limit the kernels would silently run as eager
    Python."""
    torch._dynamo.reset()  # what install compiles, not what earlier tests left cached
    twin, _ = _installed(tiny_bf16)
    with torch._dynamo.config.patch(recompile_limit=1, fail_on_recompile_limit_hit=True):
        for b, t in ((2, 5), (4, 9), (3, 17), (1, 6), (2, 1), (1, 1)):
            x = torch.randn(b, t, 64).to(torch.bfloat16)
            h, _ = _fwd_bwd(twin, x)
            torch.testing.assert_close(h, _fwd_bwd(tiny_bf16, x)[0], rtol=0.05, atol=0.05)


def _with_prefix(llm: FrozenLLM, x: torch.Tensor, prefix: torch.Tensor):
    """Like :func:`_fwd_bwd` behind a cache of ``prefix`` (P, H) computed without gradient
    (stage 3's instruction prefix and profile text): (B, T, H) hidden states and gradient."""
    from transformers import DynamicCache

    b, t, p = x.shape[0], x.shape[1], prefix.shape[0]
    with torch.no_grad():
        cache = DynamicCache()
        llm.backbone(inputs_embeds=prefix[None], use_cache=True, cache=cache)
    cache = DynamicCache(ddp_cache_data=[(layer.keys.expand(b, -1, -1, -1),
                                          layer.values.expand(b, -1, -1, -1))
                                         for layer in cache.layers])
    xe = x.clone().requires_grad_()
    mask = torch.ones(b, p + t, dtype=torch.long)
    pos = (torch.arange(t) + p)[None].expand(b, -1)
    with llm.attention_scope():
        out = llm.backbone(inputs_embeds=xe, attention_mask=mask, position_ids=pos,
                           use_cache=True, cache=cache).last_hidden_state
    out[:, -3:].float().sum().backward()
    return out.detach().float(), xe.grad.float()


def test_layers_behind_a_cache_match_eager_without_recompiling(tiny_bf16, monkeypatch):
    """Stage 3's pass: the trained tokens attend to a cached prefix. The regions run, match
    the eager layer, and no prefix or batch length compiles a graph after install."""
    torch._dynamo.reset()  # what install compiles, not what earlier tests left cached
    twin, _ = _installed(tiny_bf16)
    calls = _counting(monkeypatch)
    gen = torch.Generator().manual_seed(3)
    with torch._dynamo.config.patch(recompile_limit=1, fail_on_recompile_limit_hit=True):
        for b, t, p in ((3, 6, 9), (2, 4, 13), (4, 9, 5)):
            x = torch.randn(b, t, 64, generator=gen).to(torch.bfloat16)
            prefix = torch.randn(p, 64, generator=gen).to(torch.bfloat16)
            h, g = _with_prefix(twin, x, prefix)
            h_ref, g_ref = _with_prefix(tiny_bf16, x, prefix)
            torch.testing.assert_close(h, h_ref, rtol=0.05, atol=0.05)
            cos = torch.nn.functional.cosine_similarity(g.flatten(), g_ref.flatten(), dim=0)
            assert cos > 0.99
    assert calls["layer_in"] == calls["layer_out"] == 2 * 3


def test_layers_with_adapted_linears_run_eager(tiny_bf16, monkeypatch):
    """A layer whose linear layers were replaced after install (a LoRA adapter injected,
    int8) runs transformers' code; the other layers keep their regions."""
    twin, _ = _installed(tiny_bf16)
    calls = _counting(monkeypatch)

    class Adapted(nn.Linear):
        pass

    assert twin.compiled_layers == 2
    attn = twin.backbone.layers[0].self_attn
    attn.q_proj.__class__ = Adapted
    assert twin.compiled_layers == 1  # what report.md says the stage ran
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    h, _ = _fwd_bwd(twin, x)
    assert calls["layer_in"] == calls["layer_out"] == 1
    torch.testing.assert_close(h, _fwd_bwd(tiny_bf16, x)[0], rtol=0.05, atol=0.05)


def test_layer_in_and_layer_out_compute_the_llama_layer(tiny_bf16):
    """The eager regions with a cache between them are the decoder layer's forward."""
    from glta_align.llm import grouped_eager_attention, register_grouped_attention

    register_grouped_attention()
    layer = tiny_bf16.backbone.layers[1]
    x, (cos, sin), mask, cache = pointwise._layer_inputs(layer, 3, 4, 5)
    _, _, _, cache_ref = pointwise._layer_inputs(layer, 3, 4, 5)
    q, k, v = pointwise.layer_in(layer, x, cos, sin)
    assert q.shape == (3, 4, 4, 16) and k.shape == v.shape == (3, 2, 4, 16)
    k, v = cache.update(k, v, layer.self_attn.layer_idx)
    out = pointwise.layer_out(layer, grouped_eager_attention, q, k, v, mask, x)
    config = layer.self_attn.config
    before, config._attn_implementation = config._attn_implementation, GROUPED
    try:
        ref = layer(x, attention_mask=mask, cache=cache_ref, position_embeddings=(cos, sin))
    finally:
        config._attn_implementation = before
    assert out.shape == (3, 4, 64)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_layers_env_switch_keeps_the_element_wise_kernels_alone(tiny_bf16, monkeypatch):
    monkeypatch.setenv("GLTA_POINTWISE_LAYERS", "0")
    twin, counts = _installed(tiny_bf16)
    assert counts == {"rms_norm": 5, "gated_mlp": 2, "rotary": 1, "decoder_layer": 0}
    calls = _counting(monkeypatch)
    _fwd_bwd(twin, torch.randn(3, 7, 64).to(torch.bfloat16))
    assert calls == {"rms_norm": 5, "silu_mul": 2, "rotary": 2, "layer_in": 0, "layer_out": 0}


def test_a_layer_that_fails_to_compile_keeps_the_element_wise_kernels(tiny_bf16, monkeypatch):
    twin = copy.deepcopy(tiny_bf16)

    def broken(*_a, **_k):
        raise RuntimeError("an op inductor lacks")

    monkeypatch.setattr(pointwise, "_warm_layer", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        counts = pointwise.install(twin.model)
    if not counts["rms_norm"]:
        pytest.skip(f"torch.compile unavailable here: {[str(w.message) for w in caught]}")
    assert counts == {"rms_norm": 5, "gated_mlp": 2, "rotary": 1, "decoder_layer": 0}
    assert any("compiling LlamaDecoderLayer failed" in str(w.message) for w in caught)


def test_failed_compile_leaves_the_model_eager(tiny_bf16, monkeypatch):
    twin = copy.deepcopy(tiny_bf16)

    def broken(*_a, **_k):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(pointwise, "_warm", broken)
    with pytest.warns(RuntimeWarning, match="pointwise: torch.compile unavailable.*compiler"):
        counts = pointwise.install(twin.model)
    assert counts == {"rms_norm": 0, "gated_mlp": 0, "rotary": 0, "decoder_layer": 0}
    assert [type(m) for m in twin.model.modules()] == [type(m) for m in
                                                        tiny_bf16.model.modules()]


def test_modules_computing_something_else_are_left_alone():
    class GemmaLikeRMSNorm(nn.Module):  # (1 + w) scaling: not Llama's norm
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(6), requires_grad=False)
            self.variance_epsilon = 1e-6

        def forward(self, x):
            h = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)
            return (h * (1 + self.weight)).to(x.dtype)

    class GeluMLP(nn.Module):  # a gated MLP with another activation
        def __init__(self):
            super().__init__()
            self.gate_proj, self.up_proj = nn.Linear(6, 8), nn.Linear(6, 8)
            self.down_proj, self.act_fn = nn.Linear(8, 6), nn.GELU()

        def forward(self, x):
            return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))

    model = nn.Sequential(GemmaLikeRMSNorm(), GeluMLP())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        counts = pointwise.install(model, dtype=torch.float32)
    failed = [str(w.message) for w in caught if str(w.message).startswith("pointwise:")]
    if failed:  # nothing was checked: the model stayed eager because compiling failed
        pytest.skip(f"torch.compile unavailable here: {failed}")
    assert counts == {"rms_norm": 0, "gated_mlp": 0, "rotary": 0, "decoder_layer": 0}
    assert type(model[0]) is GemmaLikeRMSNorm and type(model[1]) is GeluMLP


def test_resolve(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert pointwise.resolve("auto", cpu, "bfloat16")
    assert not pointwise.resolve("auto", cpu, "float32")
    assert not pointwise.resolve("auto", cpu, "int8")
    assert not pointwise.resolve("auto", cuda, "bfloat16")
    assert pointwise.resolve("compiled", cpu, "float32")
    assert not pointwise.resolve("eager", cpu, "bfloat16")
    monkeypatch.setenv("GLTA_POINTWISE_COMPILE", "0")
    assert not pointwise.resolve("auto", cpu, "bfloat16")
    with pytest.raises(ValueError, match=r"pointwise must be one of.*'fast'"):
        pointwise.resolve("fast", cpu, "bfloat16")


def test_scope_turns_the_kernels_on_only_with_gradients(tiny_bf16):
    llm = copy.copy(tiny_bf16)
    llm.pointwise = True
    with llm.attention_scope():
        assert pointwise._use()
    with torch.no_grad(), llm.attention_scope():
        assert not pointwise._use()
    assert not pointwise._use()


def test_load_llm_and_configs_reject_a_bad_pointwise(tiny_dir):
    with pytest.raises(LLMError, match=r"pointwise must be one of.*'fast'"):
        load_llm(str(tiny_dir), pointwise="fast")
    from glta_align.config import AlignConfigError, UserItemConfig

    with pytest.raises(AlignConfigError, match="pointwise = 'fast'"):
        UserItemConfig(pointwise="fast")
    eager = load_llm(str(tiny_dir), dtype="bfloat16", pointwise="eager")
    assert not eager.pointwise and eager.compiled_layers == 0


def test_load_llm_counts_the_compiled_layers(tiny_dir):
    llm = load_llm(str(tiny_dir), dtype="bfloat16", pointwise="compiled",
                   attention="eager_grouped")
    if not llm.pointwise:
        pytest.skip("torch.compile unavailable here")
    assert llm.compiled_layers == 2  # the tiny Llama's two layers
    assert all(type(m)._glta_kind == "decoder_layer" for m in llm.backbone.layers)
    sdpa = copy.copy(llm)
    sdpa.train_attention = "sdpa"  # the regions are built for grouped eager attention only
    assert sdpa.compiled_layers == 0
