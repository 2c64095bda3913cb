import pytest
import torch

from glta_graph.adjacency import (
    GraphPropagator,
    normalized_adjacency,
    resolve_backend,
    sparse_propagate,
    torch_sparse_available,
)
from glta_graph.data import csr_from_pairs


def _dense_norm_adj(r: torch.Tensor) -> torch.Tensor:
    u, i = r.shape
    a = torch.zeros(u + i, u + i, dtype=torch.float64)
    a[:u, u:] = r
    a[u:, :u] = r.T
    deg = a.sum(1)
    inv = torch.where(deg > 0, deg.clamp(min=1).rsqrt(), torch.zeros_like(deg))
    return inv[:, None] * a * inv[None, :]


def _random_r(users: int, items: int, density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(users, items, generator=g) < density).to(torch.float64)


@pytest.mark.parametrize(("users", "items", "density"), [(3, 4, 0.5), (7, 5, 0.3), (20, 30, 0.1)])
def test_adjacency_matches_dense_formula(users, items, density):
    r = _random_r(users, items, density, seed=users)
    u, i = torch.nonzero(r, as_tuple=True)
    adj = normalized_adjacency(csr_from_pairs(u.numpy(), i.numpy(), users, items))
    assert adj.layout == torch.sparse_csr
    assert adj.dtype == torch.float32
    assert tuple(adj.shape) == (users + items, users + items)
    torch.testing.assert_close(adj.to_dense().double(), _dense_norm_adj(r), atol=1e-6, rtol=1e-6)
    # symmetric, columns sorted within rows
    dense = adj.to_dense()
    assert torch.equal(dense, dense.T)
    crow, col = adj.crow_indices(), adj.col_indices()
    for row in range(users + items):
        seg = col[crow[row] : crow[row + 1]]
        assert torch.all(seg[1:] > seg[:-1])


def test_adjacency_accepts_dense_and_coo_inputs():
    r = _random_r(5, 6, 0.4, seed=1)
    want = _dense_norm_adj(r)
    for inp in (r, r.to_sparse_coo()):
        torch.testing.assert_close(normalized_adjacency(inp).to_dense().double(), want,
                                   atol=1e-6, rtol=1e-6)


def test_isolated_nodes_are_zero_not_nan():
    # user 2 and item 3 have no interaction at all
    r = csr_from_pairs([0, 1], [0, 2], 3, 4)
    adj = normalized_adjacency(r).to_dense()
    assert torch.isfinite(adj).all()
    assert adj[2].abs().sum() == 0 and adj[:, 2].abs().sum() == 0
    assert adj[3 + 3].abs().sum() == 0
    # an all-empty training matrix is fine too
    empty = normalized_adjacency(csr_from_pairs([], [], 2, 2))
    assert empty._nnz() == 0 and torch.isfinite(empty.to_dense()).all()


def test_adjacency_rejects_non_matrix():
    with pytest.raises(ValueError, match="2-D"):
        normalized_adjacency(torch.zeros(3))


def test_sparse_propagate_forward_and_gradient_match_dense():
    r = _random_r(6, 9, 0.35, seed=3)
    adj = normalized_adjacency(r)
    dense = adj.to_dense().double()
    x = torch.randn(15, 4, dtype=torch.float32, requires_grad=True)
    w = torch.randn(15, 4)
    y = sparse_propagate(adj, x)
    torch.testing.assert_close(y.double(), dense @ x.detach().double(), atol=1e-5, rtol=1e-5)
    (y * w).sum().backward()
    xd = x.detach().double().requires_grad_(True)
    (dense @ xd * w.double()).sum().backward()
    torch.testing.assert_close(x.grad.double(), xd.grad, atol=1e-5, rtol=1e-5)


def test_sparse_propagate_passes_gradcheck():
    adj = normalized_adjacency(_random_r(4, 5, 0.5, seed=4)).to(torch.float64)
    x = torch.randn(9, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: sparse_propagate(adj, t), (x,))


@pytest.mark.parametrize("backend", ["csr", "coo", "auto"])
def test_backends_agree_with_dense(backend):
    r = _random_r(8, 11, 0.3, seed=5)
    adj = normalized_adjacency(r)
    prop = GraphPropagator(adj, backend=backend)
    assert prop.backend in ("csr", "coo")
    assert "GraphPropagator(" in repr(prop)
    x = torch.randn(19, 5, requires_grad=True)
    y = prop(prop(x))
    dense = adj.to_dense()
    torch.testing.assert_close(y, dense @ (dense @ x.detach()), atol=1e-5, rtol=1e-5)
    y.sum().backward()
    want = (dense @ dense).T @ torch.ones(19, 5)
    torch.testing.assert_close(x.grad, want, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch_sparse_available(), reason="extra torch-sparse not installed")
def test_torch_sparse_backend_matches_csr():
    adj = normalized_adjacency(_random_r(8, 11, 0.3, seed=6))
    x = torch.randn(19, 5, requires_grad=True)
    y_ts = GraphPropagator(adj, backend="torch-sparse")(x)
    y_csr = GraphPropagator(adj, backend="csr")(x.detach())
    torch.testing.assert_close(y_ts, y_csr, atol=1e-5, rtol=1e-5)
    y_ts.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_resolve_backend_rules():
    assert resolve_backend("auto", "cpu") == "csr"
    assert resolve_backend("coo", "cpu") == "coo"
    with pytest.raises(ValueError, match="not one of"):
        resolve_backend("dense", "cpu")
    if not torch_sparse_available():
        with pytest.raises(ValueError, match=r"glta-graph\[torch-sparse\]"):
            resolve_backend("torch-sparse", "cpu")


def test_propagator_rejects_bad_shapes():
    adj = normalized_adjacency(_random_r(2, 3, 1.0, seed=0))
    with pytest.raises(ValueError, match="sparse CSR"):
        GraphPropagator(adj.to_dense())
    with pytest.raises(ValueError, match=r"\(5, d\)"):
        GraphPropagator(adj)(torch.zeros(4, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("backend", ["csr", "coo", "auto"])
def test_backends_on_cuda_match_cpu(backend):
    adj = normalized_adjacency(_random_r(30, 40, 0.2, seed=7))
    x = torch.randn(70, 6)
    want = GraphPropagator(adj, backend="csr")(x)
    xc = x.cuda().requires_grad_(True)
    got = GraphPropagator(adj, backend=backend, device="cuda")(xc)
    torch.testing.assert_close(got.cpu(), want, atol=1e-5, rtol=1e-5)
    got.sum().backward()
    torch.testing.assert_close(xc.grad.cpu(), adj.to_dense() @ torch.ones(70, 6),
                               atol=1e-5, rtol=1e-5)
