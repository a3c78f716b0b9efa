"""No secret is ever printed, in any form: a token with a trailing ``\\r`` (a CRLF token
file), tokens a server echoes back escaped (JSON, URL-quoted, as bytes) or cut short by a
truncation, the user:password of an ``HF_ENDPOINT`` and its Basic form. The redaction applies to
the text as printed, after escaping. A token that cannot be one (a control character or non-ASCII
inside it) is one sentence that does not show it."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

import pytest

from tests.fakehub.wirefront import WireFront, send
from tests.support.commands import one_error

SECRETS = ["hf_CrlfTokenFile0123456789\r", "plain-secret-0123456789\r", "plain-secret-0123456789\n"]


@pytest.fixture
def served(hub, example_bank):
    hub.commit("owner/bank", {p.name: p.read_bytes() for p in example_bank.iterdir()})


def _printed(r) -> str:
    return r.stdout + r.stderr


@pytest.mark.parametrize("secret", SECRETS, ids=["hf-cr", "plain-cr", "plain-lf"])
@pytest.mark.parametrize("how", ["--token", "HF_TOKEN"])
def test_a_token_with_a_line_ending_is_never_printed(hub, served, cli, monkeypatch, secret, how):
    hub.hostile("owner/bank", echo_auth=True)
    argv = ["pull", "owner/bank"]
    if how == "HF_TOKEN":
        monkeypatch.setenv("HF_TOKEN", secret)
    else:
        argv += ["--token", secret]
    r = cli(*argv)
    msg = one_error(r)
    core = secret.strip()
    assert core not in _printed(r) and core[:12] not in _printed(r) and "[redacted]" in msg, msg


def _echoing(form):
    def act(conn, req, front):
        token = req.headers.get("authorization", "").removeprefix("Bearer ")
        body = json.dumps({"error": form(token)}).encode()
        send(conn, 401, body, {"Content-Type": "application/json"})

    return act


FORMS = {
    "json-escaped": lambda t: "bad token " + json.dumps(t + "\r")[1:-1],
    "url-quoted": lambda t: "bad token " + quote(t + "\r", safe=""),
    "bytes-repr": lambda t: f"bad token {(t + chr(13)).encode()!r}",
    "cut-at-the-end": lambda t: "x" * 140 + " token " + t,  # cut short by the message's 160 characters
    "cut-at-the-start": lambda t: "token ..." + t[6:],
}


@pytest.mark.parametrize("form", list(FORMS))
def test_a_token_echoed_in_any_form_is_redacted(hub, served, cli, monkeypatch, form):
    secret = "s3cr3t/pl41n+t0k3n=\\9876543210"  # characters that JSON, URLs and repr() each escape
    with WireFront(hub.url) as front:
        monkeypatch.setenv("HF_ENDPOINT", front.url)
        front.rule(r"/api/models/", _echoing(FORMS[form]))
        r = cli("pull", "owner/bank", "--token", secret)
    out = _printed(r)
    msg = one_error(r)
    for piece in (secret, secret[:8], secret[-8:], quote(secret, safe=""), json.dumps(secret)[1:-1]):
        assert piece not in out, (piece, out)
    assert "[redacted]" in msg


def test_the_python_api_redacts_too(hub, served):
    from mptkit import hub as mhub
    from mptkit.errors import HubError

    hub.hostile("owner/bank", echo_auth=True)
    secret = "plain-secret-0123456789\r"
    with pytest.raises(HubError) as e:
        mhub.fetch("owner/bank", token=secret)
    assert secret.strip()[:10] not in str(e.value) and "[redacted]" in str(e.value)


@pytest.mark.parametrize("how", ["--token", "HF_TOKEN"])
@pytest.mark.parametrize(
    "secret", ["sécret-plain-0123456789", "inner\x1bsecret-0123456789"], ids=["non-ascii", "escape"]
)
def test_a_token_that_cannot_be_one_is_said_without_showing_it(hub, served, cli, monkeypatch, how, secret):
    argv = ["pull", "owner/bank"]
    if how == "HF_TOKEN":
        monkeypatch.setenv("HF_TOKEN", secret)
    else:
        argv += ["--token", secret]
    r = cli(*argv)
    msg = one_error(r, "printable ASCII", "at position")
    assert "secret" not in _printed(r).replace("the token", ""), msg
    assert not [q for q in hub.requests if "authorization" in q.headers]  # nothing was sent


def test_credentials_in_hf_endpoint_are_never_printed(hub, served, cli, monkeypatch):
    """``http://user:password@mirror``: the errors name the mirror without them, and a server that
    echoes them back (the URL, the Basic header) has them redacted."""
    with WireFront(hub.url) as front:
        monkeypatch.setenv("HF_ENDPOINT", front.url.replace("http://", "http://mirror-user:pa55w0rd-xyz@"))

        def echo(conn, req, f):
            text = f"denied {req.headers.get('authorization')} for {f.url.replace('http://', 'http://mirror-user:pa55w0rd-xyz@')}"
            send(conn, 500, json.dumps({"error": text}).encode(), {"Content-Type": "application/json"})

        front.rule(r"/api/models/owner/echo", echo)
        outs = [cli("pull", "owner/missing"), cli("pull", "owner/echo"), cli("inspect", "hf://owner/echo")]
    basic = base64.b64encode(b"mirror-user:pa55w0rd-xyz").decode()
    for r in outs:
        msg = one_error(r)
        assert "pa55w0rd" not in _printed(r) and basic not in _printed(r), msg
    assert f"no repo owner/missing on {front.url}" in outs[0].stderr
    assert "[redacted]" in outs[1].stderr
