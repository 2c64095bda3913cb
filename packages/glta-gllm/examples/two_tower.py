"""A small sequential recommender whose output layer is a GLLMHead.

The user tower embeds the last few items a user interacted with and mean-pools them; the
GLLMHead scores the whole catalogue from that hidden state. Training uses the fused,
chunked cross-entropy (no users x items logits), ranking the streaming top-k with each
user's history excluded. Synthetic data: a user's next item follows a fixed random
permutation of the catalogue, so the task is learnable and the loss must go down.

Run:  python two_tower.py   (needs only torch, safetensors and glta-gllm)
"""

from __future__ import annotations

import tempfile

import torch
from torch import nn

from glta_gllm import GLLMHead, ranking_metrics


class SequenceTower(nn.Module):
    """Mean of the embeddings of a user's last ``window`` items, then a small MLP."""

    def __init__(self, num_items: int, hidden: int) -> None:
        super().__init__()
        self.items = nn.Embedding(num_items, hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))

    def forward(self, history: torch.Tensor) -> torch.Tensor:  # (B, window) -> (B, hidden)
        return self.mlp(self.items(history).mean(dim=1))


def make_data(num_items: int, users: int, window: int, generator: torch.Generator):
    """Histories where each next item is successor[previous item]."""
    successor = torch.randperm(num_items, generator=generator)
    start = torch.randint(0, num_items, (users,), generator=generator)
    seq = [start]
    for _ in range(window):
        seq.append(successor[seq[-1]])
    seq = torch.stack(seq, dim=1)  # (users, window + 1)
    return seq[:, :window], seq[:, window]


def main(steps: int = 60, seed: int = 0) -> list[float]:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    num_items, hidden, window = 500, 32, 3
    history, target = make_data(num_items, 2048, window, g)

    tower = SequenceTower(num_items, hidden)
    head = GLLMHead(hidden, num_items)  # replaces nn.Linear(hidden, num_items)
    optim = torch.optim.Adam([*tower.parameters(), *head.parameters()], lr=1e-2)

    losses = []
    for step in range(steps):
        batch = torch.randint(0, history.shape[0], (256,), generator=g)
        loss = head.loss(tower(history[batch]), target[batch])  # fused cross-entropy
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
        if step % 20 == 0 or step == steps - 1:
            print(f"step {step:3d}  loss {loss.item():.3f}")

    # Rank, excluding each user's own history, and score against the true next item.
    users = 200
    rows = torch.arange(users).repeat_interleave(window)
    exclude = (
        torch.sparse_coo_tensor(
            torch.stack([rows, history[:users].reshape(-1)]),
            torch.ones(users * window),
            (users, num_items),
        )
        .coalesce()
        .to_sparse_csr()
    )
    with torch.no_grad():
        _, top = head.recommend(tower(history[:users]), k=10, exclude=exclude)
    relevant = torch.sparse_coo_tensor(
        torch.stack([torch.arange(users), target[:users]]), torch.ones(users), (users, num_items)
    ).to_sparse_csr()
    metrics = ranking_metrics(top, relevant, ks=(1, 10))
    print(f"hit_rate@10 {metrics['hit_rate@10']:.3f}  ndcg@10 {metrics['ndcg@10']:.3f}")

    with tempfile.TemporaryDirectory() as tmp:
        head.save_pretrained(f"{tmp}/gllm_head")
        again = GLLMHead.from_pretrained(f"{tmp}/gllm_head")
        assert torch.equal(again.weight, head.weight.detach())
    assert losses[-1] < losses[0], f"loss did not go down: {losses[0]:.3f} -> {losses[-1]:.3f}"
    print("ok: loss went down from", round(losses[0], 3), "to", round(losses[-1], 3))
    return losses


if __name__ == "__main__":
    main()
