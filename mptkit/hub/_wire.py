"""The bytes of an HTTP exchange, bounded below the level the HTTP library lets a caller set limits
at (:mod:`mptkit.hub._http` puts these on the client's session):

- time: every read and write on a connection's socket waits at most until the operation's
  deadline, and until the end of the current no-progress window. The library's own read timeout
  restarts with every byte, so a server that drips a response's header lines, or sends ``100
  Continue`` interim answers without end, was never stopped by it; watching the socket covers the
  status line, the headers, interim answers and the body alike (:func:`watch`);
- size: an answer's body is decoded here, in pieces of at most :data:`PIECE` bytes per layer of
  ``Content-Encoding``, and what is decoded is counted against the cap (:class:`Decoded`). The
  library collects the whole decoded answer (httpx itself decodes a whole received chunk at once):
  a listing of 4.6 MB of gzip on the wire, 1 GB decoded, took 2.1 GB of memory, a few kB gzip'd
  twice the same (measured with benchmarks/hub_attacks.py before this module);
- credentials: only to the endpoint's origin (:func:`credentials`), tokens checked (:func:`credential`);
- waits a server asks for (``Retry-After``, ``RateLimit``): :func:`asked_wait`, :func:`refuse_long_wait`.
"""

from __future__ import annotations

import sys
import threading
import time
import zlib

from ..errors import UsageError
from ._refs import endpoint, origin

#: most bytes one decoding step makes (per layer of Content-Encoding)
PIECE = 64 << 10
#: most layers of Content-Encoding taken (a server applies one, if any)
MAX_LAYERS = 3
#: a Content-Encoding that is decoded here, and the zlib window bits that decode it
ZLIB_CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
#: statuses after which the client waits and asks again (huggingface_hub's http_backoff)
RETRIED = frozenset({408, 429, 500, 502, 503, 504})


class Refused(Exception):
    """A transfer ran out of time, sent too much, or broke the protocol; :func:`mptkit.hub._client.errors`
    says ``reason`` in one sentence, naming the reference and what was being done."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# -- time ----------------------------------------------------------------------------------------
class _Window(threading.local):
    """This thread's no-progress window: when it began and the bytes moved since."""

    since = 0.0
    moved = 0


window = _Window()


def restart() -> None:
    """A new exchange starts on this thread: its no-progress window starts now."""
    window.since, window.moved = time.monotonic(), 0


def _wait(lim, min_progress: int, sending: bool) -> float:
    """Seconds the next socket operation may wait: until the deadline or the end of the window,
    whichever comes first; raises when either has passed (a window with progress starts again)."""
    now = time.monotonic()
    if now >= lim.end:
        raise lim.expired()
    if not window.since:  # a thread whose exchange began elsewhere: its window starts with its first read
        window.since = now
    if now - window.since >= lim.timeout:
        if window.moved < min_progress:
            raise lim.stalled(sending)
        window.since, window.moved = now, 0
    return max(0.001, min(lim.end - now, window.since + lim.timeout - now))


def _timed_out(e: BaseException) -> bool:
    return any(c.__name__ in ("ReadTimeout", "WriteTimeout", "TimeoutException", "timeout") for c in type(e).__mro__)


def watch(stream, current, min_progress: int) -> None:
    """Make a connection's network stream (httpcore's, with ``read(n, timeout)`` and
    ``write(data, timeout)``) obey ``current()``'s limits (a :class:`~mptkit.hub._http.Limits`, or
    None outside an operation, when the stream behaves as before). Done once per connection."""
    if stream is None or getattr(stream, "_mptkit_watched", False):
        return
    read, write = stream.read, stream.write

    def bounded_read(max_bytes: int, timeout: float | None = None) -> bytes:
        lim = current()
        if lim is None:
            return read(max_bytes, timeout)
        while True:
            try:
                data = read(max_bytes, _wait(lim, min_progress, False))
            except Exception as e:
                if _timed_out(e):
                    continue  # the deadline or the window's end: _wait says which
                raise
            window.moved += len(data)
            return data

    def bounded_write(buffer, timeout: float | None = None) -> None:
        lim = current()
        if lim is None:
            return write(buffer, timeout)
        view = memoryview(buffer).cast("B")
        for i in range(0, len(view), PIECE):
            piece = view[i : i + PIECE]
            try:
                write(piece, _wait(lim, min_progress, True))
            except Exception as e:
                if _timed_out(e):
                    raise (lim.expired() if lim.left() <= 0.01 else lim.stalled(True)) from None
                raise
            window.moved += len(piece)
        return None

    try:
        stream.read, stream.write = bounded_read, bounded_write
        stream._mptkit_watched = True
    except AttributeError:  # a stream class that takes no attributes: the library's timeouts only
        pass


# -- size ----------------------------------------------------------------------------------------
def codings(values: list[str]) -> list[str]:
    """The layers of ``Content-Encoding`` to undo, in the order they were applied; an encoding not
    decoded here, or too many layers, is :class:`Refused` (mptkit asks for plain answers)."""
    layers = [v.strip().lower() for value in values for v in value.split(",")]
    layers = [v for v in layers if v and v != "identity"]
    for v in layers:
        if v not in ZLIB_CODINGS:
            raise Refused(
                f"the server sent an answer encoded {v[:20]!r}, which mptkit does not decode (it asks for plain "
                "answers, Accept-Encoding: identity); refused"
            )
    if len(layers) > MAX_LAYERS:
        raise Refused(
            f"the server sent an answer encoded {len(layers)} times over ({', '.join(layers[:8])}); mptkit "
            f"decodes at most {MAX_LAYERS} layers (it asks for plain answers, Accept-Encoding: identity); refused"
        )
    return layers


class _Layer:
    def __init__(self, coding: str):
        self.coding = coding
        self.raw_deflate = False  # "deflate" is zlib-wrapped by the standard, raw by some servers
        self.z = zlib.decompressobj(ZLIB_CODINGS[coding])
        self.fresh = True

    def _step(self, data: bytes) -> bytes:
        try:
            out = self.z.decompress(data, PIECE)
        except zlib.error as e:
            if not (self.fresh and self.coding == "deflate"):
                raise Refused(f"the server's {self.coding}-encoded answer is corrupt ({e})") from None
            self.z, self.fresh = zlib.decompressobj(-zlib.MAX_WBITS), False
            return self._step(data)
        self.fresh = False
        return out

    def feed(self, data: bytes):
        """Decoded pieces of ``data`` (each at most :data:`PIECE` bytes)."""
        out = self._step(data)
        while out:  # until a step makes nothing (a full piece may leave output pending inside zlib)
            yield out
            out = self._step(self.z.unconsumed_tail)

    def flush(self):
        yield from self.feed(b"")
        rest = self.z.flush()
        if rest:
            yield rest


class Decoded:
    """A body's decoded bytes, from an iterator of its raw chunks, undoing ``layers`` (in the order
    they were applied) piece by piece; more than ``cap`` decoded bytes (None: no cap) is
    :class:`Refused` as soon as they are decoded."""

    def __init__(self, raw, layers: list[str], cap: int | None):
        self.raw, self.cap, self.total = raw, cap, 0
        self.layers = [_Layer(c) for c in reversed(layers)]  # the last applied is undone first

    def _through(self, pieces, k: int):
        if k == len(self.layers):
            yield from pieces
            return
        layer = self.layers[k]
        for p in pieces:
            yield from self._through(layer.feed(p), k + 1)
        yield from self._through(layer.flush(), k + 1)

    def __iter__(self):
        for out in self._through(iter(self.raw), 0):
            self.total += len(out)
            if self.cap is not None and self.total > self.cap:
                raise Refused(
                    f"the server's answer is larger than {self.cap:,} bytes"
                    + (" once decoded" if self.layers else "")
                    + " (an answer of the Hub's is much smaller); refused"
                )
            if out:
                yield out


# -- credentials ------------------------------------------------------------------------------
def _endpoint_origin() -> tuple[str, str, int]:
    from huggingface_hub import constants

    return origin(endpoint() or constants.ENDPOINT, "HF_ENDPOINT")


def _request_origin(url) -> tuple[str, str, int]:
    scheme = url.scheme.lower()
    return scheme, (url.host or "").lower(), url.port or {"http": 80, "https": 443}.get(scheme, 0)


def credentials(request) -> None:
    """The one place that decides whether a request carries the user's credentials: only to the
    endpoint's origin (scheme, host, port). To any other origin (a listing's next page, a redirect)
    an ``Authorization`` that holds the user's token or the endpoint's password is not sent; one a
    server issued for its own storage (an upload's header) is. What goes to the endpoint is
    remembered, so that it is never printed."""
    from .._text import is_secret, remember_secret

    auth = request.headers.get("authorization")
    if auth is None:
        return
    scheme, _, value = auth.partition(" ")
    value = value or auth
    basic = _basic(value) if scheme.lower() == "basic" else None
    if _request_origin(request.url) != _endpoint_origin():
        if is_secret(value) or (basic is not None and (is_secret(basic) or is_secret(basic.partition(":")[2]))):
            del request.headers["authorization"]
        return
    remember_secret(value)
    if basic is not None:
        remember_secret(basic)
        remember_secret(basic.partition(":")[2])


def _basic(value: str) -> str | None:
    import base64
    import binascii

    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def credential(token):
    """A token as given (``--token``, ``token=``), remembered as a secret and checked: line breaks and
    the white space around it dropped (a CRLF token file leaves a ``\\r``), as the client drops them
    from ``HF_TOKEN`` and its login cache; any other character outside printable ASCII is a :class:`UsageError` that
    does not show the token. Anything but a string (None, False) is passed on as it is."""
    if token is None:  # the client's own (HF_TOKEN, the login cache): checked, then left to the client
        from huggingface_hub.utils import get_token

        try:
            found = get_token()
        except Exception:  # a broken login cache: the client says so when it reads it
            found = None
        if isinstance(found, str):
            _checked(found, "HF_TOKEN or the login cache")
        return None
    if not isinstance(token, str):
        return token
    return _checked(token, "the token given") or None


def _checked(token: str, where: str) -> str:
    from .._text import remember_secret

    remember_secret(token)
    core = token.replace("\r", "").replace("\n", "").strip()  # as the client cleans HF_TOKEN and its token file
    remember_secret(core)
    bad = next((i for i, c in enumerate(core) if not (c.isascii() and c.isprintable())), None)
    if bad is not None:
        kind = "a control character" if ord(core[bad]) < 128 else "a character that is not ASCII"
        raise UsageError(
            f"{where} holds {kind} at position {bad + 1} of {len(core)}; a Hugging Face token is printable "
            "ASCII (check --token, HF_TOKEN or the token file)"
        )
    return core


# -- waits a server asks for -------------------------------------------------------------------
def asked_wait(status: int, headers) -> tuple[float, str] | None:
    """The seconds a server asks the client to wait before it asks again (``Retry-After`` in
    seconds or as a date; ``RateLimit: ...;r=0;t=N`` or ``RateLimit-Reset`` once nothing remains),
    and the header that said so; None when it asks for no wait or the status is not retried."""
    if status not in RETRIED:
        return None
    import re

    found: list[tuple[float, str]] = []
    after = (headers.get("retry-after") or "").strip()
    if after.isdigit():
        found.append((float(after), f"Retry-After: {after[:20]}"))
    elif after:
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(after).timestamp()
        except (TypeError, ValueError, OverflowError):
            when = None
        if when is not None:
            found.append((max(0.0, when - time.time()), f"Retry-After: {after[:40]}"))
    limit = headers.get("ratelimit") or ""
    m = re.search(r"\br\s*=\s*(\d+)\s*;\s*t\s*=\s*(\d+)", limit)
    if m and int(m.group(1)) == 0:
        found.append((float(m.group(2)), f"RateLimit: {limit.strip()[:60]}"))
    reset, remaining = (
        (headers.get("ratelimit-reset") or "").strip(),
        (headers.get("ratelimit-remaining") or "").strip(),
    )
    if reset.isdigit() and remaining == "0":
        found.append((float(reset), f"RateLimit-Reset: {reset[:20]}"))
    return max(found) if found else None


def seconds(s: float) -> str:
    """``86,400 s (1 day)``: a wait as a person reads it."""
    text = f"{s:,.0f} s"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if s >= size:
            n = s / size
            return f"{text} ({n:,.3g} {unit}{'' if round(n, 3) == 1 else 's'})"
    return text


def refuse_long_wait(lim, status: int, wait: float, said: str) -> None:
    """A server that asks for a wait before the next try: refused when the wait (the client adds
    1 s to it) would end past the deadline; said on a terminal otherwise."""
    left = lim.left()
    if wait + 1 >= left:
        raise Refused(
            f"the server answered HTTP {status} and asked for a wait of {seconds(wait)} ({said}), past the "
            f"deadline ({max(left, 0):,.0f} s of {lim.deadline:g} s left); try again later, or allow more time "
            "with --deadline or MPTKIT_HUB_DEADLINE"
        )
    if wait >= 1 and sys.stderr is not None and sys.stderr.isatty():
        from .._text import clean

        print(
            clean(
                f"mptkit: the server answered HTTP {status} and asks for a wait of {seconds(wait)} ({said}); waiting"
            ),
            file=sys.stderr,
        )
