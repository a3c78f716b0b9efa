"""A small Hugging Face Hub-compatible HTTP server for tests (127.0.0.1 only, standard library).

It serves the endpoints the real ``huggingface_hub`` client (1.x and 2.x) uses to create model
repos, commit files, resolve revisions, list trees and download files (with ``Range``): the routes
are in ``_Handler._route`` below, with the request and response shapes the client expects
(``huggingface_hub/hf_api.py`` and ``file_download.py`` are where the client builds them). Repos live in memory with commits and branches. Every request is
logged with the number of body bytes sent, so tests can check what a command transferred.

Faults can be injected for robustness tests::

    server.fault("status", path=r"/resolve/", code=500)      # answer 500 instead
    server.fault("truncate", path=r"\\.safetensors$", keep=100) # send 100 bytes, then close
    server.fault("content_length", path=..., delta=+10)       # announce a wrong Content-Length
    server.fault("garbage", path=r"/api/models/")             # a body that is not JSON
    server.fault("drop", path=...)                            # close without any answer

Each fault matches a regular expression on the URL path (and optionally a method) and fires
``times`` times (``None``: every time). File names are stored as given, so a repo can hold names
such as ``../evil.safetensors`` that a hostile server would list.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    sha: str
    files: dict[str, bytes]
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


class Response:
    def __init__(self, status: int, body: bytes = b"", headers: dict | None = None):
        self.status, self.body, self.headers = status, body, dict(headers or {})


def _json(status: int, obj, headers: dict | None = None) -> Response:
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    return Response(status, json.dumps(obj).encode(), h)


def _error(status: int, message: str, code: str | None = None, headers: dict | None = None) -> Response:
    h = dict(headers or {})
    if code:
        h["X-Error-Code"] = code
        h["X-Error-Message"] = message
    return _json(status, {"error": message}, h)


class HubServer:
    """``with HubServer() as hub: ...`` -> ``hub.url`` is the endpoint for ``HF_ENDPOINT``."""

    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        #: when set, writes (create, preupload, commit, branch) need ``Authorization: Bearer <token>``
        self.require_token: str | None = None
        self.lock = threading.RLock()
        self._counter = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> "HubServer":
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

    def __enter__(self) -> "HubServer":
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
                attrs = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
                repo.commits[sha] = Commit(sha, {".gitattributes": attrs}, None, "initial commit")
                repo.refs["main"] = sha
            return repo

    def commit(self, repo_id: str, files: dict[str, bytes | None], message: str = "update",
               branch: str = "main") -> str:
        """Commit ``files`` (None deletes a path) on ``branch`` (created from main if missing)."""
        with self.lock:
            repo = self.create_repo(repo_id)
            head = repo.refs.get(branch) or repo.refs["main"]
            new = dict(repo.commits[head].files)
            for path, data in files.items():
                if data is None:
                    new.pop(path, None)
                else:
                    new[path] = bytes(data)
            sha = self._new_sha(repo_id, message)
            repo.commits[sha] = Commit(sha, new, head, message)
            repo.refs[branch] = sha
            return sha

    def files(self, repo_id: str, rev: str = "main") -> dict[str, bytes]:
        return dict(self.repos[repo_id].resolve(rev).files)

    def fault(self, kind: str, *, path: str | None = None, method: str | None = None, times: int | None = 1,
              **options) -> Fault:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; one of {FAULT_KINDS}")
        f = Fault(kind, path, method, times, options)
        with self.lock:
            self.faults.append(f)
        return f

    def clear(self) -> None:
        """Forget the request log and all faults."""
        with self.lock:
            self.requests.clear()
            self.faults.clear()

    def bytes_sent(self, path: str | None = None, method: str | None = None) -> int:
        """Body bytes sent for requests whose path matches the regex ``path``."""
        with self.lock:
            return sum(r.sent for r in self.requests
                       if (path is None or re.search(path, r.path)) and (method is None or r.method == method))

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.matches(method, path):
                    if f.times is not None:
                        f.times -= 1
                    return f
        return None


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
        try:
            resp = self._route(method, path, req, body)
        except Exception as e:  # a bug in the server: say so, as a 500
            resp = _error(500, f"test server error: {type(e).__name__}: {e}")
        if fault is not None and fault.kind == "status":
            code = int(fault.options.get("code", 500))
            resp = _error(code, fault.options.get("message", f"injected error {code}"), fault.options.get("error_code"))
        self._send(method, req, resp, fault)

    def _send(self, method: str, req: Request, resp: Response, fault: Fault | None) -> None:
        body = resp.body
        declared = len(body) if "Content-Length" not in resp.headers else int(resp.headers.pop("Content-Length"))
        if fault is not None and fault.kind == "garbage":
            body = fault.options.get("body", b"<html>not json {")
            declared = len(body)
        if fault is not None and fault.kind == "truncate":
            body = body[: int(fault.options.get("keep", len(body) // 2))]
        if fault is not None and fault.kind == "content_length":
            declared = declared + int(fault.options.get("delta", 10))
        self.send_response(resp.status)
        for k, v in resp.headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(max(declared, 0)))
        self.end_headers()
        # Record before writing: the client may return (and the test read the log) as soon as the
        # last byte arrives, before this thread gets to run again.
        req.status, req.sent = resp.status, (len(body) if method != "HEAD" else 0)
        if method != "HEAD" and body:
            try:
                self.wfile.write(body)
            except OSError:
                req.sent = 0  # the client went away; what it received is unknown
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

    def _repo_info(self, repo_id: str, rev: str, req: Request) -> Response:
        repo, commit = self._repo_commit(repo_id, rev, req)
        if isinstance(commit, Response):
            return commit
        blobs = req.query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = [{"rfilename": p, **({"size": len(d), "blobId": git_blob_sha1(d)} if blobs else {})}
                    for p, d in sorted(commit.files.items())]
        return _json(200, {
            "_id": repo_id, "id": repo_id, "modelId": repo_id, "sha": commit.sha, "private": repo.private,
            "siblings": siblings, "tags": [], "downloads": 0, "likes": 0,
        })

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
            if not p.startswith(prefix):
                continue
            rel = p[len(prefix):]
            parts = rel.split("/")
            for i in range(1, len(parts)):
                d = prefix + "/".join(parts[:i])
                if (recursive or i == 1) and d not in dirs:
                    dirs.add(d)
                    entries.append({"type": "directory", "path": d, "oid": git_blob_sha1(d.encode()), "size": 0})
            if recursive or len(parts) == 1:
                data = commit.files[p]
                entries.append({"type": "file", "path": p, "size": len(data), "oid": git_blob_sha1(data)})
        return _json(200, entries)

    def _resolve(self, repo_id: str, rev: str, filename: str, req: Request) -> Response:
        repo, commit = self._repo_commit(repo_id, rev, req)
        if isinstance(commit, Response):
            return commit
        data = commit.files.get(filename)
        headers = {"X-Repo-Commit": commit.sha, "Accept-Ranges": "bytes"}
        if data is None:
            return _error(404, f"Entry not found: {filename}", "EntryNotFound", headers)
        headers["ETag"] = f'"{git_blob_sha1(data)}"'
        headers["Content-Type"] = "application/octet-stream"
        rng = req.headers.get("range")
        if rng:
            m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", rng)
            if not m or (m.group(1) == "" and m.group(2) == ""):
                return _error(416, f"bad range {rng}")
            if m.group(1) == "":
                start, end = max(len(data) - int(m.group(2)), 0), len(data) - 1
            else:
                start = int(m.group(1))
                end = min(int(m.group(2)), len(data) - 1) if m.group(2) else len(data) - 1
            if start >= len(data) or start > end:
                return Response(416, b"", {**headers, "Content-Range": f"bytes */{len(data)}"})
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return Response(206, data[start : end + 1], headers)
        return Response(200, data, headers)

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
            out.append({"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                        "oid": git_blob_sha1(existing) if existing is not None else None})
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
        return _json(200, {"commitOid": sha, "commitUrl": f"{self.hub.url}/{repo_id}/commit/{sha}",
                           "pullRequestUrl": pr_url, "success": True})

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


def resolve_url(endpoint: str, repo_id: str, rev: str, filename: str) -> str:
    return f"{endpoint}/{repo_id}/resolve/{quote(rev, safe='')}/{quote(filename)}"
