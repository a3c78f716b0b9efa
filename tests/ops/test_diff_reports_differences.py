"""``mptkit diff A B``: configs field by field, task names, shapes, dtypes, the shared prompt, and
each task matched by name (else by index): identical (decided on bytes, no prompt computed), same
prompt, differs (relative error of the full prompt, max abs difference), renamed, only in A, only
in B. Exit 0 same, 1 different, 2 trouble."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest

from tests.support.commands import one_error

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture
def folder(tmp_path, monkeypatch, cli):
    shutil.copytree(ROOT / "examples" / "bank", tmp_path / "bank")
    monkeypatch.chdir(tmp_path)
    assert cli("rename", "bank", "--names", "sst2,mnli,qqp,rte", "-o", "named").exit_code == 0
    return tmp_path


def run(cli, *lines):
    for line in lines:
        r = cli(*shlex.split(line))
        assert r.exit_code == 0, (line, r.output)


def diff(cli, a, b):
    r = cli("diff", a, b, "--json")
    assert r.exit_code in (0, 1), r.output  # each test below asserts which
    return r.exit_code, json.loads(r.stdout)


def statuses(report):
    return [(t["task"], t["status"]) for t in report["tasks"]]


def flip(path: Path, k: int) -> None:
    """Flip a bit in task ``k``'s rows (the last tensor of the file, (T, r, d) float32)."""
    import struct

    f = path / "adapter_model.safetensors"
    with open(f, "r+b") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        info = json.loads(fh.read(n))["prefix_task_rows"]
        row = 4 * info["shape"][1] * info["shape"][2]
        fh.seek(8 + n + info["data_offsets"][0] + k * row + 5)
        b = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([b[0] ^ 0x20]))


def test_identical_banks_exit_0_on_bytes_alone(folder, cli):
    run(cli, "convert named -o copy")
    code, r = diff(cli, "named", "copy")
    assert code == 0 and r["same"] is True
    assert r["config"] == [] and r["tensors"] == [] and r["task_names"] is None
    assert r["shared"] == {"status": "identical"}
    assert statuses(r) == [("sst2", "identical"), ("mnli", "identical"), ("qqp", "identical"), ("rte", "identical")]
    assert r["prompts_computed"] == 0  # identical tasks: bytes compared, no prompt computed
    N, d, R, T = 12, 32, 2, 4
    assert r["bytes_compared"] == 2 * 4 * (N * d + T * (N * R + R * d))
    text = cli("diff", "named", "copy").stdout.splitlines()
    assert text[0] == "A: named (4 tasks, N=12, d=32, rank 2, F32)"
    assert text[2] == "shared prompt: identical"
    assert text[3].split() == ["task", "A", "B", "status", "relative", "error", "max", "abs", "diff"]
    assert text[4].split() == ["sst2", "0", "0", "identical"]
    assert text[-1].startswith("same: ") and text[-1].endswith(" compared, 0 full prompts computed")


def test_a_renamed_task_is_found_by_its_bytes(folder, cli):
    run(cli, "rename named mnli=mnli-m -o renamed")
    code, r = diff(cli, "named", "renamed")
    assert code == 1 and r["same"] is False
    assert r["task_names"] == {"a": ["sst2", "mnli", "qqp", "rte"], "b": ["sst2", "mnli-m", "qqp", "rte"]}
    assert statuses(r) == [("sst2", "identical"), ("mnli", "renamed"), ("qqp", "identical"), ("rte", "identical")]
    assert r["tasks"][1]["renamed_to"] == "mnli-m" and r["tasks"][1]["b"] == 1
    assert r["prompts_computed"] == 0
    text = cli("diff", "named", "renamed")
    assert text.exit_code == 1
    line = next(x for x in text.stdout.splitlines() if x.startswith("mnli "))
    assert line.split() == ["mnli", "1", "1", "renamed", "->", "mnli-m"]


def test_a_re_ranked_bank_has_the_same_prompts_or_says_how_far(folder, cli):
    run(cli, "rank named --rank 4 -o up", "rank named --rank 1 -o down")
    code, r = diff(cli, "named", "up")
    assert code == 1
    assert {c["field"]: (c["a"], c["b"]) for c in r["config"]} == {"num_ranks": (2, 4)}
    assert [(t["tensor"], t["a"]["shape"], t["b"]["shape"]) for t in r["tensors"]] == [
        ("prefix_task_cols", [4, 12, 2], [4, 12, 4]),
        ("prefix_task_rows", [4, 2, 32], [4, 4, 32]),
    ]
    assert r["shared"]["status"] == "identical"
    assert all(t["status"] == "same prompt" and t["relative_error"] == 0 for t in r["tasks"])  # zero padding is exact
    code, r = diff(cli, "named", "down")
    assert code == 1
    assert all(t["status"] == "differs" and 0 < t["relative_error"] < 1 for t in r["tasks"])
    assert r["prompts_computed"] == 8


def test_an_edited_task_is_the_only_one_that_differs(folder, cli):
    run(cli, "convert named -o edited")
    flip(folder / "edited", 2)
    code, r = diff(cli, "named", "edited")
    assert code == 1
    assert statuses(r) == [("sst2", "identical"), ("mnli", "identical"), ("qqp", "differs"), ("rte", "identical")]
    qqp = r["tasks"][2]
    assert 0 < qqp["relative_error"] < 1e-2 and qqp["max_abs_diff"] > 0
    assert r["prompts_computed"] == 2  # that task's two prompts, no other
    line = next(x for x in cli("diff", "named", "edited").stdout.splitlines() if x.startswith("qqp"))
    assert line.split()[:4] == ["qqp", "2", "2", "differs"] and float(line.split()[4]) == pytest.approx(
        qqp["relative_error"], rel=1e-2
    )


def test_tasks_only_in_one_bank_and_a_different_shared_prompt(folder, cli):
    run(cli, "slice named --tasks rte,sst2 -o two", "derive named --mode shared --num-tasks 1 --seed 1 -o fresh")
    code, r = diff(cli, "named", "two")
    assert code == 1 and r["task_names"]["b"] == ["rte", "sst2"]
    assert statuses(r) == [("sst2", "identical"), ("mnli", "only in A"), ("qqp", "only in A"), ("rte", "identical")]
    code, r = diff(cli, "bank", "fresh")  # neither names its tasks: matched by index
    assert code == 1 and r["matched_by"] == "index"
    assert r["shared"]["status"] == "identical"
    assert statuses(r)[0] == ("0", "differs") and [s for _, s in statuses(r)[1:]] == ["only in A"] * 3


def test_unreadable_input_is_trouble(folder, cli):
    one_error(cli("diff", "named", "missing"), "missing: no such file or folder")
