"""Wall time, CPU time and peak memory of one `glta pipeline` run, written as one JSON file.

Runs ``python -m glta_cli.app pipeline ARGS`` (this environment's glta) in a child process
with its output going to a log (so the pipeline prints its plain progress lines), then
records: wall seconds, user/system CPU seconds and peak RSS of the child (``getrusage``),
the load average before and after (a timing is only worth keeping on a quiet machine),
the seconds of every stage (``state/pipeline/stages.json``), stage 3's kept epoch and valid
curve (``user_projector/config.json``), the profile-text time (the last
``[profiles]`` progress line), the report's lines on the kept stage-3 epoch, the prediction
mode and GFLOP/s, and every metric of ``metrics.json``. ``--cache DIR`` runs the pipeline with
``XDG_CACHE_HOME=DIR`` (a fresh DIR puts the precision and attention probes inside the
time). The output folder must not exist yet: the timing is of a run from scratch, and
nothing a user wrote is reused or replaced.

    cd benchmarks/align && uv run python time_pipeline.py --out /tmp/glta-time/default \\
        --cache /tmp/glta-time/cache --json results/pipeline_default_ml100k_cpu_X.json
    uv run python time_pipeline.py --out /tmp/glta-time/smoke --json OUT -- --preset smoke
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from glta_gllm.checkpoint import atomic_write_json
from profile_gen import cpu_model, git_commit, isa_limits  # this folder's benchmark helpers

REPORT_PATTERNS = ("Stage 3 kept", "prediction mode", "GFLOP/s", "attention")


def cpu_flags() -> list[str]:
    """The matrix-unit flags of this CPU that decide GLTA's precision (amx_bf16, avx512_vnni...)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    wanted = ("amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_vnni", "avx_vnni")
    return [f for f in wanted if f in flags]


def profile_seconds(log: str) -> float | None:
    """Elapsed seconds of the last ``[profiles] ... elapsed M:SS`` progress line, if any."""
    hits = re.findall(r"\[profiles\][^\n]*?elapsed (\d+(?::\d+)+)", log)
    if not hits:
        return None
    total = 0
    for part in hits[-1].split(":"):
        total = total * 60 + int(part)
    return float(total)


def code_commit(python: str = sys.executable) -> str:
    """The commit of the checkout whose ``glta_cli`` ``python`` imports (the code a timing
    runs: another worktree's environment runs that worktree's code), ``+dirty`` with local
    changes; this script's own checkout when it cannot be told."""
    try:
        where = subprocess.run([python, "-c", "import glta_cli; print(glta_cli.__file__)"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return git_commit()
    commit = git_commit(Path(where).parent)
    return commit if commit != "unknown" else git_commit()


def read_run(run: Path) -> dict:
    """Stage seconds, metrics and the report's timing lines of a finished run directory."""
    out: dict = {}
    stages = run / "state" / "pipeline" / "stages.json"
    if stages.exists():
        recorded = json.loads(stages.read_text())["stages"]
        out["stage_seconds"] = {k: v.get("seconds") for k, v in recorded.items()}
    metrics = run / "metrics.json"
    if metrics.exists():
        out["metrics"] = json.loads(metrics.read_text())
    stage3 = run / "user_projector" / "config.json"
    if stage3.exists():
        cfg = json.loads(stage3.read_text())
        out["stage3"] = {k: cfg.get(k) for k in ("best_epoch", "epochs_run", "llm_attention",
                                                  "train_seconds", "timed_steps", "model_flops",
                                                  "achieved_gflops",
                                                  "llm_precision", "text_cache")}
        out["stage3"]["valid_history"] = cfg.get("valid_history")
    report = run / "report.md"
    if report.exists():
        out["report_lines"] = [line.strip() for line in report.read_text().splitlines()
                               if any(p in line for p in REPORT_PATTERNS)
                               and not line.startswith("|")]
    return out


def main(argv: list[str] | None = None) -> int:
    """Time one pipeline run; returns the pipeline's exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="the run directory (must not exist)")
    ap.add_argument("--cache", default=None, help="XDG_CACHE_HOME for the run (probes inside)")
    ap.add_argument("--json", required=True, help="where to write the result")
    ap.add_argument("--note", default="", help="free text kept with the result")
    ap.add_argument("--from-run", default=None, metavar="RUN",
                    help="copy the finished run RUN into --out without its stage 3 and "
                         "evaluation, and time the pipeline from stage 3 on (stages 1-2 and "
                         "the profile text reused)")
    ap.add_argument("pipeline_args", nargs="*", help="after --: extra `glta pipeline` options")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        ap.error(f"--out {out} exists: the timing is of a fresh run, pick a new folder")
    if args.from_run is not None:
        source = Path(args.from_run)
        if not (source / "state" / "pipeline" / "stages.json").is_file():
            ap.error(f"--from-run {source}: not a pipeline run directory "
                     "(state/pipeline/stages.json missing)")
        from ablations import forget_stage3  # this folder's grid driver

        shutil.copytree(source, out, ignore=shutil.ignore_patterns("*.previous"))
        forget_stage3(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if args.cache:
        env["XDG_CACHE_HOME"] = str(Path(args.cache).resolve())
    cmd = [sys.executable, "-m", "glta_cli.app", "pipeline", "--out", str(out),
           *args.pipeline_args]
    log_path = out.parent / f"{out.name}.log"
    commit = code_commit()  # the code that runs (read before: HEAD may move meanwhile)
    load_before = list(os.getloadavg())
    started = time.perf_counter()
    with log_path.open("w", encoding="utf-8") as log:
        rc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    text = log_path.read_text(encoding="utf-8", errors="replace")
    result = {
        "what": ("one `glta pipeline` run timed from scratch (fresh run directory)"
                 if args.from_run is None else
                 f"`glta pipeline` timed from stage 3 on, in a copy of {args.from_run} "
                 "without its stage 3 and evaluation")
                + ("; XDG_CACHE_HOME fresh, so the precision and attention probes are inside"
                   if args.cache else ""),
        "command": " ".join(["python", "benchmarks/align/time_pipeline.py",
                             *(argv if argv is not None else sys.argv[1:])]),
        "pipeline_command": " ".join(["glta", *cmd[3:]]),
        "commit": commit,
        "date": dt.date.today().isoformat(),
        "machine": {"cpu": cpu_model(), "flags": cpu_flags(), "cores": os.cpu_count(),
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                    "isa_limits": isa_limits()},
        "load_before": load_before, "load_after": list(os.getloadavg()),
        "note": args.note,
        "returncode": rc,
        "wall_s": round(wall, 1),
        "user_cpu_s": round(usage.ru_utime, 1), "system_cpu_s": round(usage.ru_stime, 1),
        "peak_rss_kb": usage.ru_maxrss, "minor_page_faults": usage.ru_minflt,
        "memory": next((line.strip() for line in text.splitlines()
                        if line.strip().startswith("memory: ")), None),
        "profile_generation_s": profile_seconds(text),
        **read_run(out),
        "log_tail": text.splitlines()[-12:],
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.json, result)
    minutes, seconds = divmod(wall, 60)
    print(f"pipeline exit {rc}: {int(minutes)} min {seconds:.0f} s wall, peak RSS "
          f"{usage.ru_maxrss / 1e6:.2f} GB, load {load_before[0]:.2f} -> "
          f"{result['load_after'][0]:.2f}; {args.json}")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
