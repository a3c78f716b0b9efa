"""``mptkit verify BANK`` runs the bank's last recorded step again on its recorded sources and
compares: exit 0 when every byte matches, 1 naming the tasks that differ and by how much, 2 when it
cannot (a source missing or changed, provenance that lacks what a rebuild needs)."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest

from tests.recipes.recipeutil import flip_byte, write
from tests.support.commands import one_error

ROOT = Path(__file__).resolve().parent.parent.parent

#: (name, commands run in a folder holding a copy of the example bank, the output they make)
STEPS = [
    ("derive-exact", ["derive bank --mode exact --task 1 -o out.safetensors"], "out.safetensors"),
    ("derive-average-f16", ["derive bank --mode average --dtype float16 -o out"], "out"),
    ("derive-shared-fresh", ["derive bank --mode shared --num-tasks 2 --seed 3 -o out"], "out"),
    ("slice", ["slice bank --tasks 3,0 -o out"], "out"),
    ("remove", ["remove bank --tasks 1-2 -o out.safetensors"], "out.safetensors"),
    ("rename-names", ["rename bank --names a,b,c,d -o out"], "out"),
    ("rename-pairs", ["rename bank --names a,b,c,d -o named", "rename named a=first -o out"], "out"),
    (
        "merge",
        ["rank bank --rank 1 -o low", "rename low --names a,b,c,d -o low2", "merge bank low2 --rank 3 -o out"],
        "out",
    ),  # fmt: skip
    ("add-average", ["add bank --name new --init average -o out"], "out"),
    ("add-random", ["add bank --name fresh --init random --seed 7 --rank 3 -o out"], "out"),
    (
        "add-from",
        ["slice bank --tasks 2 -o one", "rename one --names other -o one2", "add bank --from one2 -o out"],
        "out",
    ),  # fmt: skip
    ("rank-down", ["rank bank --rank 1 -o out"], "out"),
    ("rank-auto", ["rank bank --rank auto --max-error 0.5 -o out"], "out"),
    ("convert-bf16", ["convert bank --dtype bfloat16 -o out.safetensors"], "out.safetensors"),
    ("export-task", ["export bank --task 1 --dtype float16 -o out"], "out"),
    ("export-table-npy", ["export bank --tasks 0,2 --half decoder -o out.npy"], "out.npy"),
    ("export-table-st", ["export bank --all -o out.safetensors"], "out.safetensors"),
    ("export-adapters", ["export bank --all -o out"], "out"),
    ("decompose", ["export bank --all -o prompts", "decompose prompts --rank 2 -o out"], "out"),
    (
        "decompose-shared",
        ["export bank --task 1 -o one", "decompose one --shared bank --rank 2 --dtype bfloat16 -o out"],
        "out",
    ),  # fmt: skip
]


@pytest.fixture
def example(tmp_path, monkeypatch):
    shutil.copytree(ROOT / "examples" / "bank", tmp_path / "bank")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_all(cli, lines):
    for line in lines:
        r = cli(*shlex.split(line))
        assert r.exit_code == 0, (line, r.output)


@pytest.mark.parametrize("name,lines,out", STEPS, ids=[s[0] for s in STEPS])
def test_every_step_verifies(name, lines, out, example, cli):
    run_all(cli, lines)
    r = cli("verify", out)
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(f"verified {out}: identical to what its ")
    report = json.loads(cli("verify", out, "--json").stdout)
    assert report["identical"] is True and report["differences"] == [] and report["sources"]


@pytest.mark.parametrize("name", ["slice", "merge", "rank-down", "add-from", "decompose"])
def test_a_flipped_byte_is_named_by_its_task(name, example, cli):
    lines, out = next((s[1], s[2]) for s in STEPS if s[0] == name)
    run_all(cli, lines)
    flip_byte(example / out, 1)
    r = cli("verify", out, "--json")
    assert r.exit_code == 1, r.output
    report = json.loads(r.stdout)
    assert report["identical"] is False
    (d,) = report["differences"]
    assert d["a"] == d["b"] == 1 and d["status"] == "differs" and 0 < d["relative_error"] < 1e-3
    text = cli("verify", out).stdout
    assert f"task {d['task']} differs: relative error " in text


def test_a_flipped_exported_prompt_is_named(example, cli):
    run_all(cli, ["export bank --task 2 -o out"])
    with open(example / "out/adapter_model.safetensors", "r+b") as f:
        f.seek(-7, 2)
        b = f.read(1)
        f.seek(-7, 2)
        f.write(bytes([b[0] ^ 1]))
    r = cli("verify", "out")
    assert r.exit_code == 1
    assert "task 2 differs: relative error" in r.stdout


def test_a_missing_source_and_a_changed_source_exit_2_naming_it(example, cli):
    run_all(cli, ["slice bank --tasks 3,0 -o mid", "rename mid --names x,y -o out"])
    flip_byte(example / "mid", 0)
    one_error(cli("verify", "out"), "the source mid of its rename step moved: its sha256 is now")
    shutil.rmtree(example / "mid")
    r = cli("verify", "out")
    one_error(r, "the source mid (sha256 ", "of its rename step is missing")


def test_sources_are_read_from_root(example, cli, tmp_path, monkeypatch):
    run_all(cli, ["slice bank --tasks 3,0 -o out"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    one_error(cli("verify", example / "out"), "the source bank ", "is missing")
    assert cli("verify", example / "out", "--root", example).exit_code == 0


def test_provenance_without_paths_cannot_be_rebuilt(example, cli):
    """A bank written before provenance recorded where its sources were read."""
    import mptkit

    run_all(cli, ["slice bank --tasks 3,0 -o out.safetensors"])
    bank = mptkit.load("out.safetensors")
    for src in bank.provenance[-1]["sources"]:
        del src["path"]
    mptkit.save(bank, "old.safetensors")
    msg = one_error(cli("verify", "old.safetensors"), "its slice step's provenance lacks where its source 'bank'")
    assert "cannot be rebuilt" in msg


def test_a_bank_without_provenance_or_with_an_unknown_step(example, cli, peft_banks):
    one_error(cli("verify", peft_banks("causal")), "records no provenance")
    import mptkit

    bank = mptkit.load("bank")
    bank.provenance = [{"operation": "train", "arguments": {}, "sources": []}]
    mptkit.save(bank, "trained.safetensors")
    one_error(cli("verify", "trained.safetensors"), "its last step is 'train', which verify cannot run again")


def test_a_built_bank_verifies_then_fails_on_a_flipped_byte_and_stops_without_a_source(world, glue_on_hub, cli):
    write("recipe.yaml", "sources:\n  - bank: hf://owner/glue@v1\n    tasks: [qqp, 0]\n  - bank: qa\n"
          "  - prompts: single\n    rank: 2\n")  # fmt: skip
    assert cli("build", "recipe.yaml", "-o", "built").exit_code == 0
    r = cli("verify", "built")
    assert r.exit_code == 0, r.output
    assert "verified built: identical to what its build step gives from its 4 sources" in r.stdout
    flip_byte(world / "built", 3, at=1000)  # boolq2, the second task of qa (its first rank component)
    r = cli("verify", "built")
    assert r.exit_code == 1
    assert "  task boolq2 differs: relative error" in r.stdout
    assert sum(line.startswith("  task ") for line in r.stdout.splitlines()) == 1
    shutil.rmtree(world / "single" / "copa")
    one_error(cli("verify", "built"), "cannot rebuild built", "sources[2]", "single")
