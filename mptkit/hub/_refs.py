"""Hub references (``hf://owner/repo[@revision][/path]``) and the settings every HF tool reads:
endpoint, cache folder, offline mode. Settings are read when a function is called, not when mptkit
is imported."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

from ..errors import UsageError

_NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
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
    text = ref[len("hf://") :] if ref.startswith("hf://") else ref
    if text.startswith("models/") and text.count("/") >= 2:
        text = text[len("models/") :]
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
            rev, after = m.group(0), (rev + "/" + after)[m.end() :].lstrip("/")
        revision = unquote(rev)
        if not revision:
            raise UsageError(f"{ref}: empty revision after '@'")
    for part in (owner, name):
        if not _NAME_PART.match(part) or "--" in part or ".." in part or part.endswith((".git", ".")):
            raise UsageError(f"{ref}: '{owner}/{name}' is not a valid repo id (letters, digits, '-', '_', '.')")
    if revision is not None and not safe_name(revision):
        raise UsageError(f"{ref}: '{revision}' is not a valid revision name")
    path = after.strip("/")
    if path and not allow_path:
        raise UsageError(f"{ref}: expected owner/repo[@revision], without a path inside the repo")
    if path and not safe_name(path):
        raise UsageError(f"{ref}: the path '{path}' leaves the repo ('..', absolute or empty parts)")
    return HubRef(f"{owner}/{name}", revision, path)


def safe_name(name: str) -> bool:
    """A relative path that stays inside the folder it is joined to."""
    if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name or "\0" in name:
        return False
    if re.match(r"^[A-Za-z]:", name):
        return False
    return all(p not in ("", ".", "..") for p in name.split("/"))


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
