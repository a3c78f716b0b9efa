"""inspect and validate of an MPT adapter folder warn, once, that engines reading a PEFT folder's
prompt_embeddings would serve the shared prompt, and name the exports that give real per-task
prompts; under --json that is a field, not a line."""

from __future__ import annotations

import json
import shlex

from mptkit._schema import check
from tests.support.commands import run_mptkit


def test_inspect_and_validate_of_an_adapter_folder_warn_once(cli, example_bank):
    r = cli("inspect", example_bank)
    assert r.exit_code == 0
    warned = [x for x in r.stdout.splitlines() if x.lstrip().startswith("warning")]
    assert len(warned) == 1
    assert "shared prompt to every task" in warned[0]
    assert f"mptkit export {shlex.quote(str(example_bank))} --all --format tgis -o DIR" in warned[0]
    r = cli("validate", example_bank)
    assert r.exit_code == 0 and r.stdout.strip() == f"{example_bank}: valid (bank)"
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "mptkit: warning: engines that load a PEFT folder's prompt_embeddings"
    )


def test_json_carries_a_field_and_no_line(example_bank):
    for cmd in (("inspect", str(example_bank), "--json"), ("validate", str(example_bank), "--json")):
        r = run_mptkit(*cmd)
        assert r.returncode == 0 and r.stderr == ""
        out = json.loads(r.stdout)
        assert check("output", out, pointer=f"/$defs/{cmd[0]}") == []  # schemas/output.schema.json
        assert out["serving"]["prompt_embeddings_is"] == "the shared prompt"
        assert out["serving"]["per_task"]["tgis"].endswith("--all --format tgis -o DIR")
        assert not any("prompt_embeddings" in n for n in out.get("notes", []) + out.get("warnings", []))


def test_a_bare_file_is_no_folder_an_engine_loads(cli, example_bank, tmp_path):
    assert cli("convert", example_bank, "-o", tmp_path / "b.safetensors").exit_code == 0
    r = cli("inspect", tmp_path / "b.safetensors", "--json")
    assert "serving" not in json.loads(r.stdout)
    r = cli("validate", tmp_path / "b.safetensors")
    assert r.stderr == ""
