"""Runs ``test_triton.py`` in Triton's CPU interpreter, in a fresh process.

``TRITON_INTERPRET=1`` only takes effect when it is set before ``triton`` is first imported
(its standard library is bound to the interpreter or the compiler at import), and other tests
in this process may already have imported it (``torch.compile``), so the interpreter run gets
its own Python. On a GPU machine ``test_triton.py`` runs the compiled kernels directly and
this is skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton", reason="the triton package is not installed")

TESTS = Path(__file__).with_name("test_triton.py")


@pytest.mark.skipif(torch.cuda.is_available(), reason="test_triton.py runs on the GPU here")
def test_triton_kernels_in_the_interpreter() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(TESTS), "-q", "-p", "no:cacheprovider"],
        env=env,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    tail = proc.stdout[-3000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) >= 30, tail
    assert "skipped" not in proc.stdout.splitlines()[-1], tail
