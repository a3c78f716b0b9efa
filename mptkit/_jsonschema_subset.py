"""The part of JSON Schema 2020-12 that ``schemas/*.json`` use, checked without jsonschema.

Importing jsonschema (with referencing, attrs, rpds, ...) takes about 60 ms, a third of the start-up
of ``mptkit inspect``. This interpreter knows only the keywords in :data:`KEYWORDS` and reports the
errors jsonschema's ``Draft202012Validator.iter_errors`` reports, in the same order, with the same
``validator``, ``validator_value``, ``instance``, ``schema``, ``absolute_path`` and ``message``
(tests/test_schema_subset.py compares the two on generated instances). :func:`unsupported` says
when a schema uses anything else; :mod:`mptkit.schema` then uses jsonschema for everything.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping, Sequence

DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: keywords that never produce an error ($defs and contentSchema hold schemas, walked by unsupported())
ANNOTATIONS = frozenset({"$schema", "$id", "$defs", "title", "description", "contentMediaType",
                         "contentSchema", "examples"})
ASSERTIONS = frozenset({"$ref", "type", "enum", "const", "required", "properties", "additionalProperties",
                        "items", "prefixItems", "minItems", "maxItems", "minimum", "minLength", "maxLength",
                        "pattern", "uniqueItems"})
KEYWORDS = ANNOTATIONS | ASSERTIONS
TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})


class Error:
    """What mptkit reads of a jsonschema ``ValidationError``."""

    __slots__ = ("message", "validator", "validator_value", "instance", "schema", "absolute_path")

    def __init__(self, message, validator, validator_value, instance, schema, path):
        self.message, self.validator, self.validator_value = message, validator, validator_value
        self.instance, self.schema, self.absolute_path = instance, schema, list(path)

    def __repr__(self):
        return f"<Error {self.validator} at {self.absolute_path}: {self.message}>"


def is_type(value, name: str) -> bool:
    """JSON Schema 2020-12 types: bools are not numbers; 3.0 is an integer."""
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "string":
        return isinstance(value, str)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "null":
        return value is None
    if isinstance(value, bool):
        return False
    if name == "number":
        return isinstance(value, numbers.Number)
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())  # "integer"


class _Bool:
    """Stands for True or False inside comparisons, so that neither equals 1 or 0."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return isinstance(other, _Bool) and other.value is self.value

    __hash__ = None


_TRUE, _FALSE = _Bool(True), _Bool(False)


def _plain(x):
    return _TRUE if x is True else _FALSE if x is False else x


def equal(a, b) -> bool:
    """JSON equality: 1 == 1.0, but True != 1; lists and objects compared item by item."""
    if a is b:
        return True
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    if isinstance(a, Sequence) and isinstance(b, Sequence):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return len(a) == len(b) and all(k in b and equal(v, b[k]) for k, v in a.items())
    return _plain(a) == _plain(b)


def unique(items: list) -> bool:
    """uniqueItems as jsonschema decides it: when the items sort, only neighbours after sorting are
    compared (so [[1], [true], [1]] counts as unique there, and here); otherwise every pair."""
    plain = [_plain(x) for x in items]
    try:
        ordered = sorted(plain)
    except (TypeError, NotImplementedError):
        return not any(equal(plain[i], plain[j]) for j in range(len(plain)) for i in range(j))
    return not any(equal(x, y) for x, y in zip(ordered, ordered[1:]))


class Validator:
    """``Validator(documents, ref).iter_errors(instance)``; ``documents`` maps each schema file's URI
    (its ``$id``) to its parsed contents, ``ref`` is the absolute reference to validate against."""

    def __init__(self, documents: Mapping[str, dict], ref: str):
        self.documents = documents
        self.root, self.base = resolve(documents, ref, ref)

    def iter_errors(self, instance):
        return self._errors(self.root, instance, self.base, ())

    def _errors(self, schema: dict, x, base: str, path: tuple):
        for k, v in schema.items():
            if k in ANNOTATIONS:
                continue
            if k == "$ref":
                target, target_base = resolve(self.documents, base, v)
                yield from self._errors(target, x, target_base, path)
            elif k == "properties":
                if isinstance(x, dict):
                    for name, sub in v.items():
                        if name in x:
                            yield from self._errors(sub, x[name], base, path + (name,))
            elif k == "additionalProperties":
                if isinstance(x, dict):
                    extra = {name for name in x if name not in schema.get("properties", {})}
                    if isinstance(v, dict):
                        for name in extra:
                            yield from self._errors(v, x[name], base, path + (name,))
                    elif not v and extra:
                        names = sorted(extra, key=str)
                        listed = ", ".join(repr(n) for n in names)
                        verb = "was" if len(names) == 1 else "were"
                        yield Error(f"Additional properties are not allowed ({listed} {verb} unexpected)",
                                    k, v, x, schema, path)
            elif k == "prefixItems":
                if isinstance(x, list):
                    for i, (item, sub) in enumerate(zip(x, v)):
                        yield from self._errors(sub, item, base, path + (i,))
            elif k == "items":
                if isinstance(x, list):
                    for i in range(len(schema.get("prefixItems", [])), len(x)):
                        yield from self._errors(v, x[i], base, path + (i,))
            elif k == "required":
                if isinstance(x, dict):
                    for name in v:
                        if name not in x:
                            yield Error(f"{name!r} is a required property", k, v, x, schema, path)
            else:
                message = _check(k, v, x)
                if message is not None:
                    yield Error(message, k, v, x, schema, path)


def _check(k: str, v, x) -> str | None:
    """The message of keyword ``k`` (value ``v``) failing on instance ``x``, or None."""
    if k == "type":
        names = [v] if isinstance(v, str) else v
        if not any(is_type(x, t) for t in names):
            return f"{x!r} is not of type {', '.join(repr(t) for t in names)}"
    elif k == "enum":
        if not any(equal(each, x) for each in v):
            return f"{x!r} is not one of {v!r}"
    elif k == "const":
        if not equal(x, v):
            return f"{v!r} was expected"
    elif k == "minimum":
        if is_type(x, "number") and x < v:
            return f"{x!r} is less than the minimum of {v!r}"
    elif k in ("minItems", "maxItems", "minLength", "maxLength"):
        if is_type(x, "array" if k.endswith("Items") else "string"):
            if k.startswith("min") and len(x) < v:
                return f"{x!r} {'should be non-empty' if v == 1 else 'is too short'}"
            if k.startswith("max") and len(x) > v:
                return f"{x!r} {'is expected to be empty' if v == 0 else 'is too long'}"
    elif k == "pattern":
        if isinstance(x, str) and not re.search(v, x):
            return f"{x!r} does not match {v!r}"
    elif k == "uniqueItems":
        if v and isinstance(x, list) and not unique(x):
            return f"{x!r} has non-unique elements"
    else:  # unsupported() keeps schemas with other keywords away from here
        raise AssertionError(f"keyword {k} is not supported")
    return None


def resolve(documents: Mapping[str, dict], base: str, ref: str) -> tuple[dict, str]:
    """The schema ``ref`` points at, seen from document ``base``, and its document's URI. Supported:
    ``#/json/pointer``, ``file.json#/pointer`` (next to ``base``) and absolute URIs of ``documents``."""
    where, _, pointer = ref.partition("#")
    if where and where not in documents:
        if any(c in where for c in "/:?%\\") or where.startswith("."):
            raise LookupError(f"unsupported $ref {ref!r}")
        where = base.rsplit("/", 1)[0] + "/" + where
    uri = where or base.partition("#")[0]
    node = documents[uri]
    if pointer:
        if not pointer.startswith("/") or "%" in pointer:
            raise LookupError(f"unsupported $ref {ref!r}")
        for token in pointer[1:].split("/"):
            token = token.replace("~1", "/").replace("~0", "~")
            node = node[int(token)] if isinstance(node, list) else node[token]
    if not isinstance(node, dict):
        raise LookupError(f"$ref {ref!r} is not a schema object")
    return node, uri


def unsupported(documents: Mapping[str, dict]) -> str | None:
    """Why the interpreter cannot stand in for jsonschema on ``documents``, or None when it can."""
    problems, walked, targets = [], set(), []

    def walk(s, uri: str, where: str, top: bool):
        if not isinstance(s, dict):
            return problems.append(f"{where}: a boolean schema")
        walked.add(id(s))
        for k, v in s.items():
            if k not in KEYWORDS:
                problems.append(f"{where}: keyword {k}")
            elif k == "$schema" and (not top or v != DIALECT):
                problems.append(f"{where}: $schema {v!r}")
            elif k == "$id" and (not top or v != uri):
                problems.append(f"{where}: $id {v!r}")
            elif k == "type" and not set([v] if isinstance(v, str) else v) <= TYPES:
                problems.append(f"{where}: type {v!r}")
            elif k == "additionalProperties" and not isinstance(v, (bool, dict)):
                problems.append(f"{where}: additionalProperties {v!r}")
            elif k == "$ref":
                try:
                    targets.append((where, v, resolve(documents, uri, v)[0]))
                except (LookupError, ValueError, TypeError):
                    problems.append(f"{where}: $ref {v!r} not resolved here")
        for k in ("properties", "$defs"):
            for name, sub in s.get(k, {}).items():
                walk(sub, uri, f"{where}/{k}/{name}", False)
        for i, sub in enumerate(s.get("prefixItems", [])):
            walk(sub, uri, f"{where}/prefixItems/{i}", False)
        for k in ("items", "contentSchema", "additionalProperties"):
            if k in s and not (k == "additionalProperties" and isinstance(s[k], bool)):
                walk(s[k], uri, f"{where}/{k}", False)

    for uri, doc in documents.items():
        walk(doc, uri, uri + "#", True)
    # a $ref into, say, "examples" would reach a schema whose keywords were never looked at
    problems += [f"{where}: $ref {ref!r} is not a schema walked here" for where, ref, t in targets if id(t) not in walked]
    return "; ".join(problems) or None
