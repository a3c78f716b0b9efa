"""Classification / QA adapters: PEFT saves the task head (modules_to_save) beside the bank."""

import torch
from peft import MultitaskPromptTuningConfig, PeftModel, get_peft_model
from transformers import BertConfig, BertForSequenceClassification

import mptkit
from tests.support.banks import load_tensors


def _base():
    torch.manual_seed(0)
    return BertForSequenceClassification(
        BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    )


def _seq_cls_bank(path):
    model = get_peft_model(
        _base(), MultitaskPromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=3, num_tasks=3, num_ranks=2)
    )
    with torch.no_grad():
        for p in model.prompt_encoder["default"].parameters():
            p.copy_(torch.randn(p.shape))
    model.save_pretrained(str(path))
    return path


def test_head_tensors_are_set_aside_with_a_note(tmp_path, cli):
    src = _seq_cls_bank(tmp_path / "cls")
    assert any(k.startswith("base_model.") for k in load_tensors(src))
    bank = mptkit.load(src)
    assert set(bank.tensors) == {"prompt_embeddings", "prefix_task_cols", "prefix_task_rows"}
    assert any("modules_to_save" in n and "base_model.classifier" in n for n in bank.notes)
    r = cli("inspect", src)
    assert r.exit_code == 0 and "task head saved by PEFT's modules_to_save" in r.stdout
    assert cli("validate", src).exit_code == 0


def test_derived_start_from_a_classification_bank_matches_peft(tmp_path, cli):
    src = _seq_cls_bank(tmp_path / "cls")
    out = tmp_path / "task1"
    r = cli("derive", src, "--mode", "exact", "--task", "1", "-o", out)
    assert r.exit_code == 0, r.stderr
    # the folder carries the source's head unchanged (PEFT needs it to load a SEQ_CLS adapter) ...
    head = {k: v for k, v in load_tensors(src).items() if k.startswith("base_model.")}
    got = load_tensors(out)
    assert head and all(torch.equal(got[k], v) for k, v in head.items())
    # ... and a bare init file holds PEFT's three keys only
    assert cli("derive", src, "--mode", "exact", "--task", "1", "-o", tmp_path / "t1.safetensors").exit_code == 0
    assert set(load_tensors(tmp_path / "t1.safetensors")) == {
        "prompt_embeddings",
        "prefix_task_cols",
        "prefix_task_rows",
    }
    ours = PeftModel.from_pretrained(_base(), str(out)).prompt_encoder["default"]
    theirs = get_peft_model(
        _base(),
        MultitaskPromptTuningConfig(
            task_type="SEQ_CLS",
            num_virtual_tokens=3,
            num_tasks=1,
            num_ranks=2,
            prompt_tuning_init="EXACT_SOURCE_TASK",
            prompt_tuning_init_state_dict_path=str(src / "adapter_model.safetensors"),
            prompt_tuning_init_task=1,
        ),
    ).prompt_encoder["default"]
    for name in ("embedding.weight", "prefix_task_cols", "prefix_task_rows"):
        assert torch.equal(ours.state_dict()[name], theirs.state_dict()[name]), name


def test_export_of_a_classification_bank_keeps_the_head_and_peft_logits(tmp_path, cli):
    src = _seq_cls_bank(tmp_path / "cls")
    out = tmp_path / "task2-prompt"
    r = cli("export", src, "--task", "2", "-o", out)
    assert r.exit_code == 0, r.stderr
    ids = torch.randint(3, 50, (2, 7))
    mpt = PeftModel.from_pretrained(_base(), str(src)).eval()
    plain = PeftModel.from_pretrained(_base(), str(out)).eval()
    assert plain.peft_config["default"].peft_type == "PROMPT_TUNING"
    with torch.no_grad():
        want = mpt(input_ids=ids, task_ids=torch.tensor([2, 2])).logits
        got = plain(input_ids=ids).logits
    assert torch.equal(got, want)
