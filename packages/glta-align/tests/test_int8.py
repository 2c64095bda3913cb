"""Int8 frozen linear layers: exact int8 arithmetic, closeness to fp32, gradients, loading."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import glta_align.int8 as int8
import glta_align.llm as llm_mod
from glta_align.int8 import (
    Int8Linear,
    _matmul_2d,
    int8_kernels,
    quantize_linears_int8,
    quantize_rows,
)
from glta_align.llm import LLMError, load_llm


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_quantize_rows_error_bound_and_zero_rows():
    torch.manual_seed(0)
    x = torch.randn(7, 33) * torch.logspace(-3, 3, 7)[:, None]
    x[3] = 0.0
    q, s = quantize_rows(x)
    assert q.dtype == torch.int8 and s.shape == (7, 1)
    assert int(q.abs().max()) == 127
    assert torch.all((q.float() * s - x).abs() <= s / 2 * (1 + 1e-5))
    assert torch.equal(q[3], torch.zeros(33, dtype=torch.int8)) and torch.isfinite(s).all()


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(5, 3, 48), (1, 48), (0, 48)])
def test_int8_linear_is_exact_int8_arithmetic_and_close_to_fp32(shape, bias):
    torch.manual_seed(1)
    lin = nn.Linear(48, 40, bias=bias).requires_grad_(False)
    layer = Int8Linear.from_linear(lin)
    x = torch.randn(*shape, requires_grad=True)
    y = layer(x)
    assert y.shape == (*shape[:-1], 40) and y.dtype == torch.float32
    gy = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, gy)
    if x.numel() == 0:
        assert gx.shape == x.shape
        return
    # exactly the quantised product: rows of x at their own scale, columns of W at theirs
    x2 = x.detach().reshape(-1, 48)
    xq, xs = quantize_rows(x2)
    want = (xq.double() * xs.double()) @ (layer.w_fwd.double() * layer.s_fwd.double())
    if bias:
        want = want + lin.bias.double()
    torch.testing.assert_close(y.detach().reshape(-1, 40).double(), want, rtol=1e-5, atol=1e-5)
    gq, gs = quantize_rows(gy.reshape(-1, 40))
    want_gx = (gq.double() * gs.double()) @ (layer.w_bwd.double() * layer.s_bwd.double())
    torch.testing.assert_close(gx.reshape(-1, 48).double(), want_gx, rtol=1e-5, atol=1e-5)
    # ... and within int8 rounding of the float layer
    assert _rel(y.detach(), lin(x.detach())) < 0.03
    assert _rel(gx, gy @ lin.weight) < 0.03


def test_int8_linear_is_frozen_and_checks_input():
    lin = nn.Linear(8, 4)
    with pytest.raises(ValueError, match="requires grad"):
        Int8Linear.from_linear(lin)
    layer = Int8Linear.from_linear(lin.requires_grad_(False))
    assert not list(layer.parameters())
    dequantized = (layer.w_fwd.float() * layer.s_fwd).t()  # the weight the forward uses
    torch.testing.assert_close(dequantized, lin.weight, rtol=0, atol=0.01)
    with pytest.raises(ValueError, match="9 features, expected 8"):
        layer(torch.randn(2, 9))


def test_compiled_and_eager_kernels_agree():
    matmul, compiled = int8_kernels()
    if not compiled:
        pytest.skip("torch.compile unavailable here: the eager kernels are the ones in use")
    torch.manual_seed(2)
    for rows in (37, 1, 300):  # one compiled graph for every row count (dynamic shapes)
        x = torch.randn(rows, 29)
        wq, ws = quantize_rows(torch.randn(11, 29))
        got = matmul(x, wq.t().contiguous(), ws.t().contiguous())
        want = _matmul_2d(x, wq.t().contiguous(), ws.t().contiguous())
        # x/s vs x*(1/s) may round an entry to the neighbouring integer: a few scale units
        torch.testing.assert_close(got, want, rtol=0.02, atol=0.05)


def test_views_and_grad_inputs_share_one_compiled_graph():
    """Inputs that are views of differently shaped bases (q/k/v splits, transposed attention
    outputs), with and without requires_grad, must not each compile a graph of their own:
    past dynamo's recompile limit the rest would run as eager Python."""
    if not int8_kernels()[1]:
        pytest.skip("torch.compile unavailable here: nothing is compiled")
    import torch._dynamo

    torch._dynamo.reset()
    int8.int8_kernels.cache_clear()
    torch.manual_seed(3)
    layer = Int8Linear(torch.randn(13, 24))
    big = torch.randn(6, 5, 2, 24)
    leaf = torch.randn(5, 2, 24, requires_grad=True)
    inputs = [
        torch.randn(4, 24),                                   # plain
        torch.randn(3, 7, 24),                                # batch x length
        torch.randn(2, 9, 48)[..., 24:],                      # a column split (q/k/v)
        big[1:4].reshape(3, 10, 24),                          # a row slice of a 4-d base
        torch.randn(2, 24, 5).transpose(1, 2),                # transposed (attention out)
        big.transpose(0, 1)[2],                               # a strided view
        torch.randn(8, 24, requires_grad=True),               # training input
        leaf[1:],                                             # training input, a view
    ]
    try:
        with torch._dynamo.config.patch(recompile_limit=3, fail_on_recompile_limit_hit=True):
            for x in inputs:
                y = layer(x)
                want = _matmul_2d(x.reshape(-1, 24).detach(), layer.w_fwd, layer.s_fwd)
                torch.testing.assert_close(y.reshape(-1, 13), want, rtol=0.02, atol=0.05)
                if x.requires_grad:
                    (gx,) = torch.autograd.grad(y.sum(), x)
                    assert gx.shape == x.shape and bool(gx.abs().sum() > 0)
    finally:
        torch._dynamo.reset()
        int8.int8_kernels.cache_clear()


def test_quantized_tiny_llm_tracks_fp32_and_repeats(tiny):
    ref = tiny.backbone
    model = copy.deepcopy(tiny.causal_lm)
    n = quantize_linears_int8(model)
    assert n == 2 * 7  # q, k, v, o, gate, up, down per layer; lm_head left in float
    assert isinstance(model.lm_head, nn.Linear)
    torch.manual_seed(3)
    x = torch.randn(3, 12, 64)

    def run(m):
        xe = x.clone().requires_grad_()
        h = m(inputs_embeds=xe).last_hidden_state
        h[:, -2:].sum().backward()
        return h.detach(), xe.grad

    h_ref, g_ref = run(ref)
    h8, g8 = run(model.model)
    assert F.cosine_similarity(h8, h_ref, dim=-1).min() > 0.99
    assert F.cosine_similarity(g8.flatten(), g_ref.flatten(), dim=0) > 0.95
    h8b, g8b = run(model.model)
    assert torch.equal(h8, h8b) and torch.equal(g8, g8b)


def test_load_llm_int8(tiny, tiny_dir, monkeypatch):
    monkeypatch.setenv("GLTA_INT8_ACTIVATIONS", "float32")
    llm = load_llm(tiny_dir, dtype="int8", device="cpu")
    layers = [m for m in llm.model.modules() if isinstance(m, Int8Linear)]
    assert len(layers) == 14 and llm.dtype == torch.float32 and llm.precision == "int8"
    assert tiny.precision == "float32"
    ids = torch.tensor([[1, 2, 3, 4]])
    h = llm.backbone(input_ids=ids).last_hidden_state
    assert F.cosine_similarity(h, tiny.backbone(input_ids=ids).last_hidden_state, -1).min() > 0.99
    # text generation (profile/prediction text) runs through the int8 layers too
    out = llm.causal_lm.generate(input_ids=ids, max_new_tokens=3, do_sample=False,
                                 pad_token_id=llm.tokenizer.pad_token_id)
    assert out.shape == (1, 7)
    with pytest.raises(LLMError, match="LoRA"):
        load_llm(tiny_dir, dtype="int8", lora={"r": 2, "alpha": 4})
    with pytest.raises(LLMError, match="CPU only"):
        load_llm(tiny_dir, dtype="int8", device="cuda")


class _Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(16, 12, bias=True)
        self.k_proj = nn.Linear(16, 4, bias=False)
        self.v_proj = nn.Linear(16, 4, bias=False)
        self.o_proj = nn.Linear(12, 16)


def test_shared_input_layers_run_one_product(monkeypatch):
    torch.manual_seed(4)
    attn = _Attn().requires_grad_(False)
    ref = [attn.q_proj, attn.k_proj, attn.v_proj]
    assert quantize_linears_int8(attn) == 4
    calls = []
    real = int8._int8_matmul
    monkeypatch.setattr(int8, "_int8_matmul", lambda *a: calls.append(a[0].shape) or real(*a))
    x = torch.randn(2, 5, 16, requires_grad=True)
    outs = [attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)]
    assert len(calls) == 1 and calls[0] == (2, 5, 16)  # one product for q, k and v
    for out, lin in zip(outs, ref, strict=True):
        # forward scales are per output channel: identical to quantising the layer alone
        torch.testing.assert_close(out, Int8Linear.from_linear(lin)(x), rtol=1e-6, atol=1e-6)
    calls.clear()
    gys = [torch.randn_like(o) for o in outs]
    (gx,) = torch.autograd.grad(outs, x, gys)
    assert calls == [(2, 5, 20)]  # one input-gradient product for the three
    want = sum(g @ lin.weight for g, lin in zip(gys, ref, strict=True))
    assert _rel(gx, want) < 0.03
    # a new input (or the same one changed in place) starts a new product
    y = torch.randn(3, 16)
    torch.testing.assert_close(attn.k_proj(y), Int8Linear.from_linear(ref[1])(y))
    z = torch.randn(3, 16)
    first = attn.v_proj(z)
    z.mul_(2)
    torch.testing.assert_close(attn.v_proj(z), 2 * first, rtol=1e-5, atol=1e-5)
    # another thread's calls in the middle of a round do not disturb it
    w = torch.randn(4, 16)
    attn.q_proj(w)
    calls.clear()
    other = threading.Thread(target=lambda: [attn.q_proj(y), attn.k_proj(y), attn.v_proj(y)])
    other.start()
    other.join()
    torch.testing.assert_close(attn.k_proj(w), Int8Linear.from_linear(ref[1])(w))
    attn.v_proj(w)
    assert len(calls) == 2  # the other thread's product and the reference; none for w's k, v
    # layers without siblings stay alone; the members share one int8 weight (views)
    assert attn.o_proj._group is None
    assert attn.q_proj.w_fwd.untyped_storage().data_ptr() == \
        attn.v_proj.w_fwd.untyped_storage().data_ptr()


def test_auto_dtype_picks_int8_only_where_it_is_the_fast_path(monkeypatch, tiny_dir):
    cpu = torch.device("cpu")
    monkeypatch.setenv("GLTA_DTYPE_PROBE", "0")  # the flag rule (the probe's fallback)
    monkeypatch.setattr(llm_mod, "_bf16_faster_on_cpu", lambda: False)
    monkeypatch.setattr(llm_mod, "_int8_faster_on_cpu", lambda: True)
    assert load_llm(tiny_dir, device="cpu").precision == "int8"  # VNNI, no AMX
    assert load_llm(tiny_dir, dtype="float32", device="cpu").precision == "float32"
    assert llm_mod._auto_int8("auto", cpu, None)
    assert not llm_mod._auto_int8("auto", cpu, {"r": 2})  # LoRA needs float weights
    assert not llm_mod._auto_int8("auto", torch.device("cuda"), None)
    monkeypatch.setattr(llm_mod, "_bf16_faster_on_cpu", lambda: True)  # AMX: bf16 instead
    assert not llm_mod._auto_int8("auto", cpu, None)
    monkeypatch.setattr(llm_mod, "_bf16_faster_on_cpu", lambda: False)
    monkeypatch.setattr(llm_mod, "_int8_faster_on_cpu", lambda: False)  # no VNNI: fp32
    assert load_llm(tiny_dir, device="cpu").precision == "float32"


def test_kernels_fall_back_to_eager_when_compiling_fails(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    int8.int8_kernels.cache_clear()
    monkeypatch.setattr(torch, "compile", broken)
    try:
        with pytest.warns(RuntimeWarning, match="no C.. compiler.*eager"):
            matmul, compiled = int8.int8_kernels()
        assert matmul is _matmul_2d and not compiled
        monkeypatch.setenv("GLTA_INT8_COMPILE", "0")
        int8.int8_kernels.cache_clear()
        assert int8.int8_kernels() == (_matmul_2d, False)
    finally:
        int8.int8_kernels.cache_clear()  # later tests compile again


class _MLP(nn.Module):
    """Llama's gated MLP: down(act(gate(x)) * up(x))."""

    def __init__(self, act: nn.Module | None = None, bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(24, 40, bias=bias)
        self.up_proj = nn.Linear(24, 40, bias=bias)
        self.down_proj = nn.Linear(40, 24, bias=bias)
        self.act_fn = nn.SiLU() if act is None else act

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def _layer_by_layer(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return mlp.down_proj(mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x))


@pytest.mark.parametrize("compile_env", ["1", "0"])
def test_gated_mlp_runs_as_one_block_and_matches_the_layers(monkeypatch, compile_env):
    monkeypatch.setenv("GLTA_INT8_COMPILE", compile_env)
    real_kernel = int8.int8_mlp_kernel
    int8.int8_kernels.cache_clear()
    real_kernel.cache_clear()
    try:
        torch.manual_seed(5)
        block = nn.Sequential(_MLP()).requires_grad_(False)
        fp32 = copy.deepcopy(block[0])
        quantize_linears_int8(block)
        mlp = block[0]
        assert isinstance(mlp, int8.Int8GatedMLP)
        assert set(dict(mlp.named_buffers())) >= {"gate_proj.w_fwd", "down_proj.w_fwd"}
        ran = []
        kernel = int8.int8_mlp_kernel()[0]
        monkeypatch.setattr(int8, "int8_mlp_kernel",
                            lambda: (lambda *a: ran.append(a[0].shape) or kernel(*a), True))
        for shape in [(3, 7, 24), (5, 24), (1, 1, 24), (0, 24)]:
            x = torch.randn(*shape)
            with torch.no_grad():
                y = mlp(x)
                want = _layer_by_layer(mlp, x)
            assert y.shape == want.shape and y.dtype == x.dtype
            # the same arithmetic: equal up to x/s vs x*(1/s) rounding in the compiled graph
            torch.testing.assert_close(y, want, rtol=1e-3, atol=2e-3)
            if x.numel():
                assert _rel(y, fp32(x)) < 0.05
        assert ran == [(21, 24), (5, 24), (1, 24)]  # the fused block, not the layers
        # a gradient to the input: the layers one by one (the autograd Functions)
        x = torch.randn(2, 6, 24, requires_grad=True)
        y = mlp(x)
        assert len(ran) == 3
        (gx,) = torch.autograd.grad(y.sum(), x)
        (gw,) = torch.autograd.grad(fp32(x).sum(), x)
        assert _rel(gx, gw) < 0.05
        with torch.no_grad():  # bf16 activations: the fused block, rounded to bf16 once
            xb = torch.randn(4, 24, dtype=torch.bfloat16)
            yb = mlp(xb)
            assert yb.dtype == torch.bfloat16 and ran[-1] == (4, 24)
            assert _rel(yb.float(), _layer_by_layer(mlp, xb).float()) < 0.02
            assert _rel(yb.float(), fp32(xb.float())) < 0.05
            xh = torch.randn(4, 24, dtype=torch.float16)  # other dtypes: the layers
            assert mlp(xh).dtype == torch.float16 and len(ran) == 4
    finally:
        int8.int8_kernels.cache_clear()
        real_kernel.cache_clear()


def test_only_bias_free_silu_gated_mlps_are_fused():
    for act, bias in [(nn.GELU(), False), (None, True)]:
        block = nn.Sequential(_MLP(act, bias)).requires_grad_(False)
        quantize_linears_int8(block)
        assert not isinstance(block[0], int8.Int8GatedMLP)
        assert isinstance(block[0].down_proj, Int8Linear)
    with pytest.raises(ValueError, match="not a bias-free silu gated MLP"):
        int8.Int8GatedMLP(_MLP().requires_grad_(False))  # float layers


def test_gated_mlp_compiles_one_graph_for_every_row_count():
    if not int8.int8_mlp_kernel()[1]:
        pytest.skip("torch.compile unavailable here: nothing is compiled")
    import torch._dynamo

    torch._dynamo.reset()
    int8.int8_mlp_kernel.cache_clear()
    block = nn.Sequential(_MLP(), _MLP()).requires_grad_(False)
    quantize_linears_int8(block)
    try:
        with torch._dynamo.config.patch(recompile_limit=2, fail_on_recompile_limit_hit=True), \
                torch.no_grad():
            for rows in (64 * 37, 64, 5, 2, 300):  # prefill, decode, ... both layers
                x = torch.randn(rows, 24)
                for mlp in block:
                    torch.testing.assert_close(mlp(x), _layer_by_layer(mlp, x),
                                               rtol=1e-3, atol=2e-3)
                block(torch.randn(3, 9, 48)[..., :24])  # a view of a wider base
    finally:
        torch._dynamo.reset()
        int8.int8_mlp_kernel.cache_clear()


def test_int8_activations_in_bf16(tiny, tiny_dir, monkeypatch):
    # the int8 products' neighbours (norms, embeddings) in bf16: activations, attention and
    # element-wise work in bf16 around the same int8 layers
    monkeypatch.setenv("GLTA_INT8_ACTIVATIONS", "float32")
    ref = load_llm(tiny_dir, dtype="int8", device="cpu")
    monkeypatch.setenv("GLTA_INT8_ACTIVATIONS", "bfloat16")
    llm = load_llm(tiny_dir, dtype="int8", device="cpu")
    assert llm.precision == "int8" and llm.dtype == torch.bfloat16
    assert llm.precision_label == "int8 with bfloat16 activations"
    assert ref.precision_label == "int8 with float32 activations"
    layers = [m for m in llm.model.modules() if isinstance(m, Int8Linear)]
    assert len(layers) == 14 and all(m.s_fwd.dtype == torch.float32 for m in layers)
    # the int8 weights are quantised from the fp32 weights: the same as the fp32 model's
    for a, b in zip(layers, [m for m in ref.model.modules() if isinstance(m, Int8Linear)],
                    strict=True):
        assert torch.equal(a.w_fwd, b.w_fwd) and torch.equal(a.s_fwd, b.s_fwd)
    x = torch.randn(2, 6, 64)

    def run(m):
        xe = x.to(m.dtype).requires_grad_()
        h = m.backbone(inputs_embeds=xe).last_hidden_state
        h[:, -2:].float().sum().backward()
        return h.float(), xe.grad.float()

    h16, g16 = run(llm)
    h32, g32 = run(ref)
    assert h16.dtype == torch.float32 and torch.isfinite(g16).all()
    assert F.cosine_similarity(h16, h32, dim=-1).min() > 0.99
    assert F.cosine_similarity(g16.flatten(), g32.flatten(), dim=0) > 0.95
    out = llm.causal_lm.generate(input_ids=torch.tensor([[1, 2, 3, 4]]), max_new_tokens=3,
                                 do_sample=False, pad_token_id=llm.tokenizer.pad_token_id)
    assert out.shape == (1, 7)


def test_int8_activation_dtype_follows_the_cpu(monkeypatch):
    from glta_align import llm as llm_mod
    from glta_align.llm import LLMError, int8_activation_dtype

    monkeypatch.delenv("GLTA_INT8_ACTIVATIONS", raising=False)
    monkeypatch.setattr(llm_mod, "_cpu_supports", lambda name: name == "_is_avx512_bf16_supported")
    assert int8_activation_dtype() == torch.bfloat16  # AVX512-BF16 (an AMD EPYC Zen 4)
    monkeypatch.setattr(llm_mod, "_cpu_supports", lambda name: name == "_is_amx_tile_supported")
    assert int8_activation_dtype() == torch.bfloat16
    monkeypatch.setattr(llm_mod, "_cpu_supports", lambda name: False)
    assert int8_activation_dtype() == torch.float32  # VNNI only: bf16 would be emulated
    assert int8_activation_dtype("bfloat16") == torch.bfloat16
    monkeypatch.setenv("GLTA_INT8_ACTIVATIONS", "bfloat16")
    assert int8_activation_dtype() == torch.bfloat16
    assert int8_activation_dtype("float32") == torch.float32  # an explicit choice wins
    monkeypatch.setenv("GLTA_INT8_ACTIVATIONS", "fp16")
    with pytest.raises(LLMError, match="GLTA_INT8_ACTIVATIONS"):
        int8_activation_dtype()
    with pytest.raises(LLMError, match="int8 activations"):
        int8_activation_dtype("half")
