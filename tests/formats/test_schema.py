"""The JSON Schemas in schemas/ and the cross-shape rules of mptkit._schema."""

import json

import pytest
from jsonschema import Draft202012Validator

from mptkit import _schema as schema
from mptkit._schema import (
    check,
    check_config,
    check_metadata,
    check_tensors,
    config_shape_problems,
    cross_shape_problems,
)
from tests.support import ROOT


def t(dtype, *shape):
    return {"dtype": dtype, "shape": list(shape)}


def bank(T=4, N=6, r=2, d=8, dtype="F32"):
    return {
        "prompt_embeddings": t(dtype, N, d),
        "prefix_task_cols": t(dtype, T, N, r),
        "prefix_task_rows": t(dtype, T, r, d),
    }


# -- the schema files ----------------------------------------------------------------------------
def test_every_schema_file_is_a_valid_2020_12_schema_and_is_used():
    files = sorted(p.name for p in (ROOT / "schemas").glob("*.json"))
    assert files == sorted(schema.SCHEMA_FILES.values())
    for kind, name in schema.SCHEMA_FILES.items():
        doc = json.loads((ROOT / "schemas" / name).read_text(encoding="utf-8"))
        assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert doc["$id"].endswith("/" + name)
        Draft202012Validator.check_schema(doc)
        assert schema.load_schema(kind) == doc


def test_schema_dir_is_the_repository_schemas_in_a_checkout():
    assert (schema.schema_dir() / "bank.schema.json").is_file()


def test_peft_config_fields_validate():
    """A config as PEFT's own MultitaskPromptTuningConfig serialises it, plus an unknown field."""
    from peft import MultitaskPromptTuningConfig

    cfg = MultitaskPromptTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=5,
        num_tasks=3,
        num_ranks=2,
        token_dim=24,
        num_transformer_submodules=1,
    )
    d = json.loads(json.dumps(cfg.to_dict(), default=str))
    d["some_future_field"] = {"x": 1}
    assert check_config(d) == []


# -- tensors ---------------------------------------------------------------------------------------
def test_valid_bank_shared_and_task_dicts():
    assert check_tensors(bank()) == []
    assert check_tensors({"prompt_embeddings": t("BF16", 6, 8)}) == []  # shared-only
    one = bank(T=1)
    assert check_tensors(one, "task") == []
    problems = check_tensors(bank(T=2), "task")
    assert problems and all("expected 1" in p for p in problems)
    for dtype in ("F32", "BF16", "F16", "F64"):
        assert check_tensors(bank(dtype=dtype)) == []


@pytest.mark.parametrize(
    "shapes, words",
    [
        (dict(pe=(6, 8), cols=(4, 5, 2), rows=(4, 2, 8)), ["prompt length N differs", "N=6", "N=5"]),
        (dict(pe=(6, 8), cols=(4, 6, 2), rows=(4, 3, 8)), ["rank r differs", "r=2", "r=3"]),
        (dict(pe=(6, 8), cols=(4, 6, 2), rows=(4, 2, 9)), ["hidden size d differs", "d=8", "d=9"]),
        (dict(pe=(6, 8), cols=(4, 6, 2), rows=(3, 2, 8)), ["task count T differs", "has 4", "has 3"]),
    ],
)
def test_each_cross_shape_rule(shapes, words):
    tensors = {
        "prompt_embeddings": t("F32", *shapes["pe"]),
        "prefix_task_cols": t("F32", *shapes["cols"]),
        "prefix_task_rows": t("F32", *shapes["rows"]),
    }
    problems = check_tensors(tensors)
    assert len(problems) == 1, problems
    for w in words:
        assert w in problems[0]


def test_all_cross_shape_problems_are_listed():
    tensors = {
        "prompt_embeddings": t("F32", 6, 8),
        "prefix_task_cols": t("F32", 4, 5, 2),
        "prefix_task_rows": t("F32", 3, 3, 9),
    }
    problems = cross_shape_problems(tensors)
    assert len(problems) == 4
    assert [p.split(" differs")[0] for p in problems] == ["task count T", "rank r", "prompt length N", "hidden size d"]


@pytest.mark.parametrize(
    "name, shape, words",
    [
        ("prompt_embeddings", (6,), ["prompt_embeddings.shape", "expected 2 dimensions, found 1"]),
        ("prompt_embeddings", (6, 8, 1), ["prompt_embeddings.shape", "expected 2 dimensions, found 3"]),
        ("prefix_task_cols", (4, 6), ["prefix_task_cols.shape", "expected 3 dimensions, found 2"]),
        ("prefix_task_rows", (4, 2, 8, 1), ["prefix_task_rows.shape", "expected 3 dimensions, found 4"]),
        ("prefix_task_cols", (4, 0, 2), ["prefix_task_cols.shape[1]", ">= 1, found 0"]),
        ("prompt_embeddings", (0, 8), ["prompt_embeddings.shape[0]", ">= 1, found 0"]),
        ("prefix_task_rows", (4, 2, 0), ["prefix_task_rows.shape[2]", ">= 1, found 0"]),
    ],
)
def test_tensor_rank_and_positivity(name, shape, words):
    tensors = bank()
    tensors[name] = t("F32", *shape)
    problems = check_tensors(tensors)
    assert any(all(w in p for w in words) for p in problems), problems


def test_dtype_rules():
    tensors = bank()
    tensors["prefix_task_rows"] = t("I64", 4, 2, 8)
    (p,) = check_tensors(tensors)
    assert "prefix_task_rows.dtype" in p and '"I64"' in p and '"F32"' in p
    tensors = bank()
    tensors["prompt_embeddings"] = t("F64", 6, 8)
    (p,) = check_tensors(tensors)
    assert "different dtypes" in p and "prompt_embeddings F64" in p and "prefix_task_cols F32" in p


def test_every_missing_key_is_named_once():
    assert check_tensors({}) == [
        "tensor 'prompt_embeddings' is missing",
        "tensor 'prefix_task_cols' is missing",
        "tensor 'prefix_task_rows' is missing",
    ]
    tensors = bank()
    del tensors["prefix_task_rows"]
    assert check_tensors(tensors) == ["tensor 'prefix_task_rows' is missing"]
    tensors = bank()
    del tensors["prompt_embeddings"]
    assert check_tensors(tensors) == ["tensor 'prompt_embeddings' is missing"]


def test_every_extra_key_is_named():
    tensors = bank()
    tensors["extra"] = t("F32", 1)
    tensors["base_model.model.prompt_embeddings"] = t("F32", 6, 8)
    (p,) = check_tensors(tensors)
    assert "unexpected tensors" in p and "'extra'" in p and "'base_model.model.prompt_embeddings'" in p
    assert "expected only prefix_task_cols, prefix_task_rows, prompt_embeddings" in p


# -- config ----------------------------------------------------------------------------------------
def peft_like_config(**changes):
    cfg = {
        "peft_type": "MULTITASK_PROMPT_TUNING",
        "task_type": "SEQ_2_SEQ_LM",
        "num_virtual_tokens": 3,
        "num_transformer_submodules": 2,
        "token_dim": 8,
        "num_tasks": 4,
        "num_ranks": 2,
    }
    cfg.update(changes)
    return cfg


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("num_tasks", 5, ["field num_tasks is 5", "prefix_task_cols [4, 6, 2] has T=4"]),
        ("num_ranks", 1, ["field num_ranks is 1", "r=2"]),
        ("token_dim", 16, ["field token_dim is 16", "prompt_embeddings [6, 8] has d=8"]),
        ("num_virtual_tokens", 4, ["4 x 2 = 8", "N=6"]),
        ("num_transformer_submodules", 1, ["3 x 1 = 3", "N=6"]),
    ],
)
def test_each_config_shape_rule(field, value, words):
    assert config_shape_problems(peft_like_config(), bank()) == []
    problems = config_shape_problems(peft_like_config(**{field: value}), bank())
    assert len(problems) == 1, problems
    for w in words:
        assert w in problems[0]


def test_config_submodules_default_from_task_type():
    cfg = peft_like_config(num_transformer_submodules=None)
    assert config_shape_problems(cfg, bank()) == []  # seq2seq: 2 x 3 = 6
    cfg = peft_like_config(num_transformer_submodules=None, task_type="CAUSAL_LM")
    assert "3 x 1 = 3" in config_shape_problems(cfg, bank())[0]


def test_config_shape_rules_survive_tensors_of_the_wrong_rank():
    """Regression: a 2-D prefix_task_cols with a config made an IndexError (a traceback)."""
    tensors = bank()
    tensors["prefix_task_cols"] = t("F32", 4, 12)
    tensors["prompt_embeddings"] = t("F32", 48)
    assert config_shape_problems(peft_like_config(), tensors) == []


@pytest.mark.parametrize(
    "change, words",
    [
        ({"num_tasks": "x"}, ["field 'num_tasks'", "expected integer", '"x"']),
        ({"num_ranks": 0}, ["field 'num_ranks'", ">= 1", "found 0"]),
        ({"peft_type": "LORA"}, ["field 'peft_type'", '"MULTITASK_PROMPT_TUNING"', '"LORA"']),
        ({"task_type": "TRANSLATION"}, ["field 'task_type'", '"TRANSLATION"']),
        ({"prompt_tuning_init": "MAGIC"}, ["field 'prompt_tuning_init'", '"MAGIC"']),
    ],
)
def test_config_schema_problems(change, words):
    (p,) = check_config(peft_like_config(**change))
    for w in words:
        assert w in p, p


def test_config_missing_fields_each_named():
    cfg = peft_like_config()
    del cfg["token_dim"], cfg["num_tasks"]
    assert sorted(check_config(cfg)) == ["field 'num_tasks' is missing", "field 'token_dim' is missing"]
    assert check_config([1, 2]) == ["value: expected object, found [1, 2]"]


# -- metadata --------------------------------------------------------------------------------------
def test_metadata_valid():
    meta = {
        "format": "pt",
        "other": "kept",
        "mptkit.task_names": json.dumps(["sst2", "mnli", "qa-v2", "négatif"]),
        "mptkit.provenance": json.dumps(
            [{"operation": "slice", "arguments": {"tasks": "0,1"}, "sources": [{"name": "x", "sha256": "a" * 64}]}]
        ),
        "mptkit.config": json.dumps({"task_type": "CAUSAL_LM", "num_virtual_tokens": 6}),
    }
    assert check_metadata(meta) == []


def test_metadata_non_string_value():
    (p,) = check_metadata({"format": "pt", "epoch": 5})
    assert p == "__metadata__ key 'epoch': expected string, found 5"


@pytest.mark.parametrize(
    "names, words",
    [
        ("notjson", ["must hold JSON text", '"notjson"']),
        ('{"a": 1}', ["expected array"]),
        (json.dumps(["a", "a"]), ["different", '"a" more than once']),
        (json.dumps(["a,b"]), ["item 0", '"a,b" is not allowed', "','"]),
        (json.dumps(["x", "12"]), ["item 1", '"12" is not allowed', "digits"]),
        (json.dumps(["3-5"]), ["item 0", '"3-5" is not allowed']),
        (json.dumps(["ok", " pad"]), ["item 1", '" pad" is not allowed']),
        (json.dumps([""]), ["item 0", "must not be empty"]),
        (json.dumps(["a\nb"]), ["item 0", "not allowed"]),
        (json.dumps(["a", 5]), ["item 1", "expected string, found 5"]),
        ("[" * 100000, ["must hold JSON text"]),
    ],
)
def test_task_names_metadata(names, words):
    problems = check_metadata({"format": "pt", "mptkit.task_names": names})
    assert problems, names
    assert all(p.startswith("__metadata__ key 'mptkit.task_names'") for p in problems)
    assert any(all(w in p for w in words) for p in problems), problems


def test_metadata_lone_surrogate_is_a_problem_not_a_crash_later():
    (p,) = check_metadata({"mptkit.task_names": '["\\ud800"]'})
    assert "lone UTF-16 surrogate" in p


def test_provenance_and_config_metadata():
    (p,) = check_metadata({"mptkit.provenance": json.dumps([{"operation": "x", "sources": [{"sha256": "zz"}]}])})
    assert "mptkit.provenance" in p and "item 0.sources[0].sha256" in p and '"zz"' in p
    (p,) = check_metadata({"mptkit.provenance": json.dumps([{"arguments": {}}])})
    assert "'operation' is missing in item 0" in p
    (p,) = check_metadata({"mptkit.config": json.dumps({"num_virtual_tokens": 0})})
    assert "mptkit.config" in p and "num_virtual_tokens" in p and ">= 1" in p


def test_messages_stay_short_for_huge_values():
    p = check("metadata", {"k": ["x" * 100000]}, subject="__metadata__ key")[0]
    assert len(p) < 300
    p = check("bank", {"prompt_embeddings": t("F32", *([1] * 100000))}, subject="tensor")
    assert all(len(x) < 300 for x in p)


def test_a_name_of_non_ascii_digits_is_a_name_not_an_index():
    """Regression: "²".isdigit() is True but int("²") fails; such a name crashed task selection."""
    from mptkit import select_tasks
    from tests.support.banks import memory_bank

    assert check_metadata({"mptkit.task_names": json.dumps(["a", "²", "c"])}) == []
    bank = memory_bank(T=3, names=["a", "²", "c"])
    assert select_tasks(bank, "²") == [1]
    assert select_tasks(bank, "2,0-1") == [2, 0, 1]
    with pytest.raises(Exception, match="unknown task '٣'"):
        select_tasks(bank, "٣")
