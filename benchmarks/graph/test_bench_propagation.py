"""Microbenchmarks of one LightGCN training step per propagation backend (pytest-benchmark).

    uv run pytest benchmarks/graph/test_bench_propagation.py --benchmark-enable

A seeded random bipartite graph (5,000 users x 8,000 items, 200,000 edges), 64-dim, 3 layers,
BPR batch of 2,048; one forward + backward + Adam step per round. With benchmarks disabled
(the default) each case runs once as a smoke test and checks the backends agree.
"""

import pytest
import torch
from glta_graph.adjacency import GraphPropagator, normalized_adjacency, torch_sparse_available
from glta_graph.data import csr_from_pairs
from glta_graph.lightgcn import LightGCN
from glta_graph.train import NegativeSampler, _bpr_loss

pytestmark = pytest.mark.benchmark(group="lightgcn-step")

USERS, ITEMS, EDGES = 5_000, 8_000, 200_000


@pytest.fixture(scope="module")
def graph():
    g = torch.Generator().manual_seed(0)
    u = torch.randint(USERS, (EDGES,), generator=g).numpy()
    i = torch.randint(ITEMS, (EDGES,), generator=g).numpy()
    train = csr_from_pairs(u, i, USERS, ITEMS)
    sampler = NegativeSampler(train)
    users, pos = sampler.positives(2048, "user", g)
    return train, normalized_adjacency(train), users, pos, sampler.sample(users, g)


_TORCH_SPARSE = pytest.param(
    "torch-sparse",
    marks=pytest.mark.skipif(not torch_sparse_available(),
                             reason="optional extra glta-graph[torch-sparse] not importable"),
)


@pytest.mark.parametrize("backend", ["csr", "coo", _TORCH_SPARSE])
def test_training_step(benchmark, graph, backend):
    _, adj, users, pos, neg = graph
    torch.manual_seed(0)
    model = LightGCN(USERS, ITEMS, 64, 3)
    prop = GraphPropagator(adj, backend=backend)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        ue, ie = model(prop)
        loss = _bpr_loss(model, ue, ie, users, pos, neg, 1e-4)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    loss = benchmark(step)
    assert 0 < loss < 1.0  # BPR starts near log(2)


@pytest.mark.parametrize("backend", ["coo", _TORCH_SPARSE])
def test_backends_agree(graph, backend):
    _, adj, *_ = graph
    x = torch.randn(USERS + ITEMS, 8, generator=torch.Generator().manual_seed(1))
    a = GraphPropagator(adj, backend="csr")(x)
    b = GraphPropagator(adj, backend=backend)(x)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
