"""The CLI as the tests run it: as a separate process (:func:`run_mptkit`), with a probe of what it
imported (:func:`loaded_by`, :func:`loaded_modules`), on a pseudo-terminal (:func:`run_on_terminal`);
the checks every refusal must pass (:func:`error_lines`, :func:`one_error`); and the table of every
command that writes (:func:`writing_commands`), so that no test can silently skip one. A run whose
time, memory and CPU are measured is :func:`tests.support.measured.run_measured`."""

from __future__ import annotations

import os
import subprocess
import sys


def run_mptkit(*args, env=None, cwd=None, timeout=120) -> subprocess.CompletedProcess:
    """Run ``python -m mptkit ARGS`` as a separate process (real exit codes, real imports)."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "mptkit", *map(str, args)],
        capture_output=True,
        text=True,
        env=e,
        cwd=cwd,
        timeout=timeout,
    )


def _code(result) -> int:
    return result.exit_code if hasattr(result, "exit_code") else result.returncode


def error_lines(result, *words, where: str | None = None) -> list[str]:
    """The run failed as every user mistake must: exit status 2, no traceback, no internal error, and
    every stderr line an ``mptkit: error:`` sentence (naming ``where`` when given); ``words`` all appear.
    Works on click results and on finished subprocesses. Returns the lines."""
    err = result.stderr
    assert _code(result) == 2, (_code(result), result.stdout, err)
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert lines and all(x.startswith("mptkit: error: ") for x in lines), err
    if where is not None:
        assert all(str(where) in x for x in lines), (where, err)
    for w in words:
        assert w in err, (w, err)
    return lines


def one_error(result, *words, where: str | None = None) -> str:
    """:func:`error_lines`, and there is exactly one line; returns it."""
    lines = error_lines(result, *words, where=where)
    assert len(lines) == 1, result.stderr
    return lines[0]


_REPORT = """
import atexit, sys
atexit.register(lambda: print("LOADED", ",".join(m for m in {watch!r} if m in sys.modules) or "-", file=sys.stderr))
"""
_RUN_CLI = """
from mptkit.cli import main
main(sys.argv[1:])
"""
WATCHED = ("torch", "numpy", "huggingface_hub", "transformers", "peft", "jsonschema", "matplotlib")


def loaded_by(code: str, *argv, watch=WATCHED, env=None, cwd=None) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run Python ``code`` (with ``argv``) in a fresh interpreter; the finished process and which of
    ``watch`` it had imported when it exited (the probe that proves what a command never imports)."""
    e = dict(os.environ)
    e.update(env or {})
    r = subprocess.run(
        [sys.executable, "-c", _REPORT.format(watch=tuple(watch)) + code, *map(str, argv)],
        capture_output=True,
        text=True,
        env=e,
        cwd=cwd,
        timeout=120,
    )
    line = [x for x in r.stderr.splitlines() if x.startswith("LOADED ")]
    assert line, r.stderr
    mods = line[-1].split(" ", 1)[1]
    return r, (set() if mods == "-" else set(mods.split(",")))


def loaded_modules(*argv, **kw) -> tuple[int, set[str]]:
    """Run ``mptkit ARGV`` in a fresh interpreter; its exit code and which watched modules it imported."""
    r, mods = loaded_by(_RUN_CLI, *argv, **kw)
    return r.returncode, mods


def run_on_terminal(cmd, env, *, stdout_too: bool = False, cols: int = 100, when=None) -> tuple[int, str, str]:
    """Run ``cmd`` with stderr (and stdout with ``stdout_too``) on a pseudo-terminal ``cols`` wide
    (a new one has 0 columns), reading it until the child closes it. ``when`` = (compiled pattern,
    action): ``action(proc)`` runs once, as soon as the terminal text matches. Returns (exit status,
    stdout when it was a pipe else "", the terminal text)."""
    import fcntl
    import pty
    import struct
    import termios

    main_fd, sub_fd = pty.openpty()
    fcntl.ioctl(sub_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, cols, 0, 0))
    proc = subprocess.Popen(
        [str(c) for c in cmd],
        stdin=sub_fd if stdout_too else subprocess.DEVNULL,
        stdout=sub_fd if stdout_too else subprocess.PIPE,
        stderr=sub_fd,
        env=env,
    )
    os.close(sub_fd)
    seen = b""
    while True:
        try:
            chunk = os.read(main_fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
        if when is not None and when[0].search(seen.decode(errors="replace")):
            when[1](proc)
            when = None
    os.close(main_fd)
    out = "" if stdout_too else proc.stdout.read().decode()
    if not stdout_too:
        proc.stdout.close()
    return proc.wait(timeout=120), out, seen.decode(errors="replace")


#: commands that only read (their inputs must not change either)
#: every command that writes a bank as an adapter folder from one source bank ("{src}"), as argv
#: without the output: the config-field tests run each (its fields, --peft-version X)
FOLDER_COMMANDS = [
    ["derive", "{src}", "--mode", "exact", "--task", "1"],
    ["derive", "{src}", "--mode", "average"],
    ["derive", "{src}", "--mode", "shared", "--num-tasks", "2", "--seed", "0"],
    ["slice", "{src}", "--tasks", "2,0"],
    ["remove", "{src}", "--tasks", "1"],
    ["rename", "{src}", "--names", "a,b,c"],
    ["add", "{src}", "--init", "average"],
    ["rank", "{src}", "--rank", "3"],
    ["merge", "{src}", "{src}", "--rename-duplicates"],
    ["convert", "{src}"],
]

READ_ONLY_COMMANDS = {"validate", "inspect", "similarity", "verify", "diff"}
#: commands whose input or output is a Hub repo (tested against the loopback Hub)
HUB_COMMANDS = {"pull", "push"}


#: the suffix an output of kind "image" or "page" takes
FILE_SUFFIX = {"image": ".png", "page": ".html"}


def writing_commands(src, out, other=None) -> dict[str, tuple[str, list[str]]]:
    """Every way the CLI writes a local output, as ``{label: (output kind, argv)}`` turning ``src``
    (a bank with at least 2 tasks and an adapter config) and ``other`` (a second such bank, default
    ``src``) into ``out``. Output kinds: "bank" (a .safetensors path or a folder), "folder" (a
    folder only), "image" (an image file), "page" (an HTML file); :data:`FILE_SUFFIX` names a path
    for the last two. Every command the table names must exist, and every
    command that writes (has -o/--output or --plot) must be in the table, so that the reliability
    tests cannot silently skip one."""
    from mptkit.cli import main

    src, out, other = str(src), str(out), str(other or src)
    table = {
        "derive-exact": ("bank", ["derive", src, "--mode", "exact", "--task", "1", "-o", out]),
        "derive-average": ("bank", ["derive", src, "--mode", "average", "-o", out]),
        "derive-shared": ("bank", ["derive", src, "--mode", "shared", "--num-tasks", "2", "--seed", "0", "-o", out]),
        "export": ("folder", ["export", src, "--task", "1", "-o", out]),
        "export-tgis": ("folder", ["export", src, "--tasks", "1", "--format", "tgis", "-o", out]),
        "rename": ("bank", ["rename", src, "0=first", "-o", out]),
        "slice": ("bank", ["slice", src, "--tasks", "1,0", "-o", out]),
        "remove": ("bank", ["remove", src, "--tasks", "0", "-o", out]),
        "merge": ("bank", ["merge", src, other, "--rename-duplicates", "-o", out]),
        "add": ("bank", ["add", src, "--name", "new", "--init", "average", "-o", out]),
        "rank": ("bank", ["rank", src, "--rank", "3", "-o", out]),
        # --shared: the factors only (the search for a shared prompt is tested in tests/ops/test_decompose.py)
        "decompose": ("bank", ["decompose", src, "--shared", src, "--rank", "2", "-o", out]),
        "convert": ("bank", ["convert", src, "-o", out]),
        "build": ("bank", ["build", recipe_taking(src, "1,0"), "-o", out]),
        "similarity-plot": ("image", ["similarity", src, "--plot", out]),
        "report": ("page", ["report", src, "-o", out]),
    }
    named = {argv[0] for _, argv in table.values()}
    unknown = named - set(main.commands)
    assert not unknown, f"tests/support/commands.py names commands the CLI does not have: {sorted(unknown)}"
    writers = {
        name
        for name, cmd in main.commands.items()
        if any(o in ("--output", "--plot") for p in cmd.params for o in p.opts)
    }
    uncovered = writers - named - HUB_COMMANDS
    assert not uncovered, (
        f"add these writing commands to tests/support/commands.py writing_commands: {sorted(uncovered)}"
    )
    return table


def recipe_taking(src: str, tasks: str) -> str:
    """A recipe (``mptkit build``) taking the tasks ``tasks`` of ``src``, written to a folder of its
    own when ``src`` exists (removed when the tests end); a placeholder name otherwise."""
    import atexit
    import json
    import shutil
    import tempfile

    if not os.path.exists(src):
        return "RECIPE.yaml"
    folder = tempfile.mkdtemp(prefix="mptkit-test-recipe-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = os.path.join(folder, "recipe.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"sources:\n  - bank: {json.dumps(os.path.abspath(src))}\n    tasks: [{tasks}]\n")
    return path


def writing_labels() -> list[str]:
    return list(writing_commands("SRC", "OUT"))


def cli_write_argv(src, out) -> list[str]:
    """A command line for a separate interpreter that rewrites the whole bank ``src`` to ``out``
    (``python -m mptkit slice`` keeping every task)."""
    import sys

    import mptkit

    T = mptkit.load(src).num_tasks
    return [sys.executable, "-m", "mptkit", "slice", str(src), "--tasks", f"0-{T - 1}", "-o", str(out), "--force"]
