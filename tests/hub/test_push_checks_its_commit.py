"""``push`` checks what the commit holds: a server's 200 answer to the commit is not
taken for it. A server that stored nothing (a made-up commit id, or the old head's), stored some
of the files, or stored other bytes, is one sentence, exit 2: the push did not take effect. An
honest server's push, and a second push of the same bank (no commit), still succeed."""

from __future__ import annotations

import base64
import json

import pytest

from tests.fakehub.wirefront import WireFront, send
from tests.support.commands import one_error


@pytest.fixture
def front(hub, monkeypatch):
    hub.create_repo("owner/bank")
    with WireFront(hub.url) as f:
        monkeypatch.setenv("HF_ENDPOINT", f.url)
        yield f


def _answer(commit: str):
    def act(conn, req, f):
        body = {"commitOid": commit, "commitUrl": f"{f.url}/owner/bank/commit/{commit}", "pullRequestUrl": None}
        send(conn, 200, json.dumps(body).encode(), {"Content-Type": "application/json"})

    return act


def _rewritten(change):
    """The commit forwarded to the Hub with its NDJSON lines changed by ``change(lines)``."""

    def act(conn, req, f):
        lines = [json.loads(x) for x in req.body.decode().splitlines() if x.strip()]
        req.body = "\n".join(json.dumps(x) for x in change(lines)).encode()
        status, reason, headers, body = f.fetch(req)
        send(conn, status, body, headers, reason)

    return act


def _drop_weights(lines):
    return [x for x in lines if not str(x.get("value", {}).get("path", "")).endswith(".safetensors")]


def _flip_a_weight_byte(lines):
    for x in lines:
        if str(x.get("value", {}).get("path", "")).endswith(".safetensors"):
            data = bytearray(base64.b64decode(x["value"]["content"]))
            data[-1] ^= 1
            x["value"]["content"] = base64.b64encode(bytes(data)).decode()
    return lines


@pytest.mark.parametrize(
    ("server", "said"),
    [
        ("made-up-commit", "listing that commit failed"),
        ("old-head", "it does not hold adapter_config.json"),
        ("drops-the-weights", "it does not hold adapter_model.safetensors"),
        ("changes-a-byte", "its adapter_model.safetensors has another sha256 than the file pushed"),
    ],
)
def test_a_commit_that_does_not_hold_the_push_is_refused(hub, front, cli, peft_banks, server, said):
    head = hub.repos["owner/bank"].refs["main"]
    action = {
        "made-up-commit": _answer("ab" * 20),
        "old-head": _answer(head),
        "drops-the-weights": _rewritten(_drop_weights),
        "changes-a-byte": _rewritten(_flip_a_weight_byte),
    }[server]
    front.rule(r"/commit/", action, method="POST")
    msg = one_error(cli("push", peft_banks("seq2seq"), "owner/bank"), said, "the push did not take effect")
    assert "owner/bank" in msg and "check the repo" in msg


def test_an_honest_push_is_checked_and_passes(hub, front, cli, peft_banks):
    r = cli("push", peft_banks("seq2seq"), "owner/bank")
    assert r.exit_code == 0 and "pushed" in r.stdout, r.output
    new = hub.repos["owner/bank"].refs["main"]
    assert front.seen(rf"/tree/{new}")  # the new commit was listed, and held the push
    r = cli("push", peft_banks("seq2seq"), "owner/bank")
    assert r.exit_code == 0 and "nothing to push" in r.stdout, r.output
    assert hub.repos["owner/bank"].refs["main"] == new
