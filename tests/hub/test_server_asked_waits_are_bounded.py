"""A server that tells mptkit to wait: HTTP 429 or 503 with ``Retry-After`` (seconds or
a date) or ``RateLimit`` (``r=0;t=N``). The client library sleeps as long as it is told; every wait
a server asks for must end before the deadline, so one that would not is refused at once, saying
what the server asked and how much of the deadline was left. A wait that fits is honoured."""

from __future__ import annotations

import email.utils
import time

import pytest

from tests.fakehub.wirefront import reply
from tests.support.commands import one_error
from tests.support.measured import run_measured


def _busy(status: int, **headers) -> object:
    return reply(status, b'{"error": "slow down"}', {"Content-Type": "application/json", **headers})


@pytest.mark.parametrize(
    ("status", "headers", "said"),
    [
        (429, {"Retry-After": "86400"}, "a wait of 86,400 s (1 day)"),
        (503, {"Retry-After": "172800"}, "a wait of 172,800 s (2 days)"),
        (429, {"RateLimit": '"api";r=0;t=86400', "RateLimit-Policy": '"fixed window";"api";q=500;w=86400'},
         'RateLimit: "api";r=0;t=86400'),
    ],
    ids=["429-retry-after", "503-retry-after", "429-ratelimit"],
)  # fmt: skip
def test_a_listing_told_to_wait_for_days_is_refused_at_once(front, status, headers, said):
    front.rule(r"/tree/", _busy(status, **headers), times=None)
    r = run_measured("inspect", "hf://owner/bank", "--deadline", "600", wall_limit_s=120)
    msg = one_error(r, "cannot list the repo root", f"answered HTTP {status}", said, "past the deadline", "--deadline")
    assert "s of 600 s left" in msg
    assert len(front.seen(r"/tree/")) == 1  # refused on the first answer, not after a day of retries


def test_a_date_to_come_back_at_counts_as_a_wait(front):
    later = email.utils.formatdate(time.time() + 3 * 86400, usegmt=True)
    front.rule(r"/tree/", _busy(429, **{"Retry-After": later}), times=None)
    r = run_measured("pull", "owner/bank", wall_limit_s=120)  # the default deadline: an hour
    one_error(r, "answered HTTP 429", f"Retry-After: {later}", "past the deadline")


def test_a_download_told_to_wait_is_refused_by_the_same_rule(front, tmp_path):
    front.rule(r"/resolve/", _busy(503, **{"Retry-After": "7200"}), times=None)
    r = run_measured("pull", "owner/bank", "-o", tmp_path / "p", "--deadline", "900", wall_limit_s=120)
    one_error(r, "cannot download adapter_config.json", "HTTP 503", "a wait of 7,200 s (2 hours)", "past the deadline")
    assert not (tmp_path / "p").exists()


def test_a_wait_that_fits_the_deadline_is_honoured(front, cli, tmp_path):
    front.rule(r"/tree/", _busy(429, **{"Retry-After": "1"}), times=1)
    r = cli("pull", "owner/bank", "-o", tmp_path / "p")
    assert r.exit_code == 0, r.output
    assert len(front.seen(r"/tree/")) == 2  # asked again after the wait, and answered


def test_a_wait_that_fits_is_said_on_a_terminal(front, tmp_path):
    import os
    import sys

    from tests.support.commands import run_on_terminal

    front.rule(r"/tree/", _busy(429, **{"Retry-After": "2"}), times=1)
    cmd = [sys.executable, "-m", "mptkit", "pull", "owner/bank", "-o", tmp_path / "p"]
    code, _, terminal = run_on_terminal(cmd, dict(os.environ))
    assert code == 0, terminal
    assert "the server answered HTTP 429 and asks for a wait of 2 s (Retry-After: 2)" in terminal
