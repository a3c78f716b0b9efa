"""Downloads: the files of a bank into the HF cache (or a plain folder), and remote inspect
from the safetensors header alone."""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .._version import __version__
from ..bank import PromptBank
from ..errors import HubError, InvalidBank, UsageError
from ..formats import peft
from . import client
from .refs import COMMIT, HubRef, cache_dir, endpoint, offline, parse_ref, safe_name


# -- choosing the files of a bank ----------------------------------------------------------------
BANK_FILES = (peft.SAFETENSORS_NAME, peft.BIN_NAME)


def _choose(ref: HubRef, names: list[str]) -> tuple[list[str], str]:
    """The repo files the bank at ``ref`` needs, and the bank's path (a folder or a file) in the repo."""
    bad = [n for n in names if not safe_name(n)]
    if bad:
        raise HubError(f"{ref}: the server lists a file name that would escape the download folder: "
                       f"{bad[0]!r} (refused)")
    path = ref.path
    if path and path in names and posixpath.basename(path) != peft.CONFIG_NAME:
        return [path], path
    if path and posixpath.basename(path) == peft.CONFIG_NAME and path in names:
        path = posixpath.dirname(path)
    prefix = f"{path}/" if path else ""
    if path and not any(n.startswith(prefix) for n in names):
        raise HubError(f"{ref}: no file or folder '{path}' in {ref.repo_id} at revision {ref.revision or 'main'}")
    if prefix + peft.CONFIG_NAME in names:
        for w in BANK_FILES:
            if prefix + w in names:
                return [prefix + peft.CONFIG_NAME, prefix + w], path
        raise HubError(f"{ref}: {prefix}{peft.CONFIG_NAME} is there but neither {peft.SAFETENSORS_NAME} nor "
                       f"{peft.BIN_NAME} is beside it")
    here = sorted(n for n in names if n.startswith(prefix) and "/" not in n[len(prefix):])
    bare = [n for n in here if n.lower().endswith(".safetensors")]
    if len(bare) == 1:
        return bare, bare[0]
    if bare:
        shown = ", ".join(bare[:6]) + (f" and {len(bare) - 6} more" if len(bare) > 6 else "")
        raise HubError(f"{ref}: holds several .safetensors files ({shown}); name one, as in "
                       f"hf://{ref.repo_id}/{bare[0]}")
    found = ", ".join(here[:8]) or "nothing"
    raise HubError(f"{ref}: no prompt bank here: expected {peft.CONFIG_NAME} with {peft.SAFETENSORS_NAME} "
                   f"(a PEFT adapter) or one .safetensors file (found: {found})")


# -- fetching into the cache ---------------------------------------------------------------------
@dataclass
class Fetched:
    ref: HubRef
    commit: str
    path: str  # the bank (a folder or a file) inside the cache snapshot
    files: list[str]  # the repo files downloaded
    cached_only: bool = False  # answered from the cache (offline)


def _storage(repo_id: str) -> Path:
    return Path(cache_dir(), "models--" + repo_id.replace("/", "--"))


def _remember_ref(repo_id: str, revision: str, commit: str) -> None:
    """Note in the cache which commit a branch or tag named (as the client does), for offline use."""
    if revision == commit:
        return
    ref_path = _storage(repo_id) / "refs" / revision
    with contextlib.suppress(OSError):
        ref_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref_path.with_name(f".{ref_path.name}.{os.getpid()}.tmp")
        tmp.write_text(commit, encoding="ascii")
        os.replace(tmp, ref_path)


def _from_cache(ref: HubRef) -> Fetched:
    storage = _storage(ref.repo_id)
    rev = ref.revision or "main"
    commit = rev if COMMIT.match(rev) else None
    if commit is None:
        with contextlib.suppress(OSError):
            commit = (storage / "refs" / rev).read_text(encoding="ascii").strip()
    snapshot = storage / "snapshots" / commit if commit and COMMIT.match(commit) else None
    if snapshot is None or not snapshot.is_dir():
        raise HubError(f"{ref}: HF_HUB_OFFLINE is set and the local cache ({cache_dir()}) holds no copy of "
                       f"{ref.repo_id} at revision {rev}; pull it once while online")
    names = sorted(str(p.relative_to(snapshot).as_posix()) for p in snapshot.rglob("*") if p.is_file())
    try:
        files, rel = _choose(ref, names)
    except HubError as e:
        raise HubError(f"{e.message} (in the local cache; HF_HUB_OFFLINE is set, so the Hub was not asked)") from None
    return Fetched(ref, commit, str(snapshot / rel) if rel else str(snapshot), files, cached_only=True)


def fetch(ref: HubRef | str, *, token: str | None = None, quiet: bool | None = None) -> Fetched:
    """Download the files of the bank at ``ref`` into the HF cache (or find them there when offline)."""
    ref = parse_ref(ref) if isinstance(ref, str) else ref
    if offline():
        return _from_cache(ref)
    from huggingface_hub import hf_hub_download

    api = client.api(token)
    with client.errors(ref, "look up the repo"):
        info = api.repo_info(ref.repo_id, revision=ref.revision)
        commit, names = info.sha, [s.rfilename for s in (info.siblings or [])]
    if not isinstance(commit, str) or not COMMIT.match(commit):
        raise HubError(f"{ref}: the Hub at {client.where()} sent an answer that could not be used (commit id {commit!r})")
    files, rel = _choose(ref, names)
    local = []
    with client.progress(quiet):
        for name in files:
            with client.errors(ref, f"download {name}"):
                local.append(hf_hub_download(ref.repo_id, name, revision=commit, cache_dir=cache_dir(),
                                             endpoint=endpoint(), token=token, library_name="mptkit",
                                             library_version=__version__))
            _check_blob(local[-1], ref, name)
    _remember_ref(ref.repo_id, ref.revision or "main", commit)
    snapshot = local[0][: len(local[0]) - len(files[0])].rstrip("/\\")
    return Fetched(ref, commit, os.path.join(snapshot, rel) if rel else snapshot, files)


def _check_blob(local: str, ref: HubRef, name: str) -> None:
    """The HF cache names each blob by the Hub's etag: the sha256 of an LFS file, the git blob sha1
    of any other. A blob whose bytes do not match (a server or proxy that sent other bytes of the
    right size) is removed, so that it is not served from the cache ever after."""
    import hashlib

    from ..bank import file_sha256

    real = os.path.realpath(local)
    etag = os.path.basename(real)
    if os.path.basename(os.path.dirname(real)) != "blobs" or not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", etag):
        return  # not the cache layout we know: nothing to compare with
    if len(etag) == 64:
        got = file_sha256(real)
    else:
        h = hashlib.sha1(b"blob %d\0" % os.path.getsize(real))
        with open(real, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        got = h.hexdigest()
    if got != etag:
        for p in (real, local):
            with contextlib.suppress(OSError):
                os.unlink(p)
        raise HubError(f"{ref}: the download of {name} is corrupt (its checksum {got[:12]} differs from the Hub's "
                       f"{etag[:12]}); it was removed from the cache, so the next try downloads it again")


def resolve(ref: str) -> str:
    """The local path (in the HF cache) of the bank an ``hf://`` reference names; what
    :func:`mptkit.load` reads."""
    return fetch(ref).path


# -- pull ----------------------------------------------------------------------------------------
def pull(repo: str, output: str | os.PathLike | None = None, *, revision: str | None = None, force: bool = False,
         token: str | None = None, quiet: bool | None = None) -> tuple[PromptBank, Fetched]:
    """Download and validate a bank. Without ``output`` it stays in the HF cache; with ``output``
    its files are copied into that plain folder (atomically). Returns the bank (read from where it
    now is) and what was fetched."""
    from ..formats import atomic, read

    ref = parse_ref(repo)
    if revision:
        if ref.revision and ref.revision != revision:
            raise UsageError(f"{repo}: names revision '{ref.revision}' but --revision says '{revision}'")
        ref = HubRef(ref.repo_id, revision, ref.path)
    if output is not None:
        target = Path(output)
        atomic.check_target(target, folder=True, force=force)
    got = fetch(ref, token=token, quiet=quiet)
    bank = read(got.path)  # validates; an invalid bank is reported before anything is written
    if output is None:
        bank.source.path = str(ref)
        return bank, got
    if os.path.isfile(got.path):
        sources = [got.path]
    else:
        sources = [os.path.join(got.path, posixpath.basename(f)) for f in got.files]
    with atomic.atomic_dir(target, replace=force) as tmp:
        for src in sources:
            shutil.copyfile(src, tmp / os.path.basename(src))
    bank = read(target / os.path.basename(got.path) if os.path.isfile(got.path) else target)
    return bank, got


# -- remote inspect ------------------------------------------------------------------------------
REMOTE_NOTE = ("remote: read only the safetensors header (HTTP range requests) and adapter_config.json; "
               "the tensor data was not downloaded")


def remote_summary(ref: str, *, token: str | None = None) -> dict:
    """What :func:`mptkit.info.summary` says about a bank on the Hub, from its safetensors header
    (range requests) and adapter_config.json only; the tensor data is not downloaded. Offline, or
    for a pickle (no header to read), the bank is read from the cache or downloaded instead."""
    from huggingface_hub import hf_hub_download

    from ..formats import from_header
    from ..formats import safetensors as st
    from ..info import summary

    r = parse_ref(ref)
    if offline():
        s = summary(_load(ref))
        s["notes"].append("read from the local cache (HF_HUB_OFFLINE is set)")
        return s
    api = client.api(token)
    with client.errors(r, "look up the repo"):
        info = api.repo_info(r.repo_id, revision=r.revision, files_metadata=True)
        commit = info.sha
        sizes = {s.rfilename: s.size for s in (info.siblings or [])}
    if not isinstance(commit, str) or not COMMIT.match(commit):
        raise HubError(f"{r}: the Hub at {client.where()} sent an answer that could not be used (commit id {commit!r})")
    files, rel = _choose(r, list(sizes))
    weights = files[-1]
    if not weights.lower().endswith(".safetensors"):
        s = summary(_load(ref))
        s["notes"].append(f"remote: {posixpath.basename(weights)} is a pickle, which has no header to read "
                          "remotely: it was downloaded in full")
        return s
    at = HubRef(r.repo_id, commit, weights)
    config = config_file = None
    if len(files) == 2:
        cfg_ref = HubRef(r.repo_id, r.revision, files[0])
        with client.errors(cfg_ref, f"download {files[0]}"):
            local = hf_hub_download(r.repo_id, files[0], revision=commit, cache_dir=cache_dir(), endpoint=endpoint(),
                                    token=token, library_name="mptkit", library_version=__version__)
        config, config_file = peft.read_config(local, str(cfg_ref)), str(cfg_ref)
    with client.errors(at, "read the safetensors header"):
        meta = api.parse_safetensors_file_metadata(r.repo_id, weights, revision=commit)
        tensors = {k: {"dtype": t.dtype, "shape": list(t.shape) if isinstance(t.shape, (list, tuple)) else t.shape,
                       "data_offsets": list(t.data_offsets)} for k, t in meta.tensors.items()}
    size = sizes.get(weights)
    size = size if isinstance(size, int) and not isinstance(size, bool) else None
    shown = str(HubRef(r.repo_id, r.revision, weights))
    # The client does not say how long the header is, so the data section is taken to end where the
    # last tensor ends: offsets past the end of the file are caught, trailing bytes are not (pull
    # checks the whole file).
    ends = [t["data_offsets"][1] for t in tensors.values()
            if len(t["data_offsets"]) == 2 and all(type(o) is int for o in t["data_offsets"])]
    data_len = max(ends, default=0)
    start = max(8, size - data_len) if size is not None else 8
    header = st.Header(shown, tensors, meta.metadata or None, start, size if size is not None else start + data_len)
    problems = st.layout_problems(header)
    if problems:
        raise InvalidBank(f"{shown}: {problems[0]}", [f"{shown}: {p}" for p in problems])
    fmt = "peft-adapter" if config is not None else "safetensors"
    bank = from_header(header, shown=str(r), fmt=fmt, config=config, config_file=config_file)
    s = summary(bank)
    s["file_size"] = size
    s["remote"] = {"repo": r.repo_id, "revision": r.revision or "main", "commit": commit, "file": weights,
                   "downloaded": "safetensors header and adapter_config.json only"}
    s["notes"].append(REMOTE_NOTE)
    return s




def _load(ref: str) -> PromptBank:
    from ..formats import read

    bank = read(resolve(ref))
    bank.source.path = ref
    return bank
