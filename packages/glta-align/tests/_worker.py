"""Subprocess entry for kill/resume and torchrun tests: ``python _worker.py STAGE RUN KILL_AT``.

Builds the toy dataset and the tiny Llama deterministically, runs one stage, and SIGKILLs
itself right after progress step ``KILL_AT`` (0 = never), like a crash mid-training.

Stage ``item_text_union BATCH``: stage 2 on 8 instances in unbucketed batches of ``BATCH``;
each rank then writes its trainable modules' state to ``RUN/modules_rank{RANK}.pt``.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from align_testutil import make_run, toy_data

import glta_align.item_text as item_text_module
from glta_align import ItemTextConfig, UserItemConfig, load_tokenizer, tiny_llm
from glta_align.item_text import train_item_text
from glta_align.profiles import generate_profiles
from glta_align.user_item import train_user_item


def main() -> None:
    stage, run, kill_at = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(1)
    data = toy_data()
    if not (run / "graph").is_dir():
        make_run(run, data)
    llm = tiny_llm(load_tokenizer(), seed=0)

    def progress(event):
        if kill_at and event.kind == "step" and event.step >= kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    if stage == "item_text":
        train_item_text(data, run, ItemTextConfig(epochs=2, batch_size=2, items_per_instance=3,
                                                  save_every=1), llm=llm, progress=progress)
    elif stage == "item_text_union":
        loop = item_text_module.run_loop

        def dumping(**kwargs):
            out = loop(**kwargs)
            rank = os.environ.get("RANK", "0")
            torch.save({n: m.state_dict() for n, m in kwargs["modules"].items()},
                       run / f"modules_rank{rank}.pt")
            return out

        item_text_module.run_loop = dumping
        train_item_text(data, run, ItemTextConfig(
            epochs=2, batch_size=int(sys.argv[4]), items_per_instance=3, max_instances=8,
            bucket=False), llm=llm, progress=progress)
    elif stage == "user_item":
        train_user_item(data, run, UserItemConfig(
            epochs=2, batch_size=4, num_slots=3, save_every=1, use_profile=False,
            use_predict=False, train_item_projector=True), llm=llm, progress=progress)
    elif stage == "profiles":
        generate_profiles(data, run, llm, UserItemConfig(profile_batch_size=4,
                                                         profile_new_tokens=3),
                          progress=progress)
    else:
        raise SystemExit(f"unknown stage {stage}")


if __name__ == "__main__":
    main()
