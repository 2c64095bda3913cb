"""``glta config``: show the resolved pipeline configuration."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from glta_cli.commands._common import handle_errors

app = typer.Typer(
    no_args_is_help=True,
    help="Inspect the pipeline configuration (presets, file, --section.key overrides).",
)

PresetOpt = Annotated[
    str | None,
    typer.Option("--preset", "-p", help="Preset: default, smoke or paper (default: default)."),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="A TOML config file layered over the preset."),
]


@app.command(
    "show",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog="Example: glta config show --preset smoke --graph.epochs 3 > my.toml",
)
@handle_errors
def show(ctx: typer.Context, preset: PresetOpt = None, config: ConfigOpt = None) -> None:
    """Print the resolved configuration as documented TOML (every key with its help).

    Extra --section.key value arguments override single keys. The output is a valid
    config file: `glta pipeline --config my.toml` reproduces it.
    """
    from glta_cli.config import load_config

    resolved = load_config(preset or "default", config, ctx.args)
    sys.stdout.write(resolved.to_toml())
