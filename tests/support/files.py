"""Digests and temps of files and folders, to prove what a command wrote, or left alone."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

TMP_MARK = ".mptkit-tmp-"


def sha256_tree(path) -> str:
    """A digest of a file or of every file under a folder (names and bytes)."""
    p = Path(path)
    h = hashlib.sha256()
    files = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())
    for f in files:
        h.update(str(f.relative_to(p.parent)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def digest(path) -> str | None:
    """Content digest of a file, or of a folder's files by name (independent of the folder's own
    name); None when nothing is there."""
    p = Path(path)
    if not (p.exists() or p.is_symlink()):
        return None
    if p.is_file():
        return hashlib.sha256(p.read_bytes()).hexdigest()
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(str(f.relative_to(p)).encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return "dir:" + h.hexdigest()


def temps(target) -> list[Path]:
    """Temps of ``target`` (its writers' leftovers) in its folder."""
    t = Path(target)
    return sorted(p for p in t.parent.iterdir() if p.name.startswith(f".{t.name}{TMP_MARK}"))


def stat_key(path):
    """What changes when a path is written in place or replaced."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns
