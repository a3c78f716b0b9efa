"""One table of PEFT's adapter_config.json fields (mptkit/_peftfields.py): every list of config
fields mptkit uses is derived from it, and it says what the installed PEFT really writes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from mptkit import _peftfields as fields
from mptkit._options import CONFIG_FIELDS
from mptkit.formats import _peft as peft
from tests.support.banks import tiny_base_model

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def peft_writes(kind: str, tmp_path) -> dict:
    """The adapter_config.json the installed PEFT writes for a PROMPT_TUNING or MPT adapter."""
    from peft import MultitaskPromptTuningConfig, PromptTuningConfig, get_peft_model

    cls = MultitaskPromptTuningConfig if kind == fields.MPT else PromptTuningConfig
    model = get_peft_model(tiny_base_model("causal"), cls(task_type="CAUSAL_LM", num_virtual_tokens=4))
    model.save_pretrained(str(tmp_path / kind))
    return json.loads((tmp_path / kind / "adapter_config.json").read_text())


@pytest.mark.parametrize("kind", [fields.MPT, fields.PT])
def test_the_table_has_the_fields_the_installed_peft_writes(kind, tmp_path):
    import peft as peft_pkg

    written = peft_writes(kind, tmp_path)
    assert set(written) == set(fields.fields_of(peft_pkg.__version__, kind))
    assert written["peft_version"] == peft_pkg.__version__


@pytest.mark.parametrize("kind", [fields.MPT, fields.PT])
def test_the_table_has_the_installed_peft_s_defaults(kind):
    from peft import MultitaskPromptTuningConfig, PromptTuningConfig

    cls = MultitaskPromptTuningConfig if kind == fields.MPT else PromptTuningConfig
    theirs = {f.name: f.default for f in dataclasses.fields(cls)}
    ours = fields.defaults(fields.RELEASES[-1], kind)
    assert set(theirs) == set(ours)
    for key, value in ours.items():
        assert theirs[key] == value, key  # enums compare equal to their strings


def test_every_field_list_derives_from_the_table():
    assert tuple(f.key for f in CONFIG_FIELDS) == tuple(k for k, _ in fields.OPTIONS)
    assert {f.key for f in CONFIG_FIELDS} == {"task_type", "num_virtual_tokens", "num_transformer_submodules",
                                            "base_model_name_or_path"}  # fmt: skip
    # a bare file's hints are the table's, and the metadata schema describes exactly those
    meta = json.loads((SCHEMAS / "metadata.schema.json").read_text())["$defs"]["config"]["properties"]
    assert set(meta) == set(fields.HINT_FIELDS)
    cfg = dict.fromkeys(fields.BY_KEY, 1) | {"task_type": "CAUSAL_LM"}
    assert set(peft.config_hints(cfg)) == set(fields.HINT_FIELDS)
    # the adapter_config schema describes every MPT field of the newest release
    schema = json.loads((SCHEMAS / "adapter_config.schema.json").read_text())["properties"]
    assert set(schema) == set(fields.fields_of(fields.RELEASES[-1], fields.MPT))
    assert set(fields.MPT_ONLY) == {"num_tasks", "num_ranks", "prompt_tuning_init_state_dict_path",
                                    "prompt_tuning_init_task"}  # fmt: skip
    assert fields.CLEAN_INIT["prompt_tuning_init"] == "RANDOM"


def test_what_each_release_knows():
    """Facts read from the wheels: MPT from 0.6.0, tokenizer_kwargs from 0.7.0, modules_to_save in
    prompt-learning configs from 0.17.0, peft_version from 0.18.0."""
    base = set(fields.fields_of("0.6.2"))
    assert "tokenizer_kwargs" not in base and "tokenizer_kwargs" in fields.fields_of("0.7.0")
    assert set(fields.fields_of("0.16.0")) - base == {"tokenizer_kwargs"}
    assert set(fields.fields_of("0.17.1")) - set(fields.fields_of("0.16.0")) == {"modules_to_save"}
    assert set(fields.fields_of("0.18.0")) - set(fields.fields_of("0.17.1")) == {"peft_version"}
    # PromptTuningConfig in peft-0.6.0's wheel (peft/config.py, peft/tuners/prompt_tuning/config.py)
    assert set(fields.fields_of("0.6.0", fields.PT)) == {
        "peft_type", "auto_mapping", "base_model_name_or_path", "revision", "task_type", "inference_mode",
        "num_virtual_tokens", "token_dim", "num_transformer_submodules", "num_attention_heads", "num_layers",
        "prompt_tuning_init", "prompt_tuning_init_text", "tokenizer_name_or_path",
    }  # fmt: skip
    assert set(fields.fields_of("0.6.0")) - set(fields.fields_of("0.6.0", fields.PT)) == set(fields.MPT_ONLY)


@pytest.mark.parametrize(
    "version, sentence",
    [
        (
            "0.5.0",
            "--peft-version 0.5.0: PEFT added MULTITASK_PROMPT_TUNING in 0.6.0; older releases cannot load any bank",
        ),
        ("0.13.9", "--peft-version '0.13.9' is not a PEFT release mptkit knows: expected one of 0.6.0 to 0.21.2"),
        ("latest", "--peft-version 'latest' is not a PEFT release mptkit knows"),
    ],
)
def test_an_unknown_or_too_old_release_is_one_sentence(version, sentence):
    with pytest.raises(fields.UsageError) as e:
        fields.check_version(version)
    assert e.value.message.startswith(sentence) and "\n" not in e.value.message
