"""Strict, bounded JSON: what a file's JSON (a safetensors header, an adapter config, an index,
mptkit's metadata) may make mptkit parse and hold.

Python's ``json`` takes more than safetensors' serde_json and PEFT do (NaN, a key twice in one
object, ``-0`` as a size) and builds whatever a file asks for; :func:`parse_json` refuses the first
and caps the second before anything is built.
"""

from __future__ import annotations

import json
from typing import Any

#: caps on what a file may make mptkit hold (a hostile file can claim anything; a real one is far
#: below each): JSON nesting (PEFT's configs nest 2 levels, mptkit's provenance 4), JSON values in
#: one document (counted as in count_json_values: a header of 200,000 tensors has ~2.2 million)
MAX_JSON_DEPTH = 64
MAX_JSON_VALUES = 3_000_000


class JsonProblem(ValueError):
    """A JSON document mptkit will not take (not JSON, nested too deeply, too many values, a key
    twice in one object, a number safetensors or PEFT refuse); ``str()`` is the sentence's end."""


def count_json_values(text: str | bytes) -> int:
    """An upper bound on the number of JSON values (and keys) in ``text``, counted at C speed
    before anything is built: every value but the first in an object or array follows a ``:`` or a
    ``,``, and every array or object opens with ``[`` or ``{``. (Characters inside strings count
    too, so a real document is over-counted, never under-counted; a regular expression that skipped
    strings would build one object per piece, 1.4 GB for a 95 MB header.)"""
    if isinstance(text, bytes):
        return text.count(b":") + text.count(b",") + text.count(b"[") + text.count(b"{") + 1
    return text.count(":") + text.count(",") + text.count("[") + text.count("{") + 1


def _pairs(pairs):
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        for k, _ in pairs:
            if k in seen:
                raise JsonProblem(
                    f"the key {json.dumps(k, ensure_ascii=False)[:80]} appears twice in one object "
                    "(safetensors and PEFT refuse that)"
                )
            seen.add(k)
    return out


def _constant(name):
    raise JsonProblem(f"{name} is not JSON (a non-finite number)")


def _integer(text):
    if text.startswith("-0"):  # Python reads "-0" as 0; safetensors refuses a signed offset or shape
        raise JsonProblem("the number -0 is not a valid size or offset")
    return int(text)


def parse_json(text: str | bytes, *, max_depth: int = MAX_JSON_DEPTH, max_values: int = MAX_JSON_VALUES) -> Any:
    """``json.loads`` that refuses what a strict JSON reader (safetensors' serde_json, PEFT) refuses
    or what would cost memory or recursion the text did not bring: NaN/Infinity, a key twice in one
    object, ``-0``, more than ``max_values`` values (counted before anything is built), nesting
    deeper than ``max_depth``. Raises :class:`JsonProblem`."""
    n = count_json_values(text)
    if n > max_values:
        raise JsonProblem(
            f"it holds up to {n:,} JSON values (counting ':', ',', '[' and '{{'), more than the "
            f"{max_values:,} mptkit reads"
        )
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise JsonProblem(f"not valid UTF-8 (byte {e.start})") from None
    try:
        value = json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant, parse_int=_integer)
    except RecursionError:
        raise JsonProblem(f"the JSON is nested too deeply (more than {max_depth} levels)") from None
    except json.JSONDecodeError as e:
        raise JsonProblem(f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except JsonProblem:
        raise
    except ValueError as e:  # e.g. an integer with more digits than Python converts
        raise JsonProblem(f"not valid JSON ({str(e)[:80]})") from None
    depth = json_depth(value, max_depth)
    if depth > max_depth:
        raise JsonProblem(f"the JSON is nested too deeply ({depth} levels; mptkit reads at most {max_depth})")
    try:  # a \u escape of half a surrogate pair parses, but is no text: safetensors and printing refuse it
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise JsonProblem("it holds a \\u escape of a lone UTF-16 surrogate, which is not text") from None
    return value


def json_depth(value: Any, limit: int) -> int:
    """How deeply ``value`` nests (a scalar is 0), without recursion; stops counting past ``limit``."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            if d > limit:
                return d
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest
