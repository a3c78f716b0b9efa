"""Inputs never change.

Every command of the CLI runs on every kind of input (a PEFT-saved adapter folder with
safetensors, one with adapter_model.bin, a bare .safetensors bank, a .pt pickle), both when it
succeeds and when it refuses; afterwards the inputs' folder is exactly as it was: the same files,
the same bytes (sha256), and the same inode, size and mtime for every file and folder (a temp
created and removed inside an input folder changes the folder's mtime, so even that is caught).
A command added to the CLI without an entry here fails ``test_every_command_is_covered``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.support.banks import random_bank, save_peft_bank
from tests.support.commands import HUB_COMMANDS, READ_ONLY_COMMANDS, writing_commands
from tests.support.files import sha256_tree

INPUT_KINDS = ["peft-safetensors", "peft-bin", "bare-safetensors", "pickle-pt"]


def _read_only(src: str, out_dir: Path) -> dict[str, list[str]]:
    return {
        "validate": ["validate", src],
        "validate-values-json": ["validate", "--values", "--json", src],
        "inspect": ["inspect", src],
        "inspect-values-json": ["inspect", "--values", "--json", src],
        "similarity": ["similarity", src],
        "similarity-json": ["similarity", "--json", "--tasks", "0,1", src],
        "diff-itself": ["diff", src, src],
        "explain": ["explain", src, "--task", "0", "--shared", "--base-model", str(_base_model(src))],
    }


def _base_model(src: str) -> Path:
    """The base model beside the inputs (as wide as ``src``), which explain reads and must not change."""
    import mptkit

    p = Path(src)
    return p.parent / f"base-model-d{mptkit.load(p).token_dim if p.exists() else 0}"


def _refusals(src: str, out_dir: Path) -> dict[str, list[str]]:
    """Invocations that must fail (exit 2) without touching anything."""
    existing = out_dir / "existing.safetensors"
    existing.write_bytes(b"not replaced without --force")
    return {
        "slice-unknown-task": ["slice", src, "--tasks", "7", "-o", str(out_dir / "x.safetensors")],
        "slice-onto-input": ["slice", src, "--tasks", "0", "-o", src, "--force"],
        "derive-exists-no-force": ["derive", src, "--mode", "exact", "--task", "0", "-o", str(existing)],
        "merge-onto-input": ["merge", src, src, "-o", src, "--force"],
        "export-unknown-task": ["export", src, "--task", "nope", "-o", str(out_dir / "e")],
        "rename-unknown-task": ["rename", src, "nope=x", "-o", str(out_dir / "r.safetensors")],
        "verify-no-provenance": ["verify", src],  # these inputs were made outside mptkit
    }


def _snapshot(root: Path) -> dict:
    """Every file and folder under ``root``: kind, inode, size, mtime (ns), and sha256 of files."""
    out = {}
    for p in sorted([root, *root.rglob("*")]):
        st = p.lstat()
        entry = (p.is_dir(), st.st_ino, st.st_size, st.st_mtime_ns)
        if p.is_file():
            entry += (hashlib.sha256(p.read_bytes()).hexdigest(),)
        out[str(p.relative_to(root))] = entry
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """``{kind: path}``, all under one folder that nothing may change."""
    import torch

    from tests.support.banks import load_tensors

    root = tmp_path_factory.mktemp("inputs")
    paths = {
        "peft-safetensors": save_peft_bank(root / "peft-st", "seq2seq", num_tasks=3),
        "peft-bin": save_peft_bank(root / "peft-bin", "causal", safe=False, num_tasks=3),
    }
    bare = random_bank(root / "bare.safetensors", T=3, N=6, d=8, names=["a", "b", "c"])
    paths["bare-safetensors"] = bare
    torch.save(load_tensors(bare), root / "weights.pt")
    paths["pickle-pt"] = root / "weights.pt"
    for d in (8, 24):  # base models that explain reads: an input embedding and a tokenizer.json
        from safetensors.torch import save_file

        from tests.support.basemodels import tokenizer_json

        (root / f"base-model-d{d}").mkdir()
        save_file({"transformer.wte.weight": torch.randn(96, d)}, str(root / f"base-model-d{d}" / "model.safetensors"))
        tokenizer_json(root / f"base-model-d{d}" / "tokenizer.json")
    # hash caches and the like live elsewhere; nothing is ever written under root
    return root, paths


def _invocations(kind: str, src: Path, out_dir: Path) -> dict[str, tuple[int, list[str]]]:
    """label -> (expected exit code, argv): every read-only command, every writing command to a
    file and to a folder, and refusals."""
    s = str(src)
    inv = {k: (0, v) for k, v in _read_only(s, out_dir).items()}
    for label, (okind, _) in writing_commands(s, "X").items():
        names = {"image": ["plot.png"], "page": ["report.html"], "folder": [f"{label}-dir"]}.get(
            okind, [f"{label}.safetensors", f"{label}-dir"]
        )
        for name in names:
            argv = writing_commands(s, out_dir / name)[label][1]
            if name.endswith("-dir") and not kind.startswith("peft"):  # the input carries no config
                if not label.startswith(("derive", "export")):
                    continue  # editing commands keep the source's config; file outputs cover them
                argv = [*argv, "--task-type", "causal_lm", "--num-virtual-tokens", "6"]
            inv[f"{label}->{name}"] = (0, argv)
    inv.update({k: (2, v) for k, v in _refusals(s, out_dir).items()})
    return inv


def test_every_command_is_covered(tmp_path):
    """A new command must be added to this file's tables."""
    from mptkit.cli import main

    covered = {argv[0] for argv in _read_only("S", Path("O")).values()}
    covered |= {argv[0] for argv in _refusals("S", tmp_path).values()}
    covered |= {argv[0] for _, argv in writing_commands("S", "O").values()}
    assert set(main.commands) | HUB_COMMANDS >= READ_ONLY_COMMANDS
    missing = set(main.commands) - covered - HUB_COMMANDS
    assert not missing, f"commands with no inputs-unchanged check: {sorted(missing)}"


@pytest.mark.parametrize("kind", INPUT_KINDS)
def test_no_command_changes_its_input(cli, inputs, tmp_path, kind):
    root, paths = inputs
    before = _snapshot(root)
    sha_before = {k: sha256_tree(p) for k, p in paths.items()}
    ran = 0
    for label, (expected, argv) in _invocations(kind, paths[kind], tmp_path).items():
        r = cli(*argv)
        assert r.exit_code == expected, (label, r.exit_code, r.output, r.stderr)
        if expected == 2:
            assert r.stderr.startswith("mptkit: error: ") and "Traceback" not in r.stderr, (label, r.stderr)
        assert _snapshot(root) == before, f"{label} changed an input under {root}"
        ran += 1
    assert {k: sha256_tree(p) for k, p in paths.items()} == sha_before
    assert ran >= 20
    print(f"{kind}: {ran} invocations, inputs unchanged")


def test_inputs_unchanged_in_a_real_process(inputs, tmp_path):
    """The same check around a separate `python -m mptkit` process (real exit, real imports)."""
    from tests.support.commands import run_mptkit

    root, paths = inputs
    before = _snapshot(root)
    src = str(paths["peft-safetensors"])
    for argv, code in (
        (["slice", src, "--tasks", "1", "-o", str(tmp_path / "s.safetensors")], 0),
        (["validate", "--json", src], 0),
        (["merge", src, src, "--rename-duplicates", "-o", src, "--force"], 2),
    ):  # onto its input
        r = run_mptkit(*argv)
        assert r.returncode == code and "Traceback" not in r.stderr, (argv, r.stderr)
        if code == 2:
            assert r.stderr.startswith("mptkit: error: ") and "inputs are never modified" in r.stderr, r.stderr
    assert json.loads(run_mptkit("validate", "--json", src).stdout)["valid"]
    assert _snapshot(root) == before


def test_hub_commands_leave_inputs_unchanged(hub, cli, inputs, tmp_path):
    """push reads a local bank (every kind of input); pull reads a remote one: neither changes."""
    root, paths = inputs
    before = _snapshot(root)
    for kind, src in paths.items():
        extra = [] if kind.startswith("peft") else ["--task-type", "CAUSAL_LM", "--num-virtual-tokens", "6"]
        r = cli("push", src, f"owner/{kind}", *extra)
        assert r.exit_code == 0, (kind, r.output)
        assert _snapshot(root) == before, f"push changed {src}"
        remote = hub.files(f"owner/{kind}")
        assert cli("pull", f"owner/{kind}", "-o", tmp_path / kind).exit_code == 0
        assert cli("pull", f"owner/{kind}").exit_code == 0
        assert hub.files(f"owner/{kind}") == remote
    r = cli("push", paths["bare-safetensors"], "owner/x")  # refused: no config for the folder it must write
    assert r.exit_code == 2 and _snapshot(root) == before
    assert set(__import__("mptkit.cli", fromlist=["main"]).main.commands) >= HUB_COMMANDS
