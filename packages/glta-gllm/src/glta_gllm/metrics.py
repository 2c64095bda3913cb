"""Top-K ranking metrics: precision, recall, NDCG and hit rate at several cut-offs.

All users are evaluated at once with tensor operations (no Python loop over users): each
ranked item ``(u, i)`` is turned into the key ``u * num_items + i`` and looked up by binary
search in the sorted keys of the relevant matrix.

For a user ``u`` with relevant set ``R_u`` (``|R_u| > 0``) and ranked list ``r_1, r_2, ...``,
with ``hit_j = [r_j in R_u]``::

    precision@K = sum_{j<=K} hit_j / K
    recall@K    = sum_{j<=K} hit_j / |R_u|
    hit_rate@K  = [sum_{j<=K} hit_j > 0]
    ndcg@K      = DCG@K / IDCG@K,  DCG@K = sum_{j<=K} hit_j / log2(j + 1),
                  IDCG@K = sum_{j<=min(|R_u|, K)} 1 / log2(j + 1)

Each metric is the mean over the users that have at least one relevant item; users without
relevant items are skipped and ``"users"`` reports how many were evaluated.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["ranking_metrics"]


def ranking_metrics(
    ranked: torch.Tensor,
    relevant: torch.Tensor,
    ks: Sequence[int] = (5, 10, 20),
) -> dict[str, float]:
    """Precision, recall, NDCG and hit rate at each cut-off K, averaged over users.

    Args:
        ranked: ``(U, Kmax)`` int64 item indices, best first, one row per user (e.g. the
            indices returned by :func:`glta_gllm.topk_excluding`). ``Kmax >= max(ks)``.
            Every index must lie in ``[0, I)``. A row should not repeat an item.
        relevant: ``(U, I)`` torch sparse CSR matrix; a stored entry (any value) at
            ``(u, i)`` marks item ``i`` relevant for user ``u`` (e.g. the test split).
            Sparse COO is accepted and converted; a dense tensor is rejected.
        ks: the cut-offs K, each in ``[1, Kmax]``.

    Returns:
        ``{"precision@K", "recall@K", "ndcg@K", "hit_rate@K"}`` for each K as Python floats,
        plus ``"users"``: the number of users with at least one relevant item (the users
        averaged over). When no user has a relevant item every metric is ``0.0`` and
        ``"users"`` is ``0``.

    Raises:
        ValueError: on a shape, dtype, layout or index-range problem (the message names the
            offending argument and its shape).
    """
    ks = _check_ks(ks)
    if not isinstance(ranked, torch.Tensor) or ranked.dim() != 2:
        shape = tuple(ranked.shape) if isinstance(ranked, torch.Tensor) else type(ranked)
        raise ValueError(f"ranked must be a 2-D (users, Kmax) tensor, got {shape}")
    if ranked.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"ranked must hold integer item indices, got dtype {ranked.dtype}")
    relevant = _as_csr(relevant, "relevant")
    num_users, num_items = relevant.shape
    if ranked.shape[0] != num_users:
        raise ValueError(
            f"ranked has {ranked.shape[0]} rows (shape {tuple(ranked.shape)}) but relevant has "
            f"{num_users} users (shape {tuple(relevant.shape)})"
        )
    kmax = ranked.shape[1]
    if max(ks) > kmax:
        raise ValueError(
            f"cut-off K={max(ks)} exceeds the ranked list length {kmax} "
            f"(ranked shape {tuple(ranked.shape)})"
        )
    ranked = ranked[:, : max(ks)].to(torch.int64)
    if ranked.numel() and (int(ranked.min()) < 0 or int(ranked.max()) >= num_items):
        raise ValueError(
            f"ranked holds item indices outside [0, {num_items}) "
            f"(min {int(ranked.min())}, max {int(ranked.max())})"
        )

    device = ranked.device
    crow = relevant.crow_indices().to(device=device, dtype=torch.int64)
    cols = relevant.col_indices().to(device=device, dtype=torch.int64)
    n_relevant = crow[1:] - crow[:-1]  # (U,)
    rows = torch.repeat_interleave(torch.arange(num_users, device=device), n_relevant)
    keys, _ = torch.sort(rows * num_items + cols)  # sorted relevant (u, i) keys
    query = torch.arange(num_users, device=device).unsqueeze(1) * num_items + ranked
    if keys.numel():
        pos = torch.searchsorted(keys, query).clamp_(max=keys.numel() - 1)
        hits = keys[pos] == query  # (U, Kmax') bool
    else:
        hits = torch.zeros_like(query, dtype=torch.bool)

    evaluated = n_relevant > 0
    n_users = int(evaluated.sum())
    out: dict[str, float] = {}
    if n_users == 0:
        for k in ks:
            for name in ("precision", "recall", "ndcg", "hit_rate"):
                out[f"{name}@{k}"] = 0.0
        out["users"] = 0
        return out

    hits = hits[evaluated].to(torch.float64)
    n_rel = n_relevant[evaluated].to(torch.float64)
    discounts = 1.0 / torch.log2(
        torch.arange(2, hits.shape[1] + 2, device=device, dtype=torch.float64)
    )
    cum_hits = hits.cumsum(dim=1)
    dcg = (hits * discounts).cumsum(dim=1)
    ideal = discounts.cumsum(dim=0)  # ideal[j] = IDCG with j+1 relevant items in the list
    for k in ks:
        h = cum_hits[:, k - 1]
        idcg = ideal[(n_rel.clamp(max=k) - 1).to(torch.int64)]
        out[f"precision@{k}"] = float((h / k).mean())
        out[f"recall@{k}"] = float((h / n_rel).mean())
        out[f"ndcg@{k}"] = float((dcg[:, k - 1] / idcg).mean())
        out[f"hit_rate@{k}"] = float((h > 0).to(torch.float64).mean())
    out["users"] = n_users
    return out


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in ks)
    except TypeError as exc:
        raise ValueError(f"ks must be a sequence of positive integers, got {ks!r}") from exc
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive integers, got {ks!r}")
    return ks


def _as_csr(matrix: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(matrix, torch.Tensor):
        raise ValueError(f"{name} must be a torch sparse CSR tensor, got {type(matrix).__name__}")
    if matrix.layout == torch.sparse_coo:
        matrix = matrix.coalesce().to_sparse_csr()
    if matrix.layout != torch.sparse_csr:
        raise ValueError(
            f"{name} must be a torch sparse CSR tensor (users x items), got layout "
            f"{matrix.layout} with shape {tuple(matrix.shape)}"
        )
    if matrix.dim() != 2:
        raise ValueError(f"{name} must be 2-D (users x items), got shape {tuple(matrix.shape)}")
    return matrix
