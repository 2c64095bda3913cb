"""Where a sampled run's time went: shares of py-spy samples by phase and by operator.

Reads py-spy's raw (collapsed-stack) output, one ``frame;frame;... count`` line per stack,
and writes the share of samples per phase of a stage-3 step (the first phase whose function
appears in a stack wins: valid ranking, backward, the forward through the LLM, the loss,
the optimiser step, prompt building, everything else) and, within the training forward, per
innermost Python frame (the operator the time was spent in).

    uvx py-spy record --pid PID --duration 45 --rate 50 --format raw --output RAW.txt
    uv run python benchmarks/align/pyspy_breakdown.py RAW.txt --json OUT.json
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

# (phase, a function name that marks it), checked in this order
PHASES = (("valid ranking", "validate"), ("backward", "backward"),
          ("forward", "hidden_states"), ("loss", "masked_slot_loss"), ("loss", "slot_inputs"),
          ("optimiser", "step"), ("prompt building", "build"))


def read_stacks(path: Path) -> list[tuple[list[str], int]]:
    """``[(function names outermost first, samples)]`` of a py-spy raw file (file and line
    stripped from each frame); malformed lines are named in a ``ValueError``. A line that is
    only a count (samples of a thread with no Python frame, which py-spy writes with an empty
    stack) gives an empty name list."""
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if line.strip().isdigit():
            out.append(([], int(line.strip())))
            continue
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            raise ValueError(f"{path}:{number}: not a 'stack count' line: {line[:80]!r}")
        out.append(([f.split(" (")[0] for f in stack.split(";")], int(count)))
    return out


def phase_of(names: list[str]) -> str:
    """The phase of one stack (``PHASES``; ``"other"`` when none matches)."""
    for phase, marker in PHASES:
        if any(n == marker or n.endswith("." + marker) or n.startswith(marker + " ")
               for n in names):
            return phase
    return "other"


def breakdown(stacks: list[tuple[list[str], int]], top: int = 12) -> dict:
    """``{"samples", "other_threads", "phases": {phase: share}, "forward_ops": {innermost
    frame: share of the training forward's samples}, "ranking_ops": {the same within the
    valid ranking}}`` (shares in 0..1, the ops the ``top`` largest). Samples of other
    threads than the main one (a stack with no Python frame, or one started by
    ``threading``, e.g. tqdm's monitor) are counted apart and left out of ``samples`` and
    the shares."""

    def main_thread(names: list[str]) -> bool:
        return bool(names) and not names[0].startswith("Thread._bootstrap")

    bare = sum(n for names, n in stacks if not main_thread(names))
    stacks = [(names, n) for names, n in stacks if main_thread(names)]
    total = sum(n for _, n in stacks)
    phases: collections.Counter = collections.Counter()
    ops: collections.Counter = collections.Counter()
    ranking_ops: collections.Counter = collections.Counter()
    for names, n in stacks:
        phase = phase_of(names)
        phases[phase] += n
        if phase == "forward":
            ops[names[-1]] += n
        elif phase == "valid ranking":
            ranking_ops[names[-1]] += n
    fwd = phases["forward"] or 1
    rank = phases["valid ranking"] or 1
    return {"samples": total, "other_threads": bare,
            "phases": {k: round(v / total, 4) for k, v in phases.most_common()},
            "forward_ops": {k: round(v / fwd, 4) for k, v in ops.most_common(top)},
            "ranking_ops": {k: round(v / rank, 4) for k, v in ranking_ops.most_common(top)}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("raw", type=Path, help="py-spy --format raw output")
    ap.add_argument("--json", type=Path, help="also write the breakdown here")
    ap.add_argument("--note", default="", help="what was sampled (machine, run, phase)")
    args = ap.parse_args(argv)
    if not args.raw.is_file():
        ap.error(f"no such file: {args.raw}")
    try:
        result = breakdown(read_stacks(args.raw))
    except ValueError as exc:
        ap.error(str(exc))
    print(json.dumps(result, indent=1))
    if args.json:
        from glta_gllm.checkpoint import atomic_write_json

        atomic_write_json(args.json, {
            "command": "python benchmarks/align/pyspy_breakdown.py " + " ".join(
                argv if argv is not None else sys.argv[1:]),
            "source": str(args.raw), "note": args.note, **result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
