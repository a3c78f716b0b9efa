"""Single-task prompts into one MPT bank: a shared prompt ``P`` and per-task factors minimising
``sum_k || prompt_k - P * (C_k @ R_k) ||^2``.

This is a parameter-space fit: it gives the MPT paper's starting point (a shared prompt and
low-rank task factors from single-task "teacher" prompts, which the paper then distils on data),
not a replacement for the distillation.

How (deterministic; ``seed`` only perturbs the start):

1. **The shared prompt.** With ``Q = 1 / P`` the model says that every ``prompt_k * Q`` has rank
   <= R, which fixes ``Q`` up to the model's own freedom (a rank-one rescaling). Starting from
   ``Q`` = ones (perturbed by 1e-3 with ``seed``), alternate: each task's column space ``U_k`` =
   the top-R left singular vectors of ``prompt_k * Q``; then each column ``q_j`` of ``Q`` (unit RMS,
   which rules out the trivial answers with vanishing columns) = the smallest eigenvector of
   ``G_j = sum_k D_kj (I - U_k U_k^T) D_kj`` (``D_kj = diag(prompt_k[:, j])``), by one step of
   inverse iteration per round. On random rank-R banks this recovers ``P`` to rounding in tens to
   hundreds of rounds; alternating on ``P`` itself from the mean prompt stalls at 10-40% error,
   and fitting ``Q`` elementwise to the low-rank parts drifts to answers with vanishing entries.
2. **Polish** on the objective itself: ``P`` = ``sum_k prompt_k * M_k / sum_k M_k**2`` (exact for
   fixed factors) alternated with one sweep of the weighted factor fit (:mod:`mptkit._fit`).
3. **The factors**: :func:`mptkit._fit.fit_tasks` under the stored (rounded) ``P``, at ``rank`` or,
   with ``"auto"``, at each task's smallest rank whose relative error is at most ``max_error``
   (the shared prompt then comes from the smallest power-of-two rank at which every task fits).

With ``shared`` (an existing bank) steps 1 and 2 are skipped: its shared prompt is kept and only the
new factors are fitted, so single-task prompts can join a bank. Prompts are read a chunk of tasks
at a time; the whole set stays in memory only when it is small (:data:`CACHE_BYTES`).
"""

from __future__ import annotations

import os

from . import _fit as fit, _numerics as numerics, _progress as progress
from ._bank import PromptBank
from ._dtypes import storage_dtype, torch_dtype
from ._finite import require_finite, require_finite_prompts
from ._options import CONFIG_FIELDS
from ._peftfields import MPT, as_type, common_dialect, has_dialect
from ._tensor import Array
from ._version import __version__
from .errors import IncompatibleBanks, UsageError
from .formats import Prompts

#: prompts (float64) kept in memory across rounds; larger sets are re-read each round
CACHE_BYTES = 256 << 20
#: prompts per chunk (float64 bytes), and the (columns, N, N) normal matrices built at a time
CHUNK_BYTES = 32 << 20
COLUMN_BLOCK_BYTES = 32 << 20
#: rounds of step 1 for one start, and for all starts together (a deterministic bound on the work)
#: (exact recoveries took up to ~300 rounds on random banks: slow for tens of rounds, then geometric)
SHARED_ROUNDS = 300
SHARED_BUDGET = 600
POLISH_ROUNDS = 100


def decompose(
    prompts: Prompts,
    rank,
    *,
    max_error: float | None = None,
    seed: int = 0,
    shared: PromptBank | None = None,
    dtype: str | None = None,
    config: dict | None = None,
    clamp: bool = False,
) -> PromptBank:
    """A bank from ``prompts`` (:func:`mptkit.read_prompts`): see the module doc. ``rank``
    is an int or ``"auto"`` (with ``max_error``); ``dtype`` the stored dtype (default float32;
    values beyond its range are refused, or with ``clamp`` stored as its largest value);
    ``config`` adapter_config.json fields for the output (task_type, num_virtual_tokens, ...).
    A prompt holding NaN/Inf is refused before any work (:mod:`mptkit._finite`)."""
    with numerics.clamping(clamp):
        return _decompose(prompts, rank, max_error, seed, shared, dtype, config)


def _decompose(prompts, rank, max_error, seed, shared, dtype, config) -> PromptBank:
    from ._edit import check_names

    K, (N, d) = len(prompts.arrays), prompts.shape
    rank = fit.check_rank(rank, max_error)
    if rank != "auto" and rank > min(N, d):
        raise UsageError(
            f"--rank {rank} is more than the prompts can use: min(N, d) = min({N}, {d}) = {min(N, d)} "
            "already makes every product exact"
        )
    check_names(prompts.names, "task names of the prompts (from folder names or the table's sidecar)")
    stored = storage_dtype(dtype, "F32")
    tdtype = torch_dtype(stored)
    data = _Data(prompts)
    require_finite_prompts(data, prompts.names, prompts.where, "decompose")
    if shared is not None:
        require_finite(shared, "decompose", tasks=[])
        if shared.num_tokens != N or shared.token_dim != d:
            raise IncompatibleBanks(
                f"{shared.where}'s shared prompt is {shared.num_tokens} x {shared.token_dim} "
                f"(N x d), the prompts are {N} x {d} ({prompts.where[0]})"
            )
        P = _rounded(shared.tensors["prompt_embeddings"].to_torch(), tdtype)
    elif rank == "auto":
        r = 1
        while True:
            P = _rounded(find_shared(data, r, seed), tdtype)
            errors = _factors(data, P, r, None, tdtype)[3]
            if max(errors) <= max_error or r >= min(N, d):
                break
            r = min(2 * r, min(N, d))
    else:
        P = _rounded(find_shared(data, rank, seed), tdtype)
    cols, rows, ranks, errors = _factors(data, P, rank, max_error, tdtype, top=min(N, d))
    fit.check_errors(
        [(prompts.where[k], n, e) for k, (n, e) in enumerate(zip(prompts.names, errors))], max_error, "decompose"
    )
    tensors = {
        "prompt_embeddings": Array.from_torch(P.to(tdtype)),  # already rounded to tdtype (_rounded)
        "prefix_task_cols": Array.from_torch(cols),
        "prefix_task_rows": Array.from_torch(rows),
    }
    args = {
        "rank": rank,
        "seed": seed,
        "num_prompts": K,
        **({"max_error": max_error} if max_error is not None else {}),
        **({"dtype": dtype} if dtype else {}),
        **(
            {"shared": os.path.basename(os.path.normpath(shared.source.path))}
            if shared is not None and shared.source
            else {}
        ),
    }
    results = {
        "relative_error": dict(zip(prompts.names, errors)),
        **({"rank": dict(zip(prompts.names, ranks))} if rank == "auto" else {}),
    }
    sources = [
        {"name": os.path.basename(os.path.normpath(s.path)) or s.path, **s.provenance()} for s in prompts.sources
    ]
    if shared is not None and shared.source is not None:
        sources.append(
            {
                "name": os.path.basename(os.path.normpath(shared.source.path)),
                **shared.source.provenance([shared.tensors["prompt_embeddings"]]),
            }
        )
    entry = {
        "operation": "decompose",
        "arguments": args,
        "sources": sources,
        "mptkit_version": __version__,
        "results": results,
    }
    cfg = output_config(prompts, shared)
    return PromptBank(tensors, list(prompts.names), cfg, [*(shared.provenance if shared else []), entry]).with_config(
        config
    )


def output_config(prompts: Prompts, shared: PromptBank | None = None) -> dict | None:
    """The adapter_config.json the output starts from: the prompts' (as an MPT config, keeping the
    fields their PEFT writes) and a ``shared`` bank's, restricted to the fields both have when both
    are PEFT configs; or, without one, the fields a user may set that they carry."""
    configs = [as_type(prompts.config, MPT), shared.config if shared is not None else None]
    if any(has_dialect(c) for c in configs):
        return common_dialect(c for c in configs if has_dialect(c))
    user = {f.key for f in CONFIG_FIELDS}
    found = {k: v for k, v in (prompts.config or {}).items() if k in user and v is not None}
    if shared is not None and shared.config:
        found = {**{k: v for k, v in shared.config.items() if k in user}, **found}
    return found or None


def stand_in(prompts: Prompts, rank, *, shared: PromptBank | None = None, config: dict | None = None) -> PromptBank:
    """A bank with the shapes and config :func:`decompose` will return (rank 1 standing in for
    ``"auto"``), holding no data: what the output plan checks before the work."""
    (N, d), K, r = prompts.shape, len(prompts.arrays), 1 if rank == "auto" else rank
    shape = {
        "prompt_embeddings": Array("F32", (N, d), []),
        "prefix_task_cols": Array("F32", (K, N, r), []),
        "prefix_task_rows": Array("F32", (K, r, d), []),
    }  # shapes only: nothing is read
    return PromptBank(shape, None, output_config(prompts, shared)).with_config(config)


def _rounded(P, tdtype):
    """The shared prompt as it will be stored (in ``tdtype``, within its range), in float64."""
    return numerics.in_range(P, tdtype, "the shared prompt").to(tdtype).double()


class _Data:
    """The prompts as float64 chunks of tasks, cached when small."""

    def __init__(self, prompts: Prompts):
        N, d = prompts.shape
        self.prompts, self.count = prompts, len(prompts.arrays)
        self.step = max(1, min(fit.als.MAX_TASKS, CHUNK_BYTES // (8 * N * d)))  # a pool's tasks at most
        self.cache = None
        if self.count * N * d * 8 <= CACHE_BYTES:
            self.cache = [prompts.read(idx) for idx in self.chunks()]

    def chunks(self):
        return [list(range(lo, min(self.count, lo + self.step))) for lo in range(0, self.count, self.step)]

    def __iter__(self):
        for i, idx in enumerate(self.chunks()):
            yield idx, (self.cache[i] if self.cache is not None else self.prompts.read(idx))

    def read(self, idx):
        if self.cache is None:
            return self.prompts.read(idx)
        import torch

        return torch.cat([self.cache[i // self.step][i % self.step : i % self.step + 1] for i in idx])


#: the starts tried, in order, until one fits to rounding: (perturbation of Q = ones, rebalance rows each round)
STARTS = ((1e-3, False), (0.1, False), (1e-3, True), (0.3, False))


def find_shared(data: _Data, rank: int, seed: int = 0, *, rounds: int = SHARED_ROUNDS, polish: int = POLISH_ROUNDS):
    """The shared prompt P (N, d) float64 for factors of rank ``rank`` (steps 1 and 2 of the module
    doc): the best of the polished mean prompt and the :data:`STARTS` (seeded ``seed``,
    ``seed + 1``, ...), stopping at the first whose polished fit is exact to rounding (a relative
    error below 1e-7); at most :data:`SHARED_BUDGET` rounds of step 1 in all."""
    import torch

    # The mean prompt, polished: the best start when no rank-R model fits exactly (relative error
    # 0.518 against 0.53-0.56 from step 1 on a rank-2 bank fitted at rank 1).
    best = _polish(data, sum(x.sum(0) for _, x in data) / data.count, rank, polish)
    if best[1] < 1e-7:
        return best[0]
    left = max(rounds, SHARED_BUDGET)
    for i, (amplitude, rebalance) in enumerate(STARTS):
        if left <= 0:
            break
        Q, used = _shared_q(data, rank, seed + i, amplitude, rebalance, min(rounds, left))
        left -= used
        nz = Q != 0
        P, err = _polish(data, torch.where(nz, 1 / torch.where(nz, Q, 1.0), 0.0), rank, polish)
        if err < best[1]:
            best = (P, err)
        if err < 1e-7:
            break
    return best[0]


def _shared_q(data: _Data, rank: int, seed: int, amplitude: float, rebalance: bool, rounds: int):
    """Step 1 of the module doc from one start: Q (N, d), rows and columns balanced, and the
    rounds it took."""
    import torch

    N, d = data.prompts.shape
    g = torch.Generator().manual_seed(seed)
    Q = 1 + amplitude * torch.randn(N, d, generator=g, dtype=torch.float64)
    sq = sum((x * x).sum(0) for _, x in data)  # the diagonal of every G_j
    block = max(1, min(d, COLUMN_BLOCK_BYTES // (8 * N * N)))
    G = torch.empty(block, N, N, dtype=torch.float64)
    history, used = [], 0
    with progress.bar(rounds, "decompose") as bar:
        for _ in range(rounds):
            used += 1
            bases, tail, total = [], 0.0, 0.0
            for _, x in data:  # each task's column space: the top-R left singular vectors of prompt_k * Q
                U, S, _ = torch.linalg.svd(x * Q, full_matrices=False)
                bases.append(U[..., :rank])
                tail, total = tail + float((S[:, rank:] ** 2).sum()), total + float((S**2).sum())
            bar.update(1)
            if tail <= 1e-28 * total:
                break
            history.append(tail / total)
            if len(history) > 10 and history[-1] > history[-11] * (1 - 1e-3):
                break  # a plateau (under 0.1% in 10 rounds): converged, or no exact model from this start
            for lo in range(0, d, block):  # each column q_j: one inverse-iteration step on G_j
                cols = slice(lo, min(d, lo + block))
                g = G[: cols.stop - cols.start].zero_()  # (b, N, N)
                g.diagonal(dim1=1, dim2=2).copy_(sq[:, cols].T)
                for (_, x), U in zip(data, bases):
                    V = (x[:, :, cols].permute(2, 1, 0)[..., None] * U.permute(1, 0, 2)[None]).flatten(2)
                    g.baddbmm_(V, V.transpose(1, 2), alpha=-1)  # - sum_k D_kj U_k U_k^T D_kj
                Q[:, cols] = _smallest(g, Q[:, cols].T).T
            if rebalance:
                _balance(Q, 3)
    _balance(Q, 20)
    return Q, used


def _balance(Q, times: int) -> None:
    """Rescale rows and columns of Q to RMS 1 (the model's own rescaling freedom), in place."""
    for _ in range(times):
        Q /= Q.square().mean(1, keepdim=True).sqrt().clamp_min(1e-300)
        Q /= Q.square().mean(0, keepdim=True).sqrt().clamp_min(1e-300)


def _smallest(G, q):
    """One step of inverse iteration towards each G's smallest eigenvector, from ``q`` (b, N):
    ``(G + eps I)^-1 q``, rescaled to RMS 1 and the sign of ``q``. ``G`` is overwritten."""
    import torch

    from ._numerics import solve_spd

    N = G.shape[-1]
    eps = (G.diagonal(dim1=1, dim2=2).mean(1) * 1e-10).clamp_min(1e-300)
    y = solve_spd(G, q.unsqueeze(-1), eps).squeeze(-1)
    y = y * torch.sign((y * q).sum(1, keepdim=True)).where((y * q).sum(1, keepdim=True) != 0, 1.0)
    return y * (N**0.5 / y.norm(dim=1, keepdim=True).clamp_min(1e-300))


def _polish(data: _Data, P, rank: int, rounds: int):
    """Alternate the exact update of P (for fixed factors) with one sweep of the factor fit."""
    import torch

    factors = {}
    prev, err = None, float("inf")
    for _ in range(max(1, rounds)):
        num = torch.zeros_like(P)
        den = torch.zeros_like(P)
        err = 0.0
        nz = P != 0
        for i, (_, x) in enumerate(data):
            X = torch.where(nz, x / torch.where(nz, P, 1.0), 0.0)
            start = factors.get(i) or fit.svd_start_dense(X, rank)
            C, R = fit.fit(P * P, X, *start, iterations=1, draft=False)
            factors[i] = (C.transpose(1, 2).contiguous(), R)
            M = C @ R
            num += (x * M).sum(0)
            den += (M * M).sum(0)
            err += float((P * M - x).square().sum())
        if prev is not None and prev - err <= 1e-10 * prev:
            break
        prev = err
        P = torch.where(den > 0, num / den.clamp_min(1e-300), P)
    scale = P.square().mean().sqrt()  # P at the prompts' scale; the factors carry the rest
    total = sum(float(x.square().sum()) for _, x in data)
    mean = total / (data.count * P.numel())
    rel = (err / total) ** 0.5 if total > 0 else 0.0
    return (P * (mean**0.5 / scale.clamp_min(1e-300)) if total > 0 else P), rel


def _factors(data: _Data, P, rank, max_error, tdtype, top=None):
    """The task factors under ``P``: torch (cols, rows), ranks, relative errors."""
    import torch

    nz = P != 0

    def targets_for(idx):
        x = data.read(idx)
        return fit.Targets(torch.where(nz, x / torch.where(nz, P, 1.0), 0.0), prompt=x)

    return fit.fit_tasks(
        P,
        data.count,
        targets_for,
        rank,
        tdtype=tdtype,
        max_error=max_error,
        top=top or (rank if rank != "auto" else min(P.shape)),
        desc="factors",
    )
