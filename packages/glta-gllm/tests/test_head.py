"""Tests for glta_gllm.head: GLLMHead and ProjectedItemHead."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from glta_gllm import GLLMHead, ProjectedItemHead
from glta_gllm.checkpoint import CheckpointError, FingerprintMismatchError

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_gllm_head_loss_and_recommend_match_naive() -> None:
    torch.manual_seed(0)
    head = GLLMHead(8, 30, bias=True)
    with torch.no_grad():
        head.bias.normal_()
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    targets = torch.randint(0, 30, (2, 5))
    loss = head.loss(hidden, targets)
    ref = F.cross_entropy(head(hidden).reshape(-1, 30), targets.reshape(-1))
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert head.weight.grad is not None and head.bias.grad is not None
    assert head.loss(hidden, targets, reduction="none").shape == (2, 5)
    exclude = torch.zeros(4, 30)
    exclude[0, :10] = 1
    scores, items = head.recommend(hidden[0, :4].detach(), 5, exclude=exclude.to_sparse_csr())
    full = head(hidden[0, :4].detach()).masked_fill(exclude.bool(), float("-inf"))
    torch.testing.assert_close(scores, full.topk(5).values)
    assert (items[0] >= 10).all()


def test_gllm_head_repr_and_init() -> None:
    head = GLLMHead(64, 1000)
    assert "hidden_size=64, num_items=1000, bias=False" in repr(head)
    assert head.bias is None
    assert 0.08 < float(head.weight.detach().std()) < 0.17  # ~ 1/sqrt(64)
    with pytest.raises(ValueError, match="num_items"):
        GLLMHead(4, 0)


def test_gllm_head_target_shape_error() -> None:
    head = GLLMHead(4, 6)
    with pytest.raises(ValueError, match=r"targets shape \(3,\) must equal .*\(2,\)"):
        head.loss(torch.randn(2, 4), torch.tensor([0, 1, 2]))


def test_gllm_head_save_load_roundtrip(tmp_path: Path) -> None:
    head = GLLMHead(6, 11, bias=True)
    path = head.save_pretrained(tmp_path / "gllm_head", dataset_fingerprint="abc")
    assert {p.name for p in path.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    assert json.loads((path / "config.json").read_text())["num_items"] == 11
    loaded = GLLMHead.from_pretrained(path, expected_fingerprint="abc")
    assert torch.equal(loaded.weight, head.weight) and torch.equal(loaded.bias, head.bias)
    with pytest.raises(FingerprintMismatchError, match="abc"):
        GLLMHead.from_pretrained(path, expected_fingerprint="other")


def test_gllm_head_loads_checkpoint_from_version_1() -> None:
    # Written by glta-gllm 0.1.0 (see fixtures/make_fixtures.py); must keep loading.
    head = GLLMHead.from_pretrained(FIXTURES / "gllm_head_v1")
    assert (head.hidden_size, head.num_items) == (3, 4)
    expected = torch.arange(12, dtype=torch.float32).reshape(4, 3) / 10
    assert torch.equal(head.weight.detach(), expected)
    assert torch.equal(head.bias.detach(), torch.tensor([0.0, 1.0, 2.0, 3.0]))


def test_gllm_head_bad_checkpoint(tmp_path: Path) -> None:
    head = GLLMHead(3, 4)
    path = head.save_pretrained(tmp_path / "h")
    cfg = json.loads((path / "config.json").read_text())
    cfg["num_items"] = 5
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"'weight' has shape \(4, 3\), config.json says"):
        GLLMHead.from_pretrained(path)
    cfg["model_type"] = "other"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="model_type"):
        GLLMHead.from_pretrained(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        GLLMHead.from_pretrained(tmp_path / "missing")


def test_from_item_tokens() -> None:
    tokens = torch.randn(7, 5)
    head = GLLMHead.from_item_tokens(tokens, bias=torch.ones(7))
    assert torch.equal(head.weight.detach(), tokens) and head.weight.requires_grad
    with pytest.raises(ValueError, match=r"bias must have shape \(7,\)"):
        GLLMHead.from_item_tokens(tokens, bias=torch.ones(6))


@pytest.mark.parametrize("proj_bias", [False, True])
def test_projected_head_matches_materialised_tokens(proj_bias: bool) -> None:
    torch.manual_seed(1)
    emb = torch.randn(40, 6)
    projector = nn.Linear(6, 16, bias=proj_bias)
    head = ProjectedItemHead(emb, projector)
    hidden = torch.randn(9, 16, requires_grad=True)
    targets = torch.randint(0, 40, (9,))
    tokens = projector(emb)  # (I, H), the naive path
    logits = hidden @ tokens.T
    torch.testing.assert_close(head(hidden), logits, atol=1e-5, rtol=1e-5)
    loss = head.loss(hidden, targets)
    ref = F.cross_entropy(logits, targets)
    torch.testing.assert_close(loss, ref, atol=1e-6, rtol=1e-5)
    g_fused = torch.autograd.grad(loss, [hidden, projector.weight])
    g_ref = torch.autograd.grad(ref, [hidden, projector.weight])
    for a, b in zip(g_fused, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    scores, items = head.recommend(hidden.detach(), 5)
    ref_v, ref_i = logits.detach().topk(5)
    torch.testing.assert_close(scores, ref_v, atol=1e-5, rtol=1e-5)
    assert torch.equal(items, ref_i)
    assert torch.equal(head.item_embeddings, emb)  # frozen buffer
    assert not head.item_embeddings.requires_grad
    seeded = GLLMHead.from_item_tokens(head.item_tokens().detach())
    torch.testing.assert_close(seeded(hidden).detach(), logits.detach(), atol=1e-5, rtol=1e-5)


def test_projected_head_frozen_shared_projector() -> None:
    projector = nn.Linear(4, 8).requires_grad_(False)
    head = ProjectedItemHead(torch.randn(10, 4), projector)
    hidden = torch.randn(3, 8, requires_grad=True)
    head.loss(hidden, torch.tensor([1, 2, 3])).backward()
    assert hidden.grad is not None and projector.weight.grad is None
    assert head.projector is projector


def test_projected_head_errors_and_roundtrip(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="hidden_size is required"):
        ProjectedItemHead(torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"nn.Linear\(3, H\)"):
        ProjectedItemHead(torch.randn(5, 3), nn.Linear(4, 8))
    head = ProjectedItemHead(torch.randn(5, 3), hidden_size=8)
    with pytest.raises(ValueError, match="expects hidden size 8"):
        head.loss(torch.randn(2, 7), torch.tensor([0, 1]))
    path = head.save_pretrained(tmp_path / "proj", dataset_fingerprint="fp")
    loaded = ProjectedItemHead.from_pretrained(path, expected_fingerprint="fp")
    h = torch.randn(2, 8)
    torch.testing.assert_close(loaded(h), head(h))
    assert "num_items=5, graph_dim=3, hidden_size=8" in repr(loaded)
    with pytest.raises(CheckpointError, match="model_type"):
        GLLMHead.from_pretrained(path)


def test_gllm_head_accepts_bf16_hidden_states() -> None:
    head = GLLMHead(8, 20)
    hidden = torch.randn(4, 8).bfloat16().requires_grad_()
    targets = torch.tensor([0, 3, 5, 19])
    loss = head.loss(hidden, targets)
    loss.backward()
    assert hidden.grad.dtype == torch.bfloat16 and head.weight.grad.dtype == torch.float32
    ref = F.cross_entropy(head(hidden.detach().float()), targets)
    torch.testing.assert_close(loss.detach(), ref.detach())
    _, items = head.recommend(hidden.detach(), 3)
    assert items.shape == (4, 3)
