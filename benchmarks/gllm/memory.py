"""Peak memory of the GLLM kernels beyond their inputs, each measured in a fresh process.

    uv run python benchmarks/gllm/memory.py lce 512 576 100000
    uv run python benchmarks/gllm/memory.py topk 4096 64 200000
    uv run python benchmarks/gllm/memory.py head 256 4096 64 1000000
    python benchmarks/gllm/memory.py lce 512 576 100000 --device cuda --dtype bfloat16

For every variant a new Python process builds the inputs, runs a small warm-up of the same
code (so libraries and thread pools exist; with ``--warmup full`` one step at the full shape,
so one-time costs such as Triton's autotuning are left out: the steady state; CUDA only),
records its resident set size, runs one step,
and reads the peak resident set (``VmHWM``, Linux). "extra" is peak minus that baseline
minus the gradients the step must return (hidden and weight, as the naive path also holds
them), i.e. the working memory. On CUDA the same is done with ``max_memory_allocated``.
Prints one JSON object per variant.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, math, sys, torch, torch.nn.functional as F
from glta_gllm import linear_cross_entropy, topk_excluding, ProjectedItemHead

kernel, variant, device = sys.argv[1], sys.argv[2], sys.argv[4]
dtype = getattr(torch, sys.argv[5])
shape = [int(x) for x in sys.argv[3].split(",")]
cuda = device.startswith("cuda")
warm_full = sys.argv[6] == "full"

def rss_mb(field):
    if cuda:
        peak = field == "VmHWM"
        used = torch.cuda.max_memory_allocated() if peak else torch.cuda.memory_allocated()
        return used / 2**20
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(field)

def lce_inputs(rows, hid, items, scale=1):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(rows, hid, generator=g).to(device, dtype).requires_grad_()
    w = (torch.randn(items, hid, generator=g) / math.sqrt(hid)).to(device, dtype)
    w.requires_grad_()
    t = torch.randint(0, items, (rows,), generator=g).to(device)
    return h, w, t

def lce_step(h, w, t):
    if variant == "naive":
        loss = F.cross_entropy(F.linear(h, w), t)
    elif variant == "glta":
        loss = linear_cross_entropy(h, w, t)
    elif variant == "glta_recompute":
        loss = linear_cross_entropy(h, w, t, store_logits=False)
    elif variant == "glta_keepall":
        loss = linear_cross_entropy(h, w, t, store_logits=True)
    elif variant == "glta_triton":
        loss = linear_cross_entropy(h, w, t, backend="triton")
    elif variant == "glta_torch":
        loss = linear_cross_entropy(h, w, t, backend="torch")
    elif variant.startswith("torch"):
        opts = torch.nn.LinearCrossEntropyOptions
        o = opts() if variant == "torch_auto" else opts(batch_chunk_size=int(variant[11:]))
        loss = F.linear_cross_entropy(h, w, t, options=o)
    loss.backward()
    return (h.numel() + w.numel()) * h.element_size() / 2**20

def topk_step(q, w, excl, rows, cols, k):
    if variant == "naive":
        s = q @ w.T
        s[rows, cols] = -math.inf
        s.topk(k, dim=1)
    else:
        topk_excluding(q, w, k, exclude=excl)
    return 0.0

def topk_inputs(users, dim, items, per_user=50):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(users, dim, generator=g).to(device)
    w = torch.randn(items, dim, generator=g).to(device)
    cols = torch.randint(0, items, (users, per_user), generator=g).sort(dim=1).values.reshape(-1)
    rows = torch.arange(users).repeat_interleave(per_user)
    excl = torch.sparse_coo_tensor(torch.stack([rows, cols]), torch.ones(rows.numel()),
                                   (users, items)).coalesce().to_sparse_csr().to(device)
    return q, w, excl, rows.to(device), cols.to(device)

def head_inputs(rows, hid, dim, items):
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(items, dim, generator=g).to(device)
    proj = torch.nn.Linear(dim, hid).to(device)
    h = torch.randn(rows, hid, generator=g).to(device).requires_grad_()
    t = torch.randint(0, items, (rows,), generator=g).to(device)
    return ProjectedItemHead(emb, proj), h, t

def head_step(head, h, t):
    if variant == "matching":
        head.loss(h, t).backward()
    else:  # plain head over the materialised tokens, weight trainable
        w = head.item_tokens().detach().requires_grad_()
        F.cross_entropy(F.linear(h, w), t).backward()
        return (h.numel() + 2 * w.numel()) * 4 / 2**20
    return (h.numel() + sum(p.numel() for p in head.projector.parameters())) * 4 / 2**20

if kernel == "lce":
    small = lce_inputs(min(shape[0], 8), shape[1], 1000)
    lce_step(*small); del small
    args = lce_inputs(*shape)
    step = lce_step
    if warm_full:  # one step at the full shape first (autotuning, allocator): steady state
        lce_step(*args)
        args[0].grad = args[1].grad = None
elif kernel == "topk":
    small = topk_inputs(8, shape[1], 2000, per_user=5)
    topk_step(*small, k=20); del small
    args = topk_inputs(*shape)
    step = lambda *a: topk_step(*a, k=20)
else:
    small = head_inputs(4, shape[1], shape[2], 1000)
    head_step(*small); del small
    args = head_inputs(*shape)
    step = head_step
if cuda:
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
base = rss_mb("VmRSS")
grads = step(*args)
if cuda:
    torch.cuda.synchronize()
peak = rss_mb("VmHWM")
print(json.dumps({"kernel": kernel, "variant": variant, "shape": shape, "device": device,
                  "baseline_mb": round(base, 1), "peak_mb": round(peak, 1),
                  "grads_mb": round(grads, 1), "extra_mb": round(peak - base - grads, 1)}))
"""

VARIANTS = {
    "lce": ["naive", "glta", "glta_recompute", "glta_keepall", "torch_auto", "torch_chunk64"],
    "topk": ["naive", "glta"],
    "head": ["plain", "matching"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kernel", choices=sorted(VARIANTS))
    parser.add_argument("shape", nargs="+", type=int)
    parser.add_argument("--variants", default="", help="comma list (default: all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="lce inputs, e.g. bfloat16")
    parser.add_argument("--warmup", choices=("small", "full"), default="small",
                        help="lce: warm up on a small shape (first full-size call measured) "
                             "or on the full shape (steady state)")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v] or VARIANTS[args.kernel]
    if args.warmup == "full" and not args.device.startswith("cuda"):
        # the CPU's peak RSS would include the warm-up, and freed pages are reused
        parser.error("--warmup full needs --device cuda (max_memory_allocated)")
    results = []
    for variant in variants:
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                CHILD,
                args.kernel,
                variant,
                ",".join(map(str, args.shape)),
                args.device,
                args.dtype,
                args.warmup,
            ],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            print(json.dumps({"variant": variant, "error": out.stderr.strip()[-400:]}))
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(row)
        print(json.dumps(row), flush=True)
    naive = next((r for r in results if r["variant"] in ("naive", "plain")), None)
    if naive and naive["extra_mb"] > 0:
        for r in results:
            print(
                json.dumps(
                    {
                        "variant": r["variant"],
                        "extra_vs_naive": round(r["extra_mb"] / naive["extra_mb"], 3),
                    }
                )
            )


if __name__ == "__main__":
    main()
