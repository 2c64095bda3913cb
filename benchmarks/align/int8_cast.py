"""Where an int8 layer's output is rounded to bf16: inside the scale-back kernel or after it.

With bf16 activations (``int8_activation_dtype``: CPUs with AVX512-BF16 or AMX) every
:class:`glta_align.int8.Int8Linear` gets a bf16 input and returns a bf16 output: its
compiled graph (quantise the rows, ``torch._int_mm``, scale back) returns float32 and the
layer casts that to bf16 in a separate pass. Rounding inside the graph instead saves that
pass over the (M, N) output (tried 2026-12-07, not adopted: level with glta's malloc
setting, ``benchmarks/RESULTS.md``). This script times, in one process and in rotated order
(every repeat runs every variant once):

* ``int_mm``: the int8 products alone, on inputs quantised beforehand (the floor);
* ``cast_after``: ``glta_align.int8.int8_kernels()``'s graph and the layers' ``.to(bfloat16)``;
* ``cast_inside``: the same graph ending in ``.to(x.dtype)``, compiled the same way;
* ``bf16_linear``: ``F.linear`` in bf16 (the precision int8 competes with).

over SmolLM2-135M's int8 product shapes of one decoder layer, forward (q/k/v fused 576->960,
o 576->576, gate/up fused 576->3072, down 1536->576) and the input-gradient products of the
backward (the transposes), at ``--rows`` rows (tokens). Writes one JSON file:

    OMP_NUM_THREADS=2 uv run python benchmarks/align/int8_cast.py \\
        --json benchmarks/align/results/int8_cast_cpu_amd_epyc_2026-12-07.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
from pathlib import Path

import torch
from glta_align.int8 import _rescale, _scale_row, int8_kernels, quantize_rows
from glta_gllm.checkpoint import atomic_write_json
from glta_graph.malloc import keep_freed_memory
from int8_torchao import time_interleaved  # this folder's benchmark helpers
from profile_gen import cpu_model, git_commit

FORWARD = [(576, 960), (576, 576), (576, 3072), (1536, 576)]
BACKWARD = [(n, k) for k, n in FORWARD]


def _cast_inside_graph(x: torch.Tensor, wq: torch.Tensor, wscale: torch.Tensor) -> torch.Tensor:
    """The int8 layers' graph rounding to x's dtype itself: (M, K) float -> (M, N) x.dtype."""
    xq, xscale = quantize_rows(x)
    return _rescale(torch._int_mm(xq, wq), xscale, wscale).to(x.dtype)


def variants(shapes: list[tuple[int, int]], rows: int, seed: int = 0) -> dict:
    """The four variants over ``shapes`` ((in, out) pairs) at ``rows`` bf16 input rows."""
    gen = torch.Generator().manual_seed(seed)
    after, compiled = int8_kernels()
    if not compiled:
        raise SystemExit("int8_cast: the int8 graph is not compiled here (no C++ compiler or "
                         "GLTA_INT8_COMPILE=0); nothing to compare")
    inside = torch.compile(_cast_inside_graph, dynamic=True)
    work = []
    for k, n in shapes:
        x = torch.randn(rows, k, generator=gen).bfloat16()
        w = torch.randn(n, k, generator=gen) * k ** -0.5
        q, s = quantize_rows(w)
        work.append((x, q.t().contiguous(), _scale_row(s.t().contiguous()),
                     quantize_rows(x)[0], w.bfloat16()))

    def int_mm():
        for _, wq, _, xq, _ in work:
            torch._int_mm(xq, wq)

    def cast_after():
        for x, wq, ws, _, _ in work:
            after(x, wq, ws).to(x.dtype)

    def cast_inside():
        for x, wq, ws, _, _ in work:
            inside(x, wq, ws)

    def bf16_linear():
        for x, _, _, _, wb in work:
            torch.nn.functional.linear(x, wb)

    return {"int_mm": int_mm, "cast_after": cast_after, "cast_inside": cast_inside,
            "bf16_linear": bf16_linear}


def check_outputs(rows: int = 64) -> dict[str, float]:
    """Max abs difference between the two graphs' bf16 outputs (both round the same float32
    values: expected 0)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(rows, 576, generator=gen).bfloat16()
    q, s = quantize_rows(torch.randn(960, 576, generator=gen))
    wq, ws = q.t().contiguous(), _scale_row(s.t().contiguous())
    a = int8_kernels()[0](x, wq, ws).to(x.dtype)
    b = torch.compile(_cast_inside_graph, dynamic=True)(x, wq, ws)
    return {"max_abs": float((a.float() - b.float()).abs().max()), "dtype": str(b.dtype)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--rows", default="256,1024,4096")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--min-sample-s", type=float, default=0.2)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--system-malloc", action="store_true",
                   help="leave glibc's malloc as it is (glta's stages keep freed blocks)")
    args = p.parse_args(argv)
    malloc = "system" if args.system_malloc else str(keep_freed_memory())
    torch.manual_seed(0)
    out = {"what": __doc__.split("\n", 1)[0], "command": " ".join(["python", *sys.argv]),
           "commit": git_commit(), "date": _dt.date.today().isoformat(),
           "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                       "threads": torch.get_num_threads()},
           "torch": torch.__version__, "malloc": malloc, "check": check_outputs(), "results": []}
    for pass_name, shapes in (("forward", FORWARD), ("backward", BACKWARD)):
        for rows in (int(r) for r in args.rows.split(",")):
            times = time_interleaved(variants(shapes, rows), args.repeats, args.min_sample_s)
            flops = sum(2.0 * rows * k * n for k, n in shapes)
            row = {"pass": pass_name, "rows": rows, "shapes": shapes,
                   "median_ms": {v: round(t["median_s"] * 1e3, 3) for v, t in times.items()},
                   "gflops": {v: round(flops / t["median_s"] / 1e9, 1)
                              for v, t in times.items()},
                   "cast_after_over_inside": round(times["cast_after"]["median_s"]
                                                   / times["cast_inside"]["median_s"], 3)}
            out["results"].append(row)
            print(f"{pass_name:8s} rows {rows:5d}: " + "  ".join(
                f"{v} {ms:.2f} ms" for v, ms in row["median_ms"].items())
                + f"  after/inside {row['cast_after_over_inside']:.2f}x", flush=True)
    if args.json:
        atomic_write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
