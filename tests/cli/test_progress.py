"""Progress bars: on a terminal only (a pseudo-terminal here), never in a pipe, off with --quiet,
--json and HF_HUB_DISABLE_PROGRESS_BARS=1."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.support.banks import random_bank
from tests.support.commands import run_on_terminal as on_terminal

BAR = re.compile(r"rank: +\d+%\|")


def run_on_terminal(args, env_extra=None, when=None):
    """Run ``python -m mptkit ARGS`` with stderr on a pseudo-terminal; (exit code, stdout, terminal text)."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    env.update(env_extra or {})
    return on_terminal([sys.executable, "-m", "mptkit", *args], env, when=when)


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    return random_bank(tmp_path_factory.mktemp("progress") / "b.safetensors", T=5, N=6, r=3, d=8)


def test_a_terminal_sees_the_bar_a_pipe_never_does(bank, tmp_path):
    code, out, tty = run_on_terminal(["rank", bank, "--rank", "1", "-o", tmp_path / "a.safetensors"])
    assert code == 0 and BAR.search(tty), tty
    assert "wrote" in out and "%|" not in out  # the report goes to stdout, the bar to the terminal only
    piped = subprocess.run(
        [sys.executable, "-m", "mptkit", "rank", str(bank), "--rank", "1", "-o", str(tmp_path / "b.safetensors")],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"},
    )
    assert piped.returncode == 0 and "%|" not in piped.stderr and "%|" not in piped.stdout


@pytest.mark.parametrize("how", ["--quiet", "--json", "env"])
def test_quiet_json_and_the_hub_setting_turn_the_bar_off(bank, tmp_path, how):
    extra = ["--quiet"] if how == "--quiet" else ["--json"] if how == "--json" else []
    env = {"HF_HUB_DISABLE_PROGRESS_BARS": "1"} if how == "env" else None
    code, out, tty = run_on_terminal(["rank", bank, "--rank", "1", "-o", tmp_path / "c.safetensors", *extra], env)
    assert code == 0 and "%|" not in tty and (tmp_path / "c.safetensors").exists()


# mptkit's CLI with its fit held still at a known point: the third sweep of the fit says so on
# the terminal and sleeps, so that the signal arrives while the fit runs, however busy the machine
# (a runner started in the background has SIGINT ignored, and a child inherits that: restored)
HELD_FIT = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # even where the test runner ignores SIGINT
from mptkit import _als as als
sweep, count = als.Pool.sweep, [0]
def held(pool):
    count[0] += 1
    if count[0] == 3:
        sys.stderr.write("fit held\\n")
        sys.stderr.flush()
        time.sleep(300)
    return sweep(pool)
als.Pool.sweep = held
from mptkit.cli import main
sys.argv[0] = "mptkit"
main()
"""


def test_ctrl_c_stops_a_fit_at_once(tmp_path):
    """SIGINT while the fit runs (held at its third sweep): the process ends without a
    traceback, writes nothing and prints no report."""
    import signal

    src = random_bank(tmp_path / "big.safetensors", T=16, N=20, r=8, d=64)
    out = tmp_path / "out.safetensors"
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    code, stdout, shown = on_terminal(
        [sys.executable, "-c", HELD_FIT, "rank", src, "--rank", "2", "-o", out],
        env,
        when=(re.compile("fit held"), lambda p: p.send_signal(signal.SIGINT)),
    )
    assert code == 130, shown
    assert BAR.search(shown), shown  # the bar was up
    lines = [x.strip() for x in re.split(r"[\r\n]+", shown) if x.strip().startswith("mptkit:")]
    assert lines == ["mptkit: interrupted before any output was written"], shown  # the fit was running
    assert "Traceback" not in shown and "wrote" not in stdout and not out.exists()
