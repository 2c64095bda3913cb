"""GLTA's int8 linear layers (``glta_align.int8``) against torchao's int8 quantisation.

Variants, all built from the same fp32 weights of SmolLM2-135M (``load_llm(dtype="float32")``,
offline):

* ``fp32``: ``nn.Linear`` in float32;
* ``bf16``: ``nn.Linear`` in bfloat16 (bf16 inputs);
* ``ours``: :class:`glta_align.int8.Int8Linear` (``load_llm(dtype="int8")``'s layers);
* ``torchao``: ``torchao.quantization.quantize_`` with
  ``Int8DynamicActivationInt8WeightConfig()`` on the fp32 layers (fp32 inputs), eager;
* ``torchao_bf16``: the same on the bf16 layers (bf16 inputs), eager;
* ``torchao_compiled`` (layers only, forward only): the ``torchao`` layer under
  ``torch.compile(dynamic=True)``, the path torchao tunes its CPU kernels for.

Two levels: the decoder's linear layer shapes alone (q/o 576->576, k/v 576->192,
gate/up 576->1536, down 1536->576, unfused) and the decoder stack (first ``--layers``
decoder layers of the model, hidden states from ``inputs_embeds``; ours fuses q/k/v and
gate/up as ``load_llm`` does). Shapes: ``stage3`` (batch 8 x 160 tokens; forward, and
forward + backward to the inputs with frozen weights), ``decode`` (batch 64 x 1 token, no
key/value cache; forward) and ``prefill`` (batch 64 x 200 tokens; forward).

Timing: one process; every repeat runs every variant once in a rotated order (machine load
hits all alike); median and min of ``--repeats`` samples, each sample averaging enough
calls to last ``--min-sample-s``. Errors: max abs and relative L2 error of each output (and
input gradient) against fp32 on the same inputs. A variant whose backward raises is
recorded with the error text. Writes one JSON file.

    nice -n 5 uv run --group bench python benchmarks/align/int8_torchao.py --threads 2 \\
        --json benchmarks/align/results/int8_torchao_cpu_xeon_amx_2026-12-03.json

``--quick``: tiny shapes, one decoder layer, two repeats (a smoke run of the whole script).
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_gen import cpu_model, git_commit

#: (in_features, out_features) of SmolLM2-135M's decoder linears (q/o, k/v, gate/up, down).
LAYER_SHAPES = {"q_o": (576, 576), "k_v": (576, 192), "gate_up": (576, 1536),
                "down": (1536, 576)}
#: name -> (batch, tokens, with backward)
ROW_SHAPES = {"stage3": (8, 160, True), "decode": (64, 1, False), "prefill": (64, 200, False)}
QUICK_ROW_SHAPES = {"stage3": (2, 16, True), "decode": (4, 1, False), "prefill": (4, 8, False)}
RECOMPILE_LIMIT = 64
CPU_FLAGS = ("amx_int8", "amx_bf16", "amx_tile", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "avx512f")


def cpu_flags() -> dict[str, bool]:
    """Which of :data:`CPU_FLAGS` /proc/cpuinfo lists (all False where it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return {f: f in have for f in CPU_FLAGS}
    except OSError:
        pass
    return dict.fromkeys(CPU_FLAGS, False)


def torchao_version() -> str | None:
    """torchao's version, or ``None`` when it does not import."""
    try:
        import torchao
    except Exception:
        return None
    return str(torchao.__version__)


def torchao_quantize(module: nn.Module) -> nn.Module:
    """torchao's int8 dynamic-activation / int8-weight quantisation of every linear, in place.

    The vocabulary projection (``lm_head``) is left as it is, as ``load_llm`` does for ours.
    """
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    def keep(mod: nn.Module, fqn: str) -> bool:
        return isinstance(mod, nn.Linear) and not fqn.endswith("lm_head")

    quantize_(module, Int8DynamicActivationInt8WeightConfig(), filter_fn=keep)
    return module


def errors(y: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Max abs error and relative L2 error ``|y - ref| / |ref|`` (both in float32)."""
    d = y.detach().float() - ref.detach().float()
    return {"max_abs": float(d.abs().max()),
            "rel_l2": float(d.norm() / ref.detach().float().norm().clamp_min(1e-30))}


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int,
                     min_sample_s: float) -> dict[str, dict[str, float]]:
    """Median / min seconds per call of each function, sampled in rotated order each repeat."""
    calls = {}
    for name, fn in fns.items():  # warm-up and calls per sample
        fn()
        t = time.perf_counter()
        fn()
        calls[name] = max(1, int(min_sample_s / max(time.perf_counter() - t, 1e-6)))
    samples: dict[str, list[float]] = {n: [] for n in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            for _ in range(calls[name]):
                fns[name]()
            samples[name].append((time.perf_counter() - t) / calls[name])
    return {n: {"median_s": statistics.median(s), "min_s": min(s), "calls_per_sample": calls[n]}
            for n, s in samples.items()}


def _as_input(x: torch.Tensor, dtype: torch.dtype, grad: bool) -> torch.Tensor:
    return x.detach().to(dtype).requires_grad_(grad)


def measure(variants: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], torch.dtype]],
            x: torch.Tensor, backward: bool, repeats: int, min_sample_s: float,
            no_backward: tuple[str, ...] = ()) -> dict:
    """Forward (and forward + backward to ``x``) of each variant: times and errors vs fp32.

    Args:
        variants: name -> (function of a (batch, tokens, features) input, input dtype);
            ``fp32`` must be among them.
        x: (batch, tokens, features) float32 input.
        backward: also time and check forward + backward to the input (upstream gradient: a
            fixed seeded random tensor).
        no_backward: variants measured forward only.
    """
    out: dict = {"forward": {}, "errors": {}}
    with torch.no_grad():
        ref = variants["fp32"][0](x)
    for name, (fn, dt) in variants.items():
        with torch.no_grad():
            out["errors"][name] = errors(fn(x.to(dt)), ref)
    fwd = {}
    for name, (fn, dt) in variants.items():
        xi = x.to(dt)

        def call(fn=fn, xi=xi):
            with torch.no_grad():
                return fn(xi)
        fwd[name] = call
    out["forward"] = time_interleaved(fwd, repeats, min_sample_s)
    if not backward:
        return out
    gen = torch.Generator().manual_seed(1)
    gy = torch.randn(ref.shape, generator=gen)
    xr = _as_input(x, torch.float32, True)
    variants["fp32"][0](xr).backward(gy)
    gref = xr.grad
    out["backward"], out["grad_errors"], out["backward_error"] = {}, {}, {}
    bwd = {}
    for name, (fn, dt) in variants.items():
        if name in no_backward:
            continue
        xi = _as_input(x, dt, True)
        g = gy.to(dt)
        try:
            fn(xi).backward(g)
        except RuntimeError as exc:
            out["backward_error"][name] = f"{type(exc).__name__}: {exc}"
            continue
        out["grad_errors"][name] = errors(xi.grad, gref)

        def step(fn=fn, xi=xi, g=g):
            xi.grad = None
            fn(xi).backward(g)
        bwd[name] = step
    out["backward"] = time_interleaved(bwd, repeats, min_sample_s)
    return out


def ratios(times: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Median time of each variant over fp32's and over ours (>1: slower)."""
    res = {}
    for name, t in times.items():
        r = {}
        for base in ("fp32", "ours"):
            if base in times:
                r[f"vs_{base}"] = t["median_s"] / times[base]["median_s"]
        res[name] = r
    return res


def layer_variants(lin: nn.Linear, compiled: bool) -> tuple[dict, tuple[str, ...]]:
    """The variants of one fp32 layer: name -> (callable, input dtype), forward-only names."""
    from glta_align.int8 import Int8Linear

    variants = {"fp32": (lin, torch.float32),
                "bf16": (copy.deepcopy(lin).to(torch.bfloat16), torch.bfloat16),
                "ours": (Int8Linear.from_linear(lin), torch.float32)}
    fwd_only: tuple[str, ...] = ()
    if torchao_version() is not None:
        tao = torchao_quantize(nn.Sequential(copy.deepcopy(lin)))
        variants["torchao"] = (tao, torch.float32)
        variants["torchao_bf16"] = (
            torchao_quantize(nn.Sequential(copy.deepcopy(lin).to(torch.bfloat16))),
            torch.bfloat16)
        if compiled:
            variants["torchao_compiled"] = (torch.compile(tao, dynamic=True), torch.float32)
            fwd_only = ("torchao_compiled",)
    return variants, fwd_only


def stack_variants(llm, layers: int) -> dict:
    """The decoder stack (first ``layers`` layers) in each variant: name -> (callable, dtype)."""
    from glta_align.int8 import quantize_linears_int8

    backbone = llm.backbone
    backbone.layers = backbone.layers[:layers]
    backbone.config.num_hidden_layers = layers

    def run(m: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda x: m(inputs_embeds=x, use_cache=False).last_hidden_state

    bf16 = copy.deepcopy(backbone).to(torch.bfloat16)
    ours = copy.deepcopy(backbone)
    quantize_linears_int8(ours)
    variants = {"fp32": (run(backbone), torch.float32), "bf16": (run(bf16), torch.bfloat16),
                "ours": (run(ours), torch.float32)}
    if torchao_version() is not None:
        variants["torchao"] = (run(torchao_quantize(copy.deepcopy(backbone))), torch.float32)
        variants["torchao_bf16"] = (run(torchao_quantize(copy.deepcopy(bf16))), torch.bfloat16)
    return variants


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and write the JSON file; returns the exit code."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--min-sample-s", type=float, default=0.05,
                   help="each timing sample averages enough calls to last this long")
    p.add_argument("--layers", type=int, default=2,
                   help="decoder layers of the model kept for the stack level")
    p.add_argument("--shapes", default="stage3,decode,prefill")
    p.add_argument("--no-compile", action="store_true",
                   help="skip torchao_compiled at the layer level")
    p.add_argument("--no-model", action="store_true", help="layer shapes only")
    p.add_argument("--quick", action="store_true",
                   help="tiny shapes, one decoder layer, two repeats, no compile")
    p.add_argument("--json", type=Path, default=None,
                   help="output file (default: results/int8_torchao_<cpu>_<date>.json)")
    a = p.parse_args(argv)
    shapes_table = QUICK_ROW_SHAPES if a.quick else ROW_SHAPES
    shapes = [s for s in a.shapes.split(",") if s]
    bad = [s for s in shapes if s not in shapes_table]
    if bad or a.threads < 1 or a.repeats < 1 or a.layers < 1:
        print(f"int8_torchao.py: bad --shapes {bad} (choose from {sorted(shapes_table)}) or "
              "--threads/--repeats/--layers below 1", file=sys.stderr)
        return 2
    if a.quick:
        a.repeats, a.layers, a.no_compile, a.min_sample_s = 2, 1, True, 0.0
    torch.set_num_threads(a.threads)
    # the many distinct shapes here would exhaust dynamo's default recompile limit (8) for
    # ours' compiled kernel and fall back to eager part-way; a run of GLTA sees fewer
    torch._dynamo.config.recompile_limit = RECOMPILE_LIMIT
    torch.manual_seed(0)
    flags = cpu_flags()
    if a.json is None:
        kind = "xeon_amx" if flags["amx_int8"] else "noamx"
        a.json = (Path(__file__).resolve().parent / "results"
                  / f"int8_torchao_cpu_{kind}_{_dt.date.today().isoformat()}.json")
    result: dict = {
        "command": " ".join(["python", *sys.argv]) if argv is None else
        " ".join(["python", "benchmarks/align/int8_torchao.py", *argv]),
        "commit": git_commit(), "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(), "cpu_flags": flags, "threads": a.threads,
        "torch": torch.__version__, "torchao": torchao_version(),
        "python": platform.python_version(),
        "nice": os.nice(0), "loadavg_start": os.getloadavg(), "repeats": a.repeats,
        "min_sample_s": a.min_sample_s, "quick": a.quick,
        "dynamo_recompile_limit": RECOMPILE_LIMIT,
        "shapes": {s: dict(zip(("batch", "tokens", "backward"), shapes_table[s], strict=True))
                   for s in shapes},
        "layers": {}, "stack": None,
    }
    for lname, (k, n) in LAYER_SHAPES.items():
        lin = nn.Linear(k, n, bias=False).requires_grad_(False)
        variants, fwd_only = layer_variants(lin, compiled=not a.no_compile)
        for s in shapes:
            b, t, bw = shapes_table[s]
            x = torch.randn(b, t, k)
            r = measure(variants, x, bw, a.repeats, a.min_sample_s, no_backward=fwd_only)
            r["forward_ratios"] = ratios(r["forward"])
            if bw:
                r["backward_ratios"] = ratios(r["backward"])
            result["layers"][f"{lname}/{s}"] = r
            print(f"layer {lname} {s}: " + ", ".join(
                f"{v} {d['vs_fp32']:.2f}" for v, d in r["forward_ratios"].items()), flush=True)
    if not a.no_model:
        from glta_align.llm import load_llm

        llm = load_llm(dtype="float32", device="cpu")
        layers = min(a.layers, len(llm.backbone.layers))
        variants = stack_variants(llm, layers)
        emb = llm.causal_lm.get_input_embeddings()
        stack = {"model": llm.source, "decoder_layers": layers, "results": {}}
        for s in shapes:
            b, t, bw = shapes_table[s]
            ids = torch.randint(0, emb.num_embeddings, (b, t),
                                generator=torch.Generator().manual_seed(2))
            with torch.no_grad():
                x = emb(ids).float()
            r = measure(variants, x, bw, a.repeats, a.min_sample_s)
            r["forward_ratios"] = ratios(r["forward"])
            if bw:
                r["backward_ratios"] = ratios(r["backward"])
            stack["results"][s] = r
            print(f"stack {s}: " + ", ".join(
                f"{v} {d['vs_fp32']:.2f}" for v, d in r["forward_ratios"].items()), flush=True)
        result["stack"] = stack
    result["loadavg_end"] = os.getloadavg()
    a.json.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=a.json.parent, suffix=".tmp", delete=False) as f:
        json.dump(result, f, indent=1)
        tmp = f.name
    os.replace(tmp, a.json)
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
