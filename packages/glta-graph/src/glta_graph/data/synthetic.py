"""Random split interaction data for tests, examples and benchmarks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from glta_graph.data.interactions import Interactions, csr_from_pairs

__all__ = ["random_interactions"]


def random_interactions(users: int, items: int, *, lengths: tuple[int, int] = (0, 12),
                        split_p: Sequence[float] = (0.6, 0.2, 0.2), skew: float | None = None,
                        anchor: bool = False, seed: int = 0) -> Interactions:
    """A random, already split :class:`Interactions` of ``users`` x ``items``.

    Each user gets ``n ~ U{lengths[0], lengths[1] - 1}`` distinct items, drawn uniformly or,
    with ``skew``, from a Pareto(``skew``) popularity (a long tail of rarely seen items); each
    interaction goes to train / valid / test with probabilities ``split_p``. Ids are the
    indices as strings.

    Args:
        users: U.
        items: I (>= ``lengths[1] - 1``).
        lengths: half-open range of a user's interaction count (0 allows empty users).
        split_p: (train, valid, test) probabilities, summing to 1.
        skew: Pareto shape of the item popularity (``None``: uniform).
        anchor: a user with >= 2 items has his first one in train and his last in test.
        seed: the random stream.

    Returns:
        ``Interactions`` with ``train``, ``valid``, ``test`` (U x I) CSR matrices.

    Raises:
        ValueError: ``lengths`` does not fit the catalogue or ``split_p`` is not 3 probabilities.
    """
    lo, hi = (int(x) for x in lengths)
    if not 0 <= lo < hi or hi - 1 > items:
        raise ValueError(f"lengths {lengths}: need 0 <= low < high <= items + 1 ({items} items)")
    probs = np.asarray(split_p, dtype=np.float64)
    if probs.shape != (3,) or (probs < 0).any() or not np.isclose(probs.sum(), 1.0):
        raise ValueError(f"split_p {tuple(split_p)}: need 3 probabilities summing to 1")
    rng = np.random.default_rng(seed)
    p = None
    if skew is not None:
        pop = rng.pareto(skew, items) + 0.05
        p = pop / pop.sum()
    split: dict[str, tuple[list[int], list[int]]] = {n: ([], []) for n in ("train", "valid",
                                                                             "test")}
    for u in range(users):
        n = int(rng.integers(lo, hi))
        chosen = rng.choice(items, n, replace=False, p=p)
        codes = rng.choice(3, n, p=probs)
        if anchor and n >= 2:
            codes[0], codes[-1] = 0, 2
        for name, code in (("train", 0), ("valid", 1), ("test", 2)):
            part = chosen[codes == code]
            split[name][0].extend([u] * len(part))
            split[name][1].extend(part.tolist())
    mats = {k: csr_from_pairs(v[0], v[1], users, items) for k, v in split.items()}
    return Interactions([str(i) for i in range(users)], [str(i) for i in range(items)], **mats)
