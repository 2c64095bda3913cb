"""How close stage 3's input gradient in bf16 / int8 is to fp32's, by input scale and loss.

Stage 3 backpropagates through the frozen LLM into the soft tokens, so the precision of the
LLM's backward decides how well the projectors learn. This script runs stage 3's exact call
(``inputs_embeds`` after the instruction prefix's KV cache, a ``DynamicCache``, backward into
the inputs; batch ``--batch`` x ``--length`` tokens, loss on the last ``--slots`` positions) in
fp32 and in each precision of ``--dtypes``, on the same inputs, and reports the cosine of the
outputs and of the input gradients against fp32 (whole batch flattened, as
``compile_ab.py`` does) for:

- ``--scales``: ``token`` = inputs with the LLM's token-embedding RMS (stage 3's projectors
  are initialised to produce that scale), ``run`` = the RMS of the item soft tokens of a
  finished run's stage 2 (``--run RUN``: its item projector applied to its LightGCN item
  embeddings), or a number (e.g. ``0.02``, the scale ``compile_ab.py`` uses);
- ``--losses``: ``sum`` (the sum of the slot outputs, ``compile_ab.py``'s) or ``random`` (a
  fixed random linear functional of the slot outputs, like a head's gradient).

``--attention sdpa,eager`` compares each precision's gradient under both attention kernels
(and fp32 eager against the fp32 sdpa reference).

    uv run python benchmarks/align/grad_fidelity.py --json OUT.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os

import torch
from compile_ab import prefix_kv, stage3_step  # this folder's benchmark helpers
from glta_align._common import embedding_rms
from glta_align.llm import load_llm
from profile_gen import cpu_model, git_commit


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), 0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtypes", default="bfloat16,int8")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=144)
    ap.add_argument("--prefix", type=int, default=22, help="cached prefix tokens")
    ap.add_argument("--slots", type=int, default=10)
    ap.add_argument("--scales", default="token,0.02")
    ap.add_argument("--losses", default="random,sum")
    ap.add_argument("--run", default=None, help="a run whose stage-2 item tokens give the "
                    "'run' scale")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--attention", default="sdpa",
                    help="attention kernels of the compared precisions, e.g. sdpa,eager "
                    "(the fp32 reference runs sdpa)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    models = {"float32": load_llm(dtype="float32", attention="sdpa")}
    for name in args.dtypes.split(","):
        models[name] = load_llm(dtype=name, attention="sdpa")
    ref = models["float32"]
    B, L, P, S, H = args.batch, args.length, args.prefix, args.slots, ref.hidden_size
    tok_rms = embedding_rms(ref.causal_lm.get_input_embeddings().weight)
    kvs = {name: prefix_kv(m.backbone, P) for name, m in models.items()}

    def step(name, x, direction, attention="sdpa"):
        llm = models[name]
        llm.train_attention = attention
        with llm.attention_scope():  # the kernels stage 3's training passes would run
            return stage3_step(llm.backbone, kvs[name], x, llm.dtype, S, direction)

    run_rms = None
    if args.run:
        from glta_align.projector import NodeProjector
        from glta_align.user_item import stage2_outputs
        from glta_graph import load_graph_embeddings

        _, item_emb = load_graph_embeddings(args.run, None)
        proj = NodeProjector.from_pretrained(stage2_outputs(args.run) / "item_projector")
        with torch.no_grad():
            run_rms = float(proj(item_emb.float()).pow(2).mean().sqrt())
    rows = []
    for scale in args.scales.split(","):
        if scale == "run" and run_rms is None:
            ap.error("--scales run needs --run RUN")
        std = {"token": tok_rms, "run": run_rms}.get(scale) or float(scale)
        x = torch.randn(B, L, H) * std
        for loss in args.losses.split(","):
            direction = torch.randn(B, S, H) if loss == "random" else torch.ones(B, S, H)
            o0, g0 = step("float32", x, direction)
            for name in models:
                for attention in args.attention.split(","):
                    if name == "float32" and attention == "sdpa":
                        continue
                    o1, g1 = step(name, x, direction, attention)
                    rows.append({"dtype": name, "attention": attention, "input_rms": std,
                                 "scale": scale, "loss": loss, "output_cos": _cos(o0, o1),
                                 "input_grad_cos": _cos(g0, g1),
                                 "input_grad_rel_l2": float((g1 - g0).norm() / g0.norm())})
                    print(json.dumps(rows[-1]), flush=True)
    res = {
        "command": "python benchmarks/align/grad_fidelity.py " + " ".join(
            f"--{k} {v}" for k, v in vars(args).items() if k != "json" and v is not None),
        "commit": git_commit(), "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "load_at_end": os.getloadavg()[0], "token_embedding_rms": tok_rms,
        "run_item_token_rms": run_rms, "rows": rows,
    }
    if args.json:
        from glta_gllm.checkpoint import atomic_write_json

        atomic_write_json(args.json, res)


if __name__ == "__main__":
    main()
