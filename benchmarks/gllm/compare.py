"""Interleaved timing of the GLLM kernels against the naive path and torch's own kernel.

    uv run python benchmarks/gllm/compare.py lce 512 576 100000
    uv run python benchmarks/gllm/compare.py topk 4096 64 200000 --k 20
    uv run python benchmarks/gllm/compare.py head 256 4096 64 1000000   # rows H d items
    uv run python benchmarks/gllm/compare.py sgemm --dtypes float32,bfloat16,int8 [m k n]
    python benchmarks/gllm/compare.py lce 512 576 100000 --device cuda --dtype bfloat16

Each variant runs ``--repeats`` times, the variants interleaved (naive, ours, torch, naive,
...) so that a noisy shared machine slows them alike; the minimum is reported with its ratio
to the naive path and its GFLOP/s (fwd+bwd cross-entropy counts 3 matmuls of 2*N*H*I flops;
a top-k counts one). Seeds are fixed. Prints one JSON object per variant. ``--clock cpu``
times process CPU time instead of wall time: with ``--threads 1`` on a shared machine it
leaves out the time other jobs held the core (cache and memory bandwidth are still shared).
``--device cuda`` runs everything on the GPU (synchronising around each timed call) and
``--dtype`` sets the inputs' dtype (lce, topk, head; sgemm takes ``--dtypes``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import time

import glta_gllm.functional as fn
import torch
import torch.nn.functional as F
from glta_gllm import linear_cross_entropy, topk_excluding


def sgemm_gflops(
    n: int = 2048, repeats: int = 5, *, dtype: torch.dtype = torch.float32,
    shape: tuple[int, int, int] | None = None,
) -> float:
    """This machine's matmul rate on an (m x k) @ (k x n) product, best of ``repeats``.

    ``shape`` is ``(m, k, n)`` (default ``(n, n, n)``); ``dtype`` float32 (SGEMM) or e.g.
    bfloat16, to compare the two on this CPU; ``torch.int8``: ``torch._int_mm`` (int8
    inputs, int32 accumulation, the product behind ``glta_align``'s ``dtype="int8"``), the
    rate then in GOP/s.
    """
    m, k, n = shape or (n, n, n)
    if dtype == torch.int8:
        a = torch.randint(-127, 128, (m, k), dtype=dtype)
        b = torch.randint(-127, 128, (k, n), dtype=dtype)

        def product() -> None:
            torch._int_mm(a, b)
    else:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        out = torch.empty(m, n, dtype=dtype)

        def product() -> None:
            torch.mm(a, b, out=out)
    product()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        product()
        best = min(best, time.perf_counter() - t0)
    return 2 * m * k * n / best / 1e9


# "wall" (default) or "cpu": process CPU time, for 1-thread runs on a shared machine (time
# spent preempted by other jobs is not counted; cache and memory-bandwidth sharing still is).
CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = CLOCK["wall"]


_DEVICE = torch.device("cpu")
_DTYPE = torch.float32


def _sync() -> None:
    if _DEVICE.type == "cuda":
        torch.cuda.synchronize(_DEVICE)


def _put(x: torch.Tensor, *, cast: bool = True) -> torch.Tensor:
    """Move a benchmark input to ``--device`` (and ``--dtype`` when it is floating)."""
    return x.to(_DEVICE, _DTYPE if cast and x.is_floating_point() else x.dtype)


def _timed(fn_) -> float:
    _sync()
    t0 = _clock()
    fn_()
    _sync()
    return _clock() - t0


def lce_variants(
    rows: int,
    hid: int,
    items: int,
    torch_chunks: list[int],
    glta_chunks: list[int] = (),
    glta_store: bool | None = None,
    logit_scale: float = 1.0,
):
    g = torch.Generator().manual_seed(0)
    # logit_scale > 1 makes the logits peaky (std ~ logit_scale): many probabilities then fall
    # below fp32's normal range, the case the kernels' probability floor is for
    h = _put(torch.randn(rows, hid, generator=g) * logit_scale).requires_grad_()
    w = _put(torch.randn(items, hid, generator=g) / math.sqrt(hid)).requires_grad_()
    t = _put(torch.randint(0, items, (rows,), generator=g))

    def step(loss_fn):
        def run():
            h.grad = None
            w.grad = None
            loss_fn().backward()

        return run

    variants = {
        "naive": step(lambda: F.cross_entropy(F.linear(h, w), t)),
        "glta": step(lambda: linear_cross_entropy(h, w, t)),
        "glta_recompute": step(lambda: linear_cross_entropy(h, w, t, store_logits=False)),
        "glta_keepall": step(lambda: linear_cross_entropy(h, w, t, store_logits=True)),
    }
    if _DEVICE.type == "cuda" and _DTYPE in (torch.bfloat16, torch.float16):
        # the same kernel with its inputs upcast to fp32 GEMMs (the CPU route)
        def upcast():
            lowp, fn._lowp_gemm = fn._lowp_gemm, lambda h: False
            try:
                return linear_cross_entropy(h, w, t)
            finally:
                fn._lowp_gemm = lowp

        variants["glta_upcast"] = step(upcast)
    if _DEVICE.type == "cpu":
        # the default plan with the weight gradient left to the GEMMs' first-touch page
        # faults instead of zero-filled when allocated (what fn._new_grad_w avoids)
        def nofill():
            new, fn._new_grad_w = fn._new_grad_w, lambda w: torch.empty_like(w)
            try:
                return linear_cross_entropy(h, w, t)
            finally:
                fn._new_grad_w = new

        variants["glta_nofill"] = step(nofill)
    if _DEVICE.type == "cuda" and importlib.util.find_spec("triton") is not None:
        variants["glta_triton"] = step(lambda: linear_cross_entropy(h, w, t, backend="triton"))
        variants["glta_torch"] = step(lambda: linear_cross_entropy(h, w, t, backend="torch"))
    for c in glta_chunks:
        variants[f"glta_c{c}"] = step(
            lambda c=c: linear_cross_entropy(h, w, t, chunk_size=c, store_logits=glta_store)
        )
    options = getattr(torch.nn, "LinearCrossEntropyOptions", None)
    if options is not None and hasattr(F, "linear_cross_entropy"):
        variants["torch_auto"] = step(lambda: F.linear_cross_entropy(h, w, t, options=options()))
        for c in torch_chunks:
            variants[f"torch_chunk{c}"] = step(
                lambda c=c: F.linear_cross_entropy(h, w, t, options=options(batch_chunk_size=c))
            )
    return variants, 3 * 2.0 * rows * hid * items


def topk_variants(users: int, dim: int, items: int, k: int, per_user: int):
    g = torch.Generator().manual_seed(0)
    q = _put(torch.randn(users, dim, generator=g))
    w = _put(torch.randn(items, dim, generator=g))
    cols = torch.randint(0, items, (users, per_user), generator=g).sort(dim=1).values
    dense_rows = torch.arange(users).repeat_interleave(per_user)
    exclude = (
        torch.sparse_coo_tensor(
            torch.stack([dense_rows, cols.reshape(-1)]),
            torch.ones(users * per_user),
            (users, items),
        )
        .coalesce()
        .to_sparse_csr()
        .to(_DEVICE)
    )
    mask_rows, mask_cols = _put(dense_rows), _put(cols.reshape(-1))

    def naive():
        scores = q @ w.T
        scores[mask_rows, mask_cols] = -math.inf
        return scores.topk(k, dim=1)

    return {
        "naive": naive,
        "glta": lambda: topk_excluding(q, w, k, exclude=exclude),
    }, 2.0 * users * dim * items


def head_variants(rows: int, hid: int, dim: int, items: int, plain: bool):
    from glta_gllm import GLLMHead, ProjectedItemHead
    from torch import nn

    g = torch.Generator().manual_seed(0)
    matching = ProjectedItemHead(torch.randn(items, dim, generator=g), nn.Linear(dim, hid))
    matching = matching.to(_DEVICE, _DTYPE)
    hidden = _put(torch.randn(rows, hid, generator=g)).requires_grad_()
    targets = _put(torch.randint(0, items, (rows,), generator=g))

    def step(head, params):
        def run():
            for p in params:
                p.grad = None
            head.loss(hidden, targets).backward()

        return run

    variants = {"matching": step(matching, [hidden, *matching.projector.parameters()])}
    if plain:  # the plain head over the same (materialised) tokens, weight trainable
        head = GLLMHead.from_item_tokens(matching.item_tokens().detach())
        variants = {"naive": step(head, [hidden, head.weight]), **variants}
    return variants, 3 * 2.0 * rows * hid * items


def run(
    variants: dict, flops: float, repeats: int, only: list[str] | None, warmup: bool = True
) -> list[dict]:
    names = [
        n for n in variants if not only or n in only or (n == "naive" and "-naive" not in only)
    ]
    for n in names * warmup:
        variants[n]()
    _sync()
    best = {n: math.inf for n in names}
    for _ in range(repeats):
        for n in names:
            best[n] = min(best[n], _timed(variants[n]))
    rows = []
    for n in names:
        rows.append(
            {
                "variant": n,
                "seconds": round(best[n], 4),
                "vs_naive": round(best[n] / best["naive"], 3) if "naive" in best else None,
                "gflops": round(flops / best[n] / 1e9, 1),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kernel", choices=["lce", "topk", "head", "sgemm"])
    parser.add_argument("shape", nargs="*", type=int, help="rows H items (lce) / users d items")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--dtypes", default="float32", help="sgemm: e.g. float32,bfloat16,int8")
    parser.add_argument("--exclude-per-user", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", help="lce/topk/head: e.g. bfloat16")
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up round")
    parser.add_argument("--logit-scale", type=float, default=1.0,
                        help="lce: multiply the hidden states (logit std ~ this); e.g. 40")
    parser.add_argument("--no-plain", action="store_true", help="head: skip the plain head")
    parser.add_argument("--torch-chunks", default="32,64,128,256")
    parser.add_argument(
        "--glta-chunks", default="", help="lce: extra glta variants with these chunk sizes"
    )
    parser.add_argument(
        "--glta-store",
        choices=["auto", "keep", "recompute"],
        default="auto",
        help="lce: store_logits of the --glta-chunks variants (None, True, False)",
    )
    parser.add_argument(
        "--only", default="", help="comma list of variants (naive always, unless -naive)"
    )
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCK),
        default="wall",
        help="cpu: process CPU time (use with --threads 1 on a loaded machine)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    global _clock, _DEVICE, _DTYPE
    _clock = CLOCK[args.clock]
    _DEVICE, _DTYPE = torch.device(args.device), getattr(torch, args.dtype)
    meta = {"threads": torch.get_num_threads(), "torch": torch.__version__, "clock": args.clock,
            "device": str(_DEVICE), "dtype": args.dtype}
    if _DEVICE.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(_DEVICE)
    if args.kernel == "sgemm":
        shape = tuple(args.shape) if args.shape else None
        if shape is not None and len(shape) != 3:
            raise SystemExit("sgemm takes an optional shape: m k n")
        for name in args.dtypes.split(","):
            rate = sgemm_gflops(dtype=getattr(torch, name), shape=shape)
            print(json.dumps({**meta, "gemm_gflops": round(rate, 1), "dtype": name,
                              "shape": list(shape or (2048,) * 3)}))
        return
    only = [x for x in args.only.split(",") if x] or None
    if args.kernel == "lce":
        rows, hid, items = args.shape
        chunks = [int(c) for c in args.torch_chunks.split(",") if c]
        glta_chunks = [int(c) for c in args.glta_chunks.split(",") if c]
        store = {"auto": None, "keep": True, "recompute": False}[args.glta_store]
        variants, flops = lce_variants(rows, hid, items, chunks, glta_chunks, store,
                                       args.logit_scale)
        lowp = fn._lowp_gemm(torch.empty(1, dtype=_DTYPE, device=_DEVICE))
        chunk, kept = fn._plan(rows, items, hid, _DTYPE, _DEVICE, lowp)
        elem = torch.empty((), dtype=_DTYPE).element_size()
        in_grad = fn._logits_fit_in_grad(rows, items, hid, elem, fn._elem(fn._acc_dtype(_DTYPE)))
        plan = {"chunk": chunk, "kept_chunks": "all, in grad_W" if in_grad else kept}
        meta.update(shape=[rows, hid, items], plan=plan, logit_scale=args.logit_scale)
    elif args.kernel == "head":
        rows, hid, dim, items = args.shape
        variants, flops = head_variants(rows, hid, dim, items, not args.no_plain)
        meta.update(shape=[rows, hid, dim, items])
    else:
        users, dim, items = args.shape
        variants, flops = topk_variants(users, dim, items, args.k, args.exclude_per_user)
        meta.update(shape=[users, dim, items], k=args.k)
    for row in run(variants, flops, args.repeats, only, not args.no_warmup):
        print(json.dumps({**row, **meta}))


if __name__ == "__main__":
    main()
