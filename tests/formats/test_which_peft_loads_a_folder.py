"""``inspect`` and ``validate`` say which PEFT releases load an adapter folder (the oldest that knows
every field it has; which ignore the others with a warning, which refuse them), warn when a field
would break the release the config's own peft_version names, and say which releases can use a bare
file as prompt_tuning_init_state_dict_path."""

from __future__ import annotations

import json
import shutil

import pytest

from mptkit import _peftfields as fields
from tests.support.commands import run_mptkit

EXAMPLE = (
    "PEFT 0.18.0 and later (needs peft_version 0.18.0, modules_to_save 0.17.0, tokenizer_kwargs 0.7.0); "
    "0.14.0 to 0.17.1 load it ignoring the fields they lack, with a warning; 0.6.0 to 0.13.2 refuse it (TypeError)"
)


def peft_lines(stderr: str) -> str:
    """stderr without the serving warning every MPT adapter folder gets (tests/cli test it): what
    is left is about PEFT releases."""
    return "".join(x for x in stderr.splitlines(keepends=True) if not x.startswith("mptkit: warning: engines that"))


def with_config(tmp_path, src, **changes):
    folder = tmp_path / "bank"
    shutil.copytree(src, folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg.update(changes)
    cfg = {k: v for k, v in cfg.items() if v != "DROP"}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


def test_inspect_and_validate_say_which_releases_load_it(example_bank):
    r = run_mptkit("inspect", example_bank)
    assert f"  loads in         {EXAMPLE}\n" in r.stdout
    r = run_mptkit("validate", example_bank)
    assert r.stdout == f"{example_bank}: valid (bank)\n  loads in {EXAMPLE}\n" and peft_lines(r.stderr) == ""
    info = json.loads(run_mptkit("inspect", example_bank, "--json").stdout)["peft_versions"]
    assert info == {
        "clean": "0.18.0",
        "needs": {"tokenizer_kwargs": "0.7.0", "modules_to_save": "0.17.0", "peft_version": "0.18.0"},
        "ignores": ["0.14.0", "0.17.1"],
        "refuses": ["0.6.0", "0.13.2"],
    }


@pytest.mark.parametrize(
    "changes, says",
    [
        ({"modules_to_save": "DROP", "peft_version": "DROP"}, "PEFT 0.7.0 and later (needs tokenizer_kwargs 0.7.0); "
         "0.6.0 to 0.6.2 refuse it (TypeError)"),
        ({"modules_to_save": "DROP", "peft_version": "DROP", "tokenizer_kwargs": "DROP"}, "PEFT 0.6.0 and later"),
        ({"peft_version": "DROP"}, "PEFT 0.17.0 and later (needs modules_to_save 0.17.0, tokenizer_kwargs 0.7.0); "
         "0.14.0 to 0.16.0 load it ignoring the fields they lack, with a warning; "
         "0.6.0 to 0.13.2 refuse it (TypeError)"),
        ({"lora_alpha": 8}, "no PEFT release knows lora_alpha; 0.14.0 to 0.21.2 load it ignoring the fields they "
         "lack, with a warning; 0.6.0 to 0.13.2 refuse it (TypeError)"),
    ],
)  # fmt: skip
def test_the_oldest_release_that_knows_every_field(example_bank, tmp_path, changes, says):
    folder = with_config(tmp_path, example_bank, **changes)
    assert run_mptkit("validate", folder).stdout.splitlines()[1] == f"  loads in {says}"


def test_a_field_that_breaks_the_release_peft_version_names_is_a_warning(example_bank, tmp_path):
    folder = with_config(tmp_path, example_bank, peft_version="0.13.2")  # a hand edit: 0.13.2 never wrote it
    r = run_mptkit("validate", folder)
    assert r.returncode == 0
    assert peft_lines(r.stderr) == (
        f"mptkit: warning: {folder / 'adapter_config.json'}: peft_version says 0.13.2, but PEFT 0.13.2 refuses "
        "modules_to_save, peft_version: a field it does not know; 'mptkit convert ... --peft-version 0.13.2' "
        "writes a config it loads\n"
    )
    folder = with_config(tmp_path / "b", example_bank, peft_version="0.18.1", lora_alpha=8)
    assert "PEFT 0.18.1 ignores (with a warning) lora_alpha" in run_mptkit("validate", folder).stderr
    # what convert --peft-version writes loads in that release, and says nothing more
    out = tmp_path / "fixed"
    assert run_mptkit("convert", folder, "--peft-version", "0.13.2", "-o", out).returncode == 0
    r = run_mptkit("validate", out)
    assert peft_lines(r.stderr) == ""
    assert r.stdout.splitlines()[1] == (
        "  loads in PEFT 0.7.0 and later (needs tokenizer_kwargs 0.7.0); 0.6.0 to 0.6.2 refuse it (TypeError)"
    )


def test_a_bare_file_says_which_releases_read_it_as_an_init_file(example_bank, tmp_path):
    st, pt = tmp_path / "t.safetensors", tmp_path / "t.pt"
    assert run_mptkit("derive", example_bank, "--mode", "exact", "--task", "1", "-o", st).returncode == 0
    r = run_mptkit("inspect", st)
    assert (
        "  as init file     PEFT 0.11.0 and later; 0.9.0 to 0.10.0 only where torch.load reads .safetensors "
        "(torch 2.13 does); 0.6.0 to 0.8.2 cannot use any init file (AttributeError, fixed in 0.9.0) "
        "(prompt_tuning_init_state_dict_path)\n"
    ) in r.stdout
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(str(st)), pt)  # a pickle: every release from 0.9.0 torch.loads it
    info = json.loads(run_mptkit("inspect", pt, "--json").stdout)
    assert info["init_file"] == {"reads": ["0.9.0", "0.21.2"], "torch_load": None, "broken": ["0.6.0", "0.8.2"]}
    assert "peft_versions" not in info
    assert fields.init_file(True)["torch_load"] == ["0.9.0", "0.10.0"]
