"""Bad recipes, clumsy or hostile: each gets one sentence naming the recipe's line (and the field),
exit status 2, nothing written, before any work; a billion-laughs recipe and a 1 GB file are refused
in bounded memory (the child process's own peak RSS, beside a small bad recipe's in the same run)."""

from __future__ import annotations

import os

import pytest

from tests.recipes.recipeutil import write
from tests.support.commands import one_error
from tests.support.measured import killed_for_cpu, run_measured

#: (name, recipe text, words the one sentence holds); the sources are conftest's world
CASES = [
    ("unknown-key", "sources:\n  - bank: glue\nbogus: 1\n", ["line 3, bogus: unexpected field 'bogus'"]),
    ("unknown-source-key", "sources:\n  - bank: glue\n    taks: [sst2]\n", ["line 3, sources[0].taks: unexpected"]),
    ("both-kinds", "sources:\n  - prompts: single\n    bank: glue\n", ["line 3, sources[0].bank: unexpected"]),
    ("wrong-type-tasks", "sources:\n  - bank: glue\n    tasks: sst2\n", ["line 3, sources[0].tasks: expected array"]),
    ("wrong-type-rank", "sources:\n  - bank: glue\nrank: two\n", ['line 3, rank: expected integer, found "two"']),
    ("wrong-dtype", "sources:\n  - bank: glue\ndtype: fp8\n", ["line 3, dtype: expected one of"]),
    ("no-sources", "output: x\n", ["line 1: field 'sources' is missing"]),
    ("empty-sources", "sources: []\n", ["line 1, sources: "]),
    ("missing-bank", "sources:\n  - bank: glue\n  - bank: nothere/\n", ["line 3, sources[1].bank: nothere/: no such"]),
    (
        "missing-prompts",
        "sources:\n  - bank: glue\n  - prompts: [single/boolq, nope]\n",
        ["line 3, sources[1].prompts[1]: nope: no such file"],
    ),  # fmt: skip
    ("missing-hub-repo", "sources:\n  - bank: hf://owner/absent\n", ["line 2, sources[0].bank: hf://owner/absent"]),
    (
        "unknown-task",
        "sources:\n  - bank: glue\n    tasks:\n      - sst2\n      - mnlii\n",
        ["line 5, sources[0].tasks[1]: unknown task 'mnlii'", "did you mean 'mnli'"],
    ),  # fmt: skip
    (
        "task-twice",
        "sources:\n  - bank: glue\n    tasks: [sst2, qqp, 0]\n",
        ["line 3, sources[0].tasks[2]: task 0 (sst2) is taken twice (also sources[0].tasks[0])"],
    ),  # fmt: skip
    (
        "duplicate-names",
        "sources:\n  - bank: glue\n    tasks: [sst2]\n  - bank: glue\n    tasks: [qqp]\n    rename: {qqp: sst2}\n",
        ["line 6, sources[1].rename: task name 'sst2' is also sources[0]'s"],
    ),  # fmt: skip
    (
        "clashing-prompt-name",
        "sources:\n  - bank: qa\n  - prompts: single\n    names: [squad, copa]\n",
        ["line 4, sources[1].names: task name 'squad' is also sources[0]'s"],
    ),  # fmt: skip
    ("bad-rename-name", "sources:\n  - bank: glue\n    rename: {sst2: 'a,b'}\n", ["line 3, sources[0].rename.sst2"]),
    (
        "shared-differs",
        "sources:\n  - bank: glue\n  - bank: diffpe\n",
        ["line 3, sources[1].bank: its shared prompt differs from sources[0]'s", "(shared: 0)"],
    ),  # fmt: skip
    (
        "shared-not-a-bank",
        "sources:\n  - bank: glue\n  - prompts: single\nshared: 1\n",
        ["line 4, shared: source 1 is not a bank source"],
    ),  # fmt: skip
    ("only-prompts", "sources:\n  - prompts: single\n", ["line 1, sources: no bank among the sources"]),
    ("duplicate-key", "sources:\n  - bank: glue\nsources:\n  - bank: qa\n", ["line 3: 'sources' is given twice"]),
    ("timestamp", "sources:\n  - bank: 2024-01-01\n", ["line 2: '2024-01-01' reads as a YAML !!timestamp"]),
    (
        "python-tag",
        "sources:\n  - bank: !!python/object/apply:os.system [echo hi]\n",
        ["line 2: a YAML !!python/object/apply:os.system value; a recipe holds only"],
    ),  # fmt: skip
    ("not-yaml", "sources:\n  - bank: glue\n   tasks: [\n", ["line 3: not valid YAML"]),
    ("not-a-mapping", "- bank: glue\n", ["line 1: expected a mapping (sources:, rank:, output: ...), found a list"]),
    ("empty", "", ["line 1: the recipe is empty"]),
    ("deep", "sources: " + "[" * 500 + "]" * 500 + "\n", ["line 1: nested more than 40 levels deep"]),
    ("no-output", "sources:\n  - bank: glue\n", ["no output: give -o OUT"]),
]


@pytest.mark.parametrize("name,text,words", CASES, ids=[c[0] for c in CASES])
def test_a_bad_recipe_is_one_sentence_with_its_line(name, text, words, world, hub, cli):
    write("bad.yaml", text)
    before = sorted(p.name for p in world.rglob("*"))
    args = ["build", "bad.yaml"] + ([] if name == "no-output" else ["-o", "out"])
    r = cli(*args)
    msg = one_error(r, *words)
    assert msg.startswith("mptkit: error: bad.yaml") and len(msg.strip().splitlines()) == 1
    assert sorted(p.name for p in world.rglob("*")) == before  # nothing written


def test_an_existing_output_is_refused_before_any_work(world, cli):
    write("ok.yaml", "sources:\n  - bank: glue\n    tasks: [sst2]\noutput: qa\n")
    one_error(cli("build", "ok.yaml"), "line 4, output: qa: already exists; replacing it needs --force")


def test_a_recipe_that_is_not_utf8_names_its_line(world, cli):
    (world / "bin.yaml").write_bytes(b"sources:\n  - bank: gl\xffue\n")
    one_error(cli("build", "bin.yaml", "-o", "out"), "bin.yaml line 2: not UTF-8 text")


BOMB = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(f"{b}: &{b} [{', '.join(['*' + a] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi"))
    + "sources:\n  - bank: glue\n"
)


def test_an_alias_bomb_and_a_1gb_file_are_refused_in_bounded_memory(tmp_path):
    small = write(tmp_path / "small.yaml", "sources:\n  - bank: x\nbogus: 1\n")
    bomb = write(tmp_path / "bomb.yaml", BOMB)  # 9**9 = 387 million strings once expanded
    huge = tmp_path / "huge.yaml"
    with open(huge, "wb") as f:  # 1 GB: a valid start, then a sparse run of zero bytes
        f.write(b"sources:\n  - bank: x\n" + b"# padding\n" * 1000)
        f.truncate(1 << 30)
    keys = tmp_path / "keys.yaml"
    keys.write_text("sources:\n  - bank: x\n" + "".join(f"k{i}: {i}\n" for i in range(60_000)))  # 900 kB, 60k keys
    runs = {p.name: run_measured("build", p, "-o", tmp_path / "out", cpu_limit_s=60) for p in (small, bomb, huge, keys)}
    for name, m in runs.items():
        assert not killed_for_cpu(m), name
        assert m.returncode == 2, (name, m.stderr)
        lines = m.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"mptkit: error: {tmp_path / name} line "), (name, m.stderr)
        print(f"{name}: peak RSS {m.peak_rss_mb:.1f} MB")
    assert "expands to more than 20,000 values" in runs["bomb.yaml"].stderr
    assert "goes on past the 1 MB a recipe may have (it has 1,073,741,824 bytes)" in runs["huge.yaml"].stderr
    assert "more than 20,000 YAML values" in runs["keys.yaml"].stderr
    baseline = runs["small.yaml"].peak_rss_mb
    for name in ("bomb.yaml", "huge.yaml", "keys.yaml"):
        assert runs[name].peak_rss_mb < baseline + 40, (name, runs[name].peak_rss_mb, baseline)
    assert not os.path.exists(tmp_path / "out")
