"""The residual head: LightGCN's score plus the LLM's correction."""

from __future__ import annotations

import pytest
import torch
from glta_gllm import ProjectedItemHead, topk_excluding
from glta_gllm.checkpoint import CheckpointError

from glta_align.config import AlignConfigError, ItemTextConfig, UserItemConfig
from glta_align.heads import ResidualHead, load_head, reduce_item_features, slot_inputs
from glta_align.item_text import train_item_text
from glta_align.user_item import item_text_features, train_user_item


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


# --- item text features ([user_item] item_text_features) ---------------------------------

def _text_head(items=30, d=6, H=10, r=4, seed=0):
    base = _head(items, d, H, seed).base
    text = torch.randn(items, r, generator=torch.Generator().manual_seed(seed + 1))
    return ResidualHead(base, alpha=0.7, text_items=text)


def test_reduce_item_features_keeps_the_leading_components_on_the_graph_scale():
    g = torch.Generator().manual_seed(0)
    # three strong directions plus noise: the first three components span them
    basis = torch.linalg.qr(torch.randn(20, 3, generator=g))[0].T
    feats = torch.randn(50, 3, generator=g) * torch.tensor([9.0, 5.0, 3.0]) @ basis
    feats = feats + 0.01 * torch.randn(50, 20, generator=g) + 7.0  # an offset, removed
    like = 2.0 * torch.randn(50, 6, generator=g)
    out = reduce_item_features(feats, 3, like)
    assert out.shape == (50, 3) and out.dtype == torch.float32
    assert out.norm(dim=1).mean().item() == pytest.approx(like.norm(dim=1).mean().item(),
                                                          rel=1e-5)
    centred = feats - feats.mean(0)
    # the kept components reproduce the centred features' Gram matrix up to one scale
    gram, ref = out.double() @ out.double().T, centred.double() @ centred.double().T
    scale = (ref * gram).sum() / (gram * gram).sum()
    assert torch.allclose(gram * scale, ref, atol=1e-2 * ref.abs().max().item())
    assert out.std(0)[0] > out.std(0)[1] > out.std(0)[2]  # ordered by variance
    # signs fixed: the same features in another order give the same rows (permuted)
    perm = torch.randperm(50, generator=g)
    assert torch.allclose(reduce_item_features(feats[perm], 3, like[perm]), out[perm],
                          atol=1e-4)
    assert reduce_item_features(feats, 99, like).shape == (50, 20)  # at most min(I, F)
    with pytest.raises(ValueError, match="same items"):
        reduce_item_features(feats[:10], 3, like)
    with pytest.raises(ValueError, match="dim"):
        reduce_item_features(feats, 0, like)


def test_text_features_start_at_zero_and_add_their_scores():
    head = _text_head()
    assert head.text_dim == 4 and not head.text_query.weight.abs().sum()
    plain = ResidualHead(head.base, alpha=0.7)
    x = torch.randn(5, 16)
    assert torch.allclose(head.forward(x), plain.forward(x))  # zero map: no text term yet
    with torch.no_grad():
        head.text_query.weight.normal_()
    h = x[:, :10]
    want = plain.forward(x) + (h @ head.text_query.weight.T) @ head.text_items.T
    assert torch.allclose(head.forward(x), want, atol=1e-5)
    targets = torch.tensor([0, 4, -100, 29, 7])
    ref = torch.nn.functional.cross_entropy(want, targets, ignore_index=-100)
    assert head.loss(x, targets).item() == pytest.approx(ref.item(), rel=1e-5)
    scores, items = head.recommend(x, 5)
    top = want.topk(5, dim=1)
    assert torch.equal(items, top.indices)
    assert torch.allclose(scores, top.values, atol=1e-4)
    with pytest.raises(ValueError, match="one row per item"):
        ResidualHead(head.base, text_items=torch.randn(29, 4))


def test_the_text_channel_learns_what_the_graph_cannot_tell():
    # graph embeddings carry nothing about the clusters; the text features name them; the
    # hidden state says which cluster the user wants: only the text term can rank it first
    g = torch.Generator().manual_seed(0)
    items, clusters, H, d = 40, 4, 8, 6
    cluster = torch.arange(items) % clusters
    base = ProjectedItemHead(torch.randn(items, d, generator=g), torch.nn.Linear(d, H))
    head = ResidualHead(base, zero_correction=True,
                        text_items=torch.nn.functional.one_hot(cluster, clusters).float())
    head.base.projector.requires_grad_(False)
    head.alpha.requires_grad_(False)
    want = torch.randint(0, clusters, (256,), generator=g)
    h = torch.nn.functional.one_hot(want, H).float() + 0.1 * torch.randn(256, H, generator=g)
    x = torch.cat([h, torch.zeros(256, d)], dim=1)
    targets = torch.stack([torch.nonzero(cluster == c)[torch.randint(0, 10, (1,), generator=g)]
                           .reshape(()) for c in want])

    def hit_rate() -> float:
        _, top = head.recommend(x, 10)
        return (cluster[top] == want[:, None]).float().mean().item()

    assert hit_rate() < 0.5  # the graph alone: about one in four
    opt = torch.optim.Adam([head.text_query.weight], lr=0.1)
    for _ in range(100):
        opt.zero_grad()
        head.loss(x, targets).backward()
        opt.step()
    assert hit_rate() > 0.95


def test_text_head_round_trip_and_a_broken_file(tmp_path):
    from safetensors.torch import load_file, save_file

    head = _text_head()
    with torch.no_grad():
        head.text_query.weight.normal_()
    head.save_pretrained(tmp_path / "h", dataset_fingerprint="fp")
    back = load_head(tmp_path / "h", expected_fingerprint="fp", hidden_size=10, num_items=30)
    assert isinstance(back, ResidualHead) and back.text_dim == 4
    x = torch.randn(3, 16)
    assert torch.allclose(back.forward(x), head.forward(x), atol=1e-6)
    files = list((tmp_path / "h").glob("*.safetensors"))
    assert len(files) == 1
    tensors = load_file(files[0])
    del tensors["text_query.weight"]
    save_file(tensors, files[0])
    with pytest.raises(CheckpointError, match=r"text_items and text_query\.weight"):
        load_head(tmp_path / "h", expected_fingerprint=None, hidden_size=10, num_items=30)


def test_item_text_features_read_each_description_alone(tiny):
    texts = ["Toy Story (1995). Genres: Animation", "", "Heat", "a film about cats and dogs",
             "Up"]
    together = item_text_features(tiny, texts, 8, batch_size=2)
    alone = torch.cat([item_text_features(tiny, [t], 8) for t in texts])
    assert together.shape == (5, tiny.hidden_size)
    assert torch.allclose(together, alone, atol=1e-4)  # padding and batching change nothing
    assert not torch.allclose(together[0], together[2])
    # the budget: only the first 2 tokens of a long description count
    ids = tiny.tokenizer(texts[3], add_special_tokens=False)["input_ids"][:2]
    short = tiny.tokenizer.decode(ids)
    assert torch.allclose(item_text_features(tiny, [texts[3]], 2),
                          item_text_features(tiny, [short], 8), atol=1e-4)


def test_stage3_with_item_text_features(toy_run, toy, tiny):
    with pytest.raises(AlignConfigError, match="item_text_features"):
        UserItemConfig(item_text_features=True, head="projected")
    with pytest.raises(AlignConfigError, match="item_text_dim"):
        UserItemConfig(item_text_dim=0)
    train_item_text(toy, toy_run, ItemTextConfig(epochs=1, items_per_instance=3,
                                                 head="projected"), llm=tiny)
    cfg = UserItemConfig(epochs=1, batch_size=4, num_slots=3, use_profile=False,
                         use_predict=False, lr=1e-2, head="projected", residual=True,
                         item_text_features=True, item_text_dim=5)
    train_user_item(toy, toy_run, cfg, llm=tiny)
    head = load_head(toy_run / "gllm_head", expected_fingerprint=toy.fingerprint,
                     hidden_size=tiny.hidden_size, num_items=toy.num_items)
    assert isinstance(head, ResidualHead) and head.text_dim == 5
    assert head.text_query.weight.abs().max() > 0  # trained from zero
    want = reduce_item_features(item_text_features(tiny, toy.item_text, cfg.description_tokens),
                                5, head.base.item_embeddings)
    assert torch.allclose(head.text_items, want, atol=1e-5)


def test_item_text_features_of_a_middle_layer(tiny):
    texts = ["Heat (1995). Genres: Action", "Up"]
    ids = tiny.tokenizer(texts[1], add_special_tokens=False)["input_ids"]
    emb = tiny.embed(torch.tensor([ids])).float().mean(1)
    assert torch.allclose(item_text_features(tiny, texts, 8, layer=0)[1], emb[0], atol=1e-5)
    first = item_text_features(tiny, texts, 8, layer=1)
    assert not torch.allclose(first, item_text_features(tiny, texts, 8))  # not the last
    assert torch.allclose(first, torch.cat([item_text_features(tiny, [t], 8, layer=1)
                                            for t in texts]), atol=1e-4)
