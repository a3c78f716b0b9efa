"""Every checkpoint form users have, made with the real PEFT, transformers' Trainer and
accelerate on tiny models: whole-model state dicts (torch.save of a PeftModel, accelerate's
save_model, sharded), wrapped pickles (DeepSpeed's {"module": ...}, {"state_dict": ...},
{"model": ...}, under DDP/torch.compile/FSDP prefixes), get_peft_model_state_dict, a prompt
encoder's own state dict (PEFT's and TaskPrompts'), Trainer checkpoints of a causal and a seq2seq
run, and two named adapters. For each: validate and inspect pass, ``derive --mode exact`` of every
task is bit-identical to the same task read from PEFT's own save_pretrained of that model, and
``convert``'s folder loads with PeftModel.from_pretrained with the model's prompt-encoder
parameters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import mptkit
from tests.support.banks import peft_model, tiny_base_model
from tests.support.commands import run_mptkit

KIND_OPTS = {
    "seq2seq": ["--task-type", "SEQ_2_SEQ_LM", "--num-virtual-tokens", "5"],
    "causal": ["--task-type", "CAUSAL_LM", "--num-virtual-tokens", "5"],
}
T = 3


def _perturb(model, seed):
    """Distinct, non-trivial values in every adapter's prompt encoder."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for enc in model.prompt_encoder.values():
            for p in (enc.embedding.weight, enc.prefix_task_cols, enc.prefix_task_rows):
                p.copy_(torch.randn(p.shape, generator=g))


class _Tasks(torch.utils.data.Dataset):
    """A few token sequences, each with a task id (what MPT's forward needs)."""

    def __init__(self, kind):
        g = torch.Generator().manual_seed(5)
        self.items = []
        for i in range(8):
            ids = torch.randint(2, 90, (6,), generator=g)
            item = {
                "input_ids": ids,
                "attention_mask": torch.ones(6, dtype=torch.long),
                "task_ids": torch.tensor(i % T),
            }
            item["labels"] = ids.clone() if kind == "causal" else torch.randint(2, 90, (4,), generator=g)
            self.items.append(item)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _train(kind, out: Path, max_steps: int, save_steps: int):
    """A few steps of transformers' Trainer on a tiny PEFT MPT model; returns the trained model."""
    from transformers import Trainer, TrainingArguments

    model = peft_model(kind, num_tasks=T)
    _perturb(model, 11)
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=max_steps,
        save_steps=save_steps,
        per_device_train_batch_size=2,
        learning_rate=0.05,
        report_to=[],
        logging_strategy="no",
        remove_unused_columns=False,
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    Trainer(model=model, args=args, train_dataset=_Tasks(kind)).train()
    return model


@pytest.fixture(scope="module")
def forms(tmp_path_factory):
    """``{label: (path, reference folder, kind, options)}``: each form of one model beside PEFT's own
    save_pretrained of that model."""
    root = tmp_path_factory.mktemp("forms")
    out = {}

    # -- one seq2seq model, saved every way --------------------------------------------------------
    model = peft_model("seq2seq", num_tasks=T)
    _perturb(model, 3)
    ref = root / "ref-seq2seq"
    model.save_pretrained(str(ref))
    sd = model.state_dict()
    opts = KIND_OPTS["seq2seq"]
    for suffix in (".bin", ".pt", ".pth"):
        torch.save(sd, root / f"whole{suffix}")
        out[f"torch.save whole model {suffix}"] = (root / f"whole{suffix}", ref, "seq2seq", opts)
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    acc.save_model(model, str(root / "accelerate"))
    out["accelerate save_model"] = (root / "accelerate", ref, "seq2seq", opts)
    out["model.safetensors"] = (root / "accelerate" / "model.safetensors", ref, "seq2seq", opts)
    acc.save_model(model, str(root / "sharded"), max_shard_size="20KB")
    assert (root / "sharded" / "model.safetensors.index.json").exists()
    assert len(list((root / "sharded").glob("model-*.safetensors"))) > 2
    out["sharded folder"] = (root / "sharded", ref, "seq2seq", opts)
    out["sharded index file"] = (root / "sharded" / "model.safetensors.index.json", ref, "seq2seq", opts)
    acc.save_model(model, str(root / "sharded-bin"), max_shard_size="20KB", safe_serialization=False)
    assert (root / "sharded-bin" / "pytorch_model.bin.index.json").exists()
    out["sharded .bin folder"] = (root / "sharded-bin", ref, "seq2seq", opts)
    ds = {
        "module": sd,
        "buffer_names": [],
        "optimizer": None,
        "lr_scheduler": None,
        "ds_config": {"train_batch_size": 2},
        "ds_version": "0.16.4",
        "global_steps": 3,
        "global_samples": 6,
        "dp_world_size": 1,
        "mp_world_size": 1,
    }
    (root / "deepspeed").mkdir()
    torch.save(ds, root / "deepspeed" / "mp_rank_00_model_states.pt")
    out["DeepSpeed module"] = (root / "deepspeed" / "mp_rank_00_model_states.pt", ref, "seq2seq", opts)
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 2}, root / "ddp.ckpt.pt")
    out["state_dict + DDP prefix"] = (root / "ddp.ckpt.pt", ref, "seq2seq", opts)
    torch.save({"model": {"_orig_mod." + k: v for k, v in sd.items()}, "step": 7}, root / "compiled.pt")
    out["model + torch.compile prefix"] = (root / "compiled.pt", ref, "seq2seq", opts)
    fsdp = {"_fsdp_wrapped_module." + k: v.clone().contiguous() for k, v in sd.items() if "prompt_encoder" in k}
    fsdp["_fsdp_wrapped_module.base_model.lm_head.weight"] = torch.randn(96, 24)
    save_file(fsdp, str(root / "fsdp.safetensors"))
    out["FSDP prefix .safetensors"] = (root / "fsdp.safetensors", ref, "seq2seq", opts)
    from peft import get_peft_model_state_dict

    torch.save(get_peft_model_state_dict(model), root / "peft_state_dict.pt")
    out["get_peft_model_state_dict"] = (root / "peft_state_dict.pt", ref, "seq2seq", opts)
    enc = model.prompt_encoder["default"].state_dict()
    torch.save(enc, root / "encoder.pt")
    out["prompt encoder state_dict .pt"] = (root / "encoder.pt", ref, "seq2seq", opts)
    save_file({k: v.contiguous() for k, v in enc.items()}, str(root / "encoder.safetensors"))
    out["prompt encoder state_dict .safetensors"] = (root / "encoder.safetensors", ref, "seq2seq", opts)
    from mptkit.serve._runtime import TaskPrompts

    torch.save(TaskPrompts.from_bank(ref).state_dict(), root / "taskprompts.pt")
    out["TaskPrompts state_dict"] = (root / "taskprompts.pt", ref, "seq2seq", opts)

    # -- Trainer runs: a causal and a seq2seq model; the checkpoints are PEFT adapter folders -------
    for kind, steps, every in (("causal", 10, 1), ("seq2seq", 4, 2)):
        run = root / f"trainer-{kind}"
        trained = _train(kind, run, steps, every)
        tref = root / f"ref-trainer-{kind}"
        trained.save_pretrained(str(tref))
        out[f"Trainer checkpoint ({kind})"] = (run / f"checkpoint-{steps}", tref, kind, KIND_OPTS[kind])
        torch.save(trained.state_dict(), root / f"trained-{kind}.bin")
        out[f"Trainer model state_dict ({kind})"] = (root / f"trained-{kind}.bin", tref, kind, KIND_OPTS[kind])
    return out


LABELS = [
    "torch.save whole model .bin",
    "torch.save whole model .pt",
    "torch.save whole model .pth",
    "accelerate save_model",
    "model.safetensors",
    "sharded folder",
    "sharded index file",
    "sharded .bin folder",
    "DeepSpeed module",
    "state_dict + DDP prefix",
    "model + torch.compile prefix",
    "FSDP prefix .safetensors",
    "get_peft_model_state_dict",
    "prompt encoder state_dict .pt",
    "prompt encoder state_dict .safetensors",
    "TaskPrompts state_dict",
    "Trainer checkpoint (causal)",
    "Trainer checkpoint (seq2seq)",
    "Trainer model state_dict (causal)",
    "Trainer model state_dict (seq2seq)",
]


@pytest.mark.parametrize("label", LABELS)
def test_every_form_reads_as_the_model_s_own_bank(forms, label, cli, tmp_path):
    path, ref, kind, opts = forms[label]
    r = cli("validate", path)
    assert r.exit_code == 0 and r.stdout.splitlines()[0].endswith("valid (bank)"), r.output
    r = cli("inspect", path)
    assert r.exit_code == 0 and "tasks T          3" in r.stdout, r.output
    for k in range(T):
        a, b = tmp_path / f"form{k}.safetensors", tmp_path / f"ref{k}.safetensors"
        assert cli("derive", path, "--mode", "exact", "--task", k, "-o", a).exit_code == 0
        assert cli("derive", ref, "--mode", "exact", "--task", k, "-o", b).exit_code == 0
        got, want = load_file(str(a)), load_file(str(b))
        assert set(got) == set(want) == {"prompt_embeddings", "prefix_task_cols", "prefix_task_rows"}
        for name in want:
            assert got[name].dtype == want[name].dtype and torch.equal(got[name], want[name]), (label, k, name)
    out = tmp_path / "converted"
    r = cli("convert", path, *([] if (Path(path) / "adapter_config.json").exists() else opts), "-o", out)
    assert r.exit_code == 0 and f"wrote {out}" in r.stdout, r.output
    from peft import PeftModel

    loaded = PeftModel.from_pretrained(tiny_base_model(kind), str(out)).prompt_encoder["default"]
    want = load_file(str(ref / "adapter_model.safetensors"))
    assert torch.equal(loaded.embedding.weight, want["prompt_embeddings"])
    assert torch.equal(loaded.prefix_task_cols, want["prefix_task_cols"])
    assert torch.equal(loaded.prefix_task_rows, want["prefix_task_rows"])
    prov = mptkit.load(out).provenance[-1]
    assert prov["operation"] == "convert" and prov["arguments"]["from"] == mptkit.load(path).source.format


def test_inspect_says_what_was_read_from_where(forms, cli):
    notes = {label: " ".join(mptkit.load(forms[label][0]).notes) for label in LABELS}
    assert (
        "a whole model state dict of" in notes["model.safetensors"]
        and "no other tensor was read" in notes["model.safetensors"]
    )
    assert "prompt_encoder.default.*" in notes["model.safetensors"]
    assert "the others were not opened" in notes["sharded folder"]
    for label in ("torch.save whole model .bin", "DeepSpeed module", "get_peft_model_state_dict"):
        assert "the whole file had to be unpickled" in notes[label], label
    assert "under ['module']" in notes["DeepSpeed module"]
    assert "module.prompt_encoder.default.*" in notes["state_dict + DDP prefix"]
    r = cli("inspect", forms["DeepSpeed module"][0])
    assert "had to be unpickled" in r.stdout and "its tensor data left in the file" in r.stdout


def test_a_sharded_folder_opens_only_the_shard_with_the_prompt_encoder(forms, monkeypatch):
    from mptkit.formats import _safetensors as st

    folder = forms["sharded folder"][0]
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    holding = {index["weight_map"][k] for k in index["weight_map"] if "prompt_encoder" in k}
    opened = []
    real = st.read_header
    monkeypatch.setattr(st, "read_header", lambda p: opened.append(Path(p).name) or real(p))
    bank = mptkit.load(folder)
    assert sorted(set(opened)) == sorted(holding) and len(set(index["weight_map"].values())) > len(holding)
    assert bank.source.format == "sharded whole model"


def test_a_shard_name_that_leaves_the_folder_is_refused(forms, tmp_path, cli):
    folder = tmp_path / "sharded"
    shutil.copytree(forms["sharded folder"][0], folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    key = next(k for k in index["weight_map"] if "prompt_encoder" in k)
    index["weight_map"][key] = "../outside.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    r = cli("validate", folder)
    assert r.exit_code == 2 and "is not a file name in the index's folder" in r.stderr


def _two_adapters(root: Path):
    from peft import MultitaskPromptTuningConfig

    model = peft_model("seq2seq", num_tasks=T)
    model.add_adapter(
        "second", MultitaskPromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=5, num_tasks=2, num_ranks=1)
    )
    _perturb(model, 21)
    model.save_pretrained(str(root / "two"))
    torch.save(model.state_dict(), root / "two.bin")
    return model


def test_two_named_adapters(tmp_path, cli):
    model = _two_adapters(tmp_path)
    folder = tmp_path / "two"
    assert (folder / "second" / "adapter_config.json").exists() and (folder / "adapter_config.json").exists()
    for path in (folder, tmp_path / "two.bin"):
        r = cli("inspect", path)
        assert r.exit_code == 2 and "--adapter NAME" in r.stderr and "default" in r.stderr and "second" in r.stderr, (
            r.output
        )
        for name, enc in model.prompt_encoder.items():
            bank = mptkit.load(path, adapter=name)
            assert torch.equal(bank.tensors["prefix_task_cols"].to_torch(), enc.prefix_task_cols.detach())
            assert torch.equal(bank.tensors["prompt_embeddings"].to_torch(), enc.embedding.weight.detach())
        r = cli("inspect", path, "--adapter", "nope")
        assert r.exit_code == 2 and "no adapter named 'nope'" in r.stderr
    r = cli("inspect", folder, "--adapter", "second")
    assert r.exit_code == 0 and "tasks T          2" in r.stdout
    assert "the folder holds 2 adapters: default (the folder itself), second (second/)" in r.stdout
    out = tmp_path / "second-out"
    assert cli("convert", folder, "--adapter", "second", "-o", out).exit_code == 0
    from peft import PeftModel

    loaded = PeftModel.from_pretrained(tiny_base_model("seq2seq"), str(out)).prompt_encoder["default"]
    assert torch.equal(loaded.prefix_task_rows, model.prompt_encoder["second"].prefix_task_rows.detach())
    # a folder that holds only a named adapter (PEFT saves adapter X alone into X/): it is used
    only = tmp_path / "only"
    only.mkdir()
    shutil.copytree(folder / "second", only / "second")
    assert mptkit.load(only).num_tasks == 2


def test_every_reading_command_takes_adapter():
    from mptkit.cli import main

    for name in (
        "validate",
        "inspect",
        "derive",
        "export",
        "rename",
        "slice",
        "remove",
        "merge",
        "add",
        "rank",
        "similarity",
        "push",
        "convert",
    ):
        assert "--adapter" in {o for p in main.commands[name].params for o in p.opts}, name


def test_a_trainer_output_dir_names_the_newest_checkpoint(forms):
    run = forms["Trainer checkpoint (causal)"][0].parent
    assert (run / "checkpoint-9").is_dir() and (run / "checkpoint-10").is_dir()
    r = run_mptkit("inspect", run)
    assert r.returncode == 2, r.stderr
    assert "is a Trainer output_dir" in r.stderr and f"{run / 'checkpoint-10'} (step 10)" in r.stderr, r.stderr
    assert "checkpoint-9" in r.stderr.split("(step 10)")[1]


def test_convert_keeps_bytes_or_casts(forms, tmp_path, cli):
    path, ref = forms["model.safetensors"][0], forms["model.safetensors"][1]
    assert cli("convert", path, "-o", tmp_path / "same.safetensors").exit_code == 0
    got, want = load_file(str(tmp_path / "same.safetensors")), load_file(str(ref / "adapter_model.safetensors"))
    assert all(got[k].dtype == torch.float32 and torch.equal(got[k], want[k]) for k in want)
    assert cli("convert", path, "--dtype", "bfloat16", "-o", tmp_path / "bf16.safetensors").exit_code == 0
    got = load_file(str(tmp_path / "bf16.safetensors"))
    assert all(torch.equal(got[k], want[k].to(torch.bfloat16)) for k in want)
    assert mptkit.load(tmp_path / "bf16.safetensors").provenance[-1]["arguments"] == {
        "from": "whole model safetensors",
        "dtype": "bfloat16",
    }
    r = cli("convert", path, "-o", tmp_path / "folder")
    assert r.exit_code == 2 and "--task-type" in r.stderr


def test_convert_in_python(forms, tmp_path):
    from mptkit._convert import convert

    bank = mptkit.load(forms["DeepSpeed module"][0])
    out = convert(bank, config={"task_type": "SEQ_2_SEQ_LM", "num_virtual_tokens": 5})
    mptkit.save(out, tmp_path / "py")
    assert json.loads((tmp_path / "py" / "adapter_config.json").read_text())["num_transformer_submodules"] == 2
