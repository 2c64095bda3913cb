"""Attention kernels on the CPU: transformers' eager against sdpa, same run, interleaved.

Two measurements with SmolLM2-135M-Instruct, per precision (``--dtypes``):

- ``train``: one forward + backward of the decoder stack into ``inputs_embeds`` (frozen
  weights, as the soft-token stages run), ``--batch`` rows of ``--tokens`` tokens at the
  scale of real token embeddings; seconds per step for each kernel (best of ``--repeats``
  after a warm-up, the two interleaved) and the cosine of their input gradients.
- ``generate`` (``--gen-users`` > 0): profile-text generation (``glta_align.profiles``'
  batched greedy decoding with the KV cache) for a seeded sample of ML-100K users, each
  kernel twice, interleaved; seconds and how many users got identical texts.

This is what :func:`glta_align.llm.attention_probe` decides from (the probe itself times the
attention functions alone) and why the chosen kernel runs only in passes that record
gradients (``FrozenLLM.attention_scope``).

    uv run python benchmarks/align/attention_ab.py --threads 1 --dtypes bfloat16,float32,int8 \
        --json benchmarks/align/results/attention_ab_cpu.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time

import numpy as np
import torch
from glta_align.config import UserItemConfig
from glta_align.llm import load_llm
from glta_align.profiles import user_prompts
from glta_gllm.checkpoint import atomic_write_json
from glta_graph.data import load_dataset
from profile_gen import cpu_model, git_commit, ours_on  # this folder's benchmark helpers

KERNELS = ("sdpa", "eager")


def train_ab(llm, batch: int, tokens: int, repeats: int) -> dict:
    """Seconds per forward + backward for each kernel and their input-gradient cosine."""
    model = llm.backbone
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(batch, tokens, llm.hidden_size, generator=gen) * 0.135).to(llm.dtype)
    grads, best = {}, dict.fromkeys(KERNELS, float("inf"))
    for rep in range(repeats + 1):
        for kernel in KERNELS:
            llm.train_attention = kernel  # the kernels stage 3's training passes run
            xe = x.clone().requires_grad_()
            t0 = time.perf_counter()
            with llm.attention_scope():
                out = model(inputs_embeds=xe).last_hidden_state
            out[:, -10:].float().sum().backward()
            dt = time.perf_counter() - t0
            if rep:
                best[kernel] = min(best[kernel], dt)
            grads[kernel] = xe.grad.float().flatten()
    llm.train_attention = "sdpa"
    cos = torch.nn.functional.cosine_similarity(grads["eager"], grads["sdpa"], dim=0)
    return {"seconds": {k: round(v, 4) for k, v in best.items()},
            "eager_speedup": best["sdpa"] / best["eager"], "grad_cosine": float(cos)}


def generate_ab(llm, data, users: int, batch: int) -> dict:
    """Seconds of profile generation for each kernel (each twice, interleaved) and how many
    users got identical texts."""
    cfg = UserItemConfig(profile_batch_size=batch)
    sample = sorted(np.random.default_rng(0).choice(data.num_users, size=users,
                                                    replace=False).tolist())
    prompts = user_prompts(data, llm, cfg, sample)
    ours_on(llm, prompts, sample[:2], UserItemConfig(profile_new_tokens=2, profile_batch_size=2))
    config = llm.causal_lm.config
    seconds, texts = {k: [] for k in KERNELS}, {}
    for _ in range(2):
        for kernel in KERNELS:
            config._attn_implementation = kernel
            t0 = time.perf_counter()
            texts[kernel] = ours_on(llm, prompts, sample, cfg)
            seconds[kernel].append(round(time.perf_counter() - t0, 2))
    config._attn_implementation = "sdpa"
    same = sum(texts["eager"][u] == texts["sdpa"][u] for u in sample)
    return {"users": users, "seconds": seconds,
            "eager_speedup": min(seconds["sdpa"]) / min(seconds["eager"]),
            "users_with_identical_texts": same}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtypes", default="bfloat16,float32,int8")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=160)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--gen-users", type=int, default=32, help="0 = no generation A/B")
    ap.add_argument("--gen-batch", type=int, default=32)
    ap.add_argument("--note", default="", help="free text stored with the result (machine load)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    result: dict = {
        "command": " ".join(["python", *sys.argv]), "commit": git_commit(), "cpu": cpu_model(),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "loadavg_start": list(os.getloadavg()), "note": args.note, "dtypes": {},
    }
    data = load_dataset("ml-100k") if args.gen_users else None
    for dtype in args.dtypes.split(","):
        llm = load_llm(dtype=dtype, attention="sdpa")
        entry = {"precision": llm.precision,
                 "train": train_ab(llm, args.batch, args.tokens, args.repeats)}
        print(dtype, "train", json.dumps(entry["train"]), flush=True)
        if args.gen_users:
            entry["generate"] = generate_ab(llm, data, args.gen_users, args.gen_batch)
            print(dtype, "generate", json.dumps(entry["generate"]), flush=True)
        result["dtypes"][dtype] = entry
    result["loadavg_end"] = list(os.getloadavg())
    print(json.dumps(result, indent=1))
    if args.json:
        atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
