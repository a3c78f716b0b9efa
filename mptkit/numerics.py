"""The arithmetic on prompt banks, in one place: full prompts, means over tasks, casts, fresh
factors, seeds, and the batched small solves of the weighted low-rank fit (:mod:`mptkit.fit`).

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


# -- small symmetric systems, solved across a whole batch ---------------------------------------
#: ranks up to this are solved by :func:`spd_solve`'s batch-wide Cholesky; larger by torch.linalg.solve
SMALL_RANK = 12


def pairs(rank: int):
    """Index tensors (ia, ib) of the R(R+1)/2 pairs a <= b, and the position of each (a, b)."""
    import torch

    ia, ib, pos = [], [], {}
    for a in range(rank):
        for b in range(a, rank):
            pos[(a, b)] = pos[(b, a)] = len(ia)
            ia.append(a)
            ib.append(b)
    return torch.tensor(ia), torch.tensor(ib), pos


def spd_solve(A, s, rank: int, pos: dict, block: int = 1 << 16):
    """Solve the symmetric positive (semi)definite systems held packed and batch-last:
    ``A`` (T, P, n) (the (a, b) entry of system (t, j) at ``A[t, pos[a, b], j]``), ``s`` (T, R, n)
    -> ``x`` (T, R, n). A tiny ridge (1e-12 of the mean diagonal) keeps rows without weight at 0."""
    import torch

    T, _, n = A.shape
    diag = torch.stack([A[:, pos[(a, a)]] for a in range(rank)])  # (R, T, n)
    lam = (diag.mean(0) * 1e-12).clamp_min(1e-300)
    if rank > SMALL_RANK:
        full = A.new_empty(T, n, rank, rank)
        for a in range(rank):
            for b in range(rank):
                full[..., a, b] = A[:, pos[(a, b)]]
        full += lam[..., None, None] * torch.eye(rank, dtype=A.dtype)
        return torch.linalg.solve(full, s.transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2)
    out = torch.empty_like(s)
    step = max(1, block // max(T, 1))
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        out[:, :, lo:hi] = _chol_solve(A[:, :, lo:hi], s[:, :, lo:hi], lam[:, lo:hi], rank, pos)
    return out


def _chol_solve(A, s, lam, rank, pos):
    """Cholesky over a batch block (vector operations over the last two dims)."""
    import torch

    L: dict = {}
    for j in range(rank):
        t = A[:, pos[(j, j)]] + lam
        for k in range(j):
            t.addcmul_(L[j, k], L[j, k], value=-1)
        inv = t.clamp_min_(lam).rsqrt_()  # 1 / L[j, j]
        L[j, j] = inv
        for i in range(j + 1, rank):
            t = A[:, pos[(i, j)]].clone()
            for k in range(j):
                t.addcmul_(L[i, k], L[j, k], value=-1)
            L[i, j] = t.mul_(inv)
    y = []
    for i in range(rank):
        t = s[:, i].clone()
        for k in range(i):
            t.addcmul_(L[i, k], y[k], value=-1)
        y.append(t.mul_(L[i, i]))
    x = [None] * rank
    for i in reversed(range(rank)):
        t = y[i]
        for k in range(i + 1, rank):
            t.addcmul_(L[k, i], x[k], value=-1)
        x[i] = t.mul_(L[i, i])
    return torch.stack(x, 1)
