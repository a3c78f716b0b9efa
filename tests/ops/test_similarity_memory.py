"""``similarity`` costs memory for what it is asked: each task's K nearest in O(T x K) (blocks of
tasks), the full T x T matrix only for the table, ``--json`` without ``--top`` and ``--plot``, and
then for at most MAX_MATRIX_TASKS tasks (refused above, with the numbers). ``--top 1`` of 20,000
tiny tasks once held the whole matrix (and its Python copy) and was killed at 24 GB.

Memory is the child's own peak RSS; correctness of the blockwise nearest lists is checked against
the float64 matrix with blocks forced to a few tasks."""

from __future__ import annotations

import json

import pytest
import torch

import mptkit._similarity as sim
from mptkit._similarity import MAX_MATRIX_TASKS, similarity
from tests.support.banks import full_prompts, memory_bank, write_bank
from tests.support.measured import killed_for_cpu, run_measured


def _tiny_bank(path, T: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return write_bank(
        path, torch.randn(1, 2, generator=g), torch.randn(T, 1, 1, generator=g), torch.randn(T, 1, 2, generator=g)
    )


def test_top_k_of_many_tasks_never_holds_the_matrix(tmp_path):
    T = 5000  # the matrix alone: 200 MB as float64, three times over, and 25 million Python floats (~1 GB)
    src = _tiny_bank(tmp_path / "many.safetensors", T)
    m = run_measured("similarity", src, "--top", "1", "--json", cpu_limit_s=120)
    assert not killed_for_cpu(m) and m.returncode == 0, (m.returncode, m.stderr[-800:])
    out = json.loads(m.stdout)
    assert "matrix" not in out and len(out["top"]) == T and all(len(row) == 1 for row in out["top"])
    print(f"similarity --top 1 of {T} tasks: peak RSS {m.peak_rss_mb:.0f} MB")
    assert m.peak_rss_mb < 500, f"peak RSS {m.peak_rss_mb:.0f} MB"


@pytest.mark.parametrize("extra", [["--json"], ["--plot", "{tmp}/h.png"]], ids=["json", "plot"])
def test_a_matrix_too_large_is_refused_with_its_size(tmp_path, extra):
    T = MAX_MATRIX_TASKS + 52
    src = _tiny_bank(tmp_path / "wide.safetensors", T)
    m = run_measured("similarity", src, *[e.format(tmp=tmp_path) for e in extra], cpu_limit_s=60)
    assert m.returncode == 2, (m.returncode, m.stderr[-800:])
    if "--json" in extra:
        line = json.loads(m.stdout)["error"]
    else:
        lines = m.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mptkit: error: "), m.stderr
        line = lines[0]
    assert f"{src}: the full similarity matrix of {T:,} tasks is {T * T:,} cosines" in line, line
    assert f"at most {MAX_MATRIX_TASKS:,} tasks" in line and "--top K" in line, line
    assert not (tmp_path / "h.png").exists()


def test_a_matrix_within_the_limit_is_still_given(tmp_path):
    src = _tiny_bank(tmp_path / "some.safetensors", 40)
    m = run_measured("similarity", src, "--json", cpu_limit_s=60)
    assert m.returncode == 0, m.stderr
    out = json.loads(m.stdout)
    assert len(out["matrix"]) == 40 and len(out["matrix"][0]) == 40 and len(out["top"][0]) == 3


@pytest.mark.parametrize("block", [1, 2, 5, 64])
@pytest.mark.parametrize("k", [1, 3, 16])
def test_blockwise_nearest_lists_match_the_whole_matrix(monkeypatch, block, k):
    T = 17
    bank = memory_bank(T=T, N=3, r=2, d=5, seed=block + k)
    full = full_prompts(bank).reshape(T, -1)
    unit = full / full.norm(dim=1, keepdim=True)
    cos = unit @ unit.T
    monkeypatch.setattr(sim, "BLOCK", block)
    res = similarity(bank, top=k)
    assert "matrix" not in res
    for i, row in enumerate(res["top"]):
        want = sorted(((cos[i, j].item(), j) for j in range(T) if j != i), reverse=True)[:k]
        assert [t["task"] for t in row] == [str(j) for _, j in want], (i, row, want)
        torch.testing.assert_close(
            torch.tensor([t["cosine"] for t in row], dtype=torch.float64),
            torch.tensor([v for v, _ in want], dtype=torch.float64),
            rtol=0,
            atol=1e-6,
        )
