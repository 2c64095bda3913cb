"""The app shell: help texts with examples, --version, error handling."""

from __future__ import annotations

import pytest
import typer

from glta_cli import __version__
from glta_cli.app import app
from glta_cli.commands._common import handle_errors, one_line, parse_ks

COMMANDS = [
    ["pipeline"], ["evaluate"], ["recommend"], ["inspect"], ["data", "prepare"],
    ["data", "info"], ["data", "export"], ["graph", "train"], ["config", "show"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_help_has_an_example(runner, command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output and "glta " in result.output


def test_no_args_shows_help(runner):
    result = runner.invoke(app, [])
    assert "pipeline" in result.output and "Usage" in result.output


def test_version(runner):
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"glta {__version__}"


def test_handle_errors_one_red_line_exit_2(capsys):
    @handle_errors
    def boom() -> None:
        raise ValueError("data.csv: line 3: rating 'x' is not a number\nmore detail")

    with pytest.raises(typer.Exit) as info:
        boom()
    assert info.value.exit_code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: data.csv: line 3")


@pytest.mark.parametrize("exc", [FileNotFoundError("x.csv: no such file"),
                                 FloatingPointError("loss became nan; lower lr")])
def test_handle_errors_other_actionable_errors(exc, capsys):
    @handle_errors
    def fail() -> None:
        raise exc

    with pytest.raises(typer.Exit) as info:
        fail()
    assert info.value.exit_code == 2
    assert capsys.readouterr().err.strip() == f"error: {exc}"


def test_handle_errors_keeps_bugs_as_tracebacks():
    @handle_errors
    def bug() -> None:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError):
        bug()


def test_one_line_and_parse_ks():
    assert one_line(KeyError("missing 'x'")) == "missing 'x'"
    assert parse_ks("20, 5,10,5") == [5, 10, 20]
    for bad in ("a,b", "0", ""):
        with pytest.raises(ValueError, match="--k"):
            parse_ks(bad)


def test_missing_run_dir_is_one_line_exit_2(runner, tmp_path):
    result = runner.invoke(app, ["inspect", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error:") and "does not exist" in result.stderr
    assert result.stderr.strip().count("\n") == 0
