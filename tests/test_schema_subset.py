"""mptkit._jsonschema_subset: the schemas in schemas/ checked without importing jsonschema, with the
errors jsonschema reports (proved here against jsonschema itself), and jsonschema used instead when a
schema holds a keyword the interpreter does not know."""

import copy
import json
import math
import struct
from collections import Counter
from pathlib import Path

import pytest
from bankutil import run_mptkit
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from mptkit import _jsonschema_subset as subset
from mptkit import schema

ROOT = Path(__file__).resolve().parent.parent

#: every (kind, pointer) mptkit validates against: check_tensors, check_config, check_metadata, edit
TARGETS = [("bank", ""), ("task", ""), ("shared", ""), ("adapter_config", ""), ("metadata", ""),
           ("metadata", "/$defs/task_names"), ("metadata", "/$defs/provenance"), ("metadata", "/$defs/config")]


def errors(kind, pointer, instance):
    """(ours, jsonschema's) errors, each in check()'s order (a stable sort by path)."""
    docs, ref = schema.documents(), schema.schema_ref(kind, pointer)
    order = lambda e: list(map(str, e.absolute_path))  # noqa: E731  (the key check() sorts with)
    ours = sorted(subset.Validator(docs, ref).iter_errors(instance), key=order)
    theirs = sorted(schema.jsonschema_validator(docs, ref).iter_errors(instance), key=order)
    return ours, theirs


def same(a, b):
    return a is b or a == b


def assert_same_errors(kind, pointer, instance):
    ours, theirs = errors(kind, pointer, instance)
    key = lambda e: (e.validator, tuple(e.absolute_path))  # noqa: E731
    assert Counter(map(key, ours)) == Counter(map(key, theirs)), instance
    # and every field mptkit reads, in the order check() reports them
    for a, b in zip(ours, theirs):
        assert (a.validator, list(a.absolute_path), a.message) == (b.validator, list(b.absolute_path), b.message)
        assert same(a.validator_value, b.validator_value) and same(a.schema, b.schema)
        assert same(a.instance, b.instance)
    subject = "__metadata__ key" if kind == "metadata" else "field"
    assert [schema._describe(e, subject) for e in ours] == [schema._describe(e, subject) for e in theirs]
    return ours


# -- generated instances near the schemas --------------------------------------------------------
SPECIAL = [0, 1, -1, 2, 3, 2**31, 2**63, 2**64 + 1, -(2**70), 10**40, 1.0, 3.0, 0.0, -0.0, 2.5, -1.0, 1e300,
           float("inf"), float("-inf"), float("nan"), True, False, None, "", "x", "1", "3.0", "F32", "BF16",
           "f32", "I32", "BOOL", "F8_E4M3", "SEQ_2_SEQ_LM", "CAUSAL_LM", "seq_cls", "MULTITASK_PROMPT_TUNING",
           "RANDOM", [], {}, [1], [1, 2], [1, 2, 3], [1, 1.0], [True, 1], [[1], [True], [1]], {"a": 1}]
scalars = (st.sampled_from(SPECIAL) | st.none() | st.booleans() | st.integers() | st.integers(-2, 5)
           | st.floats() | st.text(max_size=6))
keys = st.sampled_from(["dtype", "shape", "data_offsets", "prompt_embeddings", "prefix_task_cols", "prefix_task_rows",
                        "__metadata__", "format", "mptkit.task_names", "mptkit.provenance", "mptkit.config",
                        "peft_type", "task_type", "num_tasks", "num_ranks", "token_dim", "num_virtual_tokens",
                        "operation", "arguments", "sources", "sha256", "name", "1", ""]) | st.text(max_size=5)
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(keys, c, max_size=4),
                           max_leaves=10)
odd = st.sampled_from(SPECIAL) | json_values


def twins(v) -> list:
    """Values a validator could mistake for ``v``: 1 vs 1.0 vs true vs "1", a name with a newline."""
    if isinstance(v, bool):
        return [int(v), float(v), not v, str(v).lower()]
    if isinstance(v, int):
        return [float(v), True, False, str(v), -v, v + 2**64, v + 0.5, [v]]
    if isinstance(v, str):
        return [v.lower(), v + "\n", " " + v, v + " ", v + "\x00", v * 40, v + "😀", "", [v], None]
    return [None]


@st.composite
def mutated(draw, value):
    """``value`` with parts replaced by odd values or near twins, removed, added or repeated."""
    roll = draw(st.integers(0, 99))
    if roll < 5:
        return draw(odd)
    if roll < 30 and not isinstance(value, (dict, list)):
        return draw(st.sampled_from(twins(value)))
    if isinstance(value, dict):
        out = {k: draw(mutated(v)) for k, v in value.items() if draw(st.integers(0, 14))}
        if not draw(st.integers(0, 5)):
            out[draw(keys)] = draw(odd)
        return out
    if isinstance(value, list):
        out = [draw(mutated(v)) for v in value]
        how = draw(st.integers(0, 9))
        if how == 0 and out:
            out.pop(draw(st.integers(0, len(out) - 1)))
        elif how == 1:
            out.insert(draw(st.integers(0, len(out))), draw(odd))
        elif how == 2 and out:
            out.append(out[draw(st.integers(0, len(out) - 1))])
        return out
    return value


dims = st.integers(1, 5)
dtypes = st.sampled_from(["F32", "BF16", "F16", "F64"])


@st.composite
def headers(draw, shared_only=st.booleans()):
    """A tensor header of a bank (T = 1 half the time) or a shared-only dict, with data offsets."""
    T, N, r, d, dtype = draw(st.sampled_from([1, 1, 2, 3])), draw(dims), draw(dims), draw(dims), draw(dtypes)
    shapes = {"prompt_embeddings": [N, d], "prefix_task_cols": [T, N, r], "prefix_task_rows": [T, r, d]}
    if draw(shared_only):
        shapes = {"prompt_embeddings": [N, d]}
    out, at = {}, 0
    for name, shape in shapes.items():
        size = 4 * math.prod(shape)
        out[name] = {"dtype": dtype, "shape": shape, "data_offsets": [at, at + size]}
        at += size
    return out


names = st.sampled_from(["sst2", "mnli", "a b", "é", "名前", "😀", "x" * 200, "😀" * 200, "x" * 201, " lead", "trail ",
                         "a,b", "x=y", "12", "3-5", "3-", "-3", "0", "a\tb", "a\nb", "tail\n", "a\x7fb", "a\x00",
                         "\u2028", "\u00a0x", "x\u00a0", "", " "]) | st.text(max_size=8)
sha = st.sampled_from(["0" * 64, "ab" * 32, "AB" * 32, "0" * 63, "0" * 65, "0" * 64 + "\n", "g" * 64, ""])
provenance = st.lists(st.fixed_dictionaries(
    {"operation": st.sampled_from(["derive", "merge", "", "slice"]),
     "arguments": st.dictionaries(st.text(max_size=4), json_values, max_size=3),
     "sources": st.lists(st.fixed_dictionaries({"name": names, "sha256": sha}), max_size=2)},
    optional={"mptkit_version": st.sampled_from(["0.1.0", ""])}), max_size=3)
hints = st.fixed_dictionaries({}, optional={
    "task_type": st.sampled_from(["SEQ_2_SEQ_LM", "CAUSAL_LM", "SEQ_CLS", None, "seq_2_seq_lm"]),
    "num_virtual_tokens": st.integers(-1, 20), "num_transformer_submodules": st.sampled_from([1, 2, 0, None]),
    "base_model_name_or_path": st.sampled_from(["t5-small", None, 3]), "num_layers": st.sampled_from([2, None, 2.0]),
    "num_attention_heads": st.sampled_from([4, None, "4"])})
config_fields = {
    "peft_type": st.sampled_from(["MULTITASK_PROMPT_TUNING", "PROMPT_TUNING"]),
    "task_type": st.sampled_from(["SEQ_2_SEQ_LM", "CAUSAL_LM", "FEATURE_EXTRACTION", None, "LM"]),
    "num_virtual_tokens": dims, "token_dim": dims, "num_tasks": dims, "num_ranks": dims,
    "num_transformer_submodules": st.sampled_from([1, 2, None]), "num_layers": st.sampled_from([2, None]),
    "num_attention_heads": st.sampled_from([4, None]),
    "prompt_tuning_init": st.sampled_from(["TEXT", "RANDOM", "AVERAGE_SOURCE_TASKS", "EXACT_SOURCE_TASK",
                                           "ONLY_SOURCE_SHARED", "random"]),
    "prompt_tuning_init_state_dict_path": st.sampled_from([None, "bank.safetensors"]),
    "prompt_tuning_init_task": st.sampled_from([0, 1, None]), "prompt_tuning_init_text": st.sampled_from([None, "x"]),
    "tokenizer_name_or_path": st.sampled_from([None, "t5-small"]), "tokenizer_kwargs": st.sampled_from([None, {}]),
    "base_model_name_or_path": st.sampled_from([None, "t5-small"]), "revision": st.sampled_from([None, "main"]),
    "inference_mode": st.booleans(), "peft_version": st.sampled_from(["0.21.2"]),
    "auto_mapping": st.sampled_from([None, {"base_model_class": "T5"}]),
    "modules_to_save": st.sampled_from([None, [], ["classifier"]]),
}
REQUIRED = ("peft_type", "task_type", "num_virtual_tokens", "token_dim", "num_tasks", "num_ranks")
configs = st.fixed_dictionaries({k: config_fields[k] for k in REQUIRED},
                                optional={k: v for k, v in config_fields.items() if k not in REQUIRED})
metadata = st.fixed_dictionaries({}, optional={
    "format": st.sampled_from(["pt", 1]), "mptkit.task_names": st.lists(names, max_size=3).map(json.dumps),
    "mptkit.provenance": provenance.map(json.dumps), "mptkit.config": hints.map(json.dumps),
    "other": st.sampled_from(["x", 1, None, ["a"], {"k": "v"}, True])})

STRATEGIES = {
    ("bank", ""): headers(st.sampled_from([False] * 7 + [True])), ("task", ""): headers(st.just(False)),
    ("shared", ""): headers(st.sampled_from([True] * 3 + [False])), ("adapter_config", ""): configs,
    ("metadata", ""): metadata, ("metadata", "/$defs/task_names"): st.lists(names, max_size=5),
    ("metadata", "/$defs/provenance"): provenance, ("metadata", "/$defs/config"): hints,
}


@pytest.mark.parametrize("kind, pointer", TARGETS)
@settings(max_examples=300)
@given(data=st.data())
def test_the_interpreter_reports_what_jsonschema_reports(kind, pointer, data):
    base = data.draw(STRATEGIES[(kind, pointer)], label="valid-ish")
    instance = data.draw(st.one_of(st.just(base), mutated(base), mutated(base), json_values), label="instance")
    assert_same_errors(kind, pointer, instance)


@pytest.mark.parametrize("kind, pointer, instance, expected", [
    ("bank", "/$defs/dim", 3.0, []),  # an integral float is an integer
    ("bank", "/$defs/dim", True, ["type"]),  # a bool is not
    ("bank", "/$defs/dim", 2**80, []),
    ("bank", "/$defs/dim", 0, ["minimum"]),
    ("bank", "/$defs/dtype", "f32", ["enum"]),
    ("task", "", {"prompt_embeddings": {"dtype": "F32", "shape": [2, 3]},
                  "prefix_task_cols": {"dtype": "F32", "shape": [1.0, 2, 1]},
                  "prefix_task_rows": {"dtype": "F32", "shape": [True, 1, 3]}}, ["const", "type"]),
    ("metadata", "/$defs/task_names", ["a", "b", "a"], ["uniqueItems"]),
    ("metadata", "/$defs/task_names", ["x" * 200, "😀" * 200], []),  # lengths in code points
    ("metadata", "/$defs/task_names", ["😀" * 201], ["maxLength"]),
    ("metadata", "/$defs/task_names", ["tail\n", "3-5", "", "a,b"], ["pattern", "pattern", "minLength", "pattern"]),
    ("metadata", "/$defs/task_names", [1, 1.0], ["type", "type", "uniqueItems"]),  # 1 == 1.0 in JSON
    ("metadata", "/$defs/task_names", [True, 1], ["type", "type"]),  # true != 1
    # jsonschema compares only neighbours after sorting: [1] and [1] are not neighbours here
    ("metadata", "/$defs/task_names", [[1], [True], [1]], ["type", "type", "type"]),
    ("metadata", "", {"format": "pt", "x": 1, "y": None}, ["type", "type"]),
    ("shared", "", {"prompt_embeddings": {"dtype": "F32", "shape": [2, 3]}, "b": 1}, ["additionalProperties"]),
    ("adapter_config", "", {}, ["required"] * 6),
])
def test_chosen_cases(kind, pointer, instance, expected):
    assert sorted(e.validator for e in assert_same_errors(kind, pointer, instance)) == sorted(expected)


def test_check_messages_are_unchanged():
    assert schema.check_tensors({"prompt_embeddings": {"dtype": "F8", "shape": [1, 2, 3]}, "x": {}}, "shared") == [
        "unexpected tensor 'x'; expected only prompt_embeddings",
        'prompt_embeddings.dtype: expected one of "F32", "BF16", "F16", "F64", found "F8"',
        "prompt_embeddings.shape: expected 2 dimensions, found 3 ([1, 2, 3])"]
    assert schema.check("metadata", ["a", "a", " b"], pointer="/$defs/task_names")[0] == (
        "value: entries must all be different, found \"a\" more than once")


# -- the schema files, and when the interpreter stands aside ----------------------------------------
def test_every_schema_file_is_a_2020_12_schema_the_interpreter_covers():
    for name in schema.SCHEMA_FILES.values():
        Draft202012Validator.check_schema(json.loads((ROOT / "schemas" / name).read_text(encoding="utf-8")))
    assert subset.unsupported(schema.documents()) is None
    assert all(isinstance(schema._validator(kind, pointer), subset.Validator) for kind, pointer in TARGETS)


def _docs_with(change):
    docs = copy.deepcopy(schema.documents())
    change(docs[schema.schema_ref("adapter_config")], docs[schema.schema_ref("bank")])
    return docs


@pytest.mark.parametrize("change, why", [
    (lambda cfg, bank: cfg["properties"]["num_tasks"].update(multipleOf=2), "keyword multipleOf"),
    (lambda cfg, bank: bank["$defs"].update(x={"$anchor": "x"}), "keyword $anchor"),
    (lambda cfg, bank: bank["$defs"]["shape2"].update(items=True), "a boolean schema"),
    (lambda cfg, bank: bank["$defs"]["dim"].update(type="int"), "type 'int'"),
    (lambda cfg, bank: bank["$defs"]["dim"].update({"$ref": "#/$defs/nothing"}), "$ref '#/$defs/nothing'"),
    (lambda cfg, bank: bank["$defs"]["dim"].update({"$ref": "#x"}), "$ref '#x'"),
    (lambda cfg, bank: bank["$defs"]["dim"].update({"$ref": "https://elsewhere.invalid/s.json"}), "$ref 'https"),
    (lambda cfg, bank: bank["$defs"]["dim"].update({"$id": "dim.json"}), "$id 'dim.json'"),
    (lambda cfg, bank: bank.update(examples=[{"multipleOf": 2}]) or bank["$defs"]["dim"].update({"$ref": "#/examples/0"}),
     "$ref '#/examples/0' is not a schema walked here"),
    (lambda cfg, bank: cfg.update({"$schema": "http://json-schema.org/draft-07/schema#"}), "$schema"),
])
def test_schemas_the_interpreter_does_not_cover_go_to_jsonschema(change, why):
    docs = _docs_with(change)
    assert why in subset.unsupported(docs)
    assert isinstance(schema.make_validator(docs, schema.schema_ref("adapter_config")), Draft202012Validator)


def test_check_uses_jsonschema_for_a_keyword_added_later(monkeypatch):
    real = schema.load_schema

    def load(kind):
        doc = copy.deepcopy(real(kind))
        if kind == "adapter_config":
            doc["properties"]["num_tasks"]["multipleOf"] = 2
        return doc

    config = {"peft_type": "MULTITASK_PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 4,
              "token_dim": 8, "num_tasks": 3, "num_ranks": 1}
    assert schema.check_config(config) == []
    monkeypatch.setattr(schema, "load_schema", load)
    schema._validator.cache_clear()
    try:
        assert isinstance(schema._validator("adapter_config"), Draft202012Validator)
        assert isinstance(schema._validator("bank"), Draft202012Validator)  # all or nothing
        assert schema.check_config(config) == ["field 'num_tasks': 3 is not a multiple of 2"]
        assert schema.check_config(dict(config, num_tasks=4, token_dim=0)) == [
            "field 'token_dim': expected a number >= 1, found 0"]
    finally:
        schema._validator.cache_clear()


# -- the CLI does without jsonschema -------------------------------------------------------------
def _imported(stderr: str) -> set:
    return {line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def _broken_file(path: Path) -> Path:
    """A safetensors file whose shared prompt has 3 dimensions and whose task names repeat."""
    header = {"__metadata__": {"format": "pt", "mptkit.task_names": json.dumps(["a", "a"])},
              "prompt_embeddings": {"dtype": "F32", "shape": [2, 2, 2], "data_offsets": [0, 32]},
              "prefix_task_cols": {"dtype": "F32", "shape": [2, 2, 1], "data_offsets": [32, 48]},
              "prefix_task_rows": {"dtype": "F32", "shape": [2, 1, 2], "data_offsets": [48, 64]}}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(64))
    return path


@pytest.mark.parametrize("command", ["inspect", "validate"])
def test_inspect_and_validate_do_not_import_jsonschema(command, tmp_path):
    good = run_mptkit(command, ROOT / "examples" / "bank", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert good.returncode == 0, good.stderr[-2000:]
    bad = run_mptkit(command, _broken_file(tmp_path / "broken.safetensors"), env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert bad.returncode == 2
    assert "prompt_embeddings.shape: expected 2 dimensions, found 3 ([2, 2, 2])" in bad.stderr
    assert "entries must all be different, found \"a\" more than once" in bad.stderr
    for run in (good, bad):
        modules = _imported(run.stderr)
        assert "mptkit.schema" in modules and "mptkit._jsonschema_subset" in modules
        assert not {m for m in modules if m.split(".")[0] in ("jsonschema", "referencing", "importlib.metadata")}
        assert "importlib.metadata" not in modules
