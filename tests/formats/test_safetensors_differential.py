"""Everything safetensors refuses, mptkit refuses: a differential test of mptkit's
header reader against safetensors' own parser (``safetensors.deserialize``, the Rust code PEFT
loads through) on thousands of fuzzed files. The set of files mptkit accepts is inside the set
safetensors accepts, and where both accept they read the same tensors and metadata.

Mutations work on the header's text, so that what JSON parsers disagree on is reached: a key twice
in one object, ``-0``, NaN, ``1.0`` for an integer, numbers past 64 bits, lone surrogates, control
characters, whitespace and a byte-order mark, unknown and missing fields, every dtype name, wrong
offsets, gaps, overlaps, trailing bytes, a wrong header length.
"""

from __future__ import annotations

import json
import random
import struct

import pytest
import safetensors

import mptkit
from mptkit.errors import MptkitError
from mptkit.formats import _safetensors as stf

DTYPES = list(stf.HEADER_BITS) + ["F8", "f32", "", "U1", "C128", "float32"]
ODD_NUMBERS = [
    "-1",
    "-0",
    "0",
    "1",
    "2",
    "4",
    "1.0",
    "1e0",
    "18446744073709551616",
    "18446744073709551615",
    "9223372036854775808",
    "NaN",
    "Infinity",
    '"4"',
    "true",
    "null",
    "[]",
    "{}",
    "0.5",
    "00",
    "-0.0",
]


def _base(rng: random.Random):
    """A small valid bank: (entries, data) with entries an ordered list of (key, value) where a
    value is a Python object or a ("raw", text) pair."""
    T, N, r, d = rng.randint(1, 3), rng.randint(1, 3), rng.randint(1, 2), rng.randint(1, 3)
    dtype = rng.choice(["F32", "F16", "BF16", "F64"])
    size = stf.HEADER_BITS[dtype] // 8
    shapes = {"prompt_embeddings": [N, d], "prefix_task_cols": [T, N, r], "prefix_task_rows": [T, r, d]}
    entries, pos = [], 0
    names = list(shapes)
    rng.shuffle(names)
    for name in names:
        n = size * N * d if name == "prompt_embeddings" else size * T * (N * r if name == "prefix_task_cols" else r * d)
        entries.append((name, {"dtype": dtype, "shape": shapes[name], "data_offsets": [pos, pos + n]}))
        pos += n
    meta = {"format": "pt"}
    if rng.random() < 0.5:
        meta["mptkit.task_names"] = json.dumps([f"t{i}" for i in range(T)])
    entries.insert(rng.randint(0, len(entries)), ("__metadata__", meta))
    return entries, bytes(rng.getrandbits(8) for _ in range(pos))


def _text(value) -> str:
    if isinstance(value, tuple) and value[0] == "raw":
        return value[1]
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list) and any(isinstance(v, tuple) for v in value):
        return "[" + ",".join(_text(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def _mutate(rng: random.Random, entries: list, data: bytes) -> tuple[str, bytes, int]:
    """One random change (sometimes two); the header text, the data, and a header-length skew."""
    skew = 0
    for _ in range(rng.choice([1, 1, 1, 2])):
        k = rng.randrange(len(entries))
        key, value = entries[k]
        tensor = key != "__metadata__" and isinstance(value, dict)
        move = rng.randrange(16)
        if move == 0 and tensor:
            value["dtype"] = rng.choice(DTYPES)
        elif move == 1 and tensor and isinstance(value.get("shape"), list) and value["shape"]:
            i = rng.randrange(len(value["shape"]))
            value["shape"][i] = ("raw", rng.choice(ODD_NUMBERS))
        elif move == 2 and tensor and isinstance(value.get("shape"), list):
            value["shape"] = rng.choice([value["shape"][:-1], value["shape"] + [1], value["shape"] + [0], []])
        elif move == 3 and tensor and isinstance(value.get("data_offsets"), list):
            i = rng.randrange(2)
            value["data_offsets"][i] = (
                "raw",
                rng.choice(ODD_NUMBERS + [str(int(_num(value["data_offsets"][i])) + rng.choice([-4, -1, 1, 4]))]),
            )
        elif move == 4 and tensor:
            field = rng.choice(["dtype", "shape", "data_offsets"])
            if rng.random() < 0.5:
                value.pop(field, None)
            else:  # the same field twice
                value = {**value, ("raw", f'"{field}":{_text(value.get(field))}'): None}
        elif move == 5 and tensor:
            value["extra"] = rng.choice([1, "x", None, [1, 2]])
        elif move == 6:
            entries.insert(rng.randrange(len(entries) + 1), (key, json.loads(json.dumps(_plain(value)))))  # key twice
        elif move == 7 and key == "__metadata__":
            value = rng.choice(
                [
                    None,
                    [],
                    "pt",
                    5,
                    {"format": 5},
                    {"format": None},
                    {"a": {"b": "c"}},
                    {"format": "pt", "n": ("raw", "1")},
                    ("raw", '{"format":"pt","format":"pt"}'),
                ]
            )
        elif move == 8:
            name = rng.choice(["", " ", "\u00e9", "a\\u0000b", "\\ud800", "__metadata__", "prompt_embeddings"])
            entries[k] = (("raw", json.dumps(name) if "\\" not in name else f'"{name}"'), value)
            continue
        elif move == 9:
            data = data + bytes(rng.choice([1, 2, 4, 8]))
        elif move == 10 and data:
            data = data[: -rng.choice([1, 2, 4])]
        elif move == 11:
            skew = rng.choice([-8, -2, -1, 1, 2, 8])
        elif move == 12 and key == "__metadata__" and isinstance(value, dict):
            value = {**value, "s": ("raw", rng.choice(['"\\ud800"', '"a\tb"', '"\\u00e9"', '"\\/"', '"\x01"', "NaN"]))}
        elif move == 13 and tensor:  # overlap or gap with another tensor
            other = rng.choice([v for kk, v in entries if kk != "__metadata__" and isinstance(v, dict)])
            if isinstance(other.get("data_offsets"), list) and isinstance(value.get("data_offsets"), list):
                value["data_offsets"] = list(other["data_offsets"])
        elif move == 14:
            entries[k] = (key, value)
            head = _render(entries)
            cut = rng.randrange(len(head))
            insert = rng.choice([" ", "\n", "\t", "\r", "\u00a0", "\ufeff", ",", "}", "]", '"', "\\"])
            return head[:cut] + insert + head[cut:], data, skew
        elif move == 15:
            entries[k] = (key, value)
            return (
                rng.choice(["\ufeff", " ", "", "\n"]) + _render(entries) + rng.choice(["", " ", "\x00", "x", "\n"]),
                data,
                skew,
            )
        entries[k] = (key, value)
    return _render(entries), data, skew


def _num(v):
    try:
        return int(v[1]) if isinstance(v, tuple) else int(v)
    except (ValueError, TypeError):
        return 0


def _plain(v):
    if isinstance(v, tuple):
        return None
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items() if not isinstance(k, tuple)}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def _render(entries) -> str:
    parts = []
    for key, value in entries:
        ktext = key[1] if isinstance(key, tuple) else json.dumps(key, ensure_ascii=False)
        if isinstance(value, dict):
            inner = []
            for k, v in value.items():
                inner.append(k[1] if isinstance(k, tuple) else f"{json.dumps(k)}:{_text(v)}")
            vtext = "{" + ",".join(inner) + "}"
        else:
            vtext = _text(value)
        parts.append(f"{ktext}:{vtext}")
    return "{" + ",".join(parts) + "}"


def _file(head: str, data: bytes, skew: int) -> bytes:
    raw = head.encode("utf-8", "surrogatepass")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", max(0, len(raw) + skew)) + raw + data


def _safetensors_reads(blob: bytes):
    try:
        tensors = safetensors.deserialize(blob)
    except Exception:
        return None
    return {name: (t["dtype"], list(t["shape"])) for name, t in tensors}


def _mptkit_reads(path):
    """What mptkit's reader accepts: the header (layout, strict JSON, caps) with string metadata
    (non-string metadata is the schema's to report), as {name: (dtype, shape)} and the metadata."""
    try:
        h = stf.read_header(str(path))
    except MptkitError:
        return None
    if h.metadata and not all(isinstance(v, str) for v in h.metadata.values()):
        return None
    return {name: (t["dtype"], t["shape"]) for name, t in h.tensors.items()}, h.metadata


CASES = 3000


def test_mptkit_accepts_only_what_safetensors_accepts(tmp_path):
    rng = random.Random(20240611)
    both = only_safetensors = neither = loaded = 0
    path = tmp_path / "fuzz.safetensors"
    for case in range(CASES):
        entries, data = _base(rng)
        head, data, skew = _mutate(rng, entries, data)
        blob = _file(head, data, skew)
        path.write_bytes(blob)
        ours, theirs = _mptkit_reads(path), _safetensors_reads(blob)
        if ours is not None:
            assert theirs is not None, f"case {case}: mptkit accepts what safetensors refuses:\n{blob[:400]!r}"
            assert ours[0] == theirs, (case, ours[0], theirs)
            with safetensors.safe_open(str(path), "numpy") as f:
                assert (f.metadata() or None) == (ours[1] or None), case
            both += 1
            try:
                mptkit.load(path)
                loaded += 1
            except MptkitError:
                pass
        elif theirs is not None:
            only_safetensors += 1
        else:
            neither += 1
    print(
        f"{CASES} cases: both accept {both} ({loaded} load as banks), only safetensors {only_safetensors}, "
        f"both refuse {neither}"
    )
    # the fuzz reaches all three outcomes in number (it is not trivially refusing everything)
    assert both > CASES * 0.15 and neither > CASES * 0.3 and loaded > CASES * 0.1


@pytest.mark.parametrize(
    "head",
    [
        '{"__metadata__":{"format":"pt"},"__metadata__":{"format":"pt"}}',
        '{"t":{"dtype":"U8","dtype":"U8","shape":[0],"data_offsets":[0,0]}}',
        '{"t":{"dtype":"U8","shape":[0],"data_offsets":[-0,0]}}',
        '{"t":{"dtype":"U8","shape":[1.0],"data_offsets":[0,1]}}',
        '{"t":{"dtype":"U8","shape":[18446744073709551616,0],"data_offsets":[0,0]}}',
        '{"__metadata__":{"a":NaN}}',
        '{"__metadata__":{"a":"\\ud800"}}',
    ],
)
def test_known_disagreements_are_refused_by_both(tmp_path, head):
    blob = _file(head, b"" if "[1.0]" not in head else b"x", 0)
    path = tmp_path / "x.safetensors"
    path.write_bytes(blob)
    assert _safetensors_reads(blob) is None
    assert _mptkit_reads(path) is None
