"""``glta data prepare | info | export``: datasets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from glta_cli.commands._common import CliError, handle_errors

app = typer.Typer(no_args_is_help=True, help="Prepare, describe and export datasets.")


def _format_options(pairs: list[str]) -> dict[str, object]:
    from glta_cli.config import _parse_cli_value

    options: dict[str, object] = {}
    for pair in pairs:
        if "=" not in pair:
            raise CliError(f"--option: {pair!r} is not KEY=VALUE (e.g. user_col=uid)")
        key, value = pair.split("=", 1)
        # a value of only whitespace (sep=$'\t') is kept as given, not stripped to nothing
        options[key.strip()] = _parse_cli_value(value.strip() or value)
    return options


Overwrite = Annotated[
    bool,
    typer.Option("--overwrite", help="Replace what is at --out, if glta wrote it (never a "
                                     "folder of your own files)."),
]


def _dataset_path(path: Path) -> Path:
    """A run directory's ``dataset/``, else ``path`` itself."""
    if (path / "dataset").is_dir() and not (path / "dataset.json").is_file():
        return path / "dataset"
    return path


def _text_line(stats: dict[str, object]) -> str:
    return f"{stats.get('items_with_text', 0)} of {stats.get('items', 0)} items have text"


@app.command(
    "prepare",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
@handle_errors
def prepare(
    ctx: typer.Context,
    source: Annotated[
        str,
        typer.Argument(help="File, folder, Hugging Face dataset name, or `ml-100k` (embedded)."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the dataset to.")],
    format: Annotated[
        str, typer.Option("--format", "-f", help="auto, ml-100k, ml-1m, ml-latest, recbole, "
                          "lightgcn, amazon2018, amazon2023, goodreads, csv, parquet, hf.")
    ] = "auto",
    threshold: Annotated[
        float | None, typer.Option(help="Keep ratings >= threshold (default: keep all).")
    ] = None,
    kcore: Annotated[int | None, typer.Option(help="Iterative k-core (0 = off).")] = None,
    split: Annotated[str | None, typer.Option(help="random, loo or temporal.")] = None,
    ratios: Annotated[
        str | None, typer.Option(help="train,valid,test fractions, e.g. 0.7,0.1,0.2.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the split.")] = None,
    max_users: Annotated[
        int | None, typer.Option(help="Keep a seeded sample of this many users.")
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", help="Format option KEY=VALUE (repeatable), e.g. user_col=uid "
                                      "or sep=tab."),
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Load SOURCE, apply threshold / k-core / split, save a prepared dataset folder.

    Any other PrepareConfig key can be set with --prepare.key value (see
    `glta config show`). Prints the dataset's statistics as JSON. --out must be a new or
    empty folder, or (with --overwrite) a dataset glta prepared before.

    Example: glta data prepare ml-100k --out data/ml100k --threshold 4 --kcore 5 --split loo
    """
    from glta_cli.config import load_config, parse_overrides
    from glta_cli.outputs import check_output_dir, output_kind, staged_dir
    from glta_cli.pipeline import prepare_dataset

    check_output_dir(out, "dataset", overwrite=overwrite, inputs=[source])
    layers: dict[str, dict[str, object]] = {"data": {"source": source, "format": format}}
    values = {"threshold": threshold, "k_core": kcore, "split": split, "ratios": ratios,
              "seed": seed}
    layers["prepare"] = {k: v for k, v in values.items() if v is not None}
    if max_users is not None:
        layers["data"]["max_users"] = max_users
    if option:
        layers["data"]["options"] = _format_options(option)
    if seed is not None:
        layers["run"] = {"seed": seed}
    for section, extra in parse_overrides(ctx.args).items():
        layers.setdefault(section, {}).update(extra)
    given = sorted(layers["prepare"])
    if output_kind(source) == "dataset" and given:
        raise CliError(
            f"{source} is a prepared dataset, so its threshold/k-core/split are fixed; "
            f"{', '.join(given)} cannot be applied to it: prepare from the raw files instead "
            f"(--max-users still works)"
        )
    config = load_config("default", None, layers, sections=("run", "data", "prepare"))
    data = prepare_dataset(config)  # a DatasetWarning prints as a line (handle_errors)
    with staged_dir(out, "dataset") as staged:
        data.save(staged)
    stats = data.stats()
    typer.echo(json.dumps(stats, indent=2))
    typer.echo(f"{_text_line(stats)}; saved {out}", err=True)


@app.command("info")
@handle_errors
def info(
    dataset_dir: Annotated[Path, typer.Argument(help="A prepared dataset folder or run dir.")],
) -> None:
    """Print a prepared dataset's statistics as JSON (users, items, items with text,
    interactions per split, density, fingerprint).

    Example: glta data info data/ml100k
    """
    from glta_cli.runs import load_dataset_dir

    stats = load_dataset_dir(_dataset_path(dataset_dir)).stats()
    typer.echo(json.dumps(stats, indent=2))
    typer.echo(_text_line(stats), err=True)


@app.command("export")
@handle_errors
def export(
    dataset_dir: Annotated[Path, typer.Argument(help="A prepared dataset folder or run dir.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for train/valid/test CSV.")],
    overwrite: Overwrite = False,
) -> None:
    """Write train.csv, valid.csv and test.csv (columns user,item) with the ORIGINAL ids.

    --out must be a new or empty folder, or (with --overwrite) an export glta wrote before.

    Example: glta data export runs/default --out exported/
    """
    from glta_graph.data import export_csv

    from glta_cli.outputs import check_output_dir, staged_dir
    from glta_cli.runs import load_dataset_dir

    check_output_dir(out, "export", overwrite=overwrite, inputs=[dataset_dir])
    data = load_dataset_dir(_dataset_path(dataset_dir))
    with staged_dir(out, "export") as staged:
        export_csv(data, staged)
    for split in ("train", "valid", "test"):
        typer.echo(f"{split}: {out / f'{split}.csv'}")
