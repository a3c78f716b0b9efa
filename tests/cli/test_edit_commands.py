"""The editing commands end to end: outputs load in PEFT and validate; refusals are one line, exit 2,
no output; byte-only commands never import torch."""

import json
import re
import sys

import pytest
import torch

import mptkit
from mptkit import load, save
from mptkit._tensor import Array
from tests.support.banks import full_prompts, load_tensors, peft_load, random_bank, save_peft_bank, write_bank
from tests.support.commands import loaded_modules


@pytest.fixture(scope="module")
def banks(tmp_path_factory):
    """Inputs: a PEFT-saved seq2seq bank (T=3, r=2, N=10, d=24), the same bank with named tasks,
    one whose shared prompt is rescaled per token, an unrelated one, and a causal one (N=5)."""
    root = tmp_path_factory.mktemp("edit_cli")
    peft = save_peft_bank(root / "peft", num_tasks=3, num_ranks=2)
    bank = load(peft)
    named = save(mptkit.set_names(bank, "sst2,mnli,qqp"), root / "named")
    pe = bank.tensors["prompt_embeddings"].to_torch()
    scale = torch.linspace(0.5, 2.0, pe.shape[0])[:, None]
    rescaled = dict(bank.tensors, prompt_embeddings=Array.from_torch(pe * scale))
    scaled = save(mptkit.set_names(bank.with_tensors(rescaled, None), "a,b,c"), root / "scaled")
    other = save_peft_bank(root / "other", num_tasks=2, num_ranks=1, seed=5)
    causal = save_peft_bank(root / "causal", "causal", num_tasks=2)
    return {"peft": peft, "named": named, "scaled": scaled, "other": other, "causal": causal, "root": root}


def check_in_peft(out, cli):
    """``out`` validates, loads in PEFT with the same tensors, and PEFT's prompts are ours."""
    res = cli("validate", out)
    assert res.exit_code == 0, res.output
    model, enc = peft_load(out)
    tensors = {k: v.to(enc.embedding.weight.dtype) for k, v in load_tensors(out).items()}  # PEFT keeps its dtype
    assert torch.equal(enc.embedding.weight.detach(), tensors["prompt_embeddings"])
    assert torch.equal(enc.prefix_task_cols.detach(), tensors["prefix_task_cols"])
    assert torch.equal(enc.prefix_task_rows.detach(), tensors["prefix_task_rows"])
    T, N = tensors["prefix_task_cols"].shape[:2]
    with torch.no_grad():
        got = enc(torch.arange(N).expand(T, N), torch.arange(T))
    expect = tensors["prompt_embeddings"] * torch.matmul(tensors["prefix_task_cols"], tensors["prefix_task_rows"])
    assert torch.equal(got, expect)
    return load(out)


COMMANDS = {
    "rename-names": ("rename", "{peft}", "--names", "a,b,c"),
    "rename-pairs": ("rename", "{named}", "mnli=nli", "0=sst-2"),
    "slice": ("slice", "{named}", "--tasks", "qqp,0"),
    "remove": ("remove", "{named}", "--tasks", "1"),
    "merge": ("merge", "{named}", "{peft}", "--rename-duplicates"),
    "merge-refit": ("merge", "{named}", "{scaled}", "--refit", "--max-error", "1e-5"),
    "merge-ranks": ("merge", "{peft}", "{other}", "--refit"),
    "merge-dtype": ("merge", "{named}", "{peft}", "--dtype", "float16"),
    "add-average": ("add", "{named}", "--name", "new", "--init", "average"),
    "add-exact": ("add", "{named}", "--name", "new", "--init", "exact:mnli"),
    "add-random": ("add", "{named}", "--name", "new", "--init", "random", "--seed", "3"),
    "add-from": ("add", "{named}", "--name", "new", "--from", "{scaled}:b", "--refit"),
    "rank-up": ("rank", "{named}", "--rank", "4"),
    "rank-down": ("rank", "{named}", "--rank", "1"),
}


@pytest.mark.parametrize("case", sorted(COMMANDS))
def test_every_command_writes_banks_that_peft_loads(case, banks, cli, tmp_path):
    args = [a.format(**banks) for a in COMMANDS[case]]
    for out in (tmp_path / "out", tmp_path / "out.safetensors"):
        res = cli(*args, "-o", out, "--json")
        assert res.exit_code == 0, res.output
        report = json.loads(res.output)
        assert report["output"] == str(out)
        if out.suffix:
            assert cli("validate", out).exit_code == 0
            result = load(out)
        else:
            result = check_in_peft(out, cli)
        assert result.task_names == report["task_names"] and result.num_tasks == report["num_tasks"]
        assert result.provenance[-1]["operation"] == args[0]
        assert all(len(s["sha256"]) == 64 for s in result.provenance[-1]["sources"])
    if case == "merge-refit":
        assert report["task_names"] == ["sst2", "mnli", "qqp", "a", "b", "c"]
        assert all(e["relative_error"] < 1e-5 for e in report["results"]["refit"].values())
        torch.testing.assert_close(full_prompts(result)[3:], full_prompts(load(banks["scaled"])), rtol=1e-5, atol=1e-6)
    if case == "merge":
        assert (
            report["task_names"] == ["sst2", "mnli", "qqp", "task3", "task4", "task5"]
            and "renamed" not in report["results"]
        )
    if case == "merge-dtype":
        assert result.dtype == "F16" and load_tensors(out)["prefix_task_cols"].dtype == torch.float16
    if case == "rank-down":
        assert set(report["results"]["relative_error"]) == {"sst2", "mnli", "qqp"}
        assert all(0 < e < 1 for e in report["results"]["relative_error"].values())


def test_text_reports(banks, cli, tmp_path):
    res = cli("merge", banks["named"], banks["named"], "--rename-duplicates", "-o", tmp_path / "m")
    assert res.exit_code == 0
    assert f"wrote {tmp_path / 'm'}: 6 tasks (sst2, mnli, qqp, sst2-2, mnli-2, qqp-2), rank 2, F32" in res.output
    assert f"renamed duplicate: task 3 'sst2' (task 0 of {banks['named']}) -> 'sst2-2'" in res.output
    res = cli("rank", banks["named"], "--rank", "1", "-o", tmp_path / "r")
    assert "task mnli: relative error" in res.output
    res = cli("add", banks["peft"], "--name", "x", "--init", "random", "-o", tmp_path / "a")
    assert "random seed" in res.output
    assert f"{banks['peft']} named none of its tasks: its tasks 0-2 are named task0, task1, task2 here" in res.output


def refusal(cli, *args):
    res = cli(*args)
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("mptkit: error: "), res.stderr
    return lines[0]


@pytest.mark.parametrize(
    "args, words",
    [
        (("merge", "{named}", "{causal}"), r"prompt length N differs \(.*named has N=10, .*causal has N=5\)"),
        (
            ("merge", "{named}", "{small_d}"),
            r"hidden size d differs \(.*named has d=24, .*small_d.safetensors has d=8\)",
        ),
        (
            ("merge", "{named}", "{other}"),
            r"the shared prompts differ: .*other's prompt_embeddings is not .*named's \(\d+ of 240 "
            r"values differ; max abs difference .*relative difference .*--refit",
        ),
        (("merge", "{named}", "{named}"), r"task names clash: 'sst2' in .*named, .*named.*--rename-duplicates"),
        (("merge", "{named}", "{scaled}", "--refit", "--max-error", "1e-300"), r"relative error .* above --max-error"),
        (("merge", "{named}"), "at least two banks"),
        (("merge", "{named}", "{peft}", "--max-error", "0.1"), "only with --refit"),
        (("slice", "{named}", "--tasks", "zz"), r"unknown task 'zz': .*named has 3 tasks \(named sst2, mnli, qqp\)"),
        (("slice", "{named}", "--tasks", "5"), "task 5 is out of range"),
        (("slice", "{named}", "--tasks", ""), "empty task selection"),
        (("slice", "{named}", "--tasks", "0,sst2"), "listed more than once"),
        (("remove", "{named}", "--tasks", "0-2"), "would leave no tasks"),
        (("rename", "{named}", "sst2=mnli"), "'mnli' given more than once"),
        (("rename", "{named}", "sst2=a,b"), "not allowed"),
        (("rename", "{named}", "sst2"), "is not OLD=NEW"),
        (("rename", "{named}"), "give OLD=NEW pairs or --names"),
        (("rename", "{peft}", "--names", "a,b"), "2 names given for 3 tasks"),
        (("add", "{named}", "--name", "mnli", "--init", "average"), "already used by task 1"),
        (("add", "{named}", "--name", "x"), "exactly one of --init"),
        (("add", "{named}", "--name", "x", "--from", "{other}"), "has 2 tasks; name one"),
        (("add", "{named}", "--name", "x", "--from", "{other}:1"), "shared prompts differ"),
        (("add", "{named}", "--name", "x", "--init", "average", "--refit"), "only with --from"),
        (("similarity", "{named}", "--tasks", "nope"), "unknown task 'nope'"),
    ],
)
def test_refusals_are_one_line_exit_2_and_write_nothing(args, words, banks, cli, tmp_path):
    small_d = tmp_path / "small_d.safetensors"
    random_bank(small_d, T=2, N=10, d=8)
    args = [a.format(small_d=small_d, **banks) for a in args]
    out = tmp_path / "out"
    line = refusal(cli, *args, *(["-o", out] if args[0] != "similarity" else []))
    assert re.search(words, line), line
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["small_d.safetensors"]


@pytest.mark.parametrize(
    "args",
    [
        ("slice", "{a}", "--tasks", "2,0"),
        ("remove", "{a}", "--tasks", "1"),
        ("merge", "{a}", "{b}", "--rename-duplicates"),
        ("rename", "{a}", "x=y"),
        ("add", "{a}", "--name", "z", "--init", "exact:1"),
        ("slice", "{peft}", "--tasks", "1"),
    ],
)
def test_byte_commands_do_not_import_torch(args, banks, tmp_path):
    g = torch.Generator().manual_seed(0)
    pe = torch.randn(4, 6, generator=g)
    a = write_bank(
        tmp_path / "a.safetensors",
        pe,
        torch.randn(3, 4, 2, generator=g),
        torch.randn(3, 2, 6, generator=g),
        names=["x", "u", "v"],
    )
    b = write_bank(
        tmp_path / "b.safetensors",
        pe,
        torch.randn(2, 4, 2, generator=g),
        torch.randn(2, 2, 6, generator=g),
        names=["x", "w"],
    )
    argv = [x.format(a=a, b=b, peft=banks["peft"]) for x in args] + ["-o", str(tmp_path / "out.safetensors")]
    code, mods = loaded_modules(*argv)
    assert code == 0 and "torch" not in mods, mods
    assert (tmp_path / "out.safetensors").is_file()


def test_similarity_table_json_and_plot(banks, cli, tmp_path):
    res = cli("similarity", banks["named"])
    assert res.exit_code == 0
    lines = res.output.splitlines()
    assert lines[0].split() == ["sst2", "mnli", "qqp", "nearest"]
    assert lines[1].split()[:2] == ["sst2", "1.000"]
    data = json.loads(cli("similarity", banks["named"], "--json", "--tasks", "qqp,sst2").output)
    assert data["task_names"] == ["qqp", "sst2"] and data["matrix"][0][0] == pytest.approx(1.0)
    pytest.importorskip("matplotlib")
    png = tmp_path / "heat.png"
    res = cli("similarity", banks["named"], "--plot", png)
    assert res.exit_code == 0 and png.read_bytes()[:4] == b"\x89PNG"
    assert "already exists" in refusal(cli, "similarity", banks["named"], "--plot", png)
    assert cli("similarity", banks["named"], "--plot", png, "--force").exit_code == 0


def test_plot_without_matplotlib(banks, cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    line = refusal(cli, "similarity", banks["named"], "--plot", tmp_path / "h.png")
    assert "needs matplotlib" in line and "pip install 'mptkit[plot]'" in line
    assert not (tmp_path / "h.png").exists()


def test_peft_round_trip_drops_names_and_mptkit_says_so(banks, cli, tmp_path):
    out = tmp_path / "renamed"
    assert cli("rename", banks["named"], "qqp=paraphrase", "-o", out).exit_code == 0
    model, _ = peft_load(out)
    model.save_pretrained(str(tmp_path / "resaved"))
    before, after = load_tensors(out), load_tensors(tmp_path / "resaved")
    assert all(torch.equal(before[k], after[k]) for k in before)
    info = json.loads(cli("inspect", out, "--json").output)
    assert info["task_names"] == ["sst2", "mnli", "paraphrase"]
    assert [e["operation"] for e in info["provenance"]] == ["rename", "rename"] and info["notes"] == []
    info = json.loads(cli("inspect", tmp_path / "resaved", "--json").output)
    assert info["task_names"] is None and info["provenance"] == []
    assert any("PEFT drops" in n for n in info["notes"])


def test_from_reference_parsing(tmp_path):
    from mptkit.cli._edit import split_task_ref as _split_task_ref

    odd = tmp_path / "a:b"
    odd.mkdir()
    assert _split_task_ref(str(odd)) == (str(odd), None)
    assert _split_task_ref(f"{odd}:sst2") == (str(odd), "sst2")
    assert _split_task_ref("hf://owner/repo") == ("hf://owner/repo", None)
    assert _split_task_ref("hf://owner/repo:3") == ("hf://owner/repo", "3")
    assert _split_task_ref("bank/") == ("bank/", None)
