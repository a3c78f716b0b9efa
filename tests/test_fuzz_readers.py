"""Hypothesis fuzzing of the readers: random bytes, mutated headers, lying length fields, random
adapter configs. Every input gives a bank or an InvalidBank naming the file - never another
exception, a hang, or an allocation beyond what the file holds."""

import json
import shutil
import struct
import tempfile
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzzcases import _deadline
from mptkit import load
from mptkit.cli import main
from mptkit.errors import InvalidBank

ROOT = Path(__file__).resolve().parent.parent
REAL = (ROOT / "examples" / "bank" / "adapter_model.safetensors").read_bytes()
(_N,) = struct.unpack("<Q", REAL[:8])
REAL_HEADER = json.loads(REAL[8:8 + _N])
REAL_DATA = REAL[8 + _N:]
KEYS = ["prompt_embeddings", "prefix_task_cols", "prefix_task_rows"]



def fuzz(n: int):
    """Bounded, deterministic hypothesis settings: ``n`` examples, no deadline, no example database."""
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def time_limit(seconds: float):
    """Fail (instead of hanging) when the body runs longer than ``seconds``: the alarm raises a
    BaseException, so no ``except Exception`` in the code under test can swallow it."""
    return _deadline(seconds)


def check_path(path: Path, *, shown: Path | None = None) -> str:
    """Load, validate and inspect ``path``; returns "valid" or "invalid"."""
    shown = shown or path
    runner = CliRunner()
    with time_limit(20):
        try:
            bank = load(path)
        except InvalidBank as e:
            assert e.problems and all(isinstance(p, str) and str(shown) in p for p in e.problems), e.problems
            assert all("\n" not in p and len(p) < 2000 for p in e.problems), e.problems
            outcome = "invalid"
        else:
            for a in bank.tensors.values():  # the data the header promises is really there
                assert len(a.read()) == a.nbytes
            outcome = "valid"
        r = runner.invoke(main, ["validate", str(path)], catch_exceptions=False)
        assert r.exit_code == (0 if outcome == "valid" else 2), (r.exit_code, r.stdout, r.stderr)
        assert "internal error" not in r.stderr and "Traceback" not in r.stderr
        if outcome == "valid":
            for args in (["inspect", str(path)], ["inspect", "--json", str(path)]):
                r = runner.invoke(main, args, catch_exceptions=False)
                assert r.exit_code == 0, r.stderr
        else:
            r = runner.invoke(main, ["inspect", str(path)], catch_exceptions=False)
            assert r.exit_code == 2 and r.stderr.startswith("mptkit: error: ")
    return outcome


def workdir():
    return Path(tempfile.mkdtemp(prefix="mptkit-fuzz-"))


# -- random bytes ----------------------------------------------------------------------------------
PREFIXES = [b"", b"PK\x03\x04", b"PK\x03\x04\x14\x00\x00\x00", b"\x80\x02", b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8",
            b"\x80\x04\x95", b"version https://git-lfs.github.com/spec/v1\n", b"<!DOCTYPE html>", b"{", b"\xef\xbb\xbf",
            struct.pack("<Q", 2), struct.pack("<Q", 100), struct.pack("<Q", 100_000_000), struct.pack("<Q", 2 ** 64 - 1)]


@given(prefix=st.sampled_from(PREFIXES), body=st.binary(max_size=300),
       suffix=st.sampled_from([".safetensors", ".safetensors", ".bin", ".pt", ".pth"]))
@fuzz(70)
def test_random_bytes(prefix, body, suffix):
    d = workdir()
    try:
        p = d / f"x{suffix}"
        p.write_bytes(prefix + body)
        assert check_path(p) == "invalid" or prefix + body == b""  # random bytes are never a bank
    finally:
        shutil.rmtree(d)


# -- mutated real headers --------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=10)
INTERESTING = [-1, 0, 1, 2, 3, 4, 12, 32, 2 ** 31, 2 ** 32, 2 ** 40, 2 ** 63 - 1, 2 ** 63, 2 ** 64, 10 ** 30]
ints = st.sampled_from(INTERESTING) | st.integers(-5, 5000)
dtypes = st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "f32", "", "F32 "]) | json_values

mutation = st.one_of(
    st.tuples(st.just("dtype"), st.sampled_from(KEYS), dtypes),
    st.tuples(st.just("shape"), st.sampled_from(KEYS), st.lists(ints, max_size=5)),
    st.tuples(st.just("offsets"), st.sampled_from(KEYS), st.lists(ints, min_size=0, max_size=3)),
    st.tuples(st.just("entry"), st.sampled_from(KEYS + ["extra", "__metadata__"]), json_values),
    st.tuples(st.just("delete"), st.sampled_from(KEYS + ["__metadata__"]), st.none()),
    st.tuples(st.just("meta"), st.sampled_from(["format", "mptkit.task_names", "mptkit.provenance", "mptkit.config", "x"]),
              json_values),
    st.tuples(st.just("meta-json"), st.sampled_from(["mptkit.task_names", "mptkit.provenance", "mptkit.config"]),
              json_values),
    st.tuples(st.just("length"), st.none(), st.sampled_from([0, 1, 7, _N - 1, _N + 1, _N + 8, 99_999_999, 100_000_000,
                                                             100_000_001, 2 ** 63, 2 ** 64 - 1]) | st.integers(0, 2 ** 64 - 1)),
    st.tuples(st.just("data"), st.none(), st.integers(-len(REAL_DATA), 64)),
    st.tuples(st.just("header-bytes"), st.none(), st.tuples(st.integers(0, _N - 1), st.binary(min_size=1, max_size=4))),
)


def apply(mutations) -> bytes:
    header = json.loads(json.dumps(REAL_HEADER))
    data, length, raw_edit = REAL_DATA, None, None
    for kind, key, value in mutations:
        if kind == "dtype" and isinstance(header.get(key), dict):
            header[key]["dtype"] = value
        elif kind == "shape" and isinstance(header.get(key), dict):
            header[key]["shape"] = value
        elif kind == "offsets" and isinstance(header.get(key), dict):
            header[key]["data_offsets"] = value
        elif kind == "entry":
            header[key] = value
        elif kind == "delete":
            header.pop(key, None)
        elif kind in ("meta", "meta-json"):
            meta = header.setdefault("__metadata__", {})
            if isinstance(meta, dict):
                meta[key] = json.dumps(value) if kind == "meta-json" else value
        elif kind == "length":
            length = value
        elif kind == "data":
            data = data[:value] if value < 0 else data + b"\x7f" * value
        elif kind == "header-bytes":
            raw_edit = value
    text = bytearray(json.dumps(header, allow_nan=True).encode())
    if raw_edit is not None:
        pos, b = raw_edit
        text[pos % len(text):pos % len(text) + len(b)] = b
    return struct.pack("<Q", len(text) if length is None else length) + bytes(text) + data


@given(mutations=st.lists(mutation, min_size=1, max_size=3))
@fuzz(80)
def test_mutated_headers(mutations):
    d = workdir()
    try:
        p = d / "bank.safetensors"
        p.write_bytes(apply(mutations))
        check_path(p)
        folder = d / "folder"  # the same file inside an adapter folder, with the real config
        shutil.copytree(ROOT / "examples" / "bank", folder)
        shutil.copy(p, folder / "adapter_model.safetensors")
        check_path(folder)
    finally:
        shutil.rmtree(d)


def test_unmutated_header_is_valid():
    d = workdir()
    try:
        p = d / "bank.safetensors"
        p.write_bytes(apply([]))  # the real header, re-serialised: the baseline the mutations start from
        assert check_path(p) == "valid"
    finally:
        shutil.rmtree(d)


# -- random adapter configs ------------------------------------------------------------------------
config_fields = st.sampled_from(["peft_type", "task_type", "num_virtual_tokens", "num_transformer_submodules",
                                 "token_dim", "num_tasks", "num_ranks", "prompt_tuning_init", "inference_mode"])
config_values = st.sampled_from([None, 0, 1, 2, 4, 6, 12, 32, -1, "SEQ_2_SEQ_LM", "CAUSAL_LM", "RANDOM", "x", True, 2.0,
                                 [], {}]) | json_values


@given(changes=st.dictionaries(config_fields, config_values, max_size=4), whole=st.none() | json_values)
@fuzz(30)
def test_random_adapter_configs(changes, whole):
    d = workdir()
    try:
        folder = d / "folder"
        shutil.copytree(ROOT / "examples" / "bank", folder)
        cfg = json.loads((folder / "adapter_config.json").read_text())
        cfg.update(changes)
        (folder / "adapter_config.json").write_text(json.dumps(cfg if whole is None else whole))
        check_path(folder)
    finally:
        shutil.rmtree(d)


# -- allocation bounded by the file, whatever the header claims ------------------------------------
def peak_bytes_of_load(path: Path) -> int:
    load_ok = None
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        try:
            load(path)
            load_ok = True
        except InvalidBank:
            load_ok = False
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert load_ok is False
    return peak


@given(claim=st.integers(len(REAL), 2 ** 64 - 1) | st.sampled_from([99_999_999, 100_000_000, 2 ** 40]),
       dims=st.lists(st.sampled_from([2 ** 20, 2 ** 30, 2 ** 40, 10 ** 6]), min_size=2, max_size=3))
@fuzz(30)
def test_lying_claims_allocate_nothing_like_what_they_claim(claim, dims):
    load(ROOT / "examples" / "bank")  # schemas and validators compiled before measuring
    d = workdir()
    try:
        p = d / "claim.safetensors"
        p.write_bytes(struct.pack("<Q", claim) + REAL[8:])  # the header length claims up to 16 EiB
        assert peak_bytes_of_load(p) < 256 * 1024
        n = 4
        for x in dims:
            n *= x
        header = {"prompt_embeddings": {"dtype": "F32", "shape": dims, "data_offsets": [0, n]}}  # terabytes
        body = json.dumps(header).encode()
        p.write_bytes(struct.pack("<Q", len(body)) + body + b"\0" * 64)
        assert peak_bytes_of_load(p) < 256 * 1024
    finally:
        shutil.rmtree(d)


def test_huge_header_is_refused_before_reading_it():
    """A file whose length field says 100 MB but which holds 1 kB; and one whose field says 99 MB and
    which really holds 99 MB of header: only the second is read, and it is refused as not JSON."""
    d = workdir()
    try:
        p = d / "h.safetensors"
        p.write_bytes(struct.pack("<Q", 99_000_000) + b"{" + b" " * 1000)
        assert peak_bytes_of_load(p) < 64 * 1024
        with open(p, "wb") as f:
            f.write(struct.pack("<Q", 20_000_000) + b'{"a":"')
            f.truncate(8 + 20_000_000)
        tracemalloc.start()
        with pytest.raises(InvalidBank, match="not valid UTF-8|not valid JSON"):
            load(p)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 3 * 20_000_000  # proportional to what the file holds
    finally:
        shutil.rmtree(d)
