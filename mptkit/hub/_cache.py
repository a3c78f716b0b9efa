"""The HF hub cache, in the client's layout (``models--owner--name/{blobs,snapshots/<commit>,refs}``)
so that ``hf_hub_download``, transformers and PEFT find what mptkit puts there, but written only
under names mptkit chooses.

The client names a blob after the server's ``ETag`` (huggingface_hub 2.4 stores
``blobs/<etag>`` unchecked: an ETag of ``../../x`` writes outside the cache). mptkit names a blob
after the checksum the Hub's listing gives for the file (the LFS sha256, else the git blob id), and
only once the downloaded bytes match it; snapshot entries are the listed repo paths (checked by
:func:`~mptkit.hub._refs.safe_name`) under the commit id mptkit resolved (40 hex digits). A download
is written to a temp file in ``blobs/`` that its writer holds locked (``flock``) and renamed into
place when complete: a failed or killed download leaves no blob, and the next download removes
temps whose lock is free. Reading the cache goes through the client's ``try_to_load_from_cache``;
each blob is checked against its name before use.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import uuid
from pathlib import Path

from .._bank import file_sha256
from ..errors import HubError, OutputError
from ._refs import COMMIT, HubRef, cache_dir

_DIGEST = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_TEMP = re.compile(r"^\.mptkit-download-\d+-[0-9a-f]{12}\.incomplete$")


def storage(repo_id: str) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return Path(cache_dir(), repo_folder_name(repo_id=repo_id, repo_type="model"))


def unwritable(e: OSError) -> OutputError:
    reason = {
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EFBIG: "the file is larger than this process may write (ulimit -f)",
    }.get(e.errno, e.strerror or str(e))
    return OutputError(
        f"cannot write to the HF cache at {cache_dir()}: {reason}; nothing was kept (set HF_HUB_CACHE "
        "or HF_HOME to a writable folder)"
    )


def git_blob_sha1(path: str | os.PathLike) -> str:
    h = hashlib.sha1(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def checked(path: str | os.PathLike, digest: str) -> bool:
    """Whether the file holds the bytes ``digest`` names (64 hex: sha256, remembered by file
    identity; 40 hex: git blob sha1)."""
    if len(digest) == 64:
        return file_sha256(os.fspath(path)) == digest
    return git_blob_sha1(path) == digest


class Download:
    """A blob being written: ``file`` takes the bytes; :meth:`keep` names the blob."""

    def __init__(self, blobs: Path):
        self.blobs = blobs
        self.temp = blobs / f".mptkit-download-{os.getpid()}-{uuid.uuid4().hex[:12]}.incomplete"
        fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self.file = os.fdopen(fd, "wb")
        self.kept: Path | None = None

    def keep(self, digest: str) -> Path:
        if not _DIGEST.match(digest):
            raise ValueError(f"not a checksum: {digest!r}")
        self.file.flush()
        os.fsync(self.file.fileno())
        target = self.blobs / digest
        os.replace(self.temp, target)
        self.kept = target
        return target

    def discard(self) -> None:
        if self.kept is None:
            with contextlib.suppress(OSError):
                os.unlink(self.temp)
        self.file.close()


@contextlib.contextmanager
def download(repo_id: str):
    """A :class:`Download` in ``repo_id``'s ``blobs/``: removed unless kept, whatever happens."""
    blobs = storage(repo_id) / "blobs"
    try:
        blobs.mkdir(parents=True, exist_ok=True)
        _reap(blobs)
        d = Download(blobs)
    except OSError as e:
        raise unwritable(e) from None
    try:
        yield d
    except OSError as e:  # writing the blob: the network's errors reach here as HubError
        raise unwritable(e) from None
    finally:
        d.discard()


def _reap(blobs: Path) -> None:
    """Remove download temps whose writer is gone (its lock is free)."""
    for p in blobs.iterdir():
        if not _TEMP.match(p.name):
            continue
        with contextlib.suppress(OSError):
            fd = os.open(p, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.unlink(p)
            except BlockingIOError:
                pass  # still being written
            finally:
                os.close(fd)


def pointer(repo_id: str, commit: str, name: str) -> Path:
    if not COMMIT.match(commit):
        raise ValueError(f"not a commit id: {commit!r}")
    return storage(repo_id).joinpath("snapshots", commit, *name.split("/"))


def link(repo_id: str, commit: str, name: str, blob: Path) -> Path:
    """Point ``snapshots/<commit>/<name>`` at ``blob`` (a relative symlink, as the client makes; a
    copy where symlinks are not allowed). Returns the snapshot path."""
    p = pointer(repo_id, commit, name)
    tmp = p.with_name(f".{p.name}.mptkit-link-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.symlink(os.path.relpath(blob, p.parent), tmp)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            import shutil

            shutil.copyfile(blob, tmp)
        os.replace(tmp, p)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise unwritable(e) from None
    return p


def remember(repo_id: str, revision: str, commit: str) -> None:
    """Note that ``revision`` (a branch or tag) named ``commit``, as the client does, for offline use."""
    if revision == commit:
        return
    ref = storage(repo_id).joinpath("refs", *revision.split("/"))
    tmp = ref.with_name(f".{ref.name}.mptkit-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(commit, encoding="ascii")
        os.replace(tmp, ref)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise unwritable(e) from None


def commit_for(repo_id: str, revision: str) -> str | None:
    """The commit a revision named when it was last resolved online (None: unknown here)."""
    if COMMIT.match(revision):
        return revision
    with contextlib.suppress(OSError, UnicodeDecodeError):
        text = storage(repo_id).joinpath("refs", *revision.split("/")).read_text(encoding="ascii").strip()
        if COMMIT.match(text):
            return text
    return None


def cached(ref: HubRef, commit: str, name: str, digest: str | None = None) -> str | None:
    """The cached copy of repo file ``name`` at ``commit``, checked against its blob's name (and
    ``digest``, the checksum listed for it, when given); None when there is none. A copy whose
    bytes do not match is removed, so that the next download replaces it."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(ref.repo_id, name, cache_dir=cache_dir(), revision=commit)
    if not isinstance(path, str):
        return None
    real = os.path.realpath(path)
    blob = os.path.basename(real)
    known = _DIGEST.match(blob) and os.path.basename(os.path.dirname(real)) == "blobs"
    if digest is not None and known and blob != digest:
        return None  # another version of the file: download the listed one
    if not known:
        if digest is None or not checked(real, digest):
            return None  # a copy mptkit cannot check (not a blob named by its checksum)
        return path
    if checked(real, blob):
        return path
    for p in (path, real):
        with contextlib.suppress(OSError):
            os.unlink(p)
    raise HubError(
        f"{ref}: the cached copy of {name} does not match its checksum (the cache was changed, or was "
        "filled by an unchecked download); it was removed, so the next pull downloads it again"
    )


def snapshot_names(repo_id: str, commit: str) -> list[str]:
    """The repo paths a cached snapshot holds."""
    root = storage(repo_id) / "snapshots" / commit
    if not root.is_dir():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
