"""How often the attention probe picks each kernel: single calls against 50 ms windows.

``[llm] attention = "auto"`` times transformers' eager and sdpa attention and the grouped eager
kernel once per machine (:func:`glta_align.llm.attention_probe`). A call is about 5 ms on a
2-core CPU, as short as a scheduler's time slice, so on a machine that other work shares, one
preempted call decides. This script loads SmolLM2 in ``--dtype`` and runs the probe
``--probes`` times per setting, alternating the settings probe by probe (so load that drifts
meets both alike): ``single`` (each measurement one call, the probe before windows) and
``window`` (each measurement repeats the call for at least
:data:`glta_align.llm.PROBE_WINDOW_S`). Retries after a busy attempt are off for both, so
each probe is one attempt: what is compared is the measurement, under whatever load the
machine has while it runs (recorded: 1-minute load and the other processes' CPU share).

    cd benchmarks/align && uv run python probe_under_load.py --probes 10 \\
        --note "two GLTA runs at 1 thread each share the 2 cores" --json results/X.json
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import os
import platform
import sys
import time

from profile_gen import cpu_model, git_commit, write_result  # this folder's helpers

SETTINGS = {"single": 0.0, "window": None}  # None: the library's PROBE_WINDOW_S


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--probes", type=int, default=10, help="probes per setting")
    ap.add_argument("--dtype", default="bfloat16", help="the LLM's weights (float32, bfloat16)")
    ap.add_argument("--note", default="", help="free text kept with the result")
    ap.add_argument("--json", default=None, help="where to write the result")
    args = ap.parse_args(argv)
    if args.probes < 1:
        ap.error(f"--probes {args.probes}: must be >= 1")
    import torch
    from glta_align import llm as llm_mod

    llm = llm_mod.load_llm(None, dtype=args.dtype, attention="sdpa")
    window_s = llm_mod.PROBE_WINDOW_S
    llm_mod.PROBE_BUSY_RETRIES = 0  # one attempt per probe: the measurement is compared
    probes: list[dict] = []
    picks = {name: collections.Counter() for name in SETTINGS}
    seconds = {name: 0.0 for name in SETTINGS}
    load_before = os.getloadavg()
    for i in range(args.probes):
        for name, window in SETTINGS.items():
            llm_mod.PROBE_WINDOW_S = window_s if window is None else window
            t0 = time.perf_counter()
            got = llm_mod.attention_probe(llm.causal_lm, refresh=True)
            seconds[name] += time.perf_counter() - t0
            picks[name][got["choice"]] += 1
            probes.append({"probe": i, "setting": name, "choice": got["choice"],
                           "ms": got["ms"], "passes": got.get("passes"),
                           "busy_share": got.get("busy_share"),
                           "busy_load": got.get("busy_load")})
            print(f"{i} {name:6s} {got['choice']:13s} {got['ms']} "
                  f"share {got.get('busy_share')}", flush=True)
    result = {
        "what": "attention-probe choices, single calls against windows, retries off",
        "command": "python probe_under_load.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "commit": git_commit(), "date": dt.date.today().isoformat(), "note": args.note,
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                    "threads": torch.get_num_threads()},
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "dtype": args.dtype, "window_s": window_s, "probes_per_setting": args.probes,
        "load_before": load_before, "load_after": os.getloadavg(),
        "picks": {name: dict(c) for name, c in picks.items()},
        "seconds_per_probe": {name: round(s / args.probes, 3) for name, s in seconds.items()},
        "probes": probes,
    }
    write_result(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
