"""A hostile front for the fake Hub (:mod:`tests.fakehub`), on 127.0.0.1, speaking raw HTTP/1.1 over
sockets: what ``http.server`` cannot play. Each request is read (line, headers, body), then the
first rule whose method and path pattern match answers it; a request no rule matches is forwarded
to the fake Hub behind and its answer relayed. Point ``HF_ENDPOINT`` at ``front.url``.

    with HubServer() as hub, WireFront(hub.url) as front:
        front.rule(r"/tree/", drip_headers())          # the listing's headers, a byte at a time
        front.rule(r"/api/models/", continue_flood())   # 100 Continue without end
        front.rule(r"/tree/", reply(200, body, {"Content-Encoding": "gzip"}))

Answers that stall do so by construction (a server that never sends the next header line, or never
reads the body), until the client gives up or the front stops.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Req:
    method: str
    target: str  # path and query, as sent
    headers: dict  # lower-case names
    body: bytes = b""
    read_body: bool = True

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


@dataclass
class WireFront:
    backend: str
    rules: list = field(default_factory=list)
    requests: list = field(default_factory=list)

    def __post_init__(self):
        self.stopping = threading.Event()
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()

    # -- life ----------------------------------------------------------------------------------
    def __enter__(self) -> WireFront:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()
        with self.lock:
            for c in self.conns:
                try:
                    c.close()
                except OSError:
                    pass

    def rule(self, path: str, action: Callable, *, method: str | None = None, times: int | None = None) -> None:
        """Answer requests whose path (with the query) matches ``path`` with ``action(conn, req, front)``."""
        self.rules.append([re.compile(path), method, times, action])

    def seen(self, path: str = "") -> list[Req]:
        with self.lock:
            return [r for r in self.requests if re.search(path, r.target)]

    # -- serving -------------------------------------------------------------------------------
    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with self.lock:
                self.conns.append(conn)
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        try:
            req = self._read_head(conn)
            if req is None:
                return
            action = self._match(req)
            if action is None or getattr(action, "reads_body", True):
                req.body = self._read_body(conn, req)
            with self.lock:
                self.requests.append(req)
            (action or forward)(conn, req, self)
        except OSError:
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def _match(self, req: Req):
        with self.lock:
            for r in self.rules:
                pattern, method, times, action = r
                if (method is None or method == req.method) and pattern.search(req.target) and times != 0:
                    if times is not None:
                        r[2] -= 1
                    return action
        return None

    @staticmethod
    def _read_head(conn: socket.socket) -> Req | None:
        conn.settimeout(30)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        req = Req(method, target, headers)
        req._rest = rest
        return req

    @staticmethod
    def _read_body(conn: socket.socket, req: Req) -> bytes:
        n = int(req.headers.get("content-length") or 0)
        body = req._rest
        while len(body) < n:
            chunk = conn.recv(min(1 << 20, n - len(body)))
            if not chunk:
                break
            body += chunk
        return body

    def fetch(self, req: Req) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """What the fake Hub answers to ``req``: (status, reason, headers, body)."""
        u = urlsplit(self.backend)
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        skip = {"host", "content-length", "connection", "accept-encoding"}
        c.request(
            req.method,
            req.target,
            body=req.body or None,
            headers={k: v for k, v in req.headers.items() if k not in skip},
        )
        r = c.getresponse()
        body = r.read() if req.method != "HEAD" else b""
        out = (
            r.status,
            r.reason,
            [(k, v) for k, v in r.getheaders() if k.lower() not in ("connection", "transfer-encoding")],
            body,
        )
        c.close()
        return out


# -- answers -------------------------------------------------------------------------------------
def send(conn: socket.socket, status: int, body: bytes, headers=(), reason: str = "X", length: int | None = -1) -> None:
    head = f"HTTP/1.1 {status} {reason}\r\n"
    hs = list(headers.items() if isinstance(headers, dict) else headers)
    if length == -1:
        hs = [(k, v) for k, v in hs if k.lower() != "content-length"] + [("Content-Length", str(len(body)))]
    hs.append(("Connection", "close"))
    head += "".join(f"{k}: {v}\r\n" for k, v in hs) + "\r\n"
    conn.sendall(head.encode("latin-1") + body)


def forward(conn, req: Req, front: WireFront) -> None:
    status, reason, headers, body = front.fetch(req)
    send(conn, status, body, headers, reason)


def reply(status: int, body: bytes = b"", headers: dict | None = None) -> Callable:
    """The same answer to every matching request."""

    def act(conn, req, front):
        send(conn, status, body, headers or {})

    return act


def drip_headers(every: float = 0.1) -> Callable:
    """A status line, then a header line a byte at a time that never ends."""

    def act(conn, req, front):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Drip: ")
        while not front.stopping.is_set():
            conn.sendall(b"a")
            time.sleep(every)

    return act


def silent_after_status() -> Callable:
    """A status line and one header, then nothing (the next header line never comes)."""

    def act(conn, req, front):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        front.stopping.wait()

    return act


def continue_flood(every: float = 0.002) -> Callable:
    """``100 Continue`` interim answers, one after another, without end."""

    def act(conn, req, front):
        while not front.stopping.is_set():
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            time.sleep(every)

    return act


def never_read_body() -> Callable:
    """The request's headers are read; its body never is, and no answer comes."""

    def act(conn, req, front):
        front.stopping.wait()

    act.reads_body = False
    return act
