"""Finding a bank's files on the Hub and downloading them whole into the HF cache.

A revision is resolved to a commit id once (``HfApi.model_info(expand=["sha"])``) and every later
request names that commit. The bank's folder is listed (``HfApi.list_repo_tree``, one folder, not
the repo: a listing is capped at :data:`MAX_LISTING` entries, :data:`MAX_PAGES` pages and each
answer at :data:`mptkit.hub._http.API_CAP` decoded bytes); every name the server lists is checked before use. Each
downloaded file is verified against the checksum the listing gives for it (the LFS sha256, else the
git blob id) whatever the server's ``ETag`` says, then stored in the cache under that checksum
(:mod:`mptkit.hub._cache`). A file listed without a usable checksum is refused unless the user opts
out (``--allow-unverified`` or ``MPTKIT_ALLOW_UNVERIFIED=1``).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
from dataclasses import dataclass

from ..errors import HubError
from ..formats import _peft as peft
from . import _cache as cache, _client as client, _http as http
from ._refs import COMMIT, HubRef, cache_dir, endpoint, offline, safe_name

BANK_FILES = (peft.SAFETENSORS_NAME, peft.BIN_NAME)
#: most entries read from one folder's listing (a bank folder holds a handful)
MAX_LISTING = 100_000
#: most pages of one folder's listing: the Hub lists 1,000 entries a page (:data:`MAX_LISTING` in
#: 100), and a server can send pages of one entry, or none, each naming the next
MAX_PAGES = 200
#: an adapter_config.json larger than this is refused before it is downloaded (PEFT writes ~1 kB)
MAX_CONFIG_BYTES = 1 << 20
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Listed:
    """A file as the Hub's listing gives it."""

    name: str
    size: int
    sha256: str | None  # LFS files
    blob_id: str | None  # the git blob sha1 (of the LFS pointer, for an LFS file)

    @property
    def digest(self) -> str | None:
        """The checksum the file's bytes must have: the LFS sha256, else the git blob id."""
        return self.sha256 if self.sha256 is not None else (None if self.is_lfs else self.blob_id)

    is_lfs: bool = False


@dataclass
class Fetched:
    ref: HubRef
    commit: str
    path: str  # the bank (a folder or a file) inside the cache snapshot
    files: list[str]  # the repo files downloaded
    cached_only: bool = False  # answered from the cache (offline)


def allow_unverified(value: bool | None = None) -> bool:
    if value is not None:
        return value
    return os.environ.get("MPTKIT_ALLOW_UNVERIFIED", "").upper() in ("1", "TRUE", "YES", "ON")


# -- the commit and the listing ------------------------------------------------------------------
def resolve_commit(ref: HubRef, token: str | None) -> str:
    """The commit id ``ref``'s revision names now (asked once per command)."""
    api = client.api(token)
    with client.errors(ref, "look up the repo", token):
        info = api.model_info(ref.repo_id, revision=ref.revision, expand=["sha"])
    commit = getattr(info, "sha", None)
    if not isinstance(commit, str) or not COMMIT.match(commit):
        raise HubError(
            f"{ref}: the Hub at {client.where()} sent an answer that could not be used (commit id "
            f"{client.said(repr(commit)[:60])})"
        )
    return commit


def listing(ref: HubRef, commit: str, folder: str, token: str | None) -> tuple[dict[str, Listed], set[str]]:
    """The files (by repo path) and sub-folders directly in ``folder`` ("" for the root) at ``commit``."""
    api = client.api(token)
    files: dict[str, Listed] = {}
    folders: set[str] = set()
    where = f"list {folder or 'the repo root'}"
    with client.errors(ref, where, token), http.pages(MAX_PAGES, f"listing of {folder or 'the repo root'}"):
        for i, e in enumerate(api.list_repo_tree(ref.repo_id, folder or None, revision=commit, recursive=False)):
            if i >= MAX_LISTING:
                raise HubError(
                    f"{ref}: the server lists more than {MAX_LISTING:,} entries in {folder or 'the repo root'}"
                    " (a bank's folder holds a few files); refused"
                )
            name = getattr(e, "path", None)
            if not safe_name(name):
                raise HubError(
                    f"{ref}: the server lists a file name that would escape the download folder: "
                    f"{client.said(repr(name))} (refused)"
                )
            if not hasattr(e, "size"):
                folders.add(name)
                continue
            lfs = getattr(e, "lfs", None)
            sha = getattr(lfs, "sha256", None) if lfs is not None else None
            size = getattr(e, "size", None)
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise HubError(f"{ref}: the server lists {name} with size {client.said(repr(size)[:40])}; refused")
            if lfs is not None and getattr(lfs, "size", size) != size:
                raise HubError(f"{ref}: the server lists {name} with two sizes ({size} and {lfs.size}); refused")
            blob = getattr(e, "blob_id", None)
            files[name] = Listed(
                name,
                size,
                sha if isinstance(sha, str) and _HEX64.match(sha) else None,
                blob if isinstance(blob, str) and _HEX40.match(blob) else None,
                lfs is not None,
            )
    return files, folders


def choose(ref: HubRef, commit: str, token: str | None, adapter: str | None = None) -> tuple[list[Listed], str, bool]:
    """The files of the bank at ``ref`` (config first, weights last), its path in the repo, and
    whether ``adapter`` named a sub-folder (PEFT saves an adapter named X into ``X/``)."""
    path = ref.path
    parent = posixpath.dirname(path) if path else ""
    files, folders = listing(ref, commit, parent, token)
    if path:
        if path in files and posixpath.basename(path) != peft.CONFIG_NAME:
            return [files[path]], path, False
        if path in files:  # .../adapter_config.json names its folder
            path = parent
        elif path in folders:
            files, folders = listing(ref, commit, path, token)
        else:
            raise HubError(f"{ref}: no file or folder '{path}' in {ref.repo_id} at revision {ref.revision or 'main'}")
    sub = posixpath.join(path, adapter) if adapter else None
    if sub in folders and posixpath.join(path, peft.CONFIG_NAME) not in files:
        files, folders = listing(ref, commit, sub, token)
        picked, rel = pick(HubRef(ref.repo_id, ref.revision, sub), list(files))
        return [files[n] for n in picked], rel, True
    picked, rel = pick(ref, list(files))
    return [files[n] for n in picked], rel, False


def pick(ref: HubRef, names: list[str]) -> tuple[list[str], str]:
    """Which of the files ``names`` (all in the bank's folder, or the file ``ref`` names) make the
    bank, and the bank's path in the repo."""
    bad = [n for n in names if not safe_name(n)]
    if bad:
        raise HubError(
            f"{ref}: the server lists a file name that would escape the download folder: "
            f"{client.said(repr(bad[0]))} (refused)"
        )
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
        raise HubError(
            f"{ref}: {prefix}{peft.CONFIG_NAME} is there but neither {peft.SAFETENSORS_NAME} nor "
            f"{peft.BIN_NAME} is beside it"
        )
    here = sorted(n for n in names if n.startswith(prefix) and "/" not in n[len(prefix) :])
    bare = [n for n in here if n.lower().endswith(".safetensors")]
    if len(bare) == 1:
        return bare, bare[0]
    if bare:
        shown = ", ".join(bare[:6]) + (f" and {len(bare) - 6} more" if len(bare) > 6 else "")
        raise HubError(
            client.said(
                f"{ref}: holds several .safetensors files ({shown}); name one, as in hf://{ref.repo_id}/{bare[0]}",
                limit=None,
            )
        )
    found = ", ".join(here[:8]) or "nothing"
    raise HubError(
        client.said(
            f"{ref}: no prompt bank here: expected {peft.CONFIG_NAME} with {peft.SAFETENSORS_NAME} "
            f"(a PEFT adapter) or one .safetensors file (found: {found})",
            limit=None,
        )
    )


# -- whole files ---------------------------------------------------------------------------------
def download(ref: HubRef, commit: str, f: Listed, token: str | None, *, unverified: bool | None = None) -> str:
    """The cached copy of ``f`` at ``commit`` (downloaded and verified first if need be)."""
    digest = f.digest
    if digest is None and not allow_unverified(unverified):
        raise HubError(
            f"{ref}: the Hub lists no usable checksum for {f.name} (no LFS sha256, no git blob id), so "
            "its download could not be verified; refused (pass --allow-unverified, or set "
            "MPTKIT_ALLOW_UNVERIFIED=1, to take it unchecked)"
        )
    if f.name.endswith(peft.CONFIG_NAME) and f.size > MAX_CONFIG_BYTES:
        raise HubError(
            f"{ref}: {f.name} is listed at {f.size:,} bytes; an adapter_config.json is about 1 kB "
            f"(mptkit reads at most {MAX_CONFIG_BYTES:,}); refused"
        )
    hit = cache.cached(ref, commit, f.name, digest)
    if hit is not None and os.path.getsize(hit) == f.size:
        return hit
    from huggingface_hub import hf_hub_url

    url = hf_hub_url(ref.repo_id, f.name, revision=commit, endpoint=endpoint())
    sha256 = hashlib.sha256() if f.sha256 is not None or digest is None else None
    sha1 = hashlib.sha1(b"blob %d\0" % f.size) if sha256 is None else None
    with cache.download(ref.repo_id) as d, _bar(f) as bar:

        def sink(chunk: bytes) -> None:
            d.file.write(chunk)
            (sha256 or sha1).update(chunk)
            bar.update(len(chunk))

        with client.errors(ref, f"download {f.name}", token):
            http.get_bytes(url, token, commit=commit, start=0, length=f.size, total=f.size, sink=sink)
        got = (sha256 or sha1).hexdigest()
        if digest is not None and got != digest:
            raise HubError(
                f"{ref}: the download of {f.name} is corrupt: its checksum {got[:12]} differs from the "
                f"{'sha256' if f.sha256 else 'git blob id'} {digest[:12]} the Hub lists for it (the server "
                "or a proxy sent other bytes); nothing was kept, so the next try downloads it again"
            )
        blob = d.keep(digest or got)
    if sha256 is not None:
        from .._bank import file_sha256

        file_sha256(str(blob), known=got)
    return str(cache.link(ref.repo_id, commit, f.name, blob))


class _NoBar:
    def update(self, n: int) -> None:
        pass


def _bar(f: Listed):
    """The client's progress bar for a download: on a terminal only, and not where the client's
    bars are off (``--quiet``, ``HF_HUB_DISABLE_PROGRESS_BARS``)."""
    import contextlib
    import sys

    from huggingface_hub.utils import are_progress_bars_disabled, tqdm as hf_tqdm

    if are_progress_bars_disabled() or not sys.stderr.isatty():
        return contextlib.nullcontext(_NoBar())
    return hf_tqdm(total=f.size, unit="B", unit_scale=True, desc=posixpath.basename(f.name))


def fetch(
    ref: HubRef | str,
    *,
    token: str | None = None,
    quiet: bool | None = None,
    unverified: bool | None = None,
    limits: http.Limits | None = None,
) -> Fetched:
    """Download the files of the bank at ``ref`` into the HF cache (or find them there when offline)."""
    from ._refs import parse_ref

    ref = parse_ref(ref) if isinstance(ref, str) else ref
    if offline():
        return from_cache(ref)
    with http.limited(limits or http.limits()), client.progress(quiet):
        commit = resolve_commit(ref, token)
        chosen, rel, _ = choose(ref, commit, token)
        for f in chosen:
            download(ref, commit, f, token, unverified=unverified)
    cache.remember(ref.repo_id, ref.revision or "main", commit)
    snapshot = str(cache.pointer(ref.repo_id, commit, "x").parent)
    return Fetched(ref, commit, os.path.join(snapshot, *rel.split("/")) if rel else snapshot, [f.name for f in chosen])


def from_cache(ref: HubRef) -> Fetched:
    """The bank at ``ref`` from the cache alone (``HF_HUB_OFFLINE``), each file checked against its blob."""
    rev = ref.revision or "main"
    commit = cache.commit_for(ref.repo_id, rev)
    names = cache.snapshot_names(ref.repo_id, commit) if commit else []
    if not names:
        raise HubError(
            f"{ref}: HF_HUB_OFFLINE is set and the local cache ({cache_dir()}) holds no copy of "
            f"{ref.repo_id} at revision {rev}; pull it once while online"
        )
    try:
        files, rel = pick(ref, names)
    except HubError as e:
        raise HubError(f"{e.message} (in the local cache; HF_HUB_OFFLINE is set, so the Hub was not asked)") from None
    for name in files:
        if cache.cached(ref, commit, name) is None:
            raise HubError(
                f"{ref}: HF_HUB_OFFLINE is set and the cached copy of {name} cannot be checked (it is not a "
                "blob named by its checksum); pull it again while online"
            )
    snapshot = str(cache.pointer(ref.repo_id, commit, "x").parent)
    return Fetched(ref, commit, os.path.join(snapshot, *rel.split("/")) if rel else snapshot, files, cached_only=True)
