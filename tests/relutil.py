"""Helpers for the reliability tests (issue 7): large synthetic banks, digests, killed writers.

A killed writer is a real child process (``os.fork`` of the test process, or ``python -m mptkit``)
stopped with SIGKILL, so nothing in it gets to clean up.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

TMP_MARK = ".mptkit-tmp-"


def big_bank(path: Path, seed: int, *, N: int = 512, d: int = 16384, T: int = 32, r: int = 4) -> Path:
    """A bare .safetensors bank of about 42 MB (F32) written by the safetensors package, with a
    config hint so that it can also be saved as an adapter folder."""
    import torch
    from bankutil import write_bank

    g = torch.Generator().manual_seed(seed)
    meta = {"mptkit.config": json.dumps({"task_type": "CAUSAL_LM", "num_virtual_tokens": N})}
    return write_bank(
        Path(path),
        torch.randn(N, d, generator=g),
        torch.randn(T, N, r, generator=g),
        torch.randn(T, r, d, generator=g),
        extra_meta=meta,
    )


def digest(path) -> str | None:
    """Content digest of a file, or of a folder's files by name (independent of the folder's own
    name); None when nothing is there."""
    p = Path(path)
    if not (p.exists() or p.is_symlink()):
        return None
    if p.is_file():
        return hashlib.sha256(p.read_bytes()).hexdigest()
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(str(f.relative_to(p)).encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return "dir:" + h.hexdigest()


def temps(target) -> list[Path]:
    """Temps of ``target`` (its writers' leftovers) in its folder."""
    t = Path(target)
    return sorted(p for p in t.parent.iterdir() if p.name.startswith(f".{t.name}{TMP_MARK}"))


def fork_save(src, out, *, force: bool, no_renameat2: bool = False) -> int:
    """Fork a child that loads ``src`` and saves it to ``out``; exit 0 on success, 2 on an
    MptkitError, 1 on anything else. Returns the child's pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        import mptkit
        from mptkit.errors import MptkitError
        from mptkit.formats import _atomic as atomic

        if no_renameat2:
            atomic._renameat2 = lambda *a: False
        try:
            mptkit.save(mptkit.load(src), out, force=force)
            code = 0
        except MptkitError:
            code = 2
    finally:
        os._exit(code)


def wait_exit(pid: int) -> int:
    """Reap a child; its exit status (or -signal)."""
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def stat_key(path):
    """What changes when a path is written in place or replaced."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def kill_when_writing(pid: int, target, delay: float, before=None, timeout: float = 60.0) -> bool:
    """Wait until child ``pid`` has started writing ``target`` (its temp appeared, or ``target``
    itself changed from ``before``, its :func:`stat_key` at fork time), sleep ``delay`` seconds,
    then SIGKILL and reap it. True when the kill interrupted it (it had not exited by itself)."""
    t = Path(target)
    prefix = f".{t.name}{TMP_MARK}{pid}-"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if any(n.startswith(prefix) for n in os.listdir(t.parent)) or stat_key(t) != before:
            break
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False  # finished (or failed) before we saw it write
        time.sleep(0.0005)
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    return wait_exit(pid) == -signal.SIGKILL


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def cli_write_argv(src, out) -> list[str]:
    """A command line for a separate interpreter that rewrites the whole bank ``src`` to ``out``
    (``python -m mptkit slice`` keeping every task)."""
    import sys

    import mptkit

    T = mptkit.load(src).num_tasks
    return [sys.executable, "-m", "mptkit", "slice", str(src), "--tasks", f"0-{T - 1}", "-o", str(out), "--force"]


# -- the CLI's commands -----------------------------------------------------------------------------
#: commands that only read (their inputs must not change either)
READ_ONLY_COMMANDS = {"validate", "inspect", "similarity", "verify", "diff"}
#: commands whose input or output is a Hub repo (tested against the loopback Hub)
HUB_COMMANDS = {"pull", "push"}


def writing_commands(src, out, other=None) -> dict[str, tuple[str, list[str]]]:
    """Every way the CLI writes a local output, as ``{label: (output kind, argv)}`` turning ``src``
    (a bank with at least 2 tasks and an adapter config) and ``other`` (a second such bank, default
    ``src``) into ``out``. Output kinds: "bank" (a .safetensors path or a folder), "folder" (a
    folder only), "image" (an image file). Every command the table names must exist, and every
    command that writes (has -o/--output or --plot) must be in the table, so that the reliability
    tests cannot silently skip one."""
    from mptkit.cli import main

    src, out, other = str(src), str(out), str(other or src)
    table = {
        "derive-exact": ("bank", ["derive", src, "--mode", "exact", "--task", "1", "-o", out]),
        "derive-average": ("bank", ["derive", src, "--mode", "average", "-o", out]),
        "derive-shared": ("bank", ["derive", src, "--mode", "shared", "--num-tasks", "2", "--seed", "0", "-o", out]),
        "export": ("folder", ["export", src, "--task", "1", "-o", out]),
        "rename": ("bank", ["rename", src, "0=first", "-o", out]),
        "slice": ("bank", ["slice", src, "--tasks", "1,0", "-o", out]),
        "remove": ("bank", ["remove", src, "--tasks", "0", "-o", out]),
        "merge": ("bank", ["merge", src, other, "--rename-duplicates", "-o", out]),
        "add": ("bank", ["add", src, "--name", "new", "--init", "average", "-o", out]),
        "rank": ("bank", ["rank", src, "--rank", "3", "-o", out]),
        # --shared: the factors only (the search for a shared prompt is tested in test_tables.py)
        "decompose": ("bank", ["decompose", src, "--shared", src, "--rank", "2", "-o", out]),
        "convert": ("bank", ["convert", src, "-o", out]),
        "build": ("bank", ["build", recipe_taking(src, "1,0"), "-o", out]),
        "similarity-plot": ("image", ["similarity", src, "--plot", out]),
    }
    named = {argv[0] for _, argv in table.values()}
    unknown = named - set(main.commands)
    assert not unknown, f"tests/relutil.py names commands the CLI does not have: {sorted(unknown)}"
    writers = {
        name
        for name, cmd in main.commands.items()
        if any(o in ("--output", "--plot") for p in cmd.params for o in p.opts)
    }
    uncovered = writers - named - HUB_COMMANDS
    assert not uncovered, f"add these writing commands to tests/relutil.py writing_commands: {sorted(uncovered)}"
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


def medium_bank(path: Path, *, N: int = 64, d: int = 1024, T: int = 4, r: int = 2, seed: int = 3) -> Path:
    """A PEFT-style adapter folder (config + safetensors) of about 400 kB, made with mptkit.save
    from a bank written by the safetensors package."""
    import torch
    from bankutil import write_bank

    import mptkit

    path = Path(path)
    g = torch.Generator().manual_seed(seed)
    flat = path.with_name(path.name + ".src.safetensors")
    meta = {
        "mptkit.config": json.dumps(
            {"task_type": "CAUSAL_LM", "num_virtual_tokens": N, "num_transformer_submodules": 1}
        )
    }
    write_bank(
        flat,
        torch.randn(N, d, generator=g),
        torch.randn(T, N, r, generator=g),
        torch.randn(T, r, d, generator=g),
        names=[f"t{i}" for i in range(T)],
        extra_meta=meta,
    )
    mptkit.save(mptkit.load(flat), path)
    flat.unlink()
    return path


def write_seconds(src, out, *, force: bool = True, runs: int = 3) -> float:
    """How long a forked writer takes from creating its temp to exiting (the window a kill must
    hit), the median of ``runs`` uninterrupted writes of ``src`` to ``out``."""
    times = []
    for _ in range(runs):
        pid = fork_save(src, out, force=force)
        prefix = f".{Path(out).name}{TMP_MARK}{pid}-"
        start = None
        while True:
            if start is None and any(n.startswith(prefix) for n in os.listdir(Path(out).parent)):
                start = time.monotonic()
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.0005)
        times.append(time.monotonic() - (start or time.monotonic()))
    return sorted(times)[len(times) // 2]
