"""Credentials go to the endpoint and nowhere else: a listing's ``Link: rel="next"`` (or a
redirect) may name another origin (host, port or scheme); the next request goes there without the
token. The endpoint itself gets the token as before."""

from __future__ import annotations

import json

import pytest

from tests.fakehub.wirefront import WireFront, reply, send

TOKEN = "hf_OnlyForTheEndpoint0123456789"


@pytest.fixture
def fronts(hub, example_bank, monkeypatch):
    """(the endpoint's front, another origin's front) with owner/bank on the fake Hub behind both."""
    hub.commit("owner/bank", {p.name: p.read_bytes() for p in example_bank.iterdir()})
    with WireFront(hub.url) as ep, WireFront(hub.url) as other:
        monkeypatch.setenv("HF_ENDPOINT", ep.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield ep, other


def _next_page_at(base: str):
    """The endpoint's own first page, naming a next page at ``base`` (another origin)."""

    def act(conn, req, front):
        status, reason, headers, body = front.fetch(req)
        link = f'<{base(front)}{req.path}?recursive=false&expand=false&cursor=1>; rel="next"'
        send(conn, status, body, [*headers, ("Link", link)], reason)

    return act


@pytest.mark.parametrize("where", ["another-port", "another-host"])
def test_a_next_page_elsewhere_gets_no_token(fronts, cli, where):
    ep, other = fronts
    if where == "another-port":
        base = lambda front: other.url
        seen = other
    else:  # the same server by another name: another origin all the same
        base = lambda front: front.url.replace("127.0.0.1", "localhost")
        seen = ep
    ep.rule(r"/tree/", _next_page_at(base), times=1)
    seen.rule(r"cursor=1", reply(200, json.dumps([]).encode(), {"Content-Type": "application/json"}))
    r = cli("inspect", "hf://owner/bank")
    assert r.exit_code == 0, r.output
    pages = seen.seen(r"cursor=1")
    assert len(pages) == 1 and "authorization" not in pages[0].headers, pages[0].headers
    first = [q for q in ep.seen(r"/api/models/") if "cursor=1" not in q.target]
    assert first and all(q.headers.get("authorization") == f"Bearer {TOKEN}" for q in first)


def test_a_redirect_elsewhere_gets_no_token(fronts, cli, tmp_path):
    ep, other = fronts

    def moved(conn, req, front):
        send(conn, 302, b"", {"Location": f"{other.url}{req.target}"})

    ep.rule(r"/resolve/", moved)
    r = cli("pull", "owner/bank", "-o", tmp_path / "p")
    assert r.exit_code == 0, r.output
    got = other.seen(r"/resolve/")
    assert got and all("authorization" not in q.headers for q in got)
