"""Compiled element-wise parts and decoder layers of a Llama-style LLM for the passes that train.

In bf16 on the CPU a stage-3 step of SmolLM2 spends about as long in element-wise work
(RMSNorm's fp32 round trip, rotary embedding, SiLU x up, residual adds, the attention's
softmax and mask, each one's backward) as in its matrix products
(``benchmarks/align/profile_stage3.py``): every eager op reads and writes the whole
activation once. :func:`install` swaps, in place, pure functions of tensors for
``torch.compile(dynamic=True)`` versions (one graph each, fused forward and backward, shared
by every layer and every batch shape):

- every Llama decoder layer as two regions around its key/value cache (which stays eager,
  being Python state): :func:`layer_in` (RMSNorm, the q/k/v products, rotary) and
  :func:`layer_out` (grouped eager attention, o_proj, residual, RMSNorm, gated MLP,
  residual), used when training runs grouped eager attention (bf16 on the CPU);
- every RMSNorm: ``w * (x.float() * rsqrt(mean(x.float()**2) + eps)).to(x.dtype)``;
- every gated MLP's ``silu(gate(x)) * up(x)`` (the products stay eager);
- ``apply_rotary_pos_emb`` of the model's modelling module.

The last three serve the calls the regions do not take (the final norm, other attention
kernels, a batch of one, layers whose linear layers were replaced). The math is
transformers' own (checked against the module on a small input when installing: a class
whose output differs is left alone), so only the rounding of bf16 intermediates changes.
The compiled versions run only inside :func:`active` with gradients enabled (the LLM's
training passes, :meth:`glta_align.llm.FrozenLLM.attention_scope`); passes without
gradients (generation, ranking) and other models in the process run the eager code, so
profile texts do not depend on the choice.

The modules keep their parameters and state-dict keys (their class is swapped for a
subclass); the rotary function is replaced by a dispatcher that calls the original outside
:func:`active`.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from glta_align.config import POINTWISE_CHOICES

__all__ = ["POINTWISE_CHOICES", "active", "compiled_layers", "install", "kernels", "layer_in",
           "layer_out", "resolve", "rms_norm", "rotary", "silu_mul"]

_ACTIVE: contextvars.ContextVar[bool] = contextvars.ContextVar("glta_pointwise", default=False)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama's RMSNorm: (..., H), weight (H,) -> (..., H) in ``x``'s dtype (statistics in
    fp32, as transformers computes them)."""
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The gated MLP's activation: ``silu(gate) * up``, both (..., F) -> (..., F)."""
    return F.silu(gate) * up


def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
           sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary position embedding as transformers' ``apply_rotary_pos_emb`` (half-split
    layout, ``unsqueeze_dim=1``): q (B, Hq, T, D), k (B, Hk, T, D), cos/sin (B, T, D) ->
    the rotated (q, k)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    half = q.shape[-1] // 2

    def turn(x: torch.Tensor) -> torch.Tensor:
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    return q * cos + turn(q) * sin, k * cos + turn(k) * sin


def layer_in(layer: nn.Module, x: torch.Tensor, cos: torch.Tensor,
             sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A Llama decoder layer up to its key/value cache: RMSNorm, the q/k/v products and the
    rotary embedding. x (B, T, H), cos/sin (B, T, D) -> q (B, Hq, T, D), k and v
    (B, Hk, T, D)."""
    a, n = layer.self_attn, layer.input_layernorm
    h = rms_norm(x, n.weight, n.variance_epsilon)
    shape = (*x.shape[:-1], -1, a.head_dim)
    q = a.q_proj(h).view(shape).transpose(1, 2)
    k = a.k_proj(h).view(shape).transpose(1, 2)
    v = a.v_proj(h).view(shape).transpose(1, 2)
    return (*rotary(q, k, cos, sin), v)


def layer_out(layer: nn.Module, attend: Callable, q: torch.Tensor, k: torch.Tensor,
              v: torch.Tensor, mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The rest of the layer after its cache: attention (``attend``, transformers'
    interface), o_proj, residual, RMSNorm, gated MLP, residual. q (B, Hq, T, D), k/v
    (B, Hk, S, D) with the cached positions first, mask (B, 1, T, S) additive, x (B, T, H)
    the layer's input -> (B, T, H)."""
    a, n, m = layer.self_attn, layer.post_attention_layernorm, layer.mlp
    o, _ = attend(a, q, k, v, mask, dropout=0.0, scaling=a.scaling)
    s = x + a.o_proj(o.reshape(*x.shape[:-1], -1).contiguous())
    h = rms_norm(s, n.weight, n.variance_epsilon)
    return s + m.down_proj(silu_mul(m.gate_proj(h), m.up_proj(h)))


def _shapes(model: nn.Module, hidden: int) -> dict[str, int]:
    """The warm-up's sizes: the model config's, else hidden from the norm, the rest made up."""
    cfg = getattr(model, "config", None)
    heads = int(getattr(cfg, "num_attention_heads", 2))
    return {"hidden": hidden, "inter": int(getattr(cfg, "intermediate_size", 2 * hidden)),
            "heads": heads, "kv": int(getattr(cfg, "num_key_value_heads", None) or heads),
            "head_dim": int(getattr(cfg, "head_dim", None) or max(2, hidden // heads // 2 * 2))}


def _warm(fns: dict[str, Callable], dtype: torch.dtype, norm_weight: torch.Tensor,
          shapes: dict[str, int]) -> None:
    """Compile each kernel's forward and backward now, on inputs laid out as the model's
    (a frozen ``nn.Parameter`` weight, q/k transposed views of (B, T, heads * D)), so the
    training loop does not recompile and a missing compiler shows up here."""
    with torch.enable_grad(), active():
        x = torch.randn(15, shapes["hidden"], dtype=dtype, requires_grad=True)
        fns["rms_norm"](x, norm_weight, 1e-6).float().sum().backward()
        g = torch.randn(15, shapes["inter"], dtype=dtype, requires_grad=True)
        u = torch.randn(15, shapes["inter"], dtype=dtype, requires_grad=True)
        fns["silu_mul"](g, u).float().sum().backward()
        d = shapes["head_dim"]
        q = torch.randn(2, 5, shapes["heads"] * d, dtype=dtype, requires_grad=True)
        k = torch.randn(2, 5, shapes["kv"] * d, dtype=dtype, requires_grad=True)
        a, b = fns["rotary"](q.view(2, 5, -1, d).transpose(1, 2),
                             k.view(2, 5, -1, d).transpose(1, 2),
                             torch.randn(2, 5, d, dtype=dtype), torch.randn(2, 5, d, dtype=dtype))
        (a.float().sum() + b.float().sum()).backward()


@functools.cache
def kernels() -> dict[str, Callable]:
    """``torch.compile(dynamic=True)`` of :func:`rms_norm`, :func:`silu_mul`, :func:`rotary`,
    :func:`layer_in` and :func:`layer_out`, by name (compiled lazily, on first call)."""
    return {f.__name__: torch.compile(f, dynamic=True)
            for f in (rms_norm, silu_mul, rotary, layer_in, layer_out)}


def resolve(choice: str, device: torch.device, precision: str) -> bool:
    """Whether ``choice`` (one of :data:`POINTWISE_CHOICES`) compiles the element-wise parts
    of a model whose linear layers run in ``precision`` (``FrozenLLM.precision``: "bfloat16",
    "float32", "int8", ...): ``"compiled"`` always, ``"eager"`` never, ``"auto"`` for bf16
    on the CPU (the case measured, ``benchmarks/RESULTS.md``; not int8, whose gated MLP is
    compiled already) unless ``GLTA_POINTWISE_COMPILE=0``."""
    if choice not in POINTWISE_CHOICES:
        raise ValueError(f"pointwise must be one of {POINTWISE_CHOICES}, got {choice!r}")
    if choice != "auto":
        return choice == "compiled"
    if os.environ.get("GLTA_POINTWISE_COMPILE", "1") == "0":
        return False
    return device.type == "cpu" and precision == "bfloat16"


@contextlib.contextmanager
def active(on: bool = True) -> Iterator[None]:
    """Inside, installed modules and rotary dispatchers use the compiled kernels in passes
    that record gradients (``on=False``: the eager code, whatever was installed)."""
    token = _ACTIVE.set(on)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def _use() -> bool:
    return _ACTIVE.get() and torch.is_grad_enabled()


_SUBCLASSES: dict[type, type] = {}


def _subclass(cls: type, forward: Callable, kind: str) -> type:
    # ``_glta_kind`` names what the subclass compiles (transformers wraps the ``forward`` of
    # a decoder layer's subclasses, so the function is not the one given here)
    if cls not in _SUBCLASSES:
        _SUBCLASSES[cls] = type(f"Compiled{cls.__name__}", (cls,), {
            "forward": forward, "_glta_kind": kind, "_glta_base": cls, "__module__": __name__,
            "__doc__": f"{cls.__name__} whose training passes run compiled (glta_align."
                       "pointwise)."})
    return _SUBCLASSES[cls]


# The kernels see rows x features (leading dimensions flattened, a view) and run only with
# at least 2 rows (and rotary with at least 2 sequences of 2 positions): dynamo specialises a
# size of 1 into a graph of its own, and compiling one in the middle of a stage costs seconds.
def _rows(x: torch.Tensor) -> int:
    return x.numel() // x.shape[-1] if x.dim() >= 2 and x.shape[-1] else 0


def _norm_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    rows = _rows(x)
    if rows >= 2 and x.is_contiguous() and _use():
        out = self._glta_kernels["rms_norm"](x.view(rows, x.shape[-1]), self.weight,
                                             self.variance_epsilon)
        return out.view(*x.shape[:-1], out.shape[-1])
    return self._glta_base.forward(self, x)


def _mlp_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if not _use():
        return self._glta_base.forward(self, x)
    gate, up = self.gate_proj(x), self.up_proj(x)
    rows = _rows(gate)
    if rows >= 2 and gate.is_contiguous() and up.is_contiguous():
        h = self._glta_kernels["silu_mul"](gate.view(rows, -1), up.view(rows, -1))
        return self.down_proj(h.view(gate.shape))
    return self.down_proj(silu_mul(gate, up))


def _plain_linears(layer: nn.Module) -> bool:
    """Whether the layer's seven products are plain ``nn.Linear`` (not a LoRA adapter's or
    int8 layers, which the regions would trace into or cannot run)."""
    a, m = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    return all(type(getattr(mod, name, None)) is nn.Linear
               for mod, names in ((a, ("q_proj", "k_proj", "v_proj", "o_proj")),
                                  (m, ("gate_proj", "up_proj", "down_proj")))
               for name in names)


def _regions_apply(self: nn.Module, x: torch.Tensor, mask: Any, position_embeddings: Any,
                   kwargs: dict[str, Any]) -> bool:
    """Whether a decoder-layer call can run as :func:`layer_in` / :func:`layer_out`: a
    training pass, the layer's attention kernel the regions were built for, an additive
    mask, cos/sin per row or shared, at least 2 rows and 2 positions (a size of 1 would compile a
    graph of its own), and plain linear layers (a LoRA adapter injected later runs the
    eager code)."""
    return (_use() and not kwargs and mask is not None and position_embeddings is not None
            and x.dim() == 3 and x.shape[0] >= 2 and x.shape[1] >= 2 and x.is_contiguous()
            and position_embeddings[0].dim() == 3
            and position_embeddings[0].shape[0] in (1, x.shape[0]) and mask.dim() == 4
            and getattr(self.self_attn.config, "_attn_implementation", None)
            == self._glta_attention[0] and _plain_linears(self))


def _layer_forward(self: nn.Module, hidden_states: torch.Tensor,
                   attention_mask: torch.Tensor | None = None,
                   position_ids: torch.Tensor | None = None, cache: Any = None,
                   use_cache: bool | None = False, position_embeddings: Any = None,
                   **kwargs: Any) -> torch.Tensor:
    if not _regions_apply(self, hidden_states, attention_mask, position_embeddings, kwargs):
        return self._glta_base.forward(
            self, hidden_states, attention_mask=attention_mask, position_ids=position_ids,
            cache=cache, use_cache=use_cache, position_embeddings=position_embeddings, **kwargs)
    rows = hidden_states.shape[0]
    pe = tuple(t if t.shape[0] == rows else t.expand(rows, -1, -1).contiguous()
               for t in position_embeddings)  # (1, T, D) without position ids: one graph
    return _regions(self, hidden_states, pe, attention_mask, cache, self._glta_kernels,
                    self._glta_attention[1],
                    {"position_ids": position_ids, "use_cache": use_cache})


def _same(a: torch.Tensor | tuple, b: torch.Tensor | tuple) -> bool:
    a = a if isinstance(a, tuple) else (a,)
    b = b if isinstance(b, tuple) else (b,)
    return len(a) == len(b) and all(
        x.shape == y.shape and torch.allclose(x.float(), y.float(), rtol=1e-4, atol=1e-5)
        for x, y in zip(a, b, strict=True))


@torch.no_grad()
def _is_norm(m: nn.Module) -> bool:
    w, eps = getattr(m, "weight", None), getattr(m, "variance_epsilon", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 1 or not isinstance(eps, float):
        return False
    x = torch.randn(2, 3, w.shape[0], generator=torch.Generator().manual_seed(0)).to(w)
    return _same(m(x), rms_norm(x, w, eps))


@torch.no_grad()
def _is_gated_mlp(m: nn.Module) -> bool:
    parts = [getattr(m, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
    if not all(isinstance(p, nn.Module) for p in parts) or not hasattr(m, "act_fn"):
        return False
    w = getattr(parts[0], "weight", None)
    if not isinstance(w, torch.Tensor) or w.dtype not in (torch.float32, torch.bfloat16,
                                                          torch.float16):
        return False  # int8 layers: their gated MLP is compiled already
    x = torch.randn(2, 3, w.shape[1], generator=torch.Generator().manual_seed(0)).to(w)
    gate, up, down = parts
    return _same(m(x), down(silu_mul(gate(x), up(x))))


def _layer_inputs(layer: nn.Module, rows: int, length: int, past: int,
                  grad: bool = False) -> tuple[Any, ...]:
    """A decoder-layer call's inputs in the layer's dtype: x (rows, length, H) (requiring
    grad if ``grad``), cos/sin (rows, length, D), an additive mask (rows, 1, length,
    past + length) and a cache holding ``past`` random positions (``None`` for 0)."""
    from transformers import DynamicCache

    a = layer.self_attn
    w = a.q_proj.weight
    gen = torch.Generator().manual_seed(0)
    kv_heads = a.k_proj.weight.shape[0] // a.head_dim

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(w.dtype)

    x = rand(rows, length, w.shape[1]).requires_grad_(grad)
    cos, sin = rand(rows, length, a.head_dim), rand(rows, length, a.head_dim)
    mask = torch.zeros(rows, 1, length, past + length, dtype=w.dtype)
    mask[..., past:] = torch.full((length, length), float("-inf"), dtype=w.dtype).triu(1)
    cache = None
    if past:
        cache = DynamicCache()
        cache.update(rand(rows, kv_heads, past, a.head_dim), rand(rows, kv_heads, past,
                                                                   a.head_dim), a.layer_idx)
    return x, (cos, sin), mask, cache


def _regions(layer: nn.Module, x: torch.Tensor, pe: tuple, mask: torch.Tensor, cache: Any,
             fns: dict[str, Callable], attend: Callable,
             cache_kwargs: dict[str, Any] | None = None) -> torch.Tensor:
    """``fns["layer_in"]``, the cache update (eager: Python state; ``cache_kwargs`` as the
    attention module passes them), ``fns["layer_out"]``: x (B, T, H) -> (B, T, H)."""
    q, k, v = fns["layer_in"](layer, x, *pe)
    if cache is not None:
        k, v = cache.update(k, v, layer.self_attn.layer_idx, kwargs=cache_kwargs or {})
    return fns["layer_out"](layer, attend, q, k, v, mask, x)


@torch.no_grad()
def _is_llama_layer(layer: nn.Module, attention: tuple[str, Callable]) -> bool:
    """Whether ``layer`` computes :func:`layer_in` + cache + :func:`layer_out` (checked on a
    small input with a cache, under attention kernel ``attention``)."""
    a, m = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    n1, n2 = (getattr(layer, k, None) for k in ("input_layernorm", "post_attention_layernorm"))
    if n1 is None or n2 is None or not _plain_linears(layer) or not all(
            hasattr(a, k) for k in ("head_dim", "scaling", "layer_idx", "config")):
        return False
    if not (_is_norm(n1) and _is_norm(n2) and _is_gated_mlp(m)):
        return False
    config = a.config
    before = getattr(config, "_attn_implementation", None)
    config._attn_implementation = attention[0]
    eager = {"layer_in": layer_in, "layer_out": layer_out}
    try:
        x, pe, mask, cache = _layer_inputs(layer, 2, 3, 2)
        mine = _regions(layer, x, pe, mask, copy.deepcopy(cache), eager, attention[1])
        ref = type(layer).forward(layer, x, attention_mask=mask, cache=cache,
                                  position_embeddings=pe)
        return _same(ref, mine)
    except Exception:  # another signature or cache protocol: leave the layer alone
        return False
    finally:
        config._attn_implementation = before


def _dispatcher(original: Callable, fns: dict[str, Callable]) -> Callable:
    def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                             sin: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        plain = not args and set(kwargs) <= {"unsqueeze_dim"} and kwargs.get(
            "unsqueeze_dim", 1) == 1 and q.dim() == 4 and q.shape[0] >= 2 and q.shape[2] >= 2
        if plain and _use():
            return fns["rotary"](q, k, cos, sin)
        return original(q, k, cos, sin, *args, **kwargs)

    apply_rotary_pos_emb._glta_original = original  # type: ignore[attr-defined]
    apply_rotary_pos_emb.__doc__ = original.__doc__
    return apply_rotary_pos_emb


@torch.no_grad()
def _install_rotary(module_name: str, fns: dict[str, Callable]) -> bool:
    mod = sys.modules.get(module_name)
    fn = getattr(mod, "apply_rotary_pos_emb", None)
    if fn is None:
        return False
    if hasattr(fn, "_glta_original"):
        return True
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 3, 8, generator=gen), torch.randn(2, 2, 3, 8, generator=gen)
    cos, sin = torch.randn(2, 3, 8, generator=gen), torch.randn(2, 3, 8, generator=gen)
    if not _same(fn(q, k, cos, sin), rotary(q, k, cos, sin)):
        return False
    mod.apply_rotary_pos_emb = _dispatcher(fn, fns)
    return True


def install(model: nn.Module, dtype: torch.dtype | None = None) -> dict[str, int]:
    """Swap ``model``'s decoder layers, RMSNorms, gated MLPs and rotary embedding for
    compiled versions used inside :func:`active` (in place; parameters and state-dict keys
    unchanged).

    Args:
        model: a transformers causal LM or decoder (Llama-style: SmolLM2, Llama, Qwen2,
            Mistral); other architectures' modules that do not compute the same are left
            alone.
        dtype: the dtype the kernels are compiled for (default: the model's parameters').

    Returns:
        How many modules use the compiled code: ``{"rms_norm": n, "gated_mlp": m,
        "rotary": r, "decoder_layer": d}`` (``r`` counts modelling modules); all zero, the
        model untouched and a warning when compiling fails (no C++ compiler, ...); a
        warning and ``d = 0`` when only the layers' regions fail to compile.
    """
    dtype = dtype or next(model.parameters()).dtype
    counts = {"rms_norm": 0, "gated_mlp": 0, "rotary": 0, "decoder_layer": 0}
    fns = kernels()
    norm = next((m for m in model.modules() if type(m).__name__.endswith("RMSNorm")
                 and isinstance(getattr(m, "weight", None), nn.Parameter)), None)
    hidden = int(getattr(getattr(model, "config", None), "hidden_size", 0)) or (
        norm.weight.shape[0] if norm is not None else 8)
    weight = norm.weight if norm is not None else nn.Parameter(
        torch.ones(hidden, dtype=dtype), requires_grad=False)
    probe_log = logging.getLogger("torch.utils.cpp_extension")  # "No CUDA runtime is found"
    level = probe_log.level
    probe_log.setLevel(logging.ERROR)
    try:
        _warm(fns, dtype, weight, _shapes(model, hidden))
    except Exception as exc:
        warnings.warn(f"pointwise: torch.compile unavailable ({type(exc).__name__}: "
                      f"{str(exc)[:200]}); the LLM's element-wise parts stay eager",
                      RuntimeWarning, stacklevel=2)
        return counts
    finally:
        probe_log.setLevel(level)
    checked: dict[type, bool] = {}
    modules: set[str] = set()
    for m in model.modules():
        cls = type(m)
        if cls in _SUBCLASSES.values():
            if cls._glta_kind != "decoder_layer":
                counts[cls._glta_kind] += 1
            continue
        if cls.__name__.endswith("Attention"):
            modules.add(cls.__module__)
        if cls.__name__.endswith("RMSNorm"):
            kind, check, forward = "rms_norm", _is_norm, _norm_forward
        elif cls.__name__.endswith("MLP"):
            kind, check, forward = "gated_mlp", _is_gated_mlp, _mlp_forward
        else:
            continue
        if cls not in checked:
            checked[cls] = check(m)
        if checked[cls]:
            m.__class__ = _subclass(cls, forward, kind)
            m._glta_kernels = fns
            counts[kind] += 1
    counts["rotary"] = sum(_install_rotary(name, fns) for name in sorted(modules))
    counts["decoder_layer"] = _install_layers(model, fns)
    return counts


def _warm_layer(layer: nn.Module, fns: dict[str, Callable], attention: tuple) -> None:
    """Compile :func:`layer_in` / :func:`layer_out` forward and backward on ``layer``, with a
    cache and at sizes that equal none of the model's: dynamo ties sizes equal when it
    traces into one symbol, so a first call without a cache (keys as long as the queries)
    would give a graph that calls with a cache cannot use, while this one serves both."""
    config = layer.self_attn.config
    before = getattr(config, "_attn_implementation", None)
    config._attn_implementation = attention[0]
    try:
        with torch.enable_grad(), active():
            x, pe, mask, cache = _layer_inputs(layer, 5, 7, 11, grad=True)
            _regions(layer, x, pe, mask, cache, fns, attention[1]).float().sum().backward()
    finally:
        config._attn_implementation = before


def _install_layers(model: nn.Module, fns: dict[str, Callable]) -> int:
    """Swap the decoder layers that compute :func:`layer_in` + cache + :func:`layer_out` for
    a subclass running the two compiled regions in training passes with transformers'
    grouped eager attention (the kernel bf16 training uses on the CPU); returns how many
    (0 with ``GLTA_POINTWISE_LAYERS=0``: the element-wise kernels alone, as before
    2026-12-07's regions)."""
    if os.environ.get("GLTA_POINTWISE_LAYERS", "1") == "0":
        return 0
    from glta_align.llm import GROUPED, grouped_eager_attention, register_grouped_attention

    register_grouped_attention()
    attention = (GROUPED, grouped_eager_attention)
    def swap(m: nn.Module, cls: type) -> None:
        m.__class__ = _subclass(cls, _layer_forward, "decoder_layer")
        m._glta_kernels, m._glta_attention = fns, attention

    count, checked = 0, {}
    for m in model.modules():
        cls = type(m)
        if cls in _SUBCLASSES.values() and cls._glta_kind == "decoder_layer":
            count += 1
            continue
        if not cls.__name__.endswith("DecoderLayer"):
            continue
        if cls not in checked:
            checked[cls] = _is_llama_layer(m, attention)
            if checked[cls]:
                # warmed as the subclass the training passes will call (dynamo guards on the
                # layer's type: warming the original class would compile again later)
                swap(m, cls)
                try:
                    _warm_layer(m, fns, attention)
                except Exception as exc:
                    m.__class__ = cls
                    warnings.warn(f"pointwise: compiling {cls.__name__} failed "
                                  f"({type(exc).__name__}: {str(exc)[:200]}); its element-wise "
                                  "parts stay compiled one by one", RuntimeWarning, stacklevel=3)
                    checked[cls] = False
        if checked[cls]:
            swap(m, cls)
            count += 1
    return count


def compiled_layers(model: nn.Module, attention: str) -> int:
    """How many of ``model``'s decoder layers run their training passes as the two regions
    when training uses transformers' attention implementation ``attention``: installed,
    with plain linear layers (not a LoRA adapter injected after :func:`install`), and the
    kernel they were built for (0 for any other)."""
    return sum(getattr(type(m), "_glta_kind", None) == "decoder_layer" and _plain_linears(m)
               and m._glta_attention[0] == attention for m in model.modules())
