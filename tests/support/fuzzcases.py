"""Fuzz cases for the readers, shared by tests/reliability/test_fuzz.py (bounded) and
benchmarks/soak_kill.py (many more).

Every case is a broken variant of a real bank: its safetensors file truncated, bit-flipped or with
a mutated header, its adapter_config.json mutated, or its .bin pickle truncated or flipped.
:func:`check` reads one case and returns "valid" or "invalid"; anything else (another exception,
a hang, an allocation out of proportion to the file, a message that is not one clear line) raises
:class:`Crash`.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import struct
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

#: seconds one case may take
CASE_SECONDS = 20
#: Python memory one case may allocate beyond this multiple of the bytes on disk (plus a floor)
ALLOC_FACTOR, ALLOC_FLOOR = 64, 1 << 20


class Crash(AssertionError):
    """A case that gave something other than a valid bank or one clear InvalidBank."""


class _Hang(BaseException):
    pass


@contextlib.contextmanager
def _deadline(seconds: float):
    def on_alarm(signum, frame):
        raise _Hang()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _disk_bytes(path: Path) -> int:
    p = Path(path)
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def check(
    path, *, cli: bool = False, measure: bool = True, factor: float = ALLOC_FACTOR, floor: int = ALLOC_FLOOR
) -> str:
    """Read the case at ``path`` like a user would (load, then every tensor's bytes) and measure
    the Python memory that takes (tracemalloc: torch's own allocations are not seen); with ``cli``
    then also run ``validate`` and ``inspect`` in-process. Returns "valid" or "invalid"."""
    import mptkit
    from mptkit.errors import InvalidBank

    size = _disk_bytes(path)
    started = measure and not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    if measure:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
    try:
        with _deadline(CASE_SECONDS):
            try:
                bank = mptkit.load(path)
                for a in bank.tensors.values():
                    a.read()
                outcome = "valid"
            except InvalidBank as e:
                msg = e.message
                if not msg or "\n" in msg or "Traceback" in msg or str(path) not in msg:
                    raise Crash(f"{path}: unclear message {msg!r}") from None
                outcome = "invalid"
            if measure:
                peak = tracemalloc.get_traced_memory()[1] - base
            if cli:
                _check_cli(path, outcome)
    except _Hang:
        raise Crash(f"{path}: took longer than {CASE_SECONDS} s") from None
    except Crash:
        raise
    except BaseException as e:
        raise Crash(f"{path}: {type(e).__name__}: {e}"[:400]) from e
    finally:
        if started:
            tracemalloc.stop()
    if measure and peak > factor * size + floor:
        raise Crash(f"{path}: allocated {peak} bytes for a {size}-byte case")
    return outcome


def _check_cli(path, outcome: str) -> None:
    from click.testing import CliRunner

    from mptkit.cli import main

    runner = CliRunner()
    for args in (["validate", str(path)], ["inspect", "--json", str(path)]):
        r = runner.invoke(main, args, catch_exceptions=True)
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            raise Crash(f"{path}: `mptkit {' '.join(args)}` raised {type(r.exception).__name__}: {r.exception}")
        want = 0 if outcome == "valid" else 2
        if r.exit_code != want or "Traceback" in r.output or "internal error" in r.stderr:
            raise Crash(f"{path}: `mptkit {' '.join(args)}` exited {r.exit_code} (expected {want}): {r.stderr[:300]}")


# -- safetensors files ---------------------------------------------------------------------------
def split(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header, body: bytes, *, raw: bytes | None = None, length: int | None = None) -> bytes:
    text = raw if raw is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + body


def truncations(data: bytes, data_step: int = 97) -> Iterator[tuple[str, bytes]]:
    """Cut at every offset of the length field and the header, then every ``data_step`` bytes."""
    n = struct.unpack("<Q", data[:8])[0]
    cuts = list(range(8 + n + 16)) + list(range(8 + n + 16, len(data), data_step)) + [len(data) - 1]
    for cut in sorted({c for c in cuts if c < len(data)}):
        yield f"truncate@{cut}", data[:cut]


def bit_flips(data: bytes, rng: random.Random, count: int) -> Iterator[tuple[str, bytes]]:
    """Flip 1 to 4 random bits; most in the length field and header, some anywhere."""
    n = struct.unpack("<Q", data[:8])[0]
    for i in range(count):
        buf = bytearray(data)
        where = []
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(8 + n) if rng.random() < 0.75 else rng.randrange(len(buf))
            bit = rng.randrange(8)
            buf[pos] ^= 1 << bit
            where.append(f"{pos}.{bit}")
        yield f"flip#{i}@{'+'.join(where)}", bytes(buf)


_BAD_DTYPES = ["F33", "", None, 5, "f32", "F8_E4M3", "BOOL", "I64", "U8", "F64", "BF16", ["F32"], "F32\u0000"]
_BAD_SHAPES = [
    [-1, 32],
    [2**62, 2**62],
    [10**30],
    [],
    [0, 32],
    [1.5, 2],
    ["a"],
    None,
    {},
    [[1]],
    [1] * 10000,
    [2**64],
    [True, 1],
    [float("nan")],
    [3, 4, 5, 6, 7, 8, 9, 10, 11],
]
_BAD_OFFSETS = [
    [0, 10**20],
    [-8, 0],
    [8, 0],
    [0],
    "0,4",
    [0.0, 4.0],
    None,
    [0, 4, 8],
    [2**63, 2**63 + 4],
    [-(2**70), 0],
]


def header_mutations(data: bytes) -> Iterator[tuple[str, bytes]]:
    """Structured damage to the header JSON (the data section kept as it was)."""
    header, body = split(data)
    names = [k for k in header if k != "__metadata__"]
    first = names[0]

    def mutated(label, fn):
        h = json.loads(json.dumps(header))
        fn(h)
        return label, join(h, body)

    for name in names:
        for v in _BAD_DTYPES:
            yield mutated(f"{name}.dtype={v!r}"[:80], lambda h, v=v, name=name: h[name].__setitem__("dtype", v))
        for v in _BAD_SHAPES:
            yield mutated(f"{name}.shape={str(v)[:40]}", lambda h, v=v, name=name: h[name].__setitem__("shape", v))
        for v in _BAD_OFFSETS:
            yield mutated(f"{name}.offsets={v}", lambda h, v=v, name=name: h[name].__setitem__("data_offsets", v))
        yield mutated(
            f"{name}.offsets=past-end",
            lambda h, name=name: h[name].__setitem__(
                "data_offsets",
                [len(body) - 4, len(body) - 4 + (h[name]["data_offsets"][1] - h[name]["data_offsets"][0])],
            ),
        )
        yield mutated(f"drop {name}", lambda h, name=name: h.pop(name))
        yield mutated(f"{name}=null", lambda h, name=name: h.__setitem__(name, None))
        yield mutated(f"{name}.extra-field", lambda h, name=name: h[name].__setitem__("extra", {"x": [1, 2]}))
    for a, b in zip(names, names[1:]):  # overlapping tensors
        yield mutated(
            f"overlap {a}/{b}",
            lambda h, a=a, b=b: h[b].__setitem__(
                "data_offsets",
                [h[a]["data_offsets"][0], h[a]["data_offsets"][0] + h[b]["data_offsets"][1] - h[b]["data_offsets"][0]],
            ),
        )
        yield mutated(
            f"same-offsets {a}/{b}", lambda h, a=a, b=b: h[b].__setitem__("data_offsets", list(h[a]["data_offsets"]))
        )
    yield mutated("extra tensor", lambda h: h.__setitem__("extra", dict(h[first])))
    yield mutated("renamed tensor", lambda h: h.__setitem__("prompt_embedding", h.pop(first)))
    yield mutated("unicode name", lambda h: h.__setitem__("\u00e9\u4e2d\U0001f600", h.pop(first)))
    # __metadata__
    meta_values = [
        None,
        [],
        5,
        "x",
        {"format": 5},
        {"format": None},
        {"a": {"b": "c"}},
        {"mptkit.task_names": "not json"},
        {"mptkit.task_names": json.dumps([1, 2])},
        {"mptkit.task_names": json.dumps(["a"] * 99)},
        {"mptkit.task_names": json.dumps(["", "b"])},
        {"mptkit.task_names": json.dumps(["a", "a", "b", "c"])},
        {"mptkit.task_names": "[" * 5000 + "]" * 5000},
        {"mptkit.provenance": json.dumps({"operation": 1})},
        {"mptkit.provenance": "[" * 100000},
        {"mptkit.config": json.dumps({"num_virtual_tokens": -3})},
        {"mptkit.config": json.dumps({"num_virtual_tokens": 10**40})},
        {"mptkit.config": json.dumps({"task_type": ["x"]})},
        {"mptkit.config": json.dumps({"num_transformer_submodules": 0, "task_type": "CAUSAL_LM"})},
        {"mptkit.config": "9" * 5000},
        {"k" * 10000: "v"},
        {"x": "\ud800"},
    ]
    for i, v in enumerate(meta_values):
        yield mutated(f"metadata#{i}", lambda h, v=v: h.__setitem__("__metadata__", v))
    # the raw text
    text = json.dumps(header).encode()
    yield "top-level array", join(None, body, raw=b"[" + text + b"]")
    yield "top-level string", join(None, body, raw=json.dumps(text.decode()).encode())
    yield "top-level number", join(None, body, raw=b"12345678")
    yield "top-level null", join(None, body, raw=b"null")
    yield "empty object", join(None, body, raw=b"{}")
    yield "deep nesting 100000", join(None, body, raw=b'{"a":' + b"[" * 100000 + b"]" * 100000 + b"}")
    yield "deep nesting 5000", join(None, body, raw=b'{"a":' + b'{"b":' * 5000 + b"1" + b"}" * 5001)
    yield (
        "deep nesting in shape",
        join(
            None,
            body,
            raw=text.replace(b'"shape": [', b'"shape": ' + b"[" * 3000 + b"[", 1).replace(b"]", b"]" * 3001, 1),
        ),
    )
    yield "invalid utf-8 0xff", join(None, body, raw=text.replace(b'"', b'"\xff', 1))
    yield "invalid utf-8 overlong", join(None, body, raw=text.replace(b'"', b'"\xc0\x80', 1))
    yield "invalid utf-8 truncated seq", join(None, body, raw=text[:-1] + b"\xe4")
    yield "lone surrogate escape", join(None, body, raw=text.replace(b'"', b'"\\ud800', 1))
    yield "NaN literal", join(None, body, raw=text.replace(b'"shape": [', b'"shape": [NaN, ', 1))
    yield "Infinity literal", join(None, body, raw=text.replace(b'"shape": [', b'"shape": [Infinity, ', 1))
    yield "1e400", join(None, body, raw=text.replace(b'"shape": [', b'"shape": [1e400, ', 1))
    yield "5000-digit int", join(None, body, raw=text.replace(b'"shape": [', b'"shape": [' + b"9" * 5000 + b", ", 1))
    yield (
        "duplicate key",
        join(
            None,
            body,
            raw=text[:-1] + b', "' + first.encode() + b'": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
        ),
    )
    yield "trailing garbage", join(None, body, raw=text + b"xyz")
    yield "nul padding", join(None, body, raw=text + b"\0" * 8)
    yield "space padding", join(None, body, raw=text + b" " * 8)
    yield "leading spaces", join(None, body, raw=b" " * 8 + text)
    yield "bom", join(None, body, raw=b"\xef\xbb\xbf" + text)
    # the length field
    for length in (
        0,
        1,
        2,
        7,
        len(text) - 1,
        len(text) + 1,
        len(text) + len(body),
        len(text) + len(body) + 1,
        100_000_000,
        100_000_001,
        2**63,
        2**64 - 1,
    ):
        yield f"length={length}", join(None, body, raw=text, length=length)
    yield "length claims 100 MB, file padded", join(None, body, raw=text, length=100_000_000)
    yield "header only", join(None, b"", raw=text)
    yield "body doubled", join(None, body + body, raw=text)


# -- adapter_config.json -------------------------------------------------------------------------
_CONFIG_VALUES = [
    None,
    -1,
    0,
    1,
    2,
    2**70,
    -(2**70),
    1.5,
    float("inf"),
    "x",
    "",
    [],
    {},
    True,
    [1, 2],
    {"a": [{}]},
    "\u00e9",
    "MULTITASK_PROMPT_TUNING",
    "9" * 300,
]


def config_mutations(text: str) -> Iterator[tuple[str, bytes]]:
    """Broken variants of an adapter_config.json."""
    cfg = json.loads(text)
    for key in sorted(cfg):
        drop = dict(cfg)
        drop.pop(key)
        yield f"drop {key}", json.dumps(drop).encode()
        for v in _CONFIG_VALUES:
            c = dict(cfg)
            c[key] = v
            yield f"{key}={str(v)[:30]}", json.dumps(c).encode()
    yield "unknown field", json.dumps({**cfg, "zzz": {"nested": [1]}}).encode()
    yield "peft_type LORA", json.dumps({**cfg, "peft_type": "LORA"}).encode()
    yield "peft_type PROMPT_TUNING", json.dumps({**cfg, "peft_type": "PROMPT_TUNING"}).encode()
    yield (
        "init EXACT with a missing file",
        json.dumps(
            {
                **cfg,
                "prompt_tuning_init": "EXACT_SOURCE_TASK",
                "prompt_tuning_init_state_dict_path": "/nonexistent/x.bin",
            }
        ).encode(),
    )
    yield "empty", b""
    yield "whitespace", b"   \n"
    yield "array", b"[]"
    yield "string", b'"MULTITASK_PROMPT_TUNING"'
    yield "null", b"null"
    yield "truncated", text.encode()[: len(text) // 2]
    yield "trailing comma", text.encode()[:-1] + b",}"
    yield "invalid utf-8", text.encode().replace(b'"', b'"\xff', 1)
    yield "utf-16", text.encode("utf-16")
    yield "bom", b"\xef\xbb\xbf" + text.encode()
    yield "deep nesting", b'{"a":' + b"[" * 100000 + b"]" * 100000 + b"}"
    yield (
        "5000-digit int",
        text.encode().replace(b'"num_tasks": ', b'"num_tasks": ' + b"9" * 5000 + b"0 * ", 1).replace(b"0 * ", b"", 1),
    )
    yield "NaN", text.encode().replace(b'"num_tasks": ', b'"num_tasks": NaN, "x": ', 1)
    yield "lone surrogate", json.dumps({**cfg, "base_model_name_or_path": "\ud800"}).encode()
    yield "1 MB of spaces", text.encode() + b" " * (1 << 20)


# -- pickles -------------------------------------------------------------------------------------
def pickle_damage(data: bytes, rng: random.Random, cuts: int, flips: int) -> Iterator[tuple[str, bytes]]:
    """Truncations spread over the file, then random bit flips."""
    for i in range(cuts):
        cut = (len(data) * i) // cuts
        yield f"truncate@{cut}", data[:cut]
    for i in range(flips):
        buf = bytearray(data)
        where = []
        for _ in range(rng.randint(1, 3)):
            pos, bit = rng.randrange(len(buf)), rng.randrange(8)
            buf[pos] ^= 1 << bit
            where.append(f"{pos}.{bit}")
        yield f"flip#{i}@{'+'.join(where)}", bytes(buf)
