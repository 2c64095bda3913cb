"""``glta pipeline``: the whole method end to end, resumable."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from glta_cli.commands._common import Quiet, handle_errors, out_console


def pipeline(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML config file (see glta config show).")
    ] = None,
    preset: Annotated[
        str | None, typer.Option("--preset", "-p", help="default, smoke or paper.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Run directory (default: the config's run.out)."),
    ] = None,
    restart: Annotated[
        bool,
        typer.Option(
            "--restart",
            help="Start over; the old run is kept as RUN.previous until the new one completes.",
        ),
    ] = False,
    ablation: Annotated[
        str | None,
        typer.Option(
            "--ablation",
            help="One of the paper's ablations: full, no-ia, no-ua, no-pf, no-pd, fl, ar, "
            "plain-head, random-llm (same as --run.ablation; see glta config show).",
        ),
    ] = None,
    baselines: Annotated[
        str | None,
        typer.Option(help="Text baselines to add, e.g. lightgcn+,rlmrec-con (= --eval.baselines)."),
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Prepare data, train LightGCN, align items and users with the LLM, evaluate both.

    Each stage writes its artifact into the run directory; rerunning the same command
    resumes (finished stages are skipped, a killed stage continues from its checkpoint).
    Any config key can be overridden with --section.key value (see `glta config show`).
    With no options, a run directory that already has resolved-config.toml resumes with it.

    Examples: glta pipeline --preset smoke --out runs/smoke --graph.epochs 20

    glta pipeline --out runs/no-pf --ablation no-pf
    """
    from glta_cli.pipeline import resolve_pipeline_config, run_pipeline
    from glta_cli.progress import RichProgress
    from glta_cli.report import metrics_table

    extra = list(ctx.args)
    if ablation is not None:
        extra += ["--run.ablation", ablation]
    if baselines is not None:
        extra += ["--eval.baselines", baselines]
    resolved = resolve_pipeline_config(preset, config, extra, out)
    command = "glta " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else None
    with RichProgress(disable=quiet) as bar:
        result = run_pipeline(
            resolved,
            restart=restart,
            progress=bar,
            log=lambda msg: bar.console.print(Text(msg, style="dim"), soft_wrap=True),
            command=command,
        )
    console = out_console()
    console.print(metrics_table(result.metrics, result.split, result.train_seconds))
    if result.skipped:
        console.print(f"[dim]already done, skipped: {', '.join(result.skipped)}[/dim]")
    written = ", ".join(p.name for p in result.files.values())
    console.print(f"run directory {result.run_dir}: metrics.json, {written}")


def register(app: typer.Typer) -> None:
    """Add ``pipeline`` to ``app``."""
    app.command(
        "pipeline",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(handle_errors(pipeline))
