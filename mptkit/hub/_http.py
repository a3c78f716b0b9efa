"""Every byte from the Hub under limits: an overall deadline, a no-progress timeout and a cap on
what one answer may hold.

mptkit talks to the Hub through the client's own HTTP session (``huggingface_hub.utils
.get_session()``, so proxies and certificates set up for the client apply) and its helpers
(``build_hf_headers`` for the token and user agent, ``hf_raise_for_status`` for errors). While a
:func:`limited` block runs, two event hooks on that session put every request under
:class:`Limits`, whether mptkit or the client (``HfApi``) sends it:

- the deadline: no request starts after it, and no read waits past it;
- the no-progress timeout: a connection that sends nothing, or less than :data:`MIN_PROGRESS`
  bytes, for that many seconds is abandoned (a server dripping a byte every few seconds too);
- a cap on the body of every answer that is not a file download (:data:`API_CAP`: a page of a
  tree listing from the Hub is about 300 kB; :data:`ERROR_CAP` for error answers); downloads are
  capped by the size the listing gave, by the code that reads them.

Defaults: :data:`DEFAULT_TIMEOUT` and :data:`DEFAULT_DEADLINE`; ``MPTKIT_HUB_TIMEOUT`` and
``MPTKIT_HUB_DEADLINE`` (seconds) change them, and so do ``--timeout``/``--deadline``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .._options import HUB_DEADLINE as DEFAULT_DEADLINE, HUB_TIMEOUT as DEFAULT_TIMEOUT
from ..errors import UsageError

#: fewer bytes than this in a whole no-progress timeout counts as no progress
MIN_PROGRESS = 1024
API_CAP = 8 << 20
ERROR_CAP = 64 << 10
#: the request extension that marks a file download (its body is capped by its reader)
DOWNLOAD = "mptkit_download"
#: tries of one byte range (each resumes where the last one stopped)
TRIES = 3
#: what a retry waits (tests replace it)
pause = time.sleep


class Refused(Exception):
    """A transfer ran out of time, sent too much, or broke the protocol; :func:`mptkit.hub._client.errors`
    says ``reason`` in one sentence, naming the reference and what was being done."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(eq=False)  # told apart by identity (the stack of active limits)
class Limits:
    timeout: float  # seconds without progress
    deadline: float  # seconds for all of one operation's transfers
    end: float  # time.monotonic() when they must be done

    def left(self) -> float:
        return self.end - time.monotonic()

    def expired(self) -> Refused:
        return Refused(
            f"the transfers took longer than the deadline of {self.deadline:g} s (set another with "
            "--deadline or MPTKIT_HUB_DEADLINE)"
        )

    def stalled(self) -> Refused:
        return Refused(
            f"the server sent less than {MIN_PROGRESS} bytes in {self.timeout:g} s (no progress; "
            "wait longer with --timeout or MPTKIT_HUB_TIMEOUT)"
        )


def _seconds(value, name: str, default: float) -> float:
    if value is None or value == "":
        return default
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = -1.0
    if not out > 0 or out == float("inf"):
        raise UsageError(f"{name} must be a positive number of seconds, found {value!r}")
    return out


def limits(timeout: float | None = None, deadline: float | None = None) -> Limits:
    """Limits for one operation, starting now: the arguments, else ``MPTKIT_HUB_TIMEOUT`` and
    ``MPTKIT_HUB_DEADLINE``, else the defaults."""
    t = _seconds(
        timeout if timeout is not None else os.environ.get("MPTKIT_HUB_TIMEOUT"),
        "--timeout" if timeout is not None else "MPTKIT_HUB_TIMEOUT",
        DEFAULT_TIMEOUT,
    )
    d = _seconds(
        deadline if deadline is not None else os.environ.get("MPTKIT_HUB_DEADLINE"),
        "--deadline" if deadline is not None else "MPTKIT_HUB_DEADLINE",
        DEFAULT_DEADLINE,
    )
    return Limits(t, d, time.monotonic() + d)


# -- the hooks ---------------------------------------------------------------------------------
_active: list[Limits] = []
_lock = threading.Lock()


def session():
    """The client's shared session, with mptkit's hooks on it (they act only inside :func:`limited`).
    The client may replace its session (after a failed connection), so this is asked each time."""
    from huggingface_hub.utils import get_session

    s = get_session()
    hooks = s.event_hooks
    if _on_request not in hooks["request"]:
        hooks["request"].append(_on_request)
        hooks["response"].append(_on_response)
    return s


@contextlib.contextmanager
def limited(lim: Limits):
    """Every request sent through the client's session inside this block obeys ``lim``."""
    session()
    with _lock:
        _active.append(lim)
    try:
        yield lim
    finally:
        with _lock:
            _active.remove(lim)


def _current() -> Limits | None:
    return _active[-1] if _active else None


def _on_request(request) -> None:
    lim = _current()
    if lim is None:
        return
    left = lim.left()
    if left <= 0:
        raise lim.expired()
    t = max(0.001, min(lim.timeout, left))
    request.extensions["timeout"] = {"connect": t, "read": t, "write": t, "pool": t}
    request.headers["Accept-Encoding"] = "identity"  # a cap on the bytes read is a cap on the answer


def _on_response(response) -> None:
    lim = _current()
    if lim is None:
        return
    download = response.request.extensions.get(DOWNLOAD) and response.status_code < 400
    cap = None if download else (ERROR_CAP if response.status_code >= 400 else API_CAP)
    response.stream = _guard_type(response)(response.stream, lim, cap)


_GUARDS: dict[str, type] = {}


def _guard_type(response) -> type:
    """A byte stream class of the session's HTTP library (httpx, or its fork httpx2) that wraps a
    response's body with the checks; made once per library."""
    lib = type(response).__module__.split(".")[0]
    if lib not in _GUARDS:
        base = importlib.import_module(lib).SyncByteStream

        class Guarded(base):
            def __init__(self, inner, lim: Limits, cap: int | None):
                self.inner, self.lim, self.cap = inner, lim, cap

            @property
            def elapsed(self):
                return getattr(self.inner, "elapsed", None)

            def __iter__(self):
                lim, total = self.lim, 0
                since, got = time.monotonic(), 0
                it = iter(self.inner)
                while True:
                    try:
                        chunk = next(it)
                    except StopIteration:
                        return
                    except Exception as e:
                        if any(c.__name__ == "TimeoutException" for c in type(e).__mro__):
                            raise (lim.expired() if lim.left() <= 0.01 else lim.stalled()) from None
                        raise
                    now = time.monotonic()
                    total += len(chunk)
                    got += len(chunk)
                    if self.cap is not None and total > self.cap:
                        raise Refused(
                            f"the server's answer is larger than {self.cap:,} bytes (an answer of "
                            "the Hub's is much smaller); refused"
                        )
                    if now > lim.end:
                        raise lim.expired()
                    if now - since >= lim.timeout:
                        if got < MIN_PROGRESS:
                            raise lim.stalled()
                        since, got = now, 0
                    yield chunk

            def close(self):
                self.inner.close()

        _GUARDS[lib] = Guarded
    return _GUARDS[lib]


# -- requests mptkit makes itself ----------------------------------------------------------------
def headers(token: str | None, extra: dict | None = None) -> dict:
    from huggingface_hub.utils import build_hf_headers

    from .._version import __version__

    h = build_hf_headers(token=token, library_name="mptkit", library_version=__version__)
    h.update(extra or {})
    return h


@contextlib.contextmanager
def stream(url: str, token: str | None, extra_headers: dict | None = None):
    """An open response to ``GET url`` (a file download: its body is not capped here); an error
    status raises the client's own exceptions (``hf_raise_for_status``) after reading at most
    :data:`ERROR_CAP` bytes of the error."""
    from huggingface_hub.utils import hf_raise_for_status

    with session().stream(
        "GET", url, headers=headers(token, extra_headers), follow_redirects=True, extensions={DOWNLOAD: True}
    ) as response:
        if response.status_code >= 400:
            response.read()
            hf_raise_for_status(response)
        yield response


_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


def get_bytes(
    url: str, token: str | None, *, commit: str, start: int, length: int, total: int, sink: Callable[[bytes], None]
) -> None:
    """Bytes ``start`` to ``start + length`` of the file at ``url`` (``total`` bytes long, as
    listed) into ``sink``, chunk by chunk, with one ``Range`` request (more if the connection
    breaks: each try resumes where the last stopped). Checked: the status (206, or 200 with the
    whole file when the whole file was asked for), ``Content-Range``, ``Content-Length``, the
    number of bytes, and ``X-Repo-Commit`` (the answer must come from ``commit``). Anything else
    is :class:`Refused` (the caller drops what ``sink`` got)."""
    pos, end, tries = start, start + length, 0
    while True:
        tries += 1
        try:
            _one_try(url, token, commit, pos, end, total, whole=(start == 0 and length == total), sink=sink)
            return
        except _Broken as e:
            got = e.pos - pos
            pos = e.pos
            if tries >= TRIES and got <= 0 or tries >= TRIES * 3:
                raise Refused(e.reason) from None
        except Exception as e:
            if not _transient(e) or tries >= TRIES:
                raise
        lim = _current()
        wait = min(0.25 * 2 ** (tries - 1), 2.0)
        if lim is not None and lim.left() <= wait:
            raise lim.expired()
        pause(wait)


class _Broken(Exception):
    def __init__(self, pos: int, reason: str):
        self.pos, self.reason = pos, reason


def _transient(e: Exception) -> bool:
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(e, HfHubHTTPError):
        return getattr(e.response, "status_code", None) in (429, 500, 502, 503, 504)
    names = {c.__name__ for c in type(e).__mro__}
    return bool(names & {"NetworkError", "RemoteProtocolError"})


def _one_try(url, token, commit, pos, end, total, *, whole, sink) -> None:
    with stream(url, token, {"Range": f"bytes={pos}-{end - 1}"}) as r:
        for h in (*r.history, r):
            said = h.headers.get("X-Repo-Commit")
            if said is not None and said != commit:
                raise Refused(
                    f"the server answered from commit {said[:40]!r} when asked for commit {commit} "
                    "(the files of one commit are never mixed with another's)"
                )
        if r.headers.get("Content-Encoding", "identity") != "identity":
            raise Refused(
                f"the server sent the file {r.headers['Content-Encoding'][:20]!r}-encoded, not as the bytes asked for"
            )
        if r.status_code == 200:
            if not (whole and pos == 0):
                raise Refused(
                    f"the server ignored the range request for bytes {pos}-{end - 1} and began to send the "
                    "whole file (HTTP 200); mptkit reads only the bytes it needs and stopped there"
                )
        elif r.status_code == 206:
            m = _CONTENT_RANGE.match(r.headers.get("Content-Range", "").strip())
            if not m or (int(m.group(1)), int(m.group(2)) + 1, int(m.group(3))) != (pos, end, total):
                raise Refused(
                    f"the server sent Content-Range {r.headers.get('Content-Range', 'nothing')[:60]!r} "
                    f"when asked for bytes {pos}-{end - 1} of {total}"
                )
        else:
            raise Refused(f"the server answered HTTP {r.status_code} to a download")
        declared = r.headers.get("Content-Length")
        if declared is not None and declared.strip() != str(end - pos):
            raise Refused(
                f"the server announced {declared[:20]} bytes where {end - pos} were asked for (the listing "
                f"says the file holds {total})"
            )
        try:
            for chunk in r.iter_raw():
                if pos + len(chunk) > end:
                    raise Refused(f"the server sent more than the {end - pos} bytes asked for")
                sink(chunk)
                pos += len(chunk)
        except Exception as e:
            if not _transient(e):
                raise
            raise _Broken(
                pos, f"the connection broke after byte {pos} of {total} ({type(e).__name__}: {str(e)[:80] or 'closed'})"
            ) from None
    if pos < end:
        raise _Broken(pos, f"the server stopped sending at byte {pos} of {total} (the file holds {total} bytes)")
