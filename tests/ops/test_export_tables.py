"""Prompt tables for serving engines (export --tasks/--all) and folders of PROMPT_TUNING adapters,
checked against the real PEFT."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import mptkit
from mptkit import export_table
from tests.support.banks import full_prompts, load_tensors, random_bank, tiny_base_model
from tests.support.commands import run_mptkit

V = 5  # the peft_banks fixture's virtual tokens


def peft_prompts(folder, kind, tasks):
    """PEFT's own MPT prompts (float32) for ``tasks``, all in one batch and one task at a time."""
    from peft import PeftModel

    enc = PeftModel.from_pretrained(tiny_base_model(kind), str(folder)).prompt_encoder["default"]
    N = enc.embedding.weight.shape[0]
    with torch.no_grad():
        batch = enc(torch.arange(N).expand(len(tasks), N), torch.tensor(tasks))
        single = torch.cat([enc(torch.arange(N)[None], torch.tensor([k])) for k in tasks])
    assert torch.equal(batch, single)
    return batch


@pytest.mark.parametrize("kind", ["seq2seq", "causal"])
def test_tables_equal_peft_bit_for_bit(peft_banks, tmp_path, kind):
    src = peft_banks(kind)
    want = peft_prompts(src, kind, [0, 1, 2])
    r = run_mptkit("export", src, "--all", "-o", tmp_path / "t.npy")
    assert r.returncode == 0, r.stderr
    table = np.load(tmp_path / "t.npy")
    assert table.dtype == np.float32 and table.shape == ((3, V, 24) if kind == "seq2seq" else (3, V, 24))
    assert torch.equal(torch.from_numpy(table), want[:, :V])  # seq2seq: the encoder half, what generate uses
    side = json.loads((tmp_path / "t.tasks.json").read_text())
    assert side["tasks"] == ["task0", "task1", "task2"] and side["half"] == ("encoder" if kind == "seq2seq" else None)
    assert side["provenance"][-1]["operation"] == "export"
    args = ["--half", "both"] if kind == "seq2seq" else []
    assert run_mptkit("export", src, "--tasks", "2,0", *args, "-o", tmp_path / "t.safetensors").returncode == 0
    st = load_tensors(tmp_path / "t.safetensors")
    assert set(st) == {"prompt_table"} and torch.equal(st["prompt_table"], want[[2, 0]])
    if kind == "seq2seq":
        assert run_mptkit("export", src, "--all", "--half", "decoder", "-o", tmp_path / "dec.npy").returncode == 0
        assert torch.equal(torch.from_numpy(np.load(tmp_path / "dec.npy")), want[:, V:])
    else:
        r = run_mptkit("export", src, "--all", "--half", "decoder", "-o", tmp_path / "x.npy")
        assert r.returncode == 2 and "one transformer submodule" in r.stderr


@pytest.mark.parametrize("kind", ["seq2seq", "causal"])
def test_a_folder_of_adapters_gives_peft_mpt_outputs(peft_banks, tmp_path, kind):
    from peft import PeftModel

    src = peft_banks(kind)
    out = tmp_path / "prompts"
    assert run_mptkit("export", src, "--tasks", "0,2", "-o", out).returncode == 0
    assert json.loads((out / "tasks.json").read_text())["tasks"] == ["task0", "task2"]
    mpt = PeftModel.from_pretrained(tiny_base_model(kind), str(src)).eval()
    ids = torch.randint(2, 96, (2, 6), generator=torch.Generator().manual_seed(1))
    for k in (0, 2):
        pt = PeftModel.from_pretrained(tiny_base_model(kind), str(out / f"task{k}")).eval()
        task_ids = torch.full((2,), k)
        with torch.no_grad():
            if kind == "causal":
                assert torch.equal(mpt(input_ids=ids, task_ids=task_ids).logits, pt(input_ids=ids).logits)
            else:
                labels = ids[:, :3].clone()
                a = mpt(input_ids=ids, labels=labels, task_ids=task_ids).encoder_last_hidden_state
                assert torch.equal(a, pt(input_ids=ids, labels=labels).encoder_last_hidden_state)


def test_table_dtypes_and_refusals(tmp_path):
    src = random_bank(tmp_path / "b.safetensors", T=3, N=4, r=2, d=6, names=["a", "b", "c"])
    bank = mptkit.load(src)
    mptkit.save(export_table(bank, "c,a", dtype="float16"), tmp_path / "h.npy")
    half = np.load(tmp_path / "h.npy")
    assert half.dtype == np.float16 and torch.equal(
        torch.from_numpy(half), full_prompts(bank, torch.float32)[[2, 0]].half()
    )
    r = run_mptkit("export", src, "--all", "--dtype", "bfloat16", "-o", tmp_path / "b.npy")
    assert r.returncode == 2 and "cannot hold bfloat16" in r.stderr and not (tmp_path / "b.npy").exists()
    assert run_mptkit("export", src, "--all", "--dtype", "bfloat16", "-o", tmp_path / "b16.safetensors").returncode == 0
    assert load_tensors(tmp_path / "b16.safetensors")["prompt_table"].dtype == torch.bfloat16
    r = run_mptkit("export", src, "--all", "-o", tmp_path / "h.npy")
    assert r.returncode == 2 and "already exists" in r.stderr
    r = run_mptkit("export", src, "--task", "a", "--tasks", "b", "-o", tmp_path / "x.npy")
    assert r.returncode == 2 and "give one of --task" in r.stderr
