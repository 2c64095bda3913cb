"""Profile text with glibc's malloc as glta sets it (freed blocks kept) against its defaults.

``glta`` calls :func:`glta_graph.malloc.keep_freed_memory` at start-up (``GLTA_MALLOC=system``
keeps glibc's defaults). The setting is process-wide and made once, so each measurement runs
in its own child process: the LLM loaded in ``auto`` precision, ``--subset`` seeded ML-100K
users' profile and prediction texts generated (GLTA's path, ``profile_gen.ours_on``) after a
warm-up batch of 8 users, timed with the child's wall, user and system CPU seconds, minor page
faults and peak RSS. The modes alternate over ``--rounds``; the texts of every child are
compared (the setting only changes where memory comes from, so they must be identical).

    cd benchmarks/align && uv run python malloc_ab.py --subset 128 --rounds 2 \\
        --note "quiet machine" --json results/malloc_profile_text_cpu_X.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import resource
import subprocess
import sys
import time

from profile_gen import cpu_model, git_commit, write_result  # this folder's helpers

MODES = ("keep", "system")


def child(mode: str, subset: int, threads: int) -> dict:
    """One measurement in this process (``mode``: keep or system)."""
    from glta_graph.malloc import keep_freed_memory

    setting = keep_freed_memory(env={"GLTA_MALLOC": mode})  # before any tensor work
    import numpy as np
    import torch
    from glta_align.config import UserItemConfig
    from glta_align.llm import load_llm, quiet_transformers
    from glta_align.profiles import user_prompts
    from glta_graph.data import load_dataset
    from profile_gen import ours_on

    torch.set_num_threads(threads)
    quiet_transformers()
    data = load_dataset("ml-100k")
    llm = load_llm(dtype="auto")
    cfg = UserItemConfig()
    users = sorted(np.random.default_rng(0).choice(data.num_users, size=subset,
                                                   replace=False).tolist())
    prompts = user_prompts(data, llm, cfg, users)
    ours_on(llm, prompts, users[:8], cfg)  # warm-up (compiled graphs, first allocations)
    before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    texts = ours_on(llm, prompts, users, cfg)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF)
    digest = hashlib.sha256(json.dumps(sorted(texts.items())).encode()).hexdigest()
    return {"mode": mode, "applied": setting.applied, "detail": setting.detail,
            "precision": llm.precision, "users": subset, "wall_s": round(wall, 2),
            "user_cpu_s": round(after.ru_utime - before.ru_utime, 2),
            "system_cpu_s": round(after.ru_stime - before.ru_stime, 2),
            "minor_page_faults": after.ru_minflt - before.ru_minflt,
            "peak_rss_mib": round(after.ru_maxrss / 1024), "texts_sha256": digest}


def main(argv: list[str] | None = None) -> int:
    """Alternate the two modes in child processes and write one JSON file."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--subset", type=int, default=128, help="users timed per child")
    ap.add_argument("--rounds", type=int, default=2, help="children per mode, alternating")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--note", default="", help="free text kept with the result (machine load)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", choices=MODES, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.subset, args.threads)))
        return 0
    runs = []
    load_before = list(os.getloadavg())
    for r in range(args.rounds):
        for mode in MODES if r % 2 == 0 else MODES[::-1]:
            out = subprocess.run([sys.executable, __file__, "--child", mode, "--subset",
                                  str(args.subset), "--threads", str(args.threads)],
                                 capture_output=True, text=True, check=True)
            runs.append({"round": r + 1, **json.loads(out.stdout.strip().splitlines()[-1])})
            print(f"round {r + 1} {mode}: {runs[-1]['wall_s']} s", flush=True)
    mean = {m: sum(x["wall_s"] for x in runs if x["mode"] == m) / args.rounds for m in MODES}
    result = {
        "what": "profile text of seeded ML-100K users, glibc malloc as glta sets it (keep) "
                "against its defaults (system), one child process per measurement",
        "command": " ".join(["python", "benchmarks/align/malloc_ab.py",
                             *(argv if argv is not None else sys.argv[1:])]),
        "commit": git_commit(), "date": dt.date.today().isoformat(),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": args.threads},
        "note": args.note, "load_before": load_before, "load_after": list(os.getloadavg()),
        "runs": runs, "mean_wall_s": mean, "speed_keep_vs_system": round(
            mean["system"] / mean["keep"], 3),
        "texts_identical": len({x["texts_sha256"] for x in runs}) == 1,
    }
    write_result(result, args.json)
    return 0 if result["texts_identical"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
