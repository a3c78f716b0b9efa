"""An input that shrinks while mptkit works with it is one sentence, for every form it reads: a
``.bin`` zip checkpoint truncated after torch described it once killed mptkit with SIGBUS (its
tensor data was memory-mapped, and the pages past the new end fault), no message at all; a
safetensors file already said that the file ended early.

The truncation happens at a known point by construction: the CLI runs in a child that stops
itself (SIGSTOP) right after the input was described (a pickle unpickled by torch, a safetensors
header read), the test truncates the file, and lets it continue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

from tests.support.banks import write_bank

# the real CLI, stopping itself once the input was described: a pickle unpickled by torch
# (mptkit.formats._pickle.load returned), or a safetensors header read (_safetensors.read_header)
DRIVER = """
import os, signal, sys
import mptkit.formats._pickle as pickle_reader
import mptkit.formats._safetensors as header_reader
stopped = []
def stopping(real):
    def call(*a, **kw):
        out = real(*a, **kw)
        if not stopped:
            stopped.append(1)
            os.kill(os.getpid(), signal.SIGSTOP)
        return out
    return call
pickle_reader.load = stopping(pickle_reader.load)
header_reader.read_header = stopping(header_reader.read_header)
from mptkit.cli import main
main(sys.argv[1:], prog_name="mptkit")
"""


def _tensors():
    g = torch.Generator().manual_seed(0)
    # 256 kB of shared prompt: its data spans many pages, most of them past the truncation point
    return torch.randn(64, 1024, generator=g), torch.randn(2, 64, 1, generator=g), torch.randn(2, 1, 1024, generator=g)


@pytest.fixture(params=["bin", "safetensors"])
def src(request, tmp_path):
    pe, cols, rows = _tensors()
    if request.param == "safetensors":
        return write_bank(tmp_path / "bank.safetensors", pe, cols, rows)
    path = tmp_path / "bank.bin"
    torch.save({"prompt_embeddings": pe, "prefix_task_cols": cols, "prefix_task_rows": rows}, path)
    return path


COMMANDS = {
    "inspect --values": ["inspect", "--values", "{src}"],
    "convert": ["convert", "{src}", "-o", "{out}/c.safetensors"],
    "derive exact": ["derive", "{src}", "--mode", "exact", "--task", "1", "-o", "{out}/d.safetensors"],
    "export": [
        "export",
        "{src}",
        "--task",
        "0",
        "--task-type",
        "CAUSAL_LM",
        "--num-virtual-tokens",
        "64",
        "-o",
        "{out}/e",
    ],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_input_truncated_after_it_was_read_is_one_sentence(src, tmp_path, command):
    out = tmp_path / "out"
    out.mkdir()
    argv = [a.format(src=src, out=out) for a in COMMANDS[command]]
    p = subprocess.Popen(
        [sys.executable, "-c", DRIVER, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        _, status = os.waitpid(p.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), f"exited before reading ended: {os.waitstatus_to_exitcode(status)}"
        os.truncate(src, 4096)  # everything past the first page is gone
        os.kill(p.pid, signal.SIGCONT)
        stdout, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    code, err = p.returncode, stderr.decode()
    assert code == 2, (code, err)  # SIGBUS was -7
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mptkit: error: "), err
    assert str(src) in lines[0] and "ended early" in lines[0] and "changed while" in lines[0], lines[0]
    assert not list(out.iterdir())
