"""Readers and writers: PEFT-saved banks in every dtype and format, the bare-file writer against the
safetensors package, adapter folders against PEFT itself, atomic and refused outputs."""

import json
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from safetensors.torch import load_file, save_file

from mptkit import load, save
from mptkit._tensor import Array
from mptkit.errors import InvalidBank, OutputError
from mptkit.formats import _safetensors as stf
from mptkit.formats._atomic import TMP_MARK
from tests.support.banks import DTYPES, random_bank, tiny_base_model
from tests.support.files import sha256_tree

KINDS = {"seq2seq": ("SEQ_2_SEQ_LM", 2), "causal": ("CAUSAL_LM", 1)}
ST_DTYPE = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
ALL = [(k, dt, safe) for k in KINDS for dt in ST_DTYPE for safe in (True, False)]


def peft_tensors(folder: Path) -> dict:
    f = folder / "adapter_model.safetensors"
    if f.exists():
        return load_file(str(f))
    return torch.load(folder / "adapter_model.bin", weights_only=True)


def temps(folder: Path) -> list:
    return [p.name for p in Path(folder).iterdir() if TMP_MARK in p.name]


# -- reading what PEFT wrote -------------------------------------------------------------------------
@pytest.mark.parametrize("kind, dtype, safe", ALL)
def test_load_peft_saved_bank(peft_banks, kind, dtype, safe):
    folder = peft_banks(kind, dtype, safe)
    expected = peft_tensors(folder)
    task_type, subs = KINDS[kind]
    data = folder / ("adapter_model.safetensors" if safe else "adapter_model.bin")
    for path, fmt in (
        (folder, "peft-adapter" if safe else "peft-adapter (.bin)"),
        (data, "safetensors" if safe else "pickle"),
    ):
        bank = load(path)
        assert bank.source.format == fmt
        assert bank.source.data_file == str(data)
        assert bank.source.file_size == data.stat().st_size
        assert bank.dtype == ST_DTYPE[dtype]
        assert set(bank.tensors) == set(expected) == {"prompt_embeddings", "prefix_task_cols", "prefix_task_rows"}
        for k, t in expected.items():
            got = bank.tensors[k].to_torch()
            assert got.dtype == DTYPES[dtype] and torch.equal(got, t), k
        assert (bank.num_tasks, bank.rank, bank.num_tokens, bank.token_dim) == (3, 2, 5 * subs, 24)
        if path == folder:
            assert (bank.num_virtual_tokens, bank.num_submodules) == (5, subs)
            assert bank.config["task_type"] == task_type
        else:
            assert bank.config is None and bank.num_virtual_tokens is None


def test_load_reads_headers_only(tmp_path):
    """Loading a file reads its header; the tensors stay file segments until used."""
    p = random_bank(tmp_path / "b.safetensors", T=3, N=4, r=2, d=5)
    bank = load(p)
    for a in bank.tensors.values():
        assert all(s.path == str(p) and s.buffer is None for s in a.segments)


def test_shared_only_and_single_task_files(tmp_path):
    save_file({"prompt_embeddings": torch.randn(4, 6)}, str(tmp_path / "s.safetensors"), metadata={"format": "pt"})
    b = load(tmp_path / "s.safetensors")
    assert b.shared_only and b.num_tasks == 0 and b.rank is None
    p = random_bank(tmp_path / "one.safetensors", T=1)
    assert load(p, kind="task").num_tasks == 1
    p = random_bank(tmp_path / "two.safetensors", T=2)
    with pytest.raises(InvalidBank, match="expected 1"):
        load(p, kind="task")


def test_missing_paths_and_folders_are_clear(tmp_path):
    with pytest.raises(InvalidBank, match="no such file or folder"):
        load(tmp_path / "nope.safetensors")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(InvalidBank, match=r"adapter_config.json is missing \(found: notes.txt\)"):
        load(tmp_path / "empty")
    folder = tmp_path / "noweights"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    with pytest.raises(InvalidBank, match="no adapter_model.safetensors or adapter_model.bin"):
        load(folder)


# -- the bare-file writer against safetensors.torch.save_file --------------------------------------
TORCH_DTYPES = [
    torch.float64,
    torch.float32,
    torch.bfloat16,
    torch.float16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
]
names = st.text(min_size=1, max_size=10).filter(lambda s: s != "__metadata__")
tensor_spec = st.tuples(st.sampled_from(TORCH_DTYPES), st.lists(st.integers(0, 4), min_size=0, max_size=3))


def make_tensor(dtype, shape, seed):
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (int(torch.tensor(shape).prod().item()) if shape else 1,), generator=g)
    t = torch.randn(shape if shape else (), generator=g) * 10
    if dtype == torch.bool:
        return t > 0
    if not dtype.is_floating_point:
        return (raw.reshape(shape) if shape else raw[0]).to(dtype)
    return t.to(dtype)


def split_file(data: bytes):
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    spec=st.dictionaries(names, tensor_spec, min_size=1, max_size=4),
    extra_meta=st.dictionaries(
        st.text(min_size=1, max_size=8).filter(lambda s: s != "format"), st.text(max_size=12), max_size=3
    ),
    seed=st.integers(0, 1000),
)
def test_writer_matches_safetensors(tmp_path, spec, extra_meta, seed):
    tensors = {name: make_tensor(dt, shape, seed + i) for i, (name, (dt, shape)) in enumerate(spec.items())}
    meta = {"format": "pt", **extra_meta}
    ref, mine = tmp_path / "ref.safetensors", tmp_path / "mine.safetensors"
    save_file(tensors, str(ref), metadata=meta)
    with open(mine, "wb") as f:
        n = stf.write(f, {k: Array.from_torch(v) for k, v in tensors.items()}, meta)
    a, b = ref.read_bytes(), mine.read_bytes()
    assert n == len(b)
    if len(meta) == 1:
        assert a == b  # byte for byte
    else:  # safetensors orders metadata keys at random: same header and bytes otherwise
        ha, da = split_file(a)
        hb, db = split_file(b)
        assert ha == hb and da == db and len(a) == len(b)
    got = load_file(str(mine))
    assert set(got) == set(tensors)
    for k, t in tensors.items():
        assert got[k].dtype == t.dtype and torch.equal(got[k], t)


def test_saved_bare_file_is_peft_compatible_and_keeps_names(tmp_path, peft_banks):
    src = load(peft_banks("seq2seq", "bfloat16", True))
    src.task_names = ["sst2", "mnli", "qnli"]
    out = save(src, tmp_path / "bank.safetensors")
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
        assert sorted(f.keys()) == ["prefix_task_cols", "prefix_task_rows", "prompt_embeddings"]
    assert meta["format"] == "pt"
    assert json.loads(meta["mptkit.task_names"]) == ["sst2", "mnli", "qnli"]
    assert json.loads(meta["mptkit.config"]) == {
        "task_type": "SEQ_2_SEQ_LM",
        "num_virtual_tokens": 5,
        "num_transformer_submodules": 2,
        "num_layers": 1,
        "num_attention_heads": 4,
    }
    back = load(out)
    assert back.task_names == ["sst2", "mnli", "qnli"] and back.num_virtual_tokens == 5 and back.num_submodules == 2
    for k, t in load_file(str(out)).items():
        assert torch.equal(t, src.tensors[k].to_torch())


# -- adapter folders against PEFT ----------------------------------------------------------------------
def peft_prompts(folder, kind):
    from peft import PeftModel

    model = PeftModel.from_pretrained(tiny_base_model(kind), str(folder))
    enc = model.prompt_encoder["default"]
    with torch.no_grad():
        prompts = model.get_prompt(batch_size=3, task_ids=torch.tensor([0, 1, 2]))
    return enc, prompts


@pytest.mark.parametrize(
    "kind, dtype, safe", [("seq2seq", "float32", True), ("causal", "float32", False), ("causal", "bfloat16", True)]
)
def test_adapter_folder_loads_in_peft_and_config_text_is_peft_s(tmp_path, peft_banks, kind, dtype, safe):
    src_folder = peft_banks(kind, dtype, safe)
    out = save(load(src_folder), tmp_path / "out")
    assert sorted(os.listdir(out)) == ["adapter_config.json", "adapter_model.safetensors"]
    text = (out / "adapter_config.json").read_text(encoding="utf-8")
    assert text == (src_folder / "adapter_config.json").read_text(encoding="utf-8")
    assert not text.endswith("\n") and text == json.dumps(json.loads(text), indent=2, sort_keys=True)
    cfg = json.loads(text)
    assert cfg["prompt_tuning_init"] == "RANDOM" and cfg["prompt_tuning_init_state_dict_path"] is None
    enc, prompts = peft_prompts(out, kind)
    ref_enc, ref_prompts = peft_prompts(src_folder, kind)
    expected = peft_tensors(src_folder)
    assert torch.equal(enc.embedding.weight.to(expected["prompt_embeddings"].dtype), expected["prompt_embeddings"])
    assert torch.equal(enc.prefix_task_cols.to(expected["prefix_task_cols"].dtype), expected["prefix_task_cols"])
    assert torch.equal(enc.prefix_task_rows.to(expected["prefix_task_rows"].dtype), expected["prefix_task_rows"])
    assert torch.equal(prompts, ref_prompts)
    assert temps(tmp_path) == []


def test_adapter_folder_from_a_bare_file_writes_peft_s_config(tmp_path, peft_banks):
    """folder -> bare file (config kept as metadata hints) -> folder: the config PEFT wrote comes back."""
    src_folder = peft_banks("seq2seq", "float32", True)
    bare = save(load(src_folder), tmp_path / "bare.safetensors")
    out = save(load(bare), tmp_path / "again")
    assert (out / "adapter_config.json").read_text() == (src_folder / "adapter_config.json").read_text()
    enc, _ = peft_prompts(out, "seq2seq")
    assert torch.equal(enc.prefix_task_rows, peft_tensors(src_folder)["prefix_task_rows"])


def test_adapter_folder_never_points_at_an_init_file(tmp_path, peft_banks):
    """An input whose config names an EXACT_SOURCE_TASK init file that has moved: PEFT itself cannot
    load it; mptkit's copy says RANDOM with a null path and loads."""
    src = tmp_path / "src"
    shutil.copytree(peft_banks("causal", "float32", True), src)
    cfg = json.loads((src / "adapter_config.json").read_text())
    cfg.update(
        prompt_tuning_init="EXACT_SOURCE_TASK",
        prompt_tuning_init_state_dict_path=str(tmp_path / "gone.bin"),
        prompt_tuning_init_task=1,
    )
    (src / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(FileNotFoundError, match="gone.bin"):
        peft_prompts(src, "causal")
    out = save(load(src), tmp_path / "out")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["prompt_tuning_init"] == "RANDOM" and cfg["prompt_tuning_init_state_dict_path"] is None
    assert cfg["prompt_tuning_init_task"] == 0
    enc, _ = peft_prompts(out, "causal")
    assert torch.equal(enc.prefix_task_cols, load_file(str(src / "adapter_model.safetensors"))["prefix_task_cols"])


# -- atomic writes and refused outputs ---------------------------------------------------------------
def test_atomic_write_leaves_no_temp_files_even_when_it_fails(tmp_path, monkeypatch):
    bank = load(random_bank(tmp_path / "in.safetensors"))
    out = tmp_path / "out"
    out.mkdir()
    save(bank, out / "a.safetensors")
    assert sorted(os.listdir(out)) == ["a.safetensors"]

    def boom(f, tensors, metadata):
        f.write(b"partial")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(stf, "write", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        save(bank, out / "b.safetensors")
    with pytest.raises(RuntimeError, match="disk on fire"):
        save(bank, out / "a.safetensors", force=True)
    assert sorted(os.listdir(out)) == ["a.safetensors"]
    assert load(out / "a.safetensors").num_tasks == 4  # the old version is intact


def test_existing_output_needs_force(tmp_path):
    bank = load(random_bank(tmp_path / "in.safetensors", T=4))
    other = load(random_bank(tmp_path / "in2.safetensors", T=2, seed=3))
    target = tmp_path / "out.safetensors"
    save(bank, target)
    before = target.read_bytes()
    with pytest.raises(
        OutputError, match=r"out.safetensors: already exists; replacing it needs --force \(force=True in Python\)"
    ):
        save(other, target)
    assert target.read_bytes() == before
    save(other, target, force=True)
    assert load(target).num_tasks == 2
    # folders likewise, and a file where a folder is asked for (and the reverse)
    bank.config = {"task_type": "CAUSAL_LM", "num_virtual_tokens": 6}
    folder = save(bank, tmp_path / "folder")
    with pytest.raises(OutputError, match="already exists"):
        save(bank, folder)
    save(bank, folder, force=True)
    assert temps(tmp_path) == []
    plain = tmp_path / "plainfile"
    plain.write_bytes(b"x")
    with pytest.raises(OutputError, match="exists and is a file"):
        save(bank, plain, force=True)
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(OutputError, match="exists and is a folder"):
        save(bank, tmp_path / "dir.safetensors", force=True)
    assert plain.read_bytes() == b"x"


def test_output_is_never_the_input(tmp_path, peft_banks):
    src = tmp_path / "src"
    shutil.copytree(peft_banks("seq2seq", "float32", True), src)
    bare = random_bank(tmp_path / "bare.safetensors")
    before = {p: sha256_tree(p) for p in (src, bare)}
    fb = load(src)
    cases = [
        (load(bare), bare, "is the input"),
        (fb, src, "the input"),  # the folder itself
        (fb, src / "adapter_model.safetensors", "is the input"),
        (fb, tmp_path, "contains the input"),  # a folder holding the input
        (fb, src / "sub", "is inside the input"),
        (load(bare), tmp_path, "contains the input"),
    ]
    for bank, target, words in cases:
        with pytest.raises(OutputError, match=words):
            save(bank, target, force=True)
    # a symlink to the input is the input too
    (tmp_path / "link.safetensors").symlink_to(bare)
    with pytest.raises(OutputError, match="is the input"):
        save(load(bare), tmp_path / "link.safetensors", force=True)
    # an explicit extra input (e.g. the second bank of a merge)
    with pytest.raises(OutputError, match="is the input"):
        save(load(bare), tmp_path / "x.safetensors", force=True, inputs=(str(tmp_path / "x.safetensors"),))
    assert {p: sha256_tree(p) for p in (src, bare)} == before


def test_folder_output_needs_shape_facts(tmp_path):
    from mptkit.errors import UsageError

    bank = load(random_bank(tmp_path / "in.safetensors", N=6))
    with pytest.raises(UsageError, match="--task-type"):
        save(bank, tmp_path / "folder")
    save_file({"prompt_embeddings": torch.randn(4, 6)}, str(tmp_path / "s.safetensors"), metadata={"format": "pt"})
    with pytest.raises(OutputError, match="only the shared prompt"):
        save(load(tmp_path / "s.safetensors"), tmp_path / "folder2")
    assert not (tmp_path / "folder").exists() and not (tmp_path / "folder2").exists()
    assert temps(tmp_path) == []


def test_bare_file_copy_is_byte_identical_to_the_safetensors_package(tmp_path):
    """A bank written by safetensors (metadata: format only) comes back byte for byte."""
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        name = str(dtype).removeprefix("torch.")
        p = random_bank(tmp_path / f"{name}.safetensors", dtype=dtype)
        out = save(load(p), tmp_path / f"copy-{name}.safetensors")
        assert out.read_bytes() == p.read_bytes()
