"""The report's similarity figures for banks too large for a T x T matrix (more than
:data:`mptkit._report.DENSE_TASKS` tasks), in memory that grows with T x K, not T x T.

Two passes over the blocked cosines of :class:`mptkit._similarity._Blocks` (the products ``similarity``
computes): the first keeps each task's :data:`GRAPH_K` nearest (the page's neighbours are the first
of them); from that graph come the order and the map (a spectral embedding: the leading non-trivial
eigenvectors of the normalised neighbour graph, with a weak link between every pair of tasks so that
clusters without edges between them still get coordinates); the second pass sums the cosines into
the heatmap's blocks of consecutive tasks in that order (mean, min and max a block). Memory: the
neighbour lists (T x GRAPH_K), the sparse graph, the heatmap's cells and one block of products;
20,000 tiny tasks once took 6.4 GB as a dense matrix."""

from __future__ import annotations

import math

#: each task's nearest tasks kept for the graph (the page lists the first TOP_K of them)
GRAPH_K = 10
#: the weight of the link between every pair of tasks, against the neighbour edges' cosines
TELEPORT = 1e-3


def large_figures(bank, top_k: int, cells: int) -> dict:
    """``{"near", "order", "xy", "heat": (n, size, mean, low, high)}`` for every task of ``bank``
    (a task whose prompt is all zeros or not finite has no cosine: it has no neighbours and no edge)."""
    import torch

    from . import _progress as progress
    from ._similarity import _Blocks, _keep

    T = bank.num_tasks
    blocks = _Blocks(bank, list(range(T)))
    bad = (~(torch.isfinite(blocks.norm) & (blocks.norm > 0))).numpy()
    k = min(T - 1, max(top_k, GRAPH_K))
    best = torch.full((T, k), -math.inf, dtype=torch.float64)
    where = torch.full((T, k), -1, dtype=torch.long)
    with progress.bar(T * (T + 1) // 2, "similarity", unit="pair", unit_scale=True) as bar:
        for i0, j0, cos in blocks.cosines():
            a, b = cos.shape
            ranked = _masked(cos, bad, i0, j0).nan_to_num_(nan=-math.inf)
            if i0 == j0:
                ranked.fill_diagonal_(-math.inf)
            _keep(best, where, i0, ranked, j0, k)
            if i0 != j0:
                _keep(best, where, j0, ranked.T, i0, k)
            bar.update(a * b if i0 != j0 else a * (a + 1) // 2)
    best, where = best.numpy(), where.numpy()
    near = [[[int(j), float(v)] for v, j in zip(best[i, :top_k], where[i, :top_k]) if v != -math.inf] for i in range(T)]
    order, xy = _spectral(best, where, T)
    heat = _block_means(blocks, bad, order, cells, T)
    return {"near": near, "order": order, "xy": xy, "heat": heat}


def _masked(cos, bad, i0: int, j0: int):
    """``cos`` with NaN in the rows and columns of tasks without a cosine (as the dense path has)."""
    a, b = cos.shape
    rows, cols = bad[i0 : i0 + a], bad[j0 : j0 + b]
    if rows.any():
        cos[rows, :] = math.nan
    if cols.any():
        cos[:, cols] = math.nan
    return cos


def _spectral(best, where, T: int):
    """The order (by the first non-trivial coordinate) and 2-D coordinates of a spectral embedding
    of the neighbour graph: edges weighted by their positive cosines, made symmetric, plus
    :data:`TELEPORT` between every pair (an operator: never a T x T matrix)."""
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import LinearOperator, eigsh

    ok = np.isfinite(best) & (best > 0) & (where >= 0)
    rows = np.repeat(np.arange(T), best.shape[1])[ok.ravel()]
    W = coo_matrix((best[ok], (rows, where[ok])), shape=(T, T)).tocsr()
    W = W.maximum(W.T)
    deg = np.asarray(W.sum(axis=1)).ravel() + TELEPORT * T
    s = 1.0 / np.sqrt(deg)

    def matvec(x):
        x = np.asarray(x).ravel() * s
        return s * (W @ x + TELEPORT * x.sum())

    op = LinearOperator((T, T), matvec=matvec, dtype=np.float64)
    vals, vecs = eigsh(op, k=3, which="LA", v0=np.sqrt(deg))
    vecs = vecs[:, np.argsort(vals)[::-1]] * s[:, None]  # random-walk coordinates; the first is constant
    xy = vecs[:, 1:3]
    for j in range(2):  # a fixed sign: the largest coordinate is positive
        if xy[np.argmax(np.abs(xy[:, j])), j] < 0:
            xy[:, j] *= -1
    order = np.lexsort((np.arange(T), xy[:, 0])).tolist()
    top = float(np.abs(xy).max()) or 1.0
    return order, (xy / top).tolist()


def _block_means(blocks, bad, order, cells: int, T: int):
    """``(n, size, mean, low, high)``: the cosines in ``order`` summed into n x n blocks of ``size``
    consecutive tasks (NaN for a block without any cosine), a block of products at a time."""
    import numpy as np

    size = max(1, math.ceil(T / cells))
    n = math.ceil(T / size)
    block_of = np.empty(T, dtype=np.int64)
    block_of[np.asarray(order)] = np.arange(T) // size
    total, count = np.zeros(n * n), np.zeros(n * n)
    low, high = np.full(n * n, np.inf), np.full(n * n, -np.inf)
    for i0, j0, cos in blocks.cosines():
        c = _masked(cos, bad, i0, j0).numpy()
        bi, bj = block_of[i0 : i0 + c.shape[0]], block_of[j0 : j0 + c.shape[1]]
        for cell, vals in ((bi[:, None] * n + bj[None, :], c), (bj[:, None] * n + bi[None, :], c.T)):
            ok = np.isfinite(vals)
            at, v = cell[ok], vals[ok]
            total += np.bincount(at, weights=v, minlength=n * n)
            count += np.bincount(at, minlength=n * n)
            np.minimum.at(low, at, v)
            np.maximum.at(high, at, v)
            if i0 == j0:  # the diagonal block holds both halves already
                break
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    low, high = np.where(count > 0, low, np.nan), np.where(count > 0, high, np.nan)
    return n, size, mean.reshape(n, n), low.reshape(n, n), high.reshape(n, n)
