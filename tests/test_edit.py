"""The editing API (mptkit._edit, mptkit._similarity) on small banks in memory and on disk."""

import json
import sys

import pytest
import torch
from bankutil import full_prompts, memory_bank, peft_load, random_bank, save_peft_bank

import mptkit
from mptkit import load, save
from mptkit._similarity import plot_heatmap, similarity
from mptkit.errors import IncompatibleBanks, UsageError


def raw(bank, key):
    return bytes(bank.tensors[key].read())


def task_bytes(bank, k):
    return (
        raw(bank, "prompt_embeddings"),
        bytes(bank.tensors["prefix_task_cols"].rows([k]).read()),
        bytes(bank.tensors["prefix_task_rows"].rows([k]).read()),
    )


# -- names ---------------------------------------------------------------------------------------
def test_set_names_and_rename_by_index_or_name():
    b = mptkit.set_names(memory_bank(T=3), "a,b,c")
    assert b.task_names == ["a", "b", "c"] and b.provenance[-1]["operation"] == "rename"
    r = mptkit.rename(b, {"a": "sst2", "2": "rte"})
    assert r.task_names == ["sst2", "b", "rte"]
    assert r.provenance[-1]["arguments"] == {"renames": {"a": "sst2", "c": "rte"}}
    assert [raw(r, k) for k in r.tensors] == [raw(b, k) for k in b.tensors]


def test_rename_in_an_unnamed_bank_names_the_others():
    r = mptkit.rename(memory_bank(T=3), [("1", "mnli")])
    assert r.task_names == ["task0", "mnli", "task2"]
    assert r.provenance[-1]["results"]["named"] == {"0": "task0", "2": "task2"}


@pytest.mark.parametrize(
    "names, words",
    [
        ("a,a,b", "more than once"),
        (["a", "b,c", "d"], "not allowed"),
        (["a", "12", "d"], "not allowed"),
        (["a", " b", "d"], "not allowed"),
        (["a", "", "d"], "empty"),
        (["a", "b\x07", "d"], "not allowed"),
        ("a,b", "2 names given for 3 tasks"),
    ],
)
def test_bad_names_are_refused(names, words):
    with pytest.raises(UsageError, match=words):
        mptkit.set_names(memory_bank(T=3), names)


def test_rename_refusals():
    b = mptkit.set_names(memory_bank(T=3), "a,b,c")
    with pytest.raises(UsageError, match="unknown task 'zz'"):
        mptkit.rename(b, {"zz": "y"})
    with pytest.raises(UsageError, match="renamed twice"):
        mptkit.rename(b, [("a", "x"), ("0", "y")])
    with pytest.raises(UsageError, match="more than once"):
        mptkit.rename(b, {"a": "b"})


# -- slice, remove -------------------------------------------------------------------------------
def test_slice_keeps_order_bytes_and_names(tmp_path):
    path = random_bank(tmp_path / "b.safetensors", T=5, names=["a", "b", "c", "d", "e"])
    bank = load(path)
    s = mptkit.slice_tasks(bank, "d,0-1")
    assert s.task_names == ["d", "a", "b"]
    for new, old in enumerate([3, 0, 1]):
        assert task_bytes(s, new) == task_bytes(bank, old)
    entry = s.provenance[-1]
    assert entry["operation"] == "slice" and entry["arguments"] == {"tasks": [3, 0, 1], "names": ["d", "a", "b"]}
    assert entry["sources"] == [
        {"name": "b.safetensors", "sha256": bank.source.sha256, "scheme": "file", "path": str(path)}
    ]  # where it was read: mptkit verify reads it again from there
    assert entry["mptkit_version"]
    # a byte path: the result still points into the source file (nothing was copied into memory)
    assert all(seg.path == str(path) for a in s.tensors.values() for seg in a.segments)
    assert s.source is None


def test_remove_keeps_the_others():
    bank = mptkit.set_names(memory_bank(T=4), "a,b,c,d")
    r = mptkit.remove_tasks(bank, "b,3")
    assert r.task_names == ["a", "c"]
    assert task_bytes(r, 1) == task_bytes(bank, 2)
    assert r.provenance[-1]["arguments"] == {"tasks": [1, 3], "names": ["b", "d"]}


@pytest.mark.parametrize(
    "op, spec, words",
    [
        ("slice", "0,0", "listed more than once"),
        ("slice", "1,0-2", "listed more than once"),
        ("slice", "x", "unknown task 'x'"),
        ("slice", "7", "out of range"),
        ("slice", "", "empty task selection"),
        ("slice", [], "empty task selection"),
        ("remove", "0-2", "would leave no tasks"),
        ("remove", "2,2", "listed more than once"),
    ],
)
def test_selection_refusals(op, spec, words):
    bank = memory_bank(T=3)
    fn = mptkit.slice_tasks if op == "slice" else mptkit.remove_tasks
    with pytest.raises(UsageError, match=words):
        fn(bank, spec)


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


# -- rank ----------------------------------------------------------------------------------------
def test_rank_pad_then_truncate_is_bit_exact():
    b = mptkit.set_names(memory_bank(T=3, N=6, d=8, r=2, dtype=torch.bfloat16), "a,b,c")
    up = mptkit.change_rank(b, 5)
    assert up.rank == 5 and up.provenance[-1]["results"]["relative_error"] == {"a": 0.0, "b": 0.0, "c": 0.0}
    down = mptkit.change_rank(up, 2)
    for key in b.tensors:
        assert raw(down, key) == raw(b, key)
    assert [e["operation"] for e in down.provenance] == ["rename", "rank", "rank"]


def test_rank_reduction_is_exact_when_the_product_has_low_rank():
    g = torch.Generator().manual_seed(3)
    N, d = 6, 9
    pe = torch.randn(N, d, generator=g, dtype=torch.float64)
    # rank-3 factors whose product has rank 2 (the third component repeats the first two's span)
    A, B = (
        torch.randn(2, N, 2, generator=g, dtype=torch.float64),
        torch.randn(2, 2, d, generator=g, dtype=torch.float64),
    )
    cols = torch.cat([A, A[:, :, :1] + A[:, :, 1:]], dim=2)
    rows = torch.cat([B[:, :1] * 0.5, B[:, 1:] * 0.5 - 0.0, B[:, :1] * 0.5], dim=1)
    from mptkit._bank import PromptBank
    from mptkit._tensor import Array

    bank = PromptBank(
        {
            "prompt_embeddings": Array.from_torch(pe),
            "prefix_task_cols": Array.from_torch(cols),
            "prefix_task_rows": Array.from_torch(rows),
        }
    )
    assert torch.linalg.matrix_rank(cols[0] @ rows[0]) == 2
    out = mptkit.change_rank(bank, 2)
    torch.testing.assert_close(full_prompts(out), full_prompts(bank), rtol=1e-10, atol=1e-12)
    assert max(out.provenance[-1]["results"]["relative_error"].values()) < 1e-12


def test_rank_reduction_is_no_worse_than_a_plain_truncated_svd():
    bank = memory_bank(T=3, N=8, d=10, r=4, seed=5, dtype=torch.float64)
    out = mptkit.change_rank(bank, 1)
    errors = out.provenance[-1]["results"]["relative_error"]
    pe = bank.tensors["prompt_embeddings"].to_torch()
    for k, full in enumerate(full_prompts(bank)):
        prod = bank.tensors["prefix_task_cols"].to_torch()[k] @ bank.tensors["prefix_task_rows"].to_torch()[k]
        U, S, Vh = torch.linalg.svd(prod)
        svd = float(torch.linalg.vector_norm(pe * (S[0] * U[:, :1] @ Vh[:1]) - full) / torch.linalg.vector_norm(full))
        got = float(torch.linalg.vector_norm(full_prompts(out)[k] - full) / torch.linalg.vector_norm(full))
        assert errors[str(k)] == pytest.approx(got, rel=1e-9)
        assert 0 < got <= svd + 1e-12


def test_rank_keeps_tasks_whose_extra_components_are_zero():
    bank = memory_bank(T=2, r=3, seed=2)
    cols = bank.tensors["prefix_task_cols"].to_torch().clone()
    cols[1, :, 0] = 0  # task 1 uses components 1 and 2 only
    from mptkit._tensor import Array

    bank.tensors["prefix_task_cols"] = Array.from_torch(cols)
    out = mptkit.change_rank(bank, 2)
    assert out.provenance[-1]["results"]["relative_error"]["1"] == 0.0
    assert torch.equal(full_prompts(out)[1], full_prompts(bank)[1])
    assert out.tensors["prefix_task_cols"].to_torch()[1].any(dim=0).tolist() == [True, True]


def test_rank_refuses_bad_values():
    with pytest.raises(UsageError, match="positive integer"):
        mptkit.change_rank(memory_bank(), 0)


# -- add -----------------------------------------------------------------------------------------
def test_add_average_matches_peft_average_source_tasks(tmp_path, peft_banks):
    from bankutil import peft_model

    folder = peft_banks("seq2seq")
    bank = load(folder)
    out = mptkit.add_task(bank, "new", init="average")
    assert out.task_names == ["task0", "task1", "task2", "new"]
    init = tmp_path / "init.safetensors"
    save(bank, init)
    peft = peft_model("seq2seq", num_tasks=1, num_ranks=2, init="AVERAGE_SOURCE_TASKS", init_path=str(init))
    enc = peft.prompt_encoder["default"]
    # the same factors as `derive --mode average` (one definition of the mean) ...
    from mptkit._derive import average

    avg = average(bank)
    for key, peft_param in (("prefix_task_cols", enc.prefix_task_cols), ("prefix_task_rows", enc.prefix_task_rows)):
        ours = out.tensors[key].to_torch()[-1]
        assert torch.equal(ours, avg.tensors[key].to_torch()[0])
        # ... element by element at least as close to the exact mean as PEFT's own AVERAGE_SOURCE_TASKS
        exact = bank.tensors[key].to_torch().double().mean(0)
        assert ((ours.double() - exact).abs() <= (peft_param[0].detach().double() - exact).abs()).all()


def test_add_exact_copies_bytes_and_random_is_seeded():
    bank = mptkit.set_names(memory_bank(T=3, N=20, d=30, r=2), "a,b,c")
    ex = mptkit.add_task(bank, "copy", init="exact:b")
    assert task_bytes(ex, 3) == task_bytes(bank, 1) and ex.provenance[-1]["arguments"]["init"] == "exact:1"
    r1 = mptkit.add_task(bank, "r", init="random", seed=7)
    r2 = mptkit.add_task(bank, "r", init="random", seed=7)
    assert task_bytes(r1, 3) == task_bytes(r2, 3)
    assert r1.provenance[-1]["arguments"]["seed"] == 7
    new = r1.tensors["prefix_task_cols"].to_torch()[3]
    assert abs(float(new.std()) - 0.02) < 0.006 and abs(float(new.mean())) < 0.01
    drawn = mptkit.add_task(bank, "r", init="random")
    assert isinstance(drawn.provenance[-1]["arguments"]["seed"], int)
    for k in range(3):
        assert task_bytes(r1, k) == task_bytes(bank, k)


def test_add_from_another_bank():
    a = mptkit.set_names(memory_bank(T=2, r=1, seed=1), "a,b")
    other = mptkit.set_names(memory_bank(T=2, r=2, seed=2, pe=a.tensors["prompt_embeddings"].to_torch()), "x,y")
    out = mptkit.add_task(a, "yy", source=other, source_task="y")
    assert out.rank == 2 and out.task_names == ["a", "b", "yy"]
    assert torch.equal(full_prompts(out)[2], full_prompts(other)[1])
    assert torch.equal(full_prompts(out)[:2], full_prompts(a))
    with pytest.raises(UsageError, match="has 2 tasks; name one"):
        mptkit.add_task(a, "z", source=other)
    scaled = memory_bank(T=1, r=1, seed=3, pe=a.tensors["prompt_embeddings"].to_torch() * 3)
    with pytest.raises(IncompatibleBanks, match="shared prompts differ"):
        mptkit.add_task(a, "z", source=scaled)
    fit = mptkit.add_task(a, "z", source=scaled, refit=True)
    torch.testing.assert_close(full_prompts(fit)[2], full_prompts(scaled)[0], rtol=1e-5, atol=1e-6)


def test_add_refusals():
    bank = mptkit.set_names(memory_bank(T=2), "a,b")
    with pytest.raises(UsageError, match="already used by task 1"):
        mptkit.add_task(bank, "b", init="average")
    with pytest.raises(UsageError, match="exactly one of --init"):
        mptkit.add_task(bank, "c")
    with pytest.raises(UsageError, match="--seed applies only"):
        mptkit.add_task(bank, "c", init="average", seed=1)
    with pytest.raises(UsageError, match="--init must be"):
        mptkit.add_task(bank, "c", init="mean")
    with pytest.raises(UsageError, match="unknown task 'zz'"):
        mptkit.add_task(bank, "c", init="exact:zz")
    with pytest.raises(UsageError, match="not allowed"):
        mptkit.add_task(bank, "c,d", init="average")


# -- similarity ----------------------------------------------------------------------------------
def test_similarity_is_the_cosine_of_full_prompts():
    bank = memory_bank(T=4, seed=4)
    cols = bank.tensors["prefix_task_cols"].to_torch().clone()
    rows = bank.tensors["prefix_task_rows"].to_torch().clone()
    cols[3], rows[3] = cols[0] * -2.5, rows[0]  # task 3 = task 0 scaled by a negative number
    from mptkit._tensor import Array

    bank.tensors["prefix_task_cols"] = Array.from_torch(cols)
    bank.tensors["prefix_task_rows"] = Array.from_torch(rows)
    res = similarity(bank)
    full = full_prompts(bank).reshape(4, -1)
    expect = torch.nn.functional.cosine_similarity(full[:, None], full[None, :], dim=-1)
    torch.testing.assert_close(torch.tensor(res["matrix"], dtype=torch.float64), expect)
    assert res["matrix"][0][3] == pytest.approx(-1.0) and res["tasks"] == ["0", "1", "2", "3"]
    sub = similarity(bank, "3,1")
    assert sub["indices"] == [3, 1] and sub["matrix"][0][1] == pytest.approx(res["matrix"][3][1])
    json.dumps(res, allow_nan=False)


def test_similarity_of_a_zero_prompt_is_none():
    bank = memory_bank(T=3, seed=4)
    cols = bank.tensors["prefix_task_cols"].to_torch().clone()
    cols[1] = 0
    from mptkit._tensor import Array

    bank.tensors["prefix_task_cols"] = Array.from_torch(cols)
    res = similarity(bank)
    assert res["matrix"][1] == [None, None, None] and res["nearest"][1] is None
    assert res["nearest"][0]["task"] == "2"


def test_similarity_in_blocks_matches(monkeypatch):
    import mptkit._similarity as sim

    bank = memory_bank(T=7, seed=6)
    whole = similarity(bank)["matrix"]
    per = 4 * bank.num_tokens * bank.token_dim
    for rows, cols, inner in ((1, 1, 5), (3 * per, 2 * per, 7), (2 * per, 1, 1 << 16)):
        monkeypatch.setattr(sim, "ROW_BLOCK_BYTES", rows)
        monkeypatch.setattr(sim, "COL_BLOCK_BYTES", cols)
        monkeypatch.setattr(sim, "INNER", inner)
        torch.testing.assert_close(torch.tensor(similarity(bank)["matrix"]), torch.tensor(whole), rtol=1e-6, atol=1e-7)


def test_plot_heatmap(tmp_path):
    pytest.importorskip("matplotlib")
    res = similarity(mptkit.set_names(memory_bank(T=3), "a,b,c"))
    out = tmp_path / "h.png"
    plot_heatmap(res, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(Exception, match="already exists"):
        plot_heatmap(res, out)


def test_plot_without_matplotlib_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(UsageError, match=r"needs matplotlib.*mptkit\[plot\]"):
        plot_heatmap(similarity(memory_bank()), tmp_path / "h.png")
    assert not (tmp_path / "h.png").exists()


# -- PEFT round trip -----------------------------------------------------------------------------
def test_names_and_provenance_survive_saving_and_peft_drops_them_with_a_note(tmp_path):
    folder = save_peft_bank(tmp_path / "peft", num_tasks=3)
    bank = load(folder)
    assert any("save_pretrained" in n for n in bank.notes)  # PEFT's own file: mptkit says why it has no names
    named = mptkit.rename(mptkit.set_names(bank, "a,b,c"), {"b": "bee"})
    out = save(named, tmp_path / "named")
    back = load(out)
    assert back.task_names == ["a", "bee", "c"] and back.notes == []
    assert [e["operation"] for e in back.provenance] == ["rename", "rename"]
    model, enc = peft_load(out)
    model.save_pretrained(str(tmp_path / "resaved"))
    again = load(tmp_path / "resaved")
    for key in ("prompt_embeddings", "prefix_task_cols", "prefix_task_rows"):
        assert raw(again, key) == raw(back, key)
    assert again.task_names is None and again.provenance == []
    assert any("PEFT drops" in n for n in again.notes)
