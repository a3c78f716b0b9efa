"""The Hugging Face Hub: pull and push prompt banks, ``hf://`` references, remote inspect, model cards.

Transfers go through the ``huggingface_hub`` client (imported here, inside the functions, never at
``import mptkit``), configured as every HF tool is: the endpoint from ``HF_ENDPOINT``, the cache
from ``HF_HUB_CACHE``/``HF_HOME``, the token from ``HF_TOKEN``, the login cache or ``token=``,
``HF_HUB_OFFLINE=1`` for cache-only answers. These are read when a function is called, not when
mptkit is imported. A token is only ever handed to the client: never printed, logged or written.

A reference is ``hf://owner/repo[@revision][/path]`` (``refs/pr/N`` revisions work; a revision
holding other ``/`` must be URL-quoted). Without a path, the repo root holds the bank: an adapter
folder (``adapter_config.json`` + ``adapter_model.safetensors`` or ``.bin``) or a single
``.safetensors`` file. Only the files the bank needs are downloaded, into the HF cache.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from . import __version__
from .bank import PromptBank
from .errors import HubError, InvalidBank, MptkitError, UsageError
from .formats import peft

CARD_NAME = "README.md"
_NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SPECIAL_REV = re.compile(r"^refs/(?:pr/\d+|convert/[\w.-]+)")
_TRUE = {"1", "ON", "YES", "TRUE"}


# -- references ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class HubRef:
    repo_id: str
    revision: str | None = None  # None: the default branch
    path: str = ""  # a file or folder inside the repo; "" for the root

    def __str__(self) -> str:
        rev = ""
        if self.revision:
            rev = "@" + quote(self.revision, safe="/" if _SPECIAL_REV.match(self.revision) else "")
        return f"hf://{self.repo_id}{rev}" + (f"/{self.path}" if self.path else "")


def parse_ref(ref: str, *, allow_path: bool = True) -> HubRef:
    """``hf://owner/repo[@rev][/path]`` (or, for ``pull``/``push``, ``owner/repo[@rev]``)."""
    text = ref[len("hf://"):] if ref.startswith("hf://") else ref
    if text.startswith("models/") and text.count("/") >= 2:
        text = text[len("models/"):]
    if text.split("/", 1)[0] in ("datasets", "spaces", "buckets", "kernels"):
        raise UsageError(f"{ref}: mptkit reads banks from model repos; name one as hf://owner/repo")
    owner, sep, rest = text.partition("/")
    if not sep:
        raise UsageError(f"{ref}: expected owner/repo (as in hf://owner/repo[@revision][/path])")
    name, _, after = rest.partition("/")
    revision = None
    if "@" in name:
        name, _, rev = name.partition("@")
        if _SPECIAL_REV.match(rev + "/" + after):  # hf://o/r@refs/pr/1[/path]
            m = _SPECIAL_REV.match(rev + "/" + after)
            rev, after = m.group(0), (rev + "/" + after)[m.end():].lstrip("/")
        revision = unquote(rev)
        if not revision:
            raise UsageError(f"{ref}: empty revision after '@'")
    for part in (owner, name):
        if not _NAME_PART.match(part) or "--" in part or ".." in part or part.endswith((".git", ".")):
            raise UsageError(f"{ref}: '{owner}/{name}' is not a valid repo id (letters, digits, '-', '_', '.')")
    if revision is not None and not _safe_name(revision):
        raise UsageError(f"{ref}: '{revision}' is not a valid revision name")
    path = after.strip("/")
    if path and not allow_path:
        raise UsageError(f"{ref}: expected owner/repo[@revision], without a path inside the repo")
    if path and not _safe_name(path):
        raise UsageError(f"{ref}: the path '{path}' leaves the repo ('..', absolute or empty parts)")
    return HubRef(f"{owner}/{name}", revision, path)


def _safe_name(name: str) -> bool:
    """A relative path that stays inside the folder it is joined to."""
    if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name or "\0" in name:
        return False
    if re.match(r"^[A-Za-z]:", name):
        return False
    return all(p not in ("", ".", "..") for p in name.split("/"))


# -- the client's settings, read at call time ----------------------------------------------------
def endpoint() -> str | None:
    """``HF_ENDPOINT`` now (None: the client's default)."""
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or None


def cache_dir() -> str:
    """The HF hub cache: ``HF_HUB_CACHE``, else ``HF_HOME``/hub, else ~/.cache/huggingface/hub."""
    env = os.environ
    d = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not d:
        xdg = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = os.path.join(env.get("HF_HOME") or os.path.join(xdg, "huggingface"), "hub")
    return os.path.expandvars(os.path.expanduser(d))


def offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return env.upper() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def _where() -> str:
    from huggingface_hub import constants

    return endpoint() or constants.ENDPOINT


def _api(token: str | None):
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint(), token=token, library_name="mptkit", library_version=__version__)


@contextlib.contextmanager
def _progress(quiet: bool | None):
    """The client's progress bars, off when ``quiet`` and whenever stderr is not a terminal."""
    from huggingface_hub import constants
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    if not quiet:
        quiet = not sys.stderr.isatty()
    switch = quiet and not are_progress_bars_disabled() and constants.HF_HUB_DISABLE_PROGRESS_BARS is None
    if switch:
        disable_progress_bars()
    try:
        yield
    finally:
        if switch:
            enable_progress_bars()


@contextlib.contextmanager
def _quiet_logger(name: str):
    """Hold back a client logger's warnings for a moment (mptkit reports the same facts itself)."""
    import logging

    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


@contextlib.contextmanager
def _errors(ref: HubRef | str, doing: str):
    """Turn the client's exceptions into one :class:`HubError` sentence."""
    from huggingface_hub import errors as he

    rev = ref.revision if isinstance(ref, HubRef) else None
    repo = ref.repo_id if isinstance(ref, HubRef) else str(ref)
    # the client logs each retry of a failing transfer ("Error while downloading ... Trying to
    # resume"); mptkit says what failed in one sentence (MPTKIT_DEBUG=1 / --debug keeps the log)
    quiet = _quiet_logger("huggingface_hub") if os.environ.get("MPTKIT_DEBUG") != "1" else contextlib.nullcontext()
    try:
        with quiet:
            yield
    except MptkitError:
        raise
    except he.OfflineModeIsEnabled as e:
        raise HubError(f"{ref}: cannot {doing}: HF_HUB_OFFLINE is set, so the Hub is not asked") from e
    except he.RevisionNotFoundError as e:
        raise HubError(f"{ref}: the repo {repo} has no revision '{rev or 'main'}' (no branch, tag or commit "
                       "of that name)") from e
    except he.GatedRepoError as e:
        raise HubError(f"{ref}: {repo} is gated: accept its conditions on the Hub and use a token "
                       "(HF_TOKEN, `hf auth login` or --token)") from e
    except he.RepositoryNotFoundError as e:
        raise HubError(f"{ref}: no repo {repo} on {_where()} (or it is private and no valid token was given: "
                       "set HF_TOKEN, run `hf auth login` or pass --token)") from e
    except he.LocalEntryNotFoundError as e:
        raise HubError(f"{ref}: cannot {doing}: it is not in the local cache ({cache_dir()}) and the Hub "
                       "was not asked (HF_HUB_OFFLINE or local-only)") from e
    except he.EntryNotFoundError as e:
        raise HubError(f"{ref}: cannot {doing}: the file is not in {repo} at revision {rev or 'main'}") from e
    except he.HfHubHTTPError as e:
        code = getattr(getattr(e, "response", None), "status_code", None)
        msg = (getattr(e, "server_message", None) or "").strip().splitlines()
        detail = f": {msg[0][:160]}" if msg else ""
        if code in (401, 403):
            raise HubError(f"{ref}: the Hub refused to {doing} (HTTP {code}{detail}); a token with access to "
                           f"{repo} is needed, with write access to push (HF_TOKEN, `hf auth login` or --token)") from e
        raise HubError(f"{ref}: the Hub at {_where()} answered HTTP {code} when asked to {doing}{detail}") from e
    except Exception as e:  # transport failures and answers the client could not parse
        module = type(e).__module__ or ""
        text = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        transport = module.startswith(("httpx", "httpcore", "requests", "urllib3"))
        if transport or isinstance(e, (ConnectionError, TimeoutError)):
            raise HubError(f"{ref}: cannot {doing}: the connection to {_where()} failed "
                           f"({type(e).__name__}: {text})") from e
        raise HubError(f"{ref}: cannot {doing}: the Hub at {_where()} sent an answer that could not be used "
                       f"({type(e).__name__}: {text})") from e


# -- choosing the files of a bank ----------------------------------------------------------------
BANK_FILES = (peft.SAFETENSORS_NAME, peft.BIN_NAME)


def _choose(ref: HubRef, names: list[str]) -> tuple[list[str], str]:
    """The repo files the bank at ``ref`` needs, and the bank's path (a folder or a file) in the repo."""
    bad = [n for n in names if not _safe_name(n)]
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
    commit = rev if _COMMIT.match(rev) else None
    if commit is None:
        with contextlib.suppress(OSError):
            commit = (storage / "refs" / rev).read_text(encoding="ascii").strip()
    snapshot = storage / "snapshots" / commit if commit and _COMMIT.match(commit) else None
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

    api = _api(token)
    with _errors(ref, "look up the repo"):
        info = api.repo_info(ref.repo_id, revision=ref.revision)
        commit, names = info.sha, [s.rfilename for s in (info.siblings or [])]
    if not isinstance(commit, str) or not _COMMIT.match(commit):
        raise HubError(f"{ref}: the Hub at {_where()} sent an answer that could not be used (commit id {commit!r})")
    files, rel = _choose(ref, names)
    local = []
    with _progress(quiet):
        for name in files:
            with _errors(ref, f"download {name}"):
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

    from .bank import file_sha256

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
    from .formats import atomic, load

    ref = parse_ref(repo)
    if revision:
        if ref.revision and ref.revision != revision:
            raise UsageError(f"{repo}: names revision '{ref.revision}' but --revision says '{revision}'")
        ref = HubRef(ref.repo_id, revision, ref.path)
    if output is not None:
        target = Path(output)
        atomic.check_target(target, folder=True, force=force)
    got = fetch(ref, token=token, quiet=quiet)
    bank = load(got.path)  # validates; an invalid bank is reported before anything is written
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
    bank = load(target / os.path.basename(got.path) if os.path.isfile(got.path) else target)
    return bank, got


# -- remote inspect ------------------------------------------------------------------------------
REMOTE_NOTE = ("remote: read only the safetensors header (HTTP range requests) and adapter_config.json; "
               "the tensor data was not downloaded")


def remote_summary(ref: str, *, token: str | None = None) -> dict:
    """What :func:`mptkit.info.summary` says about a bank on the Hub, from its safetensors header
    (range requests) and adapter_config.json only; the tensor data is not downloaded. Offline, or
    for a pickle (no header to read), the bank is read from the cache or downloaded instead."""
    from huggingface_hub import hf_hub_download

    from .formats import _load_safetensors, load
    from .formats import safetensors as st
    from .info import summary

    r = parse_ref(ref)
    if offline():
        s = summary(load(ref))
        s["notes"].append("read from the local cache (HF_HUB_OFFLINE is set)")
        return s
    api = _api(token)
    with _errors(r, "look up the repo"):
        info = api.repo_info(r.repo_id, revision=r.revision, files_metadata=True)
        commit = info.sha
        sizes = {s.rfilename: s.size for s in (info.siblings or [])}
    if not isinstance(commit, str) or not _COMMIT.match(commit):
        raise HubError(f"{r}: the Hub at {_where()} sent an answer that could not be used (commit id {commit!r})")
    files, rel = _choose(r, list(sizes))
    weights = files[-1]
    if not weights.lower().endswith(".safetensors"):
        s = summary(load(ref))
        s["notes"].append(f"remote: {posixpath.basename(weights)} is a pickle, which has no header to read "
                          "remotely: it was downloaded in full")
        return s
    at = HubRef(r.repo_id, commit, weights)
    config = config_file = None
    if len(files) == 2:
        cfg_ref = HubRef(r.repo_id, r.revision, files[0])
        with _errors(cfg_ref, f"download {files[0]}"):
            local = hf_hub_download(r.repo_id, files[0], revision=commit, cache_dir=cache_dir(), endpoint=endpoint(),
                                    token=token, library_name="mptkit", library_version=__version__)
        config, config_file = peft.read_config(local, str(cfg_ref)), str(cfg_ref)
    with _errors(at, "read the safetensors header"):
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
    bank = _load_safetensors(shown, str(r), fmt, None, config, config_file, header=header)  # type: ignore[arg-type]
    s = summary(bank)
    s["file_size"] = size
    s["remote"] = {"repo": r.repo_id, "revision": r.revision or "main", "commit": commit, "file": weights,
                   "downloaded": "safetensors header and adapter_config.json only"}
    s["notes"].append(REMOTE_NOTE)
    return s


# -- model card ----------------------------------------------------------------------------------
_AUTO_CLASS = {"CAUSAL_LM": "AutoModelForCausalLM", "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
               "SEQ_CLS": "AutoModelForSequenceClassification", "TOKEN_CLS": "AutoModelForTokenClassification"}


def _cell(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def model_card(bank: PromptBank, repo_id: str, revision: str | None = None) -> str:
    """README.md for a bank repo: YAML front matter as PEFT writes it (``library_name: peft``,
    ``base_model``, tags) and a body with the tasks, shapes, parameter counts, provenance and usage.
    The text depends on the bank only, so pushing the same bank twice changes nothing."""
    from huggingface_hub import ModelCard, ModelCardData

    from .info import summary

    s = summary(bank)
    cfg = bank.config or {}
    base = cfg.get("base_model_name_or_path") or None
    task_type = cfg.get("task_type")
    tags = {"multitask-prompt-tuning", "mptkit", "transformers"}
    if base:
        tags.add(f"base_model:adapter:{base}")
    data = ModelCardData(library_name="peft", base_model=base, tags=sorted(tags),
                         pipeline_tag="text-generation" if task_type == "CAUSAL_LM" else None)
    T, N, d, r = s["num_tasks"], s["N"], s["d"], s["r"]
    p = s["parameters"]
    names = bank.names()
    rev_arg = f', revision="{revision}"' if revision and revision != "main" else ""
    at = f"@{revision}" if revision and revision != "main" else ""
    lines = [
        f"# {repo_id}",
        "",
        f"A multitask prompt tuning (MPT) prompt bank with {T} task(s) for PEFT's `MULTITASK_PROMPT_TUNING`: one "
        "shared soft prompt and a rank-r factor pair per task; task k's prompt is "
        "`prompt_embeddings * (prefix_task_cols[k] @ prefix_task_rows[k])`.",
        "",
        f"- Base model: {f'`{base}`' if base else 'not recorded'}",
        f"- Task type: {task_type or 'not recorded'}",
        f"- Uploaded with mptkit {__version__}",
        "",
        "## Tasks",
        "",
        "| task_ids | name |",
        "| ---: | --- |",
    ]
    shown = 200
    lines += [f"| {i} | {_cell(n) if bank.task_names else '(unnamed)'} |" for i, n in enumerate(names[:shown])]
    if T > shown:
        lines.append(f"| ... | {T - shown} more (see `mptkit inspect hf://{repo_id}`) |")
    v, sub = s["num_virtual_tokens"], s["num_transformer_submodules"]
    lines += [
        "",
        "## Shapes",
        "",
        "| tensor | shape | dtype |",
        "| --- | --- | --- |",
    ]
    lines += [f"| `{k}` | {list(t['shape'])} | {t['dtype']} |" for k, t in s["tensors"].items()]
    lines += [
        "",
        f"N = {N} prompt rows" + (f" ({v} virtual tokens x {sub} transformer submodule(s))" if v and sub else "")
        + f", hidden size d = {d}, T = {T} tasks, rank r = {r}.",
        "",
        "## Parameters",
        "",
        f"- shared prompt: N x d = {p['shared']:,}",
        f"- per task: N x r + r x d = {p['per_task']:,}",
        f"- total: {p['total']:,}"
        + (f" ({T} separate full prompts would hold {p['as_separate_prompts']:,})" if T else ""),
        "",
        "## Provenance",
        "",
    ]
    if bank.provenance:
        for i, e in enumerate(bank.provenance, 1):
            args = ", ".join(f"{k}={val}" for k, val in (e.get("arguments") or {}).items())
            srcs = ", ".join(f"{x.get('name', '?')} (sha256 {str(x.get('sha256', ''))[:12]})"
                             for x in e.get("sources") or [])
            ver = f" [mptkit {e['mptkit_version']}]" if e.get("mptkit_version") else ""
            lines.append(f"{i}. `{_cell(e.get('operation', '?'))}`" + (f" {_cell(args)}" if args else "")
                         + (f" from {_cell(srcs)}" if srcs else "") + ver)
    else:
        lines.append("No provenance recorded (the bank was trained or saved outside mptkit).")
    auto = _AUTO_CLASS.get(task_type, "AutoModel")
    lines += [
        "",
        "## Usage",
        "",
        "With PEFT (every example needs its task's index, `task_ids`, from the table above):",
        "",
        "```python",
        "import torch",
        f"from transformers import {auto}",
        "from peft import PeftModel",
        "",
        f'base = {auto}.from_pretrained("{base or "<the base model>"}")',
        f'model = PeftModel.from_pretrained(base, "{repo_id}"{rev_arg})',
        "outputs = model(**inputs, task_ids=torch.tensor([0]))  # one task index per example",
        "```",
        "",
        "With [mptkit](https://pypi.org/project/mptkit/):",
        "",
        "```bash",
        f"mptkit inspect hf://{repo_id}{at}",
        f"mptkit pull {repo_id}{at} -o bank/",
        f"mptkit derive hf://{repo_id}{at} --mode exact --task 0 -o task0-init.safetensors",
        "```",
        "",
        "```python",
        "import mptkit",
        f'bank = mptkit.load("hf://{repo_id}{at}")',
        "```",
        "",
    ]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))
    return str(card)


# -- push ----------------------------------------------------------------------------------------
def _pristine(bank: PromptBank) -> Path | None:
    """The adapter folder ``bank`` was read from, when the bank is still exactly what it holds
    (then its files are uploaded byte for byte); None otherwise."""
    from .formats import load

    src = bank.source
    if src is None or not src.format.startswith("peft-adapter"):
        return None
    folder = Path(src.data_file).parent
    try:
        fresh = load(folder)
    except MptkitError:
        return None
    same = (fresh.config == bank.config and fresh.task_names == bank.task_names and fresh.provenance == bank.provenance
            and fresh.metadata == bank.metadata and fresh.tensors.keys() == bank.tensors.keys()
            and all(fresh.tensors[k].dtype == a.dtype and fresh.tensors[k].shape == a.shape
                    and fresh.tensors[k].segments == a.segments for k, a in bank.tensors.items()))
    return folder if same else None


def _stage(bank: PromptBank, tmp: Path) -> tuple[Path, PromptBank]:
    """An adapter folder holding ``bank``: its own folder when unchanged, else one written to ``tmp``."""
    from .formats import load, save

    folder = _pristine(bank)
    if folder is None:
        where = bank.where
        if bank.shared_only:
            raise UsageError(f"{where} holds only the shared prompt; an adapter repo needs task factors "
                             "(push a full bank, or add tasks with `mptkit derive --mode shared --num-tasks`)")
        cfg = bank.config or {}
        missing = []
        if not cfg.get("task_type"):
            missing.append("--task-type")
        if not cfg.get("num_virtual_tokens") and not cfg.get("num_transformer_submodules"):
            missing.append("--num-virtual-tokens")
        if missing:
            raise UsageError(f"{where} is a bare state dict without an adapter config; to push it as a PEFT adapter "
                             f"folder give {' and '.join(missing)} (N = {bank.num_tokens} prompt rows)")
        folder = save(bank, tmp / "adapter")
    return folder, load(folder)


def push(bank: PromptBank, repo: str, *, private: bool = False, revision: str | None = None,
         message: str | None = None, create_pr: bool = False, token: str | None = None,
         quiet: bool | None = None) -> dict:
    """Upload ``bank`` as a PEFT adapter folder plus a generated model card to the model repo
    ``repo`` (created if missing; ``revision``, a branch, is created from main if missing). A bank
    read from an adapter folder and left unchanged is uploaded byte for byte; any other bank is
    written as an adapter folder first (a bare file needs task_type and num_virtual_tokens in its
    config). Pushing the same bank again makes no commit."""
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
        card = model_card(staged, ref.repo_id, revision)
        message = message or f"Upload prompt bank ({staged.num_tasks} tasks) with mptkit"
        ops = [CommitOperationAdd(path_in_repo=peft.CONFIG_NAME, path_or_fileobj=str(folder / peft.CONFIG_NAME)),
               CommitOperationAdd(path_in_repo=weights.name, path_or_fileobj=str(weights)),
               CommitOperationAdd(path_in_repo=CARD_NAME, path_or_fileobj=card.encode("utf-8"))]
        api = _api(token)
        with _progress(quiet):
            with _errors(ref, "create the repo"):
                api.create_repo(ref.repo_id, private=True if private else None, exist_ok=True)
            if revision and revision != "main" and not revision.startswith("refs/") and not _COMMIT.match(revision):
                with _errors(ref, f"create the branch {revision}"):
                    api.create_branch(ref.repo_id, branch=revision, exist_ok=True)
            with _errors(ref, "look up the branch"):
                try:
                    head = api.repo_info(ref.repo_id, revision=revision)
                    before, there = head.sha, {x.rfilename for x in (head.siblings or [])}
                except RevisionNotFoundError:
                    before, there = None, set()  # a PR ref that does not exist yet: the commit says so
            # PEFT prefers adapter_model.safetensors: a stale one would shadow an uploaded .bin
            ops += [CommitOperationDelete(path_in_repo=w) for w in BANK_FILES if w != weights.name and w in there]
            with _errors(ref, "commit the bank"), _quiet_logger("huggingface_hub.hf_api"):  # we say "nothing to push"
                info = api.create_commit(ref.repo_id, operations=ops, revision=revision, create_pr=create_pr,
                                         commit_message=message)
    return {"repo": ref.repo_id, "revision": revision or "main", "commit": info.oid, "url": info.commit_url,
            "pr_url": info.pr_url, "changed": info.oid != before,
            "files": [peft.CONFIG_NAME, weights.name, CARD_NAME]}


def one_line(s: dict) -> str:
    """A one-line summary from :func:`mptkit.info.summary`'s dict."""
    parts = [s["kind"]]
    if s["kind"] != "shared-only":
        names = s.get("task_names")
        shown = f" ({', '.join(names[:6])}{', ...' if len(names) > 6 else ''})" if names else ""
        parts.append(f"T={s['num_tasks']}{shown}")
    n = f"N={s['N']}"
    if s.get("num_virtual_tokens") and s.get("num_transformer_submodules"):
        n += f" ({s['num_virtual_tokens']}x{s['num_transformer_submodules']})"
    parts.append(n)
    parts.append(f"d={s['d']}")
    if s.get("r"):
        parts.append(f"r={s['r']}")
    parts.append(s["dtype"])
    parts.append(f"{s['parameters']['total']:,} parameters")
    if s.get("base_model"):
        parts.append(f"base {s['base_model']}")
    return ", ".join(parts)
