"""Faults and hostile modes of the fake Hub: how an answer is replaced, damaged or slowed.

A :class:`Fault` (``HubServer.fault``) matches requests by path and method and fires a number of
times; hostile modes (``HubServer.hostile``) hold for every request about one repo. The kinds and
options are listed in :mod:`tests.fakehub`'s doc."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote

from tests.fakehub.routes import Request, Response, error_answer


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


def hostile_modes(hostiles: dict[str, dict], path: str) -> dict:
    """The hostile modes set for the repo a request path is about (``{}``: an honest answer)."""
    segs = [unquote(s) for s in path.split("/")[1:]]
    repo_id = "/".join(segs[2:4]) if segs[:2] == ["api", "models"] else "/".join(segs[:2])
    return hostiles.get(repo_id, {})


def replace_answer(resp: Response, req: Request, fault: Fault | None, hostile: dict) -> Response:
    """The answer after a "status" fault and the hostile modes that answer with an error."""
    if fault is not None and fault.kind == "status":
        code = int(fault.options.get("code", 500))
        resp = error_answer(
            code, fault.options.get("message", f"injected error {code}"), fault.options.get("error_code")
        )
    if hostile.get("echo_auth"):
        resp = error_answer(401, f"Invalid token {req.headers.get('authorization', '(none)')}")
    if "error" in hostile:
        resp = error_answer(500, hostile["error"])
    return resp


def damage_body(body, declared: int | None, fault: Fault | None) -> tuple[Iterable[bytes], int | None]:
    """(the body's chunks, the Content-Length to announce) after a "garbage", "truncate" or
    "content_length" fault."""
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
    return body, declared


def pace(body: Iterable[bytes], req: Request, hostile: dict) -> tuple[Iterable[bytes], float | None]:
    """(the body, paced at the hostile ``rate`` for file downloads; the seconds to wait after each
    byte for a ``slow`` answer, or None)."""
    slow = hostile.get("slow") if re.search(hostile.get("slow_path", "/resolve/"), req.path) else None
    rate = hostile.get("rate") if "/resolve/" in req.path else None
    if rate:
        body = (piece for chunk in body for piece in pieces(chunk, 64 << 10, rate))
    return body, slow


def pieces(chunk: bytes, size: int, rate: float) -> Iterable[bytes]:
    for i in range(0, len(chunk), size):
        time.sleep(min(size, len(chunk) - i) / rate)
        yield chunk[i : i + size]
