"""An adapter folder mptkit writes carries the config fields its source had (plus the ones the
operation sets) and never a field the source's PEFT did not write: a folder derived from a bank of
PEFT 0.10.0 loads in PEFT 0.10.0 (tests/peft_versions/matrix.py proves it there). A source without a
config gets the fields the installed PEFT writes."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest

from mptkit import _peftfields as fields
from tests.support.banks import random_bank, tiny_base_model
from tests.support.commands import FOLDER_COMMANDS

#: what PEFT 0.10.0 writes for MULTITASK_PROMPT_TUNING (the table; the matrix checks it against 0.10.0 itself)
OLD = "0.10.0"


@pytest.fixture
def old_bank(tmp_path, peft_banks):
    """A bank whose adapter_config.json has exactly the fields PEFT 0.10.0 writes."""
    folder = tmp_path / "old"
    shutil.copytree(peft_banks("causal"), folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    old = {k: v for k, v in cfg.items() if k in fields.fields_of(OLD)}
    assert set(cfg) - set(old) == {"modules_to_save", "peft_version"}
    (folder / "adapter_config.json").write_text(json.dumps(old, indent=2, sort_keys=True))
    return folder


def config(folder):
    return json.loads((folder / "adapter_config.json").read_text())


def loads_without_unknown_keys(folder):
    from peft import PeftModel

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        PeftModel.from_pretrained(tiny_base_model("causal"), str(folder))
    assert not [w for w in caught if "nexpected keyword" in str(w.message)]


@pytest.mark.parametrize("argv", FOLDER_COMMANDS, ids=[" ".join(a[:1] + a[2:4]) for a in FOLDER_COMMANDS])
def test_every_bank_folder_keeps_the_source_s_fields(old_bank, cli, tmp_path, argv):
    out = tmp_path / "out"
    r = cli(*[a.format(src=old_bank) for a in argv], "-o", out)
    assert r.exit_code == 0, r.output
    src, got = config(old_bank), config(out)
    assert set(got) == set(src)
    shapes = {"num_tasks", "num_ranks"}
    assert {k: v for k, v in got.items() if k not in shapes} == {k: v for k, v in src.items() if k not in shapes}
    assert "dropped" not in r.stdout
    loads_without_unknown_keys(out)


def test_prompt_tuning_folders_keep_the_source_s_fields(old_bank, cli, tmp_path):
    assert cli("export", old_bank, "--task", "1", "-o", tmp_path / "one").exit_code == 0
    assert cli("export", old_bank, "--all", "-o", tmp_path / "all").exit_code == 0
    want = set(fields.fields_of(OLD, fields.PT))
    assert set(config(old_bank)) - set(fields.MPT_ONLY) == want
    for folder in (tmp_path / "one", *(tmp_path / "all" / f"task{k}" for k in range(3))):
        assert set(config(folder)) == want and config(folder)["peft_type"] == "PROMPT_TUNING"
    # and the bank decomposed from those adapters is in their dialect again
    assert cli("decompose", tmp_path / "all", "--rank", "2", "-o", tmp_path / "bank").exit_code == 0
    assert set(config(tmp_path / "bank")) == set(config(old_bank))


def test_a_source_without_a_config_gets_the_installed_peft_s_fields(cli, tmp_path):
    import peft

    bare = random_bank(tmp_path / "b.safetensors", T=3, N=4, r=2, d=24)
    out = tmp_path / "out"
    assert cli("convert", bare, "--task-type", "CAUSAL_LM", "--num-virtual-tokens", "4", "-o", out).exit_code == 0
    assert set(config(out)) == set(fields.fields_of(peft.__version__))
    assert config(out)["peft_version"] == peft.__version__
    loads_without_unknown_keys(out)


def test_a_field_no_release_writes_is_dropped_and_named(example_bank, cli, tmp_path):
    """It would make PEFT up to 0.13 refuse the output and later ones warn; a config from a PEFT newer
    than the table (its peft_version says so) keeps it: that PEFT wrote it."""
    src = tmp_path / "src"
    shutil.copytree(example_bank, src)
    cfg = config(src)
    (src / "adapter_config.json").write_text(json.dumps({**cfg, "lora_alpha": 8}))
    r = cli("slice", src, "--tasks", "1", "-o", tmp_path / "a")
    assert f"  wrote {tmp_path / 'a' / 'adapter_config.json'}: dropped lora_alpha (no PEFT release up to 0.21.2 " \
        "has it)" in r.stdout  # fmt: skip
    assert set(config(tmp_path / "a")) == set(cfg)
    r = cli("export", src, "--task", "1", "-o", tmp_path / "b")
    assert "dropped lora_alpha" in r.stdout and "lora_alpha" not in config(tmp_path / "b")
    (src / "adapter_config.json").write_text(json.dumps({**cfg, "lora_alpha": 8, "peft_version": "0.22.0"}))
    r = cli("slice", src, "--tasks", "1", "-o", tmp_path / "c")
    assert "dropped" not in r.stdout and config(tmp_path / "c")["lora_alpha"] == 8


def test_merging_two_dialects_keeps_the_fields_both_know(old_bank, peft_banks, cli, tmp_path):
    new = peft_banks("causal")
    out = tmp_path / "out"
    assert cli("merge", new, old_bank, "--rename-duplicates", "-o", out).exit_code == 0
    assert set(config(out)) == set(config(old_bank)) == set(fields.fields_of(OLD))


def test_the_config_builder_alone():
    """build_config(source, required, target) -> (config, dropped): the seam every writer calls."""
    src = {**fields.defaults(OLD), "peft_type": fields.MPT, "task_type": "CAUSAL_LM", "tokenizer_kwargs": {"a": 1}}
    req = {"peft_type": fields.MPT, "num_tasks": 2, "num_ranks": 1, "token_dim": 8}
    cfg, dropped = fields.build_config(src, req)
    assert set(cfg) == set(src) and dropped == [] and cfg["tokenizer_kwargs"] is None and cfg["num_tasks"] == 2
    cfg, dropped = fields.build_config(src, req, "0.6.2")
    assert set(cfg) == set(fields.fields_of("0.6.2")) and dropped == ["tokenizer_kwargs"]
    cfg, dropped = fields.build_config(src, req, "0.21.2")
    assert set(cfg) == set(fields.fields_of("0.21.2")) and cfg["peft_version"] == "0.21.2" and dropped == []
    cfg, _ = fields.build_config({"task_type": "CAUSAL_LM"}, req, installed="0.17.1")  # no dialect: the installed's
    assert set(cfg) == set(fields.fields_of("0.17.1")) and cfg["task_type"] == "CAUSAL_LM"
    cfg, _ = fields.build_config(None, req, installed=None)  # no PEFT installed: the newest known release
    assert set(cfg) == set(fields.fields_of(fields.RELEASES[-1])) and cfg["peft_version"] == fields.RELEASES[-1]
    cfg, _ = fields.build_config(None, req, installed="0.22.0.dev0")  # newer than the table: its newest fields
    assert set(cfg) == set(fields.fields_of(fields.RELEASES[-1])) and cfg["peft_version"] == "0.22.0.dev0"
