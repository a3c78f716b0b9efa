"""Atomic outputs: a temp file or folder beside the target, fsync, then one rename.

A reader of the output path sees either nothing, the previous version, or the complete new one.
Replacing an existing folder uses Linux's ``renameat2(RENAME_EXCHANGE)`` where available, so even
the swap leaves no moment without a complete output; elsewhere the old folder is moved aside first.
Temp names carry the writer's pid; temps left by a killed writer are removed by the next write.
Without ``replace`` (no --force) the final rename refuses to clobber an output that another process
created meanwhile (``RENAME_NOREPLACE``), so a run without --force never replaces anything.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import OutputError

TMP_MARK = ".mptkit-tmp-"


def _tmp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(target: Path) -> None:
    """Remove temps of ``target`` left by writers that no longer run. A previous version moved
    aside (``.old``, where folders cannot be exchanged atomically) by a writer killed before its
    replacement was in place is put back instead."""
    pat = re.compile(re.escape(f".{target.name}{TMP_MARK}") + r"(\d+)-[0-9a-f]+(\.old)?$")
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return
    for p in entries:
        m = pat.match(p.name)
        if m and not _pid_alive(int(m.group(1))):
            if m.group(2) and not (target.exists() or target.is_symlink()):
                with contextlib.suppress(OSError):
                    os.rename(p, target)
                continue
            with contextlib.suppress(OSError):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def check_target(target: Path, *, folder: bool, force: bool, inputs: Iterable[str] = ()) -> None:
    """Refuse outputs that would lose data: an existing one without --force, the input itself, or
    a file where a folder is wanted (and the reverse)."""
    real = os.path.realpath(target)
    for src in inputs:
        rs = os.path.realpath(src)
        how = ("is" if real == rs else "is inside" if real.startswith(rs + os.sep)
               else "contains" if rs.startswith(real + os.sep) else None)
        if how:
            raise OutputError(f"{target}: the output {how} the input {src}; write to another path (inputs are never modified)")
    if target.is_symlink() or target.exists():
        if folder and not target.is_dir():
            raise OutputError(
                f"{target}: exists and is a file, but an adapter-folder output needs a folder "
                "(name a path ending in .safetensors to write a bare file)"
            )
        if not folder and target.is_dir():
            raise OutputError(f"{target}: exists and is a folder, but a .safetensors output is a file")
        if not force:
            raise OutputError(f"{target}: already exists; pass --force to replace it")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _os_error(target: Path, e: OSError) -> OutputError:
    reason = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EFBIG: "the file is larger than this process may write (file size limit)",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
    }.get(e.errno, e.strerror or str(e))
    return OutputError(f"{target}: cannot write the output: {reason}; nothing was written")


def _prepare_parent(target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _os_error(target, e) from None
    clean_stale_temps(target)


def _exists_error(target: Path) -> OutputError:
    return OutputError(f"{target}: already exists (another process wrote it meanwhile); pass --force to replace it")


def _install(tmp: Path, target: Path, *, replace: bool) -> None:
    """Move the finished temp ``tmp`` to ``target`` in one rename."""
    if not replace:
        try:
            if _renameat2(tmp, target, RENAME_NOREPLACE):
                return
        except FileExistsError:
            raise _exists_error(target) from None
        if target.exists() or target.is_symlink():  # no renameat2: a small race remains
            raise _exists_error(target)
        os.rename(tmp, target)
        return
    for attempt in range(5):  # retried when a concurrent writer creates or swaps target meanwhile
        try:
            if tmp.is_dir() and target.is_dir() and not target.is_symlink():
                if _renameat2(tmp, target, RENAME_EXCHANGE):
                    shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old version
                else:
                    old = tmp.with_name(tmp.name + ".old")
                    os.rename(target, old)
                    os.rename(tmp, target)
                    shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
            return
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT) or attempt == 4 or not tmp.exists():
                raise


@contextlib.contextmanager
def atomic_file(target: Path, *, replace: bool = True) -> Iterator:
    """Yield a binary file object; on clean exit it becomes ``target`` in one rename (which does
    not replace an existing ``target`` unless ``replace``)."""
    target = Path(target)
    _prepare_parent(target)
    tmp = _tmp_name(target)
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _install(tmp, target, replace=replace)
        _fsync_dir(target.parent)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _os_error(target, e) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


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


@contextlib.contextmanager
def atomic_dir(target: Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield a temp folder to fill; on clean exit it replaces ``target`` atomically (or, without
    ``replace``, becomes ``target`` only if nothing is there)."""
    target = Path(target)
    _prepare_parent(target)
    tmp = _tmp_name(target)
    try:
        tmp.mkdir()
        yield tmp
        for p in sorted(tmp.rglob("*"), reverse=True):  # files, then the folders that hold them
            if p.is_dir():
                _fsync_dir(p)
                continue
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(tmp)
        _install(tmp, target, replace=replace)
        _fsync_dir(target.parent)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _os_error(target, e) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
