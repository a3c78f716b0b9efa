"""The fake Hub's HTTP routes: the endpoints the real ``huggingface_hub`` client calls, answered
with the shapes it expects (``huggingface_hub/hf_api.py`` and ``file_download.py`` build them).
:class:`Routes` is mixed into the request handler of :mod:`tests.fakehub.server`, which gives it
``self.hub`` (the server's state) and ``self.hostile`` (the request's hostile modes)."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlencode

from tests.fakehub.repos import Blob, Repo, git_blob_sha1, is_lfs, lfs_pointer, sha1_of, sha256_of, size_of


@dataclass
class Request:
    method: str
    path: str
    query: dict
    headers: dict
    status: int = 0
    sent: int = 0  # body bytes written to the client


class Response:
    """``body`` is bytes, or an iterable of byte chunks with ``length`` (None: until the connection closes)."""

    def __init__(self, status: int, body=b"", headers: dict | None = None, length: int | None = -1):
        self.status, self.body, self.headers = status, body, dict(headers or {})
        self.length = len(body) if isinstance(body, (bytes, bytearray)) and length == -1 else length


def json_answer(status: int, obj, headers: dict | None = None) -> Response:
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    return Response(status, json.dumps(obj).encode(), h)


def error_answer(status: int, message: str, code: str | None = None, headers: dict | None = None) -> Response:
    h = dict(headers or {})
    if code:
        h["X-Error-Code"] = code
        if message.isascii() and message.isprintable():  # a header cannot carry control characters
            h["X-Error-Message"] = message
    return json_answer(status, {"error": message}, h)


class Routes:
    """Route methods of the request handler (see the module doc)."""

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
        return error_answer(404, f"no route for {method} {path}")

    def _repo(self, repo_id: str, req: Request) -> Repo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None or (repo.private and ("authorization" not in req.headers or not self._authorized(req))):
            return None  # a private repo without a valid token looks missing, as on the Hub
        return repo

    def _not_found(self, repo_id: str) -> Response:
        return error_answer(404, f"Repository {repo_id} not found", "RepoNotFound")

    def _create_repo(self, req: Request, data: dict) -> Response:
        if not self._authorized(req):
            return error_answer(401, "Invalid credentials in Authorization header")
        repo_id = f"{data.get('organization') or 'user'}/{data['name']}"
        url = f"{self.hub.url}/{repo_id}"
        with self.hub.lock:
            if repo_id in self.hub.repos:
                return json_answer(409, {"error": "You already created this model repo", "url": url})
            self.hub.create_repo(repo_id, private=data.get("visibility") == "private" or bool(data.get("private")))
        return json_answer(200, {"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self, data: dict) -> Response:
        import yaml

        content = data.get("content", "")
        m = re.match(r"^---\s*\n(.*?)\n---\s*\n", content, re.S)
        if m:
            try:
                meta = yaml.safe_load(m.group(1))
            except yaml.YAMLError as e:
                return json_answer(400, {"errors": [{"message": f"invalid YAML: {e}"}], "warnings": []})
            if meta is not None and not isinstance(meta, dict):
                return json_answer(400, {"errors": [{"message": "metadata must be a mapping"}], "warnings": []})
        return json_answer(200, {"errors": [], "warnings": []})

    def _repo_commit(self, repo_id: str, rev: str, req: Request):
        """(repo, commit), or (repo, a 404 Response) for a missing repo or revision."""
        repo = self._repo(repo_id, req)
        if repo is None:
            return None, self._not_found(repo_id)
        commit = repo.resolve(rev)
        if commit is None:
            return repo, error_answer(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return repo, commit

    def _file_entry(self, p: str, data) -> dict:
        """A tree entry as the Hub lists it: LFS files with their sha256."""
        sizes = self.hostile.get("sizes") or {}
        size = sizes.get(p, size_of(data))
        if self.hostile.get("checksums") is False:
            return {"type": "file", "path": p, "size": size, "oid": "not-a-checksum"}
        if is_lfs(p):
            ptr = lfs_pointer(data)
            return {
                "type": "file",
                "path": p,
                "size": size,
                "oid": git_blob_sha1(ptr),
                "lfs": {"oid": sha256_of(data), "size": size, "pointerSize": len(ptr)},
            }
        return {"type": "file", "path": p, "size": size, "oid": sha1_of(data)}

    def _repo_info(self, repo_id: str, rev: str, req: Request) -> Response:
        repo, commit = self._repo_commit(repo_id, rev, req)
        if isinstance(commit, Response):
            return commit
        expand = req.query.get("expand")
        if expand:  # only the properties asked for, as the Hub answers ?expand=sha
            info = {"_id": repo_id, "id": repo_id}
            if "sha" in expand:
                info["sha"] = commit.sha
            return json_answer(200, info)
        blobs = req.query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = [
            {"rfilename": p, **({"size": size_of(d), "blobId": sha1_of(d)} if blobs else {})}
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
                200, chain([text[:cut]], entries, [text[cut:]]), {"Content-Type": "application/json"}, length=None
            )
        return json_answer(200, info)

    def _tree(self, repo_id: str, rev: str, sub: str, req: Request) -> Response:
        repo, commit = self._repo_commit(repo_id, rev, req)
        if isinstance(commit, Response):
            return commit
        recursive = req.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = f"{sub.strip('/')}/" if sub.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in commit.files):
            return error_answer(404, f"{sub} does not exist on {rev}", "EntryNotFound")
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
                chain([head], (one % i + b", " for i in range(flood - 1)), [one % flood + b"]"]),
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
        return json_answer(200, entries, headers)

    def _resolve(self, repo_id: str, rev: str, filename: str, req: Request) -> Response:
        repo, commit = self._repo_commit(repo_id, rev, req)
        if isinstance(commit, Response):
            return commit
        data = commit.files.get(filename)
        bad = self.hostile
        headers = {"X-Repo-Commit": bad.get("repo_commit", commit.sha), "Accept-Ranges": "bytes"}
        if data is None:
            return error_answer(404, f"Entry not found: {filename}", "EntryNotFound", headers)
        size = size_of(data)
        if is_lfs(filename):
            headers["ETag"] = f'"{git_blob_sha1(lfs_pointer(data))}"'
            headers["X-Linked-Etag"] = f'"{sha256_of(data)}"'
            headers["X-Linked-Size"] = str(size)
        else:
            headers["ETag"] = f'"{sha1_of(data)}"'
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
                return error_answer(416, f"bad range {rng}")
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
            return error_answer(401, "Invalid credentials in Authorization header")
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
                    "oid": sha1_of(existing) if existing is not None else None,
                }
            )
        return json_answer(200, {"files": out, "commitOid": commit.sha if commit else None})

    def _commit(self, repo_id: str, rev: str, req: Request, body: bytes) -> Response:
        if not self._authorized(req):
            return error_answer(401, "Invalid credentials in Authorization header")
        with self.hub.lock:
            repo = self._repo(repo_id, req)
            if repo is None:
                return self._not_found(repo_id)
            if rev not in repo.refs:
                return error_answer(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            lines = [json.loads(x) for x in body.decode("utf-8").splitlines() if x.strip()]
            header = next((x["value"] for x in lines if x.get("key") == "header"), {})
            parent = header.get("parentCommit")
            if parent and parent != repo.refs[rev]:
                return error_answer(412, "A commit has happened since. Please refresh and try again.")
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
                    return error_answer(400, f"this test server takes no {key} lines")
            message = header.get("summary") or "update"
            branch = rev
            pr_url = None
            if req.query.get("create_pr", ["0"])[0] in ("1", "true"):
                repo.num_prs += 1
                branch = f"refs/pr/{repo.num_prs}"
                repo.refs[branch] = repo.refs[rev]
                pr_url = f"{self.hub.url}/{repo_id}/discussions/{repo.num_prs}"
            sha = self.hub.commit(repo_id, changes, message, branch=branch)
        return json_answer(
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
            return error_answer(401, "Invalid credentials in Authorization header")
        with self.hub.lock:
            repo = self._repo(repo_id, req)
            if repo is None:
                return self._not_found(repo_id)
            if branch in repo.refs:
                return error_answer(409, f"Reference already exists: {branch}")
            start = repo.resolve(data.get("startingPoint") or "main")
            if start is None:
                return error_answer(404, f"Invalid rev id: {data.get('startingPoint')}", "RevisionNotFound")
            repo.refs[branch] = start.sha
        return json_answer(200, {})


def chain(*parts: Iterable[bytes]) -> Iterable[bytes]:
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
