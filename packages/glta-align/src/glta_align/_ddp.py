"""The alignment stages' data-parallel step on ``DistributedDataParallel``.

Under torchrun every rank computes the loss of its own batch; :func:`ddp_loss` returns the
stage's loss function wrapped so that the backward also averages the trainable modules'
gradients over the ranks (DDP's bucketed all-reduces, started by autograd hooks while the
backward runs). A step is then ``loss = step_loss(batch); loss.backward();
optimizer.step()``, the step of one process on the union of the ranks' batches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn


class StageLoss(nn.Module):
    """A stage's trainable modules and its loss: ``forward(batch)`` is ``loss_fn(batch)``.

    The loss reaches the trainable parameters through several entry points (the head's
    ``loss``, the projectors applied to embedding tables, LoRA inside the LLM); as one
    module's ``forward``, every use happens inside DDP's forward, so DDP sees them all. The
    modules are held by reference (``parts``): their own state dicts, and so the stages'
    checkpoint keys, stay those of the unwrapped modules.

    Args:
        modules: the stage's modules by name (``run_loop``'s ``modules``).
        loss_fn: batch -> scalar loss tensor ``()`` of this rank's batch.
    """

    def __init__(self, modules: Mapping[str, nn.Module],
                 loss_fn: Callable[[Any], torch.Tensor]) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(dict(modules))
        self._loss_fn = loss_fn

    def forward(self, batch: Any) -> torch.Tensor:
        """The scalar loss ``()`` of ``batch``."""
        return self._loss_fn(batch)


def ddp_loss(modules: Mapping[str, nn.Module], loss_fn: Callable[[Any], torch.Tensor],
             world: int) -> Callable[[Any], torch.Tensor]:
    """``loss_fn`` whose backward averages the trainable gradients over ``world`` ranks.

    One process (``world <= 1``): ``loss_fn`` itself. Several: a
    ``DistributedDataParallel`` around :class:`StageLoss` on the default process group.
    Built after the modules hold their starting (or resumed) state: construction broadcasts
    rank 0's trainable parameters to every rank. Frozen parameters and buffers (the frozen
    LLM, embedding tables) are left out of that broadcast and of the reduction: every rank
    loads them from the same files. Every trainable parameter must receive a gradient in
    every step (DDP without ``find_unused_parameters``; DDP raises at the next step
    otherwise). Only the modules' use inside the returned callable is synchronised:
    validation, snapshots and checkpoints keep using ``modules`` directly.

    Args:
        modules: the stage's modules by name; their parameters with ``requires_grad`` are
            the ones averaged.
        loss_fn: batch -> scalar loss tensor ``()``.
        world: the number of ranks (``dist_info()[1]``).

    Returns:
        batch -> scalar loss tensor ``()``; call ``.backward()`` on it, then step.
    """
    if world <= 1:
        return loss_fn
    from torch.nn.parallel import DistributedDataParallel

    wrapper = StageLoss(modules, loss_fn)
    frozen = [n for n, p in wrapper.named_parameters() if not p.requires_grad]
    wrapper._ddp_params_and_buffers_to_ignore = frozen + [n for n, _ in wrapper.named_buffers()]
    return DistributedDataParallel(wrapper, forward_sync_buffers=False)
