"""An output is compared with the inputs by what the file system says, not by its path string: the
same file or folder reached through a bind mount, or by another case of its name on a
case-insensitive file system, is the input (refused, nothing touched); a hard link elsewhere is not
(replacing it leaves the input as it was). Task names never choose a path: a folder of adapters
gets a safe folder name for every task whose name could escape or clash."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

import mptkit
from tests.support.banks import random_bank
from tests.support.commands import one_error, run_mptkit
from tests.support.files import sha256_tree


def _can_bind_mount() -> str | None:
    """None where this process may make a private mount namespace with a bind mount, else why not."""
    if os.geteuid() != 0:
        return "bind mounts need root"
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "unshare(1)/mount(8) are not installed"
    r = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return None if r.returncode == 0 else f"unshare -m is not allowed here ({r.stderr.decode()[:80]})"


def _in_namespace(tmp_path, src, mnt, *args):
    """Run mptkit in a private mount namespace where ``mnt`` is a bind mount of ``src``."""
    script = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
    cmd = [
        "unshare",
        "-m",
        "sh",
        "-c",
        script,
        "sh",
        str(src),
        str(mnt),
        sys.executable,
        "-m",
        "mptkit",
        *map(str, args),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=dict(os.environ), timeout=120)


@pytest.mark.skipif(_can_bind_mount() is not None, reason=str(_can_bind_mount()))
def test_an_input_reached_through_a_bind_mount_is_the_input(tmp_path, example_bank):
    inner = tmp_path / "in"
    inner.mkdir()
    bare = random_bank(inner / "bank.safetensors")
    shutil.copytree(example_bank, inner / "folder")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    before = sha256_tree(inner)
    cases = [
        (["derive", bare, "--mode", "average", "-o", mnt / "bank.safetensors", "--force"], "is the input"),
        (["convert", inner / "folder", "-o", mnt / "folder", "--force"], "is the input"),
        (["slice", inner / "folder", "--tasks", "0", "-o", mnt / "folder" / "sub", "--force"], "is inside the input"),
        (["convert", bare, "-o", mnt / "bank.safetensors", "--force"], "is the input"),
    ]
    for args, words in cases:
        one_error(_in_namespace(tmp_path, inner, mnt, *args), words)
        assert sha256_tree(inner) == before and os.listdir(mnt) == []
    # the same command to a path that is not the input is written (the mount itself works)
    r = _in_namespace(tmp_path, inner, mnt, "derive", bare, "--mode", "average", "-o", mnt / "avg.safetensors")
    assert r.returncode == 0, r.stderr
    assert (inner / "avg.safetensors").exists()


def test_another_case_of_the_input_s_name_is_the_input(tmp_path):
    """A case-insensitive file system names one entry by every case of its name: one file, one
    folder entry. A second name for the same entry (a hard link differing only in case, in the same
    folder) looks to mptkit exactly as that does."""
    bank = random_bank(tmp_path / "bank.safetensors")
    os.link(bank, tmp_path / "BANK.safetensors")
    before = sha256_tree(bank)
    r = run_mptkit("derive", bank, "--mode", "average", "-o", tmp_path / "BANK.safetensors", "--force")
    one_error(r, "is the input")
    assert sha256_tree(bank) == before


def test_a_hard_link_elsewhere_is_replaced_and_the_input_stays(tmp_path):
    bank = random_bank(tmp_path / "bank.safetensors")
    (tmp_path / "out").mkdir()
    os.link(bank, tmp_path / "out" / "copy.safetensors")
    before = sha256_tree(bank)
    r = run_mptkit("derive", bank, "--mode", "average", "-o", tmp_path / "out" / "copy.safetensors", "--force")
    assert r.returncode == 0, r.stderr
    assert sha256_tree(bank) == before
    assert mptkit.load(tmp_path / "out" / "copy.safetensors").num_tasks == 1


HOSTILE = ["../../escaped", "/tmp/absolute", "a/b", ".hidden", "plain", "Clash", "clash", "tasks.json", "x" * 150]


def test_task_names_never_choose_a_path(tmp_path):
    bank = random_bank(tmp_path / "bank.safetensors", T=len(HOSTILE), names=HOSTILE)
    out = tmp_path / "deep" / "out"
    out.parent.mkdir()
    r = run_mptkit(
        "export", bank, "--all", "-o", out, "--task-type", "CAUSAL_LM", "--num-virtual-tokens", "6", "--json"
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert sorted(os.listdir(tmp_path)) == ["bank.safetensors", "deep"]
    assert sorted(os.listdir(tmp_path / "deep")) == ["out"]
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == sorted(["plain", *(f"task{i}" for i in (0, 1, 2, 3, 5, 6, 7, 8))])
    assert report["folders"] == {n: f"task{i}" for i, n in enumerate(HOSTILE) if n != "plain"}
    manifest = json.loads((out / "tasks.json").read_text(encoding="utf-8"))
    assert manifest["tasks"] == HOSTILE and len(manifest["folders"]) == len(HOSTILE)
    back = mptkit.read_prompts([out])  # the names come back from tasks.json, in order
    assert back.names == HOSTILE
    text = run_mptkit(
        "export", bank, "--all", "-o", tmp_path / "deep" / "t2", "--task-type", "CAUSAL_LM", "--num-virtual-tokens", "6"
    )
    assert "cannot be a folder name, so tasks.json maps them to a folder" in text.stdout


def test_task_names_from_the_hub_never_choose_a_path(hub, tmp_path):
    (tmp_path / "src").mkdir()
    bank = random_bank(tmp_path / "src" / "bank.safetensors", T=3, names=["../../../outside", "/etc/x", "ok"])
    hub.commit("owner/hostile", {"bank.safetensors": bank.read_bytes()})
    work = tmp_path / "w"
    work.mkdir()
    r = run_mptkit(
        "export",
        "hf://owner/hostile",
        "--all",
        "-o",
        work / "o",
        "--task-type",
        "CAUSAL_LM",
        "--num-virtual-tokens",
        "6",
        cwd=work,
    )
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(work)) == ["o"] and set(os.listdir(tmp_path)) <= {"src", "w", "hf-home"}
    assert sorted(p.name for p in (work / "o").iterdir()) == ["ok", "task0", "task1", "tasks.json"]
