"""The merge API (mptkit.merge): concatenation, rank padding, refusals, and the refit of prompts
whose shared prompts differ."""

import pytest
import torch

import mptkit
from mptkit import load
from mptkit.errors import IncompatibleBanks
from tests.support.banks import full_prompts, memory_bank, random_bank, task_bytes


# -- merge ---------------------------------------------------------------------------------------
def test_merge_concatenates_bytes_and_provenance(tmp_path):
    a = load(random_bank(tmp_path / "a.safetensors", T=2, names=["a0", "a1"], seed=1))
    pe = a.tensors["prompt_embeddings"].to_torch()
    b0 = memory_bank(T=3, N=6, d=8, pe=pe, names=["b0", "b1", "b2"], seed=2)
    b = mptkit.rename(b0, {"b2": "bz"})
    m = mptkit.merge([a, b])
    assert m.task_names == ["a0", "a1", "b0", "b1", "bz"]
    assert [e["operation"] for e in m.provenance] == ["rename", "merge"]
    assert [s["name"] for s in m.provenance[-1]["sources"]] == ["a.safetensors"]  # b lives in memory
    for k in range(2):
        assert task_bytes(m, k) == task_bytes(a, k)
    for k in range(3):
        assert task_bytes(m, 2 + k) == task_bytes(b, k)


def test_merge_pads_smaller_ranks_exactly():
    a = memory_bank(T=2, r=1, seed=1)
    b = memory_bank(T=2, r=3, seed=2, pe=a.tensors["prompt_embeddings"].to_torch())
    m = mptkit.merge([a, b])
    assert m.rank == 3
    cols = m.tensors["prefix_task_cols"].to_torch()
    assert torch.equal(cols[:2, :, :1], a.tensors["prefix_task_cols"].to_torch())
    assert not cols[:2, :, 1:].any() and not m.tensors["prefix_task_rows"].to_torch()[:2, 1:].any()
    torch.testing.assert_close(full_prompts(m)[:2], full_prompts(a), rtol=0, atol=0)


def test_merge_refuses_different_n_and_d():
    a = memory_bank(N=4, d=6)
    with pytest.raises(IncompatibleBanks, match=r"prompt length N differs \(bank 1 has N=4, bank 2 has N=5\)"):
        mptkit.merge([a, memory_bank(N=5, d=6)])
    with pytest.raises(IncompatibleBanks, match="N differs .*; hidden size d differs .*d=6, bank 2 has d=7"):
        mptkit.merge([a, memory_bank(N=5, d=7)])


def test_merge_refuses_different_submodule_split():
    seq = {"task_type": "SEQ_2_SEQ_LM", "num_virtual_tokens": 2, "num_transformer_submodules": 2}
    causal = {"task_type": "CAUSAL_LM", "num_virtual_tokens": 4, "num_transformer_submodules": 1}
    a = memory_bank(N=4, config=seq)
    b = memory_bank(N=4, config=causal, pe=a.tensors["prompt_embeddings"].to_torch())
    with pytest.raises(IncompatibleBanks, match="2 virtual tokens x 2 submodule"):
        mptkit.merge([a, b])


def test_merge_dtypes_need_dtype_and_convert():
    a = memory_bank(T=1, dtype=torch.float32, seed=1)
    b = memory_bank(T=1, dtype=torch.bfloat16, seed=2, pe=a.tensors["prompt_embeddings"].to_torch())
    with pytest.raises(IncompatibleBanks, match="different dtypes \\(bank 1 F32, bank 2 BF16\\); give --dtype"):
        mptkit.merge([a, b])
    m = mptkit.merge([a, b], dtype="bfloat16")
    assert m.dtype == "BF16" and m.tensors["prefix_task_cols"].dtype == "BF16"
    assert torch.equal(m.tensors["prefix_task_rows"].to_torch()[1], b.tensors["prefix_task_rows"].to_torch()[0])


def test_merge_refuses_differing_shared_prompts_with_how_much():
    a = memory_bank(T=1, seed=1)
    pe = a.tensors["prompt_embeddings"].to_torch().clone()
    pe[0, 0] += 0.5
    b = memory_bank(T=1, seed=2, pe=pe)
    with pytest.raises(
        IncompatibleBanks,
        match=r"shared prompts differ.*1 of 24 values differ; max abs difference 0\.5, "
        r"relative difference .*--refit",
    ):
        mptkit.merge([a, b])


@pytest.mark.parametrize("scale", ["token", "channel"])
def test_refit_is_exact_for_a_per_token_or_channel_scale(scale):
    a = memory_bank(T=2, N=5, d=7, r=2, seed=1, dtype=torch.float64)
    pe = a.tensors["prompt_embeddings"].to_torch()
    s = torch.linspace(0.5, 2.0, 5)[:, None] if scale == "token" else torch.linspace(-2.0, 3.0, 7)[None, :]
    b = memory_bank(T=3, N=5, d=7, r=2, seed=2, pe=pe * s, dtype=torch.float64)
    m = mptkit.merge([a, b], refit=True)
    torch.testing.assert_close(full_prompts(m)[2:], full_prompts(b), rtol=1e-10, atol=1e-12)
    assert torch.equal(full_prompts(m)[:2], full_prompts(a))
    errors = m.provenance[-1]["results"]["refit"]
    assert sorted(errors) == ["2", "3", "4"] and all(e["relative_error"] < 1e-12 for e in errors.values())


def test_refit_reports_errors_and_max_error_refuses():
    a = memory_bank(T=1, N=6, d=8, r=1, seed=1)
    b = memory_bank(T=2, N=6, d=8, r=1, seed=2)  # an unrelated shared prompt: no exact refit at rank 1
    m = mptkit.merge([a, b], refit=True)
    errs = [e["relative_error"] for e in m.provenance[-1]["results"]["refit"].values()]
    assert all(0.01 < e < 1.0 for e in errs)
    with pytest.raises(IncompatibleBanks, match="relative error .* above --max-error 0.001"):
        mptkit.merge([a, b], refit=True, max_error=0.001)


def test_merge_duplicate_names():
    a = mptkit.set_names(memory_bank(T=2, seed=1), "x,y")
    b = mptkit.set_names(memory_bank(T=2, seed=1), "y,x-2")
    with pytest.raises(IncompatibleBanks, match="task names clash: 'y' in bank 1, bank 2.*--rename-duplicates"):
        mptkit.merge([a, b])
    m = mptkit.merge([a, b, a], rename_duplicates=True)
    assert m.task_names == ["x", "y", "y-2", "x-2", "x-3", "y-3"]
    assert m.provenance[-1]["results"]["renamed"]["2"] == {"from": "y", "to": "y-2"}


def test_merge_of_named_and_unnamed_names_the_unnamed():
    a = mptkit.set_names(memory_bank(T=1, seed=1), "x")
    m = mptkit.merge([a, memory_bank(T=2, seed=1)])
    assert m.task_names == ["x", "task1", "task2"]
    assert mptkit.merge([memory_bank(T=1), memory_bank(T=1)]).task_names is None
