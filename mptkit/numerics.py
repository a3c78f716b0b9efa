"""The arithmetic on prompt banks, in one place: full prompts, means over tasks, casts, fresh
factors, seeds, the weighted low-rank fit and its errors.

Every operation module (derive, edit, export, similarity, info, runtime) computes through these
functions. torch is imported inside them, on first use, so that commands which only move bytes
never pay for it.
"""

from __future__ import annotations

import secrets

from .tensor import CHUNK_BYTES, Array, torch_dtype_name

#: PEFT's MultitaskPromptEmbedding draws fresh factors from N(0, INIT_STD)
INIT_STD = 0.02
#: bytes of source data read at a time when averaging
AVERAGE_CHUNK_BYTES = 8 * CHUNK_BYTES


def torch_dtype(dtype: str):
    """The torch dtype of a safetensors dtype name ("F32" -> torch.float32)."""
    import torch

    return getattr(torch, torch_dtype_name(dtype))


def draw_seed() -> int:
    """A fresh random seed, for operations that record the seed they used."""
    return secrets.randbits(63)


# -- full prompts --------------------------------------------------------------------------------
def task_prompts(pe, cols, rows):
    """``prompt_embeddings * (cols @ rows)`` for a stack of tasks: ``pe`` (N, d), ``cols`` (..., N, r),
    ``rows`` (..., r, d) torch tensors -> (..., N, d). The order of operations is PEFT's
    ``MultitaskPromptEmbedding`` (the factors' matmul, then the elementwise product), so in the
    same dtype the result equals PEFT's bit for bit."""
    import torch

    return pe * torch.matmul(cols, rows)


# -- casts and means -----------------------------------------------------------------------------
def cast(arr: Array, dtype: str) -> Array:
    """``arr`` in ``dtype`` (the same handle when it already is)."""
    if arr.dtype == dtype:
        return arr
    return Array.from_torch(arr.to_torch().to(torch_dtype(dtype)))


def mean_over_tasks(arr: Array, dtype: str) -> Array:
    """The mean along dim 0, keeping it (``(1, ...)``), rounded once to ``dtype``.

    Tasks are read in chunks of at most :data:`AVERAGE_CHUNK_BYTES` into one reused buffer, and
    each task is added in place to a float64 accumulator of one task's size (the conversion
    happens inside the add, so the float64 working set is that accumulator alone, and it stays in
    cache); the sum is divided by T once."""
    import torch

    T, row = arr.shape[0], arr.row_nbytes
    step = max(1, min(T, AVERAGE_CHUNK_BYTES // max(row, 1)))
    src = torch_dtype(arr.dtype)
    acc = torch.zeros(arr.shape[1:], dtype=torch.float64)
    buf = bytearray(step * row)
    for lo in range(0, T, step):
        hi = min(T, lo + step)
        n = arr.rows(range(lo, hi)).read_into(buf)
        chunk = torch.frombuffer(buf, dtype=torch.uint8, count=n).view(src).view(hi - lo, *arr.shape[1:])
        for t in range(hi - lo):
            acc.add_(chunk[t])
        del chunk
    mean = (acc / T).to(torch_dtype(dtype))
    return Array.from_torch(mean.unsqueeze(0))


def pad_rank(cols, rows, rank: int):
    """Zero-pad torch factors (T, N, r) and (T, r, d) to rank ``rank`` (exact: the product is unchanged)."""
    import torch

    pad = rank - cols.shape[2]
    if pad <= 0:
        return cols, rows
    cols = torch.cat([cols, cols.new_zeros(cols.shape[0], cols.shape[1], pad)], dim=2)
    rows = torch.cat([rows, rows.new_zeros(rows.shape[0], pad, rows.shape[2])], dim=1)
    return cols, rows


def describe_difference(a: Array, b: Array) -> str:
    """How much two arrays of one shape differ, in words (for messages)."""
    import torch

    x, y = a.to_torch(dtype=torch.float64), b.to_torch(dtype=torch.float64)
    diff = (x - y).abs()
    n = int((a.to_torch() != b.to_torch()).sum()) if a.numel else 0
    rel = float(torch.linalg.vector_norm(x - y) / torch.linalg.vector_norm(x).clamp_min(1e-300))
    return f"{n} of {a.numel} values differ; max abs difference {float(diff.max()):.3g}, relative difference {rel:.3g}"


# -- fresh factors -------------------------------------------------------------------------------
def fresh_factors(num_tasks: int, num_tokens: int, rank: int, token_dim: int, seed: int, dtype: str):
    """(cols, rows) drawn as PEFT draws them: ``torch.normal(0, 0.02)``, cols then rows, in float32,
    from a generator seeded with ``seed``; then cast to ``dtype``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    cols = torch.normal(0.0, INIT_STD, size=(num_tasks, num_tokens, rank), generator=g)
    rows = torch.normal(0.0, INIT_STD, size=(num_tasks, rank, token_dim), generator=g)
    return cast(Array.from_torch(cols), dtype), cast(Array.from_torch(rows), dtype)


# -- the weighted low-rank fit -------------------------------------------------------------------
def relative_error(W, C, R, target) -> float:
    """``||W * (C @ R) - target|| / ||target||`` in float64 (0 when both are zero)."""
    import torch

    f64 = torch.float64
    got = task_prompts(W, C.to(f64), R.to(f64))
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
    import torch

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
    import torch

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
