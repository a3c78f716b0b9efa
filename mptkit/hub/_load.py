"""Banks from the Hub: :func:`open_bank` (what ``mptkit.load("hf://...")`` does), :func:`pull`
(whole, or ``tasks=`` for a partial copy) and :func:`remote_summary` (``inspect hf://...``).

An ``hf://`` safetensors bank is opened without downloading its data: the revision is resolved to a
commit once, the (small) ``adapter_config.json`` is downloaded and verified, the header is read with
a range request, and the tensors read through :class:`~mptkit.hub._remote.RemoteFile`, so an
operation moves only the bytes it needs (one task's rows, the shared prompt). A bank already in the
HF cache at that commit (a full pull) is read from there; so is everything offline. A ``.bin``
pickle, a file under :data:`WHOLE_BELOW`, or one listed without an LFS sha256 is downloaded whole
(and verified).
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from .._bank import PromptBank, Source, select_tasks
from ..errors import InvalidBank, UsageError
from ..formats import _peft as peft
from . import _cache as cache, _client as client, _http as http
from ._refs import HubRef, offline, parse_ref
from ._remote import RemoteFile, Where
from ._transfer import Fetched, choose, download, fetch, from_cache, resolve_commit

#: files smaller than this are downloaded whole (verified, cached) rather than read by ranges
WHOLE_BELOW = 1 << 20
REMOTE_NOTE = (
    "remote: read only the safetensors header (HTTP range requests) and adapter_config.json; "
    "the tensor data was not downloaded"
)


def _read_local(
    path: str,
    shown: str,
    kind: str | None,
    facts: dict | None,
    snapshot: str | None = None,
    root: str | None = None,
    adapter: str | None = None,
) -> PromptBank:
    """Read a bank from the cache; messages name its files as ``hf://`` references (``root``
    stands for the ``snapshot`` folder)."""
    from ..formats import read_bank

    try:
        bank = read_bank(path, kind=kind, adapter=adapter)
    except InvalidBank as e:
        if snapshot is None:
            raise
        here = snapshot.rstrip("/") + "/"
        fix = lambda t: t.replace(here, root.rstrip("/") + "/").replace(snapshot, root)
        raise InvalidBank(fix(e.message), [fix(p) for p in e.problems]) from None
    bank.source.path = shown
    if facts:
        bank.source.remote = facts
        if facts.get("sha256"):
            bank.source.digest, bank.source.digest_scheme = facts["sha256"], "file"
    return bank


def open_bank(
    ref: str | HubRef,
    *,
    kind: str | None = None,
    adapter: str | None = None,
    token: str | None = None,
    unverified: bool | None = None,
    limits: http.Limits | None = None,
) -> PromptBank:
    """The bank at ``ref``, its tensors read lazily from the Hub (see the module doc). ``adapter``
    names one of several adapters: a sub-folder ``NAME/`` (as PEFT saves them), or one of the
    adapters of a whole-model state dict."""
    r = parse_ref(ref) if isinstance(ref, str) else ref
    shown = str(r)
    if offline():
        if adapter and not r.path:
            r = HubRef(r.repo_id, r.revision, adapter) if _cached_folder(r, adapter) else r
        got = from_cache(r)
        return _read_local(
            got.path,
            shown,
            kind,
            {"repo": r.repo_id, "commit": got.commit, "partial": False},
            str(cache.pointer(r.repo_id, got.commit, "x").parent),
            str(HubRef(r.repo_id, r.revision)),
            adapter if r.path != adapter else None,
        )
    lim = limits or http.limits()
    with http.limited(lim):
        commit = resolve_commit(r, token)
        files, rel, used = choose(r, commit, token, adapter)
        adapter = None if used else adapter
        weights = files[-1]
        facts = {
            "repo": r.repo_id,
            "revision": r.revision or "main",
            "commit": commit,
            "file": weights.name,
            "sha256": weights.sha256,
            "partial": False,
        }
        ranged = (
            weights.name.lower().endswith(".safetensors") and weights.size >= WHOLE_BELOW and weights.sha256 is not None
        )
        if ranged:
            here = cache.cached(r, commit, weights.name, weights.digest)
            if here is not None and os.path.getsize(here) == weights.size:
                ranged, facts["how"] = False, "cached"  # a full pull put it in the cache: read it there
        local = [download(r, commit, f, token, unverified=unverified) for f in (files[:-1] if ranged else files)]
    if not ranged:
        cache.remember(r.repo_id, r.revision or "main", commit)
        path = os.path.dirname(local[-1]) if len(files) == 2 else local[-1]
        return _read_local(
            path,
            shown,
            kind,
            facts,
            str(cache.pointer(r.repo_id, commit, "x").parent),
            str(HubRef(r.repo_id, r.revision)),
            adapter,
        )
    config = config_file = None
    if len(files) == 2:
        config_file = str(HubRef(r.repo_id, r.revision, files[0].name))
        config = peft.read_config(local[0], config_file)
        if isinstance(config, dict) and config.get("peft_type") not in (None, "MULTITASK_PROMPT_TUNING"):
            raise InvalidBank(
                client.said(
                    f'{config_file}: field peft_type: expected "MULTITASK_PROMPT_TUNING", '
                    f"found {config.get('peft_type')!r} (not a multitask prompt tuning bank)",
                    limit=None,
                )
            )
    where = Where(r, commit, weights.name, weights.size, weights.sha256, token)
    reader = RemoteFile(where, lim)
    header = reader.header()
    from ..formats._bankfile import from_header

    bank = from_header(
        header,
        shown=shown,
        fmt="peft-adapter" if config_file else "safetensors",
        kind=kind,
        config=config,
        config_file=config_file,
        adapter=adapter,
    )
    bank.source = Source(
        shown, bank.source.format, where.shown, weights.size, digest=weights.sha256, remote={**facts, "partial": True}
    )
    return bank


def _cached_folder(r: HubRef, name: str) -> bool:
    commit = cache.commit_for(r.repo_id, r.revision or "main")
    return bool(commit) and any(n.startswith(f"{name}/") for n in cache.snapshot_names(r.repo_id, commit))


def resolve(ref: str) -> str:
    """The local path (in the HF cache) of the whole bank an ``hf://`` reference names."""
    return fetch(ref).path


# -- pull ----------------------------------------------------------------------------------------
def pull(
    repo: str,
    output: str | os.PathLike | None = None,
    *,
    revision: str | None = None,
    force: bool = False,
    tasks=None,
    token: str | None = None,
    quiet: bool | None = None,
    unverified: bool | None = None,
    timeout: float | None = None,
    deadline: float | None = None,
) -> tuple[PromptBank, Fetched]:
    """Download and validate a bank. Without ``output`` it stays in the HF cache; with ``output``
    its files are copied into that plain folder (atomically). With ``tasks`` (indices, ranges or
    names) only those tasks are read, by range requests, and written to ``output`` (a folder or a
    ``.safetensors`` file) as a bank of their own whose provenance names the repo, the commit and
    the tasks. Returns the bank (read from where it now is) and what was fetched."""
    from ..formats import FileCopy, plan, read_bank

    ref = parse_ref(repo)
    if revision:
        if ref.revision and ref.revision != revision:
            raise UsageError(f"{repo}: names revision '{ref.revision}' but --revision says '{revision}'")
        ref = HubRef(ref.repo_id, revision, ref.path)
    lim = http.limits(timeout, deadline)
    if tasks is not None:
        if output is None:
            raise UsageError(
                f"{ref}: --tasks writes a partial copy, which never goes into the HF cache; name it "
                "with -o (a folder or a .safetensors file)"
            )
        with client.progress(quiet):
            whole = open_bank(ref, token=token, unverified=unverified, limits=lim)
            part = partial(whole, tasks)
            plan(output, "bank", force=force, like=part).write(part)
        facts = whole.source.remote or {}
        got = Fetched(ref, facts.get("commit", ""), os.fspath(output), [facts.get("file", "")], cached_only=offline())
        return read_bank(output), got
    target = plan(output, "files", force=force) if output is not None else None  # before the download
    got = fetch(ref, token=token, quiet=quiet, unverified=unverified, limits=lim)
    bank = read_bank(got.path)  # validates; an invalid bank is reported before anything is written
    if output is None:
        bank.source.path = str(ref)
        return bank, got
    if os.path.isfile(got.path):
        sources = [got.path]
    else:
        sources = [os.path.join(got.path, posixpath.basename(f)) for f in got.files]
    target.write(FileCopy([Path(s) for s in sources]))
    bank = read_bank(target.path / os.path.basename(got.path) if os.path.isfile(got.path) else target.path)
    return bank, got


def partial(bank: PromptBank, tasks) -> PromptBank:
    """The tasks ``tasks`` of a bank opened from the Hub, as a bank of their own (lazy: nothing is
    read until it is saved), with provenance naming the repo, commit and tasks."""
    idx = select_tasks(bank, tasks, unique=True)
    t = bank.task_rows(idx)
    names = [bank.task_names[i] for i in idx] if bank.task_names else None
    facts = bank.source.remote or {}
    args = {
        "repo": facts.get("repo"),
        "revision": facts.get("revision"),
        "commit": facts.get("commit"),
        "file": facts.get("file"),
        "tasks": idx,
    }
    if names:
        args["task_names"] = names
    entry = bank.provenance_entry("pull", args)
    return bank.with_tensors(t, names, provenance=[*bank.provenance, entry])


# -- remote inspect ------------------------------------------------------------------------------
def remote_summary(
    ref: str,
    *,
    adapter: str | None = None,
    token: str | None = None,
    timeout: float | None = None,
    deadline: float | None = None,
) -> dict:
    """What :func:`mptkit._info.summary` says about a bank on the Hub, from its safetensors header
    (range requests) and adapter_config.json only (a small or cached bank is read whole)."""
    from .._info import summary

    bank = open_bank(ref, adapter=adapter, token=token, limits=http.limits(timeout, deadline))
    s = summary(bank)
    facts = bank.source.remote or {}
    if offline():
        s["notes"].append("read from the local cache (HF_HUB_OFFLINE is set)")
        return s
    s["remote"] = {k: facts.get(k) for k in ("repo", "revision", "commit", "file", "sha256")}
    if facts.get("partial"):
        s["remote"]["downloaded"] = "safetensors header and adapter_config.json only"
        s["notes"].append(REMOTE_NOTE)
    elif facts.get("file", "").lower().endswith((".bin", ".pt", ".pth")):
        s["remote"]["downloaded"] = "the whole bank (a pickle has no header to read remotely)"
        s["notes"].append(
            f"remote: {posixpath.basename(facts['file'])} is a pickle, which has no header to read "
            "remotely: it was downloaded in full"
        )
    else:
        how = facts.get("how", "whole")
        s["remote"]["downloaded"] = {"cached": "nothing: a full pull of this commit is in the HF cache"}.get(
            how, "the whole bank, checked against the Hub's checksum, into the HF cache"
        )
        s["notes"].append(
            "remote: read from the HF cache (a full pull of this commit)"
            if how == "cached"
            else f"remote: the bank is small (under {WHOLE_BELOW >> 20} MB) or has no LFS sha256, so it was "
            "downloaded whole, checked against the Hub's checksum, and kept in the HF cache"
        )
    return s
