"""glta-gllm works on its own: no imports of other GLTA packages; its wheel installs alone."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1]
REPO = PACKAGE.parents[1]
SOURCE = PACKAGE / "src" / "glta_gllm"
EXAMPLE = PACKAGE / "examples" / "two_tower.py"
OTHERS = ("glta_graph", "glta_align", "glta_cli")


def test_source_imports_only_torch_safetensors_and_stdlib() -> None:
    """Only ``_triton.py`` (imported on first use of ``backend="triton"``) imports triton."""
    base = {"torch", "safetensors", "glta_gllm", "__future__"} | set(sys.stdlib_module_names)
    optional = {"_triton.py": {"triton"}}
    for path in sorted(SOURCE.rglob("*.py")):
        allowed = base | optional.get(path.name, set())
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path}:{node.lineno} imports {name}"


def test_import_pulls_in_no_other_glta_package() -> None:
    code = (
        "import sys, glta_gllm, glta_gllm.head, glta_gllm.functional, glta_gllm.metrics\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {OTHERS!r})\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_wheel_installs_alone_and_runs_the_example(tmp_path: Path) -> None:
    """Build the wheel, install it with its own dependencies only, run the README example.

    Uses uv and its package cache (torch is hard-linked from it: about a second).
    """
    uv = shutil.which("uv")
    if uv is None:
        if os.environ.get("CI") == "true":
            pytest.fail("uv is needed to build and install the glta-gllm wheel")
        pytest.skip("uv not found on PATH")
    dist = tmp_path / "dist"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "UV_PROJECT"))}
    subprocess.run(
        [uv, "build", "--package", "glta-gllm", "--no-sources", "-q", "-o", str(dist)],
        cwd=REPO,
        check=True,
        env=env,
    )
    wheels = sorted(dist.glob("glta_gllm-*.whl"))
    assert len(wheels) == 1, wheels
    venv = tmp_path / "venv"
    subprocess.run([uv, "venv", "-q", str(venv)], cwd=tmp_path, check=True, env=env)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    subprocess.run(
        [uv, "pip", "install", "-q", "--python", str(python), str(wheels[0])],
        cwd=tmp_path,
        check=True,
        env=env,
    )
    listed = subprocess.run(
        [uv, "pip", "list", "--python", str(python)],
        cwd=tmp_path,
        check=True,
        env=env,
        capture_output=True,
        text=True,
    ).stdout
    assert not any(other.replace("_", "-") in listed for other in OTHERS), listed
    example = tmp_path / "two_tower.py"
    shutil.copy(EXAMPLE, example)
    result = subprocess.run(
        [str(python), "-W", "ignore", str(example)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok: loss went down" in result.stdout, result.stdout
    where = subprocess.run(
        [str(python), "-c", "import glta_gllm; print(glta_gllm.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(venv) in where, where
