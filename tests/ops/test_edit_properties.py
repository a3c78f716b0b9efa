"""Property tests of the editing operations: random shapes, dtypes and names."""

import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import mptkit
from mptkit import load, save
from mptkit._schema import check
from mptkit.errors import UsageError
from tests.support.banks import full_prompts, memory_bank

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
KEYS = ("prompt_embeddings", "prefix_task_cols", "prefix_task_rows")

task_name = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=8).filter(
    lambda n: not check("metadata", n, pointer="/$defs/task_name")
)


def name_lists(size):
    return st.one_of(st.none(), st.lists(task_name, min_size=size, max_size=size, unique=True))


@st.composite
def bank_pairs(draw, same_shared=True):
    """Two banks with one N, d and dtype (and shared prompt), names disjoint across both."""
    N, d = draw(st.integers(1, 6)), draw(st.integers(1, 7))
    dtype = draw(st.sampled_from(DTYPES))
    T1, T2 = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    r1, r2 = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    names = draw(name_lists(T1 + T2))
    seed = draw(st.integers(0, 10_000))
    a = memory_bank(T=T1, N=N, r=r1, d=d, dtype=dtype, names=names and names[:T1], seed=seed)
    pe = a.tensors["prompt_embeddings"].to_torch() if same_shared else None
    b = memory_bank(T=T2, N=N, r=r2, d=d, dtype=dtype, names=names and names[T1:], seed=seed + 1, pe=pe)
    return a, b


@st.composite
def banks(draw, min_tasks=1):
    T = draw(st.integers(min_tasks, 5))
    return memory_bank(
        T=T,
        N=draw(st.integers(1, 6)),
        r=draw(st.integers(1, 3)),
        d=draw(st.integers(1, 7)),
        dtype=draw(st.sampled_from(DTYPES)),
        names=draw(name_lists(T)),
        seed=draw(st.integers(0, 10_000)),
    )


def same_bytes(x, y):
    return all(bytes(x.tensors[k].read()) == bytes(y.tensors[k].read()) for k in KEYS)


def prompts(bank):
    """Full prompts computed in the bank's own dtype, as PEFT computes them."""
    pe, cols, rows = (bank.tensors[k].to_torch() for k in KEYS)
    return pe * torch.matmul(cols, rows)


@SETTINGS
@given(banks(min_tasks=2), st.data())
def test_slice_then_merge_restores_the_bank(bank, data):
    k = data.draw(st.integers(1, bank.num_tasks - 1))
    parts = [mptkit.slice_tasks(bank, list(range(k))), mptkit.slice_tasks(bank, list(range(k, bank.num_tasks)))]
    merged = mptkit.merge(parts)
    assert same_bytes(merged, bank)
    assert merged.task_names == bank.task_names
    assert [e["operation"] for e in merged.provenance] == ["slice", "slice", "merge"]


@SETTINGS
@given(bank_pairs())
def test_merge_then_slice_returns_each_input(pair):
    a, b = pair
    merged = mptkit.merge([a, b])
    assert merged.rank == max(a.rank, b.rank)
    back_a = mptkit.change_rank(mptkit.slice_tasks(merged, list(range(a.num_tasks))), a.rank)
    back_b = mptkit.change_rank(mptkit.slice_tasks(merged, list(range(a.num_tasks, merged.num_tasks))), b.rank)
    assert same_bytes(back_a, a) and same_bytes(back_b, b)
    assert back_a.task_names == a.task_names and back_b.task_names == b.task_names


@SETTINGS
@given(banks(min_tasks=2), st.data())
def test_untouched_tasks_keep_bit_identical_prompts(bank, data):
    """Every task an operation does not touch keeps its full prompt bit for bit."""
    T = bank.num_tasks
    op = data.draw(st.sampled_from(["slice", "remove", "add-average", "add-random", "add-exact", "merge", "rename"]))
    before = prompts(bank)
    if op == "slice":
        keep = data.draw(st.permutations(range(T)).map(lambda p: p[: max(1, len(p) // 2)]))
        out = mptkit.slice_tasks(bank, keep)
    elif op == "remove":
        drop = data.draw(st.sets(st.integers(0, T - 1), min_size=1, max_size=T - 1))
        keep = [i for i in range(T) if i not in drop]
        out = mptkit.remove_tasks(bank, sorted(drop))
    elif op.startswith("add"):
        init = {"add-average": "average", "add-random": "random", "add-exact": "exact:0"}[op]
        out = mptkit.add_task(bank, "added-task", init=init, seed=1 if init == "random" else None)
        keep = list(range(T))
    elif op == "merge":
        other = memory_bank(
            T=2,
            N=bank.num_tokens,
            r=bank.rank,
            d=bank.token_dim,
            dtype=bank.tensors["prompt_embeddings"].to_torch().dtype,
            pe=bank.tensors["prompt_embeddings"].to_torch(),
            seed=99,
        )
        out = mptkit.merge([other, bank], rename_duplicates=True)
        keep = list(range(T))
        assert torch.equal(prompts(out)[2:], before)
        return
    else:
        out = mptkit.set_names(bank, [f"n{i}" for i in range(T)])
        keep = list(range(T))
    after = prompts(out)
    for new, old in enumerate(keep):
        assert torch.equal(after[new], before[old])


@SETTINGS
@given(banks(), st.integers(1, 4))
def test_rank_pad_then_truncate_back_is_exact(bank, extra):
    if bank.rank + extra > min(bank.num_tokens, bank.token_dim):  # zeros only: refused, with the numbers
        with pytest.raises(UsageError, match=rf"--rank {bank.rank + extra} is more than .* min\(N, d\) = "):
            mptkit.change_rank(bank, bank.rank + extra)
        return
    up = mptkit.change_rank(bank, bank.rank + extra)
    assert up.rank == bank.rank + extra
    torch.testing.assert_close(full_prompts(up), full_prompts(bank), rtol=1e-12, atol=1e-12)
    assert same_bytes(mptkit.change_rank(up, bank.rank), bank)


@SETTINGS
@given(bank_pairs(), st.data())
def test_refit_after_a_per_token_rescale_recovers_every_prompt(pair, data):
    a, b = pair
    N = a.num_tokens
    dtype = a.tensors["prompt_embeddings"].to_torch().dtype
    scale = torch.tensor(data.draw(st.lists(st.floats(0.25, 4.0), min_size=N, max_size=N)), dtype=torch.float64)
    sign = torch.tensor(data.draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=N, max_size=N)), dtype=torch.float64)
    pe_b = (a.tensors["prompt_embeddings"].to_torch(dtype=torch.float64) * (scale * sign)[:, None]).to(dtype)
    b = memory_bank(
        T=b.num_tasks,
        N=N,
        r=b.rank,
        d=b.token_dim,
        dtype=dtype,
        names=b.task_names,
        pe=pe_b,
        seed=data.draw(st.integers(0, 1000)),
    )
    merged = mptkit.merge([a, b], refit=True)
    got = prompts(merged)[a.num_tasks :].double()
    want = prompts(b).double()
    eps = torch.finfo(dtype).eps
    for k in range(b.num_tasks):
        rel = float(torch.linalg.vector_norm(got[k] - want[k]) / torch.linalg.vector_norm(want[k]).clamp_min(1e-30))
        assert rel <= 64 * eps, (k, rel)  # a few ALS steps of float rounding
    assert torch.equal(prompts(merged)[: a.num_tasks], prompts(a))


@SETTINGS
@given(banks(min_tasks=2), task_name)
def test_names_and_provenance_survive_every_operation_and_saving(bank, new_name):
    T = bank.num_tasks
    named = bank.task_names or [f"t{i}" for i in range(T)]
    if new_name in named:
        return
    steps = [
        ("rename", lambda b: mptkit.set_names(b, named)),
        ("add", lambda b: mptkit.add_task(b, new_name, init="average")),
        ("slice", lambda b: mptkit.slice_tasks(b, [T, *range(T)])),
        ("rank", lambda b: mptkit.change_rank(b, max(b.rank, min(b.rank + 1, b.num_tokens, b.token_dim)))),
        ("remove", lambda b: mptkit.remove_tasks(b, [0])),
        ("merge", lambda b: mptkit.merge([b, mptkit.slice_tasks(b, [0])], rename_duplicates=True)),
    ]
    expect = {
        "rename": named,
        "add": named + [new_name],
        "slice": [new_name] + named,
        "rank": [new_name] + named,
        "remove": named,
        "merge": named + [f"{named[0]}-2"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        current, ops = bank, []
        for i, (op, fn) in enumerate(steps):
            out = fn(current)
            ops += [e["operation"] for e in out.provenance[len(ops) :]]
            path = save(out, Path(tmp) / f"{i}.safetensors")
            current = load(path)
            assert current.task_names == expect[op], op
            assert [e["operation"] for e in current.provenance] == ops
            assert current.provenance[-1]["operation"] == op
        # the entries that came through files name their sources by sha256
        assert all(len(s["sha256"]) == 64 for e in current.provenance[1:] for s in e["sources"])
