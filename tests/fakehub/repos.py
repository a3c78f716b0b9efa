"""What the fake Hub holds: repos with commits and branches, and file content (``bytes``, or a
:class:`Blob` read on demand), with the digests the Hub lists (git blob sha1, LFS sha256)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Blob:
    """File content of ``size`` bytes read on demand by ``read(offset, n)``; digests computed once."""

    def __init__(self, size: int, read: Callable[[int, int], bytes]):
        self.size, self._read = size, read
        self._sha256 = self._sha1 = None

    @classmethod
    def file(cls, path) -> Blob:
        path = os.fspath(path)

        def read(offset, n):
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(n)

        return cls(os.path.getsize(path), read)

    @classmethod
    def pattern(cls, size: int, head: bytes = b"", fill: bytes = b" ", tail: bytes = b"") -> Blob:
        """``head``, then ``fill`` repeated, then ``tail``: a huge JSON file in a few bytes of memory."""
        body = size - len(head) - len(tail)

        def read(offset, n):
            out = bytearray()
            end = min(offset + n, size)
            pos = offset
            while pos < end:
                if pos < len(head):
                    part = head[pos:end]
                elif pos < len(head) + body:
                    k = pos - len(head)
                    m = min(end - pos, len(head) + body - pos, 1 << 20)
                    reps = fill * ((k % len(fill) + m) // len(fill) + 2)
                    part = reps[k % len(fill) : k % len(fill) + m]
                else:
                    part = tail[pos - len(head) - body : end - len(head) - body]
                out += part
                pos += len(part)
            return bytes(out)

        return cls(size, read)

    def read(self, offset: int, n: int) -> bytes:
        return self._read(offset, max(0, min(n, self.size - offset)))

    def chunks(self, start: int = 0, end: int | None = None, step: int = 1 << 20) -> Iterable[bytes]:
        end = self.size if end is None else end
        for pos in range(start, end, step):
            yield self.read(pos, min(step, end - pos))

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            h = hashlib.sha256()
            for c in self.chunks():
                h.update(c)
            self._sha256 = h.hexdigest()
        return self._sha256

    @property
    def sha1(self) -> str:
        if self._sha1 is None:
            h = hashlib.sha1(b"blob %d\0" % self.size)
            for c in self.chunks():
                h.update(c)
            self._sha1 = h.hexdigest()
        return self._sha1


def size_of(data) -> int:
    return data.size if isinstance(data, Blob) else len(data)


def read_range(data, offset: int, n: int) -> bytes:
    return data.read(offset, n) if isinstance(data, Blob) else bytes(data[offset : offset + n])


def sha256_of(data) -> str:
    return data.sha256 if isinstance(data, Blob) else hashlib.sha256(data).hexdigest()


def sha1_of(data) -> str:
    return data.sha1 if isinstance(data, Blob) else git_blob_sha1(data)


def is_lfs(path: str) -> bool:
    return path.lower().endswith((".safetensors", ".bin", ".pt", ".pth"))


def lfs_pointer(data) -> bytes:
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256_of(data)}\nsize {size_of(data)}\n"
    ).encode()


@dataclass
class Commit:
    sha: str
    files: dict[str, bytes | Blob]
    parent: str | None
    message: str


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branch / tag / refs/pr/N -> commit sha
    num_prs: int = 0

    def resolve(self, rev: str) -> Commit | None:
        sha = self.refs.get(rev, rev)
        return self.commits.get(sha)
