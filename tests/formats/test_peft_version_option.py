"""``--peft-version X`` on every command that writes an adapter folder: the folder's
adapter_config.json has exactly the fields PEFT X writes, the command names the fields it dropped,
the tensors keep their bytes; an unknown or too-old release is one sentence, exit 2, nothing written."""

from __future__ import annotations

import json

import pytest
import torch

import mptkit
from mptkit import _peftfields as fields
from tests.support.banks import load_tensors
from tests.support.commands import FOLDER_COMMANDS, run_mptkit


def config(folder):
    return json.loads((folder / "adapter_config.json").read_text())


@pytest.mark.parametrize("version", ["0.6.2", "0.13.2", "0.17.1"])
@pytest.mark.parametrize("argv", FOLDER_COMMANDS, ids=[" ".join(a[:1] + a[2:4]) for a in FOLDER_COMMANDS])
def test_every_folder_command_writes_what_that_peft_writes(peft_banks, cli, tmp_path, argv, version):
    src = peft_banks("seq2seq")  # PEFT 0.21 wrote it: modules_to_save, peft_version, tokenizer_kwargs
    out = tmp_path / "out"
    r = cli(*[a.format(src=src) for a in argv], "-o", out, "--peft-version", version)
    assert r.exit_code == 0, r.output
    assert set(config(out)) == set(fields.fields_of(version))
    lacks = sorted(set(config(src)) - set(fields.fields_of(version)))
    them = "it" if len(lacks) == 1 else "them"
    assert f"for PEFT {version}: dropped {', '.join(lacks)} (PEFT {version} lacks {them})" in r.stdout
    assert config(out)["num_transformer_submodules"] == 2 and config(out)["prompt_tuning_init"] == "RANDOM"


def test_export_and_decompose_write_prompt_tuning_for_that_peft(peft_banks, cli, tmp_path):
    src = peft_banks("causal")
    r = cli("export", src, "--task", "1", "-o", tmp_path / "one", "--peft-version", "0.6.2")
    assert r.exit_code == 0 and "dropped modules_to_save, peft_version, tokenizer_kwargs" in r.stdout, r.output
    assert set(config(tmp_path / "one")) == set(fields.fields_of("0.6.2", fields.PT))
    r = cli("export", src, "--all", "-o", tmp_path / "all", "--peft-version", "0.13.2")
    assert r.exit_code == 0 and "dropped modules_to_save, peft_version" in r.stdout, r.output
    assert all(
        set(config(tmp_path / "all" / f"task{k}")) == set(fields.fields_of("0.13.2", fields.PT)) for k in range(3)
    )
    r = cli("decompose", tmp_path / "all", "--rank", "2", "-o", tmp_path / "bank", "--peft-version", "0.13.2")
    assert r.exit_code == 0 and set(config(tmp_path / "bank")) == set(fields.fields_of("0.13.2"))


def test_convert_rewrites_the_config_only(example_bank, tmp_path):
    out = tmp_path / "out"
    r = run_mptkit("convert", example_bank, "--peft-version", "0.6.2", "-o", out)
    assert r.returncode == 0, r.stderr
    ours, theirs = load_tensors(out), load_tensors(example_bank)  # PEFT's keys, the same values
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert set(config(out)) == set(fields.fields_of("0.6.2"))
    same = set(fields.fields_of("0.6.2"))
    assert {k: config(out)[k] for k in same} == {k: config(example_bank)[k] for k in same}
    # and mptkit reads it back as the same bank, saying which PEFT releases load it
    r = run_mptkit("validate", out)
    assert r.stdout.splitlines()[1] == "  loads in PEFT 0.6.0 and later"


def test_the_python_api_takes_it_too(example_bank, tmp_path):
    bank = mptkit.load(example_bank)
    mptkit.save(bank.for_peft("0.13.2"), tmp_path / "out")
    assert set(config(tmp_path / "out")) == set(fields.fields_of("0.13.2"))
    adapter = mptkit.export(bank.for_peft("0.17.1"), 1)
    assert set(adapter.config) == set(fields.fields_of("0.17.1", fields.PT))
    assert fields.for_release(bank.config, "0.17.1")[1] == ["peft_version"]
    assert bank.for_peft(None) is bank
    with pytest.raises(mptkit.UsageError, match="not a PEFT release mptkit knows"):
        bank.for_peft("1.0")


@pytest.mark.parametrize(
    "version, words",
    [
        ("0.5.0", "0.5.0: PEFT added MULTITASK_PROMPT_TUNING in 0.6.0; older releases cannot load any bank"),
        ("0.13.9", "'0.13.9' is not a PEFT release mptkit knows: expected one of 0.6.0 to 0.21.2 (e.g. 0.13.2)"),
    ],
)
def test_an_unknown_or_too_old_release_is_refused_before_any_work(example_bank, tmp_path, version, words):
    for argv in (["derive", example_bank, "--mode", "average"], ["export", example_bank, "--task", "0"]):
        r = run_mptkit(*argv, "-o", tmp_path / "out", "--peft-version", version)
        assert r.returncode == 2 and r.stdout == ""
        assert (
            r.stderr == f"mptkit: error: Invalid value for '--peft-version': {words} (see 'mptkit {argv[0]} --help')\n"
        )
        assert not (tmp_path / "out").exists()


def test_a_bare_file_output_keeps_its_bytes(example_bank, cli, tmp_path):
    """A .safetensors bank has no config: --peft-version changes nothing in it, and the command says
    what that PEFT does with it as an init file."""
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert cli("derive", example_bank, "--mode", "exact", "--task", "1", "-o", a).exit_code == 0
    r = cli("derive", example_bank, "--mode", "exact", "--task", "1", "-o", b, "--peft-version", "0.10.0")
    assert r.exit_code == 0 and a.read_bytes() == b.read_bytes()
    assert set(load_tensors(a)) == {"prompt_embeddings", "prefix_task_cols", "prefix_task_rows"}
    assert r.stdout.splitlines()[1] == (
        "  note: PEFT 0.10.0 reads prompt_tuning_init_state_dict_path with torch.load, which reads a .safetensors "
        "file where torch does (torch 2.13 does)"
    )
    r = cli("derive", example_bank, "--mode", "average", "-o", tmp_path / "c.safetensors", "--peft-version", "0.8.2")
    assert "  note: PEFT 0.8.2 cannot use any prompt_tuning_init_state_dict_path" in r.stdout
    r = cli("derive", example_bank, "--mode", "average", "-o", tmp_path / "d.safetensors", "--peft-version", "0.11.0")
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 1  # it reads the file itself: nothing to say


@pytest.mark.parametrize(
    "out, fmt, what",
    [
        ("table.npy", [], "a prompt table"),
        ("table.safetensors", [], "a prompt table"),
        ("prefixes", ["--format", "tgis"], "a TGIS prefix store"),
    ],
)
def test_outputs_without_a_config_refuse_it_before_any_work(example_bank, tmp_path, out, fmt, what):
    """Tables and TGIS stores hold tensors (.npy, .safetensors, .pt), no adapter_config.json: a PEFT
    release has nothing to say about them, so --peft-version is refused rather than ignored."""
    r = run_mptkit("export", example_bank, "--all", *fmt, "-o", tmp_path / out, "--peft-version", "0.10.0")
    assert r.returncode == 2 and r.stdout == "" and not (tmp_path / out).exists()
    assert r.stderr == f"mptkit: error: --peft-version applies to adapter folders; {what} has no adapter_config.json\n"
