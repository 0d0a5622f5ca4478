"""Spectral clustering of a sparse class affinity, without any dense (C, C) array.

The dense path (:func:`specialists.clustering.cluster_classes`) runs scikit-learn's
``SpectralClustering`` on the affinity plus a tiny uniform weight ``eps`` on every pair (so that a
disconnected graph still has a well-defined embedding). At 15,000 classes that weight alone is a
dense 1.8 GB matrix, and scikit-learn's ARPACK route factorises the Laplacian (shift-invert),
which fills in. Here the same clustering is done on the sparse affinity:

1. the normalised affinity ``M = D^-1/2 (W + eps (J - I)) D^-1/2`` is applied as an operator
   (the uniform part as a rank-one update; ``D`` the degrees of ``W + eps (J - I)``);
2. its ``k`` largest eigenvectors come from Lanczos iterations (``scipy.sparse.linalg.eigsh``,
   matrix-vector products only) and are scaled by ``D^-1/2``, as scikit-learn's embedding is;
3. classes are assigned by a column-pivoted QR of the embedding (Damle, Minden & Ying 2019, the
   ``cluster_qr`` that the dense path uses too): deterministic, no k-means restarts.

The eigenvectors are those of the dense path's matrix, and the assignment does not depend on
which basis of their span the solver returns, so both paths give the same clusters wherever the
clusters are well separated.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.linalg import eigh, qr, svd
from scipy.sparse.linalg import LinearOperator, eigsh

from .sparse import scale

__all__ = ["EPS", "qr_assign", "sparse_spectral_labels"]

EPS = 1e-6  # the uniform weight on every pair, as a share of the largest affinity (dense: same)
EIGSH_TOL = 1e-6  # relative accuracy of the eigenvalues: far below what moves an assignment
# Below this many classes per cluster (or for tiny graphs) Lanczos has too little room: a dense
# eigendecomposition of the (small) operator is quicker and exact.
LANCZOS_MIN_ROWS = 4


def _operator(w: sp.csr_array) -> tuple[LinearOperator, np.ndarray]:
    """The normalised affinity as an operator, and (K,) the square roots of the degrees."""
    n = w.shape[0]
    eps = EPS * float(w.max())
    deg = np.asarray(w.sum(axis=1)).ravel() + eps * (n - 1)  # (K,)
    root = np.sqrt(deg)
    inv = 1.0 / root
    # float32 entries: the products stream the matrix from memory, and half the bytes are half
    # the time; the eigenvectors need far less than float32's precision to place a class.
    m = sp.csr_array(scale(w, inv, inv), dtype=np.float32)

    def matvec(x: np.ndarray) -> np.ndarray:
        x = np.ravel(x)
        y = inv * x  # (K,)
        return (m @ x.astype(np.float32)).astype(np.float64) + eps * inv * (y.sum() - y)

    return LinearOperator((n, n), matvec=matvec, dtype=np.float64), root


def qr_assign(embedding: np.ndarray) -> np.ndarray:
    """Assign each row of an (n, k) spectral embedding to one of k clusters.

    Column-pivoted QR of ``embedding.T`` picks the k rows that are most nearly orthogonal (one
    representative per cluster); the embedding is rotated so that these become the axes (the
    orthogonal factor of their polar decomposition) and each row goes to the axis on which it has
    the largest absolute coordinate.

    Returns:
        (n,) int labels in [0, k).
    """
    k = embedding.shape[1]
    _, _, pivots = qr(embedding.T, pivoting=True, mode="economic")
    u, _, vt = svd(embedding[pivots[:k]].T)
    return np.abs(embedding @ (u @ vt)).argmax(axis=1)


def sparse_spectral_labels(affinity: sp.csr_array, n_clusters: int,
                           random_state: int = 0) -> np.ndarray:
    """Spectral clustering of a sparse symmetric affinity into ``n_clusters`` groups.

    Args:
        affinity: (K, K) ``csr_array``, symmetric, non-negative, zero diagonal, some entry > 0.
        n_clusters: k, 2 <= k < K.
        random_state: seeds the Lanczos start vector.

    Returns:
        (K,) int labels (possibly fewer than k distinct ones on a degenerate graph).
    """
    n = affinity.shape[0]
    op, root = _operator(affinity)
    if n < LANCZOS_MIN_ROWS * n_clusters + 20:
        full = op.matmat(np.eye(n))  # (K, K), K small here
        _, vecs = eigh((full + full.T) / 2, subset_by_index=[n - n_clusters, n - 1])
    else:
        v0 = np.random.default_rng(random_state).uniform(-1.0, 1.0, n)
        _, vecs = eigsh(op, k=n_clusters, which="LA", v0=v0, tol=EIGSH_TOL)
    return qr_assign(vecs / root[:, None])  # (K,)
