"""Stop a writer at a known point of its write, so that a test kills (or signals) it exactly there.

The writer is a real process (a fork of the test process, or ``python -c`` running the CLI); a hook
installed in it sends itself SIGSTOP at the chosen point; the test waits until the kernel reports it
stopped (``waitpid(WUNTRACED)``), then acts: SIGKILL lands at that point by construction, never by
timing. Points, in the order a write meets them:

- ``header``: the output's header is written, no tensor data yet;
- ``mid-tensor``: half of the first tensor's bytes are copied;
- ``before-install``: every byte is written and synced, the temp is not yet renamed into place;
- ``between-renames``: (folders without ``RENAME_EXCHANGE``) the previous version was moved aside,
  the new one is not yet in place;
- ``after-install``: the new output is in place, the temp (holding the old version) not yet removed.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

POINTS = ("header", "mid-tensor", "before-install", "between-renames", "after-install")


#: where a writer pauses instead of stopping itself: ``READY:GO`` FIFOs (it writes a byte to READY,
#: then waits for one on GO), for a writer the test cannot waitpid() on (one inside a PID namespace)
FIFO_ENV = "STOPHOOK_FIFOS"


def _stop() -> None:
    fifos = os.environ.get(FIFO_ENV)
    if not fifos:
        os.kill(os.getpid(), signal.SIGSTOP)
        return
    ready, go = fifos.split(":")
    with open(ready, "wb") as f:
        f.write(b"x")
    with open(go, "rb") as f:
        f.read(1)


def install(point: str, *, no_renameat2: bool = False) -> None:
    """Make this process stop itself (SIGSTOP) once, at ``point``."""
    from mptkit import _tensor as tensor
    from mptkit.formats import _atomic as atomic

    if point not in POINTS:
        raise ValueError(point)
    fired = []

    def once() -> bool:
        if fired:
            return False
        fired.append(point)
        return True

    if no_renameat2 or point == "between-renames":
        atomic._renameat2 = lambda *a: False
    if point == "header":
        real_write_to = tensor.Array.write_to

        def write_to(self, f):
            if once():
                f.flush()
                _stop()
            return real_write_to(self, f)

        tensor.Array.write_to = write_to
    elif point == "mid-tensor":
        real_copy = tensor._copy_range

        def copy(src, dst, offset, length):
            if length < 2 or not once():
                return real_copy(src, dst, offset, length)
            half = length // 2
            done = real_copy(src, dst, offset, half)
            _stop()
            if done < half:  # no kernel copy here: the caller streams the rest
                return done
            return half + real_copy(src, dst, offset + half, length - half)

        tensor._copy_range = copy
    elif point == "before-install":
        real_install = atomic._install

        def install_(tmp, **kw):
            if once():
                _stop()
            return real_install(tmp, **kw)

        atomic._install = install_
    elif point == "between-renames":
        real_rename = os.rename

        def rename(a, b, *args, **kw):
            real_rename(a, b, *args, **kw)
            if Path(b).name == atomic.OLD and once():
                _stop()

        os.rename = rename
    elif point == "after-install":
        real_remove = atomic._Temp.remove

        def remove(self):
            if atomic.progress.get(os.fspath(self.target)) == "written" and once():
                _stop()
            return real_remove(self)

        atomic._Temp.remove = remove


def fork_stopping(src, out, *, force: bool, point: str) -> int:
    """Fork a child that loads ``src`` and saves it to ``out``, stopping itself at ``point``; exit
    0 on success, 2 on an MptkitError, 3 on KeyboardInterrupt, 1 on anything else. SIGTERM and
    SIGHUP have their default action in the child, as in a fresh process."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        for s in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import mptkit
        from mptkit.errors import MptkitError

        install(point)
        try:
            mptkit.save(mptkit.load(src), out, force=force)
            code = 0
        except MptkitError:
            code = 2
        except KeyboardInterrupt:
            code = 3
    finally:
        os._exit(code)


def cli_stopping_argv(point: str, *args) -> list[str]:
    """A command line running the real CLI (``mptkit ARGS...``) in a fresh interpreter that stops
    itself at ``point``: this file run as a script (see the end of it)."""
    return [sys.executable, str(Path(__file__).resolve()), point, *map(str, args)]


def wait_stopped(pid: int, timeout_note: str = "") -> None:
    """Block until child ``pid`` has stopped itself; fail if it exited instead."""
    _, status = os.waitpid(pid, os.WUNTRACED)
    if not os.WIFSTOPPED(status):
        raise AssertionError(
            f"the writer exited (status {os.waitstatus_to_exitcode(status)}) before reaching its "
            f"stop point {timeout_note}"
        )


def kill(pid: int) -> int:
    """SIGKILL a (stopped) child and reap it; its exit status (-9)."""
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def signal_and_wait(pid: int, signum: int) -> int:
    """Send ``signum`` to a stopped child, let it continue, and reap it; its exit status."""
    os.kill(pid, signum)
    os.kill(pid, signal.SIGCONT)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":  # python stophooks.py POINT ARGS...: the CLI, stopping itself at POINT
    # SIGINT gets Python's own handler, as in a process started from a terminal (a test runner
    # started in the background has SIGINT ignored, and its children inherit that)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    install(sys.argv[1])
    from mptkit.cli import main

    main(sys.argv[2:], prog_name="mptkit")
