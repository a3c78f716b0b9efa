"""Hostile and clumsy outputs: names, --force, stale temps, signals, and what is printed.

Each attack runs the real CLI in a subprocess (exact exit status and the sentence's key words) or
a real writer process stopped at a known point (tests/support/stophooks.py); each ends in a correct result
or one exit-2 sentence, with nothing written outside the output and the inputs unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import mptkit
from mptkit.formats import _atomic as atomic
from tests.support.banks import medium_bank, random_bank, write_bank
from tests.support.commands import one_error, run_mptkit
from tests.support.files import digest, sha256_tree, temps
from tests.support.stophooks import FIFO_ENV, cli_stopping_argv, fork_stopping, kill, signal_and_wait, wait_stopped
from tests.support.writers import dead_pid

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    return medium_bank(tmp_path_factory.mktemp("outputs") / "bank")


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# -- names ----------------------------------------------------------------------------------------
def test_inputs_whose_names_are_not_utf8_just_work(bank, tmp_path):
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/bank-\xff\xfe"))
    shutil.copytree(bank, odd)
    before = digest(odd)
    for argv, out in (
        (["slice", odd, "--tasks", "1,0"], tmp_path / "s.safetensors"),
        (["derive", odd, "--mode", "exact", "--task", "1"], tmp_path / "d"),
        (["merge", odd, odd, "--rename-duplicates"], tmp_path / "m.safetensors"),
    ):
        r = run_mptkit(*argv, "-o", out)
        assert r.returncode == 0, r.stderr
        assert "\\udcff" in r.stdout or "\\xff" in r.stdout  # the odd bytes are shown escaped
        got = mptkit.load(out)
        assert got.provenance[-1]["sources"][0]["name"] == "bank-\\udcff\\udcfe"  # recorded as valid text
        from safetensors import safe_open  # the header is valid UTF-8: safetensors itself reads it

        with safe_open(str(out if out.suffix else out / "adapter_model.safetensors"), "pt") as f:
            assert "mptkit.provenance" in f.metadata()
    r = run_mptkit("inspect", tmp_path / "m.safetensors", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["provenance"][-1]["sources"][0]["name"] == "bank-\\udcff\\udcfe"
    assert digest(odd) == before


def test_an_output_name_over_255_bytes_is_one_sentence(bank, tmp_path):
    for name in ("a" * 300, "a" * 250 + ".safetensors", "é" * 130):
        r = run_mptkit("slice", bank, "--tasks", "0", "-o", tmp_path / name)
        one_error(r, "bytes long", "at most 255 bytes")
    assert listing(tmp_path) == []


@pytest.mark.parametrize("length", [227, 240, 255])
@pytest.mark.parametrize("kind", ["file", "folder"])
def test_legal_long_output_names_work(bank, tmp_path, length, kind):
    """The temp's name is shortened to fit, never the output's."""
    name = "b" * (length - len(".safetensors")) + ".safetensors" if kind == "file" else "b" * length
    out = tmp_path / name
    assert len(os.fsencode(out.name)) == length
    r = run_mptkit("slice", bank, "--tasks", "2,0", "-o", out)
    assert r.returncode == 0, r.stderr
    assert mptkit.load(out).task_names == ["t2", "t0"]
    r = run_mptkit("slice", bank, "--tasks", "1", "-o", out, "--force")  # replacing it works too
    assert r.returncode == 0, r.stderr
    assert mptkit.load(out).task_names == ["t1"] and os.listdir(tmp_path) == [name]  # no temp left beside it


def test_a_long_name_gets_a_temp_that_fits(tmp_path):
    from mptkit.formats import _temps as temps_mod

    target = tmp_path / ("c" * 255)
    name = temps_mod._tmp_name(target, "0" * 16)
    assert (
        len(os.fsencode(name)) <= 255
        and name.startswith(".ccc")
        and name.endswith(atomic.TMP_MARK + f"{os.getpid()}-" + "0" * 16)
    )


# -- --force replaces only a bank -------------------------------------------------------------------
def test_force_never_deletes_what_is_not_a_bank(bank, tmp_path):
    notabank = tmp_path / "notabank"
    (notabank / "sub").mkdir(parents=True)
    (notabank / "notes.txt").write_text("mine")
    (notabank / "sub" / "more.txt").write_text("mine too")
    before = sha256_tree(notabank)
    for out in (f"{notabank}/", notabank):
        one_error(
            run_mptkit("slice", bank, "--tasks", "0", "-o", out, "--force"),
            "notes.txt, sub/",
            "not part of a bank",
            "nothing was touched",
        )
    assert sha256_tree(notabank) == before
    # an adapter folder with a stray file, a .safetensors that is some other model, a corrupt one
    stray = tmp_path / "stray"
    mptkit.save(mptkit.load(bank), stray)
    (stray / "training_args.bin").write_bytes(b"keep")
    one_error(run_mptkit("slice", bank, "--tasks", "0", "-o", stray, "--force"), "training_args.bin")
    model = tmp_path / "model.safetensors"
    import torch
    from safetensors.torch import save_file

    save_file({"lm_head.weight": torch.zeros(2, 2)}, str(model))
    one_error(
        run_mptkit("slice", bank, "--tasks", "0", "-o", model, "--force"), "not a prompt bank", "'lm_head.weight'"
    )
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    one_error(run_mptkit("slice", bank, "--tasks", "0", "-o", corrupt, "--force"), "not a bank mptkit reads")
    link = tmp_path / "link.safetensors"
    link.symlink_to(model)
    one_error(run_mptkit("slice", bank, "--tasks", "0", "-o", link, "--force"), "symbolic link")
    assert (stray / "training_args.bin").read_bytes() == b"keep" and corrupt.read_bytes().startswith(b"\x10")
    assert link.is_symlink() and temps(model) == [] and not [p for p in tmp_path.iterdir() if atomic.TMP_MARK in p.name]


def test_force_replaces_a_bank_or_an_empty_folder(bank, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_mptkit("slice", bank, "--tasks", "0", "-o", empty, "--force").returncode == 0
    assert mptkit.load(empty).num_tasks == 1
    assert run_mptkit("slice", bank, "--tasks", "0,1", "-o", empty, "--force").returncode == 0  # now a bank
    assert mptkit.load(empty).num_tasks == 2
    f = tmp_path / "b.safetensors"
    for tasks, T in (("0", 1), ("1-3", 3)):
        assert run_mptkit("slice", bank, "--tasks", tasks, "-o", f, "--force").returncode == 0
        assert mptkit.load(f).num_tasks == T


def test_force_never_replaces_the_working_directory_or_its_parents(bank, tmp_path):
    b = tmp_path / "b"
    mptkit.save(mptkit.load(bank), b)  # the working directory is even a bank: still never replaced
    before = sha256_tree(tmp_path)
    for out in (".", "../b", "..", str(tmp_path), "/"):
        one_error(
            run_mptkit("slice", bank, "--tasks", "0", "-o", out, "--force", cwd=b),
            "working directory",
            "never replaces it",
        )
    assert sha256_tree(tmp_path) == before
    with pytest.raises(mptkit.MptkitError, match="is the working directory"):
        cwd = os.getcwd()
        try:
            os.chdir(b)
            mptkit.save(mptkit.load(bank), ".", force=True)
        finally:
            os.chdir(cwd)


# -- the reaper -------------------------------------------------------------------------------------
def _make_live_temp(bank, out: Path, point="mid-tensor") -> tuple[int, Path]:
    pid = fork_stopping(bank, out, force=True, point=point)
    wait_stopped(pid)
    (t,) = [t for t in temps(out) if f"{atomic.TMP_MARK}{pid}-" in t.name]
    return pid, t


def test_the_reaper_touches_only_provably_stale_temps(bank, tmp_path):
    out = tmp_path / "out"
    mptkit.save(mptkit.load(bank), out)
    previous = digest(out)
    dead = dead_pid()
    name = f".out{atomic.TMP_MARK}{dead}-"
    user_file = tmp_path / (name + "0123456789abcdef")  # a user's file shaped like a temp
    user_file.write_bytes(b"mine")
    user_dir = tmp_path / (name + "fedcba9876543210")  # a user's folder shaped like a temp
    user_dir.mkdir()
    (user_dir / "notes").write_text("mine")
    old_style = tmp_path / (name + "01234567")  # the old name format
    old_style.write_bytes(b"mine")
    planted = tmp_path / (name + "0123456789abcdef.old")  # a planted "previous version"
    planted.mkdir()
    (planted / "adapter_config.json").write_text("{}")
    forged = tmp_path / (name + "aaaaaaaaaaaaaaaa")  # a marker for another token
    forged.mkdir()
    (forged / atomic.MARKER).write_bytes(b"mptkit temp v1\nbbbbbbbbbbbbbbbb\nout")
    (forged / "new").write_text("mine")
    other_target = tmp_path / f".other{atomic.TMP_MARK}{dead}-cccccccccccccccc"  # a temp of another output
    other_target.mkdir()
    (other_target / atomic.MARKER).write_bytes(b"mptkit temp v1\ncccccccccccccccc\nother")
    # a real killed writer's temp, next to them all
    pid, stale = _make_live_temp(bank, out)
    kill(pid)
    shutil.rmtree(out)  # the output is missing, so a planted ".old" would be renamed in if it were believed
    before = {p.name: sha256_tree(p) for p in tmp_path.iterdir() if p != stale}
    removed = atomic.clean_stale_temps(out)
    assert removed == [stale] and not stale.exists()
    assert {p.name: sha256_tree(p) for p in tmp_path.iterdir()} == before and not out.exists()
    assert run_mptkit("slice", bank, "--tasks", "0-3", "-o", out).returncode == 0  # a write reaps nothing else
    assert {p.name: sha256_tree(p) for p in tmp_path.iterdir() if p != out} == before
    assert mptkit.load(out).num_tasks == 4 and digest(out) != previous  # the new output


def test_a_stale_temp_of_another_user_is_left_alone(bank, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another user")
    out = tmp_path / "out.safetensors"
    pid, stale = _make_live_temp(bank, out)
    kill(pid)
    for p in (stale, *stale.rglob("*")):
        os.lchown(p, 65534, 65534)
    assert atomic.clean_stale_temps(out) == [] and stale.exists()


def test_a_running_writer_keeps_its_temp_whatever_its_pid_says(bank, tmp_path):
    """A writer in another PID namespace (a container sharing the folder) has a pid that means
    nothing here: emulated by renaming a running writer's temp to a pid that is dead here. Its lock
    keeps it; once the writer is gone, the next write removes it."""
    out = tmp_path / "out.safetensors"
    pid, t = _make_live_temp(bank, out)
    token = t.name.rsplit("-", 1)[1]
    moved = t.with_name(f".out.safetensors{atomic.TMP_MARK}{dead_pid()}-{token}")
    os.rename(t, moved)
    assert atomic.clean_stale_temps(out) == [] and moved.exists()
    mptkit.save(mptkit.load(bank), out, force=True)  # another writer meanwhile
    assert moved.exists() and (moved / "new").exists()
    kill(pid)
    assert atomic.clean_stale_temps(out) == [moved] and temps(out) == []


def test_a_writer_in_another_pid_namespace_keeps_its_temp(bank, tmp_path):
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-pf", "true"], capture_output=True).returncode:
        pytest.skip("needs unshare(1) with PID namespaces (the emulated test above covers the logic)")
    out = tmp_path / "out.safetensors"
    ready, go = tmp_path / "ready", tmp_path / "go"
    os.mkfifo(ready)
    os.mkfifo(go)
    argv = cli_stopping_argv("mid-tensor", "slice", bank, "--tasks", "0-3", "-o", out)
    proc = subprocess.Popen(
        ["unshare", "-pf", "sh", "-c", 'for i in 1 2 3 4 5 6 7 8; do true; done; "$@"; exit $?', "sh", *argv],
        env={**os.environ, FIFO_ENV: f"{ready}:{go}"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with open(ready, "rb") as f:
        assert f.read(1) == b"x"  # the namespaced writer is half-way through its first tensor
    (t,) = temps(out)
    assert atomic.clean_stale_temps(out) == [] and t.exists()
    with open(go, "wb") as f:
        f.write(b"x")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert mptkit.load(out).num_tasks == 4 and temps(out) == []


# -- signals ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
@pytest.mark.parametrize("kind", ["file", "folder"])
def test_sigterm_and_sighup_remove_the_temp(bank, tmp_path, signum, kind):
    out = tmp_path / ("out.safetensors" if kind == "file" else "out")
    mptkit.save(mptkit.load(medium_bank(tmp_path / "prev", seed=9)), out)
    previous = digest(out)
    pid, _ = _make_live_temp(bank, out)
    assert signal_and_wait(pid, signum) == -signum  # ends by the signal, as without mptkit
    assert temps(out) == [] and digest(out) == previous


def test_sigterm_of_the_cli_removes_the_temp(bank, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        cli_stopping_argv("mid-tensor", "slice", bank, "--tasks", "0-3", "-o", out),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_stopped(proc.pid)
    assert signal_and_wait(proc.pid, signal.SIGTERM) == -signal.SIGTERM
    proc.returncode = -signal.SIGTERM
    assert temps(out) == [] and not out.exists()


@pytest.mark.parametrize("point,complete", [("mid-tensor", False), ("before-install", False), ("after-install", True)])
def test_ctrl_c_exits_130_saying_whether_the_output_was_completed(bank, tmp_path, point, complete):
    out = tmp_path / "out.safetensors"
    proc = subprocess.Popen(
        cli_stopping_argv(point, "slice", bank, "--tasks", "0-3", "-o", out),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_stopped(proc.pid)
    os.kill(proc.pid, signal.SIGINT)
    os.kill(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    lines = [x for x in err.splitlines() if x.strip()]
    assert proc.returncode == 130, err
    assert len(lines) == 1 and lines[0].startswith("mptkit: interrupted"), err
    if complete:
        assert "completely written" in lines[0] and mptkit.load(out).num_tasks == 4
    else:
        assert "was not written" in lines[0] and not out.exists()
    assert temps(out) == [] and "Aborted" not in err and "Traceback" not in err


def test_ctrl_c_before_any_write_says_so(bank, tmp_path):
    """Interrupted while loading (before any output exists): 130, nothing written."""
    driver = (
        "import os, signal, sys; import mptkit._io as io; real = io.load\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "def load(*a, **k):\n    os.kill(os.getpid(), signal.SIGINT); return real(*a, **k)\n"
        "io.load = load\nfrom mptkit.cli import main; main(sys.argv[1:], prog_name='mptkit')"
    )
    out = tmp_path / "o"
    r = subprocess.run(
        [sys.executable, "-c", driver, "slice", str(bank), "--tasks", "0", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 130 and "interrupted before any output was written" in r.stderr, r.stderr
    assert not out.exists()


# -- what is printed -----------------------------------------------------------------------------------
CONTROL = ("\x1b", "\x9b", "\x07", "\x1b]0;owned\x07")


def _hostile_bank(path: Path) -> Path:
    import torch

    g = torch.Generator().manual_seed(0)
    names = ["ok", "red\x9b31mtext", "csi\x9b2Jclear"]  # U+009B (CSI) passes the schema as it stood
    return write_bank(
        path,
        torch.randn(4, 6, generator=g),
        torch.randn(3, 4, 2, generator=g),
        torch.randn(3, 2, 6, generator=g),
        names=names,
    )


def _assert_clean(r: subprocess.CompletedProcess) -> None:
    for stream in (r.stdout, r.stderr):
        assert not any(c in stream for c in ("\x1b", "\x9b", "\x07")), repr(stream)


def test_terminal_escapes_in_task_names_are_never_echoed(tmp_path):
    src = _hostile_bank(tmp_path / "hostile.safetensors")
    before = sha256_tree(src)
    runs = [
        ("validate", src),
        ("validate", src, "--json"),
        ("inspect", src),
        ("inspect", src, "--json"),
        ("inspect", src, "--values"),
        ("slice", src, "--tasks", "2,1", "-o", tmp_path / "s.safetensors"),
        ("slice", src, "--tasks", "1", "-o", tmp_path / "s2.safetensors", "--json"),
        ("rename", src, "ok=fine", "-o", tmp_path / "r.safetensors"),
        ("rename", src, "ok=fine", "-o", tmp_path / "r2.safetensors", "--json"),
        ("slice", src, "--tasks", "nope\x9b2J", "-o", tmp_path / "x.safetensors"),
        ("slice", src, "--tasks", "nope\x9b2J", "-o", tmp_path / "x.safetensors", "--json"),
        ("similarity", src),
        ("similarity", src, "--json"),
    ]
    for argv in runs:
        r = run_mptkit(*argv)
        assert r.returncode in (0, 2)  # the exit status of each is checked elsewhere; here: what is printed
        _assert_clean(r)
        if "--json" in argv and argv[0] != "validate":
            data = json.loads(r.stdout)  # still JSON, and it decodes to the very text
            assert "\x9b" in json.dumps(data, ensure_ascii=False), data
    assert sha256_tree(src) == before


def test_clicks_own_messages_are_cleaned_too(tmp_path):
    src = random_bank(tmp_path / "b.safetensors")
    for argv in (
        ["\x9b2Jcommand"],
        ["slice", src, "--tasks", "0", "-o", tmp_path / "o", "--dtype\x1b[31m", "x"],
        ["merge", src, src, "--dtype", "\x1b]0;x\x07", "-o", tmp_path / "m"],
    ):
        r = run_mptkit(*argv)
        assert r.returncode == 2
        _assert_clean(r)
        assert r.stderr.startswith("mptkit: error: ") and "\\x1b" in r.stderr or "\\x9b" in r.stderr
