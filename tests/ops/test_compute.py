"""Compute at the machine's limit: provenance whose cost follows the output, similarity in blocks,
average and value statistics in bounded chunks, and the bounds on ranks."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

import mptkit
from mptkit import _numerics as numerics
from mptkit._bank import Source
from mptkit._derive import derive
from mptkit._info import value_stats
from mptkit._schema import check
from mptkit._similarity import similarity
from tests.support.banks import full_prompts, memory_bank, random_bank
from tests.support.commands import run_mptkit


# -- provenance ----------------------------------------------------------------------------------
def test_one_task_of_a_big_bank_is_named_by_the_ranges_it_read(tmp_path, monkeypatch):
    monkeypatch.setenv("MPTKIT_CACHE", str(tmp_path / "cache"))
    src = random_bank(tmp_path / "big.safetensors", T=40, N=6, r=2, d=16)
    out = derive(mptkit.load(src), "exact", task=7)
    entry = out.provenance[-1]["sources"][0]
    assert entry["scheme"] == "ranges" and entry["name"] == "big.safetensors"
    data = src.read_bytes()
    assert entry["ranges"][0][0] == 0  # the header comes first
    assert entry["sha256"] == hashlib.sha256(b"".join(data[o : o + n] for o, n in entry["ranges"])).hexdigest()
    covered = sum(n for _, n in entry["ranges"])
    task = 4 * (6 * 2 + 2 * 16)
    assert covered < len(data) / 4 and covered >= task + 4 * 6 * 16
    assert not (tmp_path / "cache").exists()  # the whole file was never hashed
    assert check("metadata", [out.provenance[-1]], pointer="/$defs/provenance") == []
    # once the whole file's digest is known (an operation that reads everything computed it), it is used
    derive(mptkit.load(src), "average")
    again = derive(mptkit.load(src), "exact", task=7).provenance[-1]["sources"][0]
    assert again == {
        "name": "big.safetensors", "sha256": hashlib.sha256(data).hexdigest(), "scheme": "file", "path": str(src),
    }  # fmt: skip


def test_a_known_digest_is_used_without_reading_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MPTKIT_CACHE", str(tmp_path / "cache"))
    src = random_bank(tmp_path / "b.safetensors", T=40, N=6, r=2, d=16)
    bank = mptkit.load(src)
    bank.source.digest = "ab" * 32  # what a Hub download's verified LFS sha256 would give
    entry = derive(bank, "exact", task=3).provenance[-1]["sources"][0]
    assert entry == {"name": "b.safetensors", "sha256": "ab" * 32, "scheme": "file", "path": str(src)}
    assert Source("p", "safetensors", str(src), 10, digest="cd" * 32).sha256 == "cd" * 32


def test_the_cli_says_which_scheme_named_a_source(tmp_path):
    src = random_bank(tmp_path / "big.safetensors", T=40, N=6, r=2, d=16)
    out = tmp_path / "one.safetensors"
    r = run_mptkit(
        "derive", src, "--mode", "exact", "--task", "1", "-o", out, env={"MPTKIT_CACHE": str(tmp_path / "c")}
    )
    assert r.returncode == 0, r.stderr
    shown = run_mptkit("inspect", out).stdout
    assert "from big.safetensors (read ranges " in shown


# -- similarity ----------------------------------------------------------------------------------
def test_similarity_of_many_tasks_matches_float64_and_lists_the_nearest(tmp_path):
    bank = memory_bank(T=30, N=5, d=7, r=2, seed=3)
    res = similarity(bank, top=4, matrix=True)
    full = full_prompts(bank).reshape(30, -1)
    unit = full / full.norm(dim=1, keepdim=True)
    expect = unit @ unit.T
    torch.testing.assert_close(torch.tensor(res["matrix"], dtype=torch.float64), expect, rtol=0, atol=1e-6)
    for i, row in enumerate(res["top"]):
        assert len(row) == 4 and [t["cosine"] for t in row] == sorted((t["cosine"] for t in row), reverse=True)
        others = [(expect[i, j].item(), j) for j in range(30) if j != i]
        assert row[0]["task"] == str(max(others)[1]) and res["nearest"][i] == row[0]
    path = random_bank(tmp_path / "b.safetensors", T=30, N=5, r=2, d=7, seed=3)
    text = run_mptkit("similarity", path).stdout.splitlines()
    assert text[0].split() == ["task", "nearest", "(cosine)"] and len(text) == 31  # not a 30 x 30 table
    data = json.loads(run_mptkit("similarity", path, "--json", "--top", "2").stdout)
    assert "matrix" not in data and len(data["top"]) == 30 and len(data["top"][0]) == 2  # --top: no T x T
    data = json.loads(run_mptkit("similarity", path, "--json").stdout)
    assert len(data["matrix"]) == 30 and len(data["matrix"][0]) == 30 and len(data["top"][0]) == 3


# -- average and values --------------------------------------------------------------------------
def test_bfloat16_rounding_is_correct_where_a_double_rounding_is_not():
    x = np.array([1 + 2**-8 + 2**-30, -(1 + 2**-8 + 2**-30), 1 + 2**-8, 1 + 3 * 2**-8, 3.4e38, float("nan"), 0.0])
    got = np.frombuffer(numerics.from_float64(x, "BF16"), np.uint16)
    assert got[0] == 0x3F81 and got[1] == 0xBF81  # nearest is up; via float32 the tie goes to even (0x3F80)
    assert got[2] == 0x3F80 and got[3] == 0x3F82  # exact ties go to even
    assert got[4] == 0x7F80 and got[5] == 0x7FC0 and got[6] == 0
    assert torch.tensor([x[0]], dtype=torch.float64).to(torch.bfloat16).view(torch.int16).item() == 0x3F80


def test_average_reads_a_task_larger_than_a_chunk_in_pieces(tmp_path, monkeypatch):
    src = mptkit.load(random_bank(tmp_path / "b.safetensors", T=5, N=4, r=2, d=64, seed=1))
    whole = derive(src, "average").tensors["prefix_task_rows"].read()
    monkeypatch.setattr(numerics, "AVERAGE_CHUNK_BYTES", 64)  # a task's rows are 512 bytes: 8 pieces
    assert bytes(derive(src, "average").tensors["prefix_task_rows"].read()) == bytes(whole)
    exact = src.tensors["prefix_task_rows"].to_torch(dtype=torch.float64).mean(0, keepdim=True).float()
    assert torch.equal(torch.frombuffer(bytearray(whole), dtype=torch.float32).reshape(1, 2, 64), exact)


@pytest.mark.parametrize("rank", [1, 3, 9])
def test_values_match_float64_for_small_and_large_ranks(monkeypatch, rank):
    import mptkit._info as info

    bank = memory_bank(T=5, N=7, d=11, r=rank, seed=rank)
    monkeypatch.setattr(info, "VALUES_CHUNK_BYTES", 200)  # many chunks and token blocks
    stats = value_stats(bank)
    full = full_prompts(bank)
    for t, want in zip(stats["tasks"], full):
        assert t["prompt_norm"] == pytest.approx(float(want.norm()), rel=1e-12) and t["nonfinite_prompt"] == 0
    cols = bank.tensors["prefix_task_cols"].to_torch().clone()
    cols[2, 1, 0] = float("inf")
    bank.tensors["prefix_task_cols"] = mptkit._tensor.Array.from_torch(cols)
    bad = value_stats(bank)
    assert bad["tasks"][2]["nonfinite_cols"] == 1 and bad["tasks"][2]["nonfinite_prompt"] > 0
    assert bad["nonfinite"]["prefix_task_cols"] == 1 and bad["tasks"][1]["nonfinite_prompt"] == 0


@pytest.mark.parametrize("where", [0, 5])  # a NaN in the first token block, and in a later one
def test_values_report_a_nan_prompt_norm_as_nan_not_zero(monkeypatch, where):
    import math

    import mptkit._info as info

    bank = memory_bank(T=3, N=7, d=11, r=2, seed=4)
    monkeypatch.setattr(info, "VALUES_CHUNK_BYTES", 200)  # several token blocks per prompt
    cols = bank.tensors["prefix_task_cols"].to_torch().clone()
    cols[1, where, 0] = float("nan")
    bank.tensors["prefix_task_cols"] = mptkit._tensor.Array.from_torch(cols)
    task = value_stats(bank)["tasks"][1]
    assert math.isnan(task["prompt_norm"]) and task["nonfinite_prompt"] > 0


def test_values_give_a_finite_norm_when_the_squares_overflow(monkeypatch):
    import mptkit._info as info

    bank = memory_bank(T=2, N=7, d=11, r=2, seed=5)
    monkeypatch.setattr(info, "VALUES_CHUNK_BYTES", 200)
    pe = bank.tensors["prompt_embeddings"].to_torch().double() * 1e160  # products near 1e160: squares overflow
    bank.tensors["prompt_embeddings"] = mptkit._tensor.Array.from_torch(pe)
    want = [
        1e160 * float((pe / 1e160 * (c @ r)).norm())
        for c, r in zip(
            bank.tensors["prefix_task_cols"].to_torch().double(), bank.tensors["prefix_task_rows"].to_torch().double()
        )
    ]
    for t, w in zip(value_stats(bank)["tasks"], want):
        assert t["prompt_norm"] == pytest.approx(w, rel=1e-12) and t["nonfinite_prompt"] == 0


# -- bounds --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [("rank", "--rank", "99999"), ("derive", "--mode", "shared", "--num-tasks", "1", "--num-ranks", "100000000")],
)
def test_ranks_above_min_n_d_are_refused_with_the_numbers(example_bank, tmp_path, args):
    out = tmp_path / "out"
    r = run_mptkit(args[0], example_bank, *args[1:], "-o", out)
    assert r.returncode == 2 and "min(N, d) = min(12, 32) = 12" in r.stderr and not out.exists(), r.stderr
    assert "Traceback" not in r.stderr
