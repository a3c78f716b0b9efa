"""Atomic outputs: a temp beside the target, fsync, then one rename.

A reader of the output path sees either nothing, the previous version, or the complete new one.
Replacing an existing folder uses Linux's ``renameat2(RENAME_EXCHANGE)`` where available, so even
the swap leaves no moment without a complete output; elsewhere the old folder is moved aside first.
Without ``replace`` (no --force) the final rename refuses to clobber an output that another process
created meanwhile (``RENAME_NOREPLACE``), so a run without --force never replaces anything.

Every temp is a hidden folder beside the target, locked by its writer (:mod:`mptkit.formats._temps`
says what proves a temp stale, and the reaper removes nothing else). While a temp exists, SIGTERM
and SIGHUP (where they would kill the process outright) first remove it, then take their usual
effect; Ctrl-C removes it through KeyboardInterrupt. :data:`progress` records, for the CLI's last
words, whether each output was completed.

The rules for what may be replaced are in :mod:`mptkit.formats._targets`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from ..errors import OutputError
from ._targets import NAME_MAX, check_target, name_max, os_error_reason  # noqa: F401  (re-exported)
from ._temps import MARKER, NEW, OLD, TMP_MARK, Temp as _Temp, clean_stale_temps  # noqa: F401  (re-exported)

#: what this process's writes reached, by output path: "writing", then "written" once it is in place
progress: dict[str, str] = {}


# -- signals -----------------------------------------------------------------------------------------
_CLEANUP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


class _Terminated(BaseException):
    """SIGTERM or SIGHUP arrived while a temp existed: unwind (removing it), then die by the signal."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum, frame):
    raise _Terminated(signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _removed_on_signals() -> Iterator[None]:
    """SIGTERM/SIGHUP that would kill the process outright (default action) raise inside instead,
    so the temps are removed on the way out; then the signal is delivered again, with its default
    action, and the process ends as it would have without mptkit."""
    saved = {}
    if _main_thread():
        for s in _CLEANUP_SIGNALS:
            with contextlib.suppress(ValueError, OSError):
                if signal.getsignal(s) == signal.SIG_DFL:
                    saved[s] = signal.signal(s, _raise_terminated)
    try:
        yield
    except _Terminated as t:
        for s, h in saved.items():
            signal.signal(s, h)
        saved = {}
        signal.signal(t.signum, signal.SIG_DFL)
        os.kill(os.getpid(), t.signum)
        raise SystemExit(128 + t.signum) from None  # only if the signal is blocked
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Signals arriving inside are acted on when it ends: a rename and its record in
    :data:`progress` happen together (Python runs signal handlers only in the main thread)."""
    if not _main_thread():
        yield
        return
    pending: list[int] = []
    saved = {}
    for s in (signal.SIGINT, *_CLEANUP_SIGNALS):
        with contextlib.suppress(ValueError, OSError):
            saved[s] = signal.signal(s, lambda n, f: pending.append(n))
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
        for n in pending:
            h = saved.get(n)
            if callable(h):
                h(n, None)
            elif h == signal.SIG_DFL:
                os.kill(os.getpid(), n)


# -- installing --------------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _os_error(target: Path, e: OSError) -> OutputError:
    return OutputError(f"{target}: cannot write the output: {os_error_reason(e)}; nothing was written")


def _prepare_parent(target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _os_error(target, e) from None
    clean_stale_temps(target)


def _exists_error(target: Path) -> OutputError:
    return OutputError(
        f"{target}: already exists (another process wrote it meanwhile); "
        "replacing it needs --force (force=True in Python)"
    )


def _rename_noreplace(src: Path, dst: Path) -> None:
    try:
        if _renameat2(src, dst, RENAME_NOREPLACE):
            return
    except FileExistsError:
        raise _exists_error(dst) from None
    if dst.exists() or dst.is_symlink():  # no renameat2: a small race remains
        raise _exists_error(dst)
    os.rename(src, dst)


def _install(tmp: _Temp, *, replace: bool) -> None:
    """Move the finished ``tmp.new`` to the target in one rename, and record it in :data:`progress`."""
    target, new = tmp.target, tmp.new
    with _signals_deferred():
        if not replace:
            _rename_noreplace(new, target)
        else:
            _replace(tmp)
        progress[os.fspath(target)] = "written"


def _replace(tmp: _Temp) -> None:
    target, new = tmp.target, tmp.new
    for attempt in range(5):  # retried when a concurrent writer creates or swaps target meanwhile
        try:
            if new.is_dir() and target.is_dir() and not target.is_symlink():
                if not _renameat2(new, target, RENAME_EXCHANGE):  # new now holds the old version
                    os.rename(target, tmp.path / OLD)  # a kill here: the reaper puts it back
                    os.rename(new, target)
            else:
                os.replace(new, target)
            return
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT) or attempt == 4 or not new.exists():
                raise


@contextlib.contextmanager
def _writing(target: Path, replace: bool) -> Iterator[_Temp]:
    key = os.fspath(target)
    with _removed_on_signals():
        progress[key] = "writing"
        _prepare_parent(target)
        tmp = None
        try:
            tmp = _Temp(target)
            yield tmp
            _install(tmp, replace=replace)
            _fsync_dir(target.parent)
        except OSError as e:
            if progress.get(key) != "written":
                raise _os_error(target, e) from None
        finally:
            if tmp is not None:
                with _signals_deferred():  # an interrupt now waits until the temp is gone
                    tmp.remove()


@contextlib.contextmanager
def atomic_file(target: Path, *, replace: bool = True) -> Iterator:
    """Yield a binary file object; on clean exit it becomes ``target`` in one rename (which does
    not replace an existing ``target`` unless ``replace``)."""
    target = Path(target)
    with _writing(target, replace) as tmp, open(tmp.new, "xb") as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_dir(target: Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield a temp folder to fill; on clean exit it replaces ``target`` atomically (or, without
    ``replace``, becomes ``target`` only if nothing is there)."""
    target = Path(target)
    with _writing(target, replace) as tmp:
        tmp.new.mkdir()
        yield tmp.new
        for p in sorted(tmp.new.rglob("*"), reverse=True):  # files, then the sub-folders that hold them
            if p.is_dir():
                _fsync_dir(p)
                continue
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(tmp.new)


RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def _renameat2(a: Path, b: Path, flags: int) -> bool:
    """Linux ``renameat2(a, b, flags)``: RENAME_EXCHANGE swaps two paths atomically,
    RENAME_NOREPLACE fails with EEXIST instead of replacing ``b``. False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD = -100
    rc = fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), flags)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))
