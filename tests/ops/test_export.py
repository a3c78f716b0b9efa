"""`mptkit export`: one task as a plain PEFT PROMPT_TUNING adapter, checked under PEFT."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import mptkit
from mptkit._export import export, task_prompt
from mptkit.serve._runtime import TaskPrompts, prepend
from tests.support.banks import DTYPES, load_tensors, random_bank, task_type, tiny_base_model
from tests.support.files import sha256_tree

V = 5  # the peft_banks fixture's virtual tokens


def peft_loaded(kind, folder):
    from peft import PeftModel

    return PeftModel.from_pretrained(tiny_base_model(kind), str(folder)).eval()


@pytest.mark.parametrize("kind", ["seq2seq", "causal"])
def test_config_is_what_peft_writes(peft_banks, cli, tmp_path, kind):
    from peft import PromptTuningConfig, get_peft_model

    out = tmp_path / "pt"
    assert cli("export", peft_banks(kind), "--task", "1", "-o", out).exit_code == 0
    ref = tmp_path / "peft-pt"
    get_peft_model(
        tiny_base_model(kind), PromptTuningConfig(task_type=task_type(kind), num_virtual_tokens=V)
    ).save_pretrained(str(ref))
    assert (out / "adapter_config.json").read_text() == (ref / "adapter_config.json").read_text()
    ours, theirs = load_tensors(out), load_tensors(ref)
    assert set(ours) == {"prompt_embeddings"} and ours["prompt_embeddings"].shape == theirs["prompt_embeddings"].shape
    assert ours["prompt_embeddings"].dtype == torch.float32


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("kind", ["seq2seq", "causal"])
def test_same_outputs_as_mpt_with_task_ids(peft_banks, cli, tmp_path, kind, dtype):
    src = peft_banks(kind, dtype)
    k = 2
    out = tmp_path / "pt"
    r = cli("export", src, "--task", str(k), "-o", out)
    assert r.exit_code == 0, r.output
    mpt, pt = peft_loaded(kind, src), peft_loaded(kind, out)
    assert pt.peft_config["default"].peft_type == "PROMPT_TUNING"
    ids = torch.randint(2, 96, (3, 6), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[2, :2] = 0
    task_ids = torch.full((3,), k)
    with torch.no_grad():
        if kind == "causal":
            a = mpt(input_ids=ids, attention_mask=mask, task_ids=task_ids).logits
            b = pt(input_ids=ids, attention_mask=mask).logits
            assert torch.equal(a, b)
            return
        # seq2seq: PROMPT_TUNING feeds the encoder half only, as MPT's generate does
        labels = ids[:, :3].clone()
        a = mpt(input_ids=ids, attention_mask=mask, labels=labels, task_ids=task_ids).encoder_last_hidden_state
        b = pt(input_ids=ids, attention_mask=mask, labels=labels).encoder_last_hidden_state
        assert torch.equal(a, b)
        kw = dict(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=4,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
        ga, gb = mpt.generate(task_ids=task_ids, **kw), pt.generate(**kw)
        assert torch.equal(ga.sequences, gb.sequences)
        assert all(torch.equal(x, y) for x, y in zip(ga.scores, gb.scores))


@pytest.mark.parametrize("task", ["FEATURE_EXTRACTION", "QUESTION_ANS"])
def test_prepend_matches_peft_prompt_tuning_on_encoder_models(peft_banks, cli, tmp_path, task):
    """Where PEFT's wrappers pass no task_ids, the runtime's prepend() gives what PEFT's plain prompt
    tuning gives with the exported task."""
    from peft import PeftModel
    from transformers import BertConfig, BertForQuestionAnswering, BertModel

    def model():
        torch.manual_seed(5)
        cfg = BertConfig(
            vocab_size=96,
            hidden_size=24,
            num_hidden_layers=1,
            num_attention_heads=4,
            intermediate_size=48,
            max_position_embeddings=32,
        )
        return (BertModel(cfg) if task == "FEATURE_EXTRACTION" else BertForQuestionAnswering(cfg)).eval()

    src, k = peft_banks("causal"), 1
    out = tmp_path / "pt"
    assert cli("export", src, "--task", str(k), "--task-type", task, "-o", out).exit_code == 0
    if task == "FEATURE_EXTRACTION":
        pt = PeftModel.from_pretrained(model(), str(out)).eval()
    else:  # PEFT's QA adapters must also hold the qa_outputs head, which a prompt bank has not: set the prompt
        from peft import PromptTuningConfig, get_peft_model

        cfg = json.loads((out / "adapter_config.json").read_text())
        pt = get_peft_model(
            model(), PromptTuningConfig(task_type=task, num_virtual_tokens=cfg["num_virtual_tokens"])
        ).eval()
        with torch.no_grad():
            pt.prompt_encoder["default"].embedding.weight.copy_(load_tensors(out)["prompt_embeddings"])
    base = model()
    ids = torch.randint(2, 96, (2, 8), generator=torch.Generator().manual_seed(6))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    prompts = TaskPrompts.from_bank(src)
    with torch.no_grad():
        ref = pt(input_ids=ids, attention_mask=mask)
        got = base(**prepend(base, prompts(torch.tensor([k, k])), input_ids=ids, attention_mask=mask))
    if task == "FEATURE_EXTRACTION":
        assert torch.equal(got.last_hidden_state, ref.last_hidden_state)
    else:
        assert torch.equal(got.start_logits, ref.start_logits) and torch.equal(got.end_logits, ref.end_logits)


def test_dtype_and_values(tmp_path, cli):
    src = random_bank(tmp_path / "b.safetensors", T=3, dtype=torch.float16, names=["x", "y", "z"])
    bank = mptkit.load(src)
    t = load_tensors(src)
    want = t["prompt_embeddings"].float() * (t["prefix_task_cols"][1].float() @ t["prefix_task_rows"][1].float())
    assert torch.allclose(task_prompt(bank, "y"), want, rtol=1e-6, atol=1e-6)
    out = tmp_path / "pt"
    r = cli(
        "export",
        src,
        "--task",
        "y",
        "--task-type",
        "CAUSAL_LM",
        "--num-virtual-tokens",
        6,
        "--dtype",
        "bfloat16",
        "-o",
        out,
        "--json",
    )
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["dtype"] == "BF16" and info["arguments"] == {"task": 1, "task_name": "y", "dtype": "bfloat16"}
    stored = load_tensors(out)["prompt_embeddings"]
    assert stored.dtype == torch.bfloat16 and torch.equal(stored, task_prompt(bank, 1).to(torch.bfloat16))
    prov = json.loads(json.loads(json.dumps(_metadata(out / "adapter_model.safetensors")))["mptkit.provenance"])
    assert prov[-1]["operation"] == "export" and prov[-1]["sources"][0]["sha256"] == bank.source.sha256


def _metadata(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata()


def test_python_api(example_bank):
    adapter = export(mptkit.load(example_bank), 3)
    assert adapter.config["peft_type"] == "PROMPT_TUNING" and adapter.prompt.shape == (12, 32)
    assert "num_tasks" not in adapter.config and adapter.config["num_transformer_submodules"] == 2


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--task", "3"], "has 3 tasks"),
        (["--task", "nope"], "unknown task 'nope'"),
        (["--task", "1", "-o", "{tmp}/x.safetensors"], "adapter folder"),
    ],
)
def test_errors(peft_banks, cli, tmp_path, args, needle):
    src = peft_banks("causal")
    before = sha256_tree(src)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "out")]
    r = cli("export", src, *args)
    assert r.exit_code == 2 and needle in r.stderr and len(r.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == [] and sha256_tree(src) == before


def test_bare_source_needs_task_type(peft_banks, cli, tmp_path):
    bare = tmp_path / "bare.safetensors"
    shutil.copy(peft_banks("causal") / "adapter_model.safetensors", bare)
    r = cli("export", bare, "--task", "0", "-o", tmp_path / "out")
    assert r.exit_code == 2 and "--task-type" in r.stderr and not (tmp_path / "out").exists()
    shared = tmp_path / "shared.safetensors"
    assert cli("derive", bare, "--mode", "shared", "-o", shared).exit_code == 0
    r = cli("export", shared, "--task", "0", "-o", tmp_path / "out")
    assert r.exit_code == 2 and "only the shared prompt" in r.stderr


def test_existing_output_needs_force(example_bank, cli, tmp_path):
    out = tmp_path / "pt"
    assert cli("export", example_bank, "--task", "0", "-o", out).exit_code == 0
    before = sha256_tree(out)
    r = cli("export", example_bank, "--task", "1", "-o", out)
    assert r.exit_code == 2 and "--force" in r.stderr and sha256_tree(out) == before
    assert cli("export", example_bank, "--task", "1", "-o", out, "--force").exit_code == 0
    assert sha256_tree(out) != before
