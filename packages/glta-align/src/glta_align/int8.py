"""Int8 matrix products for the frozen LLM on CPUs without fast bf16 (``dtype="int8"``).

On CPUs with AVX512-VNNI but no AMX, int8 matrix products (``torch._int_mm``) run several
times faster than fp32 ones, and faster than bf16 ones (slower than fp32 on a Xeon without
AMX, 2.4x fp32 on an AMD EPYC Zen 4; measured with
``benchmarks/gllm/compare.py sgemm --dtypes float32,bfloat16,int8``; figures in
``benchmarks/RESULTS.md``). Since GLTA's LLM is frozen,
every ``nn.Linear`` of its decoder can be replaced by :class:`Int8Linear`:

* weights: int8, symmetric, one scale per output channel for the forward product and a
  second copy with one scale per input channel for the input-gradient product (so both
  products contract over an unscaled axis);
* activations (forward) and output gradients (backward): int8, symmetric, one scale per row
  (token), computed on the fly ("dynamic" W8A8 quantisation);
* products accumulate exactly in int32 and are scaled back to fp32.

Gradients flow to the layer input (soft tokens upstream); the weights get none (frozen).
Quantise, product and scale-back are compiled into one graph by ``torch.compile`` when a C++
compiler is available (faster than eager; ``benchmarks/RESULTS.md``), and run eagerly
otherwise (``GLTA_INT8_COMPILE=0`` forces the
eager path). Results are repeatable run to run: integer accumulation has no order
dependence.

torchao's int8 dynamic-activation/int8-weight quantisation was measured against these layers
(``benchmarks/align/int8_torchao.py``, ``benchmarks/RESULTS.md``) and not adopted: its layers
give their input no gradient (their output is cut from the autograd graph), which GLTA's
stages need, and its eager forward is not faster.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import threading
import warnings
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["Int8GatedMLP", "Int8Linear", "fusable_mlp", "int8_kernels", "int8_mlp_kernel",
           "quantize_linears_int8", "quantize_rows"]

_QMAX = 127.0
# input dtypes the gated MLP runs as one graph for (float32 activations, and the bf16 ones of
# int8_activation_dtype on CPUs with bf16 instructions)
_FUSED_MLP_DTYPES = (torch.float32, torch.bfloat16)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 quantisation.

    Args:
        x: (rows, cols) floating tensor.

    Returns:
        ``(q, scale)``: q (rows, cols) int8 with ``q * scale ~= x`` (error at most
        ``scale / 2`` per entry), scale (rows, 1) float32, ``max|x_row| / 127`` (a tiny
        positive value for all-zero rows, which quantise to zeros).
    """
    xf = x.float()
    scale = xf.abs().amax(-1, keepdim=True).clamp_min(1e-30) / _QMAX
    return torch.round(xf / scale).to(torch.int8), scale


def _rescale(acc: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor) -> torch.Tensor:
    """(rows, cols) int32 accumulator -> float32, times (rows, 1) and (1, cols) scales."""
    return acc.to(torch.float32) * row_scale * col_scale


def _matmul_2d(x: torch.Tensor, wq: torch.Tensor, wscale: torch.Tensor) -> torch.Tensor:
    """(M, K) float @ (K, N) int8 with (1, N) scales -> (M, N) float32 (eager reference)."""
    xq, xscale = quantize_rows(x)
    return _rescale(torch._int_mm(xq, wq), xscale, wscale)


def _scale_row(scale: torch.Tensor) -> torch.Tensor:
    """A (1, N) or (N,) scale as a (1, N) view with strides (1, 1) (one layout: one graph)."""
    return scale.reshape(-1, 1).t()


def _gated_mlp_2d(x: torch.Tensor, w_gu: torch.Tensor, s_gu: torch.Tensor, w_down: torch.Tensor,
                  s_down: torch.Tensor) -> torch.Tensor:
    """``down(silu(gate(x)) * up(x))`` in int8 products (eager reference).

    Args:
        x: (M, K) float input.
        w_gu: (K, 2F) int8, the gate's F output channels then the up projection's.
        s_gu: (1, 2F) their scales.
        w_down: (F, N) int8; s_down: (1, N).

    Returns:
        (M, N) float32: the same arithmetic, step for step, as the three layers run one by
        one (quantise x, one product for gate and up, scale back, silu times up, quantise,
        product, scale back).
    """
    F = w_gu.shape[1] // 2
    h = _matmul_2d(x, w_gu, s_gu)
    return _matmul_2d(torch.nn.functional.silu(h[:, :F]) * h[:, F:], w_down, s_down)


def _compiled(fn: Callable, warm: Callable[[Callable], object]) -> tuple[Callable, bool]:
    """``(torch.compile(fn, dynamic=True), True)`` once ``warm(compiled)`` ran, or ``(fn,
    False)`` with a warning when compiling fails or ``GLTA_INT8_COMPILE=0``."""
    if os.environ.get("GLTA_INT8_COMPILE", "1") == "0":
        return fn, False
    # inductor's C++ toolchain probe logs "No CUDA runtime is found" on CPU-only hosts
    probe_log = logging.getLogger("torch.utils.cpp_extension")
    level = probe_log.level
    probe_log.setLevel(logging.ERROR)
    try:
        compiled = torch.compile(fn, dynamic=True)
        warm(compiled)  # compile now (cached on disk) so a missing compiler shows up here
    except Exception as exc:
        warnings.warn(f"int8: torch.compile unavailable ({type(exc).__name__}: {exc}); "
                      "using the slower eager quantisation", RuntimeWarning, stacklevel=3)
        return fn, False
    finally:
        probe_log.setLevel(level)
    return compiled, True


@functools.cache
def int8_mlp_kernel() -> tuple[Callable, bool]:
    """The gated MLP of :class:`Int8GatedMLP` without gradients and whether it is compiled.

    Returns:
        ``(mlp, compiled)``: ``mlp(x, w_gu, s_gu, w_down, s_down)`` as
        :func:`_gated_mlp_2d`, compiled into one graph (``torch.compile(dynamic=True)``:
        the scale-back, silu, product and quantisation between the two int8 products fuse,
        so the (M, 2F) intermediates are not written and read back step by step); eager
        under the same conditions as :func:`int8_kernels`.
    """
    def warm(fn: Callable) -> None:  # M, K, F, N all different: no size specialised equal
        w_gu, s_gu = quantize_rows(torch.randn(6, 5))
        w_dn, s_dn = quantize_rows(torch.randn(4, 3))
        # float32 only: enough to show a missing compiler; a bf16 input compiles its own
        # graph at its first call, on the CPUs whose LLM runs bf16 activations only
        fn(torch.randn(7, 5), w_gu.t().contiguous(), _scale_row(s_gu),
           w_dn.t().contiguous(), _scale_row(s_dn))

    return _compiled(_gated_mlp_2d, warm)


@functools.cache
def int8_kernels() -> tuple[Callable, bool]:
    """The (M, K) x (K, N) int8 product in use and whether it is compiled.

    Returns:
        ``(matmul, compiled)``: ``matmul(x, wq, wscale)`` quantises x per row, multiplies in
        int8 with int32 accumulation and scales back to float32. Compiled with
        ``torch.compile(dynamic=True)`` (one graph: quantise, product, rescale) unless
        ``GLTA_INT8_COMPILE=0`` or compiling fails (no C++ compiler, ...): then the eager
        :func:`_matmul_2d` is used and a warning says why.
    """
    def warm(fn: Callable) -> None:  # M, K, N all different: no size specialised equal
        x, w = torch.randn(7, 5), torch.randn(3, 5)
        fn(x, quantize_rows(w)[0].t().contiguous(), _scale_row(torch.ones(1, 3)))

    return _compiled(_matmul_2d, warm)


def _int8_matmul(x: torch.Tensor, wq: torch.Tensor, wscale: torch.Tensor) -> torch.Tensor:
    """(..., K) float @ (K, N) int8 with (1, N) scales -> (..., N) float32."""
    matmul, _ = int8_kernels()
    # One compiled graph for every call: a view's base (q/k/v splits, transposed attention
    # outputs...), requires_grad, strides and the scales' layout would otherwise enter its
    # guards, one recompilation per variant until dynamo's recompile limit sends the rest to
    # eager Python. Detached (the Function gives the gradient), contiguous, and the (1, N)
    # scales with strides (1, 1), as quantize_rows(w).t() makes them (with strides (N, 1),
    # or 1-d, inductor compiles a slower kernel: benchmarks/RESULTS.md, "One compiled graph
    # for the int8 layers").
    return _on_rows(matmul, x, wq.shape[1], wq, _scale_row(wscale))


def _on_rows(fn: Callable, x: torch.Tensor, n_out: int, *args: torch.Tensor) -> torch.Tensor:
    """``fn(rows, *args)`` on ``x`` (..., K) as (M, K) rows, detached and contiguous (one
    layout, one compiled graph), reshaped back -> (..., n_out) float32; no call for M = 0."""
    x2 = x.reshape(-1, x.shape[-1]).detach().contiguous()
    if x2.shape[0] == 0:
        return x.new_zeros(*x.shape[:-1], n_out, dtype=torch.float32)
    return fn(x2, *args).reshape(*x.shape[:-1], n_out)


def _check_frozen(linear: nn.Linear) -> None:
    """Raise ValueError unless the layer's weight is frozen (int8 keeps no float weight)."""
    if linear.weight.requires_grad:
        raise ValueError("Int8Linear is for frozen layers: the weight requires grad")


class _Int8LinearFn(torch.autograd.Function):
    """y = x W^T (+ b) with int8 products; gradient to x only."""

    @staticmethod
    def forward(ctx, x, w_fwd, s_fwd, w_bwd, s_bwd, bias):
        ctx.save_for_backward(w_bwd, s_bwd)
        y = _int8_matmul(x, w_fwd, s_fwd)
        if bias is not None:
            y = y + bias
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, gy):
        w_bwd, s_bwd = ctx.saved_tensors
        gx = None
        if ctx.needs_input_grad[0]:
            gx = _int8_matmul(gy, w_bwd, s_bwd).to(gy.dtype)
        return gx, None, None, None, None, None


class Int8Linear(nn.Module):
    """A frozen ``nn.Linear`` computed with int8 products (see the module docstring).

    Args:
        weight: (out_features, in_features) float weight; quantised here and not kept.
        bias: (out_features,) or ``None``; kept in float32, frozen.

    Shapes: forward (..., in_features) -> (..., out_features), in the input's dtype.
    Layers fused by :func:`quantize_linears_int8` (q/k/v, gate/up) hold views of one shared
    quantised weight and compute all their group's outputs in one product the first time
    one of them sees a new input.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        w = weight.detach().float()
        q, s = quantize_rows(w)  # one scale per output channel
        qt, st = quantize_rows(w.t())  # one scale per input channel
        self._set(q.t().contiguous(), s.t().contiguous(), qt.t().contiguous(),
                  st.t().contiguous(), None if bias is None else bias.detach().float().clone())

    def _set(self, w_fwd, s_fwd, w_bwd, s_bwd, bias) -> None:
        """Install the quantised buffers (shapes in the comments)."""
        self.in_features, self.out_features = int(w_fwd.shape[0]), int(w_fwd.shape[1])
        self.register_buffer("w_fwd", w_fwd)  # (K, N) int8
        self.register_buffer("s_fwd", s_fwd)  # (1, N)
        self.register_buffer("w_bwd", w_bwd)  # (N, K) int8
        self.register_buffer("s_bwd", s_bwd)  # (1, K)
        self.register_buffer("bias", bias)
        self._group: tuple[_SharedInput, int] | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        """Quantise an existing ``nn.Linear`` (its weights must not require grad)."""
        _check_frozen(linear)
        return cls(linear.weight, linear.bias)

    def _columns(self, start: int, stop: int) -> Int8Linear:
        """Output channels [start, stop) as a layer sharing this one's buffers (views)."""
        part = Int8Linear.__new__(Int8Linear)
        nn.Module.__init__(part)
        part._set(self.w_fwd[:, start:stop], self.s_fwd[:, start:stop],
                  self.w_bwd[start:stop], self.s_bwd,
                  None if self.bias is None else self.bias[start:stop])
        return part

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Int8Linear: input has {x.shape[-1]} features, "
                             f"expected {self.in_features}")
        if x.device.type != "cpu":
            raise ValueError("Int8Linear runs on the CPU; use dtype bfloat16 on CUDA")
        if self._group is not None:
            group, index = self._group
            return group.output(x, index)
        return _Int8LinearFn.apply(x, self.w_fwd, self.s_fwd, self.w_bwd, self.s_bwd, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class _SharedInput:
    """Layers that read the same input (q/k/v, gate/up) as one product.

    The first member called with an input computes every member's output in one int8
    product (one quantisation of the input; in backward one of the concatenated output
    gradient) and keeps them until each member has taken its own; a member called with any
    other tensor (or the same one modified in place) starts a new round. The round's state is
    per thread, so threads sharing one model do not see each other's outputs.
    """

    def __init__(self, linears: list[nn.Linear]) -> None:
        biases = [lin.bias for lin in linears]
        bias = None if all(b is None for b in biases) else torch.cat([
            torch.zeros(lin.out_features) if b is None else b.detach().float()
            for lin, b in zip(linears, biases, strict=True)])
        self.fused = Int8Linear(torch.cat([lin.weight.detach().float() for lin in linears]), bias)
        self.sizes = [lin.out_features for lin in linears]
        bounds = [0, *itertools.accumulate(self.sizes)]
        self.members = [self.fused._columns(a, b) for a, b in itertools.pairwise(bounds)]
        for i, m in enumerate(self.members):
            m._group = (self, i)
        self._round = threading.local()  # .input, .version, .parts, .pending

    def output(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Member ``index``'s output for input ``x`` (computing the whole group if needed)."""
        r = self._round
        if (getattr(r, "input", None) is not x or r.version != x._version
                or index not in r.pending):
            f = self.fused
            y = _Int8LinearFn.apply(x, f.w_fwd, f.s_fwd, f.w_bwd, f.s_bwd, f.bias)
            r.input, r.version = x, x._version
            r.parts = list(y.split(self.sizes, dim=-1))
            r.pending = set(range(len(self.sizes)))
        part = r.parts[index]
        r.pending.discard(index)
        if not r.pending:  # every member served: drop the references
            r.input, r.parts = None, []
        return part


class Int8GatedMLP(nn.Module):
    """A Llama-style gated MLP, ``down(silu(gate(x)) * up(x))``, over int8 layers.

    Holds the original module's ``gate_proj`` / ``up_proj`` (members of one
    :class:`_SharedInput` group, gate first) and ``down_proj`` (:class:`Int8Linear`, no
    biases) and its ``act_fn`` under the same names, so parameter and buffer names do not
    change. Where no gradient is needed (text generation, ranking) and the input is float32
    or bfloat16, the whole block runs as one graph (:func:`int8_mlp_kernel`): for float32 the
    same arithmetic as the layers one by one, with the intermediates fused away; for bfloat16
    the intermediates stay in float32 inside the graph (the layers round the gate/up output
    and silu times up to bf16) and the output is rounded to bf16 once. Where a gradient flows
    to the input (training the soft tokens) it runs the layers one by one, as before.

    Shapes: forward (..., hidden) -> (..., hidden), in the input's dtype.
    """

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        if not fusable_mlp(mlp):
            raise ValueError(f"Int8GatedMLP: {type(mlp).__name__} is not a bias-free silu "
                             "gated MLP over grouped int8 gate/up and int8 down layers")
        self.gate_proj, self.up_proj = mlp.gate_proj, mlp.up_proj
        self.down_proj, self.act_fn = mlp.down_proj, mlp.act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype not in _FUSED_MLP_DTYPES or (torch.is_grad_enabled() and x.requires_grad):
            return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
        fused, down = self.gate_proj._group[0].fused, self.down_proj
        return _on_rows(int8_mlp_kernel()[0], x, down.out_features, fused.w_fwd,
                        _scale_row(fused.s_fwd), down.w_fwd, _scale_row(down.s_fwd)).to(x.dtype)


def fusable_mlp(mlp: nn.Module) -> bool:
    """Whether ``mlp`` is a gated silu MLP :class:`Int8GatedMLP` can run fused: ``gate_proj``
    and ``up_proj`` the two members of one int8 group (in that order, same width), an
    :class:`Int8Linear` ``down_proj`` reading their width, no biases, ``act_fn`` a SiLU."""
    gate, up, down = (getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj"))
    act = getattr(mlp, "act_fn", None)
    if not all(isinstance(m, Int8Linear) for m in (gate, up, down)):
        return False
    if gate._group is None or up._group is None or down._group is not None:
        return False
    group = gate._group[0]
    return (up._group[0] is group and gate._group[1] == 0 and up._group[1] == 1
            and len(group.sizes) == 2 and group.sizes[0] == group.sizes[1]
            and down.in_features == gate.out_features and group.fused.bias is None
            and down.bias is None
            and (isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"))


_SHARED_INPUT_NAMES = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def quantize_linears_int8(module: nn.Module, *, skip: tuple[str, ...] = ("lm_head",)) -> int:
    """Replace every frozen ``nn.Linear`` under ``module`` by :class:`Int8Linear`, in place.

    Siblings named like Llama's q/k/v and gate/up projections (same parent, same input
    width) are fused: they read the same input, so one quantised product serves them all.
    A gated silu MLP over them (Llama's ``mlp``) becomes an :class:`Int8GatedMLP`, which
    runs as one compiled graph where no gradient is needed.

    Args:
        module: e.g. a ``*ForCausalLM``; all its ``nn.Linear`` weights must be frozen.
        skip: child names left in float (default: the vocabulary projection, tied to the
            input embeddings and only used when generating text).

    Returns:
        The number of layers replaced.

    Raises:
        ValueError: a linear layer's weight requires grad.
    """
    count = 0
    for parent in list(module.modules()):
        children = {n: c for n, c in parent.named_children()
                    if isinstance(c, nn.Linear) and n not in skip}
        for c in children.values():  # all checked first: never leave a half-replaced model
            _check_frozen(c)
        for names in _SHARED_INPUT_NAMES:
            linears = [children.get(n) for n in names]
            if all(lin is not None for lin in linears) and len(
                    {lin.in_features for lin in linears}) == 1:
                for n, member in zip(names, _SharedInput(linears).members, strict=True):
                    setattr(parent, n, member)
                    del children[n]
                    count += 1
        for n, c in children.items():
            setattr(parent, n, Int8Linear.from_linear(c))
            count += 1
    for parent in list(module.modules()):
        for n, child in list(parent.named_children()):
            if fusable_mlp(child):
                setattr(parent, n, Int8GatedMLP(child))
    return count
