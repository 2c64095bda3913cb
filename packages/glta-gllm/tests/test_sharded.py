"""The item-sharded head on 2 gloo ranks (CPU) against the unsharded kernels (slow: ~15-30 s,
most of it starting the 2 processes).

One subprocess (``_sharded_worker.py``) runs every case on 2 ranks and saves each rank's
outputs; the tests here recompute the unsharded results and compare.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from glta_gllm import GLLMHead, ProjectedItemHead, linear_cross_entropy, shard_range, topk_excluding
from glta_gllm.checkpoint import read_metadata

WORKER = Path(__file__).resolve().parent / "_sharded_worker.py"
_spec = importlib.util.spec_from_file_location("_sharded_worker", WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)

pytestmark = pytest.mark.slow

TOL = {torch.float32: {"rtol": 1e-4, "atol": 1e-5}, torch.float64: {"rtol": 1e-10, "atol": 1e-12}}


def _full_head() -> GLLMHead:
    x = worker.lce_inputs("uneven7", torch.float32, "mean")
    return GLLMHead.from_item_tokens(x["weight"], torch.linspace(-1, 1, 7))


def _full_projected() -> ProjectedItemHead:
    g = torch.Generator().manual_seed(5)
    proj = nn.Linear(4, 8)
    with torch.no_grad():
        proj.weight.copy_(torch.randn(8, 4, generator=g))
        proj.bias.copy_(torch.randn(8, generator=g))
    return ProjectedItemHead(torch.randn(7, 4, generator=g), proj)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("sharded")
    _full_head().save_pretrained(out / "gllm_1rank")
    _full_projected().save_pretrained(out / "projected_1rank")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(out)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(worker.WORLD)]
    for r in results:
        r["out"] = out
    return results


def _cases():
    for name, *_ in worker.LCE_SHAPES:
        for dtype in worker.DTYPES:
            for reduction in worker.REDUCTIONS:
                yield name, dtype, reduction


@pytest.mark.parametrize(("name", "dtype", "reduction"), list(_cases()))
def test_sharded_loss_and_gradients_equal_unsharded(ranks, name, dtype, reduction) -> None:
    x = worker.lce_inputs(name, dtype, reduction)
    h = x["hidden"].clone().requires_grad_()
    w = x["weight"].clone().requires_grad_()
    b = None if x["bias"] is None else x["bias"].clone().requires_grad_()
    loss = linear_cross_entropy(h, w, x["targets"], b, reduction=reduction)
    if loss.requires_grad:
        loss.backward(x["grad_out"])
    tol = TOL[dtype]
    got = [r[f"lce/{name}/{dtype}/{reduction}"] for r in ranks]
    assert [g["range"] for g in got] == [shard_range(w.shape[0], _Group(r)) for r in range(2)]
    for g in got:
        torch.testing.assert_close(g["loss"], loss.detach(), **tol)
        if h.grad is None:  # every row ignored: no gradient anywhere
            assert g["gh"] is None and g["gw"] is None
            continue
        torch.testing.assert_close(g["gh"], h.grad, **tol)
    if h.grad is not None:
        torch.testing.assert_close(torch.cat([g["gw"] for g in got]), w.grad, **tol)
        if b is not None:
            torch.testing.assert_close(torch.cat([g["gb"] for g in got]), b.grad, **tol)


class _Group:
    """Stands in for a 2-rank group in ``shard_range`` (rank ``r``)."""

    def __init__(self, rank: int) -> None:
        self.rank = rank


@pytest.fixture(autouse=True)
def _fake_dist(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist

    monkeypatch.setattr(dist, "get_world_size", lambda g=None: 2 if isinstance(g, _Group) else 1)
    monkeypatch.setattr(dist, "get_rank", lambda g=None: g.rank if isinstance(g, _Group) else 0)


def test_shard_range_layout_covers_uneven_catalogues() -> None:
    assert [shard_range(7, _Group(r)) for r in range(2)] == [(0, 4), (4, 7)]
    assert [shard_range(8, _Group(r)) for r in range(2)] == [(0, 4), (4, 8)]
    assert shard_range(5) == (0, 5)
    with pytest.raises(ValueError, match="cannot shard 1 items over 2 ranks"):
        shard_range(1, _Group(0))
    with pytest.raises(ValueError, match="num_items must be a positive int"):
        shard_range(0)


def test_sharded_without_gradients_and_hidden_only(ranks) -> None:
    x = worker.lce_inputs("chunks_recompute", torch.float64, "mean")
    ref = linear_cross_entropy(x["hidden"], x["weight"], x["targets"], x["bias"])
    h = x["hidden"].clone().requires_grad_()
    linear_cross_entropy(h, x["weight"], x["targets"]).backward()
    for r in ranks:
        torch.testing.assert_close(r["lce/no_grad"], ref, **TOL[torch.float64])
        torch.testing.assert_close(r["lce/hidden_only"], h.grad, **TOL[torch.float64])


def test_group_of_one_rank_is_the_unsharded_path(ranks) -> None:
    for r in ranks:  # bit for bit, in the same process
        got = r["lce/world1"]
        for a, b in zip(got["group"], got["plain"], strict=True):
            assert torch.equal(a, b)
        assert got["head_rows"] == (0, 300, 300)


@pytest.mark.parametrize("name", ["small", "ties"])
def test_sharded_topk_equals_unsharded_with_exclusions_and_ties(ranks, name) -> None:
    x = worker.topk_inputs(name)
    exclude = x["mask"].float().to_sparse_csr()
    ref = topk_excluding(
        x["queries"], x["weight"], x["k"], bias=x["bias"], exclude=exclude, chunk_size=x["chunk"]
    )
    plain = topk_excluding(x["queries"], x["weight"], x["k"], bias=x["bias"])
    scores = x["queries"] @ x["weight"].T + (0 if x["bias"] is None else x["bias"])
    kth = scores.masked_fill(x["mask"], -torch.inf).topk(x["k"]).values[:, -1:]
    assert bool((scores == kth).sum(1).gt(1).any()), "the case must tie at the cut"
    for r in ranks:
        got = r[f"topk/{name}"]
        assert torch.equal(got[1], ref[1]), (got[1], ref[1])
        assert torch.equal(got[0], ref[0])
        assert not bool(x["mask"].gather(1, got[1]).any())
        assert torch.equal(r[f"topk/{name}/noexclude"][1], plain[1])
        assert torch.equal(r[f"topk/{name}/noexclude"][0], plain[0])


def test_checkpoint_saved_on_one_rank_loads_sharded_and_back(ranks) -> None:
    full = _full_head()
    x = worker.lce_inputs("uneven7", torch.float32, "mean")
    h = x["hidden"].clone().requires_grad_()
    full.loss(h, x["targets"]).backward()
    got = [r["head/gllm"] for r in ranks]
    assert [g["range"] for g in got] == [(0, 4), (4, 7)]
    assert "items=[4, 7)" in got[1]["repr"]
    torch.testing.assert_close(torch.cat([g["weight"] for g in got]), full.weight.detach())
    torch.testing.assert_close(torch.cat([g["gw"] for g in got]), full.weight.grad)
    torch.testing.assert_close(torch.cat([g["gb"] for g in got]), full.bias.grad)
    scores, items = full.recommend(x["hidden"], 3)
    for g in got:
        torch.testing.assert_close(g["gh"], h.grad)
        assert torch.equal(g["recommend"][1], items)
        torch.testing.assert_close(g["recommend"][0], scores)
    # Saved from 2 ranks (weights doubled there): one checkpoint, loaded in 1 process.
    out = ranks[0]["out"]
    back = GLLMHead.from_pretrained(out / "gllm_2ranks", expected_fingerprint="fp")
    torch.testing.assert_close(back.weight, 2 * full.weight.detach())
    torch.testing.assert_close(back.bias, full.bias.detach())
    assert read_metadata(out / "gllm_2ranks")["dataset_fingerprint"] == "fp"


def test_projected_head_sharded_equals_unsharded_and_saves_whole(ranks) -> None:
    full = _full_projected()
    h = torch.randn(6, 8, generator=torch.Generator().manual_seed(3)).requires_grad_()
    t = torch.tensor([0, 6, 3, 4, -100, 1])
    full.loss(h, t).backward()
    scores, items = full.recommend(h.detach(), 4)
    for r in ranks:
        got = r["head/projected"]
        assert got["num_items"] == 7
        torch.testing.assert_close(got["gp"], full.projector.weight.grad)
        torch.testing.assert_close(got["gh"], h.grad)
        assert torch.equal(got["recommend"][1], items)
        torch.testing.assert_close(got["recommend"][0], scores)
    assert [r["head/projected"]["range"] for r in ranks] == [(0, 4), (4, 7)]
    back = ProjectedItemHead.from_pretrained(ranks[0]["out"] / "projected_2ranks")
    assert torch.equal(back.item_embeddings, torch.arange(14.0).reshape(7, 2))
    for key, value in ranks[0]["head/projected_fresh"].items():
        assert torch.equal(back.projector.state_dict()[key], value)
