"""A small Hugging Face Hub-compatible HTTP server for tests (127.0.0.1 only, standard library).

It serves the endpoints the real ``huggingface_hub`` client (1.x and 2.x) uses to create model
repos, commit files, resolve revisions, list trees and download files (with ``Range``): the routes
are in ``_Handler._route`` below, with the request and response shapes the client expects
(``huggingface_hub/hf_api.py`` and ``file_download.py`` are where the client builds them). Repos
live in memory with commits and branches; a file is ``bytes`` or a :class:`Blob` (content read on
demand, e.g. a 1 GB sparse file on disk). Files named like weights (``*.safetensors``, ``*.bin``)
are served as the Hub serves LFS files: the tree lists ``lfs: {oid: <sha256>, size, pointerSize}``
beside the git blob id of the pointer, and downloads carry ``X-Linked-Etag``/``X-Linked-Size``.
Every request is logged with the number of body bytes sent, so tests can check what a command
transferred.

Faults can be injected for robustness tests::

    server.fault("status", path=r"/resolve/", code=500)      # answer 500 instead
    server.fault("truncate", path=r"\\.safetensors$", keep=100) # send 100 bytes, then close
    server.fault("content_length", path=..., delta=+10)       # announce a wrong Content-Length
    server.fault("garbage", path=r"/api/models/")             # a body that is not JSON
    server.fault("drop", path=...)                            # close without any answer

Each fault matches a regular expression on the URL path (and optionally a method) and fires
``times`` times (``None``: every time). File names are stored as given, so a repo can hold names
such as ``../evil.safetensors`` that a hostile server would list (names that leave the repo are
listed in every folder's listing, as a hostile server would offer them).

A hostile server, per repo (issue 12)::

    server.hostile("owner/x", etag='"../../../x"')           # ETag header of every file download
    server.hostile("owner/x", linked_etag="/tmp/abs")        # X-Linked-Etag of weights downloads
    server.hostile("owner/x", flip={"adapter_model.safetensors": 200})  # one byte changed, same size
    server.hostile("owner/x", checksums=False)               # the listing carries no usable checksum
    server.hostile("owner/x", slow=5.0)                      # file bodies: one byte every 5 s
    server.hostile("owner/x", slow=5.0, slow_path="/commit/")  # ... or the answers to other requests
    server.hostile("owner/x", rate=2e6)                      # file bodies at 2 MB/s (not hostile: slow)
    server.hostile("owner/x", echo_auth=True)                # 401 quoting the Authorization header
    server.hostile("owner/x", error="text")                  # every answer: HTTP 500 with this text
    server.hostile("owner/x", ignore_range=True)             # 200 and the whole file to any Range
    server.hostile("owner/x", listing=3_000_000)             # that many more files in each listing
    server.hostile("owner/x", repo_commit="ab" * 20)         # X-Repo-Commit of downloads
    server.hostile("owner/x", range_shift=8)                 # 206 with the range 8 bytes further on

``server.after(pattern, fn)`` runs ``fn()`` once after the next request whose path matches (a
branch that moves between two requests, say).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Blob:
    """File content of ``size`` bytes read on demand by ``read(offset, n)``; digests computed once."""

    def __init__(self, size: int, read: Callable[[int, int], bytes]):
        self.size, self._read = size, read
        self._sha256 = self._sha1 = None

    @classmethod
    def file(cls, path) -> Blob:
        path = os.fspath(path)

        def read(offset, n):
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(n)

        return cls(os.path.getsize(path), read)

    @classmethod
    def pattern(cls, size: int, head: bytes = b"", fill: bytes = b" ", tail: bytes = b"") -> Blob:
        """``head``, then ``fill`` repeated, then ``tail``: a huge JSON file in a few bytes of memory."""
        body = size - len(head) - len(tail)

        def read(offset, n):
            out = bytearray()
            end = min(offset + n, size)
            pos = offset
            while pos < end:
                if pos < len(head):
                    part = head[pos:end]
                elif pos < len(head) + body:
                    k = pos - len(head)
                    m = min(end - pos, len(head) + body - pos, 1 << 20)
                    reps = fill * ((k % len(fill) + m) // len(fill) + 2)
                    part = reps[k % len(fill) : k % len(fill) + m]
                else:
                    part = tail[pos - len(head) - body : end - len(head) - body]
                out += part
                pos += len(part)
            return bytes(out)

        return cls(size, read)

    def read(self, offset: int, n: int) -> bytes:
        return self._read(offset, max(0, min(n, self.size - offset)))

    def chunks(self, start: int = 0, end: int | None = None, step: int = 1 << 20) -> Iterable[bytes]:
        end = self.size if end is None else end
        for pos in range(start, end, step):
            yield self.read(pos, min(step, end - pos))

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            h = hashlib.sha256()
            for c in self.chunks():
                h.update(c)
            self._sha256 = h.hexdigest()
        return self._sha256

    @property
    def sha1(self) -> str:
        if self._sha1 is None:
            h = hashlib.sha1(b"blob %d\0" % self.size)
            for c in self.chunks():
                h.update(c)
            self._sha1 = h.hexdigest()
        return self._sha1


def _size(data) -> int:
    return data.size if isinstance(data, Blob) else len(data)


def _read(data, offset: int, n: int) -> bytes:
    return data.read(offset, n) if isinstance(data, Blob) else bytes(data[offset : offset + n])


def _sha256(data) -> str:
    return data.sha256 if isinstance(data, Blob) else hashlib.sha256(data).hexdigest()


def _sha1(data) -> str:
    return data.sha1 if isinstance(data, Blob) else git_blob_sha1(data)


def is_lfs(path: str) -> bool:
    return path.lower().endswith((".safetensors", ".bin", ".pt", ".pth"))


def lfs_pointer(data) -> bytes:
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{_sha256(data)}\nsize {_size(data)}\n").encode()


@dataclass
class Commit:
    sha: str
    files: dict[str, bytes | Blob]
    parent: str | None
    message: str


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branch / tag / refs/pr/N -> commit sha
    num_prs: int = 0

    def resolve(self, rev: str) -> Commit | None:
        sha = self.refs.get(rev, rev)
        return self.commits.get(sha)


@dataclass
class Request:
    method: str
    path: str
    query: dict
    headers: dict
    status: int = 0
    sent: int = 0  # body bytes written to the client


@dataclass
class Fault:
    kind: str
    path: str | None
    method: str | None
    times: int | None
    options: dict

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.method and self.method.upper() != method:
            return False
        return self.path is None or re.search(self.path, path) is not None


FAULT_KINDS = ("status", "truncate", "content_length", "garbage", "drop")
HOSTILE_KINDS = (
    "etag",
    "linked_etag",
    "flip",
    "checksums",
    "slow",
    "slow_path",
    "rate",
    "echo_auth",
    "error",
    "ignore_range",
    "listing",
    "repo_commit",
    "range_shift",
    "sizes",
)


class Response:
    """``body`` is bytes, or an iterable of byte chunks with ``length`` (None: until the connection closes)."""

    def __init__(self, status: int, body=b"", headers: dict | None = None, length: int | None = -1):
        self.status, self.body, self.headers = status, body, dict(headers or {})
        self.length = len(body) if isinstance(body, (bytes, bytearray)) and length == -1 else length


def _json(status: int, obj, headers: dict | None = None) -> Response:
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    return Response(status, json.dumps(obj).encode(), h)


def _error(status: int, message: str, code: str | None = None, headers: dict | None = None) -> Response:
    h = dict(headers or {})
    if code:
        h["X-Error-Code"] = code
        if message.isascii() and message.isprintable():  # a header cannot carry control characters
            h["X-Error-Message"] = message
    return _json(status, {"error": message}, h)


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
            p: (_read(d, 0, _size(d)) if isinstance(d, Blob) else d)
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


class _Handler(BaseHTTPRequestHandler):
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

    # -- plumbing -------------------------------------------------------------------------------
    def _hostile(self, path: str) -> dict:
        segs = [unquote(s) for s in path.split("/")[1:]]
        repo_id = "/".join(segs[2:4]) if segs[:2] == ["api", "models"] else "/".join(segs[:2])
        return self.hub.hostiles.get(repo_id, {})

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
        self.hostile = self._hostile(path)
        try:
            resp = self._route(method, path, req, body)
        except Exception as e:  # a bug in the server: say so, as a 500
            resp = _error(500, f"test server error: {type(e).__name__}: {e}")
        if fault is not None and fault.kind == "status":
            code = int(fault.options.get("code", 500))
            resp = _error(code, fault.options.get("message", f"injected error {code}"), fault.options.get("error_code"))
        if self.hostile.get("echo_auth"):
            resp = _error(401, f"Invalid token {req.headers.get('authorization', '(none)')}")
        if "error" in self.hostile:
            resp = _error(500, self.hostile["error"])
        self._send(method, req, resp, fault)
        self.hub.run_hooks(path)

    def _send(self, method: str, req: Request, resp: Response, fault: Fault | None) -> None:
        body = resp.body
        declared = resp.length
        if "Content-Length" in resp.headers:
            declared = int(resp.headers.pop("Content-Length"))
        if fault is not None and fault.kind == "garbage":
            body = fault.options.get("body", b"<html>not json {")
            declared = len(body)
        if isinstance(body, (bytes, bytearray)):
            body = [bytes(body)]
        if fault is not None and fault.kind == "truncate":
            whole = b"".join(body)
            body = [whole[: int(fault.options.get("keep", len(whole) // 2))]]
        if fault is not None and fault.kind == "content_length" and declared is not None:
            declared = declared + int(fault.options.get("delta", 10))
        self.send_response(resp.status)
        for k, v in resp.headers.items():
            self.send_header(k, v)
        if declared is not None:
            self.send_header("Content-Length", str(max(declared, 0)))
        self.end_headers()
        req.status = resp.status
        slow = self.hostile.get("slow") if re.search(self.hostile.get("slow_path", "/resolve/"), req.path) else None
        rate = self.hostile.get("rate") if "/resolve/" in req.path else None
        if rate:
            body = (piece for chunk in body for piece in _pieces(chunk, 64 << 10, rate))
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

    def _read_json(self, body: bytes):
        return json.loads(body.decode("utf-8")) if body else {}

    def _authorized(self, req: Request) -> bool:
        need = self.hub.require_token
        return need is None or req.headers.get("authorization") == f"Bearer {need}"

    # -- routes ---------------------------------------------------------------------------------
    def _route(self, method: str, path: str, req: Request, body: bytes) -> Response:
        segs = [unquote(s) for s in path.split("/")[1:]]
        if method == "POST" and path == "/api/repos/create":
            return self._create_repo(req, self._read_json(body))
        if method == "POST" and path == "/api/validate-yaml":
            return self._validate_yaml(self._read_json(body))
        if len(segs) >= 4 and segs[0] == "api" and segs[1] == "models":
            repo_id = f"{segs[2]}/{segs[3]}"
            rest = segs[4:]
            if method == "GET" and not rest:
                return self._repo_info(repo_id, "main", req)
            if method == "GET" and rest[0] == "revision" and len(rest) == 2:
                return self._repo_info(repo_id, rest[1], req)
            if method == "GET" and rest[0] == "tree" and len(rest) >= 2:
                return self._tree(repo_id, rest[1], "/".join(rest[2:]), req)
            if method == "POST" and rest[0] == "preupload" and len(rest) == 2:
                return self._preupload(repo_id, rest[1], req, self._read_json(body))
            if method == "POST" and rest[0] == "commit" and len(rest) == 2:
                return self._commit(repo_id, rest[1], req, body)
            if method == "POST" and rest[0] == "branch" and len(rest) >= 2:
                return self._branch(repo_id, "/".join(rest[1:]), req, self._read_json(body))
        if len(segs) >= 5 and segs[2] == "resolve" and method in ("GET", "HEAD"):
            raw = path.split("/")
            return self._resolve(f"{segs[0]}/{segs[1]}", segs[3], unquote("/".join(raw[5:])), req)
        return _error(404, f"no route for {method} {path}")

    def _repo(self, repo_id: str, req: Request) -> Repo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None or (repo.private and ("authorization" not in req.headers or not self._authorized(req))):
            return None  # a private repo without a valid token looks missing, as on the Hub
        return repo

    def _not_found(self, repo_id: str) -> Response:
        return _error(404, f"Repository {repo_id} not found", "RepoNotFound")

    def _create_repo(self, req: Request, data: dict) -> Response:
        if not self._authorized(req):
            return _error(401, "Invalid credentials in Authorization header")
        repo_id = f"{data.get('organization') or 'user'}/{data['name']}"
        url = f"{self.hub.url}/{repo_id}"
        with self.hub.lock:
            if repo_id in self.hub.repos:
                return _json(409, {"error": "You already created this model repo", "url": url})
            self.hub.create_repo(repo_id, private=data.get("visibility") == "private" or bool(data.get("private")))
        return _json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self, data: dict) -> Response:
        import yaml

        content = data.get("content", "")
        m = re.match(r"^---\s*\n(.*?)\n---\s*\n", content, re.S)
        if m:
            try:
                meta = yaml.safe_load(m.group(1))
            except yaml.YAMLError as e:
                return _json(400, {"errors": [{"message": f"invalid YAML: {e}"}], "warnings": []})
            if meta is not None and not isinstance(meta, dict):
                return _json(400, {"errors": [{"message": "metadata must be a mapping"}], "warnings": []})
        return _json(200, {"errors": [], "warnings": []})

    def _repo_commit(self, repo_id: str, rev: str, req: Request):
        """(repo, commit), or (repo, a 404 Response) for a missing repo or revision."""
        repo = self._repo(repo_id, req)
        if repo is None:
            return None, self._not_found(repo_id)
        commit = repo.resolve(rev)
        if commit is None:
            return repo, _error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return repo, commit

    def _file_entry(self, p: str, data) -> dict:
        """A tree entry as the Hub lists it: LFS files with their sha256."""
        sizes = self.hostile.get("sizes") or {}
        size = sizes.get(p, _size(data))
        if self.hostile.get("checksums") is False:
            return {"type": "file", "path": p, "size": size, "oid": "not-a-checksum"}
        if is_lfs(p):
            ptr = lfs_pointer(data)
            return {
                "type": "file",
                "path": p,
                "size": size,
                "oid": git_blob_sha1(ptr),
                "lfs": {"oid": _sha256(data), "size": size, "pointerSize": len(ptr)},
            }
        return {"type": "file", "path": p, "size": size, "oid": _sha1(data)}

    def _repo_info(self, repo_id: str, rev: str, req: Request) -> Response:
        repo, commit = self._repo_commit(repo_id, rev, req)
        if isinstance(commit, Response):
            return commit
        expand = req.query.get("expand")
        if expand:  # only the properties asked for, as the Hub answers ?expand=sha
            info = {"_id": repo_id, "id": repo_id}
            if "sha" in expand:
                info["sha"] = commit.sha
            return _json(200, info)
        blobs = req.query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = [
            {"rfilename": p, **({"size": _size(d), "blobId": _sha1(d)} if blobs else {})}
            for p, d in sorted(commit.files.items())
        ]
        info = {
            "_id": repo_id,
            "id": repo_id,
            "modelId": repo_id,
            "sha": commit.sha,
            "private": repo.private,
            "siblings": siblings,
            "tags": [],
            "downloads": 0,
            "likes": 0,
        }
        flood = self.hostile.get("listing")
        if flood:
            text = json.dumps(info).encode()
            cut = text.index(b'"siblings": [') + len(b'"siblings": [')
            entries = (b'{"rfilename": "flood/%09d.txt"}, ' % i for i in range(flood))
            return Response(
                200, _chain([text[:cut]], entries, [text[cut:]]), {"Content-Type": "application/json"}, length=None
            )
        return _json(200, info)

    def _tree(self, repo_id: str, rev: str, sub: str, req: Request) -> Response:
        repo, commit = self._repo_commit(repo_id, rev, req)
        if isinstance(commit, Response):
            return commit
        recursive = req.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = f"{sub.strip('/')}/" if sub.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in commit.files):
            return _error(404, f"{sub} does not exist on {rev}", "EntryNotFound")
        entries, dirs = [], set()
        for p in sorted(commit.files):
            escapes = p.startswith("/") or ".." in p.split("/")
            if not p.startswith(prefix) and not escapes:
                continue
            rel = p if escapes else p[len(prefix) :]
            parts = [rel] if escapes else rel.split("/")
            for i in range(1, len(parts)):
                d = prefix + "/".join(parts[:i])
                if (recursive or i == 1) and d not in dirs:
                    dirs.add(d)
                    entries.append({"type": "directory", "path": d, "oid": git_blob_sha1(d.encode()), "size": 0})
            if recursive or len(parts) == 1:
                entries.append(self._file_entry(p, commit.files[p]))
        flood = self.hostile.get("listing")
        if flood:
            one = b'{"type": "file", "path": "flood/%09d.txt", "size": 1, "oid": "' + b"0" * 40 + b'"}'
            head = json.dumps(entries).encode()[:-1] + (b", " if entries else b"")
            return Response(
                200,
                _chain([head], (one % i + b", " for i in range(flood - 1)), [one % flood + b"]"]),
                {"Content-Type": "application/json"},
                length=None,
            )
        cursor = int(req.query.get("cursor", ["0"])[0])
        size = self.hub.page_size
        headers = {}
        if size is not None:
            if cursor + size < len(entries):
                q = {k: v[0] for k, v in req.query.items()}
                q["cursor"] = str(cursor + size)
                headers["Link"] = f'<{self.hub.url}{req.path}?{urlencode(q)}>; rel="next"'
            entries = entries[cursor : cursor + size]
        return _json(200, entries, headers)

    def _resolve(self, repo_id: str, rev: str, filename: str, req: Request) -> Response:
        repo, commit = self._repo_commit(repo_id, rev, req)
        if isinstance(commit, Response):
            return commit
        data = commit.files.get(filename)
        bad = self.hostile
        headers = {"X-Repo-Commit": bad.get("repo_commit", commit.sha), "Accept-Ranges": "bytes"}
        if data is None:
            return _error(404, f"Entry not found: {filename}", "EntryNotFound", headers)
        size = _size(data)
        if is_lfs(filename):
            headers["ETag"] = f'"{git_blob_sha1(lfs_pointer(data))}"'
            headers["X-Linked-Etag"] = f'"{_sha256(data)}"'
            headers["X-Linked-Size"] = str(size)
        else:
            headers["ETag"] = f'"{_sha1(data)}"'
        if "etag" in bad:
            headers["ETag"] = bad["etag"]
        if "linked_etag" in bad and is_lfs(filename):
            headers["X-Linked-Etag"] = bad["linked_etag"]
        headers["Content-Type"] = "application/octet-stream"
        flip = (bad.get("flip") or {}).get(filename)
        rng = req.headers.get("range")
        if rng and not bad.get("ignore_range"):
            m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", rng)
            if not m or (m.group(1) == "" and m.group(2) == ""):
                return _error(416, f"bad range {rng}")
            if m.group(1) == "":
                start, end = max(size - int(m.group(2)), 0), size - 1
            else:
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            if start >= size or start > end:
                return Response(416, b"", {**headers, "Content-Range": f"bytes */{size}"})
            shift = int(bad.get("range_shift", 0))  # another range than the one asked for, and says so
            start, end = min(start + shift, size - 1), min(end + shift, size - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            return Response(206, self._body(data, start, end + 1, flip), headers, length=end + 1 - start)
        return Response(200, self._body(data, 0, size, flip), headers, length=size)

    @staticmethod
    def _body(data, start: int, end: int, flip: int | None):
        if isinstance(data, Blob):
            return data.chunks(start, min(end, data.size))
        chunk = bytearray(data[start:end])
        if flip is not None and start <= flip < end:
            chunk[flip - start] ^= 0x01
        return [bytes(chunk)]

    def _preupload(self, repo_id: str, rev: str, req: Request, data: dict) -> Response:
        if not self._authorized(req):
            return _error(401, "Invalid credentials in Authorization header")
        repo = self._repo(repo_id, req)
        if repo is None:
            return self._not_found(repo_id)
        commit = repo.resolve(rev)
        files = commit.files if commit is not None else {}
        out = []
        for f in data.get("files", []):
            existing = files.get(f["path"])
            out.append(
                {
                    "path": f["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": _sha1(existing) if existing is not None else None,
                }
            )
        return _json(200, {"files": out, "commitOid": commit.sha if commit else None})

    def _commit(self, repo_id: str, rev: str, req: Request, body: bytes) -> Response:
        if not self._authorized(req):
            return _error(401, "Invalid credentials in Authorization header")
        with self.hub.lock:
            repo = self._repo(repo_id, req)
            if repo is None:
                return self._not_found(repo_id)
            if rev not in repo.refs:
                return _error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            lines = [json.loads(x) for x in body.decode("utf-8").splitlines() if x.strip()]
            header = next((x["value"] for x in lines if x.get("key") == "header"), {})
            parent = header.get("parentCommit")
            if parent and parent != repo.refs[rev]:
                return _error(412, "A commit has happened since. Please refresh and try again.")
            changes: dict[str, bytes | None] = {}
            head_files = repo.commits[repo.refs[rev]].files
            for x in lines:
                key, value = x.get("key"), x.get("value") or {}
                if key == "file":
                    changes[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    changes[value["path"]] = None
                elif key == "deletedFolder":
                    folder = value["path"].rstrip("/") + "/"
                    changes.update({p: None for p in head_files if p.startswith(folder)})
                elif key in ("lfsFile", "deletedEntries"):
                    return _error(400, f"this test server takes no {key} lines")
            message = header.get("summary") or "update"
            branch = rev
            pr_url = None
            if req.query.get("create_pr", ["0"])[0] in ("1", "true"):
                repo.num_prs += 1
                branch = f"refs/pr/{repo.num_prs}"
                repo.refs[branch] = repo.refs[rev]
                pr_url = f"{self.hub.url}/{repo_id}/discussions/{repo.num_prs}"
            sha = self.hub.commit(repo_id, changes, message, branch=branch)
        return _json(
            200,
            {
                "commitOid": sha,
                "commitUrl": f"{self.hub.url}/{repo_id}/commit/{sha}",
                "pullRequestUrl": pr_url,
                "success": True,
            },
        )

    def _branch(self, repo_id: str, branch: str, req: Request, data: dict) -> Response:
        if not self._authorized(req):
            return _error(401, "Invalid credentials in Authorization header")
        with self.hub.lock:
            repo = self._repo(repo_id, req)
            if repo is None:
                return self._not_found(repo_id)
            if branch in repo.refs:
                return _error(409, f"Reference already exists: {branch}")
            start = repo.resolve(data.get("startingPoint") or "main")
            if start is None:
                return _error(404, f"Invalid rev id: {data.get('startingPoint')}", "RevisionNotFound")
            repo.refs[branch] = start.sha
        return _json(200, {})


def _pieces(chunk: bytes, size: int, rate: float) -> Iterable[bytes]:
    for i in range(0, len(chunk), size):
        time.sleep(min(size, len(chunk) - i) / rate)
        yield chunk[i : i + size]


def _chain(*parts: Iterable[bytes]) -> Iterable[bytes]:
    """Chunks from ``parts`` in order, gathered into pieces of about 1 MB."""
    buf = bytearray()
    for part in parts:
        for chunk in part:
            buf += chunk
            if len(buf) >= 1 << 20:
                yield bytes(buf)
                buf.clear()
    if buf:
        yield bytes(buf)


def sparse_bank(path, *, T: int, N: int, r: int, d: int, filled=(), seed: int = 0, names=None) -> dict:
    """Write a bare F32 bank of any size as a sparse file: a random shared prompt, random factors
    for the tasks in ``filled``, zeros (holes: no disk) everywhere else. Returns the byte layout
    ``{"header": n, "data_start", "size", tensor: (begin, end) in the file}``. No torch needed."""
    import struct

    import numpy as np

    shapes = {"prefix_task_cols": (T, N, r), "prefix_task_rows": (T, r, d), "prompt_embeddings": (N, d)}
    meta = {"format": "pt"}
    if names is not None:
        meta["mptkit.task_names"] = json.dumps(names)
    header, pos = {"__metadata__": meta}, 0
    for name, shape in shapes.items():
        n = 4 * int(np.prod(shape))
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [pos, pos + n]}
        pos += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    start = 8 + len(text)
    out = {"header": start, "data_start": start, "size": start + pos}
    for name in shapes:
        b, e = header[name]["data_offsets"]
        out[name] = (start + b, start + e)
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        f.truncate(start + pos)
        f.seek(out["prompt_embeddings"][0])
        f.write(rng.standard_normal(N * d, dtype=np.float32).tobytes())
        for k in filled:
            f.seek(out["prefix_task_cols"][0] + k * N * r * 4)
            f.write(rng.standard_normal(N * r, dtype=np.float32).tobytes())
            f.seek(out["prefix_task_rows"][0] + k * r * d * 4)
            f.write(rng.standard_normal(r * d, dtype=np.float32).tobytes())
    return out


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    peak_rss_mb: float  # the process's own peak resident memory


_MEASURE = """
import os, sys
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(f"{ru.ru_maxrss} {os.waitstatus_to_exitcode(status)}")
"""


def run_measured(*args, env: dict | None = None, timeout: float = 120, cwd=None) -> Run:
    """``python -m mptkit ARGS`` as a real process, with its wall time and peak RSS. A small
    wrapper process starts it and reads its ``wait4`` figures: a child of this (large) test
    process would report this process's memory as its own peak (Linux records the memory a
    process had before ``exec`` in its peak, even after ``vfork``)."""
    import signal
    import sys
    import tempfile

    e = dict(os.environ)
    e.update(env or {})
    argv = [sys.executable, "-m", "mptkit", *map(str, args)]
    with tempfile.TemporaryDirectory() as tmp:
        figures = os.path.join(tmp, "figures")
        out, err = open(os.path.join(tmp, "out"), "w+b"), open(os.path.join(tmp, "err"), "w+b")
        with out, err:
            t0 = time.monotonic()
            pid = os.posix_spawn(
                sys.executable,
                [sys.executable, "-S", "-c", _MEASURE, figures, *argv],
                e,
                file_actions=[(os.POSIX_SPAWN_DUP2, out.fileno(), 1), (os.POSIX_SPAWN_DUP2, err.fileno(), 2)],
                setsid=True,
                **({"chdir": os.fspath(cwd)} if cwd is not None and sys.version_info >= (3, 13) else {}),
            )
            while not os.waitpid(pid, os.WNOHANG)[0]:
                if time.monotonic() - t0 > timeout:
                    os.killpg(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.02)
            wall = time.monotonic() - t0
            rss, code = open(figures).read().split() if os.path.exists(figures) else ("0", "-9")
            out.seek(0)
            err.seek(0)
            return Run(
                int(code),
                out.read().decode(errors="replace"),
                err.read().decode(errors="replace"),
                wall,
                int(rss) / 1024,
            )


def resolve_url(endpoint: str, repo_id: str, rev: str, filename: str) -> str:
    return f"{endpoint}/{repo_id}/resolve/{quote(rev, safe='')}/{quote(filename)}"
