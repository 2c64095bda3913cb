"""torch.compile of the frozen LLM on stage 3's call: speed and gradient fidelity, same run.

Stage 3 calls the decoder with ``inputs_embeds``, an attention mask, position ids and the
instruction prefix's KV cache (a ``DynamicCache``) and backpropagates into the inputs. This
script times that forward + backward (batch ``--batch`` x lengths ``--lengths``, read
positions = the last ``--slots``) eagerly and under ``torch.compile(backbone,
dynamic=True)``, the two interleaved round by round so machine load hits them alike (best of
``--repeats`` rounds over all lengths), and compares both with an fp32 eager reference
(cosine of the output and of the input gradient at one length). Compile time is the first
call per length.

    uv run python benchmarks/align/compile_ab.py --dtype bfloat16 --json OUT.json
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import time

import torch
from glta_align.llm import load_llm
from glta_align.splice import _cache_kwarg, _output_cache
from profile_gen import cpu_model, git_commit  # this folder's benchmark helpers


def prefix_kv(backbone: torch.nn.Module, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer (keys, values) of a fixed ``length``-token prefix (ids 100...), batch 1."""
    with torch.no_grad():
        out = backbone(input_ids=torch.arange(100, 100 + length)[None], use_cache=True)
    return [(layer.keys.detach(), layer.values.detach()) for layer in _output_cache(out).layers]


def stage3_step(backbone: torch.nn.Module, kv: list[tuple[torch.Tensor, torch.Tensor]],
                x: torch.Tensor, dtype: torch.dtype, slots: int,
                direction: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 3's call: ``x`` (B, L, H) after the cached prefix ``kv``, then backward of the
    last ``slots`` outputs summed (times ``direction`` (B, slots, H) when given).

    Returns:
        ``(output (B, L, H), input gradient (B, L, H))``, both float32.
    """
    from transformers import DynamicCache

    B, L, _ = x.shape
    P = kv[0][0].shape[-2]
    xe = x.to(dtype).clone().requires_grad_()
    cache = DynamicCache(ddp_cache_data=[(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1))
                                         for k, v in kv])
    out = backbone(inputs_embeds=xe, attention_mask=torch.ones(B, P + L, dtype=torch.long),
                   position_ids=torch.arange(P, P + L)[None].expand(B, -1), use_cache=True,
                   **{_cache_kwarg(backbone): cache}).last_hidden_state
    picked = out[:, -slots:].float()
    (picked if direction is None else picked * direction).sum().backward()
    return out.detach().float(), xe.grad.float()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lengths", default="120,136,152,168")
    ap.add_argument("--prefix", type=int, default=22, help="cached prefix tokens")
    ap.add_argument("--slots", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    ref, llm = load_llm(dtype="float32"), load_llm(dtype=args.dtype)
    P = args.prefix

    def step(model, kv, x, dtype):
        return stage3_step(model, kv, x, dtype, args.slots)

    kv_ref, kv = prefix_kv(ref.backbone, P), prefix_kv(llm.backbone, P)
    pdt = next(llm.backbone.parameters()).dtype
    lengths = [int(v) for v in args.lengths.split(",")]
    xs = {L: torch.randn(args.batch, L, llm.hidden_size) * 0.02 for L in lengths}
    compiled = torch.compile(copy.deepcopy(llm.backbone), dynamic=True)
    first = {}
    for L, x in xs.items():
        t = time.perf_counter()
        step(compiled, kv, x, pdt)
        first[L] = time.perf_counter() - t
    def cos(a, b):
        return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), 0))

    x = xs[lengths[len(lengths) // 2]]
    o0, g0 = step(ref.backbone, kv_ref, x, torch.float32)
    o1, g1 = step(llm.backbone, kv, x, pdt)
    o2, g2 = step(compiled, kv, x, pdt)
    times = {"eager": [], "compiled": []}
    for _ in range(args.repeats):
        for name, model in (("eager", llm.backbone), ("compiled", compiled)):
            t = time.perf_counter()
            for x in xs.values():
                step(model, kv, x, pdt)
            times[name].append(time.perf_counter() - t)
    res = {
        "command": "python benchmarks/align/compile_ab.py " + " ".join(
            f"--{k} {v}" for k, v in vars(args).items() if k != "json" and v is not None),
        "commit": git_commit(), "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "load_at_end": os.getloadavg()[0], "dtype": args.dtype,
        "first_call_s": first, "eager_s": min(times["eager"]),
        "compiled_s": min(times["compiled"]),
        "speedup_eager_over_compiled": min(times["eager"]) / min(times["compiled"]),
        "vs_fp32_eager": {"eager_output_cos": cos(o0, o1), "eager_grad_cos": cos(g0, g1),
                          "compiled_output_cos": cos(o0, o2), "compiled_grad_cos": cos(g0, g2)},
    }
    print(json.dumps(res, indent=2))
    if args.json:
        from glta_gllm.checkpoint import atomic_write_json

        atomic_write_json(args.json, res)


if __name__ == "__main__":
    main()
