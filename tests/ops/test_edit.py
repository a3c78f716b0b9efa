"""The editing API (names, slice, remove, rank, add) on small banks in memory and on disk."""

import pytest
import torch

import mptkit
from mptkit import load, save
from mptkit.errors import IncompatibleBanks, UsageError
from tests.support.banks import full_prompts, memory_bank, peft_load, random_bank, save_peft_bank, task_bytes


def raw(bank, key):
    return bytes(bank.tensors[key].read())


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
    from tests.support.banks import peft_model

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
