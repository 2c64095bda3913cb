import pytest
import torch

from glta_graph.adjacency import GraphPropagator, normalized_adjacency
from glta_graph.data import csr_from_pairs
from glta_graph.lightgcn import LightGCN


def _graph(users=5, items=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = (torch.rand(users, items, generator=g) < 0.4).float()
    u, i = torch.nonzero(r, as_tuple=True)
    return normalized_adjacency(csr_from_pairs(u.numpy(), i.numpy(), users, items))


@pytest.mark.parametrize("layers", [0, 1, 3])
@pytest.mark.parametrize("backend", ["csr", "coo"])
def test_forward_is_mean_of_layer_outputs(layers, backend):
    users, items, dim = 5, 7, 4
    adj = _graph(users, items)
    model = LightGCN(users, items, dim=dim, layers=layers)
    user_out, item_out = model(GraphPropagator(adj, backend=backend))
    assert user_out.shape == (users, dim) and item_out.shape == (items, dim)
    a = adj.to_dense()
    x = torch.cat([model.user_embedding.weight, model.item_embedding.weight]).detach()
    outs, cur = [x], x
    for _ in range(layers):
        cur = a @ cur
        outs.append(cur)
    want = torch.stack(outs).mean(0)
    torch.testing.assert_close(torch.cat([user_out, item_out]).detach(), want,
                               atol=1e-5, rtol=1e-5)


def test_forward_accepts_raw_csr_and_backpropagates():
    adj = _graph()
    model = LightGCN(5, 7, dim=3, layers=2)
    user_out, item_out = model(adj)
    (user_out.sum() + item_out.pow(2).sum()).backward()
    assert model.user_embedding.weight.grad is not None
    assert torch.isfinite(model.item_embedding.weight.grad).all()


def test_reset_parameters_reference_init_and_seeded():
    a = LightGCN(300, 400, dim=64, layers=3)
    std = torch.cat([a.user_embedding.weight, a.item_embedding.weight]).std().item()
    assert 0.09 < std < 0.11
    b1, b2 = LightGCN(3, 4, dim=2), LightGCN(3, 4, dim=2)
    b1.reset_parameters(torch.Generator().manual_seed(7))
    b2.reset_parameters(torch.Generator().manual_seed(7))
    assert torch.equal(b1.user_embedding.weight, b2.user_embedding.weight)


def test_repr_and_validation():
    assert repr(LightGCN(3, 4, dim=8, layers=2)) == (
        "LightGCN(num_users=3, num_items=4, dim=8, layers=2)"
    )
    with pytest.raises(ValueError, match="dim"):
        LightGCN(3, 4, dim=0)
    with pytest.raises(ValueError, match="layers"):
        LightGCN(3, 4, layers=-1)
    with pytest.raises(ValueError, match="12 nodes"):
        LightGCN(3, 4)(_graph(5, 7))
