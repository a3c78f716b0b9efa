"""Every command as a user expects: output paths, compatible merges, honest messages,
one error style and exit status. CLI runs that matter are subprocesses (`python -m mptkit`), with
the exact exit status and the sentence's key words."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mptkit
from tests.support import ROOT
from tests.support.banks import peft_load, peft_model, random_bank, save_peft_bank, write_bank
from tests.support.commands import one_error, run_mptkit

EXAMPLE = ROOT / "examples" / "bank"


def config_bank(path: Path, config: dict, *, seed: int = 0, pe=None, T: int = 2) -> Path:
    """A bare bank (N=4, d=6, r=2) whose mptkit.config metadata carries ``config``."""
    g = torch.Generator().manual_seed(seed)
    pe = torch.randn(4, 6, generator=g) if pe is None else pe
    return write_bank(
        path,
        pe,
        torch.randn(T, 4, 2, generator=g),
        torch.randn(T, 2, 6, generator=g),
        extra_meta={"mptkit.config": json.dumps(config)},
    )


# -- output paths --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,words",
    [
        ("out.bin", ["does not write .bin files", "did you mean out.safetensors?"]),
        ("out.pt", ["does not write .pt files", "did you mean out.safetensors?"]),
        ("out.pth", ["did you mean out.safetensors?"]),
        ("-", ["not to standard output"]),
        ("out.safetensor", ["misspelt .safetensors", "did you mean out.safetensors?"]),
        ("out.safetensors.", ["did you mean out.safetensors?"]),
        ("out.safetensors.tmp", ["did you mean out.safetensors?"]),
        ("v1.2", ["end it with /: v1.2/"]),
    ],
)
@pytest.mark.parametrize(
    "command", [["slice", str(EXAMPLE), "--tasks", "2,0"], ["derive", str(EXAMPLE), "--mode", "exact", "--task", "1"]]
)
def test_other_suffixes_are_refused_with_a_suggestion(tmp_path, name, words, command):
    one_error(run_mptkit(*command, "-o", name, cwd=tmp_path), *words)
    assert os.listdir(tmp_path) == []


def test_the_suffix_rule_is_the_apis_and_a_command_can_widen_it(tmp_path):
    from mptkit.formats._targets import output_kind

    bank = mptkit.load(EXAMPLE)
    with pytest.raises(mptkit.MptkitError, match="did you mean .*out.safetensors"):
        mptkit.save(bank, tmp_path / "out.bin")
    assert output_kind("a.safetensors") == "file" and output_kind("a") == output_kind("v1.2/") == "folder"
    assert output_kind("t.npy", files={".npy": "table", ".safetensors": "table"}) == "table"
    with pytest.raises(mptkit.MptkitError, match="this command writes an adapter folder"):
        output_kind("x.safetensors", files={})
    for out in ("folder", "dotted.v2/"):
        assert run_mptkit("slice", EXAMPLE, "--tasks", "0", "-o", out, cwd=tmp_path).returncode == 0
        assert mptkit.load(tmp_path / out).num_tasks == 1
    assert sorted(os.listdir(tmp_path)) == ["dotted.v2", "folder"]


# -- compatible merges ----------------------------------------------------------------------------------
MISMATCHES = [
    ({"task_type": "SEQ_CLS"}, {"task_type": "TOKEN_CLS"}, "task_type differs", "SEQ_CLS", "TOKEN_CLS"),
    ({"task_type": "SEQ_CLS"}, {"task_type": "CAUSAL_LM"}, "task_type differs", "SEQ_CLS", "CAUSAL_LM"),
    (
        {"task_type": "CAUSAL_LM", "base_model_name_or_path": "gpt2"},
        {"task_type": "CAUSAL_LM", "base_model_name_or_path": "meta-llama/Llama-2-7b-hf"},
        "base model differs",
        "gpt2",
        "meta-llama/Llama-2-7b-hf",
    ),
    (
        {"num_transformer_submodules": 1},
        {"num_transformer_submodules": 2},
        "num_transformer_submodules differs",
        "1",
        "2",
    ),
]


@pytest.mark.parametrize("cfg_a,cfg_b,what,va,vb", MISMATCHES)
def test_merge_and_add_refuse_banks_made_for_other_tasks_or_models(tmp_path, cli, cfg_a, cfg_b, what, va, vb):
    a = config_bank(tmp_path / "a.safetensors", cfg_a, seed=1)
    b = config_bank(tmp_path / "b.safetensors", cfg_b, seed=2)  # another shared prompt: --refit is needed too
    line = one_error(run_mptkit("merge", a, b, "--refit", "-o", tmp_path / "out.safetensors"), what, "--allow-mismatch")
    assert f"{a}: {va}" in line and f"{b}: {vb}" in line
    for argv in (["merge", a, b, "--refit", "--rank", "4"], ["add", a, "--from", f"{b}:0", "--refit"]):
        r = cli(*argv, "-o", tmp_path / "out.safetensors")
        assert r.exit_code == 2 and what in r.stderr and f"{a}: {va}" in r.stderr and f"{b}: {vb}" in r.stderr
    assert not (tmp_path / "out.safetensors").exists()
    r = cli("merge", a, b, "--refit", "--allow-mismatch", "-o", tmp_path / "out.safetensors", "--json")
    assert r.exit_code == 0, r.output
    out = mptkit.load(tmp_path / "out.safetensors")
    assert out.num_tasks == 4 and all(out.config.get(k) == v for k, v in cfg_a.items())  # the first bank's


def test_merge_of_matching_configs_needs_no_option(tmp_path):
    cfg = {"task_type": "CAUSAL_LM", "base_model_name_or_path": "gpt2", "num_virtual_tokens": 4}
    a = config_bank(tmp_path / "a.safetensors", cfg, seed=1)
    b = config_bank(
        tmp_path / "b.safetensors",
        {"task_type": "CAUSAL_LM"},
        seed=2,
        pe=mptkit.load(a).tensors["prompt_embeddings"].to_torch(),
    )  # b does not say its base model: nothing to compare
    assert run_mptkit("merge", a, b, "-o", tmp_path / "m.safetensors").returncode == 0


def _train_target_with_peft(source: Path, tmp: Path, cli) -> tuple[Path, object]:
    """A target task trained with PEFT from task 1 of ``source`` (EXACT_SOURCE_TASK), a few Adam
    steps that move every MPT parameter, embedding.weight included; saved with save_pretrained."""
    init = tmp / "init.safetensors"
    assert cli("derive", source, "--mode", "exact", "--task", "1", "-o", init).exit_code == 0
    model = peft_model("seq2seq", num_tasks=1, num_ranks=2, init="EXACT_SOURCE_TASK", init_path=str(init))
    g = torch.Generator().manual_seed(3)
    ids, labels = torch.randint(2, 96, (4, 7), generator=g), torch.randint(2, 96, (4, 3), generator=g)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=3e-2)
    for _ in range(4):
        model(input_ids=ids, labels=labels, task_ids=torch.zeros(4, dtype=torch.long)).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(str(tmp / "target"))
    return tmp / "target", (ids, labels)


def test_a_peft_trained_target_merges_back_exactly_at_the_rank_the_messages_name(tmp_path, cli):
    source = save_peft_bank(tmp_path / "source", num_tasks=3, num_ranks=2)  # N = 5 x 2 = 10, d = 24, r = 2
    target, (ids, labels) = _train_target_with_peft(source, tmp_path, cli)
    # without --refit: refused, and the message says a refit at rank 2 is lossy and which rank is exact
    one_error(
        run_mptkit("merge", source, target, "-o", tmp_path / "m0"),
        "shared prompts differ",
        "--refit",
        "at rank 2 that is a fit",
        "--rank 10",
        "makes it exact",
    )
    r = cli("merge", source, target, "--refit", "-o", tmp_path / "m1")
    assert r.exit_code == 0, r.output
    assert "an output rank of 10 makes it exact (run again with --rank 10)" in r.stdout
    lossy = json.loads(cli("merge", source, target, "--refit", "-o", tmp_path / "m2", "--json").stdout)
    assert lossy["results"]["exact_rank"] == 10 and lossy["results"]["refit"]["3"]["relative_error"] > 1e-4
    r = cli("merge", source, target, "--refit", "--max-error", "1e-6", "-o", tmp_path / "m3")
    assert r.exit_code == 2 and "above --max-error" in r.stderr and "--rank 10" in r.stderr
    assert "makes this refit exact" in r.stderr and not (tmp_path / "m3").exists()
    r = cli("merge", source, target, "--refit", "--rank", "10", "-o", tmp_path / "m4", "--json")
    assert r.exit_code == 0, r.output
    exact = json.loads(r.stdout)
    assert exact["rank"] == 10 and "exact_rank" not in exact["results"]
    assert exact["results"]["refit"]["3"]["relative_error"] < 1e-6
    # PEFT loads the merged bank, and task 3 gives the trained target's logits
    merged, _ = peft_load(tmp_path / "m4")
    trained, _ = peft_load(target)
    with torch.no_grad():
        want = trained(input_ids=ids, labels=labels, task_ids=torch.zeros(4, dtype=torch.long)).logits
        got = merged(input_ids=ids, labels=labels, task_ids=torch.full((4,), 3, dtype=torch.long)).logits
        old = merged(input_ids=ids, labels=labels, task_ids=torch.ones(4, dtype=torch.long)).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (old - want).abs().max() > 1e-3  # (the target did move away from its source task)
    help_text = cli("merge", "--help").stdout
    assert "--refit" in help_text and "exact" in help_text and "--rank" in help_text


# -- messages in the sources' terms --------------------------------------------------------------------
def test_slice_remove_and_merge_say_which_source_tasks_were_kept(tmp_path):
    r = run_mptkit("slice", EXAMPLE, "--tasks", "2,0", "-o", tmp_path / "s")
    assert r.returncode == 0
    assert r.stdout.splitlines() == [
        f"wrote {tmp_path / 's'}: 2 tasks, rank 2, F32",
        f"  kept tasks 2, 0 of {EXAMPLE}, now tasks 0, 1",
    ]
    r = run_mptkit("remove", EXAMPLE, "--tasks", "1", "-o", tmp_path / "r")
    assert f"  removed task 1 of {EXAMPLE}; kept tasks 0, 2, 3, now tasks 0-2" in r.stdout.splitlines()
    r = run_mptkit("merge", EXAMPLE, tmp_path / "s", "-o", tmp_path / "m")
    assert f"  tasks 0-3 from {EXAMPLE}; tasks 4, 5 from {tmp_path / 's'} (its 0, 1)" in r.stdout.splitlines()
    data = json.loads(run_mptkit("slice", EXAMPLE, "--tasks", "3,1", "-o", tmp_path / "j", "--json").stdout)
    assert data["arguments"]["tasks"] == [3, 1] and data["task_names"] is None


def test_add_never_renames_silently(tmp_path, cli):
    r = run_mptkit("add", EXAMPLE, "--init", "average", "-o", tmp_path / "plain")  # no name on an unnamed bank
    assert r.returncode == 0 and mptkit.load(tmp_path / "plain").task_names is None
    assert f"added task 4: the mean of the factors of {EXAMPLE}'s tasks" in r.stdout
    r = cli("add", EXAMPLE, "--name", "new", "--init", "average", "-o", tmp_path / "named")
    assert f"{EXAMPLE} named none of its tasks: its tasks 0-3 are named task0, task1, task2, task3 here" in r.stdout
    data = json.loads(cli("add", EXAMPLE, "--name", "new", "--init", "exact:2", "-o", tmp_path / "j", "--json").stdout)
    assert data["results"]["named"] == {"0": "task0", "1": "task1", "2": "task2", "3": "task3"}
    one_error(
        run_mptkit("add", tmp_path / "named", "--init", "average", "-o", tmp_path / "x"), "give the new one a name"
    )
    r = cli("merge", tmp_path / "named", EXAMPLE, "-o", tmp_path / "m")
    assert f"{EXAMPLE} named none of its tasks: its tasks 0-3 are named task5, task6, task7, task8 here" in r.stdout


#: runs the CLI with the operations that do the work replaced by ones that say they ran
WORK_SPY = """
import sys
import mptkit._derive, mptkit._edit, mptkit._merge, mptkit._similarity
def spy(name, real):
    def run(*a, **k):
        print("WORK RAN: " + name, file=sys.stderr)
        return real(*a, **k)
    return run
for mod, name in ((mptkit._similarity, "similarity"), (mptkit._merge, "merge"), (mptkit._edit, "slice_tasks"),
                  (mptkit._derive, "derive"), (mptkit._edit, "change_rank")):
    setattr(mod, name, spy(name, getattr(mod, name)))
from mptkit.cli import main
main(sys.argv[1:], prog_name="mptkit")
"""


def test_checks_that_can_fail_come_before_the_work(tmp_path):
    png = tmp_path / "heatmap.png"
    png.write_bytes(b"an earlier image")
    existing = tmp_path / "existing.safetensors"
    existing.write_bytes(b"not even a bank")
    notabank = tmp_path / "notabank"
    notabank.mkdir()
    (notabank / "notes.txt").write_text("mine")
    cases = [
        (["similarity", EXAMPLE, "--plot", png], "already exists"),
        (["merge", EXAMPLE, EXAMPLE, "--rename-duplicates", "-o", existing], "already exists"),
        (["derive", EXAMPLE, "--mode", "average", "-o", notabank, "--force"], "not part of a bank"),
        (["rank", EXAMPLE, "--rank", "1", "-o", existing, "--force"], "not a bank mptkit reads"),
        (["slice", EXAMPLE, "--tasks", "0", "-o", tmp_path / ("x" * 256)], "at most 255 bytes"),
    ]
    for argv, words in cases:
        r = subprocess.run(
            [sys.executable, "-c", WORK_SPY, *map(str, argv)], capture_output=True, text=True, timeout=120
        )
        one_error(r, words)
        assert r.stdout == ""
    assert png.read_bytes() == b"an earlier image" and existing.read_bytes() == b"not even a bank"
    r = subprocess.run(
        [sys.executable, "-c", WORK_SPY, "similarity", str(EXAMPLE), "--plot", str(png), "--force"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "WORK RAN: similarity" in r.stderr  # (the spy sees the work when it happens)


# -- exit statuses and one error style --------------------------------------------------------------------
def test_debug_adds_the_traceback_and_keeps_exit_2():
    r = run_mptkit("--debug", "slice", EXAMPLE, "--tasks", "9", "-o", "never")
    assert r.returncode == 2 and "Traceback" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("mptkit: error: task 9 is out of range")


def test_json_errors_are_json_on_stdout(tmp_path):
    for argv in (
        ["inspect", "nope", "--json"],
        ["slice", EXAMPLE, "--bogus", "--json"],
        ["slice", EXAMPLE, "--tasks", "7", "-o", tmp_path / "x", "--json"],
    ):
        r = run_mptkit(*argv)
        assert r.returncode == 2 and r.stderr == "", r.stderr
        data = json.loads(r.stdout)
        assert set(data) == {"error", "problems"} and data["problems"][0] == data["error"]


@pytest.mark.parametrize(
    "argv,words",
    [
        (["slice", str(EXAMPLE), "--bogus"], ["No such option '--bogus'", "(see 'mptkit slice --help')"]),
        (["slice"], ["Missing argument 'SRC'"]),
        (["derive", str(EXAMPLE), "--mode", "nope", "-o", "x"], ["'nope' is not one of"]),
        (["frobnicate"], ["No such command 'frobnicate'"]),
    ],
)
def test_clicks_usage_errors_have_the_same_style(argv, words):
    r = run_mptkit(*argv)
    one_error(r, *words)
    assert "Usage:" not in r.stderr and "Error:" not in r.stderr.replace("mptkit: error:", "")


def test_a_bug_is_exit_1_and_says_so(tmp_path):
    driver = (
        "import sys, mptkit._edit as e\n"
        "def boom(*a, **k):\n    raise RuntimeError('deliberate')\n"
        "e.slice_tasks = boom\nfrom mptkit.cli import main; main(sys.argv[1:], prog_name='mptkit')"
    )
    r = subprocess.run(
        [sys.executable, "-c", driver, "slice", str(EXAMPLE), "--tasks", "0", "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and "mptkit: error: internal error: RuntimeError: deliberate (a bug in mptkit" in r.stderr


def test_dtype_accepts_the_same_set_everywhere(tmp_path):
    from mptkit._dtypes import USER_NAMES as DTYPES
    from mptkit.cli import main

    seen = {name: p.type.choices for name, cmd in main.commands.items() for p in cmd.params if p.name == "dtype"}
    assert set(seen) >= {"derive", "export", "merge"} and all(tuple(c) == DTYPES for c in seen.values())
    for argv in (
        ["derive", EXAMPLE, "--mode", "exact", "--task", "1"],
        ["merge", EXAMPLE, EXAMPLE, "--rename-duplicates"],
    ):
        out = tmp_path / f"{argv[0]}.safetensors"
        assert run_mptkit(*argv, "--dtype", "float64", "-o", out).returncode == 0 and mptkit.load(out).dtype == "F64"


# -- wording --------------------------------------------------------------------------------------------
def test_singular_plural_and_ranges(tmp_path):
    one = tmp_path / "one.safetensors"
    assert run_mptkit("derive", EXAMPLE, "--mode", "exact", "--task", "1", "-o", one).returncode == 0
    text = run_mptkit("inspect", one).stdout
    assert "none (task 0)" in text and "1 separate prompt would hold" in text and "indices 0-0" not in text
    r = run_mptkit("derive", one, "--mode", "average", "-o", tmp_path / "avg.safetensors")
    assert "the mean of the factors of 1 task of" in r.stdout and "1 tasks" not in r.stdout
    one_error(run_mptkit("slice", one, "--tasks", "3", "-o", tmp_path / "x"), "has 1 task (index 0; it names none)")
    line = one_error(
        run_mptkit("slice", EXAMPLE, "--tasks", "0,0", "-o", tmp_path / "x"), "task 0 is listed more than once"
    )
    assert "(0)" not in line
    text = run_mptkit("inspect", EXAMPLE).stdout
    assert "6 virtual tokens x 2 submodules" in text and "(s)" not in text


def test_inspect_values_columns_line_up(tmp_path):
    src = random_bank(tmp_path / "b.safetensors", T=3, names=["a", "a-much-longer-task-name", "mid"])
    lines = run_mptkit("inspect", "--values", src).stdout.splitlines()
    start = next(i for i, x in enumerate(lines) if x.lstrip().startswith("per task"))
    table = [lines[start].replace("per task", " " * 8, 1)] + lines[start + 1 : start + 4]
    ends = [[m.end() for m in re.finditer(r"\S+", row)][2:5] for row in table]  # the three norm columns
    assert len(table) == 4 and all(e == ends[0] for e in ends), table


def test_the_python_error_names_the_python_option(tmp_path):
    out = tmp_path / "o.safetensors"
    mptkit.save(mptkit.load(EXAMPLE), out)
    with pytest.raises(mptkit.MptkitError, match=r"force=True") as e:
        mptkit.save(mptkit.load(EXAMPLE), out)
    assert "pass --force" not in str(e.value)


# -- hints ------------------------------------------------------------------------------------------------
def test_a_repo_id_where_a_path_was_expected_suggests_hf(tmp_path):
    one_error(
        run_mptkit("inspect", "owner/my-bank", cwd=tmp_path), "no such file or folder", "write hf://owner/my-bank"
    )
    one_error(run_mptkit("slice", "owner/my-bank@v2", "--tasks", "0", "-o", "x", cwd=tmp_path), "hf://owner/my-bank@v2")
    line = one_error(run_mptkit("inspect", "./nope", cwd=tmp_path), "no such file")
    assert "hf://" not in line


def test_an_unknown_task_name_suggests_the_nearest(tmp_path):
    src = random_bank(tmp_path / "b.safetensors", T=3, names=["sst2", "mnli", "qqp"])
    one_error(
        run_mptkit("slice", src, "--tasks", "MNLI", "-o", tmp_path / "x.safetensors"),
        "unknown task 'MNLI'",
        "did you mean 'mnli'?",
    )
    one_error(run_mptkit("slice", src, "--tasks", "sst", "-o", tmp_path / "x.safetensors"), "did you mean 'sst2'?")
    line = one_error(run_mptkit("slice", src, "--tasks", "zzzz", "-o", tmp_path / "x.safetensors"), "unknown task")
    assert "did you mean" not in line


def test_shell_completion_works_and_is_documented():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for shell in ("bash", "zsh", "fish"):
        assert f"_MPTKIT_COMPLETE={shell}_source mptkit" in readme
    r = subprocess.run(
        [sys.executable, "-m", "mptkit"],
        env={**os.environ, "_MPTKIT_COMPLETE": "bash_source"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and "complete" in r.stdout and "_MPTKIT_COMPLETE" in r.stdout


@pytest.mark.parametrize("extra,status", [([], 0), (["--max-error", "1e-9"], 2)])
def test_a_command_that_imported_torch_skips_the_teardown_but_not_the_exit_handlers(tmp_path, extra, status):
    """Once torch is imported, the console script ends without tearing the interpreter down (0.4-0.5 s
    here): the exit handlers still run, the streams are flushed, the status is kept; the teardown
    (a module-level object's finaliser) is what is skipped."""
    driver = (
        "import atexit, sys\n"
        "class Late:\n    def __del__(self):\n        print('finalised', flush=True)\n"
        "keep = Late()\n"
        "atexit.register(lambda: print('handler ran'))\n"
        "sys.argv = ['mptkit'] + sys.argv[1:]\n"
        "from mptkit.cli import main; main()"
    )
    out = tmp_path / "r1.safetensors"
    r = subprocess.run(
        [sys.executable, "-c", driver, "rank", str(EXAMPLE), "--rank", "1", "-o", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == status, r.stderr
    assert "handler ran" in r.stdout and "finalised" not in r.stdout
    if status == 0:
        assert "wrote" in r.stdout and out.exists()
    else:
        assert "mptkit: error:" in r.stderr and "nothing was written" in r.stderr and not out.exists()
