"""Atomic outputs: a temp beside the target, fsync, then one rename.

A reader of the output path sees either nothing, the previous version, or the complete new one.
Replacing an existing folder uses Linux's ``renameat2(RENAME_EXCHANGE)`` where available, so even
the swap leaves no moment without a complete output; elsewhere the old folder is moved aside first.
Without ``replace`` (no --force) the final rename refuses to clobber an output that another process
created meanwhile (``RENAME_NOREPLACE``), so a run without --force never replaces anything.

Every temp is a hidden folder ``.NAME.mptkit-tmp-PID-TOKEN/`` beside the target, holding the new
file or folder (``new``) and a marker (``.mptkit-writer``: the token and the target's name) that
the writer keeps locked (``flock``) until it is done. The lock, not the pid, says whether the writer
still runs, so it holds across PID namespaces (containers sharing a folder). The reaper removes a
temp only when it is provably a writer's own and that writer is gone: a folder (not a link) owned by
this user, whose marker names this target with the token in its name, and whose lock is free. It
never touches anything else, and never renames anything in except the previous version that its
own dead writer moved aside (the fallback without ``RENAME_EXCHANGE``). While a temp exists,
SIGTERM and SIGHUP (where they would kill the process outright) first remove it, then take their
usual effect; Ctrl-C removes it through KeyboardInterrupt. :data:`progress` records, for the CLI's
last words, whether each output was completed.

The rules for what may be replaced are in :mod:`mptkit.formats.targets`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
import signal
import threading
from pathlib import Path
from typing import Iterator

from ..errors import OutputError

try:
    import fcntl
except ImportError:  # no flock (Windows): nothing can prove a writer gone there, so nothing is reaped
    fcntl = None
from .targets import NAME_MAX, check_target, name_max, os_error_reason  # noqa: F401  (re-exported)

TMP_MARK = ".mptkit-tmp-"
MARKER = ".mptkit-writer"
NEW, OLD = "new", "old"  # inside a temp: the output being written; the previous version moved aside
_MAGIC = b"mptkit temp v1\n"
_TEMP_NAME = re.compile(r"^\.(.*)" + re.escape(TMP_MARK) + r"(\d+)-([0-9a-f]{16})$", re.S)

#: what this process's writes reached, by output path: "writing", then "written" once it is in place
progress: dict[str, str] = {}


# -- temp names and markers ------------------------------------------------------------------------
def _tmp_name(target: Path, token: str) -> str:
    """``.NAME.mptkit-tmp-PID-TOKEN``, with NAME shortened (by bytes) so the whole fits in NAME_MAX."""
    tail = f"{TMP_MARK}{os.getpid()}-{token}"
    room = name_max(target.parent) - 1 - len(tail)
    raw = os.fsencode(target.name)[: max(room, 0)]
    return "." + os.fsdecode(raw) + tail


def _marker_bytes(target: Path, token: str) -> bytes:
    return _MAGIC + token.encode() + b"\n" + os.fsencode(target.name)


def _pid_alive(pid: int) -> bool:  # kept for callers of the old API; liveness is the marker's lock
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(target: Path) -> list[Path]:
    """Remove the temps of ``target`` whose writers are gone (see the module docstring for what
    proves it); a previous version that such a writer had moved aside is put back first when
    ``target`` is missing. Returns the temps removed."""
    target = Path(target)
    try:
        names = os.listdir(target.parent)
    except OSError:
        return []
    removed = []
    for name in names:
        m = _TEMP_NAME.match(name)
        if m and os.fsencode(target.name).startswith(os.fsencode(m.group(1))) and _reap(target, name, m.group(3)):
            removed.append(target.parent / name)
    return removed


def _reap(target: Path, name: str, token: str) -> bool:
    """Remove one temp if it is provably a dead writer's own; True when removed."""
    parent = target.parent
    try:
        dfd = os.open(parent / name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return False  # not a folder, a link, or gone
    try:
        st = os.fstat(dfd)
        if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
            return False  # another user's: never ours to remove
        try:
            mfd = os.open(MARKER, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
        except OSError:
            # no marker: not provably a temp, unless it is empty (a writer killed between creating
            # its folder and linking in its locked marker): an empty folder holds nothing to lose
            if not os.listdir(dfd):
                with contextlib.suppress(OSError):
                    os.rmdir(parent / name)
                    return True
            return False
        try:
            if not _is_regular(mfd) or os.read(mfd, 4096) != _marker_bytes(target, token):
                return False
            if not _try_lock(mfd):
                return False  # its writer still runs (in this or another PID namespace)
            with contextlib.suppress(OSError, OutputError):
                old = os.lstat(OLD, dir_fd=dfd)
                if _is_dir_stat(old) and not (target.exists() or target.is_symlink()):
                    _rename_noreplace(parent / name / OLD, target)  # its own previous version
            shutil.rmtree(parent / name, ignore_errors=True)
            return True
        finally:
            os.close(mfd)
    finally:
        os.close(dfd)


def _is_regular(fd: int) -> bool:
    import stat

    return stat.S_ISREG(os.fstat(fd).st_mode)


def _is_dir_stat(st) -> bool:
    import stat

    return stat.S_ISDIR(st.st_mode)


def _lock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)


def _try_lock(fd: int) -> bool:
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def _locked_marker(folder: Path, data: bytes) -> int:
    """Create ``folder/MARKER`` holding ``data``, locked (flock) before it appears under that name,
    and return its descriptor: an unnamed file (``O_TMPFILE``) locked, filled and then linked in, or
    where that is not possible a ``.part`` file renamed into place."""
    fd = -1
    try:
        fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o600)
        _lock(fd)
        os.write(fd, data)
        os.link(f"/proc/self/fd/{fd}", folder / MARKER)
        return fd
    except (AttributeError, OSError) as e:
        if fd >= 0:
            os.close(fd)
        if isinstance(e, FileNotFoundError) and not folder.exists():
            raise
    staging = folder / (MARKER + ".part")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    _lock(fd)
    os.write(fd, data)
    os.rename(staging, folder / MARKER)
    return fd


class _Temp:
    """One writer's temp folder: ``path`` (the folder), ``new`` (where the output is built), and
    the locked marker's descriptor."""

    def __init__(self, target: Path):
        self.target = target
        self.fd = -1
        for attempt in range(5):
            token = secrets.token_hex(8)
            self.path = target.parent / _tmp_name(target, token)
            self.new = self.path / NEW
            os.mkdir(self.path, 0o700)
            try:
                self.fd = _locked_marker(self.path, _marker_bytes(target, token))
                return
            except FileNotFoundError:
                if attempt == 4 or self.path.exists():
                    raise
                # a reaper removed the folder while it was still empty: start again under a new name
            except BaseException:
                self.remove()
                raise

    def remove(self) -> None:
        """Remove the temp: its contents, then the marker, then the (empty) folder, so that a kill
        at any moment leaves something the reaper can prove stale."""
        with contextlib.suppress(OSError):
            for name in os.listdir(self.path):
                if name != MARKER:
                    p = self.path / name
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink()
        with contextlib.suppress(OSError):
            (self.path / MARKER).unlink()
        with contextlib.suppress(OSError):
            os.rmdir(self.path)
        if self.fd >= 0:
            os.close(self.fd)  # releases the lock after the folder is gone
            self.fd = -1


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
    return OutputError(f"{target}: already exists (another process wrote it meanwhile); "
                       "replacing it needs --force (force=True in Python)")


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
                tmp.remove()


@contextlib.contextmanager
def atomic_file(target: Path, *, replace: bool = True) -> Iterator:
    """Yield a binary file object; on clean exit it becomes ``target`` in one rename (which does
    not replace an existing ``target`` unless ``replace``)."""
    target = Path(target)
    with _writing(target, replace) as tmp:
        with open(tmp.new, "xb") as f:
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
        for p in tmp.new.iterdir():
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
