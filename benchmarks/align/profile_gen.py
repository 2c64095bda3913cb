"""Profile/prediction text generation on MovieLens-100K: GLTA's path vs the earlier one.

``--compare-profile-prompts paper,shared`` times ``generate_profiles`` with each
``[user_item] profile_prompt`` (the descriptions run once per user with ``shared``).
``--compare-mlp`` (int8) times it with the gated MLPs layer by layer and as one compiled
graph (``glta_align.int8.Int8GatedMLP``).
``--compare-attention`` times it with transformers' sdpa attention and the LLM's own
(grouped-query keys/values read in place, ``glta_align.llm.grouped_sdpa_attention``).

GLTA's path (``glta_align.profiles``): one kind of prompt per batch, the shared instruction
prefix run once and its key/value cache reused, bodies left-padded after it, keys/values
written into preallocated buffers, finished rows dropped. The baseline is the implementation
before it: ``transformers``' ``generate`` on both prompts of 16 users per batch, left-padded
to the longest full prompt. Both use the same loaded LLM (``--dtype``, default ``auto``).

Same-run ratio: on a subset of users (``--subset``, a seeded sample), GLTA's path, then the
baseline, then GLTA's path again (load from other processes hits both alike); then every
user (``--users``, default all) with GLTA's path through ``generate_profiles`` (a fresh
run directory), with a plain progress line per batch. Writes one JSON file.

    uv run python benchmarks/align/profile_gen.py --threads 2 \
        --json benchmarks/align/results/profile_gen_cpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from glta_align.config import UserItemConfig
from glta_align.llm import ISA_VARIABLES, load_llm, quiet_transformers
from glta_align.profiles import (
    common_prefix_length,
    generate_profiles,
    greedy_generate,
    user_prompts,
)
from glta_gllm.checkpoint import atomic_write_json
from glta_graph.data import load_dataset


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def isa_limits() -> dict[str, str]:
    """The ``glta_align.llm.ISA_VARIABLES`` (the variables that hold torch's kernels below
    what the CPU has) set in this process's environment (``{}`` when torch's kernels use
    everything the CPU has)."""
    return {k: os.environ[k] for k in ISA_VARIABLES if os.environ.get(k)}


def git_commit(root: Path | None = None) -> str:
    """HEAD of the repository at ``root`` (default: the one this script is in), ``+dirty``
    with local changes; ``"unknown"`` when git cannot tell."""
    root = Path(__file__).resolve().parents[2] if root is None else Path(root)
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@torch.no_grad()
def baseline_generate(llm, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
    """The earlier path: ``generate`` on left-padded full prompts (greedy)."""
    tok = llm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    L = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), L), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, L - len(p):] = torch.tensor(p)
        mask[b, L - len(p):] = 1
    with quiet_transformers():
        out = llm.causal_lm.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
            do_sample=False, pad_token_id=pad, temperature=None, top_p=None, top_k=None)
    return [" ".join(t.split()) for t in tok.batch_decode(out[:, L:], skip_special_tokens=True)]


def ours_on(llm, prompts: dict, users: list[int], cfg: UserItemConfig) -> dict[int, list[str]]:
    """GLTA's path over ``users``, ``cfg.profile_batch_size`` users per batch."""
    order = sorted(users, key=lambda u: (len(prompts[u][0]) + len(prompts[u][1]), u))
    prefix = [common_prefix_length([prompts[u][k] for u in users]) for k in (0, 1)]
    texts: dict[int, list[str]] = {u: [] for u in users}
    bs = cfg.profile_batch_size
    for k in (0, 1):
        for i in range(0, len(order), bs):
            chunk = order[i:i + bs]
            out = greedy_generate(llm, [prompts[u][k] for u in chunk], cfg.profile_new_tokens,
                                  prefix_len=prefix[k])
            for u, t in zip(chunk, llm.tokenizer.batch_decode(out, skip_special_tokens=True),
                            strict=True):
                texts[u].append(" ".join(t.split()))
    return texts


def baseline_on(llm, prompts: dict, users: list[int], cfg: UserItemConfig,
                batch: int) -> dict[int, list[str]]:
    """The earlier path over ``users``: both prompts of ``batch`` users per generate call."""
    order = sorted(users, key=lambda u: len(prompts[u][0]))
    texts: dict[int, list[str]] = {}
    for i in range(0, len(order), batch):
        chunk = order[i:i + batch]
        out = baseline_generate(llm, [prompts[u][0] for u in chunk]
                                + [prompts[u][1] for u in chunk], cfg.profile_new_tokens)
        for j, u in enumerate(chunk):
            texts[u] = [out[j], out[len(chunk) + j]]
    return texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--batch-size", type=int, default=64, help="users per batch (ours)")
    ap.add_argument("--baseline-batch", type=int, default=16, help="users per batch (baseline)")
    ap.add_argument("--subset", type=int, default=64, help="users in the same-run comparison")
    ap.add_argument("--users", type=int, default=None, help="users in the full run (all)")
    ap.add_argument("--profile-items", type=int, default=10)
    ap.add_argument("--description-tokens", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--compare-batch-sizes", default=None,
                    help="comma-separated users-per-batch values (e.g. 32,64,128): time GLTA's "
                         "path at each on the same --subset users, in alternating rounds, "
                         "instead of the baseline comparison and the full run")
    ap.add_argument("--compare-dtypes", default=None,
                    help="comma-separated precisions (e.g. float32,bfloat16,int8): time GLTA's "
                         "path on --subset users in each, interleaved over --rounds, and stop")
    ap.add_argument("--compare-profile-prompts", default=None,
                    help="e.g. paper,shared: time generate_profiles on --subset users with each "
                    "[user_item] profile_prompt, alternating (texts differ: other prompts)")
    ap.add_argument("--compare-mlp", action="store_true",
                    help="int8 only: time generate_profiles on --subset users with each gated "
                         "MLP run layer by layer and as one compiled graph (Int8GatedMLP), "
                         "alternating over --rounds, and stop")
    ap.add_argument("--compare-attention", action="store_true",
                    help="time the texts with transformers' sdpa and the LLM's grouped sdpa")
    ap.add_argument("--rounds", type=int, default=2,
                    help="rounds of --compare-batch-sizes / --compare-dtypes")
    ap.add_argument("--note", default="", help="free text stored with the result (machine load)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "commit": git_commit(), "cpu": cpu_model(), "isa_limits": isa_limits(),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "note": args.note, "loadavg_start": list(os.getloadavg()),
    }
    import transformers

    result["transformers"] = transformers.__version__
    data = load_dataset("ml-100k")
    if args.compare_dtypes:
        cfg = UserItemConfig(profile_items=args.profile_items,
                             description_tokens=args.description_tokens,
                             profile_new_tokens=args.new_tokens,
                             profile_batch_size=args.batch_size)
        subset = sorted(np.random.default_rng(0).choice(data.num_users, size=args.subset,
                                                        replace=False).tolist())
        result["dtypes"] = compare_dtypes(data, subset, cfg, args.compare_dtypes.split(","),
                                          args.rounds)
        result["loadavg_end"] = list(os.getloadavg())
        write_result(result, args.json)
        return
    t0 = time.perf_counter()
    llm = load_llm(dtype=args.dtype)
    result["llm_load_s"] = time.perf_counter() - t0
    result["precision"] = llm.precision
    cfg = UserItemConfig(profile_items=args.profile_items,
                         description_tokens=args.description_tokens,
                         profile_new_tokens=args.new_tokens, profile_batch_size=args.batch_size)
    result["settings"] = {"profile_items": cfg.profile_items,
                          "description_tokens": cfg.description_tokens,
                          "profile_new_tokens": cfg.profile_new_tokens,
                          "batch_size": args.batch_size, "baseline_batch": args.baseline_batch}
    all_users = list(range(data.num_users))
    subset = sorted(np.random.default_rng(0).choice(data.num_users, size=args.subset,
                                                    replace=False).tolist())
    prompts = user_prompts(data, llm, cfg, all_users)
    lens = [len(p) for u in all_users for p in prompts[u]]
    result["prompt_tokens_mean"] = float(np.mean(lens))
    if args.compare_profile_prompts:
        result["profile_prompts"] = compare_profile_prompts(
            data, llm, subset, cfg, args.compare_profile_prompts.split(","), args.rounds)
        result["loadavg_end"] = list(os.getloadavg())
        write_result(result, args.json)
        return
    if args.compare_mlp:
        result["mlp"] = compare_mlp(data, llm, subset, cfg, args.rounds)
        result["loadavg_end"] = list(os.getloadavg())
        write_result(result, args.json)
        return
    if args.compare_attention:
        result["attention"] = compare_attention(data, llm, subset, cfg, args.rounds)
        result["loadavg_end"] = list(os.getloadavg())
        write_result(result, args.json)
        return
    if args.compare_batch_sizes:
        result["batch_sizes"] = compare_batch_sizes(
            llm, prompts, subset, cfg, [int(b) for b in args.compare_batch_sizes.split(",")],
            args.rounds)
        result["loadavg_end"] = list(os.getloadavg())
        write_result(result, args.json)
        return
    # warm-up (one tiny batch of each)
    ours_on(llm, prompts, subset[:2], UserItemConfig(profile_new_tokens=2, profile_batch_size=2))
    baseline_on(llm, prompts, subset[:2], UserItemConfig(profile_new_tokens=2), 2)
    times, cpu = {}, {}
    t, c = time.perf_counter(), time.process_time()
    ours = ours_on(llm, prompts, subset, cfg)
    times["ours_1"], cpu["ours_1"] = time.perf_counter() - t, time.process_time() - c
    print(f"ours on {len(subset)} users: {times['ours_1']:.1f} s", flush=True)
    t, c = time.perf_counter(), time.process_time()
    base = baseline_on(llm, prompts, subset, cfg, args.baseline_batch)
    times["baseline"], cpu["baseline"] = time.perf_counter() - t, time.process_time() - c
    print(f"baseline on {len(subset)} users: {times['baseline']:.1f} s", flush=True)
    t, c = time.perf_counter(), time.process_time()
    ours_on(llm, prompts, subset, cfg)
    times["ours_2"], cpu["ours_2"] = time.perf_counter() - t, time.process_time() - c
    print(f"ours again: {times['ours_2']:.1f} s", flush=True)
    ours_s = (times["ours_1"] + times["ours_2"]) / 2
    same = sum(ours[u] == base[u] for u in subset)
    result["subset"] = {
        "users": len(subset), "seconds": times, "cpu_seconds": cpu,
        "speedup": times["baseline"] / ours_s,
        "speedup_cpu": cpu["baseline"] / ((cpu["ours_1"] + cpu["ours_2"]) / 2),
        "baseline_s_per_user": times["baseline"] / len(subset),
        "ours_s_per_user": ours_s / len(subset),
        "users_with_identical_texts": same,
    }
    n = args.users or data.num_users
    users = all_users[:n]
    with tempfile.TemporaryDirectory() as run:
        start = time.perf_counter()

        def progress(event) -> None:
            if event.kind in ("step", "end"):
                el = time.perf_counter() - start
                print(f"profiles {event.step}/{event.total} users  {el:.0f} s", flush=True)

        t, c = time.perf_counter(), time.process_time()
        rows = generate_profiles(data, run, llm, cfg, users=users, progress=progress)
        full, cpu = time.perf_counter() - t, time.process_time() - c
    # process CPU seconds: what the run costs its threads, whatever else shares the cores
    result["full"] = {"users": n, "seconds": full, "s_per_user": full / n, "cpu_seconds": cpu,
                      "baseline_estimate_s": result["subset"]["baseline_s_per_user"] * n}
    result["examples"] = {str(u): rows[u] for u in users[:5]}
    result["loadavg_end"] = list(os.getloadavg())
    write_result(result, args.json)


def compare_batch_sizes(llm, prompts: dict, users: list[int], cfg: UserItemConfig,
                        sizes: list[int], rounds: int) -> dict:
    """Seconds of GLTA's path over ``users`` at each users-per-batch value in ``sizes``.

    The sizes alternate within each of ``rounds`` rounds (load from other processes hits
    them alike); the texts of each size are compared with the first size's.

    Returns:
        ``{"users", "rounds", "seconds": {size: [per round]}, "s_per_user": {size: mean},
        "ratio_to_first": {size: mean seconds of first / mean of size},
        "users_with_identical_texts": {size: count vs the first size}}``.
    """
    ours_on(llm, prompts, users[:2], UserItemConfig(profile_new_tokens=2, profile_batch_size=2))
    runs = {str(b): (lambda b=b: ours_on(llm, prompts, users,
                                         dataclasses.replace(cfg, profile_batch_size=b)))
            for b in sizes}
    return alternate(runs, users, rounds, "batch ")


def texts_of(data, llm, cfg: UserItemConfig, users: list[int]) -> dict[int, list[str]]:
    """``{user: [profile, prediction]}`` from :func:`generate_profiles` into a fresh, temporary
    run directory (nothing reused from an earlier call)."""
    with tempfile.TemporaryDirectory() as run:
        rows = generate_profiles(data, run, llm, cfg, users=users)
    return {u: [rows[u]["profile"], rows[u]["predict"]] for u in users}


def compare_profile_prompts(data, llm, users: list[int], cfg: UserItemConfig,
                            layouts: list[str], rounds: int) -> dict:
    """Seconds of :func:`generate_profiles` (a fresh run directory each time) over ``users``
    with each ``profile_prompt`` in ``layouts``, alternating over ``rounds`` rounds.

    Returns:
        :func:`alternate`'s dict, plus ``"prompt_tokens"``: ``{layout: mean prompt tokens run
        per user}`` (paper: both prompts; shared: the common part once plus both endings).
    """
    from glta_align.profiles import _shared_split

    tokens = {}
    for layout in layouts:
        c = dataclasses.replace(cfg, profile_prompt=layout)
        prompts = user_prompts(data, llm, c, users)
        if layout == "shared":
            bodies, ends = _shared_split(llm, c, prompts, users)
            tokens[layout] = float(np.mean([len(bodies[u]) for u in users])
                                   + sum(len(e) for e in ends))
        else:
            tokens[layout] = float(np.mean([len(prompts[u][0]) + len(prompts[u][1])
                                            for u in users]))

    def one(layout: str) -> dict[int, list[str]]:
        return texts_of(data, llm, dataclasses.replace(cfg, profile_prompt=layout), users)

    one(layouts[0])  # warm-up
    runs = {layout: (lambda layout=layout: one(layout)) for layout in layouts}
    return {"prompt_tokens": tokens, **alternate(runs, users, rounds, "profile_prompt ")}


def compare_mlp(data, llm, users: list[int], cfg: UserItemConfig, rounds: int) -> dict:
    """Seconds of :func:`generate_profiles` (a fresh run directory each time) over ``users``
    with the int8 LLM's gated MLPs run layer by layer (``layers``: gate/up product, silu
    times up, down product, as before :class:`~glta_align.int8.Int8GatedMLP`) and as one
    compiled graph (``fused``), alternating over ``rounds`` rounds.

    Returns:
        :func:`alternate`'s dict with ``layers`` first (``ratio_to_first["fused"]``: the
        fused block's speed-up), plus ``"mlps"``: how many gated MLPs the LLM has.

    Raises:
        ValueError: the LLM has no :class:`~glta_align.int8.Int8GatedMLP` (not int8).
    """
    from glta_align import int8

    mlps = sum(isinstance(m, int8.Int8GatedMLP) for m in llm.causal_lm.modules())
    if not mlps:
        raise ValueError(f"--compare-mlp: the LLM ({llm.precision}) has no int8 gated MLP")
    fused = int8.Int8GatedMLP.forward

    def layers(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))

    def one(forward, who: list[int] = users) -> dict[int, list[str]]:
        int8.Int8GatedMLP.forward = forward
        try:
            return texts_of(data, llm, cfg, who)
        finally:
            int8.Int8GatedMLP.forward = fused

    one(layers, users[:4])  # warm-up (compiles both)
    one(fused, users[:4])
    runs = {"layers": lambda: one(layers), "fused": lambda: one(fused)}
    return {"mlps": mlps, **alternate(runs, users, rounds, "mlp ")}


def compare_attention(data, llm, users: list[int], cfg: UserItemConfig, rounds: int) -> dict:
    """Seconds of :func:`generate_profiles` (a fresh run directory each time) over ``users``
    with transformers' sdpa attention (``sdpa``: grouped-query keys/values repeated per head
    under a mask) and the LLM's own (``sdpa_grouped``: read in place,
    :func:`glta_align.llm.grouped_sdpa_attention`), alternating over ``rounds`` rounds.

    Returns:
        :func:`alternate`'s dict with ``sdpa`` first (``ratio_to_first["sdpa_grouped"]``:
        the speed-up; ``users_with_identical_texts``: the same texts, as they must be).
    """
    from glta_align.llm import SDPA_GROUPED

    config = llm.causal_lm.config
    own = config._attn_implementation

    def one(impl: str, who: list[int] = users) -> dict[int, list[str]]:
        config._attn_implementation = impl
        try:
            return texts_of(data, llm, cfg, who)
        finally:
            config._attn_implementation = own

    for impl in ("sdpa", SDPA_GROUPED):  # warm-up
        one(impl, users[:4])
    runs = {"sdpa": lambda: one("sdpa"), SDPA_GROUPED: lambda: one(SDPA_GROUPED)}
    return alternate(runs, users, rounds, "attention ")


def alternate(runs: dict, users: list[int], rounds: int, label: str = "") -> dict:
    """Time each variant of ``runs`` (``{name: () -> {user: texts}}``, the first the
    reference) in alternating order over ``rounds`` rounds (load from other processes hits
    them alike) and compare every variant's texts with the first's.

    Returns:
        ``{"users", "rounds", "seconds": {name: [per round]}, "s_per_user": {name: mean},
        "ratio_to_first": {name: mean seconds of the first / mean of name},
        "users_with_identical_texts": {name: count vs the first}}``.
    """
    secs: dict[str, list[float]] = {name: [] for name in runs}
    texts: dict[str, dict[int, list[str]]] = {}
    for r in range(rounds):
        for name, run in runs.items():
            t = time.perf_counter()
            texts[name] = run()
            secs[name].append(time.perf_counter() - t)
            print(f"round {r + 1}: {label}{name}: {secs[name][-1]:.1f} s on {len(users)} users",
                  flush=True)
    mean = {name: sum(v) / len(v) for name, v in secs.items()}
    first = next(iter(runs))
    return {"users": len(users), "rounds": rounds, "seconds": secs,
            "s_per_user": {name: mean[name] / len(users) for name in runs},
            "ratio_to_first": {name: mean[first] / mean[name] for name in runs},
            "users_with_identical_texts": {
                name: sum(texts[name][u] == texts[first][u] for u in users) for name in runs}}


def compare_dtypes(data, users: list[int], cfg: UserItemConfig, dtypes: list[str],
                   rounds: int, load=load_llm) -> dict:
    """Seconds of GLTA's generation path over ``users`` with the LLM loaded in each of
    ``dtypes`` (``load(dtype=...)``, by default :func:`load_llm`: float32, bfloat16, int8
    or auto).

    The precisions alternate within each of ``rounds`` rounds (load from other processes
    hits them alike); the texts of each are compared with the first precision's.

    Returns:
        ``{"users", "rounds", "precision": {dtype: what loaded}, "seconds": {dtype: [per
        round]}, "s_per_user": {dtype: mean}, "ratio_to_first": {dtype: mean seconds of the
        first / mean of dtype}, "users_with_identical_texts": {dtype: count vs the first}}``.
    """
    llms = {d: load(dtype=d) for d in dtypes}
    prompts = user_prompts(data, llms[dtypes[0]], cfg, users)  # one tokenizer for all
    warm = UserItemConfig(profile_new_tokens=2, profile_batch_size=2)
    for llm in llms.values():  # warm-up (and the int8 layers' compilation)
        ours_on(llm, prompts, users[:2], warm)
    runs = {d: (lambda d=d: ours_on(llms[d], prompts, users, cfg)) for d in dtypes}
    return {"precision": {d: llms[d].precision for d in dtypes},
            **alternate(runs, users, rounds)}


def write_result(result: dict, json_path: str | None) -> None:
    """Print ``result`` and write it atomically to ``json_path`` (when given)."""
    print(json.dumps(result, indent=2))
    if json_path:
        atomic_write_json(json_path, result)


if __name__ == "__main__":
    main()
