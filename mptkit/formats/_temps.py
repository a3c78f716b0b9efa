"""The temps of atomic writes, and the reaper that removes those of writers that are gone.

A temp is a hidden folder ``.NAME.mptkit-tmp-PID-TOKEN/`` beside the target, holding the new file
or folder (``new``) and a marker (``.mptkit-writer``: the token and the target's name) that the
writer keeps locked (``flock``) from before the marker has its name until the temp is gone. The
lock, not the pid, says whether the writer still runs, so it holds across PID namespaces. The
reaper removes a temp only when it is provably a writer's own and that writer is gone: a folder
(not a link) owned by this user, whose marker names this target with the token of the folder's
name, and whose lock is free; or an empty folder of that name (a writer killed between creating it
and linking in its marker). Nothing else is deleted, and the only thing ever renamed in is the
previous version that such a dead writer had moved aside (``old``) while the target is missing.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from pathlib import Path

try:
    import fcntl
except ImportError:  # no flock (Windows): nothing can prove a writer gone there, so nothing is reaped
    fcntl = None

from ._targets import name_max

TMP_MARK = ".mptkit-tmp-"
MARKER = ".mptkit-writer"
NEW, OLD = "new", "old"  # inside a temp: the output being written; the previous version moved aside
_MAGIC = b"mptkit temp v1\n"
_TEMP_NAME = re.compile(r"^\.(.*)" + re.escape(TMP_MARK) + r"(\d+)-([0-9a-f]{16})$", re.S)


def _tmp_name(target: Path, token: str) -> str:
    """``.NAME.mptkit-tmp-PID-TOKEN``, with NAME shortened (by bytes) so the whole fits in NAME_MAX."""
    tail = f"{TMP_MARK}{os.getpid()}-{token}"
    room = name_max(target.parent) - 1 - len(tail)
    raw = os.fsencode(target.name)[: max(room, 0)]
    return "." + os.fsdecode(raw) + tail


def _marker_bytes(target: Path, token: str) -> bytes:
    return _MAGIC + token.encode() + b"\n" + os.fsencode(target.name)


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
            with contextlib.suppress(OSError):
                old = os.lstat(OLD, dir_fd=dfd)
                if _is_dir_stat(old) and not os.path.lexists(target):
                    # its own previous version; a folder: rename(2) cannot replace a non-empty one
                    os.rename(parent / name / OLD, target)
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


class Temp:
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
