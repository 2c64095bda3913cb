"""The Triton backend without a GPU: its kernels compiled for NVIDIA GPUs, and
``test_triton.py`` run in Triton's CPU interpreter in a fresh process.

``TRITON_INTERPRET=1`` only takes effect when it is set before ``triton`` is first imported
(its standard library is bound to the interpreter or the compiler at import), and other tests
in this process may already have imported it (``torch.compile``), so the interpreter run gets
its own Python. On a GPU machine ``test_triton.py`` runs the compiled kernels directly and
that part is skipped.

The compile checks need no GPU either: Triton compiles to PTX and ``ptxas`` (shipped in the
triton wheel) assembles it for a named architecture, so a kernel that would not build on an
A100/H100 (bad types, a ``tl.dot`` below its minimum shape) fails here, and the fixed block
shape's shared memory is checked against the device limit.
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

import triton
import triton.language as tl

TESTS = Path(__file__).with_name("test_triton.py")
# Shared memory one block may use: H100/H200 (sm_90) 227 KiB, A100 (sm_80) 163 KiB.
SHARED_LIMIT = {90: 232_448, 80: 166_912}


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


def _compile(kernel, dtype: str, arch: int, blocks: dict):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    acc = "fp64" if dtype == "fp64" else "fp32"
    ptr, acc_ptr = f"*{dtype}", f"*{acc}"
    types = {
        "h_ptr": ptr, "w_ptr": ptr, "b_ptr": ptr, "m_ptr": acc_ptr, "s_ptr": acc_ptr,
        "lse_ptr": acc_ptr, "scale_ptr": acc_ptr, "t_ptr": "*i64",
        "g_ptr": ptr if dtype in ("bf16", "fp16") else acc_ptr, "floor_log": "fp32",
    }  # fmt: skip
    consts = {
        "HAS_BIAS": True, "PREC": "tf32" if dtype == "fp32" else "ieee",
        "ACC": tl.float64 if dtype == "fp64" else tl.float32, "UPCAST": False,
        **{k: blocks[k] for k in ("BM", "BN", "BK")},
    }  # fmt: skip
    names = kernel.arg_names
    signature = {n: "constexpr" if n in consts else types.get(n, "i32") for n in names}
    source = ASTSource(
        fn=kernel,
        signature=signature,
        constexprs={(names.index(k),): v for k, v in consts.items()},
    )
    options = {
        "num_warps": blocks["num_warps"],
        "num_stages": blocks["num_stages"],
        "enable_fp_fusion": True,
    }
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16", "fp64"])
@pytest.mark.parametrize("kernel_name", ["_lse_kernel", "_grad_tile_kernel"])
def test_kernels_compile_for_h100_with_the_fixed_blocks(kernel_name, dtype) -> None:
    tri = pytest.importorskip("glta_gllm._triton")
    if tri.INTERPRET:
        pytest.skip("TRITON_INTERPRET=1: the kernels are bound to the interpreter")
    compiled = _compile(getattr(tri, kernel_name), dtype, 90, tri._FIXED_CONFIG)
    assert "ld.global" in compiled.asm["ptx"]
    assert 0 < compiled.metadata.shared <= SHARED_LIMIT[80]  # fits an A100 too


@pytest.mark.parametrize("arch", [80, 90])
def test_autotune_configs_compile_for_bf16(arch) -> None:
    """Every autotuner block shape builds for bf16; those over the shared-memory limit would
    only be skipped by the autotuner, so none may be over it for bf16."""
    tri = pytest.importorskip("glta_gllm._triton")
    if tri.INTERPRET:
        pytest.skip("TRITON_INTERPRET=1: the kernels are bound to the interpreter")
    for config in tri._CONFIGS:
        blocks = {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}
        compiled = _compile(tri._lse_kernel, "bf16", arch, blocks)
        assert compiled.metadata.shared <= SHARED_LIMIT[arch], (config, compiled.metadata.shared)
        # tensor-core MMA: wgmma on sm_90, mma.sync on sm_80
        assert ("wgmma" in compiled.asm["ptx"]) or ("mma.sync" in compiled.asm["ptx"])
