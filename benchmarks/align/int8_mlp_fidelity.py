"""How close the int8 LLM with bf16 activations stays to its fp32-activation logits, with the
gated MLP fused into one graph (``Int8GatedMLP``) and run layer by layer.

With bf16 activations (``int8_activation_dtype``) the layer-by-layer MLP rounds the gate/up
output and silu times up to bf16; the fused graph keeps them in float32 and rounds its output
once. Greedy texts are a chaotic measure of that (one flipped token changes every later one),
so this script compares teacher-forced next-token logits instead: the ML-100K profile prompts
of ``--users`` users (seeded sample), one forward each without gradient, in

* ``fp32``: int8 products with fp32 activations (``GLTA_INT8_ACTIVATIONS=float32``), the
  reference;
* ``bf16_fused``: bf16 activations, the gated MLP as one graph (what glta runs);
* ``bf16_layers``: bf16 activations, the gated MLP layer by layer;

and writes, per variant, the mean relative L2 error of the logits against the reference and
the share of positions whose arg-max token agrees with it:

    OMP_NUM_THREADS=2 uv run python benchmarks/align/int8_mlp_fidelity.py \\
        --json benchmarks/align/results/int8_mlp_fidelity_cpu_amd_epyc_2026-12-07.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from glta_align import int8
from glta_align.config import UserItemConfig
from glta_align.llm import load_llm
from glta_align.profiles import user_prompts
from glta_gllm.checkpoint import atomic_write_json
from glta_graph.data import load_dataset
from profile_gen import cpu_model, git_commit  # this folder's benchmark helpers


def _layers(self: int8.Int8GatedMLP, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


@torch.no_grad()
def logits_of(llm, prompts: list[list[int]]) -> list[torch.Tensor]:
    """(tokens, vocab) float32 logits of each prompt, one forward per prompt."""
    return [llm.causal_lm(input_ids=torch.tensor([p])).logits[0].float() for p in prompts]


def compare(ref: list[torch.Tensor], other: list[torch.Tensor]) -> dict[str, float]:
    """Mean relative L2 error and arg-max agreement of ``other`` against ``ref``."""
    rel = [float((o - r).norm() / r.norm()) for o, r in zip(other, ref, strict=True)]
    top1 = [float((o.argmax(-1) == r.argmax(-1)).float().mean())
            for o, r in zip(other, ref, strict=True)]
    return {"rel_l2": round(float(np.mean(rel)), 5),
            "top1_agreement": round(float(np.mean(top1)), 5)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--users", type=int, default=32)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    data = load_dataset("ml-100k")
    users = sorted(np.random.default_rng(0).choice(data.num_users, size=args.users,
                                                   replace=False).tolist())
    cfg = UserItemConfig(profile_items=10, description_tokens=16)
    env = os.environ.get("GLTA_INT8_ACTIVATIONS")
    try:
        os.environ["GLTA_INT8_ACTIVATIONS"] = "float32"
        llm = load_llm(dtype="int8")
        rendered = user_prompts(data, llm, cfg, users)
        prompts = [rendered[u][0] for u in users]
        ref = logits_of(llm, prompts)
        del llm
        os.environ["GLTA_INT8_ACTIVATIONS"] = "bfloat16"
        llm = load_llm(dtype="int8")
    finally:
        if env is None:
            os.environ.pop("GLTA_INT8_ACTIVATIONS", None)
        else:
            os.environ["GLTA_INT8_ACTIVATIONS"] = env
    fused = int8.Int8GatedMLP.forward
    results = {"bf16_fused": compare(ref, logits_of(llm, prompts))}
    int8.Int8GatedMLP.forward = _layers
    try:
        results["bf16_layers"] = compare(ref, logits_of(llm, prompts))
    finally:
        int8.Int8GatedMLP.forward = fused
    out = {"what": __doc__.split("\n", 1)[0].replace("\n", " "),
           "command": " ".join(["python", *sys.argv]), "commit": git_commit(),
           "date": _dt.date.today().isoformat(),
           "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                       "threads": torch.get_num_threads()},
           "torch": torch.__version__, "users": len(users),
           "prompt_tokens_mean": round(float(np.mean([len(q) for q in prompts])), 1),
           "reference": "fp32 activations", "results": results}
    print(json.dumps(results))
    if args.json:
        atomic_write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
