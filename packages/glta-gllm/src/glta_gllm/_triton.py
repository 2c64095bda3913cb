"""Triton kernels for :func:`glta_gllm.linear_cross_entropy` (``backend="triton"``).

The torch plan (:mod:`glta_gllm.functional`) runs ~7 eager kernels per item chunk in the
forward pass and ~13 in the gradient pass; on a GPU that is launch- and memory-bound
(RESULTS.md: 1.5-1.9x the naive path in fp32, 7-15x in bf16 on an H200). Here:

* forward: ONE kernel over a ``(row blocks, item splits)`` grid. Each program computes its
  ``BM x BN`` logit tiles with ``tl.dot`` (fp32 accumulation), adds the bias, and keeps an
  online max and sum of exponentials per row; no logit is written to memory. The
  ``(splits, rows)`` partial maxima and sums are merged by one ``logsumexp``.
* gradients, per item chunk of ``C`` items (``C`` = an eighth of the items, so the chunk
  buffer is an eighth of the logits): ONE kernel recomputes the logit tiles and writes
  ``G = row_scale * (softmax - onehot)`` (the target's ``-1`` applied in the kernel, the
  probability floored as in :func:`glta_gllm.functional._exp_floor_`) into the ``rows x C``
  buffer, in the input precision (as the naive path rounds its logit gradients); then two
  cuBLAS GEMMs ``grad_h += G W_c`` (fp32 accumulation) and ``grad_W[c] = G^T h`` and, with a
  bias, ``grad_b[c] = G.sum(0)``.

So 4 GEMM-sized products (the logits twice) against the naive path's 3, about 4 + 8 x 4
launches, and extra memory one eighth of the logits. Deterministic: no atomics, every sum
in a fixed order.

Without a GPU the same kernels run in Triton's interpreter on CPU tensors, when
``TRITON_INTERPRET=1`` is set before ``triton`` is first imported (its standard library is
bound to the interpreter at import): that is how the tests check them in CI, in a fresh
process (``tests/test_triton_cpu.py``).
Speed on a GPU is measured by ``benchmarks/gllm/compare.py lce --device cuda`` (variant
``glta_triton``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton import knobs

INTERPRET = bool(knobs.runtime.interpret)

# Block shapes tried by the autotuner on a GPU for large problems (the fastest per (H,
# dtypes) is kept; each is compiled once per process, ~1-2 s); small problems
# (< _TUNE_MIN_WORK multiply-adds) and the interpreter (which executes every program in numpy)
# use one fixed shape instead.
_CONFIGS = [
    triton.Config({"BM": 64, "BN": 128, "BK": 64}, num_warps=4, num_stages=3),
    triton.Config({"BM": 128, "BN": 128, "BK": 64}, num_warps=8, num_stages=3),
    triton.Config({"BM": 128, "BN": 64, "BK": 32}, num_warps=4, num_stages=4),
    triton.Config({"BM": 64, "BN": 64, "BK": 32}, num_warps=4, num_stages=4),
    triton.Config({"BM": 32, "BN": 128, "BK": 64}, num_warps=4, num_stages=3),
]
_FIXED_CONFIG = {"BM": 64, "BN": 64, "BK": 32, "num_warps": 4, "num_stages": 3}
_INTERPRET_CONFIG = {"BM": 16, "BN": 32, "BK": 16}
_TUNE_MIN_WORK = 1 << 30
# Programs to aim for in the forward grid (a few waves over an H100/H200's 132 SMs).
_TARGET_PROGRAMS = 1024
_MIN_SPLIT_ITEMS = 2048


def _tuned(fn):
    """``fn`` autotuned over ``_CONFIGS`` (key: H and the dtypes); not in the interpreter."""
    return fn if INTERPRET else triton.autotune(configs=_CONFIGS, key=["H", "PREC", "ACC"])(fn)


@triton.jit
def _logit_tile(
    h_ptr, w_ptr, b_ptr, rm, rn, R, n_end, H, stride_h, stride_w,
    HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    PREC: tl.constexpr, ACC: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """(BM, BN) logits h[rm] . W[rn]^T (+ b[rn]) in dtype ACC (float32, or float64 for
    float64 inputs) for rows rm < R, items rn < n_end."""
    acc = tl.zeros((BM, BN), dtype=ACC)
    rk = tl.arange(0, BK)
    h_rows = h_ptr + rm.to(tl.int64)[:, None] * stride_h
    w_rows = w_ptr + rn.to(tl.int64)[:, None] * stride_w
    row_ok = rm[:, None] < R
    item_ok = rn[:, None] < n_end
    for k0 in range(0, H, BK):
        kk = k0 + rk
        k_ok = kk[None, :] < H
        a = tl.load(h_rows + kk[None, :], mask=row_ok & k_ok, other=0.0)
        b = tl.load(w_rows + kk[None, :], mask=item_ok & k_ok, other=0.0)
        if UPCAST:  # the interpreter's bf16 tl.dot is wrong (bf16 read as integers)
            a = a.to(ACC)
            b = b.to(ACC)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=PREC, out_dtype=ACC)
    if HAS_BIAS:
        bias = tl.load(b_ptr + rn, mask=rn < n_end, other=0.0).to(ACC)
        acc += bias[None, :]
    return acc


@triton.jit
def _lse_kernel(
    h_ptr, w_ptr, b_ptr, m_ptr, s_ptr, R, n_items, H, stride_h, stride_w, n_split,
    HAS_BIAS: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr, UPCAST: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):  # fmt: skip
    """Per (row block, item split): running max m and sum s of exp(logit - m) per row."""
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    n_blocks = tl.cdiv(n_items, BN)
    per_split = tl.cdiv(n_blocks, n_split)
    first = pid_s * per_split
    last = tl.minimum(first + per_split, n_blocks)
    m = tl.full((BM,), -3.0e38, dtype=ACC)
    s = tl.zeros((BM,), dtype=ACC)
    for blk in range(first, last):
        rn = blk * BN + tl.arange(0, BN)
        z = _logit_tile(
            h_ptr, w_ptr, b_ptr, rm, rn, R, n_items, H, stride_h, stride_w,
            HAS_BIAS, BM, BN, BK, PREC, ACC, UPCAST,
        )  # fmt: skip
        z = tl.where(rn[None, :] < n_items, z, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=1))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new[:, None]), axis=1)
        m = m_new
    ok = rm < R
    tl.store(m_ptr + pid_s * R + rm, m, mask=ok)
    tl.store(s_ptr + pid_s * R + rm, s, mask=ok)


@triton.jit
def _grad_tile_kernel(
    h_ptr, w_ptr, b_ptr, lse_ptr, scale_ptr, t_ptr, g_ptr, R, H, start, C, stride_h,
    stride_w, stride_g, floor_log,
    HAS_BIAS: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr, UPCAST: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):  # fmt: skip
    """G[r, c] = scale[r] * (max(exp(logit[r, start + c] - lse[r]), exp(floor)) - [t_r ==
    start + c]) for the chunk's C items."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    cn = pid_n * BN + tl.arange(0, BN)
    rn = start + cn
    z = _logit_tile(
        h_ptr, w_ptr, b_ptr, rm, rn, R, start + C, H, stride_h, stride_w,
        HAS_BIAS, BM, BN, BK, PREC, ACC, UPCAST,
    )  # fmt: skip
    row_ok = rm < R
    lse = tl.load(lse_ptr + rm, mask=row_ok, other=0.0)
    scale = tl.load(scale_ptr + rm, mask=row_ok, other=0.0)
    t = tl.load(t_ptr + rm, mask=row_ok, other=-1)
    p = tl.exp(tl.maximum(z - lse[:, None], floor_log))
    p = tl.where(rn[None, :] == t[:, None], p - 1.0, p) * scale[:, None]
    out = g_ptr + rm.to(tl.int64)[:, None] * stride_g + cn[None, :]
    tl.store(out, p.to(g_ptr.dtype.element_ty), mask=row_ok[:, None] & (cn[None, :] < C))


_lse_kernel_tuned = _tuned(_lse_kernel)
_grad_tile_kernel_tuned = _tuned(_grad_tile_kernel)


def _kernel(plain, tuned, work: int) -> tuple:
    """``(kernel, block options)``: the autotuned kernel for ``work`` >= ``_TUNE_MIN_WORK``
    multiply-adds on a GPU, else the plain one with a fixed block shape."""
    if INTERPRET:
        return plain, dict(_INTERPRET_CONFIG)
    # Fused multiply-adds, as cuBLAS uses (said explicitly: Triton 3.9 warns when unset).
    if work >= _TUNE_MIN_WORK:
        return tuned, {"enable_fp_fusion": True}
    return plain, {**_FIXED_CONFIG, "enable_fp_fusion": True}


def _tl_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s input precision for fp32 inputs: TF32 only where torch allows it for
    matmuls (``torch.backends.cuda.matmul.allow_tf32``), so the result matches the naive
    path's ``F.linear``; IEEE fp32 otherwise."""
    if dtype == torch.float32 and not INTERPRET and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def check_device(device: torch.device) -> None:
    """Raise ``RuntimeError`` unless these kernels can run on ``device`` (CUDA, or any
    device in the interpreter)."""
    if INTERPRET or device.type == "cuda":
        return
    raise RuntimeError(
        f'backend="triton" needs CUDA tensors, got {device} (for tests only, the kernels run '
        "on CPU tensors in Triton's interpreter when TRITON_INTERPRET=1 is set before triton "
        "is imported)"
    )


def lse(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Row log-sum-exp of ``h weight^T (+ bias)`` without writing the logits.

    Args:
        h: ``(R, H)``; weight ``(I, H)``, same dtype; bias ``(I,)`` or None.

    Returns:
        ``(R,)`` float32 (float64 for float64 inputs).
    """
    h, weight = h.contiguous(), weight.contiguous()
    rows, hid = h.shape
    items = weight.shape[0]
    acc = torch.float64 if h.dtype == torch.float64 else torch.float32
    row_blocks = triton.cdiv(rows, 64)
    n_split = max(
        1, min(triton.cdiv(items, _MIN_SPLIT_ITEMS), triton.cdiv(_TARGET_PROGRAMS, row_blocks))
    )
    if INTERPRET:
        n_split = min(n_split, 4)
    maxes = torch.empty(n_split, rows, dtype=acc, device=h.device)
    sums = torch.empty_like(maxes)
    bias_arg = bias if bias is not None else weight

    def grid(meta):
        return (triton.cdiv(rows, meta["BM"]), n_split)

    kernel, blocks = _kernel(_lse_kernel, _lse_kernel_tuned, rows * items * hid)
    kernel[grid](
        h, weight, bias_arg, maxes, sums, rows, items, hid, h.stride(0), weight.stride(0),
        n_split, HAS_BIAS=bias is not None, PREC=_precision(h.dtype), ACC=_tl_dtype(acc),
        UPCAST=INTERPRET and h.dtype == torch.bfloat16, **blocks,
    )  # fmt: skip
    return torch.logsumexp(sums.log_().add_(maxes), dim=0)


def chunk_items(items: int, g_elem: int, elem: int, fraction: float, chunk_size: int | None) -> int:
    """Items per gradient chunk: ``chunk_size`` if given, else as many as keep the ``rows x
    C`` buffer (``g_elem`` bytes each) within ``fraction`` of the logits (``elem`` bytes
    each), at least 128."""
    if chunk_size is not None:
        return max(1, min(chunk_size, items))
    return max(1, min(items, max(128, int(items * elem * fraction / g_elem))))


def grads(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    lse_rows: torch.Tensor,
    row_scale: torch.Tensor,
    needs: tuple[bool, bool, bool],
    chunk: int,
    lowp: bool,
    floor_log: float,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of ``sum_r row_scale[r] * loss[r]``, item chunk by item chunk.

    Args:
        h: ``(R, H)`` in weight's dtype; weight ``(I, H)``; bias ``(I,)`` or None; targets
            ``(R,)`` in ``[0, I)``; lse_rows ``(R,)`` and row_scale ``(R,)`` in the
            accumulation dtype (float32, or float64 for float64 inputs).
        needs: which of (grad_h, grad_w, grad_b) to compute.
        chunk: items per chunk (:func:`chunk_items`).
        lowp: bf16/fp16 GEMMs with fp32 results (``torch.mm(..., out_dtype=)``, CUDA);
            otherwise the chunk's products run in the accumulation dtype.
        floor_log: log of the smallest probability written (see ``_exp_floor_``).

    Returns:
        ``(grad_h (R, H) acc dtype, grad_w (I, H) weight's dtype, grad_b (I,) acc dtype)``,
        None where not needed.
    """
    h, weight = h.contiguous(), weight.contiguous()
    rows, hid = h.shape
    items = weight.shape[0]
    acc = lse_rows.dtype
    device = h.device
    need_h, need_w, need_b = needs
    g_dtype = weight.dtype if lowp else acc
    if weight.dtype == torch.float64:
        g_dtype = torch.float64
    buf = torch.empty(rows * chunk, dtype=g_dtype, device=device)
    grad_h = torch.zeros(rows, hid, dtype=acc, device=device) if need_h else None
    grad_w = torch.empty(weight.shape, dtype=weight.dtype, device=device) if need_w else None
    grad_b = torch.empty(items, dtype=acc, device=device) if need_b else None
    h_acc = h if h.dtype == g_dtype else h.to(g_dtype)
    gh_tmp = torch.empty(rows, hid, dtype=acc, device=device) if lowp and need_h else None
    bias_arg = bias if bias is not None else weight
    lse_rows, row_scale = lse_rows.contiguous(), row_scale.contiguous()
    targets = targets.contiguous()
    kernel, blocks = _kernel(_grad_tile_kernel, _grad_tile_kernel_tuned, rows * items * hid)
    for start in range(0, items, chunk):
        c = min(chunk, items - start)
        g = buf[: rows * c].view(rows, c)

        def grid(meta, c=c):
            return (triton.cdiv(rows, meta["BM"]), triton.cdiv(c, meta["BN"]))

        kernel[grid](
            h, weight, bias_arg, lse_rows, row_scale, targets, g, rows, hid, start, c,
            h.stride(0), weight.stride(0), g.stride(0), floor_log,
            HAS_BIAS=bias is not None, PREC=_precision(h.dtype), ACC=_tl_dtype(acc),
            UPCAST=INTERPRET and h.dtype == torch.bfloat16, **blocks,
        )  # fmt: skip
        w_c = weight[start : start + c]
        if need_h:
            if lowp:
                torch.mm(g, w_c, out_dtype=acc, out=gh_tmp)
                grad_h.add_(gh_tmp)
            else:
                grad_h.addmm_(g, w_c if w_c.dtype == acc else w_c.to(acc))
        if need_w:
            if w_c.dtype == g_dtype:
                torch.mm(g.t(), h_acc, out=grad_w[start : start + c])
            else:
                grad_w[start : start + c].copy_(g.t() @ h_acc)
        if need_b:
            torch.sum(g, dim=0, dtype=acc, out=grad_b[start : start + c])
    return grad_h, grad_w, grad_b
