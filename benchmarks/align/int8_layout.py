"""Int8 layers' weight layout and row blocks: before and after, in the same run.

``glta_align.int8.Int8Linear`` keeps its int8 weights column-major (transposed views of
row-major storage) and multiplies inputs of more than ``ROW_BLOCK`` rows block by block.
This script times that (``blocked``) against the earlier way (``whole``: row-major weights,
every input in one product) on the same layers:

* ``layers``: SmolLM2-135M's fused decoder products (q/k/v 576->960, o 576->576, gate/up
  576->3072, down 1536->576) at stage 3's rows (8 x 160 tokens; forward, and forward +
  backward to the input) and at profile text's prefill rows (64 x 165 tokens; forward);
* ``profile_text``: greedy profile/prediction text for ``--users`` ML-100K users with the
  int8 LLM (``benchmarks/align/profile_gen.py``'s path, batch 64), the two layouts
  alternating over ``--rounds``; the texts of both are compared (integer products are exact,
  so they must be identical).

Writes one JSON file (command, commit, CPU model, threads inside):

    uv run python benchmarks/align/int8_layout.py --threads 2 \\
        --json benchmarks/align/results/int8_layout_cpu_amd_epyc_2026-12-05.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import time
from pathlib import Path

import glta_align.int8 as int8
import numpy as np
import profile_gen  # this folder's benchmark helpers: cpu_model, git_commit, ours_on, alternate
import torch
from glta_align.int8 import Int8Linear

WHOLE_ROWS = 1 << 62  # a row block no input reaches: every input in one product


class Layouts:
    """Both layouts of every int8 product under ``module``, switchable in place."""

    def __init__(self, module: torch.nn.Module) -> None:
        layers = {}
        for m in module.modules():
            if isinstance(m, Int8Linear):
                layer = m._group[0].fused if m._group is not None else m
                layers[id(layer)] = layer
        self.layers = list(layers.values())
        self.blocked = [(lay.w_fwd, lay.w_bwd) for lay in self.layers]
        self.whole = [(w.contiguous(), b.contiguous()) for w, b in self.blocked]
        self.row_block = int8.ROW_BLOCK

    def use(self, name: str) -> None:
        """Switch to ``"blocked"`` (today's) or ``"whole"`` (row-major, unblocked)."""
        pairs = self.blocked if name == "blocked" else self.whole
        for lay, (w, b) in zip(self.layers, pairs, strict=True):
            lay.w_fwd, lay.w_bwd = w, b
        int8.ROW_BLOCK = self.row_block if name == "blocked" else WHOLE_ROWS


def _median_time(fn, min_s: float, repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            if time.perf_counter() - t0 >= min_s:
                break
        samples.append((time.perf_counter() - t0) / n)
    return float(np.median(samples))


def time_layers(shapes: list[tuple[int, int]], rows: dict[str, int], repeats: int,
                min_s: float) -> dict:
    """Seconds per call of each (in, out) product in each layout at each row count.

    Returns:
        ``{case: {"rows", "seconds": {"whole": s, "blocked": s}, "speedup": whole/blocked,
        "equal": outputs (and input gradients) identical}}`` with one case per row count
        and pass (``"<name>_fwd"``, and ``"<name>_fwd_bwd"`` for stage 3).
    """
    gen = torch.Generator().manual_seed(0)
    layers = torch.nn.ModuleList(
        Int8Linear(torch.randn(n, k, generator=gen) * k ** -0.5) for k, n in shapes)
    lay = Layouts(layers)
    out: dict = {}
    for name, m in rows.items():
        xs = [torch.randn(m, k, generator=gen) for k, _ in shapes]
        passes = ["fwd", "fwd_bwd"] if name == "stage3" else ["fwd"]
        for p in passes:
            def run(p=p, xs=xs):
                res = []
                for layer, x in zip(layers, xs, strict=True):
                    if p == "fwd":
                        with torch.no_grad():
                            res.append(layer(x))
                    else:
                        xg = x.clone().requires_grad_(True)
                        y = layer(xg)
                        (g,) = torch.autograd.grad(y, xg, torch.ones_like(y))
                        res += [y.detach(), g]
                return res
            secs, results = {}, {}
            for variant in ("whole", "blocked", "whole", "blocked"):  # alternate twice
                lay.use(variant)
                results[variant] = run()
                t = _median_time(run, min_s, repeats)
                secs[variant] = min(t, secs.get(variant, float("inf")))
            lay.use("blocked")
            out[f"{name}_{p}"] = {
                "rows": m, "seconds": secs, "speedup": secs["whole"] / secs["blocked"],
                "equal": all(torch.equal(a, b) for a, b in
                             zip(results["whole"], results["blocked"], strict=True))}
            print(f"{name}_{p}: whole {secs['whole'] * 1e3:.1f} ms, blocked "
                  f"{secs['blocked'] * 1e3:.1f} ms", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--users", type=int, default=128, help="users in the profile-text part")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--min-sample-s", type=float, default=0.2)
    ap.add_argument("--skip-profile-text", action="store_true")
    ap.add_argument("--note", default="")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import transformers

    result: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "commit": profile_gen.git_commit(), "cpu": profile_gen.cpu_model(),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "transformers": transformers.__version__, "row_block": int8.ROW_BLOCK,
        "int8_compiled": int8.int8_kernels()[1],
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "note": args.note, "loadavg_start": list(os.getloadavg()),
    }
    shapes = [(576, 960), (576, 576), (576, 3072), (1536, 576)]
    result["layers"] = time_layers(shapes, {"stage3": 8 * 160, "prefill": 64 * 165},
                                   args.repeats, args.min_sample_s)
    if not args.skip_profile_text:
        from glta_align.config import UserItemConfig
        from glta_align.llm import load_llm
        from glta_align.profiles import user_prompts
        from glta_graph.data import load_dataset

        data = load_dataset("ml-100k")
        llm = load_llm(dtype="int8")
        cfg = UserItemConfig(profile_items=10, description_tokens=16, profile_new_tokens=24,
                             profile_batch_size=64)
        users = sorted(np.random.default_rng(0).choice(data.num_users, size=args.users,
                                                       replace=False).tolist())
        prompts = user_prompts(data, llm, cfg, users)
        lay = Layouts(llm.causal_lm)
        warm = UserItemConfig(profile_new_tokens=2, profile_batch_size=2)
        for v in ("whole", "blocked"):
            lay.use(v)
            profile_gen.ours_on(llm, prompts, users[:2], warm)

        def run(v):
            lay.use(v)
            return profile_gen.ours_on(llm, prompts, users, cfg)

        result["profile_text"] = profile_gen.alternate(
            {"whole": lambda: run("whole"), "blocked": lambda: run("blocked")},
            users, args.rounds)
        lay.use("blocked")
    result["loadavg_end"] = list(os.getloadavg())
    profile_gen.write_result(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
