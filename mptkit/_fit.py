"""The weighted low-rank fit, batched over tasks.

For each task, find ``C`` (N, R) and ``R`` (R, d) minimising ``|| W * (C @ R - X_t) ||_F``, where
``W`` (N, d) is the shared prompt the task's factors multiply and ``X_t`` the factor product to
express. ``rank`` (:func:`reduce_rank`), ``merge/add --refit`` (:func:`refit`) and ``decompose``
fit through :func:`fit_tasks`; ``--rank auto`` through :func:`search_ranks`.

The start is the truncated SVD of ``X_t`` (from factors ``X = L @ Rt``, from their QR: an r x r
SVD, not an N x d one), so a product that already has rank <= R is fitted exactly and never
iterated. Then alternating weighted least squares, accelerated (:mod:`mptkit._als`: Anderson
mixing, float32 sweeps first, tasks streaming through a full batch), until a sweep gains less than
1e-9 (relative). mptkit's first fit (plain sweeps from the same start, stopping at a gain of 1e-8
or after 100 sweeps, kept as ``tests/fitref.py``) is the bar: the result is never worse than it
(``tests/test_fit.py``), and it converges to the same minimum that fit creeps towards, further
down the same valley, in a third of the sweeps.
"""

from __future__ import annotations

from . import _als as als
from ._dtypes import torch_dtype
from ._numerics import SMALL_RANK, in_range
from .errors import IncompatibleBanks, UsageError


# -- starting points -----------------------------------------------------------------------------
def svd_start_factored(left, right, rank: int):
    """The truncated SVD of ``left @ right`` ((T, N, r), (T, r, d)) from the factors' QR:
    (Ct (T, R, N), R (T, R, d)), components balanced (sqrt of the singular values on each side)."""
    import torch

    Qc, Rc = torch.linalg.qr(left)  # (T, N, k), (T, k, r)
    # the rows' Q stays as Householder reflectors, applied to the kept singular vectors alone:
    # forming the (d, r) Q cost 60% of this QR (8.3 ms against 3.3 ms, 7 tasks, d = 4096, r = 32)
    A, tau = torch.geqrf(right.transpose(1, 2))  # (T, d, r): R above, reflectors below
    k = min(right.shape[1], right.shape[2])
    U, S, Vh = torch.linalg.svd(Rc @ A[:, :k].triu().transpose(1, 2))
    m = min(rank, Vh.shape[1])
    V = A.new_zeros(A.shape[0], A.shape[1], m)  # (T, d, m): Vh[:m].T above, zeros below
    V[:, :k] = Vh[:, :m].transpose(1, 2)
    return _split_svd(Qc @ U, S, torch.ormqr(A, tau, V).transpose(1, 2), rank)


def svd_start_dense(X, rank: int):
    """The truncated SVD of dense targets ``X`` (T, N, d): (Ct (T, R, N), R (T, R, d))."""
    import torch

    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    return _split_svd(U, S, Vh, rank)


def _split_svd(U, S, Vh, rank):
    T, N, k = U.shape
    d = Vh.shape[2]
    m = min(rank, k)
    root = S[:, :m].sqrt()
    Ct, R = U.new_zeros(T, rank, N), U.new_zeros(T, rank, d)
    Ct[:, :m] = (U[:, :, :m] * root[:, None, :]).transpose(1, 2)
    R[:, :m] = root[:, :, None] * Vh[:, :m]
    return Ct, R


# -- the fit -------------------------------------------------------------------------------------
def fit(W2, X, Ct, R, *, iterations: int = 100, tol: float = 1e-9, draft: bool = True):
    """Improve the start (``Ct`` (T, R, N), ``R`` (T, R, d)) of every task of a chunk towards the
    targets ``X`` (T, N, d) under the weights ``W2`` (N, d) = W**2 (float64 torch tensors), by
    accelerated alternating least squares (:func:`mptkit._als.solve`; ``draft``: float32 sweeps
    first). Returns (C (T, N, R), R (T, R, d)), balanced."""
    out_C, out_R = Ct.clone(), R.clone()
    tasks = ((i, X[i], Ct[i], R[i]) for i in range(len(X)))
    for i, c, r in als.solve(
        W2, tasks, Ct.shape[1], capacity=max(1, len(X)), total=len(X), iterations=iterations, tol=tol, draft=draft
    ):
        out_C[i], out_R[i] = c, r
    return als.balance(out_C.transpose(1, 2), out_R)


# -- fitting the tasks of a bank -----------------------------------------------------------------
class Targets:
    """What one chunk of tasks is fitted to: ``X`` (t, N, d), the factor products to express
    under the weights ``W``, and ``prompt``, the full prompts the relative error is measured
    against (``W * X`` unless given). With ``left``/``right`` (X = left @ right) the start comes from
    the factors' QR."""

    def __init__(self, X, prompt=None, left=None, right=None):
        self.X, self.prompt, self.left, self.right = X, prompt, left, right

    def start(self, rank: int, sel):
        if self.left is not None:
            return svd_start_factored(self.left[sel], self.right[sel], rank)
        return svd_start_dense(self.X[sel], rank)


def relative_errors(W, C, R, prompt):
    """``||W * (C @ R) - prompt|| / ||prompt||`` per task (0 where both are zero), float64."""
    import torch

    num = torch.linalg.vector_norm(W * (C.to(W.dtype) @ R.to(W.dtype)) - prompt, dim=(1, 2))
    den = torch.linalg.vector_norm(prompt, dim=(1, 2))
    out = num / den.clamp_min(1e-300)
    return torch.where(den > 0, out, torch.where(num > 0, torch.inf, 0.0))


def fit_chunk(W, W2, targets: Targets, rank: int, tdtype, sel=None):
    """Fit the tasks ``sel`` (default all) of a chunk at ``rank``: (C, R) in ``tdtype``, errors
    (measured on the rounded factors, as they are stored)."""
    import torch

    sel = torch.arange(len(targets.X)) if sel is None else sel
    Ct, R = targets.start(rank, sel)
    C, R = fit(W2, targets.X[sel], Ct, R)
    C = in_range(C, tdtype, "the fitted factors prefix_task_cols").to(tdtype)
    R = in_range(R, tdtype, "the fitted factors prefix_task_rows").to(tdtype)
    prompt = W * targets.X[sel] if targets.prompt is None else targets.prompt[sel]
    return C, R, relative_errors(W, C, R, prompt)


def search_ranks(W, W2, targets: Targets, max_error: float, top: int, tdtype, exact=None):
    """Per task, the smallest rank (1 to ``top``) whose fit has relative error <= ``max_error``:
    doubling ranks until one does, then bisecting. ``exact`` gives (C, R) at rank ``top`` when an
    exact answer is known there (no fit needed). Returns lists of per-task (C, R), ranks, errors."""
    import torch

    t = len(targets.X)
    lo = [0] * t  # the largest rank known to be too coarse
    hi = [top] * t  # the smallest rank known to be fine (``top`` always is)
    found: list = [None] * t

    def probe(i):
        if hi[i] - lo[i] <= 1:
            return None
        k = max(1, 2 * lo[i]) if found[i] is None else 0
        return k if lo[i] < k < hi[i] else (lo[i] + hi[i]) // 2

    todo = {i: probe(i) for i in range(t)}
    while any(k is not None for k in todo.values()):
        by_rank: dict[int, list[int]] = {}
        for i, k in todo.items():
            if k is not None:
                by_rank.setdefault(k, []).append(i)
        for k, members in sorted(by_rank.items()):
            C, R, err = fit_chunk(W, W2, targets, k, tdtype, torch.tensor(members))
            for j, i in enumerate(members):
                if float(err[j]) <= max_error:
                    hi[i], found[i] = k, (C[j], R[j], float(err[j]))
                else:
                    lo[i] = k
        todo = {i: probe(i) for i in range(t)}
    out = []
    for i in range(t):
        if found[i] is None:  # only the top rank is fine
            if exact is not None:
                C, R = exact(i)
                found[i] = (C, R, 0.0)
            else:
                C, R, err = fit_chunk(W, W2, targets, top, tdtype, torch.tensor([i]))
                found[i] = (C[0], R[0], float(err[0]))
        out.append(found[i])
    return [f[0] for f in out], [f[1] for f in out], [hi[i] for i in range(t)], [f[2] for f in out]


def fit_tasks(
    W,
    count: int,
    targets_for,
    rank,
    *,
    tdtype,
    max_error: float | None = None,
    top: int | None = None,
    exact_for=None,
    desc: str = "fitting",
):
    """Fit ``count`` tasks chunk by chunk (``targets_for(indices)`` -> :class:`Targets`) at
    ``rank``, or with ``rank="auto"`` at each task's smallest rank up to ``top`` whose error is at
    most ``max_error`` (``exact_for(i)`` gives task i's exact (C, R) at ``top`` when known). Shows
    progress. Returns torch (cols (count, N, R), rows (count, R, d)) in ``tdtype``, zero-padded to
    the largest rank R, and per-task ranks and relative errors.

    A fit its arithmetic cannot carry out is refused in one sentence: finite inputs
    (:func:`mptkit._finite.require_finite` checked them) can still be too large for float64 once
    squared (beyond about 1e154), which made torch's SVD raise and the errors NaN."""
    import math

    import torch

    from .errors import InvalidBank

    why = "its arithmetic overflowed float64: the values are too large (beyond about 1e150) to be fitted"
    try:
        cols, rows, ranks, errors = _fit_tasks(
            W, count, targets_for, rank, tdtype, max_error=max_error, top=top, exact_for=exact_for, desc=desc
        )
    except torch.linalg.LinAlgError:
        raise InvalidBank(f"the {desc} failed: {why}; scale the bank down") from None
    bad = [i for i, e in enumerate(errors) if not math.isfinite(e)]
    if bad or not bool(torch.isfinite(cols).all() and torch.isfinite(rows).all()):
        raise InvalidBank(f"the {desc} failed (task {bad[0] if bad else '?'} of those fitted): {why}")
    return cols, rows, ranks, errors


def _fit_tasks(W, count: int, targets_for, rank, tdtype, *, max_error, top, exact_for, desc):
    import torch

    from . import _progress as progress

    N, d = W.shape
    W2 = W * W
    step = als.capacity(N, d, rank if rank != "auto" else min(top, 2 * SMALL_RANK))
    ranks, errors = [0] * count, [0.0] * count
    # each task's factors go straight into the output (no tensor a task is kept: 100,000 tiny prompts
    # held 5 kB each), at the rank of the widest so far (an "auto" fit widens it as it goes)
    out = _Factors(count, N, d, rank if rank != "auto" else 1, tdtype)
    with progress.bar(count, desc) as bar:
        if rank == "auto":
            for lo in range(0, count, step):
                idx = list(range(lo, min(count, lo + step)))
                targets = targets_for(idx)
                exact = (lambda i, idx=idx: exact_for(idx[i])) if exact_for is not None else None
                found = search_ranks(W, W2, targets, max_error, top, tdtype, exact)
                for j, i in enumerate(idx):
                    C, R, ranks[i], errors[i] = (v[j] for v in found)
                    out.put(i, C, R)
                del targets, found
                bar.update(len(idx))
        else:
            prompts: dict = {}  # each task in flight: its full prompt, or its target X (prompt W * X)

            def tasks():
                for lo in range(0, count, step):
                    idx = list(range(lo, min(count, lo + step)))
                    targets = targets_for(idx)
                    Ct, R = targets.start(rank, torch.arange(len(idx)))
                    for j, i in enumerate(idx):
                        X = targets.X[j].clone()
                        prompts[i] = (targets.prompt[j].clone(), False) if targets.prompt is not None else (X, True)
                        yield i, X, Ct[j].clone(), R[j].clone()

            for i, c, r in als.solve(W2, tasks(), rank, capacity=step, total=count):
                C, R = als.balance(c.T, r)
                C = in_range(C, tdtype, "the fitted factors prefix_task_cols").to(tdtype)
                R = in_range(R, tdtype, "the fitted factors prefix_task_rows").to(tdtype)
                p, is_target = prompts.pop(i)
                out.put(i, C, R)
                ranks[i] = rank
                errors[i] = float(relative_errors(W, C[None], R[None], (W * p if is_target else p)[None])[0])
                bar.update(1)
    return (*out.trimmed(max(ranks) if ranks else (rank if rank != "auto" else 1)), ranks, errors)


class _Factors:
    """The fitted (cols (count, N, R), rows (count, R, d)) of every task, zero beyond a task's rank."""

    def __init__(self, count: int, N: int, d: int, rank: int, tdtype):
        import torch

        self.cols = torch.zeros(count, N, rank, dtype=tdtype)
        self.rows = torch.zeros(count, rank, d, dtype=tdtype)

    def put(self, i: int, C, R) -> None:
        import torch

        r = C.shape[1]
        if r > self.cols.shape[2]:  # a wider task: the others are zero-padded (exact)
            pad = r - self.cols.shape[2]
            self.cols = torch.nn.functional.pad(self.cols, (0, pad))
            self.rows = torch.nn.functional.pad(self.rows, (0, 0, 0, pad))
        self.cols[i, :, :r], self.rows[i, :r] = C, R

    def trimmed(self, rank: int):
        return self.cols[:, :, :rank].contiguous(), self.rows[:, :rank].contiguous()


def weighted_lowrank_fit(W, X, rank: int):
    """One task: rank-``rank`` factors ``C`` (N, r), ``R`` (r, d) minimising ``||W * (C @ R - X)||``
    (float64 torch tensors in and out)."""
    Ct, R = svd_start_dense(X[None], rank)
    C, R = fit(W * W, X[None], Ct, R)
    return C[0], R[0]


# -- the rules of the fitting options ------------------------------------------------------------
def check_rank(rank, max_error, bank=None):
    """``rank`` as an int or "auto", checked: positive, at most min(N, d) of ``bank`` (an exact
    product never needs more; a bank already above keeps its own rank), "auto" only with
    ``max_error``."""
    if isinstance(rank, str) and rank.strip().lower() == "auto":
        if max_error is None:
            raise UsageError(
                "--rank auto needs --max-error E: each task gets the smallest rank whose relative error is at most E"
            )
        rank = "auto"
    elif isinstance(rank, str) and rank.strip().isascii() and rank.strip().isdigit():
        rank = int(rank)
    if rank != "auto" and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise UsageError(f"--rank must be a positive integer or auto, found {rank!r}")
    if max_error is not None and not (max_error >= 0):
        raise UsageError(f"--max-error must be a relative error of 0 or more, found {max_error!r}")
    if bank is not None and rank != "auto" and rank > max(min(bank.num_tokens, bank.token_dim), bank.rank or 0):
        raise UsageError(
            f"--rank {rank} is more than {bank.where} can use: min(N, d) = min({bank.num_tokens}, "
            f"{bank.token_dim}) = {min(bank.num_tokens, bank.token_dim)} already makes every task's "
            "product exact; a larger rank only adds zeros"
        )
    return rank


def check_errors(found, max_error, what: str) -> None:
    """Refuse (nothing written) when a task's relative error is above ``max_error``."""
    if max_error is None or not found:
        return
    where, task, err = max(found, key=lambda x: x[2])
    if err > max_error:
        raise IncompatibleBanks(
            f"{what} error too large: task {task} of {where} has relative error {err:.3g}, "
            f"above --max-error {max_error:g}; nothing was written"
        )


# -- the operations' fits, on the bank's arrays --------------------------------------------------
def reduce_rank(pe, cols, rows, rank, *, max_error: float | None = None):
    """Every task's factors at ``rank`` (< the current rank) or, with ``"auto"``, at its smallest
    rank whose relative error is <= ``max_error``. A task whose dropped components are zero keeps
    its other components unchanged (exact). ``pe``, ``cols``, ``rows``: :class:`~mptkit._tensor.Array`.
    Returns torch (cols, rows) in the bank's dtype and per-task ranks and relative errors."""
    import torch

    T, N, r0 = cols.shape
    tdtype = torch_dtype(cols.dtype)
    W = pe.to_torch(dtype=torch.float64)
    kept: dict[int, tuple] = {}
    if rank != "auto":  # tasks whose live components fit in the new rank are exact: keep them
        step = max(1, (64 << 20) // max(rows.row_nbytes + cols.row_nbytes, 1))
        for lo in range(0, T, step):
            idx = list(range(lo, min(T, lo + step)))
            c, r = cols.rows(idx).to_torch(), rows.rows(idx).to_torch()
            live = (c != 0).any(1) & (r != 0).any(2)
            for j, k in enumerate(idx):
                comps = live[j].nonzero().squeeze(1)
                if len(comps) <= rank:
                    kept[k] = (c[j][:, comps], r[j][comps])
    todo = [k for k in range(T) if k not in kept]

    def targets_for(pos):
        idx = [todo[p] for p in pos]
        c = cols.rows(idx).to_torch(dtype=torch.float64)
        r = rows.rows(idx).to_torch(dtype=torch.float64)
        return Targets(c @ r, left=c, right=r)

    def exact_for(p):
        k = todo[p]
        return cols.rows([k]).to_torch()[0], rows.rows([k]).to_torch()[0]

    fc, fr, franks, ferrs = fit_tasks(
        W, len(todo), targets_for, rank, tdtype=tdtype, max_error=max_error, top=r0, exact_for=exact_for, desc="rank"
    )
    out = max([*franks, *(v[0].shape[1] for v in kept.values()), 1]) if rank == "auto" else rank
    C_all, R_all = torch.zeros(T, N, out, dtype=tdtype), torch.zeros(T, out, rows.shape[2], dtype=tdtype)
    ranks, errors = [0] * T, [0.0] * T
    for k, (c, r) in kept.items():
        C_all[k, :, : c.shape[1]], R_all[k, : r.shape[0]] = c, r
        ranks[k] = max(1, c.shape[1])
    for p, k in enumerate(todo):
        C_all[k, :, : fc.shape[2]], R_all[k, : fr.shape[1]] = fc[p], fr[p]
        ranks[k], errors[k] = franks[p], ferrs[p]
    return C_all, R_all, ranks, errors


def refit(pe_new, pe_old, cols, rows, rank, *, max_error: float | None = None, tdtype=None):
    """Re-express each task's full prompt ``pe_old * (cols[k] @ rows[k])`` under the shared prompt
    ``pe_new``: new factors at ``rank`` (or ``"auto"``: each task's smallest rank whose error is
    <= ``max_error``). Returns torch (cols, rows), per-task ranks and relative errors."""
    import torch

    T, N, _ = cols.shape
    W = pe_new.to_torch(dtype=torch.float64)
    old = pe_old.to_torch(dtype=torch.float64)
    nz = W != 0

    def targets_for(idx):
        prompt = old * (cols.rows(idx).to_torch(dtype=torch.float64) @ rows.rows(idx).to_torch(dtype=torch.float64))
        X = torch.where(nz, prompt / torch.where(nz, W, 1.0), 0.0)
        return Targets(X, prompt=prompt)

    top = min(N, rows.shape[2])
    return fit_tasks(
        W, T, targets_for, rank, tdtype=tdtype or torch_dtype(pe_new.dtype), max_error=max_error, top=top, desc="refit"
    )
