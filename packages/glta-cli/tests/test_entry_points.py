"""The installed console scripts: `glta` and `glta-cli` name the same typer app."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

SCRIPTS = ("glta", "glta-cli")


def _scripts() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group="console_scripts") if ep.name in SCRIPTS}


def test_both_console_scripts_point_at_the_app():
    assert _scripts() == {name: "glta_cli.app:main" for name in SCRIPTS}


@pytest.mark.parametrize("name", SCRIPTS)
def test_console_script_runs_help(name):
    # The script sits beside this interpreter in the environment uv installed.
    exe = Path(sys.executable).parent / name
    path = str(exe) if exe.exists() else shutil.which(name)
    assert path, f"console script {name!r} is not installed (run `uv sync`)"
    out = subprocess.run([path, "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "pipeline" in out.stdout and "Usage" in out.stdout
