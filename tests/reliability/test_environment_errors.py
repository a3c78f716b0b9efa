"""When the machine, not the input, says no: the file system changes under mptkit (a link on the
output's path vanishes after mptkit resolved it), or the memory runs out (a 17 GB prompt under
``ulimit -v``). One sentence naming the path and the reason, or what was too big and how big, and
exit 2; never "internal error: FileNotFoundError" or "internal error: MemoryError".

The race is made to happen at a known point (the link is removed right after mptkit looked at the
output), and the memory limit is the child's own RLIMIT_AS; the bank is a sparse file whose header
claims the 17 GB (no disk is used)."""

from __future__ import annotations

import os

import pytest

import mptkit.formats._targets as targets
from tests.support.banks import random_bank
from tests.support.commands import one_error
from tests.support.crafted import claiming_bank
from tests.support.measured import run_measured


def test_an_output_link_that_vanishes_after_it_was_resolved(cli, tmp_path, monkeypatch):
    src = random_bank(tmp_path / "src.safetensors")
    real = tmp_path / "real"
    real.mkdir()
    random_bank(real / "out.safetensors", seed=1)
    link = tmp_path / "link"
    link.symlink_to(real)
    seen = targets._lstat

    def vanishing(target):  # the output was looked at; now the link on its path disappears
        st = seen(target)
        if link.is_symlink():
            link.unlink()
        return st

    monkeypatch.setattr(targets, "_lstat", vanishing)
    r = cli("convert", src, "-o", link / "out.safetensors", "--force")
    line = one_error(r, "No such file or directory", "it changed while mptkit was working with it")
    assert str(link / "out.safetensors") in line, line
    assert sorted(p.name for p in real.iterdir()) == ["out.safetensors"]


BIG_D = 4_300_000_000  # 17.2 GB of float32 in the shared prompt alone
LIMIT = 3 << 30  # the child's address space: enough for torch, far from 17 GB


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    path = claiming_bank(tmp_path_factory.mktemp("big") / "big.safetensors", BIG_D)
    if os.stat(path).st_blocks * 512 > 1 << 30:
        pytest.skip("this file system does not keep holes in sparse files")
    return path


@pytest.mark.parametrize(
    "argv",
    [
        ["inspect", "--values", "{big}"],
        ["validate", "--values", "{big}"],
        ["similarity", "{big}"],
        ["convert", "{big}", "--dtype", "float16", "-o", "{out}/c.safetensors"],
        ["derive", "{big}", "--mode", "average", "-o", "{out}/a.safetensors"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_a_17_gb_prompt_under_a_memory_limit_is_one_sentence(big, tmp_path, argv):
    args = [a.format(big=big, out=tmp_path) for a in argv]
    m = run_measured(*args, address_space=LIMIT, cpu_limit_s=120)
    assert m.returncode == 2, (m.returncode, m.stderr[-1500:])
    lines = m.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mptkit: error: "), m.stderr[-1500:]
    assert "internal error" not in m.stderr and "Traceback" not in m.stderr
    assert "ulimit -v" in lines[0] and "3.22 GB" in lines[0], lines[0]  # the limit it ran into
    # what was too big: the tensor (its file, shape and size), or the allocation asked for
    assert f"{big}: a tensor of shape [1, {BIG_D}] (F32) is 17.2 GB" in lines[0] or "an allocation of" in lines[0]
    assert not list(tmp_path.iterdir())
