"""Under torchrun (2 ranks): 3 Adam steps through ``ddp_loss`` on a small model, each rank
on its own batch; writes ``OUT/rank{RANK}.pt`` (the modules' state dicts, and the loss of
each step). ``python _ddp_worker.py OUT``. Also imported by the test for the one-process
reference (:func:`build`, :func:`batch`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn

STEPS = 3
WORLD = 2


def build() -> tuple[dict[str, nn.Module], torch.optim.Optimizer]:
    """Seeded modules: a frozen encoder, a trainable projector and head; Adam over both."""
    torch.manual_seed(0)
    frozen = nn.Linear(6, 8).requires_grad_(False)
    modules = {"frozen": frozen, "projector": nn.Linear(8, 16), "head": nn.Linear(16, 5)}
    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    return modules, torch.optim.Adam(params, lr=0.05)


def batch(index: int, size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Global batch ``index``: inputs ``(size, 6)``, targets ``(size,)`` (seeded by index)."""
    g = torch.Generator().manual_seed(100 + index)
    return torch.randn(size, 6, generator=g), torch.randint(0, 5, (size,), generator=g)


def loss_of(modules: dict[str, nn.Module]):
    """batch -> mean cross-entropy ``()`` through all three modules."""
    def loss_fn(b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = b
        h = torch.tanh(modules["projector"](modules["frozen"](x)))
        return nn.functional.cross_entropy(modules["head"](h), y)
    return loss_fn


def main() -> None:
    import torch.distributed as dist

    from glta_align._common import dist_info
    from glta_align._ddp import ddp_loss

    out = Path(sys.argv[1])
    rank, world = dist_info()
    modules, optimizer = build()
    if rank == 1:  # a different start: DDP's construction must broadcast rank 0's
        with torch.no_grad():
            modules["head"].weight.add_(1.0)
    step_loss = ddp_loss(modules, loss_of(modules), world)
    losses = []
    for j in range(STEPS):
        optimizer.zero_grad(set_to_none=True)
        loss = step_loss(batch(world * j + rank))
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    torch.save({"modules": {n: m.state_dict() for n, m in modules.items()}, "losses": losses},
               out / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
    # gloo's threads can abort the interpreter's teardown (SIGABRT in about 1 of 25-50 runs
    # on a 2-core VM); the results are saved, so leave without it
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
