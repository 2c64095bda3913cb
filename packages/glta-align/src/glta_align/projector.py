"""Node projectors: graph embeddings (d) -> LLM token-embedding space (H).

The paper's projector is one linear layer, ``V = E W^T + b`` (``kind="linear"``). The
``"mlp"`` option is ``Linear(d, H) -> GELU -> Linear(H, H)``. Saved as a GLTA artifact
(``config.json`` + ``model.safetensors`` with the dataset fingerprint).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from glta_gllm.checkpoint import CheckpointError, load_artifact, save_artifact
from torch import nn

__all__ = ["PROJECTOR_KINDS", "NodeProjector"]

PROJECTOR_KINDS = ("linear", "mlp")


class NodeProjector(nn.Module):
    """Map node embeddings into the LLM's embedding space.

    Args:
        in_dim: graph embedding size d.
        out_dim: LLM hidden size H.
        kind: ``"linear"`` (paper: ``V = E W^T + b``) or ``"mlp"``.
        init_scale: target RMS of the outputs at initialisation relative to ``1`` per unit
            input RMS; set it to the RMS of the LLM's token embeddings so that soft tokens
            start on the scale of real tokens.
    """

    def __init__(
        self, in_dim: int, out_dim: int, kind: str = "linear", *, init_scale: float = 1.0
    ) -> None:
        super().__init__()
        if kind not in PROJECTOR_KINDS:
            raise ValueError(f"projector kind must be one of {PROJECTOR_KINDS}, got {kind!r}")
        if in_dim < 1 or out_dim < 1:
            raise ValueError(f"projector dims must be >= 1, got in_dim={in_dim}, out_dim={out_dim}")
        self.in_dim, self.out_dim, self.kind = in_dim, out_dim, kind
        self.init_scale = float(init_scale)
        if kind == "linear":
            self.net = nn.Linear(in_dim, out_dim)
        else:
            self.net = nn.Sequential(
                nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim)
            )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal init scaled so that unit-RMS inputs give outputs of RMS ``init_scale``."""
        layers = [m for m in self.modules() if isinstance(m, nn.Linear)]
        for i, layer in enumerate(layers):
            std = (self.init_scale if i == len(layers) - 1 else 1.0) / math.sqrt(layer.in_features)
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)

    @property
    def linear(self) -> nn.Linear:
        """The (first) linear layer (W: (H, d), b: (H,)) — the whole map when kind='linear'."""
        return self.net if isinstance(self.net, nn.Linear) else self.net[0]

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """(..., d) graph embeddings -> (..., H) soft tokens."""
        if emb.shape[-1] != self.in_dim:
            raise ValueError(f"projector expects last dim {self.in_dim}, got {tuple(emb.shape)}")
        return self.net(emb)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}, kind={self.kind!r}"

    def config(self) -> dict[str, object]:
        """JSON-ready constructor arguments."""
        return {"in_dim": self.in_dim, "out_dim": self.out_dim, "kind": self.kind,
                "init_scale": self.init_scale}

    def save_pretrained(
        self, directory: str | os.PathLike[str], *, dataset_fingerprint: str | None = None,
        role: str = "item", metadata: dict[str, object] | None = None,
    ) -> Path:
        """Save as a GLTA artifact (atomic), tagged with the dataset fingerprint.

        ``metadata`` (JSON-ready) is stored in ``config.json`` beside the constructor
        arguments (stage 2 records its training speed there); loading ignores it.
        """
        card = (f"# {role}_projector\n\nGLTA {role} node projector ({self.kind}): graph "
                f"embeddings ({self.in_dim}) -> LLM token space ({self.out_dim}).\n")
        return save_artifact(directory, self.state_dict(),
                             {**(metadata or {}), **self.config(), "role": role},
                             dataset_fingerprint=dataset_fingerprint, card=card)

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike[str], *, expected_fingerprint: str | None = None,
        in_dim: int | None = None, out_dim: int | None = None,
    ) -> NodeProjector:
        """Load an artifact; checks fingerprint and, when given, the expected dims."""
        tensors, cfg, _ = load_artifact(directory, expected_fingerprint=expected_fingerprint)
        for name, want in (("in_dim", in_dim), ("out_dim", out_dim)):
            if want is not None and cfg.get(name) != want:
                raise CheckpointError(
                    f"{directory}: projector {name} is {cfg.get(name)}, expected {want}"
                )
        proj = cls(cfg["in_dim"], cfg["out_dim"], cfg.get("kind", "linear"),
                   init_scale=cfg.get("init_scale", 1.0))
        try:
            proj.load_state_dict(tensors)
        except RuntimeError as exc:
            raise CheckpointError(f"{directory}: projector weights do not fit ({exc})") from exc
        return proj
