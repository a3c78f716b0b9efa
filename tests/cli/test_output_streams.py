"""What mptkit does when the stream it prints to fails: a reader that went away (``| head -1``), a
stream that refuses a write (``> /dev/full``), an encoding that cannot show a character (a latin-1
terminal and non-Latin task names). Never "internal error", never a traceback, and never a second
error on the stream that failed: a quiet exit 141 (as a tool killed by SIGPIPE), one sentence on
stderr and exit 2, or the character printed as an escape and exit 0.

Each case runs the real CLI as a process (the exit status and the interpreter's last flush are the
point), with stdout a pipe whose reader is already closed, /dev/full, or a latin-1 stream."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.banks import random_bank

COMMANDS = {
    "inspect": ["inspect", "{bank}"],
    "inspect --json": ["inspect", "--json", "{bank}"],
    "validate": ["validate", "{bank}"],
    "similarity --json": ["similarity", "--json", "{bank}"],
    "--help": ["--help"],
    "inspect --help": ["inspect", "--help"],
}


@pytest.fixture(scope="module")
def bank(tmp_path_factory) -> Path:
    names = ["日本語", "Ελληνικά", "русский", "plain"]
    return random_bank(tmp_path_factory.mktemp("streams") / "names.safetensors", T=4, names=names)


def _argv(label, bank) -> list[str]:
    return [a.format(bank=bank) for a in COMMANDS[label]]


def _run(argv, stdout, env=None) -> tuple[int, str]:
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run(
        [sys.executable, "-m", "mptkit", *argv], stdout=stdout, stderr=subprocess.PIPE, env=e, timeout=120
    )
    return p.returncode, p.stderr.decode("utf-8", "replace")


@pytest.mark.parametrize("label", list(COMMANDS))
def test_a_reader_that_went_away_ends_mptkit_quietly(label, bank):
    read, write = os.pipe()
    os.close(read)  # the reader is gone before mptkit prints its first byte
    try:
        code, err = _run(_argv(label, bank), stdout=write)
    finally:
        os.close(write)
    assert code == 141, (code, err)
    assert err == "", err


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("label", list(COMMANDS))
def test_a_stdout_that_refuses_writes_is_one_sentence(label, bank):
    with open("/dev/full", "wb") as full:
        code, err = _run(_argv(label, bank), stdout=full)
    assert code == 2, (code, err)
    assert err == "mptkit: error: cannot write to standard output: No space left on device\n", err


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_an_error_in_json_mode_with_a_full_stdout_is_still_one_sentence(bank):
    """The error's JSON cannot go to the stdout that failed: one sentence on stderr instead."""
    with open("/dev/full", "wb") as full:
        code, err = _run(["inspect", "--json", str(bank.parent / "missing.safetensors")], stdout=full)
    assert code == 2, (code, err)
    assert err == "mptkit: error: cannot write to standard output: No space left on device\n", err


@pytest.mark.parametrize("encoding", ["latin-1", "ascii"])
@pytest.mark.parametrize("label", ["inspect", "similarity --json", "validate"])
def test_characters_the_terminal_cannot_show_are_escaped(label, encoding, bank):
    code, err = _run(_argv(label, bank), stdout=subprocess.PIPE, env={"PYTHONIOENCODING": encoding})
    assert code == 0, (code, err)
    assert err == "", err


@pytest.mark.parametrize("encoding", ["latin-1", "ascii"])
def test_names_in_output_and_in_errors_come_out_escaped(encoding, bank):
    env = dict(os.environ, PYTHONIOENCODING=encoding)
    p = subprocess.run(
        [sys.executable, "-m", "mptkit", "inspect", str(bank)], capture_output=True, env=env, timeout=120
    )
    assert p.returncode == 0, p.stderr
    assert b"\\u65e5\\u672c\\u8a9e" in p.stdout and b"plain" in p.stdout, p.stdout
    out = bank.parent / "x.safetensors"
    p = subprocess.run(
        [sys.executable, "-m", "mptkit", "slice", str(bank), "--tasks", "日本", "-o", str(out)],
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith(b"mptkit: error: unknown task '\\u65e5\\u672c'"), p.stderr
    assert b"Traceback" not in p.stderr and b"internal error" not in p.stderr
