"""The arithmetic on prompt banks, in one place: full prompts, means over tasks, casts, fresh
factors, seeds, and the batched small solves of the weighted low-rank fit (:mod:`mptkit._fit`).

Every operation module (derive, edit, export, similarity, info, runtime) computes through these
functions. torch is imported inside them, on first use, so that commands which only move bytes
never pay for it.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import secrets

from . import _progress as progress
from ._dtypes import BY_CODE, code_of_torch, shown, torch_dtype
from ._tensor import Array
from .errors import UsageError

#: PEFT's MultitaskPromptEmbedding draws fresh factors from N(0, INIT_STD)
INIT_STD = 0.02
#: bytes of source data read at a time when averaging (measured: 1-2 MB chunks stay in cache
#: between the read and the adds, 0.2 s for 2 GB; 64 MB chunks took 1.4 s)
AVERAGE_CHUNK_BYTES = 2 << 20


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


# -- the range of the stored dtype -------------------------------------------------------------------
def limits(code: str) -> tuple[float, float]:
    """A float dtype's largest finite value (:mod:`mptkit._dtypes`), and the magnitude from which
    rounding to it gives infinity: the largest plus half a unit in its last place (a tie rounds to
    the even, Inf). (inf, inf) for a dtype without a largest value."""
    d = BY_CODE.get(code)
    if d is None or d.largest is None:
        return math.inf, math.inf
    f, e = math.frexp(d.largest)  # largest = (1 - 2**-p) * 2**e: its last place is (1 - f) * 2**e
    try:
        return d.largest, d.largest + math.ldexp(1 - f, e - 1)
    except OverflowError:  # float64: nothing is beyond it
        return d.largest, math.inf


_CLAMP: contextvars.ContextVar[bool] = contextvars.ContextVar("mptkit_clamp", default=False)


@contextlib.contextmanager
def clamping(clamp: bool):
    """Inside, :func:`in_range` stores values beyond the output dtype's range as its largest
    finite value (``--clamp``) instead of refusing them; operations that take ``clamp=`` use this."""
    token = _CLAMP.set(bool(clamp))
    try:
        yield
    finally:
        _CLAMP.reset(token)


def in_range(x, dtype, what: str):
    """``x`` (a torch tensor or numpy array, in a dtype at least as wide as ``dtype``: "F16", or a
    torch dtype) ready to be stored in ``dtype``: finite values that the cast would turn into Inf
    are refused, with the largest of them and the dtype's range named, unless the operation runs
    under :func:`clamping` (then they become the largest finite value of their sign). Values
    already non-finite stay as they are. The one check every cast to an output dtype passes."""
    key = dtype if isinstance(dtype, str) else (code_of_torch(dtype) or "F64")
    top, inf_at = limits(key)
    if math.isinf(inf_at):
        return x
    if type(x).__module__.startswith("torch"):
        import torch

        if x.numel() == 0 or not x.is_floating_point():
            return x
        over = x.isfinite() & (x.abs() >= inf_at)
        if not bool(over.any()):
            return x
        count, largest = int(over.sum()), float(x[over].abs().max())
        if _CLAMP.get():
            return torch.where(over, x.sign() * top, x)
    else:
        import numpy as np

        if x.size == 0:
            return x
        with np.errstate(invalid="ignore"):
            over = np.isfinite(x) & (np.abs(x) >= inf_at)
        if not over.any():
            return x
        count, largest = int(over.sum()), float(np.abs(x[over]).max())
        if _CLAMP.get():
            return np.where(over, np.sign(x) * top, x)
    name = shown(key)
    raise UsageError(
        f"{what}: {count:,} value{'s' if count != 1 else ''} beyond {name}'s range (the largest in magnitude is "
        f"{largest:.6g}; {name}'s largest is {top:.6g}) would be stored as Inf; keep a wider dtype, or pass "
        f"--clamp (clamp=True) to store {top:.6g} with their sign instead"
    )


# -- casts and means -----------------------------------------------------------------------------
def cast(arr: Array, dtype: str, what: str = "the values") -> Array:
    """``arr`` in ``dtype`` (the same handle when it already is); values beyond ``dtype``'s range
    are refused or clamped (:func:`in_range`; ``what`` names them in the message)."""
    if arr.dtype == dtype:
        return arr
    return Array.from_torch(in_range(arr.to_torch(), dtype, what).to(torch_dtype(dtype)))


def mean_over_tasks(arr: Array, dtype: str, what: str = "the mean") -> Array:
    """The mean along dim 0, keeping it (``(1, ...)``), correctly rounded once to ``dtype``.

    numpy, not torch: importing torch costs 0.75-2 s, more than averaging a 2 GB bank. Tasks are
    read in chunks of at most :data:`AVERAGE_CHUNK_BYTES` (small enough to stay in cache between
    the read and the adds) into one reused buffer, and each task is added, in order, to a float64
    accumulator of one task's size; the sum is divided by T once. A task larger than a chunk is
    read in equal pieces. Sums that overflow float64 (values near 1e308) are added again scaled
    by a power of two (exact), and the mean is checked against ``dtype``'s range (:func:`in_range`)."""
    import numpy as np

    T, n = arr.shape[0], math.prod(arr.shape[1:])
    split = _pieces(n, arr.itemsize)
    flat = arr.reshape((T * split, n // split))
    piece, row = n // split, flat.row_nbytes
    step = max(1, min(T * split, AVERAGE_CHUNK_BYTES // max(row, 1)))
    acc = np.zeros((split, piece), dtype=np.float64)
    buf = bytearray(step * row)
    scale = 1.0
    while True:
        acc[:] = 0
        with (
            progress.bar(arr.nbytes, "average", unit="B", unit_scale=True) as bar,
            np.errstate(over="ignore", invalid="ignore"),  # checked below: a sum that overflowed is redone
        ):
            for lo in range(0, T * split, step):
                hi = min(T * split, lo + step)
                flat.rows(range(lo, hi)).read_into(buf)
                a = as_float(buf, arr.dtype, (hi - lo) * piece).reshape(hi - lo, piece)
                for i in range(hi - lo):
                    if scale == 1.0:
                        np.add(acc[(lo + i) % split], a[i], out=acc[(lo + i) % split])
                    else:
                        acc[(lo + i) % split] += a[i] * scale
                bar.update((hi - lo) * row)
        if scale != 1.0 or np.isfinite(acc).all() or arr.dtype != "F64":
            break
        scale = 2.0 ** -(T.bit_length() + 1)  # a sum of T finite values then stays below the largest float64
    with np.errstate(invalid="ignore", over="ignore"):
        mean = (acc / T).reshape(-1) / scale
    out = from_float64(in_range(mean, dtype, what), dtype)
    return Array.from_bytes(out, dtype, (1, *arr.shape[1:]))


def _pieces(n: int, itemsize: int) -> int:
    """How many equal pieces a task of ``n`` elements is read in (1 when it fits a chunk)."""
    split = 1
    while n * itemsize // split > AVERAGE_CHUNK_BYTES and n % (split * 2) == 0:
        split *= 2
    return split


def as_float(buf, dtype: str, count: int):
    """The first ``count`` elements of ``buf`` (raw ``dtype`` bytes) as a float numpy array, exactly:
    float32 for BF16 (its bits are a float32's upper half), the native type otherwise."""
    import numpy as np

    if dtype == "BF16":
        return (np.frombuffer(buf, dtype=np.uint16, count=count).astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(buf, dtype=np.dtype(BY_CODE[dtype].numpy), count=count)


def from_float64(x, dtype: str) -> bytes:
    """float64 values correctly rounded (to nearest, ties to even) to ``dtype``, as raw bytes. For
    BF16 (no numpy type) the value is first rounded to float32 *to odd* (truncated, the last bit set
    when inexact), which makes the second rounding, to bfloat16's 8 bits, the correct one; torch's
    own float64 -> bfloat16 cast rounds twice to nearest and can be off by one unit."""
    import numpy as np

    if dtype != "BF16":
        with np.errstate(over="ignore"):  # values beyond the range were refused or clamped (in_range)
            return x.astype(np.dtype(BY_CODE[dtype].numpy)).tobytes()
    with np.errstate(over="ignore"):
        y = x.astype(np.float32)
    bits = y.view(np.uint32).copy()
    with np.errstate(invalid="ignore"):
        inexact = (y.astype(np.float64) != x) & ~np.isnan(x)
        over = np.abs(y.astype(np.float64)) > np.abs(x)
    bits[inexact & over] -= 1
    bits[inexact] |= 1
    out = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    out[np.isnan(x)] = 0x7FC0
    return out.tobytes()


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
    -> ``x`` (T, R, n). A tiny ridge (1e-12 of the mean diagonal in float64, 1e-6 in float32)
    keeps rows without weight at 0."""
    import torch

    T, _, n = A.shape
    eps = (1e-12 if A.dtype == torch.float64 else 1e-6) / rank
    if rank > SMALL_RANK:
        full = A.new_empty(T, n, rank, rank)
        for a in range(rank):
            for b in range(rank):
                full[..., a, b] = A[:, pos[(a, b)]]
        lam = (full.diagonal(dim1=2, dim2=3).sum(-1) * eps).clamp_min(torch.finfo(A.dtype).tiny)
        x = solve_spd(full.reshape(T * n, rank, rank), s.transpose(1, 2).reshape(T * n, rank, 1), lam.reshape(-1))
        return x.reshape(T, n, rank).transpose(1, 2)
    out = torch.empty_like(s)
    step = max(1, block // max(T, 1))
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        _chol_solve(A[:, :, lo:hi], s[:, :, lo:hi], rank, pos, eps, out[:, :, lo:hi])
    return out


def _chol_solve(A, s, rank, pos, eps, out):
    """Cholesky over a batch block (vector operations over the last two dims), the solution
    written into ``out`` (T, R, n) row by row: the forward and back substitutions run in place
    there (a stack of the rows and a copy of the solution less: 9% of a sweep under torch's
    profiler)."""
    import torch

    lam = A[:, pos[(0, 0)]].clone()  # the ridge: sums of slices, where stacking the diagonals cost more
    for a in range(1, rank):
        lam += A[:, pos[(a, a)]]
    lam.mul_(eps).clamp_min_(torch.finfo(A.dtype).tiny)
    L: dict = {}
    for j in range(rank):
        t = A[:, pos[(j, j)]] + lam
        for k in range(j):
            t.addcmul_(L[j, k], L[j, k], value=-1)
        inv = t.clamp_min_(lam).rsqrt_()  # 1 / L[j, j]
        L[j, j] = inv
        for i in range(j + 1, rank):  # the first step makes the copy (no clone: a pass less)
            t = A[:, pos[(i, j)]] * inv if j == 0 else torch.addcmul(A[:, pos[(i, j)]], L[i, 0], L[j, 0], value=-1)
            for k in range(1, j):
                t.addcmul_(L[i, k], L[j, k], value=-1)
            L[i, j] = t if j == 0 else t.mul_(inv)
    x = [out[:, i] for i in range(rank)]
    for i in range(rank):  # forward: y, in out
        if i == 0:
            torch.mul(s[:, 0], L[0, 0], out=x[0])
            continue
        torch.addcmul(s[:, i], L[i, 0], x[0], value=-1, out=x[i])
        for k in range(1, i):
            x[i].addcmul_(L[i, k], x[k], value=-1)
        x[i].mul_(L[i, i])
    for i in reversed(range(rank)):  # back: x, in place
        for k in range(i + 1, rank):
            x[i].addcmul_(L[k, i], x[k], value=-1)
        x[i].mul_(L[i, i])
    return out


def solve_spd(G, rhs, eps):
    """Solve ``(G + eps I) x = rhs`` for a batch of symmetric positive (semi)definite matrices:
    ``G`` (b, n, n) (overwritten: the ridge goes onto its diagonal), ``rhs`` (b, n, k), ``eps``
    (b,) the ridge, raised a thousandfold (up to six times) where a factorisation fails. The one
    dense SPD solver: the fit's larger ranks (:func:`spd_solve`) and ``decompose``'s inverse
    iteration both solve through it. numpy's batched Cholesky, then torch's triangular solves:
    measured the fastest here (1024 systems of 64 x 64: 14 + 5.5 ms, against 30 + 17 ms for
    torch's cholesky_ex + cholesky_solve and twice that for torch.linalg.solve's LU; 20,000 of
    32 x 32: 0.83 s against 1.36 s and 1.58 s; 2 cores)."""
    import numpy as np
    import torch

    diag = G.diagonal(dim1=1, dim2=2)
    diag += eps[:, None]
    try:
        L = torch.from_numpy(np.linalg.cholesky(G.numpy()))
    except np.linalg.LinAlgError:  # some G not positive definite to rounding: more ridge where it fails
        for _ in range(6):
            L, info = torch.linalg.cholesky_ex(G)
            if not bool(info.any()):
                break
            more = torch.where(info > 0, eps * 999, 0.0)
            diag += more[:, None]
            eps = eps + more
    y = torch.linalg.solve_triangular(L, rhs, upper=False)
    return torch.linalg.solve_triangular(L.mT, y, upper=True)
