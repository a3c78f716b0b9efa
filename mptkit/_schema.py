"""The JSON Schemas in ``schemas/`` and the cross-shape rules JSON Schema cannot state.

Every check returns a list of one-sentence problems (empty when valid) so that ``validate`` can
report all of them; callers that want the first raise :class:`~mptkit.errors.InvalidBank`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from ._strictjson import JsonProblem, parse_json

SCHEMA_FILES = {
    "bank": "bank.schema.json",
    "task": "task.schema.json",
    "shared": "shared.schema.json",
    "adapter_config": "adapter_config.schema.json",
    "metadata": "metadata.schema.json",
    "output": "output.schema.json",
    "recipe": "recipe.schema.json",
}
_BASE = "https://mptkit.invalid/schemas/"

#: metadata keys mptkit owns (JSON inside safetensors' string-only metadata)
META_TASK_NAMES = "mptkit.task_names"
META_PROVENANCE = "mptkit.provenance"
META_CONFIG = "mptkit.config"
#: most provenance entries a bank's metadata may list (650,000 once took 690 MB)
MAX_PROVENANCE = 10_000


def schema_dir() -> Path:
    """The folder holding the schema files: inside the installed package (wheel), else the
    repository's top-level ``schemas/`` (editable install or source checkout). A plain path next to
    this module: importlib.resources would cost ~6 ms of start-up and a zipped install has no folder."""
    packaged = Path(__file__).parent / "schemas"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "schemas"


@cache
def load_schema(kind: str) -> dict:
    return json.loads((schema_dir() / SCHEMA_FILES[kind]).read_text(encoding="utf-8"))


def documents() -> dict[str, dict]:
    """Every schema file's contents, by the URI its ``$id`` gives it."""
    return {_BASE + fname: load_schema(k) for k, fname in SCHEMA_FILES.items()}


def schema_ref(kind: str, pointer: str = "") -> str:
    return _BASE + SCHEMA_FILES[kind] + ("#" + pointer if pointer else "")


def _canonical(value):
    """A hashable key equal for values JSON Schema calls equal (1 == 1.0; true != 1)."""
    if isinstance(value, bool) or value is None:
        return ("c", value)
    if isinstance(value, (int, float)):
        return ("n", value)
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, list):
        return ("l", tuple(_canonical(v) for v in value))
    if isinstance(value, dict):
        return ("d", frozenset((k, _canonical(v)) for k, v in value.items()))
    return ("o", repr(value))


def first_duplicate(items: list):
    """``(True, item)`` for the first item equal to an earlier one, else ``(False, None)``: linear
    (jsonschema's own uniqueItems falls back to comparing every pair when the items do not sort,
    which took 92 s for 40,000 names)."""
    seen = set()
    for x in items:
        key = _canonical(x)
        if key in seen:
            return True, x
        seen.add(key)
    return False, None


def _unique_items(validator, unique, instance, schema):
    from jsonschema.exceptions import ValidationError

    if unique and validator.is_type(instance, "array"):
        found, dup = first_duplicate(instance)
        if found:
            yield ValidationError(f"{_show(dup)} is listed more than once")


def _integer_type(checker, value) -> bool:
    """JSON Schema calls 6.0 an integer; PEFT cannot build a layer of 6.0 tokens, so here an
    integer is a JSON number written without a fraction or exponent."""
    return isinstance(value, int) and not isinstance(value, bool)


@cache
def _validator_class():
    from jsonschema import Draft202012Validator, validators

    checker = Draft202012Validator.TYPE_CHECKER.redefine("integer", _integer_type)
    return validators.extend(Draft202012Validator, {"uniqueItems": _unique_items}, type_checker=checker)


def make_validator(docs: dict[str, dict], ref: str):
    """A jsonschema (Draft 2020-12) validator of ``ref`` resolving ``$ref`` among ``docs``
    (jsonschema is imported here, when something is validated), with a strict integer type and a
    linear uniqueItems."""
    from referencing import Registry
    from referencing.jsonschema import DRAFT202012

    # jsonschema picks a referenced document's validator class by its "$schema", which would be the
    # stock Draft 2020-12 class without the two changes above: register the documents without it
    plain = {uri: {k: v for k, v in doc.items() if k != "$schema"} for uri, doc in docs.items()}
    registry = Registry().with_resources((uri, DRAFT202012.create_resource(doc)) for uri, doc in plain.items())
    return _validator_class()({"$ref": ref}, registry=registry)


@cache
def _validator(kind: str, pointer: str = ""):
    return make_validator(documents(), schema_ref(kind, pointer))


def _where(path) -> str:
    parts = list(path)
    if not parts:
        return ""
    out = f"item {parts[0]}" if isinstance(parts[0], int) else str(parts[0])
    for p in parts[1:]:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def _show(value, limit: int = 60) -> str:
    """``value`` as JSON, cut to ``limit`` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _names(names) -> str:
    shown = ", ".join(f"'{_show(n, 80)[1:-1]}'" for n in names[:10])
    return shown + (f" and {len(names) - 10} more" if len(names) > 10 else "")


def _describe(err, subject: str) -> str:
    """One sentence for a jsonschema error: what, where, expected vs found."""
    path = list(err.absolute_path)
    where = _where(path)
    v, found = err.validator, err.instance
    shown = _show(found) if not isinstance(found, (dict, list)) or len(_show(found)) < 60 else type(found).__name__
    if v == "required":
        # one error per missing property: name the one this error is about
        missing = [r for r in err.validator_value if err.message == f"{r!r} is a required property"]
        missing = missing or [r for r in err.validator_value if r not in (found or {})]
        name = _names(missing[:1]) if missing else "?"
        return f"{subject} {name} is missing" if not where else f"{name} is missing in {where}"
    if v == "additionalProperties":
        extra = sorted(set(found) - set(err.schema.get("properties", {})))
        what = f"unexpected {subject}{'s' if len(extra) > 1 else ''} {_names(extra)}"
        return (
            what
            + (f" in {where}" if where else "")
            + (f"; expected only {', '.join(sorted(err.schema.get('properties', {})))}")
        )
    if not where:
        label = "value"
    elif len(path) == 1 and isinstance(path[0], str):
        label = f"{subject} {_names(path)}"
    else:
        label = where
    if v in ("minItems", "maxItems") and where.endswith("shape"):
        n = err.validator_value
        return f"{label}: expected {n} dimensions, found {len(found)} ({_show(found)})"
    if v == "enum":
        allowed = ", ".join(json.dumps(x) for x in err.validator_value)
        return f"{label}: expected one of {allowed}, found {shown}"
    if v == "const":
        return f"{label}: expected {json.dumps(err.validator_value)}, found {shown}"
    if v == "type":
        t = err.validator_value
        t = " or ".join(t) if isinstance(t, list) else t
        return f"{label}: expected {t}, found {shown}"
    if v == "minimum":
        return f"{label}: expected a number >= {err.validator_value}, found {shown}"
    if v == "pattern":
        return f"{label}: {shown} is not allowed ({err.schema.get('description') or 'pattern ' + err.validator_value})"
    if v == "uniqueItems":
        _, dup = first_duplicate(found)
        return f"{label}: entries must all be different, found {_show(dup)} more than once"
    if v == "minLength":
        return f"{label}: must not be empty"
    return f"{label}: {err.message[:200]}"


#: most problems one check lists (a hostile file can hold millions of bad entries)
MAX_PROBLEMS = 20


def check(kind: str, instance: Any, subject: str = "field", pointer: str = "") -> list[str]:
    """Validate ``instance`` against schema ``kind`` (optionally a ``$defs`` pointer inside it)."""
    errors = located_problems(kind, instance, subject, pointer)
    out = [message for _, message in errors[:MAX_PROBLEMS]]
    if len(errors) > MAX_PROBLEMS:
        out.append(f"... and {len(errors) - MAX_PROBLEMS:,} more problems like these")
    return out


def located_problems(kind: str, instance: Any, subject: str = "field", pointer: str = "") -> list[tuple[tuple, str]]:
    """Every schema problem as ``(path, sentence)``: ``path`` leads from ``instance`` to the value at
    fault (an unexpected field's own name ends it), for callers that say where it is (a recipe's line)."""
    errors = sorted(_validator(kind, pointer).iter_errors(instance), key=lambda e: list(map(str, e.absolute_path)))
    out = []
    for e in errors:
        path = tuple(e.absolute_path)
        if e.validator == "additionalProperties" and isinstance(e.instance, dict):
            extra = sorted(set(e.instance) - set(e.schema.get("properties", {})))
            path += tuple(extra[:1])
        out.append((path, _describe(e, subject)))
    return out


def schema_kind(tensors: Mapping[str, Any]) -> str:
    """Which schema a set of tensors is meant to match: a shared-only dict or a bank."""
    return "shared" if set(tensors) == {"prompt_embeddings"} else "bank"


def check_tensors(tensors: Mapping[str, Any], kind: str | None = None) -> list[str]:
    """Schema problems plus the cross-shape rules, for ``{name: {"dtype", "shape"}}``."""
    kind = kind or schema_kind(tensors)
    problems = check(kind, dict(tensors), subject="tensor")
    if problems:
        return problems
    return cross_shape_problems(tensors)


def cross_shape_problems(tensors: Mapping[str, Any]) -> list[str]:
    """N, r, d and T agreeing across tensors; one dtype for all."""
    problems = []
    shp = {k: list(v["shape"]) for k, v in tensors.items()}
    dtypes = {k: v["dtype"] for k, v in tensors.items()}
    if len(set(dtypes.values())) > 1:
        problems.append(
            "tensors have different dtypes ("
            + ", ".join(f"{k} {d}" for k, d in sorted(dtypes.items()))
            + "); a bank holds one dtype"
        )
    pe, cols, rows = shp.get("prompt_embeddings"), shp.get("prefix_task_cols"), shp.get("prefix_task_rows")
    if cols and rows:
        if cols[0] != rows[0]:
            problems.append(
                f"task count T differs: prefix_task_cols has {cols[0]} (shape {cols}), "
                f"prefix_task_rows has {rows[0]} (shape {rows})"
            )
        if cols[2] != rows[1]:
            problems.append(
                f"rank r differs: prefix_task_cols {cols} has r={cols[2]} (last dimension), "
                f"prefix_task_rows {rows} has r={rows[1]} (middle dimension)"
            )
    if pe and cols and pe[0] != cols[1]:
        problems.append(
            f"prompt length N differs: prompt_embeddings {pe} has N={pe[0]}, "
            f"prefix_task_cols {cols} has N={cols[1]} (middle dimension)"
        )
    if pe and rows and pe[1] != rows[2]:
        problems.append(
            f"hidden size d differs: prompt_embeddings {pe} has d={pe[1]}, "
            f"prefix_task_rows {rows} has d={rows[2]} (last dimension)"
        )
    return problems


def check_config(config: Any) -> list[str]:
    """Schema problems of an ``adapter_config.json`` (already parsed)."""
    return check("adapter_config", config, subject="field")


def config_shape_problems(config: Mapping[str, Any], tensors: Mapping[str, Any]) -> list[str]:
    """Config numbers equal to the tensor shapes (tensors of the wrong rank are skipped: the schema
    reports those)."""
    shp = {
        k: list(v["shape"]) for k, v in tensors.items() if isinstance(v, Mapping) and isinstance(v.get("shape"), list)
    }
    pe, cols = shp.get("prompt_embeddings"), shp.get("prefix_task_cols")
    pe = pe if pe and len(pe) == 2 else None
    cols = cols if cols and len(cols) == 3 else None
    problems = []

    def need(field: str, value, tensor: str, shape, what: str):
        if config.get(field) is not None and value is not None and config[field] != value:
            problems.append(f"field {field} is {_show(config[field])} but {tensor} {shape} has {what}={value}")

    if cols:
        need("num_tasks", cols[0], "prefix_task_cols", cols, "T")
        need("num_ranks", cols[2], "prefix_task_cols", cols, "r")
    if pe:
        need("token_dim", pe[1], "prompt_embeddings", pe, "d")
        v = config.get("num_virtual_tokens")
        s = num_submodules(config)
        if isinstance(v, int) and isinstance(s, int) and v * s != pe[0]:
            problems.append(
                f"num_virtual_tokens x num_transformer_submodules = {v} x {s} = {v * s} "
                f"but prompt_embeddings {pe} has N={pe[0]}"
            )
    return problems


def num_submodules(config: Mapping[str, Any]) -> int | None:
    """num_transformer_submodules, with PEFT's default (2 for seq2seq, else 1) when it is null."""
    s = config.get("num_transformer_submodules")
    if s is None and "task_type" in config:
        return 2 if config.get("task_type") == "SEQ_2_SEQ_LM" else 1
    return s


def check_metadata(meta: Any) -> list[str]:
    """Schema problems of a safetensors ``__metadata__`` map, decoding mptkit's JSON values."""
    problems = check("metadata", meta, subject="__metadata__ key")
    if problems or not isinstance(meta, dict):
        return [p if p.startswith("__metadata__") else f"__metadata__: {p}" for p in problems]
    for key, pointer in (
        (META_TASK_NAMES, "/$defs/task_names"),
        (META_PROVENANCE, "/$defs/provenance"),
        (META_CONFIG, "/$defs/config"),
    ):
        if key not in meta:
            continue
        try:
            value = parse_json(meta[key])
        except JsonProblem as e:
            problems.append(f"__metadata__ key '{key}' must hold JSON text, found {_show(meta[key])} ({e})")
            continue
        if key == META_PROVENANCE and isinstance(value, list) and len(value) > MAX_PROVENANCE:
            problems.append(
                f"__metadata__ key '{key}' lists {len(value):,} provenance entries, more than the "
                f"{MAX_PROVENANCE:,} mptkit reads"
            )
            continue
        problems += [f"__metadata__ key '{key}': {p}" for p in check("metadata", value, pointer=pointer)]
    return problems


def decode_metadata(meta: Mapping[str, str]) -> tuple[list | None, list, dict]:
    """Task names, provenance and config hints from metadata that :func:`check_metadata` passed."""
    names = parse_json(meta[META_TASK_NAMES]) if META_TASK_NAMES in meta else None
    prov = parse_json(meta[META_PROVENANCE]) if META_PROVENANCE in meta else []
    hints = parse_json(meta[META_CONFIG]) if META_CONFIG in meta else {}
    return names, prov, hints
