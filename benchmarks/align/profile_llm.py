"""Where the frozen LLM's time goes: torch.profiler over one forward + backward of SmolLM2.

The backward runs into ``inputs_embeds`` only (frozen weights), as in stage 3; the loss
reads the last ``--slots`` positions. Prints the top operators by self CPU time.

    uv run python benchmarks/align/profile_llm.py --batch 8 --tokens 160 [--dtype bfloat16]
"""

from __future__ import annotations

import argparse

import torch
from glta_align.llm import load_llm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=160)
    ap.add_argument("--slots", type=int, default=10)
    ap.add_argument("--rows", type=int, default=18, help="operators to print")
    ap.add_argument("--dtype", default="float32", help="float32, bfloat16 or int8")
    ap.add_argument("--attention", default="auto", choices=("auto", "sdpa", "eager"),
                    help="attention kernels of the step (auto: the probe's choice)")
    args = ap.parse_args()
    torch.manual_seed(0)
    llm = load_llm(dtype=args.dtype, attention=args.attention)
    print(f"precision {llm.precision}, attention {llm.train_attention}")
    model = llm.causal_lm.model
    x = (torch.randn(args.batch, args.tokens, llm.hidden_size) * 0.02).to(llm.dtype)

    def step() -> None:
        xe = x.clone().requires_grad_()
        with llm.attention_scope():
            out = model(inputs_embeds=xe).last_hidden_state
        out[:, -args.slots:].sum().backward()

    step()  # warm-up
    with torch.profiler.profile() as prof:
        step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
