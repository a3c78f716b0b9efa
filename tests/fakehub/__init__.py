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

A hostile server, per repo::

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

from tests.fakehub.faults import FAULT_KINDS, HOSTILE_KINDS, Fault
from tests.fakehub.repos import Blob, Commit, Repo, git_blob_sha1
from tests.fakehub.routes import Request
from tests.fakehub.server import HubServer

__all__ = ["FAULT_KINDS", "HOSTILE_KINDS", "Blob", "Commit", "Fault", "HubServer", "Repo", "Request", "git_blob_sha1"]
