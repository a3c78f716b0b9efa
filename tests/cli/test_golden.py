"""Behaviour does not drift: every command run on the example bank gives the bytes and the report it
gave when this file was recorded (``tests/cli/golden/example_bank.json``).

Each case runs the real ``mptkit`` command line in-process, in a fresh folder holding a copy of the
example bank, and compares: the exit status, what it printed (stdout and stderr), and the sha256 of
every file it wrote. A deliberate change of behaviour re-records the file
(``python -m tests.cli.test_golden --record``) and says why in its commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

GOLDEN = Path(__file__).resolve().parent / "golden" / "example_bank.json"

#: (name, command lines run in order in one folder); the last line's outputs are recorded
CASES: list[tuple[str, list[str]]] = [
    ("inspect", ["inspect bank"]),
    ("inspect-json", ["inspect bank --json"]),
    ("inspect-values", ["inspect bank --values"]),
    ("inspect-values-tasks-json", ["inspect bank --values --tasks 1,3 --json"]),
    ("validate", ["validate bank"]),
    ("validate-values-json", ["validate bank --values --json"]),
    ("derive-exact-file", ["derive bank --mode exact --task 1 -o out.safetensors"]),
    ("derive-exact-folder-json", ["derive bank --mode exact --task 2 -o out --json"]),
    ("derive-exact-bf16", ["derive bank --mode exact --task 0 --dtype bfloat16 -o out.safetensors"]),
    ("derive-average-folder", ["derive bank --mode average -o out"]),
    ("derive-average-f16", ["derive bank --mode average --dtype float16 -o out.safetensors"]),
    ("derive-shared-file", ["derive bank --mode shared -o out.safetensors"]),
    ("derive-shared-fresh", ["derive bank --mode shared --num-tasks 2 --seed 0 -o out"]),
    ("export-task", ["export bank --task 1 -o out"]),
    ("export-task-json", ["export bank --task 3 --dtype float16 -o out --json"]),
    ("export-table-npy", ["export bank --all -o table.npy"]),
    ("export-table-st-decoder", ["export bank --tasks 0,2 --half decoder -o table.safetensors"]),
    ("export-table-both-json", ["export bank --tasks 3,1 --half both -o table.npy --json"]),
    ("export-adapters", ["export bank --all -o prompts"]),
    ("export-tgis", ["export bank --all --format tgis -o prefixes"]),
    (
        "export-tgis-both-json",
        ["export bank --tasks 3,1 --format tgis --half both --dtype bfloat16 -o prefixes --json"],
    ),
    ("decompose", ["export bank --all -o prompts", "decompose prompts --rank 2 -o out"]),
    (
        "decompose-auto-json",
        [
            "export bank --all -o table.npy",
            "decompose table.npy --rank auto --max-error 0.05 -o out.safetensors --json",
        ],
    ),
    ("decompose-shared", ["export bank --task 1 -o one", "decompose one --shared bank --rank 2 -o out.safetensors"]),
    ("rename-names", ["rename bank --names a,b,c,d -o out"]),
    ("rename-pairs-json", ["rename bank 0=first 3=last -o out.safetensors --json"]),
    ("slice", ["slice bank --tasks 3,0 -o out"]),
    ("remove-json", ["remove bank --tasks 1-2 -o out.safetensors --json"]),
    ("merge-rename-duplicates", ["slice bank --tasks 0,1 -o a", "merge a bank --rename-duplicates -o out"]),
    (
        "merge-rank-dtype",
        [
            "rank bank --rank 1 -o low",
            "rename low --names a,b,c,d -o low2",
            "merge bank low2 --rank 3 --dtype bfloat16 -o out.safetensors --json",
        ],
    ),
    ("add-average", ["add bank --name new --init average -o out"]),
    ("add-exact", ["add bank --name again --init exact:2 -o out.safetensors"]),
    ("add-random", ["add bank --name fresh --init random --seed 7 --rank 3 -o out --json"]),
    ("add-from", ["slice bank --tasks 2 -o one", "rename one --names other -o one2", "add bank --from one2 -o out"]),
    ("rank-up", ["rank bank --rank 4 -o out"]),
    ("rank-down-json", ["rank bank --rank 1 -o out.safetensors --json"]),
    ("rank-auto", ["rank bank --rank auto --max-error 0.5 -o out"]),
    ("similarity", ["similarity bank"]),
    ("similarity-top-json", ["similarity bank --top 2 --json"]),
    ("similarity-tasks", ["similarity bank --tasks 0,2,3"]),
    ("convert-file", ["convert bank -o out.safetensors"]),
    ("convert-bf16-folder-json", ["convert bank --dtype bfloat16 -o out --json"]),
    ("convert-back", ["convert bank -o out.safetensors", "convert out.safetensors -o out2"]),
    ("verify-slice", ["slice bank --tasks 3,0 -o out", "verify out"]),
    ("verify-rank-json", ["rank bank --rank 1 -o out.safetensors", "verify out.safetensors --json"]),
    ("diff-same", ["convert bank -o out", "diff bank out"]),
    ("diff-rank-json", ["rank bank --rank 4 -o out", "diff bank out --json"]),
    ("error-verify-bank", ["verify bank"]),
    ("error-unknown-task", ["derive bank --mode exact --task 9 -o out"]),
    ("error-bad-suffix", ["derive bank --mode exact --task 1 -o out.bin"]),
    ("error-exists", ["derive bank --mode average -o out", "derive bank --mode average -o out"]),
    ("error-json", ["slice bank --tasks nope -o out --json"]),
]


def _run(line: str, cwd: Path):
    from click.testing import CliRunner

    from mptkit.cli import main

    runner = CliRunner()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        result = runner.invoke(main, shlex.split(line), catch_exceptions=False)
    finally:
        os.chdir(old)
    return result


def _files(folder: Path, before: set[str]) -> dict[str, str]:
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel.split("/")[0] not in before:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_case(lines: list[str], folder: Path) -> dict:
    shutil.copytree(ROOT / "examples" / "bank", folder / "bank")
    before = {"bank"}
    for line in lines[:-1]:
        result = _run(line, folder)
        assert result.exit_code == 0, (line, result.output)
        before |= {p.name for p in folder.iterdir()}
    result = _run(lines[-1], folder)
    return {"exit": result.exit_code, "stdout": result.stdout, "stderr": result.stderr, "files": _files(folder, before)}


@pytest.mark.parametrize("name,lines", CASES, ids=[c[0] for c in CASES])
def test_the_example_bank_gives_the_recorded_outputs(name, lines, tmp_path):
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    got = run_case(lines, tmp_path)
    want = golden[name]
    assert got["exit"] == want["exit"], got
    assert got["stdout"] == want["stdout"]
    assert got["stderr"] == want["stderr"]
    assert got["files"] == want["files"]


def test_every_case_is_recorded():
    assert set(json.loads(GOLDEN.read_text(encoding="utf-8"))) == {c[0] for c in CASES}


if __name__ == "__main__" and "--record" in sys.argv:
    import tempfile

    os.environ.setdefault("MPTKIT_CACHE", tempfile.mkdtemp())
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    record = {}
    for name, lines in CASES:
        with tempfile.TemporaryDirectory() as d:
            record[name] = run_case(lines, Path(d))
            print(name, record[name]["exit"], len(record[name]["files"]))
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(record, indent=1, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
