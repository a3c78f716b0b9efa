"""`mptkit inspect` on a large bank beside `safetensors.torch.load_file` of the same file.

    python -m benchmarks.inspect_bench            # a ~1.08 GB bank: T=2000, N=100, r=32, d=4096, F32
    python -m benchmarks.inspect_bench --quick    # a ~108 MB bank: T=200
    python -m benchmarks.inspect_bench --keep DIR # write the bank to DIR and leave it there

The bank is streamed to a temp folder in chunks (never held in memory), in the safetensors layout.
Each command runs as a whole process (interpreter start-up and imports included) after one warm-up
run, so the page cache is warm for all of them; the table gives the median wall time over
``--repeat`` runs and the largest peak RSS (``os.wait4`` rusage of that child alone). A last line
says whether `mptkit inspect` imported torch (``python -X importtime``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.banks import stream_bank

ROOT = Path(__file__).resolve().parent.parent

PY = sys.executable


def make_bank(path: Path, T: int, N: int, r: int, d: int, seed: int = 0) -> int:
    """Stream a random F32 bank to ``path`` (:func:`tests.support.banks.stream_bank`); returns its size."""
    stream_bank(path, T, N, r, d, seed)
    return path.stat().st_size


def run_once(argv: list[str]) -> tuple[float, int, int]:
    """(wall seconds, peak RSS in bytes, exit status) of one child process. Linux carries a forking
    parent's peak RSS into the child's ``ru_maxrss``, so this process stays small (no torch here);
    the ``python -c pass`` row shows that floor."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss * 1024, proc.returncode  # ru_maxrss is in kB on Linux


def measure(argv: list[str], repeat: int) -> tuple[float, int]:
    _, _, rc = run_once(argv)  # warm-up (page cache, .pyc files)
    if rc != 0:
        raise SystemExit(f"failed (exit {rc}): {' '.join(argv)}")
    runs = [run_once(argv) for _ in range(repeat)]
    return statistics.median(w for w, _, _ in runs), max(m for _, m, _ in runs)


def imports_torch(bank: Path) -> bool:
    r = subprocess.run([PY, "-X", "importtime", "-m", "mptkit", "inspect", str(bank)], capture_output=True, text=True)
    return any(line.split("|")[-1].strip() == "torch" for line in r.stderr.splitlines())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a ~108 MB bank instead of ~1.08 GB")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per command (default 5)")
    ap.add_argument("--keep", metavar="DIR", help="write the bank to DIR and keep it")
    ap.add_argument("--make", nargs=5, metavar=("PATH", "T", "N", "R", "D"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make:
        make_bank(Path(args.make[0]), *map(int, args.make[1:]))
        return

    T, N, r, d = (200 if args.quick else 2000), 100, 32, 4096
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mptkit-inspect-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    bank = folder / f"bank-T{T}.safetensors"
    try:
        t0 = time.perf_counter()
        if not bank.exists():  # in a child process, so that this one never holds torch (see run_once)
            subprocess.run(
                [PY, "-m", "benchmarks.inspect_bench", "--make", str(bank), str(T), str(N), str(r), str(d)],
                check=True,
                cwd=ROOT,
            )
        size = bank.stat().st_size
        print(
            f"bank: {bank} (T={T}, N={N}, r={r}, d={d}, F32): {size / 1e9:.3f} GB, "
            f"ready in {time.perf_counter() - t0:.1f} s"
        )
        commands = [
            ("python -c pass (interpreter start-up)", [PY, "-c", "pass"]),
            ("mptkit inspect", [PY, "-m", "mptkit", "inspect", str(bank)]),
            ("mptkit inspect --json", [PY, "-m", "mptkit", "inspect", "--json", str(bank)]),
            ("mptkit validate", [PY, "-m", "mptkit", "validate", str(bank)]),
            (
                "safetensors.torch.load_file",
                [PY, "-c", f"from safetensors.torch import load_file; load_file({str(bank)!r})"],
            ),
            (
                "load_file + read every tensor (sum)",
                [
                    PY,
                    "-c",
                    f"from safetensors.torch import load_file; [v.sum() for v in load_file({str(bank)!r}).values()]",
                ],
            ),
            ("import torch (no file)", [PY, "-c", "import torch"]),
        ]
        print(f"\n{'command (whole process)':<40}{'median wall':>12}{'peak RSS':>12}")
        print("-" * 64)
        for label, argv in commands:
            wall, rss = measure(argv, args.repeat)
            print(f"{label:<40}{wall:>10.3f} s{rss / 2**20:>9.0f} MiB")
        print(f"\nmptkit inspect imports torch: {'yes' if imports_torch(bank) else 'no'}")
        print(
            f"({args.repeat} timed runs each after one warm-up; {os.cpu_count()} CPUs; Python {sys.version.split()[0]})"
        )
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
