"""Banks from single-task prompts (decompose): a table or a folder of PROMPT_TUNING adapters back into
a bank, checked against the real PEFT."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import mptkit
from mptkit import export_table, read_prompts
from mptkit._decompose import decompose
from mptkit.errors import IncompatibleBanks, InvalidBank, UsageError
from tests.support.banks import full_prompts, memory_bank, random_bank, tiny_base_model, write_bank
from tests.support.commands import run_mptkit


# -- decompose -----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(4, 6, 8, 1), (5, 6, 8, 2), (8, 12, 20, 3), (3, 10, 40, 2)])
def test_export_then_decompose_gives_the_prompts_back(tmp_path, shape):
    T, N, d, r = shape
    src = random_bank(tmp_path / "b.safetensors", T=T, N=N, r=r, d=d, names=[f"t{i}" for i in range(T)], seed=T + d)
    assert run_mptkit("export", src, "--all", "-o", tmp_path / "all.npy").returncode == 0
    res = run_mptkit("decompose", tmp_path / "all.npy", "--rank", r, "-o", tmp_path / "back.safetensors", "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["task_names"] == [f"t{i}" for i in range(T)] and report["rank"] == r
    before, after = full_prompts(mptkit.load(src)), full_prompts(mptkit.load(tmp_path / "back.safetensors"))
    rel = (after - before).norm(dim=(1, 2)) / before.norm(dim=(1, 2))
    assert float(rel.max()) < 1e-5 and max(report["results"]["relative_error"].values()) < 1e-5


def test_decompose_rank_auto_picks_each_tasks_smallest_rank(tmp_path):
    """Rank-2 tasks under one shared prompt, task b's second component 100x smaller: at 5%, auto
    gives b rank 1 (about 1% off) and the others rank 2 (rank 1 is far off for them)."""
    g = torch.Generator().manual_seed(5)
    pe = torch.rand(6, 8, generator=g) + 0.5
    cols, rows = torch.randn(3, 6, 2, generator=g), torch.randn(3, 2, 8, generator=g)
    cols[1, :, 1] *= 1e-2
    src = write_bank(tmp_path / "b.safetensors", pe, cols, rows, names=["a", "b", "c"])
    assert run_mptkit("export", src, "--all", "-o", tmp_path / "all.npy").returncode == 0
    res = run_mptkit(
        "decompose",
        tmp_path / "all.npy",
        "--rank",
        "auto",
        "--max-error",
        "0.05",
        "-o",
        tmp_path / "auto.safetensors",
        "--json",
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    errors = report["results"]["relative_error"]
    assert report["results"]["rank"] == {"a": 2, "b": 1, "c": 2}, report
    assert errors["a"] < 1e-3 and errors["c"] < 1e-3 and 1e-3 < errors["b"] < 0.05
    assert mptkit.load(tmp_path / "auto.safetensors").rank == 2


def test_decompose_with_a_shared_prompt_keeps_it(tmp_path):
    bank = memory_bank(T=4, N=6, d=9, r=2, seed=8, names=["a", "b", "c", "d"])
    mptkit.save(bank, tmp_path / "bank.safetensors")
    mptkit.save(export_table(bank, "all"), tmp_path / "p.safetensors")
    out = decompose(read_prompts([tmp_path / "p.safetensors"]), 2, shared=mptkit.load(tmp_path / "bank.safetensors"))
    assert bytes(out.tensors["prompt_embeddings"].read()) == bytes(bank.tensors["prompt_embeddings"].read())
    assert max(out.provenance[-1]["results"]["relative_error"].values()) < 1e-6
    other = memory_bank(T=1, N=6, d=10, r=2)
    with pytest.raises(IncompatibleBanks, match=r"6 x 10 \(N x d\), the prompts are 6 x 9"):
        decompose(read_prompts([tmp_path / "p.safetensors"]), 2, shared=other)


def test_decompose_refuses_what_is_not_a_prompt(tmp_path, example_bank):
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    with pytest.raises(InvalidBank, match="a LORA adapter, not PROMPT_TUNING"):
        read_prompts([tmp_path / "lora"])
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(3, 4)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(InvalidBank, match="not a prompt table: expected a tensor 'prompt_table'"):
        read_prompts([tmp_path / "model.safetensors"])
    bank = mptkit.load(example_bank)  # a bank is read as its tasks' full prompts
    got = read_prompts([example_bank])
    assert got.names == ["task0", "task1", "task2", "task3"] and got.shape == (12, 32)
    assert torch.equal(got.read([2]), full_prompts(bank, torch.float32)[2:3].double())
    np.save(tmp_path / "a.npy", np.zeros((2, 4, 6), np.float32))
    np.save(tmp_path / "b.npy", np.zeros((4, 5), np.float32))
    with pytest.raises(UsageError, match=r"is 4 x 5 \(N x d\), but .*a.npy's are 4 x 6"):
        read_prompts([tmp_path / "a.npy", tmp_path / "b.npy"])
    np.save(tmp_path / "i.npy", np.zeros((2, 4, 6), np.int32))
    r = run_mptkit("decompose", tmp_path / "i.npy", "--rank", 1, "-o", tmp_path / "o.safetensors")
    assert r.returncode == 2 and "expected a C-order float32" in r.stderr and not (tmp_path / "o.safetensors").exists()
    r = run_mptkit("decompose", tmp_path / "a.npy", "--rank", 9, "-o", tmp_path / "o.safetensors")
    assert r.returncode == 2 and "min(N, d) = min(4, 6) = 4" in r.stderr


def train_prompt_tuning(out, seed, steps=25):
    """A PEFT PROMPT_TUNING adapter on the tiny GPT-2, trained a few steps on a task of its own."""
    from peft import PromptTuningConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(tiny_base_model("causal"), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=6))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    g = torch.Generator().manual_seed(100 + seed)
    shift = 1 + seed  # the task: predict token + shift
    for _ in range(steps):
        ids = torch.randint(2, 90, (8, 7), generator=g)
        labels = torch.cat([ids[:, :1], (ids[:, :-1] + shift) % 96], dim=1)
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(str(out))
    return out


def test_decompose_real_prompt_tuning_adapters_into_a_bank_peft_loads(tmp_path):
    from peft import PeftModel

    tasks = [
        train_prompt_tuning(tmp_path / name, seed) for seed, name in enumerate(["copy1", "copy2", "copy3", "copy4"])
    ]
    ids = torch.randint(2, 90, (4, 7), generator=torch.Generator().manual_seed(9))
    own = []
    for t in tasks:
        with torch.no_grad():
            own.append(PeftModel.from_pretrained(tiny_base_model("causal"), str(t)).eval()(input_ids=ids).logits)
    worst = {}
    for rank in (1, 3, 6):
        out = tmp_path / f"bank{rank}"
        r = run_mptkit("decompose", *tasks, "--rank", rank, "-o", out)
        assert r.returncode == 0, r.stderr
        assert f"wrote {out}: 4 tasks (copy1, copy2, copy3, copy4), rank {rank}, F32" in r.stdout
        mpt = PeftModel.from_pretrained(tiny_base_model("causal"), str(out)).eval()
        assert mpt.peft_config["default"].peft_type == "MULTITASK_PROMPT_TUNING"
        diffs = []
        for k, ref in enumerate(own):
            with torch.no_grad():
                got = mpt(input_ids=ids, task_ids=torch.full((4,), k)).logits
            diffs.append(float((got - ref).norm() / ref.norm()))
        worst[rank] = max(diffs)
        print(f"rank {rank}: relative logit difference per task {[f'{x:.2e}' for x in diffs]}")
    assert worst[6] < 1e-5  # rank min(N, d) = 6 is exact
    assert worst[1] > worst[3] > worst[6] and worst[1] < 0.5
