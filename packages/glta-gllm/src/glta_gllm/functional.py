"""Memory-efficient item-scoring kernels: fused linear cross-entropy and streaming top-k.

Both kernels score ``rows`` hidden states against ``items`` weight rows without ever holding
the full ``(rows x items)`` score matrix (or its gradient). They are plain device-agnostic
torch operations (matmuls into preallocated buffers, in-place softmax and element-wise ops),
so they run unchanged on CPU and CUDA.

``linear_cross_entropy`` computes ``F.cross_entropy(F.linear(hidden, weight, bias), targets)``
with all rows together over item chunks ``j`` of ``chunk`` items, so that one ``(rows x
chunk)`` tile (about ``_TILE_ELEMENTS``) stays in cache:

* pass 1, per chunk: ``X_j = h W_j^T + b_j`` into a tile (``torch.mm``/``addmm`` with
  ``out=``), ``m_j = rowmax(X_j)``, the tile becomes ``exp(X_j - m_j)`` in place (no
  softmax is written) and ``lse_j = m_j + log(rowsum)``; then ``lse = logsumexp_j(lse_j)``.
  The loss is ``lse - h . W[t] - b[t]``.
* pass 2 (gradients), chunks last to first: ``P_j = softmax(X)[:, j]`` is a kept tile times
  ``exp(m_j - lse)`` (one multiply), or for the other chunks a recomputed GEMM and
  ``exp(X_j - lse)`` in place. With the row scale folded into ``hs = h * row_scale`` once
  (for "mean"/"sum" the scalar is the GEMM's ``alpha`` instead): ``grad_W[j] = P_j^T hs``
  (``addmm_`` with ``beta=0`` into ``grad_W``), ``grad_h += P_j W_j`` (``addmm_``),
  ``grad_b[j] = P_j^T row_scale``. The one-hot part of the softmax gradient never touches a
  tile: ``grad_W[t_r] -= hs[r]`` (per chunk, a few rows), ``grad_h`` starts at ``-W[t]``
  and is scaled by ``row_scale`` at the end, and ``grad_b[t] -= row_scale``.

Schedule, when ``weight``'s gradient is wanted and ``rows <= H`` (fp32; ``rows <= H / 2``
for bf16/fp16 weights, whose gradient is 2 bytes per element and the tiles 4):
every chunk is kept, in the storage of ``grad_W`` itself (:func:`_grad_w_holding_logits`).
``grad_W`` is ``items x H``, the logits ``rows x items``, and nothing is written to
``grad_W[j]`` before pass 2 reaches chunk ``j``; pass 2 (last chunk first) scales each kept
tile into the one buffer before writing ``grad_W[j]`` over it. That is the 3-matmul
schedule of ``store_logits=True`` for one tile of extra memory (time and memory against the
naive path and torch's ``F.linear_cross_entropy``: ``benchmarks/RESULTS.md``).

Otherwise (:func:`_kept_chunks`): the last ``kept`` chunks of pass 1 write their tiles straight
into a kept store instead of the one reused buffer, and pass 2 starts with them and then with
the chunk still in the buffer, so those are never recomputed; the rest are (one extra GEMM
each). The default (:func:`_kept_chunks`) keeps as many whole chunks as fit, with the
reused tile, in ``_MEMORY_FRACTION`` = 1/8 of the ``rows x items``
logits: the naive path holds at least the logits at its peak (``benchmarks/gllm/memory.py``
measures it; ``benchmarks/gllm/README.md``), so this stays within 1/8 of
the naive path's extra memory at any shape. Below ``_KEEP_MIN_HIDDEN`` (256) nothing is kept:
there a recompute GEMM (``2 H`` flops per logit) is as cheap as writing and re-reading the
tile through memory. Cost: ``4 - kept / chunks`` matmuls of ``2 rows H items`` flops (3.9 to
4) against the naive path's 3, with all element-wise work on in-cache tiles where the naive
path streams several ``rows x items`` matrices through memory: that pays the extra matmul
back at small and moderate ``H``, while at ``H = 4096`` the matmuls dominate and the time is
about ``3.9 / 3`` of the naive path's matmul time.
``store_logits=True`` keeps every chunk (3 matmuls, extra memory = the logits, half the
naive path's or less): the fast option when memory allows and ``H`` is not tiny.
``store_logits=False`` keeps none (4 matmuls, one tile of extra memory). Logits within
``_STORE_MIN_BYTES`` are always kept.

Time and memory of each plan against the naive path, per shape: ``benchmarks/RESULTS.md``
(glta-gllm kernels) and ``benchmarks/gllm/README.md``.

When gradients are needed and the reduction is ``"mean"``/``"sum"`` both passes run inside
the forward and the backward only scales the result by the incoming scalar (with
``reduction="none"`` the backward runs pass 2, recomputing every chunk, with the per-row
incoming gradients as ``row_scale``).

Low-precision inputs (bf16/fp16) are computed and accumulated in float32 chunk by chunk: on
the CPU the inputs are upcast and the GEMMs run in fp32; on CUDA (where ``torch.mm`` takes
``out_dtype``) the GEMMs take the low-precision operands on tensor cores and write fp32 tiles,
and pass 2 multiplies ``P_j`` rounded to the input precision (as the naive path's logit
gradients are). On CUDA the tiles are also larger (:func:`_item_chunk`): up to 1/16 of the
logits instead of a CPU-cache-sized tile, which made the kernel launch-bound on an H200.

``backend="triton"`` replaces both passes by fused Triton kernels on CUDA
(:mod:`glta_gllm._triton`: no logit written in pass 1, one kernel per eighth of the items
writing the logit gradients in pass 2, then the same two GEMMs); the rest (ignored rows,
the target logits, the fused/recompute modes) is shared with the torch plan.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math

import torch
from torch.autograd.function import once_differentiable

__all__ = ["linear_cross_entropy", "shard_range", "topk_excluding"]

_REDUCTIONS = ("mean", "sum", "none")
_BACKENDS = ("auto", "torch", "triton")
# Target size of one (rows x chunk) working tile, in elements: big enough for efficient
# matmuls and few kernel launches, small enough to stay in the CPU's cache.
_TILE_ELEMENTS = 1 << 20
_MIN_CHUNK = 256
_MAX_CHUNK = 32768
# On CUDA no CPU cache bounds the tile: bigger tiles mean fewer kernel launches and bigger,
# faster GEMMs. A CUDA tile takes at most 1/_CUDA_LOGITS_SHARE of the logits' bytes (so one
# kept chunk still fits the 1/8 budget beside it) and at most _CUDA_TILE_ELEMENTS elements
# (64 MiB in fp32, about the H100/H200's L2 cache).
_CUDA_TILE_ELEMENTS = 1 << 24
_CUDA_LOGITS_SHARE = 16
_CUDA_MAX_CHUNK = 1 << 18
# Working memory of the training path beyond the inputs and gradients (kept tiles and the
# reused tile), as a fraction of the rows x items logits. The naive path holds
# at least the logits at its peak (benchmarks/gllm/memory.py), so this keeps ours within 1/8
# of it.
_MEMORY_FRACTION = 0.125
# Keeping a chunk's tile saves its recompute GEMM (2 H flops per logit) but writes and reads
# the tile through memory; below this hidden size recomputing was as fast or faster
# (benchmarks/gllm/compare.py, 1 thread, CPU clock; benchmarks/gllm/README.md).
_KEEP_MIN_HIDDEN = 256
# Logits of at most this many bytes are kept whole (small problems).
_STORE_MIN_BYTES = 16 << 20
_TOPK_BUFFER_BYTES = 32 << 20
_TOPK_MAX_BYTES = 256 << 20


def _prob_floor_log(dtype: torch.dtype) -> float:
    """``log`` of the smallest probability the kernels write: 0.7 ``log(tiny)`` (-61.1 in
    fp32, i.e. 2.9e-27; -496 in float64)."""
    return 0.7 * math.log(torch.finfo(dtype).tiny)


def _exp_floor_(tile: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """In place: ``tile = exp(max(tile - shift[:, None], F))`` with ``F`` =
    :func:`_prob_floor_log`; ``tile`` ``(R, C)``, ``shift`` ``(R,)``.

    Why a floor: on the CPU, ``exp`` of arguments below ``log(tiny)`` (-87.3 in fp32) runs
    far slower than in range, and so does a GEMM whose products fall below ``tiny``
    (subnormal numbers; x86 handles them in microcode; ``benchmarks/RESULTS.md``). Peaky logits
    (an item more than ~87 below the row's best) hit both. Probabilities at the floor
    (2.9e-27 in fp32) times any weight above 4e-12 in magnitude stay normal. The change, at
    most ``exp(F)`` per probability, is far below fp32 resolution of the loss and of every
    gradient entry that is not itself below ``exp(F)`` times the inputs.
    """
    return tile.sub_(shift.unsqueeze(1)).clamp_(min=_prob_floor_log(tile.dtype)).exp_()


def _scale_floor_(
    tile: torch.Tensor, log_scale: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``out = tile * exp(log_scale)[:, None]`` (``out`` defaults to ``tile``: in place),
    keeping every value >= ``exp(F)``.

    ``tile`` ``(R, C)`` holds values in ``[exp(F), 1]`` (from :func:`_exp_floor_`),
    ``log_scale`` ``(R,)`` is <= 0, ``out`` ``(R, C)``. The factor is floored at ``exp(F)``
    and the tile first raised to ``exp(F) / factor``, so no product falls below the floor
    (see :func:`_exp_floor_` for why).
    """
    out = tile if out is None else out
    low = math.exp(_prob_floor_log(tile.dtype))
    factor = log_scale.exp().clamp_(min=low)
    torch.maximum(tile, (low / factor).unsqueeze(1), out=out)
    return out.mul_(factor.unsqueeze(1))


@functools.lru_cache(maxsize=1)
def _has_triton() -> bool:
    """Whether the ``triton`` package can be imported (looked up once)."""
    return importlib.util.find_spec("triton") is not None


def _auto_backend(
    device_type: str, dtype: torch.dtype, store_logits: bool | None, has_triton: bool
) -> str:
    """What ``backend="auto"`` runs: ``"triton"`` for bf16/fp16 inputs on CUDA when the
    ``triton`` package is importable and ``store_logits`` is left at None, else ``"torch"``.

    Measured on an NVIDIA H200 (``benchmarks/RESULTS.md``): in bf16 the Triton kernels took
    0.24-0.36x the torch plan's time at the three benchmark shapes, in fp32 0.59-2.0x (slower
    at two of three shapes), so fp32 stays on the torch plan.

    Args:
        device_type: ``hidden.device.type`` (``"cuda"``, ``"cpu"``, ...).
        dtype: ``hidden``'s dtype.
        store_logits: the caller's ``store_logits`` (True/False ask for the torch plan's
            logit keeping, which the Triton path does not have).
        has_triton: whether ``import triton`` would work.

    Returns:
        ``"triton"`` or ``"torch"``.
    """
    if (device_type == "cuda" and dtype in (torch.bfloat16, torch.float16)
            and store_logits is None and has_triton):
        return "triton"
    return "torch"


def _triton():
    """The Triton kernels (:mod:`glta_gllm._triton`), imported on first use; a clear
    ``RuntimeError`` when the ``triton`` package is missing."""
    try:
        module = importlib.import_module("glta_gllm._triton")
    except ImportError as err:
        raise RuntimeError(
            'backend="triton" needs the triton package (it comes with torch\'s CUDA wheels '
            f"on Linux; pip install triton): {err}"
        ) from err
    return module


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _item_chunk(
    rows: int,
    items: int,
    chunk_size: int | None,
    device: torch.device | None = None,
    elem: int = 4,
    acc_elem: int = 4,
) -> int:
    """Items per chunk: ``chunk_size`` if given, else a tile of about ``_TILE_ELEMENTS``
    (CPU cache) or, on CUDA, of ``min(_CUDA_TILE_ELEMENTS, logits / 16)`` (``elem`` /
    ``acc_elem``: bytes of an input / a tile element)."""
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return min(chunk_size, items)
    rows = max(rows, 1)
    if device is not None and device.type == "cuda":
        share = rows * items * elem // (_CUDA_LOGITS_SHARE * acc_elem)
        chunk = min(_CUDA_TILE_ELEMENTS, share) // rows
        chunk = max(_MIN_CHUNK, min(chunk, _CUDA_MAX_CHUNK))
    else:
        chunk = max(_MIN_CHUNK, min(_TILE_ELEMENTS // rows, _MAX_CHUNK))
    return min(items, chunk)


_OUT_DTYPE_MM: dict[tuple[torch.device, torch.dtype], bool] = {}


def _lowp_gemm(h: torch.Tensor) -> bool:
    """Whether bf16/fp16 ``h`` on CUDA can use tensor-core GEMMs with an fp32 result.

    That is ``torch.mm(a, b, out_dtype=torch.float32)`` (fp32 accumulation and output; CUDA
    only, torch >= 2.8), probed once per device and dtype. Elsewhere the inputs are upcast
    and the GEMMs run in fp32.
    """
    if h.device.type != "cuda" or h.dtype not in (torch.bfloat16, torch.float16):
        return False
    key = (h.device, h.dtype)
    if key not in _OUT_DTYPE_MM:
        try:
            x = torch.ones(4, 4, dtype=h.dtype, device=h.device)
            y = torch.empty(4, 4, dtype=torch.float32, device=h.device)
            torch.mm(x.t(), x, out_dtype=torch.float32, out=y)
            _OUT_DTYPE_MM[key] = bool((y == 4).all())
        except (RuntimeError, TypeError, NotImplementedError):
            _OUT_DTYPE_MM[key] = False
    return _OUT_DTYPE_MM[key]


def _check_lce_inputs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
    num_items: int | None = None,
) -> torch.Tensor:
    """Check ``linear_cross_entropy``'s inputs (one ``ValueError`` naming the shapes); return
    ``targets`` as int64 on ``hidden``'s device. ``num_items`` (default ``weight``'s rows) is
    the catalogue size targets index into (the whole catalogue for a sharded weight)."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 2:
        raise ValueError(f"hidden must be 2-D (rows, H), got shape {_shape(hidden)}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (items, H), got shape {_shape(weight)}")
    if not hidden.is_floating_point():
        raise ValueError(f"hidden must be a floating-point tensor, got dtype {hidden.dtype}")
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"hidden size mismatch: hidden has shape {tuple(hidden.shape)} (H={hidden.shape[1]}) "
            f"but weight has shape {tuple(weight.shape)} (H={weight.shape[1]})"
        )
    if weight.dtype != hidden.dtype:
        raise ValueError(f"weight dtype {weight.dtype} differs from hidden dtype {hidden.dtype}")
    if weight.device != hidden.device:
        raise ValueError(f"weight is on {weight.device} but hidden is on {hidden.device}")
    if weight.shape[0] < 1:
        raise ValueError(f"weight must have at least one item row, got shape {tuple(weight.shape)}")
    if bias is not None:
        if bias.shape != (weight.shape[0],):
            raise ValueError(
                f"bias must have shape ({weight.shape[0]},) to match weight {tuple(weight.shape)}, "
                f"got {tuple(bias.shape)}"
            )
        if bias.dtype != hidden.dtype or bias.device != hidden.device:
            raise ValueError(
                f"bias ({bias.dtype}, {bias.device}) must match hidden ({hidden.dtype}, "
                f"{hidden.device})"
            )
    if not isinstance(targets, torch.Tensor) or targets.shape != (hidden.shape[0],):
        raise ValueError(
            f"targets must have shape ({hidden.shape[0]},) to match hidden "
            f"{tuple(hidden.shape)}, got {_shape(targets)}"
        )
    if targets.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f"targets must hold integer class indices, got dtype {targets.dtype}")
    targets = targets.to(device=hidden.device, dtype=torch.int64)
    items = weight.shape[0] if num_items is None else num_items
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= items))
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"targets[{first}] = {int(targets[first])} is outside [0, {items}) for weight of "
            f"shape {tuple(weight.shape)}{' (one shard)' if num_items is not None else ''} "
            f"(and is not ignore_index={ignore_index})"
        )
    return targets


def _shape(x: object) -> object:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def _mm_chunk(
    out: torch.Tensor,
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    a: int,
    e: int,
    acc: torch.dtype,
    h_lp: torch.Tensor | None = None,
) -> torch.Tensor:
    """out (R, e-a) <- h (R, H) @ weight[a:e]^T (+ bias[a:e]), computed in dtype ``acc``.

    With ``h_lp`` (h in weight's low precision, see :func:`_lowp_gemm`) the GEMM takes the
    low-precision operands and writes ``acc`` directly. Returns weight's chunk as used.
    """
    w = weight[a:e]
    if h_lp is not None:
        torch.mm(h_lp, w.t(), out_dtype=acc, out=out)
        if bias is not None:
            out.add_(bias[a:e].to(acc))
        return w
    if w.dtype != acc:
        w = w.to(acc)
    if bias is None:
        torch.mm(h, w.t(), out=out)
    else:
        b = bias[a:e]
        if b.dtype != acc:
            b = b.to(acc)
        torch.addmm(b, h, w.t(), out=out)
    return w


def _target_logits(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    acc: torch.dtype,
) -> torch.Tensor:
    w = weight.index_select(0, targets).to(acc)
    out = (h * w).sum(dim=1)
    if bias is not None:
        out = out + bias.index_select(0, targets).to(acc)
    return out


class _OneHot:
    """Per-chunk (row, local column) positions of the targets, found once by sorting."""

    def __init__(self, targets: torch.Tensor, bounds: list[tuple[int, int]]) -> None:
        self.sorted, self.order = torch.sort(targets)
        edges = torch.tensor([a for a, _ in bounds] + [bounds[-1][1]], device=targets.device)
        self.starts = torch.searchsorted(self.sorted, edges).tolist()

    def subtract_rows_(
        self, out: torch.Tensor, j: int, a: int, hs: torch.Tensor, alpha: float = 1.0
    ) -> None:
        """out[t_r - a] -= alpha * hs[r] for the rows ``r`` whose target is in chunk ``j``."""
        lo, hi = self.starts[j], self.starts[j + 1]
        if hi > lo:
            rows = hs.index_select(0, self.order[lo:hi])
            out.index_add_(0, self.sorted[lo:hi] - a, rows, alpha=-alpha)


def _bounds(items: int, chunk: int) -> list[tuple[int, int]]:
    return [(a, min(a + chunk, items)) for a in range(0, items, chunk)]


def _kept_chunks(
    rows: int,
    items: int,
    hid: int,
    chunk: int,
    elem: int,
    store_logits: bool | None,
    acc_elem: int | None = None,
    reserve: int = 0,
) -> int:
    """How many item chunks (the last ones) keep their tiles between the two passes.

    ``store_logits`` True keeps all, False none. ``None`` keeps all when the ``rows x items``
    logits take at most ``_STORE_MIN_BYTES``, none when ``hid < _KEEP_MIN_HIDDEN``, and
    otherwise as many whole chunks as fit in ``_MEMORY_FRACTION`` of the logits besides the
    reused ``rows x chunk`` tile. ``elem`` is the bytes
    of one input element (the naive path's logits), ``acc_elem`` (default ``elem``) of one
    tile element (float32 for bf16/fp16 inputs); ``reserve`` bytes of other working memory
    come out of the budget.
    """
    chunks = math.ceil(items / chunk)
    if store_logits is not None:
        return chunks if store_logits else 0
    if rows * items * elem <= _STORE_MIN_BYTES:
        return chunks
    if hid < _KEEP_MIN_HIDDEN:
        return 0
    acc_elem = acc_elem or elem
    budget = _MEMORY_FRACTION * rows * items * elem - rows * chunk * acc_elem - reserve
    return max(0, min(chunks, int(budget // (rows * chunk * acc_elem))))


def _plan(
    rows: int,
    items: int,
    hid: int,
    dtype: torch.dtype,
    device: torch.device,
    lowp: bool,
    chunk_size: int | None = None,
    store_logits: bool | None = None,
) -> tuple[int, int]:
    """The training schedule for ``rows`` valid rows of ``dtype`` on ``device``: ``(chunk,
    kept)`` from :func:`_item_chunk` and :func:`_kept_chunks`; ``lowp`` (tensor-core GEMMs,
    :func:`_lowp_gemm`) reserves the low-precision copy of one tile."""
    elem = torch.empty((), dtype=dtype).element_size()
    acc_elem = _elem(_acc_dtype(dtype))
    rows = max(rows, 1)
    chunk = _item_chunk(rows, items, chunk_size, device, elem, acc_elem)
    reserve = rows * chunk * elem if lowp else 0
    return chunk, _kept_chunks(rows, items, hid, chunk, elem, store_logits, acc_elem, reserve)


def _elem(dtype: torch.dtype) -> int:
    """Bytes per element of a floating-point ``dtype``."""
    return torch.finfo(dtype).bits // 8


def _logits_fit_in_grad(rows: int, items: int, hid: int, elem: int, acc_elem: int) -> bool:
    """Whether ``rows x items`` tiles of ``acc_elem`` bytes fit in the storage of an ``(items,
    hid)`` weight gradient of ``elem`` bytes (see :func:`_grad_w_holding_logits`)."""
    return rows * acc_elem <= hid * elem and (items * hid * elem) % acc_elem == 0


def _new_grad_w(weight: torch.Tensor) -> torch.Tensor:
    """A new ``(I, H)`` buffer for ``weight``'s gradient (every element is written before it
    is read); on the CPU zero-filled, elsewhere uninitialised.

    Why zero-filled: a fresh multi-GB buffer gets its pages on first touch, and when the
    GEMMs of pass 2 do that touching, chunk by chunk from two threads, the page faults cost
    can cost far more than one sequential fill on a VM whose free memory is not backed yet
    (measured at (256, 4096, 200k): ``benchmarks/gllm/README.md``). CUDA's caching allocator has
    no such cost, so there it stays ``empty``.
    """
    if weight.device.type == "cpu":
        return torch.zeros(weight.shape, dtype=weight.dtype)
    return torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)


def _grad_w_holding_logits(
    rows: int, weight: torch.Tensor, acc: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(grad_w, store)``: a fresh ``(I, H)`` gradient of ``weight`` and a flat ``rows * I``
    view of its storage in dtype ``acc``, or None when the logits do not fit in it.

    Until pass 2 writes ``grad_W[j]`` its storage is unused, and the ``rows x I`` tiles
    (``rows * acc_bytes`` per item) fit in its ``H * weight_bytes`` per item whenever
    ``rows * acc_bytes <= H * weight_bytes`` (``rows <= H`` in fp32). Laid out as the kept
    store is (chunk ``j`` of items ``[a_j, e_j)`` at elements ``[a_j rows, e_j rows)``),
    writing ``grad_W[j]`` (elements ``[a_j H', e_j H')``, ``H'`` = H in ``acc`` units >=
    rows) can only clobber tiles of chunks ``k >= j``: an earlier chunk ends at ``e_k rows
    <= a_j rows <= a_j H'``. Pass 2 runs last chunk first and copies chunk ``j``'s tile to
    its buffer before writing ``grad_W[j]``, so every tile is read before it is clobbered.
    Every chunk is then kept: 3 matmuls, as with ``store_logits=True``, for one tile of
    extra memory.
    """
    items, hid = weight.shape
    if not _logits_fit_in_grad(rows, items, hid, weight.element_size(), _elem(acc)):
        return None
    grad_w = _new_grad_w(weight)
    return grad_w, grad_w.view(-1).view(acc)[: rows * items]


def _tile(
    store: torch.Tensor | None,
    buf: torch.Tensor | None,
    rows: int,
    a: int,
    e: int,
    kept_from: int,
) -> torch.Tensor:
    """The (rows, e - a) tile of the chunk starting at item ``a``: in the store (whose first
    item is ``kept_from``) for a kept chunk, else the reused buffer."""
    if store is not None and a >= kept_from:
        return store[(a - kept_from) * rows : (e - kept_from) * rows].view(rows, e - a)
    return buf[: rows * (e - a)].view(rows, e - a)


def _lse_pass(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    bounds: list[tuple[int, int]],
    acc: torch.dtype,
    kept: int = 0,
    h_lp: torch.Tensor | None = None,
    store: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Pass 1: the row log-sum-exp over all items.

    Per chunk ``j``: ``X_j = h W_j^T (+ b_j)`` into a tile, ``m_j = rowmax(X_j)``, the tile
    becomes ``exp(X_j - m_j)`` in place and ``lse_j = m_j + log(rowsum)``; finally
    ``lse = logsumexp_j(lse_j)``.

    Args:
        h: (R, H) in dtype ``acc``; weight (I, H); bias (I,) or None.
        kept: how many of the last chunks write their tiles into a kept store (one
            ``R x (items of those chunks)`` tensor) instead of the one reused buffer.
        h_lp: h in weight's low precision for tensor-core GEMMs (:func:`_lowp_gemm`).
        store: a flat tensor of dtype ``acc`` to use as the kept store (at least ``R x``
            the kept chunks' items; :func:`_grad_w_holding_logits`), else one is allocated.

    Returns:
        ``(lse (R,), maxes (chunks, R), store, buf)``: the store holds the kept chunks'
        ``exp(X_j - m_j)`` tiles, the buffer (None when every chunk is kept) the last
        not-kept chunk's.
    """
    rows = h.shape[0]
    n = len(bounds)
    maxes = torch.empty(n, rows, dtype=acc, device=h.device)
    sums = torch.empty(n, rows, dtype=acc, device=h.device)
    kept_from = bounds[n - kept][0] if kept else bounds[-1][1]
    buf = None
    if not kept:
        store = None
    elif store is None:
        store = torch.empty(rows * (bounds[-1][1] - kept_from), dtype=acc, device=h.device)
    if kept < n:
        width = max(e - a for a, e in bounds)
        buf = torch.empty(rows * width, dtype=acc, device=h.device)
    for j, (a, e) in enumerate(bounds):
        tile = _tile(store, buf, rows, a, e, kept_from)
        _mm_chunk(tile, h, weight, bias, a, e, acc, h_lp)
        torch.amax(tile, dim=1, out=maxes[j])
        # A chunk masked out by a -inf bias: a finite max makes its exps the floor, not NaN
        # (masked items then get probability exp(F) ~ 3e-27 in fp32 instead of exactly 0).
        maxes[j].clamp_(min=torch.finfo(acc).min)
        _exp_floor_(tile, maxes[j])
        torch.sum(tile, dim=1, out=sums[j])
    lse = torch.logsumexp(sums.log_().add_(maxes), dim=0)
    return lse, maxes, store, buf


def _grad_pass(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    lse: torch.Tensor,
    row_scale: torch.Tensor,
    bounds: list[tuple[int, int]],
    acc: torch.dtype,
    needs: tuple[bool, bool, bool],
    kept: int = 0,
    maxes: torch.Tensor | None = None,
    store: torch.Tensor | None = None,
    buf: torch.Tensor | None = None,
    scale: float | None = None,
    h_lp: torch.Tensor | None = None,
    grad_w: torch.Tensor | None = None,
    owned: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Pass 2: the gradients of ``sum_r row_scale[r] * loss[r]``, chunk by chunk.

    With ``P_j = softmax(X)[:, chunk j]`` (from a kept tile: ``exp(X_j - m_j) *
    exp(m_j - lse)``, one multiply; else recomputed: ``exp(X_j - lse)``) and ``hs = h *
    row_scale``: ``grad_W[j] = P_j^T hs`` (minus ``hs[r]`` at row ``t_r``),
    ``grad_b[j] = P_j^T row_scale``, and ``grad_h = row_scale * (sum_j P_j W_j - W[t])``.
    Chunks run last to first, so the buffer's tile left by pass 1 is used before it is
    overwritten.

    Args:
        h: (R, H) in dtype ``acc``; weight (I, H); bias (I,) or None; targets (R,) in
            [0, I); lse (R,) from :func:`_lse_pass`; row_scale (R,) in ``acc``.
        needs: which of (grad_h, grad_w, grad_b) to compute.
        kept, maxes, store, buf: pass 1's plan and outputs (defaults: recompute all).
        scale: set when every ``row_scale`` equals it ("mean"/"sum"): it is then applied as
            the GEMM's ``alpha`` and ``hs`` is ``h`` itself (no ``R x H`` copy).
        h_lp: h in weight's low precision (:func:`_lowp_gemm`): the GEMMs then take
            ``P_j`` rounded to that precision (as the naive path's logit gradients are) and
            accumulate in fp32 on tensor cores.
        grad_w: a preallocated ``(I, H)`` gradient whose storage holds ``store``
            (:func:`_grad_w_holding_logits`): each kept tile is then scaled into the buffer
            before ``grad_W[j]`` is written over it.
        owned: for a weight that is one shard of the items (:mod:`glta_gllm._sharded`), the
            ``(R,)`` bool mask of the rows whose target is in this shard; ``targets`` then
            holds local indices for those rows and ``-1`` for the others, which get no
            one-hot term (``lse`` is the global one, so ``grad_h`` is this shard's part).

    Returns:
        ``(grad_h (R, H) in acc, grad_w (I, H) in weight's dtype, grad_b (I,) in acc)``,
        None where not needed.
    """
    rows, hid = h.shape
    n = len(bounds)
    device = h.device
    need_h, need_w, need_b = needs
    kept_from = bounds[n - kept][0] if kept else bounds[-1][1]
    in_buf = n - kept - 1 if buf is not None else -1  # pass 1's last not-kept chunk
    width = max(e - a for a, e in bounds)
    in_grad = grad_w is not None  # the kept store lives in grad_w's storage
    if buf is None and (kept < n or in_grad):
        buf = torch.empty(rows * width, dtype=acc, device=device)
    grad_h = None
    if need_h:  # starts at -W[t] (the one-hot part), so no R x H temporary at the end
        if owned is None:
            grad_h = weight.index_select(0, targets).to(acc).neg_()
        else:
            grad_h = weight.index_select(0, targets.clamp(min=0)).to(acc).neg_()
            grad_h.masked_fill_(~owned.unsqueeze(1), 0)
    if need_w and grad_w is None:
        grad_w = _new_grad_w(weight)
    grad_b = torch.empty(weight.shape[0], dtype=acc, device=device) if need_b else None
    hs = w_tmp = onehot = hs_lp = p_buf = gh_tmp = None
    alpha = 1.0 if scale is None else scale
    lowp = h_lp is not None
    if need_w:
        hs = h * row_scale.unsqueeze(1) if scale is None else h
        onehot = _OneHot(targets, bounds)
        if weight.dtype != acc:
            w_tmp = torch.empty(width, hid, dtype=acc, device=device)
        if lowp:
            hs_lp = h_lp if scale is not None else hs.to(weight.dtype)
    if lowp:
        p_buf = torch.empty(rows * width, dtype=weight.dtype, device=device)
        if need_h:
            gh_tmp = torch.empty(rows, hid, dtype=acc, device=device)
    for j in reversed(range(n)):
        a, e = bounds[j]
        tile = _tile(store, buf, rows, a, e, kept_from)
        if a >= kept_from or j == in_buf:
            if in_grad:  # out of grad_W[j]'s way before it is written
                tile = _scale_floor_(tile, maxes[j] - lse, _tile(None, buf, rows, a, e, 0))
            else:
                _scale_floor_(tile, maxes[j] - lse)
            w = None
        else:
            w = _mm_chunk(tile, h, weight, bias, a, e, acc, h_lp)
            _exp_floor_(tile, lse)
        if lowp:  # P_j rounded to the weight's precision; tensor-core GEMMs, fp32 results
            p = p_buf[: rows * (e - a)].view(rows, e - a)
            p.copy_(tile)
            if need_h:
                torch.mm(p, weight[a:e], out_dtype=acc, out=gh_tmp)
                grad_h.add_(gh_tmp)
            if need_w:
                out = w_tmp[: e - a]
                torch.mm(p.t(), hs_lp, out_dtype=acc, out=out)
                if alpha != 1.0:
                    out.mul_(alpha)
                onehot.subtract_rows_(out, j, a, hs, alpha)
                grad_w[a:e].copy_(out)
        else:
            if need_h:
                if w is None:
                    w = weight[a:e] if weight.dtype == acc else weight[a:e].to(acc)
                grad_h.addmm_(tile, w)
            if need_w:
                out = grad_w[a:e] if w_tmp is None else w_tmp[: e - a]
                out.addmm_(tile.t(), hs, beta=0, alpha=alpha)  # beta=0: old values unread
                onehot.subtract_rows_(out, j, a, hs, alpha)
                if w_tmp is not None:
                    grad_w[a:e].copy_(out)
        if need_b:
            torch.mv(tile.t(), row_scale, out=grad_b[a:e])
    if need_b:
        if owned is None:
            grad_b.index_add_(0, targets, row_scale, alpha=-1)
        else:
            grad_b.index_add_(0, targets[owned], row_scale[owned], alpha=-1)
    if need_h:
        grad_h.mul_(row_scale.unsqueeze(1))
    return grad_h, grad_w, grad_b


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, hidden, weight, bias, targets, ignore_index, reduction, chunk_size, store,
        grad_mode, backend,
    ):  # fmt: skip
        rows, items = hidden.shape[0], weight.shape[0]
        acc = _acc_dtype(hidden.dtype)
        device = hidden.device
        valid = targets != ignore_index
        n_valid = int(valid.sum())
        all_valid = n_valid == rows
        idx = None if all_valid else valid.nonzero().squeeze(1)
        h = hidden if all_valid else hidden.index_select(0, idx)
        t = targets if all_valid else targets.index_select(0, idx)
        h_lp = h if _lowp_gemm(h) else None
        h_in = h
        h = h.to(acc) if h.dtype != acc else h
        if backend == "triton":
            elem = hidden.element_size()
            g_elem = elem if h_lp is not None else _elem(acc)
            chunk = _triton().chunk_items(items, g_elem, elem, _MEMORY_FRACTION, chunk_size)
            kept = 0
        else:
            chunk, kept = _plan(
                n_valid, items, weight.shape[1], hidden.dtype, device, h_lp is not None,
                chunk_size, store,
            )  # fmt: skip
        bounds = _bounds(items, chunk)
        # needs_input_grad stays True under torch.no_grad(): also ask the caller's grad mode.
        needs = tuple(bool(x) and grad_mode for x in ctx.needs_input_grad[:3])
        if bias is None:
            needs = (needs[0], needs[1], False)
        ctx.rows, ctx.reduction, ctx.idx, ctx.chunk = rows, reduction, idx, chunk
        ctx.backend = backend
        ctx.mode = "none"
        ctx.grads = None
        scale_value = (1.0 / n_valid if n_valid else 0.0) if reduction == "mean" else 1.0

        if n_valid == 0:
            lse = torch.zeros(0, dtype=acc, device=device)
            ctx.mode = "empty"
        elif backend == "triton":
            tri = _triton()
            lse = tri.lse(h_in, weight, bias)
            if any(needs) and reduction != "none":
                row_scale = torch.full((n_valid,), scale_value, dtype=acc, device=device)
                ctx.grads = tri.grads(
                    h_in, weight, bias, t, lse, row_scale, needs, chunk, h_lp is not None,
                    _prob_floor_log(acc),
                )  # fmt: skip
                ctx.mode = "fused"
            elif any(needs):
                ctx.mode = "recompute"
        elif any(needs) and reduction != "none":
            # Where they fit, every tile is kept in grad_W's own (not yet written) storage.
            holder = None
            if needs[1] and store is not False:
                holder = _grad_w_holding_logits(n_valid, weight, acc)
            grad_w, held = holder if holder is not None else (None, None)
            if holder is not None:
                kept = len(bounds)
            lse, maxes, kept_tiles, buf = _lse_pass(h, weight, bias, bounds, acc, kept, h_lp, held)
            del held
            row_scale = torch.full((n_valid,), scale_value, dtype=acc, device=device)
            ctx.grads = _grad_pass(
                h, weight, bias, t, lse, row_scale, bounds, acc, needs,
                kept, maxes, kept_tiles, buf, scale_value, h_lp, grad_w,
            )  # fmt: skip
            del grad_w
            del kept_tiles, buf
            ctx.mode = "fused"
        else:
            lse = _lse_pass(h, weight, bias, bounds, acc, 0, h_lp)[0]
            if any(needs):
                ctx.mode = "recompute"
        loss_rows = lse - _target_logits(h, weight, bias, t, acc) if n_valid else lse
        if ctx.mode in ("fused", "recompute"):
            # Inputs cost nothing to save; the lse lets a backward recompute (reduction
            # "none", or a second backward through a retained graph).
            ctx.save_for_backward(hidden, weight, bias, targets, lse)
        if reduction == "none":
            if all_valid:
                return loss_rows.to(hidden.dtype)
            out = torch.zeros(rows, dtype=acc, device=device)
            if n_valid:
                out.index_copy_(0, idx, loss_rows)
            return out.to(hidden.dtype)
        return (loss_rows.sum() * scale_value).to(hidden.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if ctx.mode == "empty":
            return None, None, None, None, None, None, None, None, None, None
        if ctx.grads is not None:
            # Hand over the gradients computed in the forward and drop our reference, so
            # autograd can take them without a copy. A second backward through a retained
            # graph falls through to the recompute below.
            gh, gw, gb = ctx.grads
            ctx.grads = None
            if not (grad_out.device.type == "cpu" and float(grad_out) == 1.0):
                g = grad_out.to(torch.float32 if gh is None else gh.dtype)
                gh = gh.mul_(g) if gh is not None else None
                gw = gw.mul_(g.to(gw.dtype)) if gw is not None else None
                gb = gb.mul_(g) if gb is not None else None
        else:
            hidden, weight, bias, targets, lse = ctx.saved_tensors
            acc = _acc_dtype(hidden.dtype)
            idx = ctx.idx
            h = hidden if idx is None else hidden.index_select(0, idx)
            t = targets if idx is None else targets.index_select(0, idx)
            h_lp = h if _lowp_gemm(h) else None
            g = grad_out.to(acc)
            if ctx.reduction == "none":
                row_scale = g if idx is None else g.index_select(0, idx)
            else:
                n = h.shape[0]
                scale = 1.0 / n if ctx.reduction == "mean" else 1.0
                row_scale = (g * scale).expand(n).contiguous()
            needs = (need_h, need_w, need_b and bias is not None)
            if ctx.backend == "triton":  # takes h in the input precision
                gh, gw, gb = _triton().grads(
                    h, weight, bias, t, lse, row_scale, needs, ctx.chunk,
                    h_lp is not None, _prob_floor_log(acc),
                )  # fmt: skip
            else:
                bounds = _bounds(weight.shape[0], ctx.chunk)
                gh, gw, gb = _grad_pass(
                    h.to(acc), weight, bias, t, lse, row_scale, bounds, acc, needs, h_lp=h_lp
                )
        if gh is not None and ctx.idx is not None:
            full = torch.zeros(ctx.rows, gh.shape[1], dtype=gh.dtype, device=gh.device)
            full.index_copy_(0, ctx.idx, gh)
            gh = full
        dtype = grad_out.dtype
        gh = gh.to(dtype) if gh is not None else None
        gw = gw.to(dtype) if gw is not None else None
        gb = gb.to(dtype) if gb is not None else None
        return gh, gw, gb, None, None, None, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int | None = None,
    store_logits: bool | None = None,
    backend: str = "auto",
    process_group: object | None = None,
) -> torch.Tensor:
    """Cross-entropy of a linear layer's logits without materialising the logits.

    Equals ``F.cross_entropy(F.linear(hidden, weight, bias), targets, ignore_index=...,
    reduction=...)`` in value and gradient, except that when every row is ignored the
    ``"mean"`` loss is ``0`` (not NaN) and its gradients are zero. Ignored rows are dropped
    before any matmul.

    Args:
        hidden: ``(N, H)`` floating-point rows (e.g. LLM hidden states at output slots).
        weight: ``(I, H)`` one row per item (class), same dtype and device as ``hidden``.
        targets: ``(N,)`` integer item indices in ``[0, I)``, or ``ignore_index``.
        bias: optional ``(I,)`` per-item bias.
        ignore_index: target value whose rows contribute nothing (loss 0, gradient 0).
        reduction: ``"mean"`` (over non-ignored rows), ``"sum"`` or ``"none"`` (``(N,)``).
        chunk_size: items per chunk (default: chosen from the shapes so that a
            ``rows x chunk`` float32 tile is about 4 MiB, between 256 and 32768 items).
            On a CPU oversubscribed by other jobs, larger chunks (fewer, longer parallel
            regions) degrade less; see ``benchmarks/gllm/README.md``.
        store_logits: ``True`` keeps all ``N x I`` logits between the two passes (3
            matmuls; the fastest option when that memory is available), ``False`` always
            recomputes them chunk by chunk (4 matmuls, one tile of memory), ``None``
            (default) keeps whole chunks within an eighth of ``N x I`` (none when
            ``H < 256``) and recomputes the rest (all kept when the logits take at most
            16 MiB). With ``None`` or ``True``, when ``weight`` needs its gradient, the
            reduction is ``"mean"``/``"sum"`` and the logits fit in that gradient's storage
            (non-ignored rows ``<= H``; ``<= H / 2`` for bf16/fp16), all of them are kept
            there until pass 2 overwrites them: 3 matmuls for one tile of memory.
        backend: ``"torch"`` (the plan above: torch operations on any device),
            ``"triton"`` (fused Triton kernels, CUDA only, needs the ``triton`` package that
            comes with torch's CUDA wheels on Linux: one forward kernel that never writes a
            logit, and per eighth of the items one kernel writing the logit gradients plus
            two cuBLAS GEMMs; ``store_logits`` does not apply), or ``"auto"``
            (``"triton"`` for bf16/fp16 on CUDA with triton installed and
            ``store_logits=None``, where it measured 2.8-4.1x faster than the torch plan on an
            H200; else ``"torch"``; see :func:`_auto_backend`).
        process_group: a ``torch.distributed`` process group over which ``weight`` (and
            ``bias``) are sharded along items: each rank passes its contiguous share of the
            rows, rank order = item order (any sizes >= 1; e.g. :func:`shard_range`), and
            the same ``hidden`` and (global) ``targets``. The loss is then exact over all
            items without gathering logits (Megatron-LM's vocabulary-parallel
            cross-entropy, :mod:`glta_gllm._sharded`): per-rank log-sum-exp combined by a
            max and a sum all-reduce, each target logit from its owning rank; ``hidden``'s
            gradient is all-reduced in the backward, which every rank must run; ``weight``
            and ``bias`` get this rank's shard of theirs. ``backend="torch"`` only. ``None``
            or a group of one rank: the unsharded path.

    Returns:
        The scalar loss (``"mean"``/``"sum"``) or the ``(N,)`` per-row losses, in
        ``hidden``'s dtype. bf16/fp16 inputs are computed in float32 internally.

    Memory:
        Beyond the inputs and their gradients: one ``N x chunk`` tile, ``O(N)`` per chunk
        for the row maxima and sums (``N x H`` scaled rows with ``reduction="none"``), and
        the kept chunks' tiles unless they live in the weight gradient (all of these
        together at most ``N x I / 8`` by default, beyond 16 MiB of logits); ``N x I`` only
        with ``store_logits=True`` when the logits do not fit in the weight gradient. On
        the CPU the weight gradient is zero-filled when allocated (first-touch page faults
        inside the GEMMs cost far more; see :func:`_new_grad_w`).

    Raises:
        ValueError: bad shapes, dtypes, devices, reduction, or a target outside ``[0, I)``;
            the message names the shapes.
    """
    if process_group is not None and _world(process_group) > 1:
        from glta_gllm import _sharded

        return _sharded.linear_cross_entropy(
            hidden, weight, targets, bias, ignore_index=ignore_index, reduction=reduction,
            chunk_size=chunk_size, store_logits=store_logits, backend=backend,
            process_group=process_group,
        )  # fmt: skip
    targets = _check_lce_inputs(hidden, weight, targets, bias, ignore_index, reduction)
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = _auto_backend(hidden.device.type, hidden.dtype, store_logits,
                                _has_triton())
    if backend == "triton":
        _triton().check_device(hidden.device)
    return _LinearCrossEntropy.apply(
        hidden,
        weight,
        bias,
        targets,
        ignore_index,
        reduction,
        chunk_size,
        store_logits,
        torch.is_grad_enabled(),
        backend,
    )


def topk_excluding(
    queries: torch.Tensor,
    weight: torch.Tensor,
    k: int,
    *,
    bias: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
    chunk_size: int | None = None,
    process_group: object | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` items per query by ``queries @ weight^T + bias``, skipping excluded items.

    Streams over item chunks (and over user blocks when there are many users), keeping
    only a running ``(U, k)`` top list: the ``(U x I)`` score matrix is never built.
    Ties are broken deterministically: among equal scores the lower item index ranks first.

    Args:
        queries: ``(U, H)`` floating-point query rows (user embeddings, slot hidden states).
        weight: ``(I, H)`` item rows, same dtype and device.
        k: number of items to return per user, ``1 <= k <= I - excluded(u)`` for every user.
        bias: optional ``(I,)`` per-item bias added to the scores.
        exclude: optional ``(U, I)`` torch sparse CSR matrix; its stored entries (e.g. each
            user's training items) are never returned. Column indices of a row must be unique.
        chunk_size: items per chunk (default: from a score-buffer budget of 1/16 of the
            naive ``U x I`` scores, within 32 to 256 MiB).
        process_group: a ``torch.distributed`` group over which ``weight`` (and ``bias``)
            are sharded along items, as in :func:`linear_cross_entropy`; every rank passes
            the same ``queries`` and the global ``(U, I)`` ``exclude``. Each rank streams its
            shard, then the ranks' ``(U, k)`` lists are all-gathered and merged: the result,
            with global item indices, equals the unsharded one (ties to the lower index) on
            every rank. ``None`` or one rank: the unsharded path.

    Returns:
        ``(scores, indices)``: ``(U, k)`` scores in ``queries``' dtype, best first, and the
        ``(U, k)`` int64 item indices.

    Raises:
        ValueError: bad shapes/dtypes, a non-CSR ``exclude``, or ``k`` larger than the items
            left for some user (the message names the user and the counts).
    """
    if process_group is not None and _world(process_group) > 1:
        from glta_gllm import _sharded

        return _sharded.topk_excluding(
            queries, weight, k, bias=bias, exclude=exclude, chunk_size=chunk_size,
            process_group=process_group,
        )  # fmt: skip
    _check_topk_inputs(queries, weight, k, bias)
    users, items = queries.shape[0], weight.shape[0]
    excl_rows, excl_cols = _exclusions(exclude, users, items, k, queries.device)
    return _topk_stream(queries, weight, k, bias, excl_rows, excl_cols, chunk_size, queries.dtype)


def _world(group: object) -> int:
    """World size of a ``torch.distributed`` process group."""
    import torch.distributed as dist

    return dist.get_world_size(group)


def _check_topk_inputs(
    queries: torch.Tensor, weight: torch.Tensor, k: int, bias: torch.Tensor | None
) -> None:
    """``topk_excluding``'s shape/dtype/device checks (one ``ValueError`` naming them)."""
    if not isinstance(queries, torch.Tensor) or queries.dim() != 2:
        raise ValueError(f"queries must be 2-D (users, H), got shape {_shape(queries)}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (items, H), got shape {_shape(weight)}")
    if queries.shape[1] != weight.shape[1]:
        raise ValueError(
            f"hidden size mismatch: queries has shape {tuple(queries.shape)} but weight has "
            f"shape {tuple(weight.shape)}"
        )
    if not queries.is_floating_point() or queries.dtype != weight.dtype:
        raise ValueError(
            f"queries ({queries.dtype}) and weight ({weight.dtype}) must share a floating dtype"
        )
    if queries.device != weight.device:
        raise ValueError(f"queries are on {queries.device} but weight is on {weight.device}")
    items = weight.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if bias is not None and bias.shape != (items,):
        raise ValueError(
            f"bias must have shape ({items},) to match weight {tuple(weight.shape)}, "
            f"got {tuple(bias.shape)}"
        )


def _exclusions(
    exclude: torch.Tensor | None, users: int, items: int, k: int, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(rows, cols)`` of ``exclude``'s ``(users, items)`` CSR entries, sorted by column
    (None, None without ``exclude``), after checking that ``k`` items are left per user."""
    excl_rows = excl_cols = None
    if exclude is not None:
        if not isinstance(exclude, torch.Tensor) or exclude.layout != torch.sparse_csr:
            layout = exclude.layout if isinstance(exclude, torch.Tensor) else type(exclude)
            raise ValueError(
                f"exclude must be a torch sparse CSR tensor (users x items), got {layout} "
                f"with shape {_shape(exclude)}"
            )
        if tuple(exclude.shape) != (users, items):
            raise ValueError(
                f"exclude has shape {tuple(exclude.shape)} but {users} queries and {items} "
                f"items need ({users}, {items})"
            )
        crow = exclude.crow_indices().to(device=device, dtype=torch.int64)
        counts = crow[1:] - crow[:-1]
        left = items - counts
        if users and int(left.min()) < k:
            u = int((left < k).nonzero()[0, 0])
            raise ValueError(
                f"k={k} exceeds the items left for user {u}: {items} items - "
                f"{int(counts[u])} excluded = {int(left[u])} (exclude shape "
                f"{tuple(exclude.shape)})"
            )
        cols = exclude.col_indices().to(device=device, dtype=torch.int64)
        rows = torch.repeat_interleave(torch.arange(users, device=device), counts)
        order = torch.argsort(cols, stable=True)
        excl_cols, excl_rows = cols[order], rows[order]
    elif k > items:
        raise ValueError(f"k={k} exceeds the number of items {items}")
    return excl_rows, excl_cols


def _topk_stream(
    queries: torch.Tensor,
    weight: torch.Tensor,
    k: int,
    bias: torch.Tensor | None,
    excl_rows: torch.Tensor | None,
    excl_cols: torch.Tensor | None,
    chunk_size: int | None,
    out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The streaming top-``k`` of :func:`topk_excluding` over ``weight``'s rows, with the
    excluded ``(row, col)`` entries (sorted by col) scored ``-inf``; ``k <= weight`` rows.
    Returns ``(U, k)`` scores in ``out_dtype`` and int64 indices, ``(score desc, index asc)``."""
    users, items = queries.shape[0], weight.shape[0]
    device = queries.device
    acc = _acc_dtype(queries.dtype)
    elem = _elem(acc)
    # Score buffer: a sixteenth of the naive users x items scores, within [32, 256] MiB.
    budget = min(_TOPK_MAX_BYTES, max(_TOPK_BUFFER_BYTES, users * items * elem // 16))
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        chunk = min(chunk_size, items)
    else:
        chunk = min(items, max(1024, budget // max(users * elem, 1)))
    user_block = max(1, min(users, budget // (chunk * elem)))
    out_scores = torch.empty(users, k, dtype=out_dtype, device=device)
    out_idx = torch.empty(users, k, dtype=torch.int64, device=device)
    if users == 0:
        return out_scores, out_idx
    with torch.no_grad():
        buf = torch.empty(min(user_block, users) * chunk, dtype=acc, device=device)
        bounds = [(a, min(a + chunk, items)) for a in range(0, items, chunk)]
        if excl_cols is not None:
            starts = torch.searchsorted(
                excl_cols, torch.tensor([a for a, _ in bounds] + [items], device=device)
            ).tolist()
        for u0 in range(0, users, user_block):
            u1 = min(u0 + user_block, users)
            nu = u1 - u0
            q = queries[u0:u1].to(acc)
            best_v = torch.empty(nu, 0, dtype=acc, device=device)
            best_i = torch.empty(nu, 0, dtype=torch.int64, device=device)
            for j, (a, e) in enumerate(bounds):
                scores = buf[: nu * (e - a)].view(nu, e - a)
                _mm_chunk(scores, q, weight, bias, a, e, acc)
                if excl_cols is not None and starts[j + 1] > starts[j]:
                    r = excl_rows[starts[j] : starts[j + 1]]
                    c = excl_cols[starts[j] : starts[j + 1]]
                    sel = (r >= u0) & (r < u1)
                    scores.index_put_(
                        (r[sel] - u0, c[sel] - a),
                        torch.tensor(-math.inf, dtype=acc, device=device),
                    )
                if best_v.shape[1] < k:
                    v, i = _chunk_topk(scores, k)
                    best_v, best_i = _merge_sorted(best_v, best_i, v, i + a, k)
                else:
                    _merge_above_threshold(best_v, best_i, scores, a, k)
            out_scores[u0:u1] = best_v.to(out_dtype)
            out_idx[u0:u1] = best_i
    return out_scores, out_idx


def _chunk_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each row of a (U, C) tile, ties at the cut broken towards lower columns."""
    width = scores.shape[1]
    if width <= k:
        idx = torch.arange(width, device=scores.device).expand(scores.shape[0], width)
        return scores.clone(), idx.clone()
    v, i = torch.topk(scores, k + 1, dim=1, largest=True, sorted=True)
    tied = v[:, k - 1] == v[:, k]
    v, i = v[:, :k], i[:, :k]
    if bool(tied.any()):
        rows = tied.nonzero().squeeze(1)
        sv, si = torch.sort(scores[rows], dim=1, descending=True, stable=True)
        v = v.clone()
        i = i.clone()
        v[rows] = sv[:, :k]
        i[rows] = si[:, :k]
    return v, i


def _merge_sorted(
    v1: torch.Tensor, i1: torch.Tensor, v2: torch.Tensor, i2: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of the union of two candidate lists, ordered by (score desc, index asc)."""
    v = torch.cat([v1, v2], dim=1)
    i = torch.cat([i1, i2], dim=1)
    i, order = torch.sort(i, dim=1)
    v = v.gather(1, order)
    v, order = torch.sort(v, dim=1, descending=True, stable=True)
    i = i.gather(1, order)
    return v[:, :k], i[:, :k]


def _merge_above_threshold(
    best_v: torch.Tensor, best_i: torch.Tensor, scores: torch.Tensor, a: int, k: int
) -> None:
    """Merge a chunk into full running top-k lists (U, k), in place.

    Only entries strictly above a row's current k-th score can enter (an equal score has a
    higher item index than everything kept, so it loses the tie). After the first chunks
    these are few, so instead of a top-k over the whole tile the candidates are gathered
    sparsely and merged with their rows' lists by two stable sorts (score desc, then row),
    which keeps (score desc, index asc) order inside each row.
    """
    r, c = (scores > best_v[:, k - 1 :]).nonzero(as_tuple=True)  # grouped by row, cols asc
    if r.numel() == 0:
        return
    if r.numel() > scores.numel() // 8:  # many candidates: a dense top-k is cheaper
        v, i = _chunk_topk(scores, k)
        mv, mi = _merge_sorted(best_v, best_i, v, i + a, k)
        best_v.copy_(mv)
        best_i.copy_(mi)
        return
    rows_aff, counts = torch.unique_consecutive(r, return_counts=True)
    n_aff = rows_aff.numel()
    local = torch.repeat_interleave(torch.arange(n_aff, device=scores.device), counts)
    vals = torch.cat([best_v[rows_aff].reshape(-1), scores[r, c]])
    idxs = torch.cat([best_i[rows_aff].reshape(-1), c + a])
    rows = torch.cat([torch.arange(n_aff, device=scores.device).repeat_interleave(k), local])
    order = torch.sort(vals, descending=True, stable=True)[1]
    order = order[torch.sort(rows[order], stable=True)[1]]
    per_row = counts + k
    starts = torch.cumsum(per_row, 0) - per_row
    take = order[(starts.unsqueeze(1) + torch.arange(k, device=scores.device)).reshape(-1)]
    best_v[rows_aff] = vals[take].view(n_aff, k)
    best_i[rows_aff] = idxs[take].view(n_aff, k)


def shard_range(num_items: int, process_group: object | None = None) -> tuple[int, int]:
    """``(start, stop)``: the contiguous items this rank holds when ``num_items`` rows are
    sharded over ``process_group`` (``torch.tensor_split``'s layout: the first
    ``num_items % world`` ranks hold one item more). ``(0, num_items)`` without a group.

    Raises:
        ValueError: fewer items than ranks (every rank must hold at least one).
    """
    if isinstance(num_items, bool) or not isinstance(num_items, int) or num_items < 1:
        raise ValueError(f"num_items must be a positive int, got {num_items!r}")
    if process_group is None:
        return 0, num_items
    import torch.distributed as dist

    world, rank = dist.get_world_size(process_group), dist.get_rank(process_group)
    if num_items < world:
        raise ValueError(f"cannot shard {num_items} items over {world} ranks (one at least each)")
    base, extra = divmod(num_items, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)
