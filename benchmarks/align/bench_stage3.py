"""Stage-3 speed: GLTA's path vs a plain implementation, in the same process.

Measures training samples/s (forward + backward into the soft tokens + Adam step on the user
projector and head) and inference users/s (no grad, slot hidden states + first-k ranking) on
MovieLens-100K (embedded copy) with SmolLM2-135M-Instruct.

- ours: ``--dtype`` (default "auto": on a CPU the fastest of fp32, bf16 and int8 products
  in the frozen linear layers (see ``glta_align.int8``) in the precision probe), length-
  bucketed batches, the instruction prefix's KV cache computed once and expanded to the
  batch, the decoder stack only (no vocabulary logits), no weight gradients.
- plain: fp32, random batches padded to the longest prompt, the prefix re-run in every
  sample, the full causal LM called with ``output_hidden_states=True`` (vocabulary logits
  computed and discarded), no weight gradients either (frozen weights in both), unless
  ``--plain-weight-grads``: then the plain path leaves ``requires_grad`` on the LLM's weights
  (frozen only by keeping them out of the optimiser), the reading of "plain" in which
  skipping frozen-weight gradients is one of our optimisations.

Both use identical prompts (graph embeddings random, profile/prediction texts built from the
users' item genres instead of LLM generation, so that their lengths vary as in real runs).

Training also reports achieved GFLOP/s (``train_gflops_*``): the model FLOPs of the steps
timed (``glta_align.flops.step_flops``, the counter stages 2 and 3 use) over their time. The
count follows what each path computes: ours the padded body behind the cached prefix, plain
the prefix in every padded row (and, with ``--plain-weight-grads``, the weight gradients);
the vocabulary logits plain computes and discards are not counted (no ``lm_head``).

    uv run python benchmarks/align/bench_stage3.py --train-batches 6 --infer-users 96

``--compare-attention`` adds ``ours_alt`` (ours with the other attention kernels, sdpa or
eager), interleaved with the two, and ``attention_train_speedup`` / ``attention_infer_speedup``
(ours over ours_alt). Inference passes record no gradients, so both run sdpa there
(``FrozenLLM.attention_scope``): ``attention_infer_speedup`` shows the run's noise.

``--compare-prompt-order`` adds ``ours_text_first``: ours on the same samples and batches with
``prompt_order = "text-first"`` (the profile and prediction text before the soft tokens, run
without gradient by the runner's text head, recomputed in every call as in a first epoch),
and ``ours_text_first_cached``: the same with the stage's key/value cache filled by an untimed
pass over the same users first (a later epoch, or ranking after training), all interleaved;
``text_first[_cached]_train_speedup`` / ``..._infer_speedup`` are each over ours.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time

import numpy as np
import torch
from glta_align._common import rng_for
from glta_align.config import UserItemConfig
from glta_align.flops import BatchShape, DecoderCost, step_flops
from glta_align.item_text import slot_vector
from glta_align.llm import _linear_shapes, _time_products, load_llm
from glta_align.projector import NodeProjector
from glta_align.prompts import USER_ITEM_SYSTEM, USER_ITEM_TEMPLATE, USER_ITEM_USER, build_layout
from glta_align.splice import SoftPromptRunner, bucket_batches
from glta_align.user_item import (
    UserPrompter,
    eval_sample,
    train_sample,
    user_item_layout,
    user_item_runner,
)
from glta_gllm import GLLMHead
from glta_graph.data import load_dataset
from profile_gen import cpu_model, git_commit  # this folder's benchmark helpers


def fake_profiles(data, users, rng):
    """Profile / prediction text from genre words of each user's items (length varies)."""
    out = {}
    for u in users:
        items = data.user_items("train", u)
        words = []
        for i in items[: int(rng.integers(1, 8))]:
            words += data.item_text[i].split("Genres:")[-1].replace(",", "").split()
        out[int(u)] = {"profile": ", ".join(words[: int(rng.integers(3, 16))]),
                       "predict": " ".join(words[: int(rng.integers(2, 10))])}
    return out


def plain_hidden(llm, prefix, seqs, table):
    """The plain path: prefix in every row, pad right to the longest, full causal LM."""
    dev = llm.device
    L = max(len(prefix) + len(s) for s in seqs)
    pad = llm.tokenizer.pad_token_id
    ids = torch.full((len(seqs), L), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, s in enumerate(seqs):
        ids[b, : len(prefix) + len(s)] = torch.tensor(prefix + s.ids)
        mask[b, : len(prefix) + len(s)] = 1
    emb = llm.embed(ids.to(dev))
    rows, bi, pi = [], [], []
    for b, s in enumerate(seqs):
        for j, r in enumerate(s.soft):
            if r >= 0:
                rows.append(r)
                bi.append(b)
                pi.append(len(prefix) + j)
    emb = emb.index_put((torch.tensor(bi), torch.tensor(pi)), table.to(emb.dtype)[rows])
    out = llm.causal_lm(inputs_embeds=emb, attention_mask=mask.to(dev),
                        output_hidden_states=True)
    hidden = out.hidden_states[-1]
    read = torch.tensor([[len(prefix) + r for r in s.read] for s in seqs])
    return hidden.gather(1, read.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])).float()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-batches", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--infer-users", type=int, default=96)
    ap.add_argument("--infer-batch", type=int, default=32)
    ap.add_argument("--num-slots", type=int, default=10)
    ap.add_argument("--history-items", type=int, default=10)
    ap.add_argument("--dtype", default="auto",
                    help="dtype of 'ours', e.g. float32 or int8 (plain is always float32)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--plain-weight-grads", action="store_true",
                    help="plain path computes (and discards) the LLM weight gradients")
    ap.add_argument("--attention", default="auto", choices=("auto", "sdpa", "eager"),
                    help="attention kernels of 'ours' (plain: transformers' default sdpa)")
    ap.add_argument("--compare-attention", action="store_true",
                    help="add 'ours_alt': ours with the other attention kernels, interleaved")
    ap.add_argument("--compare-prompt-order", action="store_true",
                    help="add 'ours_text_first': ours with prompt_order text-first, interleaved")
    args = ap.parse_args()
    torch.manual_seed(0)
    data = load_dataset("ml-100k")
    cfg = UserItemConfig(num_slots=args.num_slots, history_items=args.history_items,
                         batch_size=args.batch_size)
    rng = rng_for(0, 99)
    profiles = fake_profiles(data, range(data.num_users), rng)
    results = {"command": "python " + " ".join(sys.argv), "commit": git_commit(),
               "cpu": cpu_model(), "host": platform.processor() or platform.machine(),
               "threads": torch.get_num_threads(), "torch": torch.__version__,
               "load_before": round(os.getloadavg()[0], 2)}
    llm_plain = load_llm(dtype="float32", attention="sdpa")
    llm_ours = load_llm(dtype=args.dtype, attention=args.attention)
    llm_alt = None
    if args.compare_attention:
        other = "sdpa" if llm_ours.train_attention == "eager" else "eager"
        llm_alt = load_llm(dtype=args.dtype, attention=other)
        results["attention_alt"] = llm_alt.train_attention
    results["attention_ours"] = llm_ours.train_attention
    results["attention_probe"] = llm_ours.attention_probe
    if args.plain_weight_grads:
        # frozen only by the optimiser (it never sees these parameters); autograd still
        # computes their gradients, which are dropped after every step below
        llm_plain.causal_lm.requires_grad_(True)
    results["plain_weight_grads"] = bool(args.plain_weight_grads)
    results["ours_dtype"] = llm_ours.precision  # "int8" also when "auto" picked it
    d = 64
    user_emb, item_emb = torch.randn(data.num_users, d), torch.randn(data.num_items, d)
    H = llm_plain.hidden_size
    layout = build_layout(llm_plain.tokenizer, USER_ITEM_SYSTEM, USER_ITEM_USER,
                          USER_ITEM_TEMPLATE, style="auto")
    prompter = UserPrompter(layout, data, llm_plain.tokenizer, cfg, profiles)
    users = np.arange(data.num_users)
    samples = [train_sample(data, cfg, int(u), 0) for u in users]
    n_train = args.train_batches * args.batch_size
    pool = samples[: n_train * 4]
    # ours: bucketed batches drawn from a 4x larger pool, as an epoch would be
    ours_batches = bucket_batches([prompter.length(s) for s in pool], args.batch_size,
                                  np.random.default_rng(0))[: args.train_batches]
    perm = np.random.default_rng(0).permutation(len(pool))
    plain_batches = [[int(i) for i in perm[j:j + args.batch_size]]
                     for j in range(0, n_train, args.batch_size)]
    results["prefix_tokens"] = len(layout.prefix_ids)

    def setup(llm):
        uproj = NodeProjector(d, H).to(llm.device)
        iproj = NodeProjector(d, H).requires_grad_(False)
        head = GLLMHead(H, data.num_items)
        opt = torch.optim.Adam([*uproj.parameters(), *head.parameters()], lr=1e-3)
        return uproj, iproj, head, opt

    # the slot placeholder is computed once per LLM, as stage 3 does (a cast and mean of the
    # whole token-embedding table, which once ran inside every timed step)
    slots = {id(llm): slot_vector(llm) for llm in (llm_ours, llm_plain, llm_alt) if llm}

    def table(llm, uproj, iproj, us, its):
        return torch.cat([slots[id(llm)][None], uproj(user_emb[us]), iproj(item_emb[its])])

    costs = {id(llm): DecoderCost.of(llm) for llm in (llm_ours, llm_plain, llm_alt) if llm}

    def train_step(llm, state, b, fn, name):
        uproj, iproj, head, opt = state
        batch = [pool[i] for i in b]
        seqs, us, its = prompters.get(name, prompter).build(batch)
        t0 = time.perf_counter()
        hid = fn(seqs, table(llm, uproj, iproj, us, its))
        targets = [t for s in batch for t in s.targets]
        tg = torch.tensor(targets)
        loss = head.loss(hid.reshape(-1, H), tg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if args.plain_weight_grads and llm is llm_plain:
            llm.causal_lm.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - t0
        if name in runners:
            shape = runners[name].last_shape
        else:  # the prefix in every row, padded to the longest
            shape = BatchShape(len(seqs), max(len(prefix) + len(s) for s in seqs))
        flops = step_flops(costs[id(llm)], head, shape, rows=sum(t >= 0 for t in targets),
                           query_rows=len(targets))
        return seconds, len(batch), flops

    runner = SoftPromptRunner(llm_ours, layout.prefix_ids, reuse_prefix=True)
    prefix = list(layout.prefix_ids)
    paths = {
        "ours": (llm_ours, ours_batches, lambda s, t: runner.hidden_states(s, t)),
        "plain": (llm_plain, plain_batches, lambda s, t: plain_hidden(llm_plain, prefix, s, t)),
    }
    runners, prompters = {"ours": runner}, {}
    if llm_alt is not None:
        runner_alt = SoftPromptRunner(llm_alt, layout.prefix_ids, reuse_prefix=True)
        runners["ours_alt"] = runner_alt
        paths["ours_alt"] = (llm_alt, ours_batches, lambda s, t: runner_alt.hidden_states(s, t))
    if args.compare_prompt_order:
        tf_cfg = dataclasses.replace(cfg, prompt_order="text-first")
        tf_layout = user_item_layout(llm_ours.tokenizer, tf_cfg)
        prompters["ours_text_first"] = UserPrompter(tf_layout, data, llm_ours.tokenizer, tf_cfg,
                                                    profiles)
        prompters["ours_text_first_cached"] = prompters["ours_text_first"]
        runner_tf = user_item_runner(llm_ours, tf_layout, tf_cfg)
        runner_tf.head_cache_mb = 0  # every call computes the text (as a first epoch does)
        runner_tfc = user_item_runner(llm_ours, tf_layout, tf_cfg)  # the stage's own cache
        runners["ours_text_first"] = runner_tf
        runners["ours_text_first_cached"] = runner_tfc
        paths["ours_text_first"] = (llm_ours, ours_batches,
                                    lambda s, t: runner_tf.hidden_states(s, t))
        paths["ours_text_first_cached"] = (llm_ours, ours_batches,
                                           lambda s, t: runner_tfc.hidden_states(s, t))
        # an untimed first epoch fills the cache with the texts of every user timed below
        warm = [pool[i] for b in ours_batches for i in b]
        warm += [eval_sample(data, cfg, int(u)) for u in range(args.infer_users)]
        with torch.no_grad():
            for j in range(0, len(warm), 32):
                seqs, us, its = prompters["ours_text_first"].build(warm[j:j + 32])
                runner_tfc.hidden_states(seqs, torch.zeros(1 + len(us) + len(its), H))
    states = {k: setup(v[0]) for k, v in paths.items()}
    spent = dict.fromkeys(paths, 0.0)
    seen = dict.fromkeys(paths, 0)
    flops = dict.fromkeys(paths, 0.0)
    # interleaved (ours, plain, ours, plain, ...) so that load from other processes hits
    # both alike; the first batch of each is a warm-up
    for n in range(args.train_batches):
        for name, (llm, batches, fn) in paths.items():
            dt, count, step = train_step(llm, states[name], batches[n], fn, name)
            if n:
                spent[name] += dt
                seen[name] += count
                flops[name] += step
    for name in paths:
        results[f"train_samples_per_s_{name}"] = seen[name] / spent[name]
        results[f"train_gflops_{name}"] = flops[name] / spent[name] / 1e9

    ev = [eval_sample(data, cfg, int(u)) for u in users[: args.infer_users]]
    orders = {"ours": np.argsort([prompter.length(s) for s in ev], kind="stable"),
              "plain": np.arange(len(ev))}
    orders["ours_alt"] = orders["ours_text_first"] = orders["ours"]
    orders["ours_text_first_cached"] = orders["ours"]
    spent = dict.fromkeys(paths, 0.0)
    with torch.no_grad():
        for name, (llm, _, fn) in paths.items():  # warm-up
            seqs, us, its = prompters.get(name, prompter).build(ev[:2])
            fn(seqs, table(llm, *states[name][:2], us, its))
        for j in range(0, len(ev), args.infer_batch):
            for name, (llm, _, fn) in paths.items():
                uproj, iproj, head, _ = states[name]
                batch = [ev[i] for i in orders[name][j:j + args.infer_batch]]
                t0 = time.perf_counter()
                seqs, us, its = prompters.get(name, prompter).build(batch)
                hid = fn(seqs, table(llm, uproj, iproj, us, its))
                head.recommend(hid.reshape(-1, H), 20)
                spent[name] += time.perf_counter() - t0
    for name in paths:
        results[f"infer_users_per_s_{name}"] = len(ev) / spent[name]
    # the GEMM rate of the LLM's own layer shapes in each path's precision, measured in this
    # run the way dtype="auto"'s probe measures it (256 rows, best of 3)
    shapes = _linear_shapes(llm_ours.causal_lm.config)
    for name, precision in (("ours", llm_ours.precision), ("plain", "float32")):
        rate = _time_products(shapes, precision, 256, 3)
        results[f"gemm_gflops_{name}"] = rate
        results[f"train_gemm_fraction_{name}"] = results[f"train_gflops_{name}"] / rate
    if llm_alt is not None:  # ours over ours with the other attention kernels
        results["train_gemm_fraction_ours_alt"] = (results["train_gflops_ours_alt"]
                                                   / results["gemm_gflops_ours"])
        results["attention_train_speedup"] = (results["train_samples_per_s_ours"]
                                              / results["train_samples_per_s_ours_alt"])
        results["attention_infer_speedup"] = (results["infer_users_per_s_ours"]
                                              / results["infer_users_per_s_ours_alt"])
    for tf in ("text_first", "text_first_cached"):  # ours with the text first over ours
        if f"ours_{tf}" not in paths:
            continue
        results[f"train_gemm_fraction_ours_{tf}"] = (
            results[f"train_gflops_ours_{tf}"] / results["gemm_gflops_ours"])
        for kind, key in (("train", "train_samples_per_s"), ("infer", "infer_users_per_s")):
            results[f"{tf}_{kind}_speedup"] = (results[f"{key}_ours_{tf}"]
                                               / results[f"{key}_ours"])
    results["train_speedup"] = (results["train_samples_per_s_ours"]
                                / results["train_samples_per_s_plain"])
    results["infer_speedup"] = (results["infer_users_per_s_ours"]
                                / results["infer_users_per_s_plain"])
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
