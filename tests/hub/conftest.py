"""Fixtures of the hub room."""

from __future__ import annotations

import pytest

from tests.fakehub.wirefront import WireFront


@pytest.fixture
def front(hub, example_bank, monkeypatch):
    """owner/bank on the fake Hub, reached through a :class:`WireFront` (``HF_ENDPOINT`` points at it)
    whose handlers a test sets to misbehave on the wire."""
    hub.commit("owner/bank", {p.name: p.read_bytes() for p in example_bank.iterdir()})
    with WireFront(hub.url) as f:
        monkeypatch.setenv("HF_ENDPOINT", f.url)
        yield f
