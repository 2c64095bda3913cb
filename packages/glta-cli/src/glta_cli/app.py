"""The ``glta`` command line (typer): one app, thin commands over the library functions.

    glta pipeline                       # everything, default preset, offline
    glta data prepare|info|export       # datasets
    glta graph train                    # LightGCN
    glta evaluate | recommend | inspect # use a run directory
    glta config show                    # the resolved configuration
"""

from __future__ import annotations

from typing import Annotated

import typer

from glta_cli import __version__
from glta_cli.commands import config_cmd, data, graph, pipeline, runs

app = typer.Typer(
    name="glta",
    no_args_is_help=True,
    help="GLTA: graph-language token alignment for recommendation (LightGCN + a frozen LLM).\n\n"
    "Start with `glta pipeline` (MovieLens-100K and SmolLM2-135M, offline).",
    epilog="Example: glta pipeline --preset smoke --out runs/smoke",
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"glta {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """GLTA command line."""
    from glta_graph.malloc import keep_freed_memory

    try:  # before any tensor work: every command reuses freed memory (GLTA_MALLOC=system: not)
        keep_freed_memory()
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


app.add_typer(data.app, name="data")
app.add_typer(graph.app, name="graph")
app.add_typer(config_cmd.app, name="config")
runs.register(app)
pipeline.register(app)


def main() -> None:
    """Console-script entry point (``glta``)."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
