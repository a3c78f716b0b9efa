"""Every byte from the Hub under limits: an overall deadline, a no-progress timeout, a cap on what
one answer may hold, and credentials sent to the endpoint alone.

mptkit talks to the Hub through the client's own HTTP session (``huggingface_hub.utils
.get_session()``, so proxies and certificates set up for the client apply) and its helpers
(``build_hf_headers`` for the token and user agent, ``hf_raise_for_status`` for errors). While a
:func:`limited` block runs, two event hooks on that session put every request under
:class:`Limits`, whether mptkit or the client (``HfApi``) sends it:

- the deadline: no request starts after it, no read or write on a connection waits past it (status
  line, headers, interim ``100 Continue`` answers and body alike: :func:`mptkit.hub._wire.watch`),
  and no wait a server asks for (``Retry-After``, ``RateLimit``) may end past it: such an answer is
  refused at once, saying what the server asked;
- the no-progress timeout: a connection that moves less than :data:`MIN_PROGRESS` bytes in that
  many seconds is abandoned (a server dripping a byte every few seconds too, in any part of the
  exchange);
- a cap on the decoded body of every answer that is not a file download (:data:`API_CAP`: a page of
  a tree listing from the Hub is about 300 kB; :data:`ERROR_CAP` for error answers), counted as it
  is decoded (:class:`mptkit.hub._wire.Decoded`); downloads are capped by the size the listing
  gave, by the code that reads them, and must come unencoded;
- credentials: a request to any origin other than the endpoint's (a listing's ``Link: rel=next``,
  a redirect) is sent without ``Authorization``, and every credential sent is remembered for
  redaction (:func:`mptkit._text.remember_secret`);
- :func:`pages`: a block that may make at most so many requests (the pages of one listing).

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
from . import _wire as wire
from ._refs import endpoint
from ._wire import Refused

__all__ = ["Refused", "Limits", "limits", "limited", "pages", "session", "stream", "get_bytes", "headers"]

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

    def stalled(self, sending: bool = False) -> Refused:
        what = "took" if sending else "sent"
        return Refused(
            f"the server {what} less than {MIN_PROGRESS} bytes in {self.timeout:g} s (no progress; "
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
_budgets: list[list] = []  # [requests made, most allowed, what they are], innermost last
_lock = threading.Lock()


def session():
    """The client's shared session, with mptkit's hooks on it (they act only inside :func:`limited`).
    The client may replace its session (after a failed connection), so this is asked each time."""
    endpoint()  # a malformed HF_ENDPOINT: one sentence, before the client fails to import over it
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


@contextlib.contextmanager
def pages(most: int, what: str):
    """At most ``most`` requests inside this block, which reads ``what`` page by page (each page
    naming the next, ``Link: rel=next``): one more is :class:`Refused`."""
    box = [0, most, what]
    with _lock:
        _budgets.append(box)
    try:
        yield
    finally:
        with _lock:
            _budgets.remove(box)


def _current() -> Limits | None:
    return _active[-1] if _active else None


def _on_request(request) -> None:
    lim = _current()
    if lim is None:
        return
    left = lim.left()
    if left <= 0:
        raise lim.expired()
    for box in list(_budgets):
        box[0] += 1
        if box[0] > box[1]:
            raise Refused(
                f"the server's {box[2]} goes on past {box[1]:,} pages (each names the next with "
                'Link: rel="next"); refused'
            )
    t = max(0.001, min(lim.timeout, left))
    request.extensions["timeout"] = {"connect": t, "read": t, "write": t, "pool": t}
    request.headers["Accept-Encoding"] = "identity"  # answers come plain (those that do not are decoded here, capped)
    wire.credentials(request)
    traced = request.extensions.get("trace")
    request.extensions["trace"] = lambda name, info: _trace(name, info, traced)
    wire.restart()


_WATCHED = (".connect_tcp.complete", ".start_tls.complete", ".connect_unix_socket.complete")


def _trace(name: str, info: dict, chained) -> None:
    """httpcore's trace extension: each new connection's stream is watched from its first byte."""
    if name.endswith(_WATCHED):
        wire.watch(info.get("return_value"), _current, MIN_PROGRESS)
    if chained is not None:
        chained(name, info)


def _on_response(response) -> None:
    lim = _current()
    if lim is None:
        return
    # a connection opened outside mptkit's limits (kept alive in the client's pool): watched from now
    wire.watch(response.extensions.get("network_stream"), _current, MIN_PROGRESS)
    asked = wire.asked_wait(response.status_code, response.headers)
    if asked is not None:
        wire.refuse_long_wait(lim, response.status_code, *asked)
    download = response.request.extensions.get(DOWNLOAD) and response.status_code < 400
    if download:  # read raw by get_bytes, which refuses an encoded file
        response.stream = _guard_type(response)(response.stream, lim, None, [])
        return
    bodiless = response.request.method == "HEAD" or response.status_code in (204, 304)
    layers = [] if bodiless else wire.codings(response.headers.get_list("content-encoding", split_commas=True))
    if layers:  # decoded here, piece by piece and counted; the library sees a plain answer
        del response.headers["content-encoding"]
    cap = ERROR_CAP if response.status_code >= 400 else API_CAP
    response.stream = _guard_type(response)(response.stream, lim, cap, layers)


_GUARDS: dict[str, type] = {}


def _guard_type(response) -> type:
    """A byte stream class of the session's HTTP library (httpx, or its fork httpx2) that wraps a
    response's body with the checks; made once per library."""
    lib = type(response).__module__.split(".")[0]
    if lib not in _GUARDS:
        base = importlib.import_module(lib).SyncByteStream

        class Guarded(base):
            def __init__(self, inner, lim: Limits, cap: int | None, layers: list[str]):
                self.inner, self.lim, self.cap, self.layers = inner, lim, cap, layers

            @property
            def elapsed(self):
                return getattr(self.inner, "elapsed", None)

            def _raw(self):
                it, lim = iter(self.inner), self.lim
                while True:
                    try:
                        chunk = next(it)
                    except StopIteration:
                        return
                    except Exception as e:  # a connection not watched (see _on_response): its own timeout
                        if wire._timed_out(e):
                            raise (lim.expired() if lim.left() <= 0.01 else lim.stalled()) from None
                        raise
                    if lim.left() <= 0:
                        raise lim.expired()
                    yield chunk

            def __iter__(self):
                yield from wire.Decoded(self._raw(), self.layers, self.cap)

            def close(self):
                self.inner.close()

        _GUARDS[lib] = Guarded
    return _GUARDS[lib]


# -- requests mptkit makes itself ----------------------------------------------------------------
def headers(token: str | None, extra: dict | None = None) -> dict:
    from huggingface_hub.utils import build_hf_headers

    from .._version import __version__

    h = build_hf_headers(token=wire.credential(token), library_name="mptkit", library_version=__version__)
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
        response = None
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
            response = getattr(e, "response", None)
        lim = _current()
        wait = min(0.25 * 2 ** (tries - 1), 2.0)
        asked = wire.asked_wait(response.status_code, response.headers) if response is not None else None
        wait = max(wait, asked[0] if asked else 0.0)  # what the server asked (past the deadline: refused already)
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
