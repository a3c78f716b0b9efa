"""The weighted low-rank fit mptkit had before the batched one (``mptkit._fit``), kept verbatim as the
reference the batched fit must never be worse than (tests/ops/test_fit.py)."""

from __future__ import annotations

import torch


# -- the weighted low-rank fit -------------------------------------------------------------------
def relative_error(W, C, R, target) -> float:
    """``||W * (C @ R) - target|| / ||target||`` in float64 (0 when both are zero)."""
    f64 = torch.float64
    got = W * (C.to(f64) @ R.to(f64))
    num = float(torch.linalg.vector_norm(got - target))
    den = float(torch.linalg.vector_norm(target))
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


def weighted_lowrank_fit(W, X, rank: int, *, iterations: int = 100, tol: float = 1e-8):
    """Rank-``rank`` factors ``C`` (N, r), ``R`` (r, d) minimising ``||W * (C @ R - X)||_F``
    (float64 torch tensors in and out).

    Starts from the truncated SVD of ``X`` (so the fit is exact whenever ``X`` has rank <= r) and
    improves it by alternating weighted least squares: with R fixed each row of C is a small r x r
    solve, and the same for each column of R. Stops when an iteration gains less than ``tol``
    (relative) or after ``iterations``. Components come out balanced (equal norms in C and R)."""
    N, d = X.shape
    C, R = X.new_zeros(N, rank), X.new_zeros(rank, d)
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    k = min(rank, S.shape[0])
    root = S[:k].sqrt()
    C[:, :k], R[:k] = U[:, :k] * root, root[:, None] * Vh[:k]
    W2 = W * W
    W2X = W2 * X
    scale = float((W2X * X).sum())

    def loss(C, R):
        return float((W2 * (C @ R - X).square()).sum())

    prev = loss(C, R)
    for _ in range(iterations):
        if prev <= scale * 1e-28:
            break
        C = _ridge_solve(torch.einsum("ij,aj,bj->iab", W2, R, R), W2X @ R.T)
        R = _ridge_solve(torch.einsum("ij,ia,ib->jab", W2, C, C), W2X.T @ C).T
        cur = loss(C, R)
        if prev - cur <= tol * max(prev, 1e-300):
            prev = min(prev, cur)
            break
        prev = cur
    return _balance(C, R)


def _ridge_solve(A, b):
    """Solve the batched r x r systems ``A x = b`` with a tiny ridge (rows without weight give 0)."""
    r = A.shape[-1]
    lam = (A.diagonal(dim1=-2, dim2=-1).mean(-1) * 1e-12).clamp_min(1e-300)
    eye = torch.eye(r, dtype=A.dtype)
    return torch.linalg.solve(A + lam[:, None, None] * eye, b.unsqueeze(-1)).squeeze(-1)


def _balance(C, R):
    """Rescale each rank component so that its column of C and row of R have the same norm."""
    nc, nr = C.norm(dim=0), R.norm(dim=1)
    ok = (nc > 0) & (nr > 0)
    s = (nr / nc.where(ok, 1.0)).sqrt().where(ok, 0.0)
    return C * s, R / s.where(ok, 1.0)[:, None] * ok[:, None]
