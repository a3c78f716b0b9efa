"""A local disk that fails during a Hub transfer is blamed on the disk, never on the server: a
full HF cache during ``pull`` (a small tmpfs in a private mount namespace, so a real ENOSPC), a
full output disk during ``pull --tasks`` (whose bytes come by range requests straight into the
output), and a file size limit (``ulimit -f``: EFBIG, no root needed)."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys

import pytest

from tests.fakehub import Blob
from tests.support.banks import sparse_bank
from tests.support.commands import one_error


def _tmpfs_prefix(path) -> list[str] | None:
    """A command prefix that runs with a 256 kB tmpfs mounted at ``path`` (None where that cannot be
    done: not root, or no mount namespaces)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return None
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", f'mount -t tmpfs -o size=256k tmpfs "{path}"'], capture_output=True
    )
    if probe.returncode != 0:
        return None
    return ["unshare", "-m", "sh", "-c", f'mount -t tmpfs -o size=256k tmpfs "{path}" && exec "$@"', "-"]


@pytest.fixture
def big(hub, tmp_path):
    """owner/big: a 1.3 MB bare bank (more than the 256 kB disk holds)."""
    sparse_bank(tmp_path / "big.safetensors", T=64, N=16, r=1, d=4096, filled=range(64))
    hub.commit("owner/big", {"big.safetensors": Blob.file(tmp_path / "big.safetensors")})
    return tmp_path / "big.safetensors"


def _run(prefix, *argv, **kw):
    return subprocess.run(
        [*prefix, sys.executable, "-m", "mptkit", *map(str, argv)], capture_output=True, text=True, timeout=120, **kw
    )


def _not_the_servers(msg: str) -> None:
    assert "Hub at" not in msg and "server" not in msg and "could not be used" not in msg, msg


def test_a_full_hf_cache_is_the_cache(hub, big, tmp_path):
    home = tmp_path / "hf-home"
    home.mkdir(exist_ok=True)
    prefix = _tmpfs_prefix(home)
    if prefix is None:
        pytest.skip("a full disk needs a tmpfs in a private mount namespace (root and unshare); not available here")
    msg = one_error(
        _run(prefix, "pull", "owner/big"), "cannot write to the HF cache at", "the disk is full", "nothing was kept"
    )
    _not_the_servers(msg)


def test_a_full_output_disk_during_ranged_reads_is_the_output(hub, big, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    prefix = _tmpfs_prefix(out)
    if prefix is None:
        pytest.skip("a full disk needs a tmpfs in a private mount namespace (root and unshare); not available here")
    r = _run(prefix, "pull", "owner/big", "--tasks", "0-63", "-o", out / "part.safetensors")
    msg = one_error(r, "part.safetensors", "cannot write the output", "nothing was written")
    _not_the_servers(msg)


def test_a_file_size_limit_is_the_cache(hub, big):
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))

    r = _run([], "pull", "owner/big", preexec_fn=limit)
    msg = one_error(r, "cannot write to the HF cache at", "ulimit -f", "nothing was kept")
    _not_the_servers(msg)
