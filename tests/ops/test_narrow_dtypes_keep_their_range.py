"""A value that is finite in the source and beyond the range of the dtype it is stored in (float16's
65504, or float32's 3.4e38 from a float64 bank) is refused, naming the tensor and the largest value,
unless ``--clamp`` asks to store the dtype's largest value instead. Once ``--dtype float16`` turned
such values into Inf silently (convert, merge, derive, export), and mptkit's own ``validate --values``
then rejected the output. Every command that stores values in a narrower dtype goes through one
check (``mptkit._numerics.in_range``); with ``--clamp`` the output is valid and its values are the
clamped ones, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.support.banks import load_tensors, random_bank, write_bank
from tests.support.commands import one_error

NAMES = ["sst2", "mnli", "rte"]
BIG = 1.0e5  # finite in float32, beyond float16's 65504


@pytest.fixture
def banks(tmp_path):
    g = torch.Generator().manual_seed(5)
    pe, cols, rows = (
        torch.randn(4, 6, generator=g),
        torch.randn(3, 4, 2, generator=g),
        torch.randn(3, 2, 6, generator=g),
    )
    pe16 = pe.clone()
    pe16[1, 2] = BIG
    cols16 = cols.clone()
    cols16[1, 3, 0] = -2 * BIG
    src = write_bank(tmp_path / "wide.safetensors", pe16, cols16, rows, NAMES)
    other = write_bank(tmp_path / "other.safetensors", pe16, cols16, rows, ["a", "b", "c"])
    half = write_bank(tmp_path / "half.safetensors", pe.half(), cols.half(), rows.half(), ["x", "y", "z"])
    out = tmp_path / "out"
    out.mkdir()
    return {"src": src, "other": other, "half": half, "out": out}


COMMANDS = {
    "convert": (["convert", "{src}", "--dtype", "float16", "-o", "{out}/c.safetensors"], "tensor 'pr"),
    "derive exact": (
        ["derive", "{src}", "--mode", "exact", "--task", "mnli", "--dtype", "float16", "-o", "{out}/d.safetensors"],
        "tensor 'prompt_embeddings'",
    ),
    "derive average": (
        ["derive", "{src}", "--mode", "average", "--dtype", "float16", "-o", "{out}/d.safetensors"],
        "tensor 'prompt_embeddings'",
    ),
    "derive shared": (
        ["derive", "{src}", "--mode", "shared", "--dtype", "float16", "-o", "{out}/d.safetensors"],
        "tensor 'prompt_embeddings'",
    ),
    "merge": (
        ["merge", "{src}", "{other}", "--dtype", "float16", "-o", "{out}/m.safetensors"],
        "tensor 'prefix_task_cols'",
    ),
    "add --from": (
        ["add", "{half}", "--name", "new", "--from", "{other}:b", "--refit", "-o", "{out}/a.safetensors"],
        "tensor 'pr",
    ),
    "export": (
        [
            "export",
            "{src}",
            "--task",
            "0",
            "--dtype",
            "float16",
            "--task-type",
            "CAUSAL_LM",
            "--num-virtual-tokens",
            "4",
            "-o",
            "{out}/e",
        ],
        "the full prompt of task 0",
    ),
    "export table": (
        ["export", "{src}", "--all", "--dtype", "float16", "-o", "{out}/t.safetensors"],
        "the full prompts of tasks 0-2",
    ),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_values_beyond_the_stored_dtype_are_refused(cli, banks, command):
    argv, what = COMMANDS[command]
    r = cli(*[a.format(**banks) for a in argv])
    line = one_error(r, what, "beyond float16's range", "float16's largest is 65504", "--clamp")
    assert "the largest in magnitude is " in line, line
    assert not list(banks["out"].iterdir())


@pytest.mark.parametrize("command", list(COMMANDS))
def test_clamp_stores_the_largest_value_and_the_output_is_valid(cli, banks, command):
    from safetensors.torch import load_file

    argv, _ = COMMANDS[command]
    r = cli(*[a.format(**banks) for a in argv], "--clamp")
    assert r.exit_code == 0, r.stderr
    (out,) = list(banks["out"].iterdir())
    files = [out] if out.is_file() else sorted(out.rglob("*.safetensors"))
    assert files
    for f in files:  # no Inf anywhere, and values at float16's edge
        tensors = load_file(str(f))
        assert all(torch.isfinite(t).all() for t in tensors.values()), f
        if command != "add --from":  # (a refit re-expresses the clamped task: its factors are new values)
            assert any(t.abs().max().item() == 65504.0 for t in tensors.values()), f
    if out.suffix == ".safetensors" and command != "export table":
        v = cli("validate", "--values", out)
        assert v.exit_code == 0, v.stderr


def test_clamped_values_are_the_largest_value_with_their_sign(cli, banks):
    out = banks["out"] / "c.safetensors"
    r = cli("convert", banks["src"], "--dtype", "float16", "--clamp", "-o", out)
    assert r.exit_code == 0, r.stderr
    got = load_tensors(out)
    assert got["prompt_embeddings"].dtype == torch.float16
    assert got["prompt_embeddings"][1, 2].item() == 65504.0 and got["prefix_task_cols"][1, 3, 0].item() == -65504.0
    src = load_tensors(banks["src"])
    keep = torch.ones_like(src["prompt_embeddings"], dtype=torch.bool)
    keep[1, 2] = False
    assert torch.equal(got["prompt_embeddings"][keep], src["prompt_embeddings"][keep].half())  # the rest as a cast


@pytest.mark.parametrize(
    ("dtype", "value", "name", "top"),
    [
        ("float32", 1e39, "float32", "3.40282e+38"),
        ("bfloat16", 3.4e38, "bfloat16", "3.38953e+38"),
        ("float16", 65520.0, "float16", "65504"),  # the first value that rounds to Inf
    ],
)
def test_every_narrowing_is_checked_at_its_own_edge(cli, tmp_path, dtype, value, name, top):
    pe = torch.ones(4, 6, dtype=torch.float64)
    pe[0, 0] = value
    src = write_bank(
        tmp_path / "f64.safetensors",
        pe,
        torch.ones(2, 4, 1, dtype=torch.float64),
        torch.ones(2, 1, 6, dtype=torch.float64),
    )
    r = cli("convert", src, "--dtype", dtype, "-o", tmp_path / "o.safetensors")
    one_error(r, f"beyond {name}'s range", f"{name}'s largest is {top}")
    pe[0, 0] = {"float32": 3.4e38, "bfloat16": 3.38e38, "float16": 65519.0}[
        dtype
    ]  # just inside: rounds to a finite value
    write_bank(src, pe, torch.ones(2, 4, 1, dtype=torch.float64), torch.ones(2, 1, 6, dtype=torch.float64))
    r = cli("convert", src, "--dtype", dtype, "-o", tmp_path / "o.safetensors")
    assert r.exit_code == 0, r.stderr
    assert torch.isfinite(load_tensors(tmp_path / "o.safetensors")["prompt_embeddings"]).all()


def test_the_mean_of_a_float64_bank_beyond_float32_is_refused_and_sums_do_not_overflow(cli, tmp_path):
    cols = torch.full((4, 2, 1), 1.5e308, dtype=torch.float64)  # a sum of four overflows float64; the mean does not
    src = write_bank(
        tmp_path / "f64.safetensors",
        torch.ones(2, 3, dtype=torch.float64),
        cols,
        torch.ones(4, 1, 3, dtype=torch.float64),
    )
    r = cli("derive", src, "--mode", "average", "-o", tmp_path / "same.safetensors")
    assert r.exit_code == 0 and r.stderr == "", r.stderr
    assert load_tensors(tmp_path / "same.safetensors")["prefix_task_cols"].flatten().tolist() == [1.5e308, 1.5e308]
    r = cli("derive", src, "--mode", "average", "--dtype", "float32", "-o", tmp_path / "f32.safetensors")
    one_error(r, "the mean of 'prefix_task_cols'", "beyond float32's range", "1.5e+308")


def test_the_api_takes_clamp_too(tmp_path):
    import mptkit
    from mptkit.errors import UsageError

    g = torch.Generator().manual_seed(1)
    src = random_bank(tmp_path / "b.safetensors", T=2, N=4, r=1, d=6)
    t = load_tensors(src)
    t["prompt_embeddings"][0, 0] = 7e4
    write_bank(src, t["prompt_embeddings"], t["prefix_task_cols"], t["prefix_task_rows"])
    bank = mptkit.load(src)
    with pytest.raises(UsageError, match="beyond float16's range"):
        mptkit.convert(bank, dtype="float16")
    out = mptkit.convert(bank, dtype="float16", clamp=True)
    assert np.isfinite(np.frombuffer(bytes(out.tensors["prompt_embeddings"].read()), np.float16)).all()
    assert out.provenance[-1]["arguments"]["clamp"] is True
    del g
