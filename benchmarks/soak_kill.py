"""Soak test of crash consistency and fuzzed reading (not run by pytest): many SIGKILLs mid-write,
concurrent writers, resource faults and fuzz cases, with the figures printed at the end.

    python -m benchmarks.soak_kill                      # defaults: 300 kills, ~20k fuzz cases
    python -m benchmarks.soak_kill --kills 1000 --flips 5000 --seed 1

Every kill is a real SIGKILL of a writer (a forked child calling ``mptkit.save``, or every 10th a
``python -m mptkit slice`` process) at a random moment while it writes a ~42 MB bank; afterwards
the output is absent (fresh write) or the previous version (``--force``) or the complete new one,
byte for byte. Faults: a file-size limit at a random size (RLIMIT_FSIZE) and a nearly full tmpfs
(when mount works). Fuzz cases come from tests/support/fuzzcases.py on PEFT-saved banks. A crashing fuzz
case is saved under tests/reliability/regressions/ and the script exits 1; so does any lost or partial output.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

import mptkit
from tests.support import fuzzcases as fz
from tests.support.banks import big_bank, medium_bank, save_peft_bank
from tests.support.commands import cli_write_argv
from tests.support.files import TMP_MARK, digest, sha256_tree, stat_key, temps
from tests.support.writers import fork_save, kill_when_writing, wait_exit, write_seconds

ROOT = Path(__file__).resolve().parent.parent

FIG: Counter = Counter()
PROBLEMS: list[str] = []


def problem(text: str) -> None:
    PROBLEMS.append(text)
    print("PROBLEM:", text, flush=True)


# -- kills ---------------------------------------------------------------------------------------
def kills(work: Path, n: int, rng: random.Random) -> None:
    a, b = big_bank(work / "A.safetensors", 1), big_bank(work / "B.safetensors", 2)
    refs = {}
    for name, src in (("A", a), ("B", b)):
        for kind, out in (("file", work / f"ref{name}.safetensors"), ("folder", work / f"ref{name}")):
            mptkit.save(mptkit.load(src), out)
            refs[name, kind] = digest(out)
    write_s = write_seconds(b, work / "timing.safetensors")
    FIG["write window (ms, median)"] = round(write_s * 1000)
    cli_ref = work / "cli-ref.safetensors"
    subprocess.run(cli_write_argv(b, cli_ref), check=True, capture_output=True)
    scenarios = [("file", False), ("file", True), ("folder", True), ("folder", False)]
    for i in range(n):
        if i % 10 == 9:
            out = work / "cli-out.safetensors"
            if out.exists():
                out.unlink()
            proc = subprocess.Popen(cli_write_argv(b, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            hit = kill_when_writing(proc.pid, out, rng.uniform(0, 1.0) * write_s, stat_key(out))
            proc.returncode = -9
            allowed, fresh, label = {digest(cli_ref)}, True, "cli"
        else:
            kind, force = scenarios[i % 4]
            out = work / ("out.safetensors" if kind == "file" else "out-dir")
            out = out.with_name(out.name.replace("out", f"out-{kind}-{int(force)}", 1))
            if force and digest(out) != refs["A", kind]:
                mptkit.save(mptkit.load(a), out, force=True)
            elif not force and digest(out) is not None:
                shutil.rmtree(out) if out.is_dir() else out.unlink()
            before = stat_key(out)
            pid = fork_save(b, out, force=force)
            hit = kill_when_writing(pid, out, rng.uniform(0, 1.0) * write_s, before)
            allowed = {refs["B", kind]} | ({refs["A", kind]} if force else set())
            fresh, label = not force, f"{kind}{'-force' if force else ''}"
        FIG["kills"] += 1
        FIG["kills landing mid-write"] += hit
        got = digest(out)
        if got is None:
            FIG["after kill: no output (fresh write)"] += 1
            if not fresh:
                problem(f"kill {i} ({label}): the previous version is gone")
        elif got in allowed:
            prev = label.endswith("force") and got == refs["A", "file" if "file" in label else "folder"]
            FIG["after kill: previous version intact" if prev else "after kill: complete new bank"] += 1
            mptkit.load(out)
        else:
            problem(f"kill {i} ({label}): partial or foreign output")
        FIG["stale temps seen"] += len(temps(out))
        for t in temps(out):
            if not t.name.startswith(".") or t.name.endswith(".safetensors"):
                problem(f"a temp looks like an output: {t}")
    # the next write cleans every stale temp
    for out in [p for p in work.iterdir() if p.name.startswith("out-") or p.name == "cli-out.safetensors"]:
        mptkit.save(mptkit.load(b), out, force=True)
        if temps(out):
            problem(f"stale temps left after a clean write: {temps(out)}")
    for p in (a, b):
        p.unlink()


def concurrent(work: Path, rounds: int) -> None:
    srcs = [big_bank(work / f"C{i}.safetensors", 10 + i, N=256, d=8192) for i in range(2)]
    refs = {}
    for i, s in enumerate(srcs):
        for kind in ("file", "folder"):
            out = work / f"cref{i}{'.safetensors' if kind == 'file' else ''}"
            mptkit.save(mptkit.load(s), out)
            refs[i, kind] = digest(out)
    for r in range(rounds):
        kind = ("file", "folder")[r % 2]
        force = r % 4 >= 2
        out = work / f"conc-{r}{'.safetensors' if kind == 'file' else ''}"
        order = [r % 2, 1 - r % 2, r % 2, 1 - r % 2]
        codes = [wait_exit(p) for p in [fork_save(srcs[i], out, force=force) for i in order]]
        FIG["concurrent writers"] += len(codes)
        ok = (codes == [0] * 4) if force else (sorted(codes) == [0, 2, 2, 2])
        if not ok or digest(out) not in {refs[0, kind], refs[1, kind]} or temps(out):
            problem(f"concurrent round {r} ({kind}, force={force}): exit codes {codes}")
        else:
            FIG["concurrent rounds: one complete bank"] += 1
        shutil.rmtree(out) if out.is_dir() else out.unlink()


# -- resource faults -----------------------------------------------------------------------------
def faults(work: Path, n: int, rng: random.Random) -> None:
    src = medium_bank(work / "medium")
    size = sum(p.stat().st_size for p in src.iterdir())
    before = sha256_tree(src)
    for i in range(n):
        limit = rng.randrange(0, size)
        out = work / f"fsize-{i}" / ("o.safetensors" if i % 2 else "o")
        out.parent.mkdir()

        def lim(limit=limit):
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        r = subprocess.run(
            [sys.executable, "-m", "mptkit", "slice", str(src), "--tasks", "0-3", "-o", str(out)],
            capture_output=True,
            text=True,
            preexec_fn=lim,
        )
        FIG["file-size limits"] += 1
        FIG["file-size limits: refused (exit 2)" if r.returncode == 2 else "file-size limits: fitted"] += 1
        clean = os.listdir(out.parent) == [] if r.returncode else digest(out) is not None
        if r.returncode not in (0, 2) or "Traceback" in r.stderr or not clean:
            problem(
                f"RLIMIT_FSIZE={limit}: exit {r.returncode}, {r.stderr.strip()[:200]}, left {os.listdir(out.parent)}"
            )
        else:
            FIG["file-size limits survived"] += 1
        shutil.rmtree(out.parent)
    disk = work / "disk"
    disk.mkdir()
    mounted = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True
        ).returncode
        == 0
    )
    if not mounted:
        print("(no tmpfs: skipping the full-disk rounds)")
    try:
        for i in range(n if mounted else 0):
            for p in disk.iterdir():
                p.unlink() if p.is_file() else shutil.rmtree(p)
            st = os.statvfs(disk)
            free = st.f_bavail * st.f_frsize
            leave = rng.randrange(0, 600_000)
            (disk / "filler").write_bytes(b"\0" * max(0, free - leave))
            out = disk / ("o.safetensors" if i % 2 else "o")
            r = subprocess.run(
                [sys.executable, "-m", "mptkit", "slice", str(src), "--tasks", "0-3", "-o", str(out)],
                capture_output=True,
                text=True,
            )
            FIG["full-disk writes"] += 1
            FIG["full-disk writes: refused (exit 2)" if r.returncode == 2 else "full-disk writes: fitted"] += 1
            left = sorted(os.listdir(disk))
            ok = (r.returncode == 2 and "disk is full" in r.stderr and left == ["filler"]) or (
                r.returncode == 0 and mptkit.load(out).num_tasks == 4 and not [x for x in left if TMP_MARK in x]
            )
            if not ok or "Traceback" in r.stderr:
                problem(f"full disk (leave {leave}): exit {r.returncode}, {r.stderr.strip()[:200]}, left {left}")
            else:
                FIG["full-disk writes survived"] += 1
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    if sha256_tree(src) != before:
        problem("the input of the fault rounds changed")


# -- fuzz ----------------------------------------------------------------------------------------
def fuzz(work: Path, flips: int, rng: random.Random) -> None:
    srcs = {
        "s2s": save_peft_bank(work / "s2s", "seq2seq"),
        "causal-bf16": save_peft_bank(work / "c", "causal", "bfloat16"),
        "bin": save_peft_bank(work / "bin", "seq2seq", safe=False),
    }
    case = work / "case.safetensors"

    def run(kind: str, label: str, data: bytes, path: Path, target: Path, cli: bool = False):
        path.write_bytes(data)
        try:
            FIG[f"fuzz {fz.check(target, cli=cli)}"] += 1
        except fz.Crash as e:
            keep = (
                ROOT
                / "tests"
                / "reliability"
                / "regressions"
                / f"soak-{kind}-{zlib.crc32(label.encode()):08x}{path.suffix}"
            )
            keep.write_bytes(data) if target == path else shutil.copytree(target, keep)
            problem(f"fuzz crash ({kind} {label}), kept as {keep}: {e}")
        FIG["fuzz cases"] += 1
        FIG[f"fuzz cases: {kind}"] += 1

    for name in ("s2s", "causal-bf16"):
        data = (srcs[name] / "adapter_model.safetensors").read_bytes()
        for label, d in fz.truncations(data, data_step=7):
            run("truncation", label, d, case, case)
        for label, d in fz.bit_flips(data, rng, flips):
            run("bit flip", label, d, case, case)
        for label, d in fz.header_mutations(data):
            run("header mutation", label, d, case, case, cli=True)
        folder = work / f"cfg-{name}"
        shutil.copytree(srcs[name], folder)
        text = (folder / "adapter_config.json").read_text()
        for label, d in fz.config_mutations(text):
            run("config mutation", label, d, folder / "adapter_config.json", folder, cli=True)
    folder = work / "bin-case"
    shutil.copytree(srcs["bin"], folder)
    data = (folder / "adapter_model.bin").read_bytes()
    for label, d in fz.pickle_damage(data, rng, cuts=200, flips=max(100, flips // 10)):
        run("pickle damage", label, d, folder / "adapter_model.bin", folder)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=300)
    ap.add_argument("--concurrent", type=int, default=40, help="rounds of 4 concurrent writers")
    ap.add_argument("--faults", type=int, default=60, help="rounds of each resource fault")
    ap.add_argument("--flips", type=int, default=3000, help="bit-flip cases per source bank")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", help="where to write (default: a temp folder, removed after)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mptkit-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    try:
        for phase, fn in (
            ("kills", lambda: kills(work / "k", args.kills, rng)),
            ("concurrent", lambda: concurrent(work / "c", args.concurrent)),
            ("faults", lambda: faults(work / "f", args.faults, rng)),
            ("fuzz", lambda: fuzz(work / "z", args.flips, rng)),
        ):
            (work / phase[0]).mkdir(exist_ok=True)
            t = time.monotonic()
            fn()
            print(f"{phase}: done in {time.monotonic() - t:.0f} s", flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nmptkit soak (seed {args.seed}, {time.monotonic() - t0:.0f} s):")
    for k in sorted(FIG):
        print(f"  {k:<45} {FIG[k]}")
    print(f"  {'problems (lost/partial output, crashes)':<45} {len(PROBLEMS)}")
    return 1 if PROBLEMS else 0


if __name__ == "__main__":
    sys.exit(main())
