"""The residual head: LightGCN's score plus the LLM's correction."""

from __future__ import annotations

import pytest
import torch
from glta_gllm import ProjectedItemHead, topk_excluding

from glta_align.config import AlignConfigError, ItemTextConfig, UserItemConfig
from glta_align.heads import ResidualHead, load_head, slot_inputs
from glta_align.item_text import train_item_text
from glta_align.user_item import train_user_item


def _head(items=30, d=6, H=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    proj = torch.nn.Linear(d, H)
    with torch.no_grad():
        proj.weight.copy_(torch.randn(H, d, generator=g))
        proj.bias.copy_(torch.randn(H, generator=g))
    return ResidualHead(ProjectedItemHead(torch.randn(items, d, generator=g), proj), alpha=0.7)


def test_without_the_llm_part_it_ranks_exactly_like_the_graph():
    head = _head()
    with torch.no_grad():
        head.base.projector.weight.zero_()
        head.alpha.fill_(1.0)
    users = torch.randn(4, 6, generator=torch.Generator().manual_seed(3))
    x = slot_inputs(head, torch.randn(4, 1, 10), users)[:, 0]
    _, ours = head.recommend(x, 5)
    _, graph = topk_excluding(users, head.base.item_embeddings, 5)
    assert torch.equal(ours, graph)


def test_loss_is_the_cross_entropy_of_the_residual_logits_and_trains_alpha():
    head = _head()
    x = torch.randn(8, 16, requires_grad=True)
    targets = torch.tensor([0, 3, 5, -100, 7, 9, 29, 1])
    loss = head.loss(x, targets)
    h, e = x[:, :10], x[:, 10:]
    logits = (h @ head.base.projector.weight + head.alpha * e) @ head.base.item_embeddings.T
    logits = logits + (h @ head.base.projector.bias)[:, None]
    ref = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(head.forward(x), logits, atol=1e-5)
    loss.backward()
    (g_ref,) = torch.autograd.grad(
        torch.nn.functional.cross_entropy(
            (h.detach() @ head.base.projector.weight + head.alpha * e.detach())
            @ head.base.item_embeddings.T, targets), head.alpha)
    assert head.alpha.grad is not None and head.alpha.grad.item() == pytest.approx(
        g_ref.item(), rel=1e-4)
    with pytest.raises(ValueError, match="graph embedding"):
        head.loss(x[:, :10], targets)


def test_save_and_load_round_trip(tmp_path):
    head = _head()
    head.save_pretrained(tmp_path / "h", dataset_fingerprint="fp")
    back = load_head(tmp_path / "h", expected_fingerprint="fp", hidden_size=10, num_items=30)
    assert isinstance(back, ResidualHead) and back.alpha.item() == pytest.approx(0.7)
    x = torch.randn(3, 16)
    assert torch.allclose(back.forward(x), head.forward(x), atol=1e-6)


def test_residual_needs_the_projected_head():
    with pytest.raises(AlignConfigError, match="residual"):
        UserItemConfig(residual=True, head="plain")


def test_stage3_with_the_residual_head(toy_run, toy, tiny):
    train_item_text(toy, toy_run, ItemTextConfig(epochs=1, items_per_instance=3,
                                                 head="projected"), llm=tiny)
    cfg = UserItemConfig(epochs=2, batch_size=4, num_slots=3, use_profile=False,
                         use_predict=False, lr=1e-2, head="projected", residual=True,
                         patience=1)
    res = train_user_item(toy, toy_run, cfg, llm=tiny)
    assert res.valid_history and res.best_epoch is not None
    head = load_head(toy_run / "gllm_head", expected_fingerprint=toy.fingerprint,
                     hidden_size=tiny.hidden_size, num_items=toy.num_items)
    assert isinstance(head, ResidualHead) and head.alpha.item() != 1.0  # alpha trained
    from glta_align.recommender import GLTARecommender

    rec = GLTARecommender.from_run(toy_run, llm=tiny)
    metrics = rec.evaluate("valid", ks=(5,))
    assert metrics["ndcg@5"] == pytest.approx(res.best_valid["ndcg@5"], abs=1e-6)


def test_zero_correction_starts_at_the_graph_ranking_and_learns(toy_run, toy, tiny):
    base = _head().base
    head = ResidualHead(base, zero_correction=True)
    assert not any(p.abs().sum() for p in head.base.projector.parameters())
    users = torch.randn(4, 6, generator=torch.Generator().manual_seed(5))
    x = slot_inputs(head, torch.randn(4, 1, 10), users)[:, 0]
    _, ours = head.recommend(x, 5)
    _, graph = topk_excluding(users, head.base.item_embeddings, 5)
    assert torch.equal(ours, graph)
    # in stage 3 the correction starts at zero (residual_init="zero") and then trains
    train_item_text(toy, toy_run, ItemTextConfig(epochs=1, items_per_instance=3,
                                                 head="projected"), llm=tiny)
    stage2 = load_head(toy_run / "gllm_head", expected_fingerprint=toy.fingerprint,
                       hidden_size=tiny.hidden_size, num_items=toy.num_items)
    cfg = UserItemConfig(epochs=1, batch_size=4, num_slots=3, use_profile=False,
                         use_predict=False, lr=1e-2, head="projected", residual=True)
    assert cfg.residual_init == "zero"
    train_user_item(toy, toy_run, cfg, llm=tiny)
    trained = load_head(toy_run / "gllm_head", expected_fingerprint=toy.fingerprint,
                        hidden_size=tiny.hidden_size, num_items=toy.num_items)
    w = trained.base.projector.weight
    assert w.abs().max() > 0  # learnt from zero, not the stage-2 map
    assert not torch.allclose(w, stage2.projector.weight, atol=1e-3)
    with pytest.raises(AlignConfigError, match="residual_init"):
        UserItemConfig(residual=True, head="projected", residual_init="random")
