"""Resource faults and refused outputs, for every command that writes.

Each case ends with one clear sentence on stderr, exit status 2, no output (or, with --force, the
previous output unchanged), no temp left behind and the input unchanged:

- a file-size limit (RLIMIT_FSIZE set in a real subprocess),
- a full disk: a real tiny tmpfs filled up (needs root and mount; skipped elsewhere) and, always,
  ENOSPC reported by fsync (as ext4's delayed allocation or NFS report it), emulated by patching
  ``os.fsync``,
- a read-only output folder: a read-only tmpfs mount, and chmod 555 (as root, in a process started
  without CAP_DAC_OVERRIDE, which is what lets root ignore permission bits),
- an output that is a file where a folder is wanted and the reverse, an output whose parent is a file,
- an output that is the input, is inside it, contains it, or is a symlink to it,
- an input that changes (shrinks, disappears) while it is being read.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.banks import medium_bank
from tests.support.commands import FILE_SUFFIX, one_error, writing_commands, writing_labels
from tests.support.files import TMP_MARK, digest, sha256_tree

LABELS = writing_labels()


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    """A ~330 kB adapter folder (4 named tasks, config) inside a folder of its own."""
    return medium_bank(tmp_path_factory.mktemp("src") / "bank")


def out_name(label: str, as_file: bool = True) -> str:
    kind = writing_commands("S", "O")[label][0]
    return {"image": "out.png", "page": "out.html", "folder": "out"}.get(kind, "out.safetensors" if as_file else "out")


def _run(cli, label, src, out, *extra):
    kind, argv = writing_commands(src, out)[label]
    return cli(*argv, *extra)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if TMP_MARK in p.name)


def assert_refused(result, *phrases):
    """Exit 2, one `mptkit: error:` line naming the problem, no traceback."""
    one_error(result, *phrases)


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A tmpfs mounted at ``path`` (skips the test where mounting is not allowed)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root and mount(8); the emulated variant still runs")
    path.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(path)], capture_output=True, text=True
    )
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); the emulated variant still runs")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(folder: Path, leave: int) -> None:
    """Fill the file system of ``folder`` up to ``leave`` free bytes."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    with open(folder / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


# -- file size limit (real, in a subprocess) --------------------------------------------------------
@pytest.mark.parametrize(
    "label,force",
    [
        (x, f)
        for x, f in (("slice", False), ("slice", True), ("merge", False), ("derive-exact", True), ("export", True))
        if x in LABELS
    ],
)
def test_file_size_limit(src, tmp_path, label, force):
    limit = 64 << 10  # every output of the ~330 kB bank is larger

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / out_name(label)
    kind, argv = writing_commands(src, out)[label]
    before = sha256_tree(src)
    previous = None
    if force:
        subprocess.run([sys.executable, "-m", "mptkit", *argv], check=True, capture_output=True)
        previous = digest(out)
        argv = [*argv, "--force"]
    r = subprocess.run(
        [sys.executable, "-m", "mptkit", *argv], capture_output=True, text=True, preexec_fn=limited, timeout=120
    )
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.startswith("mptkit: error: ")
    assert "file size limit" in r.stderr and str(out) in r.stderr
    assert digest(out) == previous  # nothing (fresh) or the previous output, untouched
    assert _leftovers(tmp_path) == []
    assert sha256_tree(src) == before


# -- full disk -----------------------------------------------------------------------------------
@pytest.mark.parametrize("label", LABELS)
def test_full_disk_tmpfs(cli, src, tmp_path, label):
    """A real tiny file system, filled up but for 4 kB; with --force the previous output survives."""
    with tmpfs(tmp_path / "disk", "1m") as disk:
        out = disk / out_name(label, as_file=False)
        assert _run(cli, label, src, out).exit_code == 0  # the previous version
        previous = digest(out)
        _fill(disk, 4096)
        before = sha256_tree(src)
        assert_refused(_run(cli, label, src, out, "--force"), "disk is full", str(out))
        assert digest(out) == previous and _leftovers(disk) == []
        fresh = disk / ("new-" + out.name)
        assert_refused(_run(cli, label, src, fresh), "disk is full")
        assert not fresh.exists() and _leftovers(disk) == []
        assert sha256_tree(src) == before
        (disk / "filler").unlink()  # the space of the failed writes came back: a retry works
        assert _run(cli, label, src, fresh).exit_code == 0


@pytest.mark.parametrize(
    "err,phrase,as_file", [(errno.ENOSPC, "disk is full", True), (errno.EIO, "Input/output error", False)]
)
@pytest.mark.parametrize("label", LABELS)
def test_disk_error_at_fsync_emulated(cli, src, tmp_path, monkeypatch, label, err, phrase, as_file):
    """ENOSPC or EIO reported when the data is flushed (fsync), emulated."""
    out = tmp_path / out_name(label, as_file)
    real_fsync = os.fsync

    def failing_fsync(fd):
        if TMP_MARK in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(err, os.strerror(err))
        return real_fsync(fd)

    if not os.path.exists("/proc/self/fd"):
        pytest.skip("needs /proc to tell the writer's files apart")
    monkeypatch.setattr(os, "fsync", failing_fsync)
    before = sha256_tree(src)
    assert_refused(_run(cli, label, src, out), phrase, "nothing was written")
    assert not out.exists() and _leftovers(tmp_path) == []
    assert sha256_tree(src) == before


# -- read-only output folder ---------------------------------------------------------------------
@pytest.mark.parametrize("label", LABELS)
def test_read_only_output_folder_mount(cli, src, tmp_path, label):
    with tmpfs(tmp_path / "ro", "1m") as ro:
        out = ro / out_name(label)
        assert _run(cli, label, src, out).exit_code == 0
        previous = digest(out)
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        before = sha256_tree(src)
        assert_refused(_run(cli, label, src, out, "--force"), "read-only", str(out))
        assert digest(out) == previous
        assert_refused(_run(cli, label, src, ro / "sub" / out.name), "read-only")
        assert sha256_tree(src) == before


#: root ignores permission bits through CAP_DAC_OVERRIDE; a root process started without it (setpriv)
#: meets them as any user does
_NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]


@pytest.mark.parametrize("label", LABELS)
def test_read_only_output_folder_chmod(cli, src, tmp_path, label):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.geteuid() == 0:
            if not shutil.which("setpriv"):
                pytest.skip("as root, permission bits bind only without CAP_DAC_OVERRIDE, which needs setpriv(1)")
            argv = writing_commands(src, folder / out_name(label))[label][1]
            r = subprocess.run(
                [*_NO_DAC, sys.executable, "-m", "mptkit", *map(str, argv)], capture_output=True, text=True, timeout=120
            )
        else:
            r = _run(cli, label, src, folder / out_name(label))
        assert_refused(r, "permission denied")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


# -- outputs of the wrong kind -------------------------------------------------------------------
@pytest.mark.parametrize("label", LABELS)
def test_file_where_a_folder_is_wanted_and_the_reverse(cli, src, tmp_path, label):
    kind = writing_commands(src, "x")[label][0]
    before = sha256_tree(src)
    if kind in ("bank", "folder"):
        f = tmp_path / "a-file"
        f.write_bytes(b"precious")
        assert_refused(_run(cli, label, src, f, "--force"), str(f), "is a file")
        assert f.read_bytes() == b"precious"
    d = tmp_path / ("dir" + FILE_SUFFIX[kind] if kind in FILE_SUFFIX else "dir.safetensors")
    d.mkdir()
    (d / "keep").write_bytes(b"precious")
    r = _run(cli, label, src, d, "--force")
    assert_refused(r, str(d))
    assert "is a folder" in r.stderr or "name a folder" in r.stderr  # export writes folders only
    assert (d / "keep").read_bytes() == b"precious" and sorted(os.listdir(d)) == ["keep"]
    parent_file = tmp_path / "plain"
    parent_file.write_bytes(b"x")
    assert_refused(_run(cli, label, src, parent_file / out_name(label)), "cannot write the output")
    assert _leftovers(tmp_path) == [] and sha256_tree(src) == before


# -- output equal to the input -------------------------------------------------------------------
@pytest.mark.parametrize("label", LABELS)
def test_output_equal_to_the_input(cli, src, tmp_path, label):
    work = tmp_path / "w"
    shutil.copytree(src, work / "bank")
    bank = work / "bank"
    link = work / "link"
    link.symlink_to(bank, target_is_directory=True)
    before = sha256_tree(bank)
    kind = writing_commands(src, "x")[label][0]
    if kind in FILE_SUFFIX:
        outs = [bank / "adapter_model.safetensors", bank / ("plot" + FILE_SUFFIX[kind])]
    else:
        outs = [bank, link, bank / "adapter_model.safetensors", bank / "sub", work]
    for out in outs:
        r = _run(cli, label, bank, out, "--force")
        assert_refused(r)
        assert any(x in r.stderr for x in ("the input", "name a folder", "does not write .safetensors files here"))
        assert sha256_tree(bank) == before and _leftovers(work) == []
    if label == "merge":  # the second input too
        other = work / "other"
        shutil.copytree(src, other)
        before_other = sha256_tree(other)
        r = cli(*writing_commands(bank, other, other)[label][1], "--force")
        assert_refused(r, "the input")
        assert sha256_tree(other) == before_other


def test_hardlinked_output_is_replaced_not_written_through(cli, tmp_path):
    """An output that is another name (hard link) of the input: the rename replaces that name;
    the input's bytes stay as they were."""
    from tests.support.banks import random_bank

    inp = random_bank(tmp_path / "in.safetensors", T=3)
    before = digest(inp)
    os.link(inp, tmp_path / "alias.safetensors")
    r = cli("slice", inp, "--tasks", "0", "-o", tmp_path / "alias.safetensors", "--force")
    assert r.exit_code == 0 and digest(inp) == before
    assert digest(tmp_path / "alias.safetensors") != before


# -- input changing while being read ---------------------------------------------------------------
@pytest.mark.parametrize("label", [x for x in ("slice", "merge", "derive-average", "rank") if x in LABELS])
@pytest.mark.parametrize("change", ["truncated", "deleted"])
def test_input_changing_while_read(cli, src, tmp_path, monkeypatch, label, change):
    """The input shrinks or disappears between reading its header and reading its data."""
    import mptkit._io as formats

    victim = tmp_path / "bank"
    shutil.copytree(src, victim)
    data = victim / "adapter_model.safetensors"
    real_load = formats.load

    def load_then_change(path, **kw):
        bank = real_load(path, **kw)
        if os.path.exists(data):
            os.truncate(data, data.stat().st_size - 5000) if change == "truncated" else data.unlink()
        return bank

    monkeypatch.setattr(formats, "load", load_then_change)
    out = tmp_path / "out.safetensors"
    r = _run(cli, label, victim, out)
    assert_refused(r, str(victim))
    assert not out.exists() and _leftovers(tmp_path) == []
