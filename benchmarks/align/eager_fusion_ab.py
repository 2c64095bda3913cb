"""Element-wise fusion in the frozen LLM's training pass on the CPU: same run, interleaved.

Stage 3's forward + backward in bf16 spends about as long in element-wise work (RMSNorm's fp32
upcasts, rotary, SiLU * up, residual adds) as in matrix products (``torch.profiler``, see
RESULTS). This script measures the candidate remedies on SmolLM2-135M-Instruct, each against
the unchanged model in the same process, interleaved (so a shared machine affects both):

- ``rms_norm``: every RMSNorm computed by ``torch.nn.functional.rms_norm`` (one ATen op)
  instead of transformers' five-op Python version;
- ``fused_linears``: q/k/v and gate/up each one matrix product over the concatenated
  weights (three and two products before), outputs split (as ``glta_align.int8`` does for
  int8);
- ``rms_norm+fused_linears``: both;
- ``layer_compile`` (``--compile``): every decoder layer through ``torch.compile``
  (regional compilation: one graph serves all layers), compile seconds reported.

Per variant: seconds per forward + backward into ``inputs_embeds`` (best of ``--repeats``
after a warm-up), its speed-up over the unchanged model, and the cosine of its input
gradient with the unchanged bf16 model's and with the fp32 model's (the unchanged bf16's
cosine with fp32 beside, for scale).

    uv run python benchmarks/align/eager_fusion_ab.py --threads 1 --json OUT.json
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from glta_align.llm import load_llm
from glta_gllm.checkpoint import atomic_write_json
from profile_gen import cpu_model, git_commit  # this folder's benchmark helpers
from torch import nn

VARIANTS = ("rms_norm", "fused_linears", "rms_norm+fused_linears")


class FusedRMSNorm(nn.Module):
    """An RMSNorm (weight (H,), eps) computed by ``F.rms_norm``: (..., H) -> (..., H)."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.weight = norm.weight
        self.eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class _Group:
    """Sibling linears reading one input (q/k/v or gate/up) as one product, split after."""

    def __init__(self, linears: list[nn.Linear]) -> None:
        self.weight = torch.cat([lin.weight.detach() for lin in linears])
        self.sizes = [lin.out_features for lin in linears]
        self.input: torch.Tensor | None = None
        self.parts: tuple[torch.Tensor, ...] = ()
        self.pending: set[int] = set()

    def output(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Member ``index``'s output for ``x`` (..., K) -> (..., N_index)."""
        if self.input is not x or index not in self.pending:
            self.parts = F.linear(x, self.weight).split(self.sizes, dim=-1)
            self.input, self.pending = x, set(range(len(self.sizes)))
        self.pending.discard(index)
        part = self.parts[index]
        if not self.pending:
            self.input, self.parts = None, ()
        return part


class _Member(nn.Module):
    """One output block of a :class:`_Group`: (..., K) -> (..., N_index)."""

    def __init__(self, group: _Group, index: int) -> None:
        super().__init__()
        self._group, self.index = [group], index  # a list: not a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._group[0].output(x, self.index)


def patch(model: nn.Module, rms: bool, fuse: bool) -> nn.Module:
    """``model`` with RMSNorms and/or q/k/v, gate/up linears replaced (in place)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if rms and type(child).__name__.endswith("RMSNorm"):
                setattr(parent, name, FusedRMSNorm(child))
        if fuse:
            for names in (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")):
                lins = [getattr(parent, n, None) for n in names]
                if all(isinstance(lin, nn.Linear) and lin.bias is None for lin in lins):
                    group = _Group(lins)
                    for i, n in enumerate(names):
                        setattr(parent, n, _Member(group, i))
    return model


def step(model: nn.Module, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Seconds of one forward + backward of ``model``'s decoder stack into ``x`` (B, T, H),
    and the input gradient (B*T*H,) in fp32."""
    xe = x.clone().requires_grad_()
    t0 = time.perf_counter()
    out = model(inputs_embeds=xe).last_hidden_state
    out[:, -10:].float().sum().backward()
    return time.perf_counter() - t0, xe.grad.float().flatten()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="add the layer_compile variant")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    llm = load_llm(dtype="bfloat16", attention="eager")
    stock = llm.backbone
    stock.config._attn_implementation = "eager"
    ref = copy.deepcopy(stock).float()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.tokens, llm.hidden_size, generator=gen) * 0.135
    xb = x.to(torch.bfloat16)
    models = {"stock": stock}
    for v in VARIANTS:
        models[v] = patch(copy.deepcopy(stock), rms="rms_norm" in v, fuse="fused" in v)
    compile_s = None
    if args.compile:
        m = copy.deepcopy(stock)
        for layer in m.layers:
            layer.compile()
        t0 = time.perf_counter()
        step(m, xb)
        compile_s = time.perf_counter() - t0
        models["layer_compile"] = m
    _, g_ref = step(ref, x)
    best = dict.fromkeys(models, float("inf"))
    grads = {}
    for rep in range(args.repeats + 1):
        names = list(models) if rep % 2 == 0 else list(reversed(models))
        for name in names:
            dt, grads[name] = step(models[name], xb)
            if rep:
                best[name] = min(best[name], dt)

    def cos(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(F.cosine_similarity(a, b, dim=0))

    result = {
        "what": "forward + backward of SmolLM2-135M's decoder stack into inputs_embeds, bf16, "
                "eager attention: element-wise fusion variants against the unchanged model, "
                "interleaved in one process",
        "command": "python benchmarks/align/eager_fusion_ab.py " + " ".join(
            argv if argv is not None else sys.argv[1:]),
        "commit": git_commit(), "date": _dt.date.today().isoformat(),
        "machine": {"cpu": cpu_model(), "threads": args.threads, "load_before": load_before,
                    "load_after": os.getloadavg()[0]},
        "torch": torch.__version__, "shape": [args.batch, args.tokens, llm.hidden_size],
        "seconds": {k: round(v, 4) for k, v in best.items()},
        "speedup": {k: best["stock"] / v for k, v in best.items() if k != "stock"},
        "grad_cosine_vs_stock": {k: cos(g, grads["stock"]) for k, g in grads.items()
                                 if k != "stock"},
        "grad_cosine_vs_fp32": {k: cos(g, g_ref) for k, g in grads.items()},
        "compile_seconds": compile_s,
    }
    print(json.dumps({k: result[k] for k in ("seconds", "speedup", "grad_cosine_vs_stock",
                                             "grad_cosine_vs_fp32", "compile_seconds")},
                     indent=1))
    if args.json:
        atomic_write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
