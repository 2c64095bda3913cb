"""Shared pieces of the commands: error handling, consoles, typed option aliases."""

from __future__ import annotations

import functools
import sys
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

__all__ = [
    "EXIT_USAGE",
    "CliError",
    "Quiet",
    "RunDir",
    "err_console",
    "handle_errors",
    "out_console",
    "parse_ks",
]

EXIT_USAGE = 2

F = TypeVar("F", bound=Callable[..., Any])


class CliError(ValueError):
    """A front-end usage error (bad option value, unknown user id, ...)."""


def err_console() -> Console:
    """A stderr console (created per call so test runners' stream swaps are honoured)."""
    return Console(file=sys.stderr, soft_wrap=True)


def out_console() -> Console:
    """A stdout console for tables and JSON."""
    return Console(file=sys.stdout, soft_wrap=True)


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (newlines folded)."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        text = str(exc.args[0])
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _show_warning(fallback: Callable[..., None]) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints a data reader's ``DatasetWarning`` (a missing
    metadata file ...) as one yellow ``warning:`` line and leaves other warnings as they are."""

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        if category.__name__ == "DatasetWarning":
            err_console().print(Text(f"warning: {one_line(Exception(str(message)))}",
                                     style="yellow"))
        else:
            fallback(message, category, filename, lineno, file, line)

    return show


def handle_errors(func: F) -> F:
    """Turn library errors into one red line on stderr and exit code 2.

    ``ValueError`` (the libraries' DatasetError, CheckpointError, FingerprintMismatchError,
    ConfigError ... all derive from it), ``OSError`` (missing files, permissions),
    ``FloatingPointError`` (a diverging loss; the message says which setting to lower),
    ``EOFError`` and ``zlib.error`` (truncated or corrupt archives) are caught; anything
    else is a bug and keeps its traceback. Ctrl-C exits with 130 and a hint that rerunning
    resumes. A ``DatasetWarning`` is printed as one yellow ``warning:`` line.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _show_warning(warnings.showwarning)
                return func(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except (ValueError, OSError, FloatingPointError, EOFError, zlib.error) as exc:
            # EOFError (a truncated archive read by a library) would otherwise become
            # click's bare "Aborted."
            err_console().print(Text(f"error: {one_line(exc)}", style="bold red"))
            raise typer.Exit(EXIT_USAGE) from None
        except KeyboardInterrupt:
            err_console().print(
                Text("interrupted: rerun the same command to resume", style="yellow")
            )
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def parse_ks(text: str) -> list[int]:
    """Parse ``"5,10,20"`` into ``[5, 10, 20]`` (positive, de-duplicated, sorted)."""
    try:
        ks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise CliError(f"--k: {text!r} is not a comma-separated list of integers") from None
    if not ks or ks[0] < 1:
        raise CliError(f"--k: need positive integers, got {text!r}")
    return ks


RunDir = Annotated[
    Path,
    typer.Argument(help="A run directory (made by `glta graph train` or `glta pipeline`)."),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Draw no progress bars.")]
