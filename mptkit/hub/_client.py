"""The ``huggingface_hub`` client as mptkit uses it: an ``HfApi`` for the current settings,
progress bars only on a terminal, and the client's exceptions turned into one-sentence
:class:`~mptkit.errors.HubError` messages. The client is imported inside these functions, never
at ``import mptkit``."""

from __future__ import annotations

import contextlib
import os
import sys

from .._text import clean, redact
from .._version import __version__
from ..errors import HubError, MptkitError
from ._http import Refused
from ._refs import HubRef, cache_dir, endpoint, shown_endpoint
from ._wire import credential


def where() -> str:
    """The endpoint, as it may be printed (without a user:password it holds)."""
    ep = endpoint()
    from huggingface_hub import constants

    return shown_endpoint(ep or constants.ENDPOINT)


def api(token: str | None):
    ep, token = endpoint(), credential(token)
    from huggingface_hub import HfApi

    return HfApi(endpoint=ep, token=token, library_name="mptkit", library_version=__version__)


@contextlib.contextmanager
def progress(quiet: bool | None):
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
def quiet_logger(name: str):
    """Hold back a client logger's warnings for a moment (mptkit reports the same facts itself)."""
    import logging

    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def said(text, token: str | None = None, limit: int | None = 160) -> str:
    """What a server said, fit to quote: its first line, at most ``limit`` characters, the token
    (and anything shaped like one) redacted, control characters escaped."""
    from huggingface_hub.utils import get_token

    secrets = tuple(s for s in (token, _quiet_token(get_token)) if s)
    lines = redact(str(text or ""), secrets).strip().splitlines()  # redacted before it is cut short
    return clean(lines[0][:limit] if lines else "", secrets)


def _quiet_token(get) -> str | None:
    try:
        return get()
    except Exception:  # a broken login cache is not this message's business
        return None


@contextlib.contextmanager
def errors(ref: HubRef | str, doing: str, token: str | None = None):
    """Turn the client's exceptions (and :class:`~mptkit.hub._http.Refused`) into one
    :class:`HubError` sentence; the token is never part of it."""
    from huggingface_hub import errors as he

    rev = ref.revision if isinstance(ref, HubRef) else None
    repo = ref.repo_id if isinstance(ref, HubRef) else str(ref)
    # the client logs each retry of a failing transfer ("Error while downloading ... Trying to
    # resume"); mptkit says what failed in one sentence (MPTKIT_DEBUG=1 / --debug keeps the log)
    quiet = quiet_logger("huggingface_hub") if os.environ.get("MPTKIT_DEBUG") != "1" else contextlib.nullcontext()
    try:
        with quiet:
            yield
    except MptkitError:
        raise
    except Refused as e:
        raise HubError(f"{ref}: cannot {doing}: {said(e.reason, token, limit=400)}") from None
    except he.OfflineModeIsEnabled as e:
        raise HubError(f"{ref}: cannot {doing}: HF_HUB_OFFLINE is set, so the Hub is not asked") from e
    except he.RevisionNotFoundError as e:
        raise HubError(
            f"{ref}: the repo {repo} has no revision '{rev or 'main'}' (no branch, tag or commit of that name)"
        ) from e
    except he.GatedRepoError as e:
        raise HubError(
            f"{ref}: {repo} is gated: accept its conditions on the Hub and use a token "
            "(HF_TOKEN, `hf auth login` or --token)"
        ) from e
    except he.RepositoryNotFoundError as e:
        raise HubError(
            f"{ref}: no repo {repo} on {where()} (or it is private and no valid token was given: "
            "set HF_TOKEN, run `hf auth login` or pass --token)"
        ) from e
    except he.LocalEntryNotFoundError as e:
        raise HubError(
            f"{ref}: cannot {doing}: it is not in the local cache ({cache_dir()}) and the Hub "
            "was not asked (HF_HUB_OFFLINE or local-only)"
        ) from e
    except he.EntryNotFoundError as e:
        raise HubError(f"{ref}: cannot {doing}: the file is not in {repo} at revision {rev or 'main'}") from e
    except he.HfHubHTTPError as e:
        code = getattr(getattr(e, "response", None), "status_code", None)
        msg = said(getattr(e, "server_message", None), token)
        detail = f": {msg}" if msg else ""
        if code in (401, 403):
            raise HubError(
                f"{ref}: the Hub refused to {doing} (HTTP {code}{detail}); a token with access to "
                f"{repo} is needed, with write access to push (HF_TOKEN, `hf auth login` or --token)"
            ) from e
        raise HubError(f"{ref}: the Hub at {where()} answered HTTP {code} when asked to {doing}{detail}") from e
    except Exception as e:  # transport failures and answers the client could not parse
        if _local(e):  # the local disk's (the HF cache, an output), said by the code that writes there
            raise
        module = type(e).__module__ or ""
        text = said(e, token) or type(e).__name__
        transport = module.startswith(("httpx", "httpcore", "requests", "urllib3"))
        if transport or isinstance(e, (ConnectionError, TimeoutError)):
            raise HubError(
                f"{ref}: cannot {doing}: the connection to {where()} failed ({type(e).__name__}: {text})"
            ) from e
        raise HubError(
            f"{ref}: cannot {doing}: the Hub at {where()} sent an answer that could not be used "
            f"({type(e).__name__}: {text})"
        ) from e


def _local(e: Exception) -> bool:
    """Whether ``e`` is an error of this machine's files (a full disk, a read-only folder), not of the
    network (sockets, name lookups and TLS raise their own classes) or of the client."""
    network = isinstance(e, (ConnectionError, TimeoutError))
    return isinstance(e, OSError) and type(e).__module__ == "builtins" and not network
