"""A listing whose pages never end: each page names the next (``Link: rel="next"``),
empty or holding one entry, so neither the cap on bytes nor the cap on entries ever comes. The
pages are capped too: a listing that goes on past 200 pages (the Hub lists 1,000 entries a page, so
200 pages are twice the 100,000 entries a listing may hold) is refused, after that many requests."""

from __future__ import annotations

import json
import re

import pytest

from tests.fakehub.wirefront import send
from tests.support.commands import one_error
from tests.support.measured import run_measured

PAGES = 200


def endless(entries_per_page: int):
    """Every page of a tree listing names the next one; none is the last."""

    def act(conn, req, front):
        n = int((re.search(r"[?&]cursor=(\d+)", req.target) or [0, 0])[1])
        page = [
            {"type": "file", "path": f"junk/{n}-{i}.txt", "size": 1, "oid": "0" * 40} for i in range(entries_per_page)
        ]
        link = f'<{front.url}{req.path}?recursive=false&expand=false&cursor={n + 1}>; rel="next"'
        send(conn, 200, json.dumps(page).encode(), {"Content-Type": "application/json", "Link": link})

    return act


@pytest.mark.parametrize("entries", [0, 1], ids=["empty-pages", "one-entry-pages"])
def test_a_listing_without_a_last_page_is_cut_off(front, entries):
    front.rule(r"/tree/", endless(entries))
    r = run_measured("inspect", "hf://owner/bank", wall_limit_s=240)
    one_error(r, "cannot list the repo root", f"goes on past {PAGES} pages", 'Link: rel="next"')
    assert len(front.seen(r"/tree/")) == PAGES  # the next request would have been one too many


def test_a_listing_of_a_few_pages_is_read_whole(hub, cli, example_bank, tmp_path):
    """Pages as the Hub sends them (here 2 entries a page): all read, the bank found on the last."""
    files = {p.name: p.read_bytes() for p in example_bank.iterdir()}
    hub.commit("owner/bank", {f"notes/{i}.txt": b"x" for i in range(9)} | files)
    hub.page_size = 2
    r = cli("pull", "owner/bank", "-o", tmp_path / "p")
    assert r.exit_code == 0, r.output
    assert {p.name: p.read_bytes() for p in (tmp_path / "p").iterdir()} == files
    entries = 1 + len(files) + 1  # .gitattributes, the bank's files, notes/
    assert len([q for q in hub.requests if "/tree/" in q.path]) == -(-entries // 2)
