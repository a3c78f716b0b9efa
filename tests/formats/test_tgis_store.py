"""``mptkit export --format tgis``: TGIS prefix stores that load under TGIS's own rules and hold each
task's prompt as PEFT computes it; names TGIS refuses, non-finite prompts and odd seq2seq lengths."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from mptkit._schema import check
from tests.support.banks import peft_load, save_peft_bank, write_bank
from tests.support.commands import error_lines, one_error


def tgis_load(store: Path, prefix_id: str, *, encoder_decoder: bool, dtype, hidden: int, max_length: int = 64):
    """What IBM text-generation-inference's PrefixCache does with a prefix id (restated from
    server/text_generation_server/prompt_cache.py): the id's pattern and path check, then for each of
    decoder.pt / encoder.pt that exists a weights-only load, a 2-D tensor of 1..max_length rows (an even
    number for encoder-decoder models), as wide as the model, finite after the cast to its dtype."""
    assert re.fullmatch(r"[/\w\-]+", prefix_id)
    folder = store / prefix_id
    assert os.path.normpath(folder).startswith(str(store) + "/")
    assert not any(p.name.startswith("adapter_model") for p in folder.iterdir())  # else read as a PEFT folder
    out = {}
    for name in ("encoder.pt", "decoder.pt"):
        p = folder / name
        if not p.is_file():
            continue
        t = torch.load(p, weights_only=True, map_location=torch.device("cpu"))
        assert torch.is_tensor(t) and t.dim() == 2
        assert 0 < t.shape[0] <= max_length and t.shape[1] == hidden
        if encoder_decoder:
            assert t.shape[0] % 2 == 0
        assert t.to(dtype).isfinite().all()
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size()  # the file holds these rows only
        out[name] = t
    assert "decoder.pt" in out or (encoder_decoder and out)
    return out


def peft_prompts(folder, kind):
    _, enc = peft_load(folder, kind)
    T = enc.prefix_task_cols.shape[0]
    N = enc.embedding.weight.shape[0]
    with torch.no_grad():
        return enc(torch.arange(N).expand(T, -1), torch.arange(T))


@pytest.fixture(scope="module")
def even_seq2seq(tmp_path_factory):
    return save_peft_bank(tmp_path_factory.mktemp("tgis") / "s2s", "seq2seq", num_virtual_tokens=6)


@pytest.mark.parametrize(
    "half,files",
    [
        (None, {"encoder.pt": (0, 6)}),
        ("decoder", {"decoder.pt": (6, 12)}),
        ("both", {"encoder.pt": (0, 6), "decoder.pt": (6, 12)}),
    ],
)
def test_seq2seq_store_loads_under_tgis_rules_and_holds_peft_halves(cli, even_seq2seq, tmp_path, half, files):
    out = tmp_path / "store"
    args = ["export", even_seq2seq, "--all", "--format", "tgis", "-o", out] + (["--half", half] if half else [])
    r = cli(*args)
    assert r.exit_code == 0 and r.stderr == "", r.output
    ref = peft_prompts(even_seq2seq, "seq2seq")
    manifest = json.loads((out / "tasks.json").read_text())
    assert [t["prefix_id"] for t in manifest["tasks"]] == ["task0", "task1", "task2"]
    for k in range(3):
        got = tgis_load(out, f"task{k}", encoder_decoder=True, dtype=torch.float16, hidden=24)
        assert set(got) == set(files)
        for name, (a, b) in files.items():
            assert got[name].dtype == torch.float32 and torch.equal(got[name], ref[k, a:b])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # no temp left beside it


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_causal_store_holds_each_whole_prompt_in_decoder_pt(cli, peft_banks, tmp_path, dtype):
    bank = peft_banks("causal")
    r = cli("export", bank, "--tasks", "2,0", "--format", "tgis", "--dtype", dtype, "-o", tmp_path / "s", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert check("output", report, pointer="/$defs/export_tasks") == []  # schemas/output.schema.json
    assert report["task_names"] == ["task2", "task0"] and report["files"] == {"decoder.pt": [0, 5]}
    assert report["format"] == "tgis" and report["output"] == str(tmp_path / "s")
    ref = peft_prompts(bank, "causal")
    for k in (2, 0):
        got = tgis_load(tmp_path / "s", f"task{k}", encoder_decoder=False, dtype=torch.bfloat16, hidden=24)
        assert list(got) == ["decoder.pt"] and torch.equal(got["decoder.pt"], ref[k].to(getattr(torch, dtype)))
    assert not (tmp_path / "s" / "task1").exists()


def test_named_tasks_give_prefix_ids_nested_ones_too(cli, tmp_path):
    bank = write_bank(
        tmp_path / "b.safetensors",
        torch.randn(4, 8),
        torch.randn(3, 4, 1),
        torch.randn(3, 1, 8),
        ["sst2", "team/mnli", "qqp-v2"],
    )
    r = cli("export", bank, "--all", "--format", "tgis", "-o", tmp_path / "s")
    assert r.exit_code == 0, r.output
    for pid in ("sst2", "team/mnli", "qqp-v2"):
        assert list(tgis_load(tmp_path / "s", pid, encoder_decoder=False, dtype=torch.float32, hidden=8)) == [
            "decoder.pt"
        ]
    assert "PREFIX_STORE_PATH" in r.stdout


@pytest.mark.parametrize(
    "names,words",
    [
        (["sst2.v2", "b", "c"], ["task 0", "'.'", "TGIS refuses"]),
        (["../evil", "b", "c"], ["task 0", "'.'"]),
        (["/abs", "b", "c"], ["task 0", "empty part"]),
        (["a", "b//c", "d"], ["task 1", "empty part"]),
        (["a b", "b", "c"], ["task 0", "' '"]),
        (["Sst2", "sst2", "c"], ["tasks 0 and 1", "case"]),
    ],
)
def test_names_tgis_would_refuse_are_refused_before_anything_is_written(cli, tmp_path, names, words):
    bank = write_bank(tmp_path / "b.safetensors", torch.randn(4, 8), torch.randn(3, 4, 1), torch.randn(3, 1, 8), names)
    r = cli("export", bank, "--all", "--format", "tgis", "-o", tmp_path / "s")
    assert r.exit_code == 2
    one_error(r, *words, "rename")
    assert not (tmp_path / "s").exists() and not (tmp_path / "evil").exists() and not Path("/abs").exists()


def test_an_odd_seq2seq_length_is_a_warning(cli, peft_banks, tmp_path):
    r = cli("export", peft_banks("seq2seq"), "--all", "--format", "tgis", "-o", tmp_path / "s")  # V = 5
    assert r.exit_code == 0
    assert r.stderr.count("mptkit: warning:") == 1 and "odd" in r.stderr and "TGIS refuses" in r.stderr
    assert torch.load(tmp_path / "s" / "task0" / "encoder.pt", weights_only=True).shape == (5, 24)


def test_non_finite_prompts_are_refused_and_nothing_is_written(cli, tmp_path):
    pe = torch.randn(4, 8)
    cols, rows = torch.ones(3, 4, 1), torch.ones(3, 1, 8)
    rows[2, 0, 3] = float("inf")  # the last task's prompt only: the first two were already computed
    bank = write_bank(tmp_path / "b.safetensors", pe, cols, rows)
    r = cli("export", bank, "--all", "--format", "tgis", "-o", tmp_path / "s")
    assert r.exit_code == 2  # refused before any prompt is computed, naming the tensor and task
    one_error(r, "'prefix_task_rows' of task 2", "NaN/Inf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.safetensors"]
    # finite in float32, not after the cast to float16: refused naming the largest, or --clamp
    big = write_bank(tmp_path / "big.safetensors", pe * 1e5, cols, torch.ones(3, 1, 8))
    assert cli("export", big, "--all", "--format", "tgis", "-o", tmp_path / "s32").exit_code == 0
    r = cli("export", big, "--all", "--format", "tgis", "--dtype", "float16", "-o", tmp_path / "s16")
    assert r.exit_code == 2 and "float16's largest is 65504" in one_error(r, "beyond float16's range", "--clamp")
    assert not (tmp_path / "s16").exists()
    r = cli("export", big, "--all", "--format", "tgis", "--dtype", "float16", "--clamp", "-o", tmp_path / "s16")
    assert r.exit_code == 0
    stored = torch.load(tmp_path / "s16" / "task0" / "decoder.pt", weights_only=True)
    assert stored.dtype == torch.float16 and bool(torch.isfinite(stored).all()) and stored.abs().max() == 65504


def test_force_replaces_a_store_and_nothing_else(cli, peft_banks, tmp_path):
    bank = peft_banks("causal")
    out = tmp_path / "s"
    assert cli("export", bank, "--all", "--format", "tgis", "-o", out).exit_code == 0
    r = cli("export", bank, "--tasks", "1", "--format", "tgis", "-o", out)
    assert r.exit_code == 2 and "--force" in one_error(r, "already exists")
    assert cli("export", bank, "--tasks", "1", "--format", "tgis", "-o", out, "--force").exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["task1", "tasks.json"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    r = cli("export", bank, "--all", "--format", "tgis", "-o", other, "--force")
    assert r.exit_code == 2
    assert error_lines(r, "not a TGIS prefix store")
    assert (other / "notes.txt").read_text() == "mine"


def test_half_needs_two_submodules(cli, peft_banks, tmp_path):
    r = cli("export", peft_banks("causal"), "--all", "--format", "tgis", "--half", "decoder", "-o", tmp_path / "s")
    assert r.exit_code == 2 and "one transformer submodule" in one_error(r, "--half decoder")
    assert not (tmp_path / "s").exists()


def test_the_python_api_writes_the_same_store_through_the_plan(cli, peft_banks, tmp_path):
    import mptkit

    bank = mptkit.load(peft_banks("causal"))
    path = mptkit.save(mptkit.export_table(bank, "1,2"), tmp_path / "py", format="tgis")
    assert (
        cli("export", peft_banks("causal"), "--tasks", "1,2", "--format", "tgis", "-o", tmp_path / "cli").exit_code == 0
    )
    for pid in ("task1", "task2"):
        a = torch.load(path / pid / "decoder.pt", weights_only=True)
        assert torch.equal(a, torch.load(tmp_path / "cli" / pid / "decoder.pt", weights_only=True))
    with pytest.raises(mptkit.UsageError, match="not a format for this output"):
        mptkit.save(mptkit.export(bank, 1), tmp_path / "one", format="tgis")  # one adapter: not a table
