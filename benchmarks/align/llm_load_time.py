"""Seconds to load bf16 SmolLM2 with ``[llm] pointwise = "compiled"`` (its parts compiled
when it loads), each setting in a fresh process, with an empty or a warm inductor cache.

Settings: ``regions`` (the default: decoder layers as two compiled regions, element-wise
kernels), ``elementwise`` (``GLTA_POINTWISE_LAYERS=0``), ``eager`` (nothing compiled). The
precision and attention probes are read from ``--xdg`` (a cache a pipeline run filled), so
the figures are loading and compiling alone.

    uv run python benchmarks/align/llm_load_time.py --xdg CACHE --json /tmp/load.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from profile_gen import cpu_model, git_commit, write_result  # this folder's benchmark helpers

_CHILD = ("import time; t0 = time.perf_counter(); from glta_align.llm import load_llm; "
          "llm = load_llm(dtype='bfloat16', pointwise='{pw}'); "
          "print(time.perf_counter() - t0, type(llm.backbone.layers[0]).__name__)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--xdg", required=True, help="XDG_CACHE_HOME holding the probes' results")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="glta-load-") as scratch:
        for name, pw, env, cache in (("regions", "compiled", {}, "r"),
                                     ("regions, warm cache", "compiled", {}, "r"),
                                     ("elementwise", "compiled",
                                      {"GLTA_POINTWISE_LAYERS": "0"}, "e"),
                                     ("eager", "eager", {}, "n")):
            child_env = {**os.environ, **env, "XDG_CACHE_HOME": args.xdg,
                         "TORCHINDUCTOR_CACHE_DIR": os.path.join(scratch, cache)}
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", _CHILD.format(pw=pw)], env=child_env,
                                 capture_output=True, text=True, check=True).stdout.split()
            rows[name] = {"load_s": float(out[-2]), "process_s": time.perf_counter() - t0,
                          "layer_class": out[-1]}
            print(name, rows[name], flush=True)
    out = {"command": "python benchmarks/align/llm_load_time.py " + " ".join(sys.argv[1:]),
           "commit": git_commit(), "cpu": cpu_model(), "date": time.strftime("%Y-%m-%d"),
           "threads": os.environ.get("OMP_NUM_THREADS"), "results": rows}
    write_result(out, args.json)


if __name__ == "__main__":
    main()
