"""Stage 2 with the shuffled descriptions run without gradient (``text_head``) against one
whole pass with gradient through every token, on a real run's graph embeddings.

Both variants train stage 2 (``train_item_text``) from the same LightGCN embeddings, the same
settings and seed, on the same instances (``--instances``, default 96: 12 steps of 8), in one
process with one loaded LLM (``dtype="auto"``), alternating over ``--rounds`` rounds (load
from other processes hits both alike). Reported: seconds per variant and round, the ratio
(whole / text_head), and each variant's per-step losses (equal up to float rounding: the
same model computed in two calls).

    uv run python benchmarks/align/stage2_text_head.py RUN --json OUT.json

``RUN`` is a finished pipeline run directory (its ``graph`` and ``dataset`` are read).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from glta_align import item_text
from glta_align.config import ItemTextConfig
from glta_align.llm import load_llm, quiet_transformers
from glta_align.splice import SoftPromptRunner
from glta_cli.config import load_config
from glta_gllm.checkpoint import atomic_write_json
from glta_graph.data import Interactions

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_gen import cpu_model, git_commit


def stage2_seconds(data, run: Path, llm, cfg: ItemTextConfig, text_head: bool
                   ) -> tuple[float, list[float], int]:
    """Train stage 2 into a fresh copy of ``run``'s graph.

    Args:
        data: the run's dataset; run: the finished run directory; llm: the loaded LLM;
        cfg: stage-2 settings; text_head: run the descriptions without gradient (GLTA's
        stage 2) or everything in one pass with gradient (before).

    Returns:
        ``(seconds, per-step losses, steps whose descriptions ran without gradient)``.
    """
    losses: list[float] = []
    split = [0]

    class Runner(SoftPromptRunner):
        def __init__(self, *args, **kwargs) -> None:
            kwargs["text_head"] = text_head
            super().__init__(*args, **kwargs)

        def hidden_states(self, *args, **kwargs):
            out = super().hidden_states(*args, **kwargs)
            split[0] += int(torch.is_grad_enabled() and self.last_shape.head_len > 0)
            return out

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(run / "graph", Path(tmp) / "graph")
        item_text.SoftPromptRunner = Runner  # the class stage 2 builds its runner from
        try:
            start = time.perf_counter()
            item_text.train_item_text(
                data, tmp, cfg, llm=llm, resume=False,
                progress=lambda e: losses.append(e.metrics["loss"])
                if e.kind == "step" and "loss" in e.metrics else None)
            return time.perf_counter() - start, losses, split[0]
        finally:
            item_text.SoftPromptRunner = SoftPromptRunner


def main(argv: list[str] | None = None) -> None:
    """Run the comparison and print (and optionally write) one JSON document."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a finished pipeline run directory")
    ap.add_argument("--instances", type=int, default=96, help="stage-2 instances per variant")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--llm", default=None, help="the LLM (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--note", default="")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_transformers()
    run = Path(args.run)
    data = Interactions.load(run / "dataset")
    llm = load_llm(args.llm, dtype=args.dtype)
    # the run's own stage-2 settings (the default preset's for a run without a saved config),
    # on --instances instances, no state saved in between
    saved = run / "resolved-config.toml"
    base = load_config("default", saved if saved.is_file() else None).item_text
    cfg = dataclasses.replace(base, epochs=1, max_instances=args.instances, save_every=10**6,
                              items_per_instance=min(base.items_per_instance, data.num_items))
    warm = dataclasses.replace(cfg, max_instances=8)
    stage2_seconds(data, run, llm, warm, True)  # warm-up
    stage2_seconds(data, run, llm, warm, False)
    secs: dict[str, list[float]] = {"whole": [], "text_head": []}
    losses: dict[str, list[float]] = {}
    split: dict[str, int] = {}
    for r in range(args.rounds):
        for name in secs:
            s, losses[name], split[name] = stage2_seconds(data, run, llm, cfg,
                                                          name == "text_head")
            secs[name].append(s)
            print(f"round {r + 1}: {name}: {s:.1f} s", flush=True)
    mean = {k: sum(v) / len(v) for k, v in secs.items()}
    result = {
        "command": " ".join(["python", "benchmarks/align/stage2_text_head.py",
                             *(argv if argv is not None else sys.argv[1:])]),
        "commit": git_commit(), "cpu": cpu_model(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "precision": llm.precision, "note": args.note,
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "loadavg": list(os.getloadavg()), "instances": args.instances,
        "settings": cfg.to_dict(),
        "steps": len(losses["whole"]), "seconds": secs,
        "ratio_whole_over_text_head": mean["whole"] / mean["text_head"],
        "losses": losses, "steps_with_descriptions_without_gradient": split,
        "max_abs_loss_diff": max(abs(a - b) for a, b in
                                 zip(losses["whole"], losses["text_head"], strict=True)),
    }
    print(result)
    if args.json:
        atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
