"""Normalised bipartite adjacency and the sparse propagation backends of LightGCN.

The user-item graph of ``U`` users and ``I`` items is the ``(U+I) x (U+I)`` matrix

.. math::

    A = \\begin{pmatrix} 0 & R \\\\ R^\\top & 0 \\end{pmatrix}, \\qquad
    \\tilde A = D^{-1/2} A D^{-1/2},

with ``R`` the binary ``U x I`` training matrix and ``D`` the diagonal degree matrix.
Isolated nodes (degree 0) get ``D^{-1/2} = 0`` so that their rows stay zero (never
``inf`` or ``NaN``).

Propagation ``X -> \\tilde A X`` has three backends:

``"csr"``
    torch's CSR sparse-dense matmul wrapped in a custom :class:`torch.autograd.Function`
    whose backward is ``\\tilde A^\\top G = \\tilde A G`` (the matrix is symmetric), so no
    transposed copy and no autograd through the sparse kernel are needed. Always available.
``"coo"``
    ``torch.sparse.mm`` on a COO tensor with torch's own sparse autograd; kept as the
    reference to compare against (measured several times slower on CPU, see
    ``benchmarks/graph/``).
``"torch-sparse"``
    ``torch_sparse.SparseTensor`` (the optional extra ``glta-graph[torch-sparse]``, which
    also needs ``torch_scatter``) with the same symmetric backward as ``"csr"``.

``backend="auto"`` picks the measured-fastest backend per device: ``"csr"`` on the CPU and
on CUDA without torch-sparse; ``"torch-sparse"`` on CUDA when it is importable. Measured
in ``benchmarks/graph/`` (figures in ``benchmarks/RESULTS.md``): ``"csr"`` is faster than
``"coo"`` on the CPU and on an H200, and torch-sparse 0.6.18 (CPU build) is slower than
``"csr"`` on the CPU. On CUDA it is the
reference implementation's kernel and is preferred when installed with CUDA kernels, but was
not measured here.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings

import numpy as np
import torch

__all__ = [
    "BACKENDS",
    "GraphPropagator",
    "normalized_adjacency",
    "resolve_backend",
    "sparse_propagate",
    "torch_sparse_available",
    "torch_sparse_has_cuda",
    "torch_sparse_import_error",
]

BACKENDS = ("auto", "csr", "coo", "torch-sparse")


def torch_sparse_available() -> bool:
    """Return whether the optional ``torch_sparse`` package imports and works.

    A package that is installed but cannot be imported (built against another torch, or
    ``torch_scatter``, which it imports, missing) counts as unavailable; see
    :func:`torch_sparse_import_error` for the reason.
    """
    return torch_sparse_import_error() is None


@functools.cache
def torch_sparse_import_error() -> str | None:
    """Why ``torch_sparse`` cannot be used (``None`` when it imports); checked once."""
    if importlib.util.find_spec("torch_sparse") is None:
        return "torch_sparse is not installed"
    try:
        with warnings.catch_warnings():  # its import scripts functions with torch.jit
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated",
                                    category=FutureWarning)
            import torch_sparse  # noqa: F401  (optional extra)
    except (ImportError, OSError, RuntimeError) as exc:  # missing torch_scatter, ABI mismatch
        return f"torch_sparse is installed but does not import: {type(exc).__name__}: {exc}"
    return None


@functools.cache
def torch_sparse_has_cuda() -> bool:
    """Whether the importable ``torch_sparse`` was compiled with CUDA kernels.

    A build made on a machine without a GPU (``FORCE_CUDA`` unset) has CPU kernels only and
    fails on CUDA tensors with "Not compiled with CUDA support"; ``False`` when
    ``torch_sparse`` is unusable.
    """
    if not torch_sparse_available():
        return False
    return int(torch.ops.torch_sparse.cuda_version()) != -1


def normalized_adjacency(train: torch.Tensor) -> torch.Tensor:
    """Build the symmetric-normalised bipartite adjacency ``D^-1/2 [[0,R],[R^T,0]] D^-1/2``.

    Args:
        train: ``(U, I)`` binary interaction matrix (sparse CSR, sparse COO or dense);
            any non-zero entry is an edge.

    Returns:
        ``(U+I, U+I)`` float32 sparse CSR tensor with int64 indices, columns sorted within
        each row. Users are nodes ``0..U-1`` and item ``i`` is node ``U+i``. Rows of isolated
        nodes are empty.
    """
    if train.dim() != 2:
        raise ValueError(
            f"train must be a 2-D (users x items) matrix, got shape {tuple(train.shape)}"
        )
    num_users, num_items = (int(s) for s in train.shape)
    users, items = _nonzero_pairs(train)
    n = num_users + num_items
    rows = np.concatenate([users, items + num_users])
    cols = np.concatenate([items + num_users, users])
    deg = np.bincount(rows, minlength=n).astype(np.float64)
    with np.errstate(divide="ignore"):
        inv_sqrt = np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1.0)), 0.0)
    order = np.lexsort((cols, rows))
    rows, cols = rows[order], cols[order]
    values = (inv_sqrt[rows] * inv_sqrt[cols]).astype(np.float32)
    crow = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=crow[1:])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            torch.from_numpy(crow),
            torch.from_numpy(np.ascontiguousarray(cols)),
            torch.from_numpy(values),
            size=(n, n),
            check_invariants=False,
        )


def _nonzero_pairs(train: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Unique (user, item) int64 index arrays of the non-zero entries of ``train``."""
    if train.layout == torch.sparse_csr:
        crow = train.crow_indices().cpu().numpy()
        cols = train.col_indices().cpu().numpy().astype(np.int64)
        vals = train.values().cpu().numpy()
        users = np.repeat(np.arange(len(crow) - 1, dtype=np.int64), np.diff(crow))
        keep = vals != 0
        users, items = users[keep], cols[keep]
    elif train.layout == torch.sparse_coo:
        t = train.coalesce()
        idx = t.indices().cpu().numpy().astype(np.int64)
        keep = t.values().cpu().numpy() != 0
        users, items = idx[0][keep], idx[1][keep]
    else:
        users_t, items_t = torch.nonzero(train.cpu(), as_tuple=True)
        users, items = users_t.numpy().astype(np.int64), items_t.numpy().astype(np.int64)
    key = np.unique(users * int(train.shape[1]) + items)
    return key // int(train.shape[1]), key % int(train.shape[1])


class _SymmetricSparseMM(torch.autograd.Function):
    """``Y = A X`` for a symmetric sparse ``A``; backward ``dX = A dY`` (no transpose)."""

    @staticmethod
    def forward(ctx, adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.adj = adj
        return adj @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        grad_x = ctx.adj @ grad.contiguous() if ctx.needs_input_grad[1] else None
        return None, grad_x


class _SymmetricTorchSparseMM(torch.autograd.Function):
    """``Y = A X`` with a symmetric ``torch_sparse.SparseTensor`` ``A``; backward ``dX = A dY``.

    torch-sparse's own autograd computes ``A^T dY`` by gathering the values and row indices
    into column order (two ``nnz``-sized ``index_select``) on every backward and keeps ``X``
    alive for it; for a symmetric ``A`` the forward kernel on ``dY`` is the same product.
    """

    @staticmethod
    def forward(ctx, mat, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        from torch_sparse import matmul  # optional extra

        ctx.mat = mat
        return matmul(mat, x.detach())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        if not ctx.needs_input_grad[1]:
            return None, None
        from torch_sparse import matmul  # optional extra

        return None, matmul(ctx.mat, grad.contiguous())


def sparse_propagate(adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Multiply a *symmetric* sparse CSR matrix by a dense matrix with a cheap backward.

    Args:
        adj: ``(N, N)`` symmetric sparse CSR (float32), e.g. from :func:`normalized_adjacency`.
            Symmetry is assumed, not checked: the gradient is ``adj @ grad``.
        x: ``(N, d)`` dense features (may require grad).

    Returns:
        ``(N, d)`` dense ``adj @ x``; differentiable with respect to ``x`` only.
    """
    return _SymmetricSparseMM.apply(adj, x)


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """Return the concrete backend (``"csr"``, ``"coo"`` or ``"torch-sparse"``) for ``device``.

    ``"auto"`` is ``"csr"`` on the CPU and ``"torch-sparse"`` on CUDA when it is importable
    and compiled with CUDA (else ``"csr"``). Asking for ``"torch-sparse"`` when it is not
    installed, or on CUDA with a CPU-only build, raises ``ValueError`` saying how to fix it.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    device = torch.device(device)
    if backend == "auto":
        if device.type == "cuda" and torch_sparse_available() and torch_sparse_has_cuda():
            return "torch-sparse"
        return "csr"
    if backend == "torch-sparse" and not torch_sparse_available():
        raise ValueError(
            f"backend 'torch-sparse' needs the optional extra ({torch_sparse_import_error()}): "
            "pip install --no-build-isolation 'glta-graph[torch-sparse]' (builds torch-sparse "
            "and torch-scatter from source against the installed torch)"
        )
    if backend == "torch-sparse" and device.type == "cuda" and not torch_sparse_has_cuda():
        raise ValueError(
            f"backend 'torch-sparse' on {device}: the installed torch_sparse was compiled "
            "without CUDA; rebuild it on a machine with the CUDA toolkit (FORCE_CUDA=1) or use "
            "backend 'csr'"
        )
    return backend


class GraphPropagator:
    """The normalised adjacency held in one backend's format, callable as ``X -> A X``.

    Args:
        adj: ``(N, N)`` symmetric sparse CSR from :func:`normalized_adjacency`.
        backend: one of :data:`BACKENDS` (``"auto"`` resolves per device, see
            :func:`resolve_backend`).
        device: where the matrix lives and the products run.
        dtype: floating dtype the matrix is stored in (float32 by default, float64 for
            exact comparisons); ``x`` must have the same dtype.

    Calling the propagator with ``x`` of shape ``(N, d)`` returns ``A x`` of shape
    ``(N, d)``, differentiable with respect to ``x`` in every backend. The ``"csr"`` and
    ``"torch-sparse"`` backends share the same symmetric backward (``dX = A dY``).
    """

    def __init__(
        self,
        adj: torch.Tensor,
        backend: str = "auto",
        device: torch.device | str = "cpu",
        *,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if adj.layout != torch.sparse_csr:
            raise ValueError(f"adj must be a sparse CSR tensor, got layout {adj.layout}")
        if adj.dim() != 2 or adj.shape[0] != adj.shape[1]:
            raise ValueError(f"adj must be square, got shape {tuple(adj.shape)}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"GraphPropagator dtype must be a floating torch.dtype, got {dtype!r}")
        self.device = torch.device(device)
        self.backend = resolve_backend(backend, self.device)
        self.num_nodes = int(adj.shape[0])
        self.nnz = int(adj._nnz())
        self.dtype = dtype
        adj = adj.to(dtype)
        if self.backend == "csr":
            self._mat = adj.to(self.device)
        elif self.backend == "coo":
            self._mat = adj.to_sparse_coo().coalesce().to(self.device)
        else:  # torch-sparse
            from torch_sparse import SparseTensor  # optional extra

            # CSR straight from torch's layout: rows sorted, columns sorted within rows and
            # unique (normalized_adjacency guarantees it), so torch-sparse's checks are skipped.
            self._mat = SparseTensor(
                rowptr=adj.crow_indices().to(torch.int64),
                col=adj.col_indices().to(torch.int64),
                value=adj.values(),
                sparse_sizes=(self.num_nodes, self.num_nodes),
                is_sorted=True,
                trust_data=True,
            ).to(self.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``A @ x`` for ``x`` of shape ``(N, d)`` and the propagator's dtype."""
        if x.dim() != 2 or x.shape[0] != self.num_nodes:
            raise ValueError(f"x must be ({self.num_nodes}, d), got {tuple(x.shape)}")
        if x.dtype != self.dtype:
            raise ValueError(
                f"x has dtype {x.dtype} but the propagator holds {self.dtype}; build it with "
                f"GraphPropagator(..., dtype={x.dtype})"
            )
        if self.backend == "csr":
            return sparse_propagate(self._mat, x)
        if self.backend == "coo":
            return torch.sparse.mm(self._mat, x)
        return _SymmetricTorchSparseMM.apply(self._mat, x)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_nodes={self.num_nodes}, nnz={self.nnz}, "
            f"backend={self.backend!r}, device={str(self.device)!r})"
        )
