"""Progress bars: on a terminal only (a pseudo-terminal here), never in a pipe, off with --quiet,
--json and HF_HUB_DISABLE_PROGRESS_BARS=1."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest

from bankutil import random_bank

BAR = re.compile(r"rank: +\d+%\|")


def run_on_terminal(args, env_extra=None):
    """Run ``python -m mptkit ARGS`` with stderr on a pseudo-terminal; (exit code, stdout, terminal text)."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    env.update(env_extra or {})
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty has 0 columns
    p = subprocess.Popen([sys.executable, "-m", "mptkit", *map(str, args)], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        seen += chunk
    out = p.stdout.read().decode()
    p.stdout.close()
    os.close(master)
    return p.wait(timeout=120), out, seen.decode(errors="replace")


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    return random_bank(tmp_path_factory.mktemp("progress") / "b.safetensors", T=5, N=6, r=3, d=8)


def test_a_terminal_sees_the_bar_a_pipe_never_does(bank, tmp_path):
    code, out, tty = run_on_terminal(["rank", bank, "--rank", "1", "-o", tmp_path / "a.safetensors"])
    assert code == 0 and BAR.search(tty), tty
    assert "wrote" in out and "%|" not in out  # the report goes to stdout, the bar to the terminal only
    piped = subprocess.run([sys.executable, "-m", "mptkit", "rank", str(bank), "--rank", "1", "-o", str(tmp_path / "b.safetensors")],
                           capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"})
    assert piped.returncode == 0 and "%|" not in piped.stderr and "%|" not in piped.stdout


@pytest.mark.parametrize("how", ["--quiet", "--json", "env"])
def test_quiet_json_and_the_hub_setting_turn_the_bar_off(bank, tmp_path, how):
    extra = ["--quiet"] if how == "--quiet" else ["--json"] if how == "--json" else []
    env = {"HF_HUB_DISABLE_PROGRESS_BARS": "1"} if how == "env" else None
    code, out, tty = run_on_terminal(["rank", bank, "--rank", "1", "-o", tmp_path / "c.safetensors", *extra], env)
    assert code == 0 and "%|" not in tty and (tmp_path / "c.safetensors").exists()


def test_ctrl_c_stops_a_fit_at_once(tmp_path):
    """SIGINT while the fit runs (its bar has just appeared): the process ends without a
    traceback, writes nothing and prints no report."""
    import signal

    src = random_bank(tmp_path / "big.safetensors", T=64, N=100, r=32, d=1024)  # seconds of fitting
    out = tmp_path / "out.safetensors"
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    p = subprocess.Popen([sys.executable, "-m", "mptkit", "rank", str(src), "--rank", "8", "-o", str(out)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    seen = b""
    while not BAR.search(seen.decode(errors="replace")):
        chunk = os.read(master, 4096)
        assert chunk, seen
        seen += chunk
    p.send_signal(signal.SIGINT)
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    stdout = p.stdout.read().decode()
    p.stdout.close()
    os.close(master)
    assert p.wait(timeout=60) != 0
    assert "Traceback" not in seen.decode(errors="replace") and "wrote" not in stdout and not out.exists()
