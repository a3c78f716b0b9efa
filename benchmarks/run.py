"""mptkit's benchmark: each operation as a whole process, side by side with the naive way and the
copy limit, in the same run.

    python -m benchmarks.run            # a 2 GB bank (T=2000, N=100, r=32, d=8192, F32) + two 1 GB banks
    python -m benchmarks.run --quick    # CI-sized: ~35 MB banks

For every operation the table gives the median wall time and the largest peak RSS over --repeat
runs (after one warm-up run, so the page cache is warm), for:
  mptkit  the CLI command as a user runs it;
  naive   what a user would write: safetensors.torch.load_file of the whole bank, torch indexing or
          mean, save_file;
  copy    the copy limit: reading the bank once, or copying the output's bytes (no arithmetic).
The runtime module's table (benchmarks/runtime_bench.py) and the compute targets' table
(benchmarks/compute_bench.py: rank, similarity, average, values, cold-cache exact) follow.

mptkit records each source's sha256 in its provenance; the digest is cached by file identity, so
the warm-up run pays for hashing and the timed runs do not. The "first run" column shows the cost
with a cold hash cache (one run, so noisier).
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
TIME = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)
RSS_FILE = Path(tempfile.gettempdir()) / f"mptkit-bench-rss-{os.getpid()}"


def run_once(argv: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one whole process. Peak RSS comes from GNU time where it
    is installed: a child forked by this (larger) Python process would otherwise report this
    process's RSS at fork time as its own peak."""
    timed = ([TIME, "-f", "%M", "-o", str(RSS_FILE)] if TIME else []) + argv
    t = time.perf_counter()
    p = subprocess.Popen(timed, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    code = os.waitstatus_to_exitcode(status)
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    if code != 0:
        raise SystemExit(f"benchmark command failed ({code}): {' '.join(argv)}\n{err}")
    rss_kb = int(RSS_FILE.read_text().split()[-1]) if TIME else usage.ru_maxrss
    return wall, rss_kb / 1024


NAIVE = {
    "inspect": "from safetensors.torch import load_file; sd = load_file({src!r}); "
    "print({{k: v.shape for k, v in sd.items()}})",
    "exact": (
        "import torch; from safetensors.torch import load_file, save_file; sd = load_file({src!r}); "
        ""
        "save_file({{'prompt_embeddings': sd['prompt_embeddings'], 'prefix_task_cols': sd['prefix_task_cols'][{k}:{k}+1].clone(), "  # noqa: E501 (a baseline's code, kept on one line)
        "'prefix_task_rows': sd['prefix_task_rows'][{k}:{k}+1].clone()}}, {out!r})"
    ),
    "slice": (
        "import torch; from safetensors.torch import load_file, save_file; sd = load_file({src!r}); i = torch.tensor({idx}); "  # noqa: E501 (a baseline's code, kept on one line)
        "save_file({{'prompt_embeddings': sd['prompt_embeddings'], 'prefix_task_cols': sd['prefix_task_cols'][i].contiguous(), "  # noqa: E501 (a baseline's code, kept on one line)
        "'prefix_task_rows': sd['prefix_task_rows'][i].contiguous()}}, {out!r})"
    ),
    "average": (
        "import torch; from safetensors.torch import load_file, save_file; sd = load_file({src!r}); "
        "save_file({{'prompt_embeddings': sd['prompt_embeddings'], 'prefix_task_cols': sd['prefix_task_cols'].mean(0, keepdim=True), "  # noqa: E501 (a baseline's code, kept on one line)
        "'prefix_task_rows': sd['prefix_task_rows'].mean(0, keepdim=True)}}, {out!r})"
    ),
    "merge": (
        "import torch; from safetensors.torch import load_file, save_file; a = load_file({src!r}); b = load_file({src2!r}); "  # noqa: E501 (a baseline's code, kept on one line)
        "save_file({{'prompt_embeddings': a['prompt_embeddings'], 'prefix_task_cols': torch.cat([a['prefix_task_cols'], b['prefix_task_cols']]), "  # noqa: E501 (a baseline's code, kept on one line)
        "'prefix_task_rows': torch.cat([a['prefix_task_rows'], b['prefix_task_rows']])}}, {out!r})"
    ),
}

# The copy limit for an operation that reads the whole bank (average): read it once.
READ_ONCE = "with open({src!r}, 'rb', buffering=0) as f:\n    buf = bytearray(8 << 20)\n    while f.readinto(buf): pass"


def task_ranges(path: str, tasks: list[int]) -> list[tuple[int, int]]:
    """File byte ranges of the given tasks' rows of both factors, plus the shared prompt."""
    from mptkit.formats._safetensors import read_header

    h = read_header(path)
    out = []
    for name in ("prefix_task_cols", "prefix_task_rows"):
        a = h.array(name)
        for t in tasks:
            seg = a.rows([t]).segments[0]
            out.append((seg.offset, seg.length))
    seg = h.array("prompt_embeddings").segments[0]
    out.append((seg.offset, seg.length))
    return out


def _coalesce(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Join (offset, length) ranges that continue each other."""
    out: list[tuple[int, int]] = []
    for off, ln in ranges:
        if out and out[-1][0] + out[-1][1] == off:
            out[-1] = (out[-1][0], out[-1][1] + ln)
        else:
            out.append((off, ln))
    return out


def bench(label: str, argv: list[str], env: dict, repeat: int, cleanup: Path | None) -> dict:
    def clean():
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True) if cleanup.is_dir() else cleanup.unlink(missing_ok=True)

    clean()
    first_wall, first_rss = run_once(argv, env)
    walls, rss = [], [first_rss]
    for _ in range(repeat):
        clean()
        w, m = run_once(argv, env)
        walls.append(w)
        rss.append(m)
    clean()
    return {"label": label, "first": first_wall, "wall": statistics.median(walls), "rss": max(rss)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI-sized banks (~35 MB) instead of 2 GB")
    ap.add_argument("--repeat", type=int, default=None, help="timed runs per command (default 5, quick 3)")
    ap.add_argument("--dir", default=None, help="where to put the synthetic banks (default: a temp dir)")
    ap.add_argument("--skip-runtime", action="store_true", help="leave out the runtime module's table")
    ap.add_argument("--skip-compute", action="store_true", help="leave out the compute targets' table")
    ap.add_argument("--make", nargs=6, metavar=("PATH", "T", "N", "r", "d", "SEED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make:
        stream_bank(Path(args.make[0]), *map(int, args.make[1:]))
        return
    repeat = args.repeat or (3 if args.quick else 5)
    if args.quick:
        T, N, r, d = 250, 100, 32, 1024
    else:
        T, N, r, d = 2000, 100, 32, 8192
    work = Path(args.dir or tempfile.mkdtemp(prefix="mptkit-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, MPTKIT_CACHE=str(work / "cache"), PYTHONWARNINGS="ignore")
    big, half_a, half_b = work / "bank.safetensors", work / "a.safetensors", work / "b.safetensors"
    print(f"making synthetic banks in {work} ...", file=sys.stderr)
    for path, t, seed in ((big, T, 0), (half_a, T // 2, 1), (half_b, T // 2, 2)):
        if not path.exists():  # in a child, so that this process never imports torch
            subprocess.run(
                [PY, "-m", "benchmarks.run", "--make", str(path), str(t), str(N), str(r), str(d), str(seed)],
                check=True,
                cwd=ROOT,
            )
    # merge needs the same shared prompt in both halves: copy a's prompt_embeddings bytes into b
    ha, hb = task_ranges(str(half_a), [])[-1], task_ranges(str(half_b), [])[-1]
    with open(half_a, "rb") as fa, open(half_b, "r+b") as fb:
        fb.seek(hb[0])
        fb.write(os.pread(fa.fileno(), ha[1], ha[0]))

    src, a, b = str(big), str(half_a), str(half_b)
    out_file = work / "out.safetensors"
    k, few = T // 2, [3, T // 3, T - 5]
    mpt = [PY, "-m", "mptkit"]
    rows = []

    def add(op: str, cases: list[tuple[str, list[str], Path | None]]):
        for label, argv, cleanup in cases:
            print(f"  {op}: {label} ...", file=sys.stderr)
            rows.append((op, bench(label, argv, env, repeat, cleanup)))

    def copy_cmd(srcs: list[str], ranges: dict) -> list[str]:
        ranges = {p: _coalesce(rs) for p, rs in ranges.items()}
        code = (
            f"import os\nwith open({str(out_file)!r}, 'wb') as o:\n"
            + "".join(
                f"    f = os.open({p!r}, os.O_RDONLY)\n"
                + "".join(f"    o.write(os.pread(f, {ln}, {off}))\n" for off, ln in ranges[p])
                for p in srcs
            )
            + "    o.flush()\n    os.fsync(o.fileno())\n"
        )  # mptkit's outputs are durable too
        return [PY, "-c", code]

    read_cmd = [PY, "-c", READ_ONCE.format(src=src)]
    add(
        "--help",
        [
            ("mptkit", mpt + ["--help"], None),
            ("naive (import safetensors.torch)", [PY, "-c", "import safetensors.torch"], None),
        ],
    )
    add(
        "inspect",
        [("mptkit", mpt + ["inspect", src], None), ("naive", [PY, "-c", NAIVE["inspect"].format(src=src)], None)],
    )
    add(
        "derive exact",
        [
            (
                "mptkit",
                mpt + ["derive", src, "--mode", "exact", "--task", str(k), "-o", str(out_file), "--force"],
                out_file,
            ),
            ("naive", [PY, "-c", NAIVE["exact"].format(src=src, k=k, out=str(out_file))], out_file),
            ("copy limit", copy_cmd([src], {src: task_ranges(src, [k])}), out_file),
        ],
    )
    add(
        "slice 3 tasks",
        [
            (
                "mptkit",
                mpt + ["slice", src, "--tasks", ",".join(map(str, few)), "-o", str(out_file), "--force"],
                out_file,
            ),
            ("naive", [PY, "-c", NAIVE["slice"].format(src=src, idx=few, out=str(out_file))], out_file),
            ("copy limit", copy_cmd([src], {src: task_ranges(src, few)}), out_file),
        ],
    )
    add(
        "derive average",
        [
            ("mptkit", mpt + ["derive", src, "--mode", "average", "-o", str(out_file), "--force"], out_file),
            ("naive", [PY, "-c", NAIVE["average"].format(src=src, out=str(out_file))], out_file),
            ("copy limit (read bank once)", read_cmd, None),
        ],
    )
    whole = {p: task_ranges(p, list(range(T // 2)))[:-1] for p in (a, b)}
    whole[a] = whole[a] + [task_ranges(a, [])[-1]]
    add(
        "merge 2 banks",
        [
            ("mptkit", mpt + ["merge", a, b, "-o", str(out_file), "--force"], out_file),
            ("naive", [PY, "-c", NAIVE["merge"].format(src=a, src2=b, out=str(out_file))], out_file),
            ("copy limit", copy_cmd([a, b], whole), out_file),
        ],
    )

    size = big.stat().st_size / 1e9
    print(
        f"\nbank: T={T}, N={N}, r={r}, d={d}, F32, {size:.2f} GB; merge: two banks of T={T // 2} "
        f"({half_a.stat().st_size / 1e9:.2f} GB each); median of {repeat} runs after a warm-up; "
        f"peak RSS is the largest of all runs\n"
    )
    print("| operation | method | wall (s) | first run (s) | peak RSS (MB) | vs naive |")
    print("|---|---|---:|---:|---:|---:|")
    naive_wall = {op: r["wall"] for op, r in rows if r["label"].startswith("naive")}
    for op, r in rows:
        ratio = naive_wall.get(op, 0) / r["wall"] if r["wall"] else 0
        print(f"| {op} | {r['label']} | {r['wall']:.3f} | {r['first']:.3f} | {r['rss']:.0f} | {ratio:.1f}x |")
    sys.stdout.flush()
    if not args.skip_runtime and (HERE / "runtime_bench.py").exists():
        print()
        sys.stdout.flush()
        subprocess.run(
            [PY, "-m", "benchmarks.runtime_bench"] + (["--quick"] if args.quick else []), check=True, cwd=ROOT
        )
    if not args.skip_compute:  # the compute targets (benchmarks/compute_bench.py), on the same big bank
        print()
        sys.stdout.flush()
        subprocess.run(
            [PY, "-m", "benchmarks.compute_bench", "--dir", str(work), "--big", str(big)]
            + (["--quick"] if args.quick else []),
            check=True,
            cwd=ROOT,
        )
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
