"""Writers that are killed: a real child process (``os.fork`` of the test process, or ``python -m
mptkit``) stopped with SIGKILL, so nothing in it gets to clean up. A kill at a known point of the
write is :mod:`tests.support.stophooks`; these helpers kill at a moment (the soak benchmark) or run
a writer to its end."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.support.files import TMP_MARK, stat_key


def fork_save(src, out, *, force: bool, no_renameat2: bool = False) -> int:
    """Fork a child that loads ``src`` and saves it to ``out``; exit 0 on success, 2 on an
    MptkitError, 1 on anything else. Returns the child's pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        import mptkit
        from mptkit.errors import MptkitError
        from mptkit.formats import _atomic as atomic

        if no_renameat2:
            atomic._renameat2 = lambda *a: False
        try:
            mptkit.save(mptkit.load(src), out, force=force)
            code = 0
        except MptkitError:
            code = 2
    finally:
        os._exit(code)


def wait_exit(pid: int) -> int:
    """Reap a child; its exit status (or -signal)."""
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def kill_when_writing(pid: int, target, delay: float, before=None, timeout: float = 60.0) -> bool:
    """Wait until child ``pid`` has started writing ``target`` (its temp appeared, or ``target``
    itself changed from ``before``, its :func:`stat_key` at fork time), sleep ``delay`` seconds,
    then SIGKILL and reap it. True when the kill interrupted it (it had not exited by itself)."""
    t = Path(target)
    prefix = f".{t.name}{TMP_MARK}{pid}-"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if any(n.startswith(prefix) for n in os.listdir(t.parent)) or stat_key(t) != before:
            break
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False  # finished (or failed) before we saw it write
        time.sleep(0.0005)
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    return wait_exit(pid) == -signal.SIGKILL


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def write_seconds(src, out, *, force: bool = True, runs: int = 3) -> float:
    """How long a forked writer takes from creating its temp to exiting (the window a kill must
    hit), the median of ``runs`` uninterrupted writes of ``src`` to ``out``."""
    times = []
    for _ in range(runs):
        pid = fork_save(src, out, force=force)
        prefix = f".{Path(out).name}{TMP_MARK}{pid}-"
        start = None
        while True:
            if start is None and any(n.startswith(prefix) for n in os.listdir(Path(out).parent)):
                start = time.monotonic()
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.0005)
        times.append(time.monotonic() - (start or time.monotonic()))
    return sorted(times)[len(times) // 2]
