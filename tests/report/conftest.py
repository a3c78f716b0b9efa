"""A real browser for the report's tests: Debian's ``chromium``, driven by playwright's Python package
through ``executable_path`` (playwright never downloads a browser here).

Why playwright (measured 2026-12 on this machine, Chromium 150 from Debian): it reports console
messages, page errors and every request (with routing to refuse them) and moves the mouse, all in its
own API; selenium needs chromium-driver plus the DevTools protocol by hand for requests. Launch:
playwright 1.16 s, selenium 0.50 s; ``pip install playwright`` 2.8 s, ``apt-get install chromium``
42 s (with ``apt-get update``; .ci/run does it when chromium is missing).

Where chromium is missing the browser tests are skipped and the run says so in a banner at the end;
under CI (``CI`` set) they fail instead, since CI installs chromium.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

#: the flags that work on this machine (no sandbox as root, no GPU, no background traffic)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
_MISSING: list[str] = []


def chromium_path() -> str | None:
    return os.environ.get("MPTKIT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium (one for the session, a fresh user-data-dir)."""
    exe = chromium_path()
    if exe is None:
        why = "chromium is not installed (apt-get install -y chromium; .ci/run does it)"
        if os.environ.get("CI"):
            pytest.fail(f"the report's browser tests need chromium under CI: {why}")
        _MISSING.append(why)
        pytest.skip(f"BROWSER TESTS SKIPPED: {why}")
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="mptkit-chromium-")
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            profile,
            executable_path=exe,
            args=FLAGS,
            headless=True,
            viewport={"width": 1400, "height": 1000},
            device_scale_factor=1,
        )
        try:
            yield ctx
        finally:
            ctx.close()
            shutil.rmtree(profile, ignore_errors=True)


@dataclass
class Opened:
    """A report open in the browser, with what happened while it loaded."""

    page: object
    url: str
    console_errors: list = field(default_factory=list)
    page_errors: list = field(default_factory=list)
    requests: list = field(default_factory=list)
    refused: list = field(default_factory=list)
    dialogs: list = field(default_factory=list)


@pytest.fixture
def open_report(browser):
    """``open_report(path)``: open a report from ``file://`` and wait until it has drawn itself.
    Every request is recorded; any that is not the page itself is refused (and recorded)."""
    pages = []

    def run(path: Path) -> Opened:
        page = browser.new_page()
        pages.append(page)
        url = Path(path).resolve().as_uri()
        got = Opened(page, url)
        page.on("console", lambda m: m.type in ("error", "warning") and got.console_errors.append(m.text))
        page.on("pageerror", lambda e: got.page_errors.append(str(e)))
        page.on("request", lambda r: got.requests.append(r.url))
        page.on("dialog", lambda d: (got.dialogs.append(d.message), d.dismiss()))

        def route(r):
            if r.request.url == url:
                r.continue_()
            else:
                got.refused.append(r.request.url)
                r.abort()

        page.route("**/*", route)
        page.goto(url, wait_until="load")
        page.wait_for_selector("body[data-ready='1']", state="attached", timeout=30_000)
        return got

    yield run
    for p in pages:
        p.close()


def pytest_terminal_summary(terminalreporter):
    if _MISSING:
        terminalreporter.write_sep("!", "BROWSER TESTS OF THE REPORT WERE SKIPPED", red=True, bold=True)
        terminalreporter.write_line(f"  {_MISSING[0]}", red=True, bold=True)
