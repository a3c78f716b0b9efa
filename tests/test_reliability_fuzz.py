"""Fuzzed inputs (issue 7, item 4): broken variants of real PEFT-saved banks.

Truncation at every offset of the header, random bit flips, structured damage to the header JSON
(unknown dtypes, negative or huge shapes, overlapping or out-of-file offsets, a length claiming
100 MB, deep nesting, invalid UTF-8, ...), damaged adapter_config.json files and damaged .bin
pickles. Every case must give a valid bank (whose bytes all read) or one clear InvalidBank naming
the file; never another exception, a hang, or an allocation out of proportion to the file
(see tests/fuzzcases.py). The CLI's validate and inspect are run on the structured cases too.
Crashing cases found are kept under tests/regressions/ and replayed by ``test_regressions``.
benchmarks/soak_kill.py runs many more cases.
"""

from __future__ import annotations

import random
import shutil
from collections import Counter
from pathlib import Path

import pytest

import fuzzcases as fz
from bankutil import save_peft_bank

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
    seen = _run_cases(fz.bit_flips(_st_file(sources, name), random.Random(name), 150), tmp_path / "case.safetensors",
                      "bit flip")
    assert sum(seen.values()) == 150 and seen["invalid"] > 0


@pytest.mark.parametrize("name", ST_SOURCES)
def test_mutated_header_json(sources, tmp_path, name):
    seen = _run_cases(fz.header_mutations(_st_file(sources, name)), tmp_path / "case.safetensors", "header mutation",
                      cli=True)
    assert seen["invalid"] > 100


def test_claims_are_never_allocated(sources, tmp_path):
    """A header that claims 100 MB, shapes of 2**62 elements, offsets at 10**20: what is allocated
    follows the bytes really there (a few times the file for the parsed JSON), not the claims."""
    data = _st_file(sources, "peft-seq2seq-f32")
    claims = [(label, d) for label, d in fz.header_mutations(data)
              if label.startswith(("length=", "length claims")) or "4611686018427387904" in label
              or "100000000000000000000" in label or "1000000000000000000000000000000" in label]
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
    seen = _run_cases(fz.config_mutations(text), folder / "adapter_config.json", "config mutation", cli=cli,
                      folder_of=folder)
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
    seen = _run_cases(fz.pickle_damage(data, random.Random(3), cuts=24, flips=40), folder / "adapter_model.bin",
                      "pickle damage", folder_of=folder)
    assert seen["invalid"] >= 24
    pt = tmp_path / "bank.pt"
    seen = _run_cases(fz.pickle_damage(data, random.Random(4), cuts=8, flips=16), pt, "pickle damage")
    assert sum(seen.values()) == 24


def test_regressions(tmp_path):
    """Every case that once crashed a reader, replayed (files and adapter folders)."""
    cases = sorted(p for p in REGRESSIONS.iterdir() if not p.name.startswith((".", "README")))
    assert cases, "tests/regressions/ holds the crashing cases found so far"
    for p in cases:
        assert fz.check(p, cli=True) in ("valid", "invalid")  # and not a crash (Crash is raised)
        COUNTS["regression"] += 1


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    """Print how many cases ran (shown with pytest -s, and in the soak script's figures)."""
    yield
    print("\nfuzz cases run: " + ", ".join(f"{k} {v}" for k, v in sorted(COUNTS.items()))
          + f"; total {sum(COUNTS.values())}")
