"""Crash consistency of writes, and of concurrent writers (kills land by construction).

Writers are real processes stopped at a known point of their write (tests/support/stophooks.py: the writer
sends itself SIGSTOP there; the test waits until the kernel says it stopped) and then SIGKILLed, so
every kill lands where the test says, whatever the machine's load. After a kill the output either
does not exist or holds a complete bank (with --force: the previous version or the new one, byte
for byte); a killed writer's temps are hidden, never look like outputs, and the next write removes
them. Concurrent writers to one output leave one complete bank from one of them.
``benchmarks/soak_kill.py`` adds many kills at random moments.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import mptkit
from mptkit.formats import _atomic as atomic
from tests.support.banks import medium_bank
from tests.support.files import TMP_MARK, digest, temps
from tests.support.stophooks import cli_stopping_argv, fork_stopping, kill, wait_stopped
from tests.support.writers import fork_save, wait_exit

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

DURING = ("header", "mid-tensor", "before-install")  # the output is not in place yet


@pytest.fixture(scope="module")
def banks(tmp_path_factory):
    """Two banks A and B (adapter folders of ~400 kB), and the digests of each saved as a file and
    as a folder."""
    root = tmp_path_factory.mktemp("writes")
    out = {"root": root, "refs": {}}
    for name, seed in (("A", 1), ("B", 2)):
        out[name] = medium_bank(root / name, seed=seed)
        bank = mptkit.load(out[name])
        for kind, ref in (("file", root / f"ref{name}.safetensors"), ("folder", root / f"ref{name}")):
            mptkit.save(bank, ref)
            out["refs"][name, kind] = digest(ref)
    return out


def _prepare(banks, out: Path, kind: str, force: bool) -> None:
    if force:
        mptkit.save(mptkit.load(banks["A"]), out, force=True)
    elif out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()


def _leftovers_are_hidden_temps(out: Path) -> list[Path]:
    left = temps(out)
    for t in left:  # hidden, and never shaped like an output
        assert t.name.startswith(".") and TMP_MARK in t.name and not t.name.endswith(".safetensors")
        assert t.is_dir() and (t / atomic.MARKER).is_file()
    return left


@pytest.mark.parametrize("point", [*DURING, "after-install"])
@pytest.mark.parametrize("kind,force", [("file", False), ("file", True), ("folder", False), ("folder", True)])
def test_sigkill_at_each_point_of_a_write(banks, tmp_path, kind, force, point):
    out = tmp_path / ("out.safetensors" if kind == "file" else "out")
    _prepare(banks, out, kind, force)
    pid = fork_stopping(banks["B"], out, force=force, point=point)
    wait_stopped(pid, point)
    assert kill(pid) == -signal.SIGKILL  # the kill landed at `point`, by construction
    expected = banks["refs"]["B", kind] if point == "after-install" else (banks["refs"]["A", kind] if force else None)
    assert digest(out) == expected, f"{out} after a kill at {point}"
    if expected is not None:
        mptkit.load(out)  # a complete, valid bank
    assert len(_leftovers_are_hidden_temps(out)) == 1  # the killed writer's temp, still there
    mptkit.save(mptkit.load(banks["B"]), out, force=True)  # the next write removes it
    assert temps(out) == [] and digest(out) == banks["refs"]["B", kind]


def test_sigkill_between_the_two_renames_of_the_fallback_keeps_the_previous_folder(banks, tmp_path):
    """Where folders cannot be swapped atomically the old one is moved aside (into the writer's own
    temp) first; a writer killed in between leaves no output, and the next write to that output
    puts the previous version back before anything else."""
    out = tmp_path / "out"
    _prepare(banks, out, "folder", True)
    pid = fork_stopping(banks["B"], out, force=True, point="between-renames")
    wait_stopped(pid)
    assert kill(pid) == -signal.SIGKILL
    assert not out.exists()
    (temp,) = _leftovers_are_hidden_temps(out)
    assert digest(temp / atomic.OLD) == banks["refs"]["A", "folder"]
    atomic.clean_stale_temps(out)
    assert digest(out) == banks["refs"]["A", "folder"] and temps(out) == []


def test_sigkill_of_the_cli_process(banks, tmp_path):
    """The real CLI in a fresh interpreter, stopped half-way through its first tensor and killed."""
    out = tmp_path / "out.safetensors"
    proc = subprocess.Popen(
        cli_stopping_argv("mid-tensor", "slice", banks["B"], "--tasks", "0-3", "-o", out),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_stopped(proc.pid)
    assert kill(proc.pid) == -signal.SIGKILL
    proc.returncode = -signal.SIGKILL  # reaped by kill()
    assert not out.exists() and len(_leftovers_are_hidden_temps(out)) == 1
    res = subprocess.run(
        [sys.executable, "-m", "mptkit", "slice", str(banks["B"]), "--tasks", "0-3", "-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert temps(out) == [] and mptkit.load(out).num_tasks == 4


# -- concurrent writers -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["file", "folder"])
def test_concurrent_writers_with_force_leave_one_complete_bank(banks, tmp_path, kind):
    out = tmp_path / ("out.safetensors" if kind == "file" else "out")
    mptkit.save(mptkit.load(banks["A"]), out)
    pids = [fork_save(banks[v], out, force=True) for v in ("A", "B", "A", "B")]
    codes = [wait_exit(p) for p in pids]
    assert codes == [0, 0, 0, 0]
    assert digest(out) in {banks["refs"]["A", kind], banks["refs"]["B", kind]}
    assert temps(out) == []


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_concurrent_writers_without_force_never_clobber(banks, tmp_path, kind):
    """Without --force exactly one writer wins; the others get 'already exists' (exit 2), even when
    they checked before the winner renamed its output into place."""
    out = tmp_path / ("out.safetensors" if kind == "file" else "out")
    versions = ("A", "B", "B", "A")
    pids = [fork_save(banks[v], out, force=False) for v in versions]
    codes = [wait_exit(p) for p in pids]
    assert sorted(codes) == [0, 2, 2, 2], codes
    winner = versions[codes.index(0)]
    assert digest(out) == banks["refs"][winner, kind]
    assert temps(out) == []


def test_noreplace_refuses_an_output_created_after_the_check(banks, tmp_path, monkeypatch):
    """The race itself, made deterministic: the output appears between the check and the rename."""
    from mptkit.formats import _targets as targets

    out = tmp_path / "out.safetensors"
    real_check = targets.check_target

    def check_then_race(target, **kw):
        real_check(target, **kw)
        Path(target).write_bytes(b"someone else's output")

    monkeypatch.setattr(targets, "check_target", check_then_race)
    with pytest.raises(mptkit.MptkitError, match="already exists"):
        mptkit.save(mptkit.load(banks["A"]), out)
    assert out.read_bytes() == b"someone else's output" and temps(out) == []
