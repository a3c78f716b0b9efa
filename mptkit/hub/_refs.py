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
    """``HF_ENDPOINT`` now (None: the client's default), checked: a value that is not an
    ``http(s)://host[:port][/path]`` URL is a :class:`UsageError` (the client itself fails to import
    with one, so this is asked before the client is). A user:password in it is remembered as a
    secret (never printed) and left out of :func:`shown_endpoint`."""
    value = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/")
    if not value:
        return None
    origin(value, "HF_ENDPOINT")
    return value


def origin(url: str, name: str = "the URL") -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL (the port the scheme implies when none is given); a
    URL that has none is a :class:`UsageError` naming ``name``."""
    from urllib.parse import urlsplit

    from .._text import clean, remember_secret

    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
        reason = None
        if parts.scheme not in ("http", "https"):
            reason = "it must start with http:// or https://"
        elif not host:
            reason = "it names no host"
        elif port == 0:
            reason = "port 0 is not a port"
    except ValueError as e:  # an unclosed [IPv6 bracket, a port that is not 0-65535
        reason = str(e)
    userinfo = _userinfo(url)
    if userinfo:
        remember_secret(userinfo)
        remember_secret(userinfo.partition(":")[2])
    if reason is not None:
        raise UsageError(
            f"{name} is not a usable URL: '{clean(url[:200])}' ({reason}); expected http(s)://host[:port][/path], "
            "as in https://huggingface.co"
        )
    return parts.scheme, host.lower(), port or {"http": 80, "https": 443}[parts.scheme]


def _userinfo(url: str) -> str:
    """The user:password (or token) part of a URL ("" if none): a secret, never printed."""
    return url.split("://", 1)[-1].split("/", 1)[0].rpartition("@")[0]


def shown_endpoint(value: str) -> str:
    """An endpoint as it may be printed: without its user:password."""
    head, sep, rest = value.partition("://")
    if not sep:
        return value
    host, slash, path = rest.partition("/")
    return f"{head}://{host.rpartition('@')[2]}{slash}{path}"


def cache_dir() -> str:
    """The HF hub cache: ``HF_HUB_CACHE``, else ``HF_HOME``/hub, else ~/.cache/huggingface/hub."""
    env = os.environ
    d = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not d:
        xdg = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = os.path.join(env.get("HF_HOME") or os.path.join(xdg, "huggingface"), "hub")
    return os.path.expandvars(os.path.expanduser(d))


def offline() -> bool:
    endpoint()  # every Hub operation asks this first: a broken HF_ENDPOINT is said before the client fails on it
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return env.upper() in _TRUE or bool(constants.HF_HUB_OFFLINE)
