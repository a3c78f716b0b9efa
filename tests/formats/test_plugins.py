"""A new format is one module and one registration line: this file defines a format of its own (a
bank as a numpy ``.npz``), registers it, and runs ``inspect``, ``derive`` and ``export`` through it
with no other file of mptkit changed."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

import mptkit
from mptkit.formats import Format, register, unregister

KEYS = ("prompt_embeddings", "prefix_task_cols", "prefix_task_rows")


def read_npz(path: Path, shown: str, *, kind=None, adapter=None) -> mptkit.PromptBank:
    from mptkit._bank import Source

    with np.load(path) as z:
        arrays = {k: mptkit.Array.from_bytes(z[k].astype("<f4").tobytes(), "F32", z[k].shape) for k in KEYS}
    return mptkit.PromptBank(arrays, None, None, [], {}, Source(shown, "npz", str(path), path.stat().st_size))


def write_npz(bank: mptkit.PromptBank, f, target: Path) -> None:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.frombuffer(bytes(a.read()), "<f4").reshape(a.shape) for k, a in bank.tensors.items()})
    f.write(buf.getvalue())


NPZ = Format(
    name="test-npz",
    description="a bank as a numpy .npz (the test suite's own format)",
    label="a numpy archive",
    recognise=lambda p: p.suffix == ".npz",
    read_bank=read_npz,
    writes="bank",
    suffixes=(".npz",),
    write=write_npz,
)


@pytest.fixture
def npz_format():
    register(NPZ)  # the one registration line
    yield NPZ
    unregister(NPZ.name)


def test_a_format_of_the_tests_own_reads_and_writes_through_every_command(npz_format, cli, example_bank, tmp_path):
    src = mptkit.load(example_bank)
    arrays = {k: np.frombuffer(bytes(src.tensors[k].read()), "<f4").reshape(src.tensors[k].shape) for k in KEYS}
    np.savez(tmp_path / "bank.npz", **arrays)

    r = cli("inspect", tmp_path / "bank.npz", "--json")
    info = json.loads(r.stdout)
    assert (info["format"], info["num_tasks"], info["N"], info["rank"], info["d"]) == ("npz", 4, 12, 2, 32)

    r = cli("derive", tmp_path / "bank.npz", "--mode", "exact", "--task", "1", "-o", tmp_path / "one.npz")
    assert r.exit_code == 0, r.output
    with np.load(tmp_path / "one.npz") as z:
        assert np.array_equal(z["prefix_task_cols"], arrays["prefix_task_cols"][1:2])
        assert np.array_equal(z["prompt_embeddings"], arrays["prompt_embeddings"])

    r = cli("derive", tmp_path / "bank.npz", "--mode", "average", "-o", tmp_path / "avg.safetensors")  # and back
    assert r.exit_code == 0, r.output
    assert mptkit.load(tmp_path / "avg.safetensors").num_tasks == 1

    r = cli(
        "export",
        tmp_path / "bank.npz",
        "--task",
        "2",
        "-o",
        tmp_path / "prompt",
        "--task-type",
        "SEQ_2_SEQ_LM",
        "--num-virtual-tokens",
        "6",
    )
    assert r.exit_code == 0, r.output
    got = mptkit.read_prompts([tmp_path / "prompt"]).read([0])[0].float().numpy()
    want = arrays["prompt_embeddings"] * (arrays["prefix_task_cols"][2] @ arrays["prefix_task_rows"][2])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)

    r = cli("derive", tmp_path / "bank.npz", "--mode", "average", "-o", tmp_path / "avg.bin")  # not a bank suffix
    assert r.exit_code == 2 and "a file ending in .npz (a numpy archive)" in r.stderr


def test_without_the_registration_the_suffix_is_not_a_bank(cli, example_bank, tmp_path):
    r = cli("derive", example_bank, "--mode", "average", "-o", tmp_path / "avg.npz")
    assert r.exit_code == 2 and "does not write .npz files" in r.stderr
    assert "test-npz" not in [f.name for f in mptkit.formats.formats()]


def test_a_name_is_registered_once():
    register(NPZ)
    try:
        with pytest.raises(mptkit.UsageError, match="already registered"):
            register(NPZ)
    finally:
        unregister(NPZ.name)
