"""Fuzzed inputs: broken variants of real PEFT-saved banks.

Truncation at every offset of the header, random bit flips, structured damage to the header JSON
(unknown dtypes, negative or huge shapes, overlapping or out-of-file offsets, a length claiming
100 MB, deep nesting, invalid UTF-8, ...), damaged adapter_config.json files and damaged .bin
pickles. Every case must give a valid bank (whose bytes all read) or one clear InvalidBank naming
the file; never another exception, a hang, or an allocation out of proportion to the file
(see tests/support/fuzzcases.py). The CLI's validate and inspect are run on the structured cases too.
Hypothesis adds random bytes, mutated real headers and random adapter configs, judged by the same
oracle. Crashing cases found are kept under tests/reliability/regressions/ and replayed by ``test_regressions``.
benchmarks/soak_kill.py runs many more cases.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import struct
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.support import ROOT, fuzzcases as fz
from tests.support.banks import save_peft_bank

REGRESSIONS = Path(__file__).parent / "regressions"
COUNTS: Counter = Counter()


@pytest.fixture(scope="module")
def sources(tmp_path_factory, cli_module):
    """Real banks: PEFT-saved (seq2seq F32, causal BF16, and a .bin one) and one written by mptkit
    with task names, provenance and config in its metadata."""
    root = tmp_path_factory.mktemp("fuzz-src")
    out = {
        "peft-seq2seq-f32": save_peft_bank(root / "s2s", "seq2seq", "float32"),
        "peft-causal-bf16": save_peft_bank(root / "causal", "causal", "bfloat16"),
        "peft-bin": save_peft_bank(root / "bin", "seq2seq", safe=False),
    }
    named = root / "named.safetensors"
    r = cli_module("rename", out["peft-seq2seq-f32"], "--names", "sst2,mnli,qqp", "-o", named)
    assert r.exit_code == 0, r.output
    out["mptkit-named"] = named
    return out


@pytest.fixture(scope="module")
def cli_module():
    from click.testing import CliRunner

    from mptkit.cli import main

    return lambda *a: CliRunner().invoke(main, [str(x) for x in a])


def _st_file(sources, name) -> bytes:
    p = Path(sources[name])
    return (p / "adapter_model.safetensors" if p.is_dir() else p).read_bytes()


def _run_cases(cases, case_path: Path, counter: str, *, cli=False, folder_of=None) -> Counter:
    seen = Counter()
    for label, data in cases:
        case_path.write_bytes(data)
        target = folder_of or case_path
        try:
            seen[fz.check(target, cli=cli)] += 1
        except fz.Crash as e:
            pytest.fail(f"{counter} case {label!r}: {e}")
    COUNTS[counter] += sum(seen.values())
    return seen


ST_SOURCES = ["peft-seq2seq-f32", "peft-causal-bf16", "mptkit-named"]


@pytest.mark.parametrize("name", ST_SOURCES)
def test_truncation_at_every_header_offset(sources, tmp_path, name):
    data = _st_file(sources, name)
    seen = _run_cases(fz.truncations(data), tmp_path / "case.safetensors", "truncation")
    n = int.from_bytes(data[:8], "little")
    assert seen["invalid"] >= 8 + n  # every cut inside the header is refused
    assert seen["valid"] == 0  # and so is every cut in the data


@pytest.mark.parametrize("name", ST_SOURCES)
def test_random_bit_flips(sources, tmp_path, name):
    seen = _run_cases(
        fz.bit_flips(_st_file(sources, name), random.Random(name), 150), tmp_path / "case.safetensors", "bit flip"
    )
    assert sum(seen.values()) == 150 and seen["invalid"] > 0


@pytest.mark.parametrize("name", ST_SOURCES)
def test_mutated_header_json(sources, tmp_path, name):
    seen = _run_cases(
        fz.header_mutations(_st_file(sources, name)), tmp_path / "case.safetensors", "header mutation", cli=True
    )
    assert seen["invalid"] > 100


def test_claims_are_never_allocated(sources, tmp_path):
    """A header that claims 100 MB, shapes of 2**62 elements, offsets at 10**20: what is allocated
    follows the bytes really there (a few times the file for the parsed JSON), not the claims."""
    data = _st_file(sources, "peft-seq2seq-f32")
    claims = [
        (label, d)
        for label, d in fz.header_mutations(data)
        if label.startswith(("length=", "length claims"))
        or "4611686018427387904" in label
        or "100000000000000000000" in label
        or "1000000000000000000000000000000" in label
    ]
    assert len(claims) >= 20
    case = tmp_path / "case.safetensors"
    for label, d in claims:
        case.write_bytes(d)
        assert fz.check(case, factor=8, floor=256 << 10) == "invalid", label
    COUNTS["allocation claim"] += len(claims)


@pytest.mark.parametrize("name,cli", [("peft-seq2seq-f32", True), ("peft-causal-bf16", False)])
def test_mutated_adapter_config(sources, tmp_path, name, cli):
    folder = tmp_path / "adapter"
    shutil.copytree(sources[name], folder)
    text = (folder / "adapter_config.json").read_text()
    seen = _run_cases(
        fz.config_mutations(text), folder / "adapter_config.json", "config mutation", cli=cli, folder_of=folder
    )
    assert seen["invalid"] > 100 and seen["valid"] > 0  # some fields are free (e.g. base_model_name_or_path)


def test_mutated_adapter_config_in_place_of_files(sources, tmp_path):
    """The folder's files replaced by folders, links to nowhere, or missing."""
    base = sources["peft-seq2seq-f32"]
    for what in ("adapter_config.json", "adapter_model.safetensors"):
        for how in ("dir", "dangling", "missing"):
            folder = tmp_path / f"{what}-{how}"
            shutil.copytree(base, folder)
            (folder / what).unlink()
            if how == "dir":
                (folder / what).mkdir()
            elif how == "dangling":
                (folder / what).symlink_to(tmp_path / "nowhere")
            assert fz.check(folder, cli=True) == "invalid"
            COUNTS["folder damage"] += 1


def test_damaged_pickles(sources, tmp_path):
    """adapter_model.bin of a PEFT-saved folder, truncated and bit-flipped; torch reads it with
    weights_only, and every failure is one clear sentence."""
    folder = tmp_path / "adapter"
    shutil.copytree(sources["peft-bin"], folder)
    data = (folder / "adapter_model.bin").read_bytes()
    seen = _run_cases(
        fz.pickle_damage(data, random.Random(3), cuts=24, flips=40),
        folder / "adapter_model.bin",
        "pickle damage",
        folder_of=folder,
    )
    assert seen["invalid"] >= 24
    pt = tmp_path / "bank.pt"
    seen = _run_cases(fz.pickle_damage(data, random.Random(4), cuts=8, flips=16), pt, "pickle damage")
    assert sum(seen.values()) == 24


def test_regressions(tmp_path):
    """Every case that once crashed a reader, replayed (files and adapter folders)."""
    cases = sorted(p for p in REGRESSIONS.iterdir() if not p.name.startswith((".", "README")))
    assert cases, "tests/reliability/regressions/ holds the crashing cases found so far"
    for p in cases:
        assert fz.check(p, cli=True) in ("valid", "invalid")  # and not a crash (Crash is raised)
        COUNTS["regression"] += 1


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    """Print how many cases ran (shown with pytest -s, and in the soak script's figures)."""
    yield
    print(
        "\nfuzz cases run: "
        + ", ".join(f"{k} {v}" for k, v in sorted(COUNTS.items()))
        + f"; total {sum(COUNTS.values())}"
    )


# -- hypothesis-generated inputs: random bytes, mutated real headers, random adapter configs --------
# (the same oracle, fuzzcases.check, judges every case above and below)
REAL = (ROOT / "examples" / "bank" / "adapter_model.safetensors").read_bytes()
(_N,) = struct.unpack("<Q", REAL[:8])
REAL_HEADER = json.loads(REAL[8 : 8 + _N])
REAL_DATA = REAL[8 + _N :]
KEYS = ["prompt_embeddings", "prefix_task_cols", "prefix_task_rows"]


def fuzz(n: int):
    """Bounded, deterministic hypothesis settings: ``n`` examples, no deadline, no example database."""
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


@contextlib.contextmanager
def _scratch():
    d = Path(tempfile.mkdtemp(prefix="mptkit-fuzz-"))
    try:
        yield d
    finally:
        shutil.rmtree(d)


# -- random bytes ----------------------------------------------------------------------------------
PREFIXES = [
    b"",
    b"PK\x03\x04",
    b"PK\x03\x04\x14\x00\x00\x00",
    b"\x80\x02",
    b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8",
    b"\x80\x04\x95",
    b"version https://git-lfs.github.com/spec/v1\n",
    b"<!DOCTYPE html>",
    b"{",
    b"\xef\xbb\xbf",
    struct.pack("<Q", 2),
    struct.pack("<Q", 100),
    struct.pack("<Q", 100_000_000),
    struct.pack("<Q", 2**64 - 1),
]


@given(
    prefix=st.sampled_from(PREFIXES),
    body=st.binary(max_size=300),
    suffix=st.sampled_from([".safetensors", ".safetensors", ".bin", ".pt", ".pth"]),
)
@fuzz(70)
def test_random_bytes(prefix, body, suffix):
    with _scratch() as d:
        p = d / f"x{suffix}"
        p.write_bytes(prefix + body)
        assert fz.check(p, cli=True) == "invalid"  # random bytes are never a bank


# -- mutated real headers --------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=10,
)
INTERESTING = [-1, 0, 1, 2, 3, 4, 12, 32, 2**31, 2**32, 2**40, 2**63 - 1, 2**63, 2**64, 10**30]
ints = st.sampled_from(INTERESTING) | st.integers(-5, 5000)
dtypes = st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "f32", "", "F32 "]) | json_values

mutation = st.one_of(
    st.tuples(st.just("dtype"), st.sampled_from(KEYS), dtypes),
    st.tuples(st.just("shape"), st.sampled_from(KEYS), st.lists(ints, max_size=5)),
    st.tuples(st.just("offsets"), st.sampled_from(KEYS), st.lists(ints, min_size=0, max_size=3)),
    st.tuples(st.just("entry"), st.sampled_from(KEYS + ["extra", "__metadata__"]), json_values),
    st.tuples(st.just("delete"), st.sampled_from(KEYS + ["__metadata__"]), st.none()),
    st.tuples(
        st.just("meta"),
        st.sampled_from(["format", "mptkit.task_names", "mptkit.provenance", "mptkit.config", "x"]),
        json_values,
    ),
    st.tuples(
        st.just("meta-json"), st.sampled_from(["mptkit.task_names", "mptkit.provenance", "mptkit.config"]), json_values
    ),
    st.tuples(
        st.just("length"),
        st.none(),
        st.sampled_from([0, 1, 7, _N - 1, _N + 1, _N + 8, 99_999_999, 100_000_000, 100_000_001, 2**63, 2**64 - 1])
        | st.integers(0, 2**64 - 1),
    ),
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
        text[pos % len(text) : pos % len(text) + len(b)] = b
    return struct.pack("<Q", len(text) if length is None else length) + bytes(text) + data


@given(mutations=st.lists(mutation, min_size=1, max_size=3))
@fuzz(80)
def test_mutated_headers(mutations):
    with _scratch() as d:
        p = d / "bank.safetensors"
        p.write_bytes(apply(mutations))
        fz.check(p, cli=True)
        folder = d / "folder"  # the same file inside an adapter folder, with the real config
        shutil.copytree(ROOT / "examples" / "bank", folder)
        shutil.copy(p, folder / "adapter_model.safetensors")
        fz.check(folder, cli=True)


def test_unmutated_header_is_valid():
    with _scratch() as d:
        p = d / "bank.safetensors"
        p.write_bytes(apply([]))  # the real header, re-serialised: the baseline the mutations start from
        assert fz.check(p, cli=True) == "valid"


config_fields = st.sampled_from(
    [
        "peft_type",
        "task_type",
        "num_virtual_tokens",
        "num_transformer_submodules",
        "token_dim",
        "num_tasks",
        "num_ranks",
        "prompt_tuning_init",
        "inference_mode",
    ]
)
config_values = (
    st.sampled_from([None, 0, 1, 2, 4, 6, 12, 32, -1, "SEQ_2_SEQ_LM", "CAUSAL_LM", "RANDOM", "x", True, 2.0, [], {}])
    | json_values
)


@given(changes=st.dictionaries(config_fields, config_values, max_size=4), whole=st.none() | json_values)
@fuzz(30)
def test_random_adapter_configs(changes, whole):
    with _scratch() as d:
        folder = d / "folder"
        shutil.copytree(ROOT / "examples" / "bank", folder)
        cfg = json.loads((folder / "adapter_config.json").read_text())
        cfg.update(changes)
        (folder / "adapter_config.json").write_text(json.dumps(cfg if whole is None else whole))
        fz.check(folder, cli=True)


def test_huge_header_is_refused_before_reading_it(tmp_path):
    """A length field saying 99 MB over 1 kB of header is refused before anything is read; a file that
    really holds 20 MB of header is read, refused as not JSON, with memory in proportion to it."""
    p = tmp_path / "h.safetensors"
    p.write_bytes(struct.pack("<Q", 99_000_000) + b"{" + b" " * 1000)
    assert fz.check(p, factor=64, floor=64 << 10) == "invalid"
    with open(p, "wb") as f:
        f.write(struct.pack("<Q", 20_000_000) + b'{"a":"')
        f.truncate(8 + 20_000_000)
    assert fz.check(p, factor=3, floor=0) == "invalid"
