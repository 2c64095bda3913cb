"""``glta evaluate``, ``glta recommend`` and ``glta inspect``: use a run directory."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from glta_cli.commands._common import Quiet, RunDir, handle_errors, out_console, parse_ks

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model", "-m", help="lightgcn, glta, or auto (every model the run has / GLTA first)."
    ),
]


def evaluate(
    run_dir: RunDir,
    k: Annotated[str, typer.Option("--k", help="Cut-offs, comma-separated.")] = "5,10,20",
    split: Annotated[str, typer.Option("--split", help="test or valid.")] = "test",
    model: ModelOpt = "auto",
    by: Annotated[
        str | None,
        typer.Option("--by", help="Break the metrics down: activity (user quintiles of train "
                     "interactions) or popularity (items with <= 5 train interactions vs the "
                     "rest; hit-additive)."),
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Full-ranking P/R/NDCG/HR@K of the run's models; prints a table, saves metrics.json.

    Test ranks every item the user has not seen in train or valid. With --by, prints the
    metrics per user-activity group or per item-popularity bucket instead (nothing saved).

    Examples: glta evaluate runs/default --k 5,10,20 --split test --model lightgcn

    glta evaluate runs/default --by popularity
    """
    from glta_cli.outputs import lock_run, output_kind
    from glta_cli.progress import RichProgress
    from glta_cli.runs import available_models, evaluate_run

    ks = parse_ks(k)
    models = available_models(run_dir) if model == "auto" else [model]
    if not models:
        models = ["lightgcn"]  # evaluate_run raises the clear error
    if by is not None:
        _print_breakdown(run_dir, models, split, ks, by, quiet)
        return
    results = {}
    # metrics.json is rewritten: not while a pipeline writes the same run (its lock)
    lock = lock_run(run_dir) if output_kind(run_dir) == "run" else contextlib.nullcontext()
    with lock, RichProgress(disable=quiet) as bar:
        for name in models:
            results[name] = evaluate_run(run_dir, name, split, ks, progress=bar)
    table = Table(title=f"{run_dir} ({split} split, full ranking)")
    table.add_column("metric")
    for name in results:
        table.add_column(name, justify="right")
    names = [f"{m}@{kk}" for kk in ks for m in ("precision", "recall", "ndcg", "hit_rate")]
    for metric in [*names, "users"]:
        table.add_row(metric, *[f"{results[n].get(metric, float('nan')):.4f}"
                                if metric != "users" else f"{results[n].get(metric, 0):.0f}"
                                for n in results])
    out_console().print(table)
    out_console().print(f"saved {Path(run_dir) / 'metrics.json'}")


def _print_breakdown(run_dir: Path, models: list[str], split: str, ks: tuple[int, ...],
                     by: str, quiet: bool) -> None:
    from glta_cli.evaluation import BY_CHOICES, breakdown_run
    from glta_cli.progress import RichProgress

    if by not in BY_CHOICES:
        raise ValueError(f"--by: {by!r} is not one of {', '.join(BY_CHOICES)}")
    with RichProgress(disable=quiet) as bar:
        result = breakdown_run(run_dir, models, split, ks, by, progress=bar)
    k = 10 if 10 in ks else max(ks)
    shown = [f"ndcg@{k}", f"precision@{k}", f"recall@{k}"]
    shown += [f"share@{k}"] if by == "popularity" else ["users"]
    table = Table(title=f"{run_dir} ({split} split) by {by}")
    table.add_column("bucket")
    table.add_column("model")
    for name in shown:
        table.add_column(name, justify="right")
    for label in result[models[0]]:
        for name in models:
            values = result[name].get(label, {})
            table.add_row(label, name, *[f"{values.get(m, float('nan')):.4f}" if m != "users"
                                         else f"{values.get(m, 0):.0f}" for m in shown])
    out_console().print(table)


def recommend(
    run_dir: RunDir,
    users: Annotated[
        str, typer.Option("--users", "-u", help="`all` or comma-separated ORIGINAL user ids.")
    ] = "all",
    k: Annotated[int, typer.Option("--k", help="Items per user.")] = 10,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="CSV file (user,item,rank,score).")
    ] = None,
    model: ModelOpt = "auto",
) -> None:
    """Top-K unseen items per user with the run's ORIGINAL ids (GLTA when trained).

    Items the user has in train or valid are never recommended. Without --out the CSV
    goes to stdout. --out names a file (an existing file of that name is replaced); a
    folder is refused.

    Example: glta recommend runs/default --users 1,42 --k 10 --out recs.csv
    """
    from glta_cli.outputs import check_output_file
    from glta_cli.runs import recommend_run, write_recommendations

    if out is not None:
        check_output_file(out, inputs=[run_dir])
    used, rows = recommend_run(run_dir, users, k, model=model)
    if out is None:
        typer.echo("user,item,rank,score")
        for user, item, rank, score in rows:
            typer.echo(f"{user},{item},{rank},{score:.6g}")
        return
    write_recommendations(rows, out)
    n_users = len({r[0] for r in rows})
    typer.echo(f"wrote {len(rows)} recommendations for {n_users} users ({used}) to {out}", err=True)


def inspect(
    run_dir: RunDir,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Summarise a run: artifacts, dataset fingerprints, configuration and metrics.

    Example: glta inspect runs/default --json
    """
    from glta_cli.runs import inspect_run

    info = inspect_run(run_dir)
    if as_json:
        typer.echo(json.dumps(info, indent=2, sort_keys=True))
        return
    console = out_console()
    ds = info["dataset"]
    if ds:
        inter = ds.get("interactions", {})
        console.print(
            f"[bold]dataset[/bold] {ds.get('name')}  fingerprint {ds.get('fingerprint')}  "
            f"{ds.get('users')} users, {ds.get('items')} items, "
            + ", ".join(f"{k} {v}" for k, v in inter.items())
        )
    else:
        console.print("[bold]dataset[/bold] (none)")
    table = Table(title="artifacts")
    for col in ("artifact", "fingerprint", "matches dataset", "files"):
        table.add_column(col)
    for name, entry in info["artifacts"].items():
        match = entry.get("matches_dataset")
        table.add_row(
            name,
            str(entry.get("fingerprint", entry.get("error", "-"))),
            {True: "[green]yes[/green]", False: "[red]NO[/red]"}.get(match, "-"),
            ", ".join(entry["files"]),
        )
    console.print(table)
    console.print(f"[bold]models[/bold] {', '.join(info['models']) or '(none trained)'}")
    llm_line = _llm_precision_line(info["artifacts"])
    if llm_line:
        console.print(llm_line, markup=False, highlight=False)
    from glta_cli.report import attention_text

    attention = attention_text((info["artifacts"].get("user_projector") or {}).get("config")
                               or {})
    if attention:
        console.print(attention, markup=False, highlight=False)
    for line in _speed_lines(info["artifacts"], Path(run_dir)):
        console.print(line, markup=False, highlight=False)
    if info["stages"]:
        _print_stages(console, info["stages"])
    if info["state"]:
        console.print(f"[bold]resumable state[/bold] {', '.join(info['state'])}")
    if info["metrics"]:
        _print_metrics(console, info["metrics"])
    if info["config"]:
        console.print("[bold]configuration[/bold] (resolved-config.toml)")
        console.print(info["config"], markup=False, highlight=False)


def _llm_precision_line(artifacts: dict[str, Any]) -> str | None:
    """``"LLM precision bfloat16 (probe, GFLOP/s: float32 333, bfloat16 1961)"`` from
    ``user_projector/config.json`` (``llm_precision`` and ``llm_precision_probe``)."""
    from glta_cli.pipeline import precision_text

    cfg = (artifacts.get("user_projector") or {}).get("config") or {}
    precision = precision_text(cfg)
    if not precision:
        return None
    line = f"LLM precision {precision}"
    probe = cfg.get("llm_precision_probe")
    if isinstance(probe, dict):
        figures = ", ".join(f"{k} {v:.0f}" for k, v in (probe.get("gflops") or {}).items()
                            if isinstance(v, (int, float)))
        how = {"probe": "measured", "cache": "measured earlier", "flags": "CPU flags"}.get(
            probe.get("source"), str(probe.get("source")))
        line += f" ({how}" + (f"; GFLOP/s: {figures}" if figures else "") + ")"
    return line


def _speed_lines(artifacts: dict[str, Any], run_dir: Path) -> list[str]:
    """Stages 2 and 3's achieved GFLOP/s (:func:`glta_cli.report.throughput_line`), from
    ``item_text/item_projector/config.json`` and ``user_projector/config.json``."""
    from glta_cli.evaluation import stage2_speed
    from glta_cli.report import throughput_line

    stage3 = (artifacts.get("user_projector") or {}).get("config") or {}
    lines = [throughput_line(stage2_speed(run_dir), "Stage 2"),
             throughput_line(stage3, "Stage 3")]
    return [line for line in lines if line]


def _print_stages(console: Any, stages: dict[str, Any]) -> None:
    """Pipeline stages in pipeline order (dataset, graph, item_text, user_item, evaluate)."""
    from glta_cli.pipeline import STAGES

    order = sorted(stages, key=lambda n: (STAGES.index(n) if n in STAGES else len(STAGES), n))
    done = sum(1 for e in stages.values() if isinstance(e, dict) and e.get("done"))
    table = Table(title=f"pipeline stages done: {done} of {len(stages)}", title_justify="left")
    table.add_column("stage")
    table.add_column("status")
    table.add_column("seconds", justify="right")
    for name in order:
        entry = stages[name] if isinstance(stages[name], dict) else {}
        seconds = entry.get("seconds")
        table.add_row(name, "done" if entry.get("done") else "not done",
                      f"{seconds:.0f}" if isinstance(seconds, (int, float)) else "-")
    console.print(table)


def _print_metrics(console: Any, metrics: dict[str, Any]) -> None:
    """metrics.json with one row per metric and one column per (model, split).

    Wide enough for 80 columns with up to five (model, split) columns; with more, one row
    per (metric, model, split) instead.
    """
    from glta_cli.runs import metric_rows

    columns, rows = metric_rows(metrics)
    if not columns:
        return

    def cell(v: float | int | None) -> str:
        if v is None:
            return "-"
        return f"{v:.4f}" if isinstance(v, float) and not float(v).is_integer() else f"{v:g}"

    width = max([len(name) for name, _ in rows] + [6])
    if width + 3 + len(columns) * 11 <= 80:
        table = Table(title="metrics.json", title_justify="left")
        table.add_column("metric")
        for model, split in columns:
            table.add_column(f"{model}\n{split}", justify="right")
        for name, cells in rows:
            table.add_row(name, *[cell(v) for v in cells])
    else:
        table = Table(title="metrics.json", title_justify="left")
        for col in ("metric", "model", "split"):
            table.add_column(col)
        table.add_column("value", justify="right")
        for name, cells in rows:
            for (model, split), v in zip(columns, cells, strict=True):
                if v is not None:
                    table.add_row(name, model, split, cell(v))
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add ``evaluate``, ``recommend`` and ``inspect`` to ``app``."""
    app.command("evaluate")(handle_errors(evaluate))
    app.command("recommend")(handle_errors(recommend))
    app.command("inspect")(handle_errors(inspect))
