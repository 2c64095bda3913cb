"""The precision probe's products in fp32, bf16 and int8, whatever the CPU's flags say.

``dtype="auto"`` (``glta_align.llm.precision_probe``) times only the precisions the CPU's
flags make candidates: bf16 with AVX512-BF16 or AMX, int8 on x86-64. This script times all
three the way the probe does (``_time_products``: one decoder layer's linear shapes of
SmolLM2-135M, ``--rows`` tokens, windows of at least ``PROBE_WINDOW_S``, the candidates
interleaved over ``--repeats`` rounds, each keeping its best), with the flag checks and the
int8 activation rule as this process sees them, so that a run with torch's kernels held to
AVX2 shows what an AVX2 CPU's kernels do:

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \\
        OMP_NUM_THREADS=2 uv run python benchmarks/align/isa_products.py --json OUT.json

Writes one JSON file (``isa_limits``: the limiting variables that were set).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from glta_align import llm as llm_mod
from glta_gllm.checkpoint import atomic_write_json
from profile_gen import cpu_model, git_commit, isa_limits  # this folder's benchmark helpers

# SmolLM2-135M's shape (the default LLM): what the probe reads from its config
SMOLLM2_135M = SimpleNamespace(hidden_size=576, num_attention_heads=9, num_key_value_heads=3,
                               intermediate_size=1536)
PRECISIONS = ("float32", "bfloat16", "int8")


def measure(config: SimpleNamespace, rows: int, repeats: int,
            precisions: tuple[str, ...] = PRECISIONS) -> dict[str, float]:
    """GFLOP/s per precision over ``config``'s linear shapes at ``rows`` tokens, the
    precisions interleaved ``repeats`` times and each keeping its best (the probe's own
    ``_time_candidates``; a precision whose products fail on this CPU is left out)."""
    rates: dict[str, float] = {}
    failed: dict[str, str] = {}  # a precision whose products fail here is left out
    llm_mod._time_candidates(llm_mod._linear_shapes(config), list(precisions), rows, repeats,
                             rates, failed)
    return {p: round(v, 1) for p, v in rates.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    flags = {name: llm_mod._cpu_supports(name) for name in llm_mod._AVX512_CHECKS}
    gflops = measure(SMOLLM2_135M, args.rows, args.repeats)
    out = {"what": __doc__.split("\n", 1)[0],
           "command": " ".join(["python", Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
           "commit": git_commit(), "date": _dt.date.today().isoformat(),
           "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                       "threads": torch.get_num_threads()},
           "isa_limits": isa_limits(), "aten_capability": llm_mod.aten_capability(),
           "torch": torch.__version__, "rows": args.rows, "repeats": args.repeats,
           "flags_as_glta_reads_them": flags,
           "int8_activations": str(llm_mod.int8_activation_dtype()).removeprefix("torch."),
           "gflops": gflops,
           "ratio_to_float32": {k: round(v / gflops["float32"], 2) for k, v in gflops.items()}}
    print(" ".join(f"{k} {v:.1f}" for k, v in gflops.items()) + " GFLOP/s"
          + f" ({out['aten_capability']}, int8 activations {out['int8_activations']})")
    if args.json:
        atomic_write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
