"""The sweeps of the weighted low-rank fit (:mod:`mptkit._fit`): alternating least squares over a
pool of tasks, accelerated, first in float32 and then in float64.

For task t, find ``C`` (N, R) and ``R`` (R, d) minimising ``|| W * (C @ R - X_t) ||_F``. With R
fixed each row of C is an R x R weighted least-squares solve, and the same for each column of R
with C fixed; a *sweep* does both. The arithmetic of a sweep:

- the R x R normal matrices of every row (column) of every task come from one matrix product
  ``W**2 @ (R_a * R_b)`` over the R(R+1)/2 pairs a <= b instead of an einsum per task;
- they are solved by a Cholesky written across the whole batch (:func:`mptkit._numerics.spd_solve`):
  1M 8x8 systems take 0.06 s, 0.35 s with ``torch.linalg.solve`` (one LAPACK call each);
- the error after each sweep costs nothing: R being the exact minimiser for C,
  ``||W*(CR - X)||^2 = ||W*X||^2 - <R, C.T @ (W**2*X)>``.

What makes it fast (measured on the rank benchmark's bank, T=256, N=100, r=32 -> 8, d=4096: plain
sweeps needed 80 a task on average, most tasks running to the cap of 100; these need about 25 in
float32 and 2 in float64, `python benchmarks/fit_bench.py`):

- **Anderson acceleration** (:class:`Mixer`): each sweep starts from the combination of the last
  five sweeps' results whose combined change is smallest, where that combination's error is lower
  than the plain result's (else from the plain result, and the task's history starts again), so
  the error never rises. It reaches the limit plain sweeps creep towards in 23-26 sweeps where
  extrapolating along the last step (doubling the step on success) took 34-38 and an exact line
  search along it 48-57, on the same tasks.
- **float32 first** (:func:`solve`): float32 sweeps cost half as much (the products run at twice
  the speed). Their gains are summed in float64, which resolves them to about 1e-9 (a float32 sum
  loses them below 1e-7); then float64 sweeps from the better of that result and the start, which
  mostly confirm it in one sweep.
- **a full batch**: tasks join a pool as others leave (:class:`Pool`), so a slow task never
  leaves the others' arithmetic running one task at a time.
"""

from __future__ import annotations

from ._anderson import Mixer
from ._numerics import pairs, spd_solve

#: the largest array of one pool, in bytes
ARRAY_BYTES = 24 << 20
#: most tasks in one pool, however small they are: a task in flight also holds a few tensors and
#: tuples of its own (~3 kB), which for tiny prompts outweigh its arrays (100,000 tasks of N*d = 2
#: once entered one pool: 630 MB)
MAX_TASKS = 1024


def capacity(N: int, d: int, rank: int, itemsize: int = 8) -> int:
    """How many tasks one pool holds: its largest array (a task's (N, d) or (P, d) block) stays
    under :data:`ARRAY_BYTES`, and so under glibc's mmap threshold, so that the temporaries of each
    sweep reuse memory instead of faulting fresh pages in (a fresh 100 MB array costs 20 ms of page
    faults here, more than the arithmetic on it); and at most :data:`MAX_TASKS` tasks."""
    P = rank * (rank + 1) // 2
    return max(1, min(MAX_TASKS, ARRAY_BYTES // (itemsize * max(N, P, 1) * max(d, 1))))


# -- one sweep's arithmetic ----------------------------------------------------------------------
def _block(t: int, P: int, d: int, itemsize: int) -> int:
    """Columns per block so that a (t, P, block) array stays under ARRAY_BYTES."""
    return max(1, min(d, ARRAY_BYTES // (itemsize * max(t * P, 1))))


def cols_from(R, w2x, W2, pos, scratch=None):
    """The C (held transposed, (t, R, N)) minimising the error for R, and the right-hand sides
    ``R @ (W**2 * X).T`` of its systems (``scratch``: see :func:`rows_from`)."""
    s = R @ w2x.transpose(1, 2)
    return spd_solve(_row_grams(R, W2, scratch), s, R.shape[1], pos), s


def rows_from(Ct, w2x, W2, pos, scratch=None):
    """The R minimising the error for C (held transposed), column block by column block, and the
    right-hand sides ``C.T @ (W**2 * X)`` of its systems. ``scratch`` (a dict) keeps the normal
    matrices' array from call to call: a fresh 8 MB array costs its product 0.7 ms of page faults
    here, 11% of a 14-task float32 sweep (a kept one for the other products gained nothing)."""
    import torch

    t, rank, N = Ct.shape
    d = W2.shape[1]
    P = rank * (rank + 1) // 2
    CC = _pair_products(Ct, Ct.new_empty(t, P, N)).reshape(t * P, N)  # (t * P, N)
    step = _block(t, P, d, Ct.element_size())
    if step >= d:  # one block: no copies into the outputs
        G = _kept(scratch, "G", (t * P, d), Ct)
        s = Ct @ w2x
        return spd_solve(torch.mm(CC, W2, out=G).reshape(t, P, d), s, rank, pos), s
    out, s = Ct.new_empty(t, rank, d), Ct.new_empty(t, rank, d)
    for lo in range(0, d, step):
        hi = min(d, lo + step)
        s[:, :, lo:hi] = Ct @ w2x[:, :, lo:hi]
        out[:, :, lo:hi] = spd_solve((CC @ W2[:, lo:hi]).reshape(t, P, hi - lo), s[:, :, lo:hi], rank, pos)
    return out, s


def _kept(scratch, key, shape, like):
    """An array of ``shape`` kept in ``scratch`` (a dict, or None: a fresh one) from call to call."""
    a = None if scratch is None else scratch.get(key)
    if a is None or a.shape != shape or a.dtype != like.dtype:
        a = like.new_empty(shape)
        if scratch is not None:
            scratch[key] = a
    return a


def _row_grams(R, W2, scratch=None):
    """The packed R x R normal matrices of every row of C for this R: (t, P, N), as one
    (t * P, block) @ (block, N) product per column block (60 GFLOP/s here, where t products of
    (P, block) @ (block, N) reach 55 and the gathers ``R[:, ia] * R[:, ib]`` cost more than the
    product itself: 10 ms against 4 ms for the slices below, 16 tasks, N=100, d=4096, R=8)."""
    t, rank, d = R.shape
    P, N = rank * (rank + 1) // 2, W2.shape[0]
    out = None
    step = _block(t, P, d, R.element_size())
    for lo in range(0, d, step):
        hi = min(d, lo + step)
        rr = _pair_products(R[:, :, lo:hi], _kept(scratch, "rr", (t, P, hi - lo), R))
        part = (rr.reshape(t * P, hi - lo) @ W2[:, lo:hi].T).reshape(t, P, N)
        out = part if out is None else out.add_(part)
    return out


def _pair_products(R, out):
    """``out[:, p] = R[:, a] * R[:, b]`` for the pairs a <= b in :func:`mptkit._numerics.pairs`'
    order, by broadcasting one row against the rest (no gathered copies)."""
    import torch

    k, rank = 0, R.shape[1]
    for a in range(rank):
        torch.mul(R[:, a : a + 1], R[:, a:], out=out[:, k : k + rank - a])
        k += rank - a
    return out


def loss(W2, X, Ct, R):
    """sum(W2 * (C @ R - X)**2) per task, explicitly (no cancellation)."""
    E = Ct.transpose(1, 2) @ R
    E -= X
    E.square_()
    E *= W2
    return E.sum((1, 2))


def _dot(a, b):
    """sum(a * b) per task, summed in float64 whatever the dtype: float32 sweeps measure their
    gains to 1e-9 this way, where a float32 sum loses them below 1e-7."""
    import torch

    return (a * b).sum((1, 2), dtype=torch.float64)


def _error(W2, X, c, Ct, R, solved, rhs):
    """The error of the pairs (``Ct``, ``R``) whose half ``solved`` was just solved exactly for the
    other (right-hand sides ``rhs``), float64: free, ``||W*X||^2 - <solved, rhs>`` (``c`` holds
    ``||W*X||^2``), and measured explicitly where that difference has lost its digits."""
    err = (c - _dot(solved, rhs)).clamp_min(0)
    close = err < c * 1e-6
    if bool(close.any()):
        err[close] = loss(W2, X[close], Ct[close], R[close]).double()
    return err


def balance(C, R):
    """Rescale each rank component so that its column of C and row of R have the same norm."""
    nc, nr = C.norm(dim=-2), R.norm(dim=-1)  # (..., R)
    ok = (nc > 0) & (nr > 0)
    s = (nr / nc.where(ok, 1.0)).sqrt().where(ok, 0.0)
    return C * s[..., None, :], R / s.where(ok, 1.0)[..., :, None] * ok[..., :, None]


# -- a pool of tasks -----------------------------------------------------------------------------
class Pool:
    """Up to ``capacity`` tasks fitted together, each at its own sweep: :meth:`add` tasks (target,
    start) into free slots, and each :meth:`sweep` moves every task on one sweep and returns those
    that stopped (a sweep gained less than ``tol``, relative, or ``iterations`` sweeps done). Tasks
    live in fixed slots, written in place: a task that joins or leaves copies nothing else (copying
    the pool's arrays at each change cost a third of the sweeps' time). A free slot holds zeros,
    whose sweep is zeros; :meth:`compact` drops free slots once no task will fill them.

    After ``accelerate_after`` sweeps a task starts each sweep from the :class:`Mixer`'s mixture,
    kept unless its error exceeds the plain result's by more than ``slack`` (relative: 0 in
    float64, so that the error never rises; float32's rounding, 1e-7, in float32, where throwing
    those mixtures away cost a sweep's C half again for nothing)."""

    def __init__(
        self,
        W2,
        rank: int,
        capacity: int,
        *,
        tol: float,
        iterations: int,
        depth: int = 5,
        accelerate_after: int = 3,
        slack: float = 0.0,
    ):
        import torch

        self.W2, self.tol, self.iterations = W2, tol, iterations
        self.accelerate_after, self.slack = accelerate_after, slack
        self.pos = pairs(rank)[2]
        self.keys: list = [None] * capacity
        N, d = W2.shape
        z = lambda *shape, dtype=W2.dtype: torch.zeros(capacity, *shape, dtype=dtype)
        self.s = {
            "r": z(rank, d),
            "plain": z(rank, d),
            "mixed": z(dtype=torch.bool),
            "w2x": z(N, d),
            "xs": z(N, d),
            "c": z(dtype=torch.float64),
            "prev": z(dtype=torch.float64),
            "sweeps": z(dtype=torch.long),
            "limit": z(dtype=torch.long),
            "used": z(dtype=torch.bool),
        }
        self.mixer = Mixer(depth, capacity, rank * d, W2.dtype)
        self.scratch: dict = {}

    def __len__(self):
        return int(self.s["used"].sum())

    def room(self) -> int:
        return len(self.keys) - len(self)

    def add(self, tasks):
        """Tasks ``[(key, X (N, d), R (R, d), prev, limit)]`` (at most :meth:`room`): the targets,
        the starts' R (a sweep starts from R alone), the starts' errors (float64) and at most
        ``limit`` sweeps each (None: the pool's ``iterations``). Each is copied into its slot task by
        task, converted there, so that the temporaries are one task's size (stacking the tasks
        first cost three copies of the batch's targets, in fresh memory)."""
        import torch

        s = self.s
        slots = (~s["used"]).nonzero().squeeze(1)[: len(tasks)].tolist()
        for slot, (key, X, R, prev, limit) in zip(slots, tasks):
            xs, w2x = s["xs"][slot], s["w2x"][slot]
            xs.copy_(X)
            torch.mul(self.W2, xs, out=w2x)
            s["r"][slot] = R
            s["plain"][slot] = R
            s["c"][slot] = _dot(w2x[None], xs[None])[0]
            s["prev"][slot] = prev
            s["limit"][slot] = self.iterations if limit is None else limit
            self.keys[slot] = key
        idx = torch.tensor(slots, dtype=torch.long)
        s["mixed"][idx], s["sweeps"][idx], s["used"][idx] = False, 0, True
        self.mixer.restart(idx)

    def compact(self):
        """Drop the free slots (when no more tasks will come)."""
        keep = self.s["used"]
        if bool(keep.all()):
            return
        self.s = {k: v[keep] for k, v in self.s.items()}
        self.mixer.select(keep)
        self.keys = [k for k in self.keys if k is not None]

    def sweep(self):
        """One sweep of every task; returns [(key, Ct (R, N), R (R, d), sweeps)] of the tasks that
        stopped."""
        import torch

        s, W2, pos = self.s, self.W2, self.pos
        r, w2x, xs, c, prev = s["r"], s["w2x"], s["xs"], s["c"], s["prev"]
        x, sC = cols_from(r, w2x, W2, pos, self.scratch)  # C (t, R, N)
        if bool(s["mixed"].any()):  # r is a mixture there: keep it only where it beats the plain result
            mixed = _error(W2, xs, c, x, r, x, sC)
            worse = s["mixed"] & (mixed >= prev * (1 + self.slack))
            if bool(worse.any()):
                self.mixer.restart(worse)
                r[worse] = s["plain"][worse]
                x[worse] = cols_from(r[worse], w2x[worse], W2, pos)[0]
        out, sR = rows_from(x, w2x, W2, pos, self.scratch)  # R (t, R, d)
        cur = _error(W2, xs, c, x, out, out, sR)
        s["sweeps"] += 1
        done = s["used"] & ((prev - cur <= self.tol * prev) | (cur <= c * 1e-28) | (s["sweeps"] >= s["limit"]))
        s["prev"] = torch.minimum(prev, cur)
        self.mixer.push(r, out)
        slots = done.nonzero().squeeze(1)
        finished = [(self.keys[i], x[i].clone(), out[i].clone(), int(s["sweeps"][i])) for i in slots.tolist()]
        for i in slots.tolist():
            self.keys[i] = None
        if finished:  # free slots hold zeros
            for k in ("w2x", "xs", "c", "prev"):
                s[k][slots] = 0
            out[slots] = 0
            s["used"][slots] = False
        mix = s["used"] & (s["sweeps"] >= self.accelerate_after)
        s["plain"], s["mixed"] = out, mix
        if bool(mix.any()):  # the mixture where a task mixes, its plain result elsewhere
            r = self.mixer.mix(out.shape[1:])
            if not bool(mix.all()):
                r[~mix] = out[~mix]
            s["r"] = r
        else:
            s["r"] = out
        return finished


# -- the two stages ------------------------------------------------------------------------------
def solve(
    W2,
    tasks,
    rank: int,
    *,
    capacity: int,
    iterations: int = 100,
    tol: float = 1e-9,
    draft: bool = True,
    total: int | None = None,
):
    """Fit a stream of tasks ``(key, X (N, d), Ct (R, N), R (R, d))`` (float64 torch tensors: the
    target and the start) under the weights ``W2`` (N, d) = W**2; yields ``(key, Ct, R)`` (float64)
    as each task finishes, not in order. A start that is already exact comes back as it is.

    With ``draft``, each task sweeps in float32 first (up to ``iterations`` sweeps, until one gains
    less than ``tol``: its gains are summed in float64; a mixture there is kept unless it is worse
    by more than 1e-7, float32's rounding), then in float64 from the better of that result and its
    start, measured in float64, until a sweep gains less than ``tol`` (up to what is left of
    ``iterations``, at least 10 sweeps); without, float64 only, ``iterations`` sweeps at most. At
    most ``capacity`` tasks sweep together in float64, four times as many in float32 (twice the
    bytes: on the rank benchmark a 28-task float32 pool took 4-9% less time than a 14-task one, its
    per-operation costs spread over more tasks, and a 42-task one 6-25% more), and at most
    ``capacity`` wait between the stages; no pool has more slots than ``total`` (the number of
    tasks, when known: a pool's slots are allocated up front)."""
    import itertools

    most = (lambda n: n) if total is None else (lambda n: max(1, min(n, total)))
    precise = Pool(W2, rank, most(capacity), tol=tol, iterations=iterations)
    rough = Pool(W2.float(), rank, most(4 * capacity), tol=tol, iterations=iterations, slack=1e-7) if draft else None
    first = rough if draft else precise
    held: dict = {}  # key -> (X, R, error) of the target and start, float64, for the float64 stage
    waiting: list = []  # (key, Ct, R, sweeps) out of the float32 stage
    source, more = iter(tasks), True
    while True:
        if more and first.room() and len(waiting) < capacity:
            want = first.room()
            batch = list(itertools.islice(source, want))
            more = len(batch) == want
            yield from _enter(first, W2, batch, held if draft else None)
        if rough is not None and len(rough):
            if not more:
                rough.compact()
            waiting += rough.sweep()
        if waiting and precise.room():
            take, waiting = waiting[: precise.room()], waiting[precise.room() :]
            _promote(precise, take, held, iterations)
        last = not (more or (rough is not None and len(rough)) or waiting)
        if len(precise) and (not precise.room() or last):
            if last:
                precise.compact()
            yield from (v[:3] for v in precise.sweep())
        if last and not len(precise):
            return


def _enter(pool, W2, batch, held):
    """Put the tasks of ``batch`` [(key, X, Ct, R)] into ``pool`` (float32 when ``held`` is given:
    it keeps their float64 targets, starts' R and starts' errors for the second stage); yields
    those whose start is already exact (measured in float64 under ``W2``), task by task."""
    live = []
    for key, X, Ct, R in batch:
        err = loss(W2, X[None], Ct[None], R[None])[0]
        if err <= _dot((W2 * X)[None], X[None])[0] * 1e-28:
            yield key, Ct, R
            continue
        if held is not None:
            held[key] = (X, R, err)
        live.append((key, X, R, err, None))
    if live:
        pool.add(live)


def _promote(precise, take, held, iterations: int) -> None:
    """Move float32 results ``take`` [(key, Ct, R, sweeps)] into the float64 pool, each from the
    better (measured in float64) of its result and its start, with what is left of ``iterations``
    (at least 10 sweeps)."""
    import torch

    tasks = []
    for key, Cd, Rd, sweeps in take:
        X, R0, e0 = held.pop(key)
        ed = loss(precise.W2, X[None], Cd.double()[None], Rd.double()[None])[0]
        tasks.append((key, X, Rd if ed < e0 else R0, torch.minimum(ed, e0), max(10, iterations - sweeps)))
    precise.add(tasks)
