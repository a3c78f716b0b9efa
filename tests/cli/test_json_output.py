"""Every command's ``--json`` output says the same thing with the same key, as
``schemas/output.schema.json`` describes it (no ``r`` beside ``rank``, names always ``task_names``,
what an operation found under ``results``)."""

from __future__ import annotations

import json
import shutil

import pytest

from mptkit._schema import check
from tests.support.banks import save_peft_bank

EXAMPLE_CASES = [
    ("inspect", ["inspect", "{bank}", "--json"]),
    ("inspect", ["inspect", "{bank}", "--values", "--json"]),
    ("validate", ["validate", "{bank}", "--values", "--json"]),
    ("written_bank", ["derive", "{bank}", "--mode", "exact", "--task", "1", "-o", "{out}.safetensors", "--json"]),
    ("written_bank", ["derive", "{bank}", "--mode", "shared", "-o", "{out}.safetensors", "--json"]),
    ("export_task", ["export", "{bank}", "--task", "2", "-o", "{out}", "--json"]),
    ("export_tasks", ["export", "{bank}", "--all", "-o", "{out}.npy", "--json"]),
    ("export_tasks", ["export", "{bank}", "--tasks", "1,3", "-o", "{out}", "--json"]),
    ("written_bank", ["rename", "{bank}", "--names", "a,b,c,d", "-o", "{out}", "--json"]),
    ("written_bank", ["slice", "{bank}", "--tasks", "3,1", "-o", "{out}", "--json"]),
    ("written_bank", ["remove", "{bank}", "--tasks", "0", "-o", "{out}", "--json"]),
    ("written_bank", ["merge", "{bank}", "{bank}", "-o", "{out}", "--json"]),
    ("written_bank", ["add", "{bank}", "--init", "average", "-o", "{out}", "--json"]),
    ("written_bank", ["rank", "{bank}", "--rank", "1", "-o", "{out}", "--json"]),
    ("written_bank", ["convert", "{bank}", "-o", "{out}.safetensors", "--json"]),
    ("similarity", ["similarity", "{bank}", "--json"]),
    ("diff", ["diff", "{bank}", "{bank}", "--json"]),
    ("error", ["slice", "{bank}", "--tasks", "9", "-o", "{out}", "--json"]),
]


@pytest.mark.parametrize("schema,args", EXAMPLE_CASES, ids=[" ".join(a[:2]) for _, a in EXAMPLE_CASES])
def test_every_command_prints_the_documented_json(schema, args, cli, example_bank, tmp_path):
    bank = tmp_path / "bank"
    shutil.copytree(example_bank, bank)
    r = cli(*[a.format(bank=bank, out=tmp_path / "out") for a in args])
    data = json.loads(r.stdout)
    assert check("output", data, pointer=f"/$defs/{schema}") == []
    if schema == "written_bank":
        assert data["num_tasks"] >= 0 and "r" not in data


def test_decompose_puts_per_task_ranks_under_results_not_over_the_rank(cli, example_bank, tmp_path):
    assert cli("export", example_bank, "--all", "-o", tmp_path / "t.npy").exit_code == 0
    r = cli(
        "decompose",
        tmp_path / "t.npy",
        "--rank",
        "auto",
        "--max-error",
        "0.5",
        "-o",
        tmp_path / "b.safetensors",
        "--json",
    )
    data = json.loads(r.stdout)
    assert check("output", data, pointer="/$defs/written_bank") == []
    assert isinstance(data["rank"], int) and set(data["results"]["rank"]) == set(data["task_names"])


def test_verify_and_diff_print_the_documented_json(cli, example_bank, tmp_path):
    assert cli("rank", example_bank, "--rank", "4", "-o", tmp_path / "up").exit_code == 0
    verified = json.loads(cli("verify", tmp_path / "up", "--json").stdout)
    assert check("output", verified, pointer="/$defs/verify") == [] and verified["identical"]
    r = cli("diff", example_bank, tmp_path / "up", "--json")
    assert r.exit_code == 1 and check("output", json.loads(r.stdout), pointer="/$defs/diff") == []


def test_pull_and_push_print_the_documented_json(hub, cli, tmp_path):
    src = save_peft_bank(tmp_path / "src", "seq2seq", "float32", True)
    pushed = json.loads(cli("push", src, "owner/bank", "--json").stdout)
    assert check("output", pushed, pointer="/$defs/push") == []
    pulled = json.loads(cli("pull", "owner/bank", "--tasks", "0", "-o", tmp_path / "one", "--json").stdout)
    assert check("output", pulled, pointer="/$defs/pull") == []


def test_the_schema_check_can_fail():
    bad = {
        "output": "x",
        "N": 1,
        "d": 1,
        "num_tasks": 1,
        "r": 2,
        "rank": 2,
        "dtype": "F32",
        "task_names": None,
        "operation": "derive",
        "arguments": {},
        "results": {},
        "provenance": None,
    }
    assert check("output", bad, pointer="/$defs/written_bank") != []
