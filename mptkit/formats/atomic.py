"""Atomic outputs: a temp file or folder beside the target, fsync, then one rename.

A reader of the output path sees either nothing, the previous version, or the complete new one.
Replacing an existing folder uses Linux's ``renameat2(RENAME_EXCHANGE)`` where available, so even
the swap leaves no moment without a complete output; elsewhere the old folder is moved aside first.
Temp names carry the writer's pid; temps left by a killed writer are removed by the next write.
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
    """Remove temps of ``target`` left by writers that no longer run."""
    pat = re.compile(re.escape(f".{target.name}{TMP_MARK}") + r"(\d+)-[0-9a-f]+(\.old)?$")
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return
    for p in entries:
        m = pat.match(p.name)
        if m and not _pid_alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def check_target(target: Path, *, folder: bool, force: bool, inputs: Iterable[str] = ()) -> None:
    """Refuse outputs that would lose data: an existing one without --force, the input itself, or
    a file where a folder is wanted (and the reverse)."""
    real = os.path.realpath(target)
    for src in inputs:
        rs = os.path.realpath(src)
        if real == rs or rs.startswith(real + os.sep) or real.startswith(rs + os.sep):
            raise OutputError(f"{target}: the output is the input {src}; write to another path (inputs are never modified)")
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


@contextlib.contextmanager
def atomic_file(target: Path) -> Iterator:
    """Yield a binary file object; on clean exit it becomes ``target`` in one rename."""
    target = Path(target)
    _prepare_parent(target)
    tmp = _tmp_name(target)
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _os_error(target, e) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    rc = fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temp folder to fill; on clean exit it replaces ``target`` atomically."""
    target = Path(target)
    _prepare_parent(target)
    tmp = _tmp_name(target)
    try:
        tmp.mkdir()
        yield tmp
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(tmp)
        if target.is_dir() and not target.is_symlink():
            if _exchange(tmp, target):
                shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old version
            else:
                old = tmp.with_name(tmp.name + ".old")
                os.rename(target, old)
                os.rename(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _os_error(target, e) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
