"""The optional ``torch-sparse`` propagation backend against ``csr``.

Tests that need the extra are skipped with a reason when ``torch_sparse`` cannot be imported
(it is not part of the locked workspace: it builds from source, see benchmarks/graph/README.md
"torch-sparse backend" for the scratch environment they run in). The backend-resolution and
dtype checks run everywhere.
"""

import pytest
import torch

from glta_graph import adjacency
from glta_graph.adjacency import (
    GraphPropagator,
    normalized_adjacency,
    resolve_backend,
    torch_sparse_available,
    torch_sparse_has_cuda,
    torch_sparse_import_error,
)
from glta_graph.data import csr_from_pairs, load_dataset
from glta_graph.progress import ProgressEvent
from glta_graph.train import LightGCNConfig, load_graph_embeddings, train_lightgcn

needs_torch_sparse = pytest.mark.skipif(
    not torch_sparse_available(),
    reason=f"optional extra glta-graph[torch-sparse] unusable: {torch_sparse_import_error()}",
)


@pytest.fixture(scope="module")
def ml100k():
    """The embedded MovieLens-100K (943 users, 1,682 items, 69,963 train pairs)."""
    return load_dataset("ml-100k")


@pytest.fixture(scope="module")
def ml100k_adj(ml100k):
    return normalized_adjacency(ml100k.train)


def _two_layer_grad(prop: GraphPropagator, x0: torch.Tensor, w: torch.Tensor):
    """``A(A x)`` and the gradient of ``sum(w * A(A x))`` with respect to ``x``."""
    x = x0.clone().requires_grad_(True)
    y = prop(prop(x))
    (y * w).sum().backward()
    return y.detach(), x.grad


@needs_torch_sparse
@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float32, 1e-5), (torch.float64, 1e-12)], ids=["float32", "float64"]
)
def test_forward_and_gradient_match_csr_on_ml100k(ml100k_adj, dtype, tol):
    n = ml100k_adj.shape[0]
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(n, 16, generator=g, dtype=torch.float64).to(dtype)
    w = torch.randn(n, 16, generator=g, dtype=torch.float64).to(dtype)
    ts = GraphPropagator(ml100k_adj, backend="torch-sparse", dtype=dtype)
    csr = GraphPropagator(ml100k_adj, backend="csr", dtype=dtype)
    assert ts.backend == "torch-sparse" and ts.nnz == csr.nnz == 2 * 69_963
    y_ts, g_ts = _two_layer_grad(ts, x0, w)
    y_csr, g_csr = _two_layer_grad(csr, x0, w)
    assert y_ts.dtype == g_ts.dtype == dtype
    torch.testing.assert_close(y_ts, y_csr, atol=tol, rtol=tol)
    torch.testing.assert_close(g_ts, g_csr, atol=tol, rtol=tol)
    # and both are the dense product, so neither backend is wrong in the same way
    if dtype == torch.float64:
        dense = ml100k_adj.to_dense().double()
        torch.testing.assert_close(y_ts, dense @ (dense @ x0), atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(g_ts, dense @ (dense @ w), atol=1e-12, rtol=1e-12)


@needs_torch_sparse
def test_torch_sparse_gradcheck_with_isolated_nodes():
    # user 3 and items 0 and 4 have no edge: empty rows in the CSR
    r = csr_from_pairs([0, 0, 1, 2, 2], [1, 2, 2, 3, 1], 4, 5)
    prop = GraphPropagator(normalized_adjacency(r), backend="torch-sparse", dtype=torch.float64)
    x = torch.randn(9, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(prop, (x,))
    y = prop(x)
    assert y[3].abs().sum() == 0 and y[4 + 0].abs().sum() == 0 and y[4 + 4].abs().sum() == 0


@needs_torch_sparse
def test_torch_sparse_without_grad_and_repr():
    adj = normalized_adjacency(csr_from_pairs([0, 1, 1], [0, 0, 1], 2, 2))
    prop = GraphPropagator(adj, backend="torch-sparse")
    assert "backend='torch-sparse'" in repr(prop)
    with torch.no_grad():
        y = prop(torch.ones(4, 2))
    torch.testing.assert_close(y, adj.to_dense() @ torch.ones(4, 2))
    assert not y.requires_grad


def _train(data, backend, run_dir):
    losses = []

    def progress(event: ProgressEvent) -> None:
        if event.kind == "step":
            losses.append(event.metrics["loss"])

    config = LightGCNConfig(dim=16, layers=3, epochs=2, batch_size=8192, eval_every=0,
                            seed=7, backend=backend, num_threads=1)
    result = train_lightgcn(data, config, run_dir, progress=progress, resume=False)
    user, item = load_graph_embeddings(run_dir, data.fingerprint)
    return result, losses, user, item


@needs_torch_sparse
def test_lightgcn_training_same_as_csr(ml100k, tmp_path):
    """Two epochs (18 Adam steps) on ML-100K with the same seed: same losses and embeddings."""
    res_ts, loss_ts, u_ts, i_ts = _train(ml100k, "torch-sparse", tmp_path / "ts")
    res_csr, loss_csr, u_csr, i_csr = _train(ml100k, "csr", tmp_path / "csr")
    assert len(loss_ts) == len(loss_csr) == 18
    assert loss_ts[-1] < loss_ts[0]  # it trains
    torch.testing.assert_close(torch.tensor(loss_ts), torch.tensor(loss_csr),
                               atol=1e-6, rtol=1e-5)
    assert [h["loss"] for h in res_ts.history] == pytest.approx(
        [h["loss"] for h in res_csr.history], rel=1e-5)
    torch.testing.assert_close(u_ts, u_csr, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(i_ts, i_csr, atol=1e-5, rtol=1e-4)


@needs_torch_sparse
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_torch_sparse_on_cuda_matches_cpu_csr(ml100k_adj):
    n = ml100k_adj.shape[0]
    x0 = torch.randn(n, 8, generator=torch.Generator().manual_seed(1))
    w = torch.randn(n, 8, generator=torch.Generator().manual_seed(2))
    y_cpu, g_cpu = _two_layer_grad(GraphPropagator(ml100k_adj, backend="csr"), x0, w)
    prop = GraphPropagator(ml100k_adj, backend="auto", device="cuda")
    assert prop.backend == "torch-sparse"
    y, g = _two_layer_grad(prop, x0.cuda(), w.cuda())
    torch.testing.assert_close(y.cpu(), y_cpu, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g.cpu(), g_cpu, atol=1e-5, rtol=1e-4)


def test_auto_resolution_with_and_without_torch_sparse(monkeypatch):
    monkeypatch.setattr(adjacency, "torch_sparse_available", lambda: True)
    monkeypatch.setattr(adjacency, "torch_sparse_has_cuda", lambda: True)
    assert resolve_backend("auto", "cpu") == "csr"  # measured faster on the CPU
    assert resolve_backend("auto", "cuda") == "torch-sparse"
    assert resolve_backend("auto", torch.device("cuda", 0)) == "torch-sparse"
    assert resolve_backend("torch-sparse", "cpu") == "torch-sparse"
    assert resolve_backend("torch-sparse", "cuda") == "torch-sparse"
    # a CPU-only build (made without a GPU): auto keeps csr on CUDA, asking for it is an error
    monkeypatch.setattr(adjacency, "torch_sparse_has_cuda", lambda: False)
    assert resolve_backend("auto", "cuda") == "csr"
    assert resolve_backend("torch-sparse", "cpu") == "torch-sparse"
    with pytest.raises(ValueError, match="compiled without CUDA"):
        resolve_backend("torch-sparse", "cuda")
    monkeypatch.setattr(adjacency, "torch_sparse_available", lambda: False)
    monkeypatch.setattr(adjacency, "torch_sparse_import_error",
                        lambda: "torch_sparse is installed but does not import: ImportError: x")
    assert resolve_backend("auto", "cpu") == "csr"
    assert resolve_backend("auto", "cuda") == "csr"
    with pytest.raises(ValueError, match=r"does not import: ImportError: x.*glta-graph\["):
        resolve_backend("torch-sparse", "cpu")


def test_import_error_is_consistent_with_availability():
    reason = torch_sparse_import_error()
    assert (reason is None) == torch_sparse_available()
    if reason is not None:
        assert reason.startswith("torch_sparse is")
        assert not torch_sparse_has_cuda()


@needs_torch_sparse
def test_cuda_support_of_the_installed_build_is_detected():
    assert torch_sparse_has_cuda() == (torch.ops.torch_sparse.cuda_version() != -1)
    if not torch_sparse_has_cuda():  # e.g. the CPU-only build of benchmarks/graph/README.md
        assert resolve_backend("auto", "cuda") == "csr"
        with pytest.raises(ValueError, match="compiled without CUDA"):
            GraphPropagator(normalized_adjacency(csr_from_pairs([0], [0], 1, 1)),
                            backend="torch-sparse", device="cuda")


def test_propagator_dtype_is_checked():
    adj = normalized_adjacency(csr_from_pairs([0, 1], [1, 0], 2, 2))
    with pytest.raises(ValueError, match=r"dtype=torch\.float64"):
        GraphPropagator(adj, backend="csr")(torch.zeros(4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"floating torch\.dtype"):
        GraphPropagator(adj, backend="csr", dtype=torch.int64)
    prop = GraphPropagator(adj, backend="csr", dtype=torch.float64)
    x = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(prop(x), adj.to_dense().double() @ x)
