"""Compressed answers: the cap on an API answer (8 MB) and on an error answer (64 kB)
counts the bytes once decoded, for every Content-Encoding the client takes (gzip, x-gzip, deflate)
and for encodings applied more than once; any other encoding, or more layers than any server
applies, is refused before it is decoded. Each bomb below would take a GB or more of memory if the
cap counted the bytes on the wire (they are 1 to 5 MB there); peak memory is measured in a real
process and must stay under 300 MB. An honest server that compresses its answers still works."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest

from tests.fakehub.wirefront import forward, reply, send
from tests.support.commands import one_error
from tests.support.measured import run_measured

GB = 1 << 30
MEMORY_MB = 300  # a few tens of MB are the interpreter and the client; the bombs decode to 1 GB


def _deflate(parts, wbits: int, level: int = 1) -> bytes:
    c = zlib.compressobj(level, zlib.DEFLATED, wbits)
    return b"".join(c.compress(p) for p in parts) + c.flush()


@pytest.fixture(scope="module")
def bombs():
    """JSON arrays of 1 GB once decoded (a listing: ``[`` + spaces + ``]``), in several encodings."""
    spaces = b" " * (1 << 20)
    body = [b"[", *([spaces] * (GB >> 20)), b"]"]
    once = _deflate(body, 16 + zlib.MAX_WBITS)
    return {
        "gzip": once,
        "x-gzip": once,
        "deflate": _deflate(body, zlib.MAX_WBITS),
        "gzip, gzip": _deflate([once], 16 + zlib.MAX_WBITS, 9),
        "deflate, gzip": _deflate([_deflate(body, zlib.MAX_WBITS)], 16 + zlib.MAX_WBITS, 9),
    }


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "deflate", "gzip, gzip", "deflate, gzip"])
def test_a_listing_that_inflates_is_refused_at_the_cap(front, bombs, encoding):
    body = bombs[encoding]
    assert len(body) < 8 << 20  # under the cap on the wire: only the decoded count can catch it
    front.rule(r"/tree/", reply(200, body, {"Content-Type": "application/json", "Content-Encoding": encoding}))
    r = run_measured("inspect", "hf://owner/bank")
    one_error(r, "cannot list the repo root", "larger than 8,388,608 bytes once decoded")
    assert r.peak_rss_mb < MEMORY_MB, r.peak_rss_mb


def test_an_error_answer_that_inflates_is_refused_at_its_cap(front, bombs):
    front.rule(
        r"/api/models/", reply(500, bombs["gzip"], {"Content-Type": "application/json", "Content-Encoding": "gzip"})
    )
    r = run_measured("pull", "owner/bank")
    one_error(r, "cannot look up the repo", "larger than 65,536 bytes once decoded")
    assert r.peak_rss_mb < MEMORY_MB, r.peak_rss_mb


@pytest.mark.parametrize(
    ("encoding", "said"),
    [("br", "encoded 'br', which mptkit does not decode"), ("zstd", "encoded 'zstd'"),
     ("gzip, gzip, gzip, gzip", "encoded 4 times over")],
)  # fmt: skip
def test_encodings_not_decoded_here_are_refused_unread(front, encoding, said):
    front.rule(
        r"/tree/", reply(200, b"\x00" * 4096, {"Content-Type": "application/json", "Content-Encoding": encoding})
    )
    r = run_measured("inspect", "hf://owner/bank")
    one_error(r, "cannot list the repo root", said, "Accept-Encoding: identity")


def test_an_honest_server_that_compresses_its_answers_still_works(front, cli, tmp_path):
    """A proxy that gzips every API answer (and its errors), whatever was asked: decoded, capped, used."""

    def gzipped(conn, req, f):
        status, reason, headers, body = f.fetch(req)
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"] + [("Content-Encoding", "gzip")]
        send(conn, status, gzip.compress(body), headers, reason)

    front.rule(r"/api/", gzipped)
    front.rule(r"/resolve/", forward)
    r = cli("pull", "owner/bank", "-o", tmp_path / "p")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "p" / "adapter_config.json").read_text())["peft_type"] == "MULTITASK_PROMPT_TUNING"
    assert front.seen(r"/tree/") and front.seen(r"/resolve/")
    r = cli("pull", "owner/missing")  # a gzip'd 404 is read for its message, as a plain one is
    assert r.exit_code == 2 and "no repo owner/missing" in r.stderr, r.output
