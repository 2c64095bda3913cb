"""Where stage 3's training time goes: torch.profiler over the real stage on a run's inputs.

For a run whose stages 1-2 and profile text have finished, this copies the inputs stage 3
reads into a scratch folder and runs ``glta_align.train_user_item`` with the run's own
stage-3 settings for one epoch over ``--max-users`` training users, without validation (so
only the optimiser steps are profiled; with ``prompt_order = "text-first"`` the users' text
keys/values are computed before the loop, as a later epoch finds them). The training loop
runs under ``torch.profiler`` (CPU activities), and the operators' self time is summed by
kind (:func:`kind_of`): the linear layers' products (``aten::mm``/``addmm``/``_int_mm``), the
attention products (``aten::bmm``/``baddbmm``), fused attention kernels and softmax,
dtype casts and copies, element-wise arithmetic, and the framework's bookkeeping (views,
allocation, autograd's engine). Reported: the stage's own throughput record (model FLOPs /
training time, as ``report.md`` gives it), the GEMM rate of the LLM's layer shapes in the
run's precision measured in the same process afterwards (the probe ``dtype="auto"`` runs, on
256 rows; ``--probe-rows`` measures others too, e.g. the step's own 32 x 27),
the achieved fraction of it, the share of each kind and the top operators.

    uv run python benchmarks/align/profile_stage3.py RUN --max-users 96 --json OUT.json

``--dtype`` runs the LLM in another precision than the run's (``--pointwise`` likewise for
the compiled element-wise parts), e.g. to compare bf16 with int8 on one run's inputs;
``--activations float32|bfloat16`` sets the dtype of an int8 LLM's other weights (norms,
embeddings), and so of its activations, attention and element-wise work
(``GLTA_INT8_ACTIVATIONS``; by default what ``int8_activation_dtype`` picks on this CPU).

The profiler adds a little overhead per operator, so the profiled throughput is a lower
bound of the unprofiled one; the shares are what to read.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# (kind, operator names) checked in this order; anything else is "framework"
KINDS = (
    ("linear products", ("aten::mm", "aten::addmm", "aten::_int_mm", "aten::_weight_int8pack_mm")),
    ("attention products", ("aten::bmm", "aten::baddbmm")),
    ("attention kernels and softmax", ("aten::_softmax", "aten::_softmax_backward_data",
                                       "aten::_safe_softmax", "scaled_dot_product",
                                       "flash_attention")),
    ("casts and copies", ("aten::copy_", "aten::_to_copy", "aten::cat", "aten::clone",
                          "aten::index_select", "aten::index", "aten::gather",
                          "aten::index_put_", "aten::_index_put_impl_", "aten::scatter")),
    ("element-wise", ("aten::mul", "aten::add", "aten::sub", "aten::div", "aten::pow",
                      "aten::silu", "aten::silu_backward", "aten::neg", "aten::rsqrt",
                      "aten::sqrt", "aten::mean", "aten::sum", "aten::fill_", "aten::zero_",
                      "aten::where", "aten::addcdiv_", "aten::addcmul_", "aten::lerp_",
                      "aten::exp", "aten::log", "aten::logsumexp", "aten::max", "aten::clamp",
                      "aten::masked_fill", "aten::eq", "aten::ne", "aten::lt", "aten::gt",
                      "aten::nll_loss", "aten::_log_softmax", "aten::threshold",
                      "aten::_foreach", "aten::_fused_rms_norm", "aten::rms_norm")),
    # inductor's code (glta_align.pointwise: the element-wise kernels, or the decoder layers'
    # regions less the products they call, which profile as aten::mm) runs inside
    # "## Call CompiledFxGraph ..." ("cpp_fused_*" with inductor's kernel profiling on); the
    # autograd wrappers around them (CompiledFunction, ...) are framework
    ("compiled element-wise", ("cpp_fused", "CompiledFxGraph")),
)


def kind_of(name: str) -> str:
    """The kind of a profiler event name (see :data:`KINDS`).

    An operator belongs to a kind when its name equals one of the kind's names or starts
    with it followed by ``_`` or ``.`` (``aten::add_``, ``aten::mul.Tensor``,
    ``aten::_foreach_add_``), or, for names without ``aten::``, contains it
    (``scaled_dot_product``). Autograd's wrapper events (``...Backward0``,
    ``autograd::engine::...``) and everything else are ``"framework"``.
    """
    if "Backward" in name or name.startswith("autograd::"):
        return "framework"
    for kind, names in KINDS:
        for op in names:
            if op.startswith("aten::"):
                if name == op or (name.startswith(op) and name[len(op)] in "_."):
                    return kind
            elif op in name:
                return kind
    return "framework"


def breakdown(events: list[tuple[str, float, int]], top: int = 15) -> dict:
    """Self time by kind and the top operators.

    Args:
        events: ``(name, self seconds, calls)`` per operator (the profiler's key averages).
        top: how many operators to list.

    Returns:
        ``{"total_self_s", "kinds": {kind: {"self_s", "share"}}, "top": [{"name", "kind",
        "self_s", "share", "calls"}]}``, kinds in :data:`KINDS` order then ``framework``;
        the shares sum to 1 over the kinds.
    """
    total = sum(s for _, s, _ in events)
    by_kind: dict[str, float] = collections.OrderedDict(
        (k, 0.0) for k in [*(k for k, _ in KINDS), "framework"])
    for name, s, _ in events:
        by_kind[kind_of(name)] += s
    ranked = sorted(events, key=lambda e: -e[1])[:top]
    share = (lambda s: s / total) if total > 0 else (lambda s: 0.0)
    return {"total_self_s": total,
            "kinds": {k: {"self_s": s, "share": share(s)} for k, s in by_kind.items()},
            "top": [{"name": n, "kind": kind_of(n), "self_s": s, "share": share(s),
                     "calls": c} for n, s, c in ranked]}


def rows_list(text: str) -> list[int]:
    """``"256,864"`` -> ``[256, 864]``: the GEMM probe's row counts, each >= 1.

    Raises:
        ValueError: an entry that is not a positive integer.
    """
    out = []
    for part in text.split(","):
        try:
            rows = int(part)
        except ValueError:
            raise ValueError(f"{part.strip()!r} is not a whole number of rows") from None
        if rows < 1:
            raise ValueError(f"{rows} rows: must be >= 1")
        out.append(rows)
    return out


def profiled_config(cfg, max_users: int, batch_size: int | None = None):
    """The run's stage-3 settings for one profiled epoch.

    Args:
        cfg: the run's ``glta_align.UserItemConfig``.
        max_users: training users in the epoch.
        batch_size: instances per optimiser step; ``None`` keeps the run's.

    Returns:
        ``cfg`` with one epoch over ``max_users`` users, no early stopping, and the batch size.
    """
    return dataclasses.replace(cfg, epochs=1, max_users=max_users, patience=None,
                               batch_size=cfg.batch_size if batch_size is None else batch_size)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="a run directory with stages 1-2 finished")
    ap.add_argument("--max-users", type=int, default=96)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--shapes", action="store_true",
                    help="also record input shapes: the top operators by shape (more overhead)")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="instances per optimiser step (default: the run's own)")
    ap.add_argument("--no-profiler", action="store_true",
                    help="time the loop without torch.profiler (throughput only, no shares)")
    ap.add_argument("--probe-rows", default="256",
                    help="rows of the GEMM probe's products (the precision probe's: 256); a "
                         "comma-separated list measures each, the first is the reference")
    ap.add_argument("--pointwise", choices=("auto", "compiled", "eager"), default="auto",
                    help="the LLM's element-wise parts in training (load_llm's pointwise)")
    ap.add_argument("--dtype", default=None,
                    help="the LLM's precision (float32, bfloat16, int8, auto); default: the run's")
    ap.add_argument("--activations", choices=("float32", "bfloat16"), default=None,
                    help="with int8: the dtype of everything but the int8 products (the LLM's "
                         "other weights and so its activations; GLTA_INT8_ACTIVATIONS); "
                         "default: what int8_activation_dtype picks on this CPU")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.shapes and args.no_profiler:
        ap.error("--shapes needs the profiler: drop --no-profiler")
    try:
        probe_rows = rows_list(args.probe_rows)
    except ValueError as exc:
        ap.error(f"--probe-rows {args.probe_rows!r}: {exc}")
    if not (args.run / "resolved-config.toml").is_file():
        print(f"error: {args.run}: not a run directory (no resolved-config.toml)",
              file=sys.stderr)
        return 2

    import torch
    import torch.profiler as tp
    from compile_stage3 import copy_inputs  # this folder's scripts
    from glta_align import load_llm, train_user_item
    from glta_align import user_item as stage3
    from glta_align.llm import _linear_shapes, _time_products
    from glta_cli.config import load_config
    from glta_cli.runs import load_dataset_dir
    from profile_gen import cpu_model, git_commit, isa_limits  # this folder's benchmark helpers

    config = load_config("default", args.run / "resolved-config.toml")
    data = load_dataset_dir(args.run / "dataset")
    cfg = profiled_config(config.user_item, args.max_users, args.batch_size)
    lc = config.llm
    load_before = round(os.getloadavg()[0], 2)
    if args.activations:  # load_llm casts an int8 LLM's other weights to this dtype
        os.environ["GLTA_INT8_ACTIVATIONS"] = args.activations
    llm = load_llm(lc.model_name_or_path, dtype=args.dtype or lc.dtype, device=lc.device,
                   cache_dir=lc.cache_dir, init=lc.init, init_seed=cfg.seed,
                   pointwise=args.pointwise)
    if args.activations and llm.precision != "int8":
        ap.error("--activations applies to an int8 LLM only")
    caught: dict = {}
    run_loop = stage3.run_loop

    def profiled_loop(**kwargs):  # the optimiser steps only, not the set-up before them
        profiler = (contextlib.nullcontext() if args.no_profiler else
                    tp.profile(activities=[tp.ProfilerActivity.CPU], record_shapes=args.shapes))
        with profiler as prof:
            t = time.perf_counter()
            result = run_loop(**kwargs)
            caught["seconds"] = time.perf_counter() - t
        caught["events"] = [] if prof is None else [
            (e.key, e.self_cpu_time_total / 1e6, e.count) for e in prof.key_averages()]
        if args.shapes:
            by_shape = sorted(prof.key_averages(group_by_input_shape=True),
                              key=lambda e: -e.self_cpu_time_total)[:args.top]
            caught["top_shapes"] = [{"name": e.key, "input_shapes": str(e.input_shapes),
                                     "self_s": e.self_cpu_time_total / 1e6, "calls": e.count}
                                    for e in by_shape]
        return result

    stage3.run_loop = profiled_loop
    try:
        with tempfile.TemporaryDirectory(prefix="glta-profile-stage3-") as scratch:
            copy_inputs(args.run, Path(scratch))
            res = train_user_item(data, scratch, cfg, llm=llm, resume=False)
    finally:
        stage3.run_loop = run_loop
    by_rows = {rows: _time_products(_linear_shapes(llm.causal_lm.config), llm.precision, rows, 3)
               for rows in probe_rows}
    gemm = by_rows[probe_rows[0]]
    achieved = res.throughput.get("achieved_gflops")
    out = {"command": "python " + " ".join([Path(__file__).name, *sys.argv[1:]]),
           "commit": git_commit(), "date": dt.date.today().isoformat(), "cpu": cpu_model(),
           "isa_limits": isa_limits(), "threads": torch.get_num_threads(),
           "torch": torch.__version__,
           "load_before": load_before, "load_after": round(os.getloadavg()[0], 2),
           "run": str(args.run), "max_users": args.max_users, "batch_size": cfg.batch_size,
           "profiled": not args.no_profiler, "precision": llm.precision,
           "activations": llm.dtype_name,
           "train_attention": llm.train_attention, "pointwise": llm.pointwise,
           "prompt_order": cfg.prompt_order,
           "residual": cfg.residual, "loop_seconds": caught["seconds"],
           "throughput": res.throughput, "gemm_gflops": gemm, "probe_rows": probe_rows[0],
           "gemm_gflops_by_rows": {str(r): g for r, g in by_rows.items()},
           "gemm_fraction": achieved / gemm if achieved and gemm else None,
           **breakdown(caught["events"], args.top),
           **({"top_shapes": caught["top_shapes"]} if args.shapes else {})}
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
