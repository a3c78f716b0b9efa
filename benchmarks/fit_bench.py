"""The weighted low-rank fit (mptkit._als) beside plain alternating least squares, on the same tasks.

    python -m benchmarks.fit_bench              # 64 tasks of the rank target's shape (about a minute)
    python -m benchmarks.fit_bench --tasks 16   # quicker

Each row fits the same random tasks (N=100, r=32 -> 8, d=4096, as `rank 32 -> 8` in
compute_bench.py) from the same start (the truncated SVD of each product) and prints the wall
time, the sweeps a task took (float32 and float64), the mean relative error and the largest
relative difference of a task's error from the plain fit's (negative: every task better):

- plain: float64 sweeps, no acceleration, stopping at a gain of 1e-8 or after 100 sweeps (the
  method of mptkit's first fit, tests/support/fitref.py, batched);
- anderson, float64: the mixing alone;
- mptkit: float32 sweeps first, then float64 (what `rank`, `merge/add --refit` and `decompose` run).
"""

from __future__ import annotations

import argparse
import time

import torch

from mptkit import _als as als, _fit as fit


def bank(T: int, N: int, r: int, d: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(N, d, generator=g, dtype=torch.float64) * 0.1
    return (
        W,
        torch.randn(T, N, r, generator=g, dtype=torch.float64) * 0.1,
        torch.randn(T, r, d, generator=g, dtype=torch.float64) * 0.1,
    )


def run(W, cols, rows, rank, *, draft, tol, accelerate_after=3):
    """(seconds, float32 and float64 sweeps a task, relative errors)."""
    counts = {torch.float32: 0, torch.float64: 0}
    sweep = als.Pool.sweep

    def counted(pool):
        counts[pool.W2.dtype] += len(pool)
        return sweep(pool)

    init = als.Pool.__init__

    def configured(pool, *a, **k):
        init(pool, *a, **{**k, "accelerate_after": accelerate_after})

    als.Pool.sweep, als.Pool.__init__ = counted, configured
    try:
        T = len(cols)
        W2 = W * W
        step = als.capacity(*W.shape, rank)

        def tasks():
            for lo in range(0, T, step):
                Ct, R = fit.svd_start_factored(cols[lo : lo + step], rows[lo : lo + step], rank)
                for j in range(len(Ct)):
                    yield lo + j, cols[lo + j] @ rows[lo + j], Ct[j], R[j]

        err = torch.zeros(T, dtype=torch.float64)
        t0 = time.perf_counter()
        for i, c, r in als.solve(W2, tasks(), rank, capacity=step, draft=draft, tol=tol):
            X = cols[i] @ rows[i]
            err[i] = (W * (c.T @ r - X)).norm() / (W * X).norm()
        wall = time.perf_counter() - t0
    finally:
        als.Pool.sweep, als.Pool.__init__ = sweep, init
    return wall, counts[torch.float32] / T, counts[torch.float64] / T, err


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    W, cols, rows = bank(args.tasks, 100, 32, 4096, args.seed)
    rows_out = [
        (
            "plain, float64 (the first fit's method)",
            run(W, cols, rows, 8, draft=False, tol=1e-8, accelerate_after=10**9),
        ),
        ("anderson, float64", run(W, cols, rows, 8, draft=False, tol=1e-9)),
        ("mptkit: float32 then float64", run(W, cols, rows, 8, draft=True, tol=1e-9)),
    ]
    base = rows_out[0][1][3]
    print(f"{args.tasks} tasks, N=100, r=32 -> 8, d=4096\n")
    print("| fit | wall (s) | float32 sweeps/task | float64 sweeps/task | mean error | largest change vs plain |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (wall, s32, s64, err) in rows_out:
        change = float(((err - base) / base).max())
        print(f"| {name} | {wall:.2f} | {s32:.1f} | {s64:.1f} | {float(err.mean()):.6f} | {change:+.1e} |")


if __name__ == "__main__":
    main()
