"""Crash consistency of writes (issue 7, items 1 and 3).

Writers are real processes killed with SIGKILL at random moments while they write a ~42 MB bank:
the output then either does not exist or holds a complete bank (with --force: the previous version
or the new one, byte for byte); a killed writer's temps are hidden, never look like outputs, and
are removed by the next write. Concurrent writers to one output leave one complete bank from one
of them. Counts are bounded here; benchmarks/soak_kill.py runs many more.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

import mptkit
from mptkit.formats import atomic
from relutil import (TMP_MARK, big_bank, cli_write_argv, dead_pid, digest, fork_save, kill_when_writing, stat_key,
                     temps, wait_exit, write_seconds)

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

KILLS = {"file": 8, "file-force": 6, "folder-force": 6, "folder": 4, "fallback": 4, "cli": 3}


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """Two large banks A and B, and the digests of each saved as a file and as a folder."""
    root = tmp_path_factory.mktemp("big")
    a, b = big_bank(root / "A.safetensors", 1), big_bank(root / "B.safetensors", 2)
    refs = {}
    for name, src in (("A", a), ("B", b)):
        bank = mptkit.load(src)
        for kind, out in (("file", root / f"ref{name}.safetensors"), ("folder", root / f"ref{name}")):
            mptkit.save(bank, out)
            refs[name, kind] = digest(out)
    write_s = write_seconds(b, root / "timing.safetensors")
    return {"A": a, "B": b, "refs": refs, "write_s": write_s, "root": root}


def _check_after_kill(out: Path, allowed: set, fresh: bool) -> None:
    got = digest(out)
    assert got in allowed or (fresh and got is None), f"{out}: partial or foreign output after a kill"
    if got is not None:
        mptkit.load(out)  # a complete, valid bank
    for t in temps(out):  # leftovers are hidden and never look like outputs
        assert t.name.startswith(".") and TMP_MARK in t.name and not t.name.endswith(".safetensors")


def _kill_series(big, out: Path, kind: str, n: int, *, force: bool, seed: int, no_renameat2=False):
    """n writes of B to ``out`` (holding A first when ``force``), each killed at a random moment."""
    rng = random.Random(seed)
    allowed = {big["refs"]["B", kind]} | ({big["refs"]["A", kind]} if force else set())
    interrupted = 0
    for _ in range(n):
        if force and digest(out) != big["refs"]["A", kind]:  # put the previous version back
            mptkit.save(mptkit.load(big["A"]), out, force=True)
        elif not force and digest(out) is not None:  # the last writer finished: start afresh
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        before = stat_key(out)
        pid = fork_save(big["B"], out, force=force, no_renameat2=no_renameat2)
        interrupted += kill_when_writing(pid, out, rng.uniform(0, 1.0) * big["write_s"], before)
        if no_renameat2 and digest(out) is None and force:
            # the fallback moves the old folder aside for an instant; the next write puts it back
            atomic.clean_stale_temps(out)
        _check_after_kill(out, allowed, fresh=not force)
    return interrupted


def _clean_write_removes_temps(big, out: Path, had_temps: bool):
    assert had_temps, "no kill left a temp: the kills did not land inside a write"
    mptkit.save(mptkit.load(big["B"]), out, force=True)
    assert temps(out) == []
    kind = "folder" if out.is_dir() else "file"
    assert digest(out) == big["refs"]["B", kind]


@pytest.mark.parametrize("kind,force", [("file", False), ("file", True), ("folder", True), ("folder", False)])
def test_sigkill_mid_write_leaves_nothing_partial(big, tmp_path, kind, force):
    out = tmp_path / ("out.safetensors" if kind == "file" else "out")
    n = KILLS[kind + ("-force" if force else "")]
    interrupted = _kill_series(big, out, kind, n, force=force, seed=f"{kind}-{force}")
    assert interrupted >= 1, "every writer finished before its kill: the bank is too small for this machine"
    _clean_write_removes_temps(big, out, had_temps=interrupted >= 1)


def test_sigkill_without_renameat2_keeps_previous_folder(big, tmp_path):
    """Where folders cannot be swapped atomically the old one is moved aside first; a writer killed
    in between leaves it under a temp name, and the next write puts it back."""
    out = tmp_path / "out"
    interrupted = _kill_series(big, out, "folder", KILLS["fallback"], force=True, seed=5, no_renameat2=True)
    assert interrupted >= 1
    _clean_write_removes_temps(big, out, had_temps=True)


def test_stale_old_folder_is_restored_not_deleted(big, tmp_path):
    out = tmp_path / "out"
    mptkit.save(mptkit.load(big["A"]), out)
    aside = out.with_name(f".out{TMP_MARK}{dead_pid()}-0123abcd.old")
    os.rename(out, aside)  # as a writer killed between its two renames leaves it
    atomic.clean_stale_temps(out)
    assert digest(out) == big["refs"]["A", "folder"] and not aside.exists()


def test_temps_of_live_writers_are_kept_and_dead_ones_removed(tmp_path):
    out = tmp_path / "out.safetensors"
    live = tmp_path / f".out.safetensors{TMP_MARK}{os.getpid()}-00000000"
    dead = tmp_path / f".out.safetensors{TMP_MARK}{dead_pid()}-11111111"
    dead_dir = tmp_path / f".out.safetensors{TMP_MARK}{dead_pid()}-22222222"
    other = tmp_path / f".other{TMP_MARK}{dead_pid()}-33333333"
    for p in (live, dead, other):
        p.write_bytes(b"partial")
    dead_dir.mkdir()
    (dead_dir / "adapter_model.safetensors").write_bytes(b"partial")
    mptkit.save(mptkit.load(Path(__file__).parent.parent / "examples" / "bank"), out)
    assert live.exists() and other.exists()  # a running writer's temp, another output's temp
    assert not dead.exists() and not dead_dir.exists()


def test_sigkill_of_the_cli_process(big, tmp_path):
    """`python -m mptkit` itself killed while writing (a real interpreter, not a fork)."""
    rng = random.Random(11)
    out, ref = tmp_path / "out.safetensors", tmp_path / "ref.safetensors"
    subprocess.run(cli_write_argv(big["B"], ref), check=True, capture_output=True)
    interrupted = left = 0
    for _ in range(KILLS["cli"]):
        proc = subprocess.Popen(cli_write_argv(big["B"], out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        interrupted += kill_when_writing(proc.pid, out, rng.uniform(0, 1.0) * big["write_s"], stat_key(out))
        proc.returncode = -signal.SIGKILL  # reaped by kill_when_writing
        _check_after_kill(out, {digest(ref)}, fresh=True)
        left += bool(temps(out))  # the next run removes them
        if out.exists():
            out.unlink()
    assert interrupted >= 1 and left >= 1
    subprocess.run(cli_write_argv(big["B"], out), check=True, capture_output=True)
    assert temps(out) == [] and digest(out) == digest(ref)


# -- concurrent writers (item 3) -------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["file", "folder"])
def test_concurrent_writers_with_force_leave_one_complete_bank(big, tmp_path, kind):
    out = tmp_path / ("out.safetensors" if kind == "file" else "out")
    mptkit.save(mptkit.load(big["A"]), out)
    pids = [fork_save(big[v], out, force=True) for v in ("A", "B", "A", "B")]
    codes = [wait_exit(p) for p in pids]
    assert codes == [0, 0, 0, 0]
    assert digest(out) in {big["refs"]["A", kind], big["refs"]["B", kind]}
    assert temps(out) == []


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_concurrent_writers_without_force_never_clobber(big, tmp_path, kind):
    """Without --force exactly one writer wins; the others get 'already exists' (exit 2), even when
    they checked before the winner renamed its output into place."""
    out = tmp_path / ("out.safetensors" if kind == "file" else "out")
    versions = ("A", "B", "B", "A")
    pids = [fork_save(big[v], out, force=False) for v in versions]
    codes = [wait_exit(p) for p in pids]
    assert sorted(codes) == [0, 2, 2, 2], codes
    winner = versions[codes.index(0)]
    assert digest(out) == big["refs"][winner, kind]
    assert temps(out) == []


def test_noreplace_refuses_an_output_created_after_the_check(big, tmp_path, monkeypatch):
    """The race itself, made deterministic: the output appears between the check and the rename."""
    out = tmp_path / "out.safetensors"
    real_check = atomic.check_target

    def check_then_race(target, **kw):
        real_check(target, **kw)
        Path(target).write_bytes(b"someone else's output")

    monkeypatch.setattr(atomic, "check_target", check_then_race)
    with pytest.raises(mptkit.MptkitError, match="already exists"):
        mptkit.save(mptkit.load(big["A"]), out)
    assert out.read_bytes() == b"someone else's output" and temps(out) == []
