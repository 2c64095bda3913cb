"""The frozen LLM's cost and fidelity per dtype: SmolLM2 forward, forward + backward.

For each ``--dtypes`` entry (first = reference, normally float32; ``DTYPE:POINTWISE``, e.g.
``bfloat16:compiled``, also sets ``load_llm``'s ``pointwise``): seconds per forward
(no grad) and per forward + backward into ``inputs_embeds`` (the loss reads the last
``--slots`` positions, as stage 3 does), best of ``--repeats`` rounds, the dtypes
interleaved round by round so that machine load hits them alike. Fidelity against the
reference on real text (``--text``, repeated to the batch): cosine of the last hidden
states, agreement of the next-token argmax, cosine of the input gradient.

    uv run python benchmarks/align/llm_step.py --dtypes float32,int8
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F
from glta_align.llm import load_llm
from profile_gen import cpu_model, git_commit  # this folder's benchmark helpers

_TEXT = ("The user has watched Star Wars, Toy Story, Fargo and The Godfather. They enjoy "
         "science fiction, crime and animated comedy, and tend to rate older classics highly. "
         "Recommend movies this user will watch next, taking their taste for strong plots, "
         "memorable characters and clever dialogue into account.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtypes", default="float32,int8")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=160)
    ap.add_argument("--slots", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--text", default=_TEXT)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    torch.manual_seed(0)
    names = args.dtypes.split(",")
    llms = {n: load_llm(dtype=n.partition(":")[0], pointwise=n.partition(":")[2] or "auto")
            for n in names}
    ref = names[0]
    x = torch.randn(args.batch, args.tokens, llms[ref].hidden_size) * 0.02

    def fwd_bwd(llm, inputs):
        # in the model's dtype and with its training attention kernel, as stage 3 runs it
        xe = inputs.to(llm.dtype).clone().requires_grad_()
        with llm.attention_scope():
            out = llm.backbone(inputs_embeds=xe).last_hidden_state
        out[:, -args.slots:].float().sum().backward()
        return out.detach().float(), xe.grad.float()

    def fwd(llm):
        with torch.no_grad():
            llm.backbone(inputs_embeds=x.to(llm.dtype))

    res: dict[str, dict[str, float]] = {n: {"fwd_bwd_s": float("inf"), "fwd_s": float("inf")}
                                        for n in names}
    for n in names:  # warm-up (and int8 compilation)
        fwd_bwd(llms[n], x)
        fwd(llms[n])
    for _ in range(args.repeats):
        for n in names:
            t0 = time.perf_counter()
            fwd_bwd(llms[n], x)
            t1 = time.perf_counter()
            fwd(llms[n])
            t2 = time.perf_counter()
            res[n]["fwd_bwd_s"] = min(res[n]["fwd_bwd_s"], t1 - t0)
            res[n]["fwd_s"] = min(res[n]["fwd_s"], t2 - t1)

    ids = llms[ref].tokenizer([args.text] * args.batch, return_tensors="pt").input_ids
    emb = llms[ref].embed(ids).detach()
    h_ref, g_ref = fwd_bwd(llms[ref], emb)
    with torch.no_grad():
        tok_ref = llms[ref].causal_lm(input_ids=ids).logits.argmax(-1)
    for n in names:
        h, g = fwd_bwd(llms[n], emb)
        with torch.no_grad():
            tok = llms[n].causal_lm(input_ids=ids).logits.argmax(-1)
        res[n].update(
            speedup_fwd_bwd=res[ref]["fwd_bwd_s"] / res[n]["fwd_bwd_s"],
            speedup_fwd=res[ref]["fwd_s"] / res[n]["fwd_s"],
            hidden_cos_mean=float(F.cosine_similarity(h, h_ref, dim=-1).mean()),
            hidden_cos_min=float(F.cosine_similarity(h, h_ref, dim=-1).min()),
            next_token_agreement=float((tok == tok_ref).float().mean()),
            input_grad_cos=float(F.cosine_similarity(g.flatten(), g_ref.flatten(), dim=0)),
        )
    out = {"command": "python benchmarks/align/llm_step.py " + " ".join(sys.argv[1:]),
           "commit": git_commit(), "cpu": cpu_model(),
           "attention": {n: llms[n].train_attention for n in names},
           "pointwise": {n: llms[n].pointwise for n in names},
           "threads": torch.get_num_threads(), "torch": torch.__version__,
           "batch": args.batch, "tokens": args.tokens, "text_tokens": int(ids.shape[1]),
           "results": res}
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
