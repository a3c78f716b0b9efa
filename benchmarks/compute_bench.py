"""The compute targets: each operation as a whole process beside its baseline, measured
in the same run (medians), with peak RSS.

    python -m benchmarks.compute_bench            # the sizes of the targets (a few minutes)
    python -m benchmarks.compute_bench --quick    # CI-sized

| operation | size | target |
| rank 32 -> 8 | T=256, N=100, d=4096 | <= 3x a batched torch.linalg.svd of the same (T, N, d) full prompts |
| similarity | T=1024, N=100, d=8192 | <= 2x one float32 Gram of the materialised prompts, peak RSS < 1.5 GB |
| derive average | 2 GB bank | <= 0.5x the naive load-and-mean wall, RSS < 400 MB |
| validate --values | any shape | peak RSS < 400 MB; wall <= 2x reading the bank once plus its norms |
| derive exact, cold hash cache | 2 GB bank | <= 2x the warm run |

Every baseline is a whole process too (python start, imports, reading the bank), as the mptkit
figure is. `benchmarks/run.py` runs this after its own table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.run import PY, ROOT, run_once

RANK_BASE = (
    "import torch; from safetensors.torch import load_file; sd = load_file({src!r}); "
    "P = sd['prompt_embeddings'] * (sd['prefix_task_cols'] @ sd['prefix_task_rows']); "
    "torch.linalg.svd(P, full_matrices=False)"
)
GRAM_BASE = (
    "import torch; from safetensors.torch import load_file; sd = load_file({src!r}); "
    "pe, C, R = sd['prompt_embeddings'], sd['prefix_task_cols'], sd['prefix_task_rows']; T = len(C); "
    "P = torch.empty(T, pe.numel()); "
    "[P[i:i + 64].copy_((pe * (C[i:i + 64] @ R[i:i + 64])).reshape(-1, pe.numel())) for i in range(0, T, 64)]; "
    "G = P @ P.T"
)
AVERAGE_BASE = (
    "import torch; from safetensors.torch import load_file, save_file; sd = load_file({src!r}); "
    "save_file({{'prompt_embeddings': sd['prompt_embeddings'], 'prefix_task_cols': sd['prefix_task_cols'].mean(0, keepdim=True), "  # noqa: E501 (a baseline's code, kept on one line)
    "'prefix_task_rows': sd['prefix_task_rows'].mean(0, keepdim=True)}}, {out!r})"
)
VALUES_BASE = (
    "import numpy as np; from safetensors.numpy import load_file; sd = load_file({src!r}); "
    "pe, C, R = sd['prompt_embeddings'], sd['prefix_task_cols'], sd['prefix_task_rows']; "
    "[(np.linalg.norm(C[k]), np.linalg.norm(R[k]), np.linalg.norm(pe * (C[k] @ R[k]))) for k in range(len(C))]; "
    "np.linalg.norm(pe)"
)


def make(path: Path, T: int, N: int, r: int, d: int, seed: int) -> Path:
    if not path.exists():  # in a child, so that this process never imports torch
        subprocess.run(
            [PY, "-m", "benchmarks.run", "--make", str(path), str(T), str(N), str(r), str(d), str(seed)],
            check=True,
            cwd=ROOT,
        )
    return path


def paired(ours, base, env, repeat, before=None):
    """Run ``ours`` and ``base`` alternately, a warm-up of each and then ``repeat`` pairs, so that
    the machine slowing down or speeding up during the run weighs on both alike (this 2-core
    machine's speed drifts by 20% over minutes). Returns (median wall, max peak RSS MB) of each and
    the median of the pairs' ratios. ``before(i)`` runs ahead of each of ours (it may return an env
    to use)."""
    walls, rss, ratios = ([], []), ([], []), []
    for i in range(repeat + 1):
        pair = []
        for k, argv in enumerate((ours, base)):
            w, m = run_once(argv, ((before(i) if before else None) if k == 0 else None) or env)
            rss[k].append(m)
            pair.append(w)
            if i:
                walls[k].append(w)
        if i:
            ratios.append(pair[0] / pair[1] if pair[1] else float("inf"))
    return (
        (statistics.median(walls[0]), max(rss[0])),
        (statistics.median(walls[1]), max(rss[1])),
        statistics.median(ratios),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=None, help="timed runs per command (default 3, quick 2)")
    ap.add_argument("--dir", default=None, help="where the synthetic banks live (default: a temp dir)")
    ap.add_argument("--only", default=None, help="comma-separated: rank,similarity,average,values,exact (default all)")
    ap.add_argument("--big", default=None, help="an existing bank of the 'big' size to use (run.py passes its own)")
    args = ap.parse_args()
    repeat = args.repeat or (2 if args.quick else 3)
    work = Path(args.dir or tempfile.mkdtemp(prefix="mptkit-compute-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, MPTKIT_CACHE=str(work / "cache"), PYTHONWARNINGS="ignore")
    q = args.quick
    sizes = {
        "rank": (32, 100, 32, 1024) if q else (256, 100, 32, 4096),
        "similarity": (128, 100, 32, 1024) if q else (1024, 100, 32, 8192),
        "big": (250, 100, 32, 1024) if q else (2000, 100, 32, 8192),
        "values": (32, 1000, 1, 1000) if q else (64, 2000, 1, 2000),
    }
    print(f"making synthetic banks in {work} ...", file=sys.stderr)
    banks = {
        k: Path(args.big)
        if k == "big" and args.big
        else make(work / f"{k}-{'x'.join(map(str, v))}.safetensors", *v, seed=i)
        for i, (k, v) in enumerate(sizes.items())
    }
    out = work / "out.safetensors"
    mpt = [PY, "-m", "mptkit"]
    rows = []

    only = set(args.only.split(",")) if args.only else {"rank", "similarity", "average", "values", "exact"}

    def row(op, size, measured, base_label, target, limit, rss_limit=None):
        ours, base, ratio = measured
        met = ratio <= limit and (rss_limit is None or ours[1] < rss_limit)
        rows.append((op, size, ours, base_label, base, ratio, target, met))
        print(f"  {op}: {ours[0]:.2f} s vs {base[0]:.2f} s", file=sys.stderr)

    def shape(k):
        T, N, r, d = sizes[k]
        return f"T={T}, N={N}, r={r}, d={d}"

    src = str(banks["rank"])
    if "rank" in only:
        row(
            "rank 32 -> 8",
            shape("rank"),
            paired(
                mpt + ["rank", src, "--rank", "8", "-o", str(out), "--force"],
                [PY, "-c", RANK_BASE.format(src=src)],
                env,
                repeat,
            ),
            "batched torch.linalg.svd of the full prompts",
            "<= 3x",
            3.0,
        )
    src = str(banks["similarity"])
    if "similarity" in only:
        row(
            "similarity",
            shape("similarity"),
            paired(mpt + ["similarity", src], [PY, "-c", GRAM_BASE.format(src=src)], env, repeat),
            "one float32 Gram of the materialised prompts",
            "<= 2x, RSS < 1.5 GB",
            2.0,
            1500,
        )
    big = str(banks["big"])
    gb = f"{os.path.getsize(big) / 1e9:.2f} GB ({shape('big')})"
    if "average" in only:
        row(
            "derive average",
            gb,
            paired(
                mpt + ["derive", big, "--mode", "average", "-o", str(out), "--force"],
                [PY, "-c", AVERAGE_BASE.format(src=big, out=str(out))],
                env,
                repeat,
            ),
            "naive load-and-mean",
            "<= 0.5x, RSS < 400 MB",
            0.5,
            400,
        )
    for key in ("values", "big") if "values" in only else ():
        src = str(banks[key])
        row(
            "validate --values",
            shape(key),
            paired(mpt + ["validate", "--values", src], [PY, "-c", VALUES_BASE.format(src=src)], env, repeat),
            "read once + the same norms (numpy)",
            "<= 2x, RSS < 400 MB",
            2.0,
            400,
        )
    exact = mpt + ["derive", big, "--mode", "exact", "--task", "7", "-o", str(out), "--force"]

    def cold(i):
        shutil.rmtree(work / "cold-cache", ignore_errors=True)
        return dict(env, MPTKIT_CACHE=str(work / "cold-cache"))

    if "exact" in only:
        row(
            "derive exact, cold hash cache",
            gb,
            paired(exact, exact, env, repeat, before=cold),
            "the warm run",
            "<= 2x",
            2.0,
        )

    print(
        f"\ncompute targets; {repeat} runs of each after a warm-up, alternating with the baseline's; walls are "
        "medians, the ratio the median of the pairs' ratios, peak RSS the largest of all runs\n"
    )
    print(
        "| operation | size | mptkit (s) | peak RSS (MB) | baseline | baseline (s) | baseline RSS "
        "(MB) | ratio | target | met |"
    )
    print("|---|---|---:|---:|---|---:|---:|---:|---|---|")
    for op, size, ours, label, base, ratio, target, met in rows:
        print(
            f"| {op} | {size} | {ours[0]:.2f} | {ours[1]:.0f} | {label} | {base[0]:.2f} | {base[1]:.0f} | "
            f"{ratio:.2f}x | {target} | {'yes' if met else 'NO'} |"
        )
    sys.stdout.flush()
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
