"""The fake Hub's server: :class:`HubServer` holds the repos, the request log, faults and hostile
modes, and serves them on 127.0.0.1 (a thread per connection, one request per connection)."""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from tests.fakehub.faults import FAULT_KINDS, HOSTILE_KINDS, Fault, damage_body, hostile_modes, pace, replace_answer
from tests.fakehub.repos import Blob, Commit, Repo, read_range, size_of
from tests.fakehub.routes import Request, Response, Routes, error_answer


class HubServer:
    """``with HubServer() as hub: ...`` -> ``hub.url`` is the endpoint for ``HF_ENDPOINT``."""

    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self.hostiles: dict[str, dict] = {}
        self.hooks: list[tuple[str, Callable[[], None]]] = []
        #: when set, writes (create, preupload, commit, branch) need ``Authorization: Bearer <token>``
        self.require_token: str | None = None
        #: entries per page of a tree listing (None: all in one answer), pages linked as the Hub does
        self.page_size: int | None = None
        self.lock = threading.RLock()
        self._counter = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> HubServer:
        server = self

        class Handler(_Handler):
            hub = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def client_env(self, home) -> dict[str, str]:
        """The environment a client process (or this one) needs to use this server as its Hub, with
        its caches under ``home``: no telemetry, no progress bars, no proxy for loopback."""
        return {
            "HF_ENDPOINT": self.url,
            "HF_HOME": str(home / "hf-home"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            "MPTKIT_CACHE": str(home / "mptkit-cache"),
        }

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # -- state helpers for tests ----------------------------------------------------------------
    def _new_sha(self, repo_id: str, message: str) -> str:
        self._counter += 1
        return hashlib.sha1(f"{repo_id}\0{message}\0{self._counter}".encode()).hexdigest()

    def create_repo(self, repo_id: str, private: bool = False) -> Repo:
        with self.lock:
            repo = self.repos.get(repo_id)
            if repo is None:
                repo = self.repos[repo_id] = Repo(repo_id, private)
                sha = self._new_sha(repo_id, "initial commit")
                attrs = (
                    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
                )
                repo.commits[sha] = Commit(sha, {".gitattributes": attrs}, None, "initial commit")
                repo.refs["main"] = sha
            return repo

    def commit(
        self, repo_id: str, files: dict[str, bytes | Blob | None], message: str = "update", branch: str = "main"
    ) -> str:
        """Commit ``files`` (None deletes a path) on ``branch`` (created from main if missing)."""
        with self.lock:
            repo = self.create_repo(repo_id)
            head = repo.refs.get(branch) or repo.refs["main"]
            new = dict(repo.commits[head].files)
            for path, data in files.items():
                if data is None:
                    new.pop(path, None)
                else:
                    new[path] = data if isinstance(data, Blob) else bytes(data)
            sha = self._new_sha(repo_id, message)
            repo.commits[sha] = Commit(sha, new, head, message)
            repo.refs[branch] = sha
            return sha

    def files(self, repo_id: str, rev: str = "main") -> dict[str, bytes]:
        return {
            p: (read_range(d, 0, size_of(d)) if isinstance(d, Blob) else d)
            for p, d in self.repos[repo_id].resolve(rev).files.items()
        }

    def fault(
        self, kind: str, *, path: str | None = None, method: str | None = None, times: int | None = 1, **options
    ) -> Fault:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; one of {FAULT_KINDS}")
        f = Fault(kind, path, method, times, options)
        with self.lock:
            self.faults.append(f)
        return f

    def hostile(self, repo_id: str, **options) -> None:
        """Answer requests about ``repo_id`` the way an attacker's server would (see the module doc)."""
        bad = set(options) - set(HOSTILE_KINDS)
        if bad:
            raise ValueError(f"unknown hostile options {sorted(bad)}; known: {HOSTILE_KINDS}")
        with self.lock:
            self.hostiles.setdefault(repo_id, {}).update(options)

    def after(self, path: str, fn: Callable[[], None]) -> None:
        with self.lock:
            self.hooks.append((path, fn))

    def clear(self) -> None:
        """Forget the request log, all faults, hostile modes and hooks."""
        with self.lock:
            self.requests.clear()
            self.faults.clear()
            self.hostiles.clear()
            self.hooks.clear()

    def bytes_sent(self, path: str | None = None, method: str | None = None) -> int:
        """Body bytes sent for requests whose path matches the regex ``path``."""
        with self.lock:
            return sum(
                r.sent
                for r in self.requests
                if (path is None or re.search(path, r.path)) and (method is None or r.method == method)
            )

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.matches(method, path):
                    if f.times is not None:
                        f.times -= 1
                    return f
        return None

    def run_hooks(self, path: str) -> None:
        with self.lock:
            due = [h for h in self.hooks if re.search(h[0], path)]
            for h in due:
                self.hooks.remove(h)
        for _, fn in due:
            fn()


class _Handler(Routes, BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.0"  # one request per connection: simple and fault-friendly

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self):
        self._handle("GET")

    def do_HEAD(self):
        self._handle("HEAD")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_DELETE(self):
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        parts = urlsplit(self.path)
        path = parts.path
        req = Request(method, path, parse_qs(parts.query), {k.lower(): v for k, v in self.headers.items()})
        with self.hub.lock:
            self.hub.requests.append(req)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        fault = self.hub.take_fault(method, path)
        if fault is not None and fault.kind == "drop":
            self.close_connection = True
            return
        self.hostile = hostile_modes(self.hub.hostiles, path)
        try:
            resp = self._route(method, path, req, body)
        except Exception as e:  # a bug in the server: say so, as a 500
            resp = error_answer(500, f"test server error: {type(e).__name__}: {e}")
        resp = replace_answer(resp, req, fault, self.hostile)
        self._send(method, req, resp, fault)
        self.hub.run_hooks(path)

    def _send(self, method: str, req: Request, resp: Response, fault: Fault | None) -> None:
        declared = resp.length
        if "Content-Length" in resp.headers:
            declared = int(resp.headers.pop("Content-Length"))
        body, declared = damage_body(resp.body, declared, fault)
        self.send_response(resp.status)
        for k, v in resp.headers.items():
            self.send_header(k, v)
        if declared is not None:
            self.send_header("Content-Length", str(max(declared, 0)))
        self.end_headers()
        req.status = resp.status
        body, slow = pace(body, req, self.hostile)
        if method == "HEAD":
            self.close_connection = True
            return
        try:
            for chunk in body:
                if slow:
                    for i in range(len(chunk)):
                        self.wfile.write(chunk[i : i + 1])
                        self.wfile.flush()
                        with self.hub.lock:
                            req.sent += 1
                        time.sleep(slow)
                    continue
                # Count before writing: the client may return (and the test read the log) as soon as
                # the last byte arrives, before this thread gets to run again.
                with self.hub.lock:
                    req.sent += len(chunk)
                self.wfile.write(chunk)
        except OSError:
            pass  # the client went away; what it received is at most what was counted
        self.close_connection = True
