"""Configs PEFT cannot load: validate and inspect warn about what PEFT reads at
load time (an init state dict path, a tokenizer) and about TEXT fields PEFT's config refuses; every
adapter folder mptkit writes loads in PEFT (RANDOM init, null path, no stale TEXT fields) and the
command says what it repaired."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tests.support.banks import tiny_base_model
from tests.support.commands import run_mptkit

STALE = {
    "prompt_tuning_init": "EXACT_SOURCE_TASK",
    "prompt_tuning_init_state_dict_path": "/nonexistent/init.safetensors",
    "prompt_tuning_init_task": 2,
    "tokenizer_kwargs": {"use_fast": True},
    "tokenizer_name_or_path": "t5-small",
    "prompt_tuning_init_text": "Classify:",
}


@pytest.fixture
def stale(tmp_path, peft_banks):
    folder = tmp_path / "stale"
    shutil.copytree(peft_banks("seq2seq"), folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg.update(STALE)
    (folder / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    return folder


def test_peft_itself_cannot_load_the_stale_adapter(stale):
    from peft import PeftModel

    with pytest.raises((ValueError, FileNotFoundError, OSError)):
        PeftModel.from_pretrained(tiny_base_model("seq2seq"), str(stale))


def test_validate_and_inspect_warn(stale, tmp_path):
    r = run_mptkit("validate", stale)
    assert r.returncode == 0 and r.stdout.strip().endswith("valid (bank)"), r.stderr
    warnings = r.stderr.strip().splitlines()
    assert len(warnings) == 3 and all(w.startswith("mptkit: warning: ") for w in warnings), r.stderr
    assert "shared prompt to every task" in warnings[2]  # any MPT adapter folder says this last
    assert "PEFT re-reads prompt_tuning_init_state_dict_path '/nonexistent/init.safetensors' every time" in r.stderr
    assert "that file does not exist from here, so loading fails" in r.stderr
    assert "tokenizer_kwargs is set but prompt_tuning_init is EXACT_SOURCE_TASK: PEFT refuses to load" in r.stderr
    r = run_mptkit("validate", stale, "--json")
    assert len(json.loads(r.stdout)["warnings"]) == 2
    r = run_mptkit("inspect", stale)
    assert r.returncode == 0 and "note             warning: " in r.stdout and "re-reads" in r.stdout
    # the init file exists: said so (mptkit only stats it, never reads it)
    cfg = json.loads((stale / "adapter_config.json").read_text())
    init = tmp_path / "init.safetensors"
    init.write_bytes(b"not read")
    cfg.update(prompt_tuning_init_state_dict_path=str(init), tokenizer_kwargs=None, prompt_tuning_init="TEXT")
    (stale / "adapter_config.json").write_text(json.dumps(cfg))
    r = run_mptkit("validate", stale)
    assert (
        "prompt_tuning_init_state_dict_path" in r.stderr
        and "is set but unused (prompt_tuning_init is TEXT)" in r.stderr
    )
    assert "PEFT loads tokenizer 't5-small' when this adapter is loaded for training" in r.stderr
    cfg.update(prompt_tuning_init="AVERAGE_SOURCE_TASKS")
    (stale / "adapter_config.json").write_text(json.dumps(cfg))
    assert "that file exists" in run_mptkit("validate", stale).stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["convert"],
        ["slice", "--tasks", "2,0"],
        ["derive", "--mode", "exact", "--task", "1"],
        ["rename", "--names", "a,b,c"],
    ],
)
def test_every_folder_written_loads_in_peft_and_says_what_was_repaired(stale, tmp_path, argv):
    out = tmp_path / "out"
    r = run_mptkit(argv[0], stale, *argv[1:], "-o", out)
    assert r.returncode == 0, r.stderr
    assert f"repaired {out / 'adapter_config.json'} so that PEFT loads it" in r.stdout, r.stdout
    for phrase in (
        'prompt_tuning_init "EXACT_SOURCE_TASK" -> "RANDOM"',
        'prompt_tuning_init_state_dict_path "/nonexistent/init.safetensors" -> null',
        "prompt_tuning_init_task 2 -> 0",
        'tokenizer_name_or_path "t5-small" -> null',
        'prompt_tuning_init_text "Classify:" -> null',
        'tokenizer_kwargs {"use_fast": true} -> null',
    ):
        assert phrase in r.stdout, (phrase, r.stdout)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["prompt_tuning_init"] == "RANDOM" and cfg["prompt_tuning_init_task"] == 0
    assert all(
        cfg[k] is None
        for k in (
            "prompt_tuning_init_state_dict_path",
            "prompt_tuning_init_text",
            "tokenizer_name_or_path",
            "tokenizer_kwargs",
        )
    )
    from peft import PeftModel

    enc = PeftModel.from_pretrained(tiny_base_model("seq2seq"), str(out)).prompt_encoder["default"]
    assert torch.equal(enc.prefix_task_cols, load_file(str(out / "adapter_model.safetensors"))["prefix_task_cols"])
    after = run_mptkit("validate", out).stderr.splitlines()  # nothing left to warn about but serving
    assert len(after) == 1 and "shared prompt to every task" in after[0]


def test_a_clean_config_needs_no_repair(peft_banks, tmp_path):
    r = run_mptkit("convert", peft_banks("seq2seq"), "-o", tmp_path / "out")
    assert r.returncode == 0 and "repaired" not in r.stdout and r.stderr == ""
