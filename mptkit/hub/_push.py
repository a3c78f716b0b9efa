"""Uploads: a bank as a PEFT adapter folder plus its model card, in one commit."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from .._bank import PromptBank
from ..errors import HubError, MptkitError, UsageError
from ..formats import _peft as peft
from . import _client as client, _http as http
from ._card import CARD_NAME, model_card
from ._refs import COMMIT, HubRef, endpoint, offline, parse_ref
from ._transfer import BANK_FILES, listing, resolve_commit


# -- push ----------------------------------------------------------------------------------------
def _pristine(bank: PromptBank) -> Path | None:
    """The adapter folder ``bank`` was read from, when the bank is still exactly what it holds
    (then its files are uploaded byte for byte); None otherwise."""
    from ..formats import read_bank

    src = bank.source
    if src is None or not src.format.startswith("peft-adapter"):
        return None
    folder = Path(src.data_file).parent
    try:
        fresh = read_bank(folder)
    except MptkitError:
        return None
    same = (
        fresh.config == bank.config
        and fresh.task_names == bank.task_names
        and fresh.provenance == bank.provenance
        and fresh.metadata == bank.metadata
        and fresh.tensors.keys() == bank.tensors.keys()
        and all(
            fresh.tensors[k].dtype == a.dtype
            and fresh.tensors[k].shape == a.shape
            and fresh.tensors[k].segments == a.segments
            for k, a in bank.tensors.items()
        )
    )
    return folder if same else None


def _stage(bank: PromptBank, tmp: Path) -> tuple[Path, PromptBank]:
    """An adapter folder holding ``bank``: its own folder when unchanged, else one written to ``tmp``."""
    from ..formats import read_bank, save

    folder = _pristine(bank)
    if folder is None:
        where = bank.where
        if bank.shared_only:
            raise UsageError(
                f"{where} holds only the shared prompt; an adapter repo needs task factors "
                "(push a full bank, or add tasks with `mptkit derive --mode shared --num-tasks`)"
            )
        folder = save(bank, tmp / "adapter")  # says which config fields a bare file lacks
    return folder, read_bank(folder)


#: the repo paths ``push`` accepts for images: a PNG under images/
_IMAGE_PATH = re.compile(r"^images/[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.png$")


def _checked_images(images) -> dict[str, bytes]:
    out = dict(images or {})
    for name, data in out.items():
        if not isinstance(name, str) or not _IMAGE_PATH.match(name) or ".." in name:
            raise UsageError(f"push: image path {name!r} must be images/NAME.png (letters, digits, . _ -)")
        if not isinstance(data, (bytes, bytearray)) or not bytes(data[:8]) == b"\x89PNG\r\n\x1a\n":
            raise UsageError(f"push: image {name} must be the bytes of a PNG file")
    return out


def push(
    bank: PromptBank,
    repo: str,
    *,
    private: bool = False,
    revision: str | None = None,
    message: str | None = None,
    create_pr: bool = False,
    token: str | None = None,
    quiet: bool | None = None,
    timeout: float | None = None,
    deadline: float | None = None,
    images: dict[str, bytes] | None = None,
) -> dict:
    """Upload ``bank`` as a PEFT adapter folder plus a generated model card to the model repo
    ``repo`` (created if missing; ``revision``, a branch, is created from main if missing). A bank
    read from an adapter folder and left unchanged is uploaded byte for byte; any other bank is
    written as an adapter folder first (a bare file needs task_type and num_virtual_tokens in its
    config). ``images`` (``{path in the repo: bytes}``, e.g. :func:`mptkit.card_images`) are uploaded
    in the same commit and shown by the card. Pushing the same bank again makes no commit."""
    endpoint()  # a malformed HF_ENDPOINT: said before the client fails to import over it
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete
    from huggingface_hub.errors import RevisionNotFoundError

    ref = parse_ref(repo, allow_path=False)
    if revision and ref.revision and revision != ref.revision:
        raise UsageError(f"{repo}: names revision '{ref.revision}' but --revision says '{revision}'")
    revision = revision or ref.revision
    ref = HubRef(ref.repo_id, revision)
    if offline():
        raise HubError(f"{ref}: cannot push: HF_HUB_OFFLINE is set")
    with tempfile.TemporaryDirectory(prefix="mptkit-push-") as tmp:
        folder, staged = _stage(bank, Path(tmp))
        weights = Path(staged.source.data_file)
        images = _checked_images(images)
        card = model_card(staged, ref.repo_id, revision, images=list(images))
        message = message or f"Upload prompt bank ({staged.num_tasks} tasks) with mptkit"
        ops = [
            CommitOperationAdd(path_in_repo=peft.CONFIG_NAME, path_or_fileobj=str(folder / peft.CONFIG_NAME)),
            CommitOperationAdd(path_in_repo=weights.name, path_or_fileobj=str(weights)),
            CommitOperationAdd(path_in_repo=CARD_NAME, path_or_fileobj=card.encode("utf-8")),
        ]
        ops += [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in images.items()]
        api = client.api(token)
        with http.limited(http.limits(timeout, deadline)), client.progress(quiet):
            with client.errors(ref, "create the repo", token):
                api.create_repo(ref.repo_id, private=True if private else None, exist_ok=True)
            if revision and revision != "main" and not revision.startswith("refs/") and not COMMIT.match(revision):
                with client.errors(ref, f"create the branch {revision}", token):
                    api.create_branch(ref.repo_id, branch=revision, exist_ok=True)
            try:
                before = resolve_commit(ref, token)
                there = set(listing(ref, before, "", token)[0])
            except HubError as e:
                if not isinstance(e.__cause__, RevisionNotFoundError):
                    raise
                before, there = None, set()  # a PR ref that does not exist yet: the commit says so
            # PEFT prefers adapter_model.safetensors: a stale one would shadow an uploaded .bin
            ops += [CommitOperationDelete(path_in_repo=w) for w in BANK_FILES if w != weights.name and w in there]
            with client.errors(ref, "commit the bank", token), client.quiet_logger("huggingface_hub.hf_api"):
                info = api.create_commit(
                    ref.repo_id, operations=ops, revision=revision, create_pr=create_pr, commit_message=message
                )
            commit = getattr(info, "oid", None)
            if not isinstance(commit, str) or not COMMIT.match(commit):
                raise HubError(
                    f"{ref}: the Hub at {client.where()} answered the commit with an unusable commit id "
                    f"{client.said(repr(commit)[:60])}; check the repo before pushing again"
                )
            _check_commit(ref, commit, ops, token)
    pr_url = info.pr_url if isinstance(info.pr_url, str) else None
    return {
        "repo": ref.repo_id,
        "revision": revision or "main",
        "commit": commit,
        "url": client.said(info.commit_url),
        "pr_url": client.said(pr_url) if pr_url else None,
        "changed": commit != before,
        "files": [peft.CONFIG_NAME, weights.name, CARD_NAME, *images],
    }


def _check_commit(ref: HubRef, commit: str, ops, token: str | None) -> None:
    """The commit the server answered with holds what was pushed: each uploaded file with its size
    and checksum (the LFS sha256 the listing gives, else the git blob id), each deleted file gone.
    A server's word that it committed is not taken for it (one that stored nothing answered 200)."""
    import posixpath

    from huggingface_hub.errors import EntryNotFoundError

    try:
        files: dict = {}
        for folder in sorted({posixpath.dirname(op.path_in_repo) for op in ops}):  # the root, images/
            try:
                files.update(listing(ref, commit, folder, token)[0])
            except HubError as e:
                if not (folder and isinstance(e.__cause__, EntryNotFoundError)):
                    raise  # a folder the commit lacks: its files are missing, as said below
        why = next((w for w in (_mismatch(files, op) for op in ops) if w), None)
    except HubError as e:
        why = f"listing that commit failed ({e.message})"
    if why:
        raise HubError(
            f"{ref}: the Hub at {client.where()} answered that commit {commit[:12]} holds the push, but "
            f"{client.said(why, token, limit=300)}; the push did not take effect as asked (check the repo "
            "before pushing again)"
        )


def _mismatch(files: dict, op) -> str | None:
    """How the listed commit differs from the operation ``op`` (None: it holds what ``op`` did)."""
    import hashlib

    from huggingface_hub import CommitOperationAdd

    from .._bank import file_sha256
    from ._cache import git_blob_sha1

    name = op.path_in_repo
    if not isinstance(op, CommitOperationAdd):
        return f"it still holds {name}, which the commit deletes" if name in files else None
    if name not in files:
        return f"it does not hold {name}"
    f, data = files[name], op.path_or_fileobj
    data = bytes(data) if isinstance(data, bytearray) else data
    size = len(data) if isinstance(data, bytes) else Path(data).stat().st_size
    if f.size != size:
        return f"it holds {name} with {f.size:,} bytes, not the {size:,} pushed"
    if f.sha256 is not None:
        got = hashlib.sha256(data).hexdigest() if isinstance(data, bytes) else file_sha256(str(data))
        return None if got == f.sha256 else f"its {name} has another sha256 than the file pushed"
    if f.blob_id is not None:
        if isinstance(data, bytes):
            got = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        else:
            got = git_blob_sha1(data)
        return None if got == f.blob_id else f"its {name} has another git blob id than the file pushed"
    return f"it lists {name} without a checksum to check it by"
