"""The LightGCN model (He et al., SIGIR 2020): one model, one file."""

from __future__ import annotations

import torch
from torch import nn

from glta_graph.adjacency import GraphPropagator

__all__ = ["LightGCN"]


class LightGCN(nn.Module):
    r"""LightGCN: linear, parameter-free propagation of ID embeddings on the user-item graph.

    With layer-0 embeddings :math:`E^{(0)} = [E_u^{(0)}; E_i^{(0)}] \in
    \mathbb{R}^{(U+I) \times d}` and the symmetric-normalised adjacency
    :math:`\tilde A = D^{-1/2} A D^{-1/2}` (see :mod:`glta_graph.adjacency`),

    .. math::

        E^{(k+1)} = \tilde A\, E^{(k)}, \qquad
        E = \frac{1}{L+1} \sum_{k=0}^{L} E^{(k)},

    and a user-item score is :math:`\hat y_{ui} = e_u^\top e_i`. The only parameters are the
    layer-0 embeddings; there are no feature transforms and no non-linearities.

    Args:
        num_users: ``U``, number of users (rows ``0..U-1`` of the graph).
        num_items: ``I``, number of items (rows ``U..U+I-1`` of the graph).
        dim: ``d``, embedding size (64 in the paper).
        layers: ``L``, number of propagation layers (3 in the paper); 0 gives plain MF.

    Initialisation (:meth:`reset_parameters`): normal with std 0.1, as in the authors'
    reference PyTorch code (``nn.init.normal_(std=0.1)``), drawn from ``generator`` when given.
    """

    def __init__(self, num_users: int, num_items: int, dim: int = 64, layers: int = 3) -> None:
        super().__init__()
        for name, value, low in (("num_users", num_users, 1), ("num_items", num_items, 1),
                                 ("dim", dim, 1), ("layers", layers, 0)):
            if int(value) != value or value < low:
                raise ValueError(f"LightGCN {name} must be an integer >= {low}, got {value!r}")
        self.num_users = int(num_users)
        self.num_items = int(num_items)
        self.dim = int(dim)
        self.layers = int(layers)
        self.user_embedding = nn.Embedding(self.num_users, self.dim)
        self.item_embedding = nn.Embedding(self.num_items, self.dim)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Re-draw the layer-0 embeddings from N(0, 0.1^2) (reference-code init)."""
        with torch.no_grad():
            for emb in (self.user_embedding, self.item_embedding):
                w = torch.randn(emb.weight.shape, generator=generator, dtype=emb.weight.dtype)
                emb.weight.copy_(w.mul_(0.1))

    def forward(
        self, adj: GraphPropagator | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Propagate and average the layer outputs.

        Args:
            adj: a :class:`GraphPropagator` over ``U+I`` nodes, or the ``(U+I, U+I)`` sparse
                CSR adjacency itself (then propagated with the ``"csr"`` backend).

        Returns:
            ``(user_emb, item_emb)`` of shapes ``(U, d)`` and ``(I, d)``: the mean of the
            layer outputs ``0..L``.
        """
        if not isinstance(adj, GraphPropagator):
            adj = GraphPropagator(adj, backend="csr", device=adj.device)
        n = self.num_users + self.num_items
        if adj.num_nodes != n:
            raise ValueError(
                f"adjacency has {adj.num_nodes} nodes, model has {self.num_users} users + "
                f"{self.num_items} items = {n}"
            )
        x = torch.cat([self.user_embedding.weight, self.item_embedding.weight], dim=0)
        total = x
        for _ in range(self.layers):
            x = adj(x)
            total = total + x
        out = total / (self.layers + 1)
        return out[: self.num_users], out[self.num_users :]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_users={self.num_users}, num_items={self.num_items}, "
            f"dim={self.dim}, layers={self.layers})"
        )
