"""mptkit.serve.PromptEmbedder: a request's inputs_embeds from a bank and a base model's input
embedding, against what PEFT itself feeds the model (tiny models built from configs)."""

from __future__ import annotations

import base64
import io
import json
import runpy
import sys
from pathlib import Path

import pytest
import torch

from mptkit.errors import InvalidModel, UsageError
from mptkit.serve import PromptEmbedder
from tests.support import basemodels

ROOT = Path(__file__).resolve().parents[2]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@pytest.fixture(scope="module")
def setups(tmp_path_factory):
    """``setups(arch, dtype, sharded)``: (PEFT model, its saved adapter folder, the saved base model)."""
    root, made = tmp_path_factory.mktemp("embedder"), {}

    def get(arch="llama", dtype="float32", sharded=False):
        key = (arch, dtype, sharded)
        if key not in made:
            where = root / "-".join(map(str, key))
            base = basemodels.build(arch, DTYPES[dtype])
            model_dir = basemodels.save(base, where / "model", sharded=sharded)
            peft_model = basemodels.mpt(base, "seq2seq" if arch == "t5" else "causal")
            peft_model.save_pretrained(str(where / "bank"))
            made[key] = (peft_model, where / "bank", model_dir)
        return made[key]

    return get


def decode_like_vllm(body: dict, hidden: int) -> torch.Tensor:
    """What vLLM's Completions endpoint does with ``prompt_embeds`` (vllm/entrypoints, safe_load_prompt_embeds):
    strict base64, ``torch.load(weights_only=True)`` on the CPU, a dense 2-D float tensor as wide as the model."""
    raw = base64.b64decode(body["prompt_embeds"], validate=True)
    with torch.sparse.check_sparse_tensor_invariants():
        t = torch.load(io.BytesIO(raw), weights_only=True, map_location=torch.device("cpu"))
        assert isinstance(t, torch.Tensor)
        t = t.to_dense()
    assert t.dim() == 2 and t.shape[1] == hidden and t.is_floating_point()
    return t


@pytest.mark.parametrize("sharded", [False, True], ids=["whole", "sharded"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_equals_peft_inputs_embeds_and_logits_for_every_task(setups, arch, dtype, sharded):
    peft_model, bank, model_dir = setups(arch, dtype, sharded)
    emb = PromptEmbedder.from_pretrained(bank, model_dir)
    assert emb.embeddings.key == basemodels.EMBEDDING_KEYS[arch] and emb.dtype == DTYPES[dtype]
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, basemodels.VOCAB, (4, 9), generator=g)
    ids[1] = ids[0]  # the same tokens under two tasks
    task_ids = torch.tensor([2, 0, 1, 2])
    ref, logits = peft_inputs_embeds(peft_model, input_ids=ids, attention_mask=torch.ones_like(ids), task_ids=task_ids)
    assert ref.shape == (4, 5 + 9, basemodels.HIDDEN) and ref.dtype == DTYPES[dtype]
    ours = emb.batch(task_ids.tolist(), ids)
    assert ours.dtype == ref.dtype and torch.equal(ours, ref)
    for b in range(4):  # one request at a time, by index or through a list
        assert torch.equal(emb(int(task_ids[b]), ids[b]), ref[b])
        assert torch.equal(emb(int(task_ids[b]), ids[b].tolist()), ref[b])
    # the model fed those embeddings gives PEFT's MPT logits
    base = peft_model.get_base_model()
    with torch.no_grad():
        mine = base(inputs_embeds=ours, attention_mask=torch.ones(ours.shape[:2], dtype=torch.long)).logits
    assert torch.equal(mine, logits)


def peft_inputs_embeds(model, **kwargs):
    return basemodels.peft_inputs_embeds(model, **kwargs)


def test_ragged_batch_and_the_vllm_forms(setups):
    peft_model, bank, model_dir = setups("llama", "bfloat16")
    emb = PromptEmbedder.from_pretrained(bank, model_dir)
    seqs = [[5, 6, 7], [9], [1, 2, 3, 4, 5, 6]]
    out = emb.batch([0, 2, 1], seqs)
    assert [tuple(x.shape) for x in out] == [(8, 24), (6, 24), (11, 24)]
    for (task, s), x in zip(zip([0, 2, 1], seqs), out):
        ref, _ = peft_inputs_embeds(peft_model, input_ids=torch.tensor([s]), task_ids=torch.tensor([task]))
        assert torch.equal(x, ref[0])
        body = emb.vllm_request(task, s, model="tiny", max_tokens=4, temperature=0.0)
        assert body["model"] == "tiny" and body["max_tokens"] == 4 and json.loads(json.dumps(body)) == body
        got = decode_like_vllm(body, 24)
        assert got.dtype == torch.bfloat16 and torch.equal(got, ref[0])
        # the payload holds this tensor alone, not the storage of a larger one
        assert got.untyped_storage().nbytes() == got.numel() * got.element_size()
        offline = emb.vllm_prompt(task, s)
        assert list(offline) == ["prompt_embeds"] and torch.equal(offline["prompt_embeds"], ref[0])


def test_names_tasks_restriction_and_the_served_dtype(setups, tmp_path):
    import mptkit

    peft_model, bank, model_dir = setups("gpt2", "float32")
    named = mptkit.set_names(mptkit.load(bank), ["a", "b", "c"])
    emb = PromptEmbedder.from_pretrained(named, model_dir, tasks="c,a", dtype="bfloat16")
    ref, _ = peft_inputs_embeds(peft_model, input_ids=torch.tensor([[3, 4]]), task_ids=torch.tensor([2]))
    assert emb("c", [3, 4]).dtype == torch.bfloat16
    assert torch.equal(emb("c", [3, 4]), ref[0].to(torch.bfloat16))  # an elementwise cast commutes with the gather
    assert torch.equal(
        emb.prompt("a"), peft_model.prompt_encoder["default"](torch.arange(5)[None], torch.tensor([0]))[0]
    )
    with pytest.raises(UsageError, match="not one this embedder serves"):
        emb("b", [1])
    with pytest.raises(InvalidModel, match="token id 96 is outside"):
        emb("a", [1, 96])


def test_only_the_tasks_used_are_read(setups, monkeypatch):
    from mptkit import _tensor

    _, bank, model_dir = setups("llama", "float32")
    emb = PromptEmbedder.from_pretrained(bank, model_dir)
    seen = []
    real = _tensor.Array.rows

    def rows(self, indices):
        seen.append((self.shape, list(indices)))
        return real(self, indices)

    monkeypatch.setattr(_tensor.Array, "rows", rows)
    emb(1, [1, 2])
    emb(1, [3])
    factor_reads = [i for shape, i in seen if len(shape) == 3]
    assert factor_reads == [[1], [1]]  # cols[1] and rows[1] once: task 1's prompt is kept


def test_seq2seq_banks_and_models_are_refused(setups, peft_banks):
    _, bank, model_dir = setups("t5", "float32")
    with pytest.raises(UsageError, match=r"seq2seq bank .*tgis"):
        PromptEmbedder.from_pretrained(bank, model_dir)
    _, causal_bank, _ = setups("llama", "float32")
    with pytest.raises(UsageError, match="is an encoder-decoder model"):
        PromptEmbedder.from_pretrained(causal_bank, model_dir)


def test_another_hidden_size_and_a_scaling_model_are_refused(setups, tmp_path):
    from tests.support.banks import random_bank

    _, bank, model_dir = setups("llama", "float32")
    wide = random_bank(tmp_path / "wide.safetensors", d=32)
    with pytest.raises(InvalidModel, match=r"has d=32 but .* is 24 wide: the bank was not trained on this model"):
        PromptEmbedder.from_pretrained(wide, model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    gemma = tmp_path / "gemma"
    gemma.mkdir()
    (gemma / "model.safetensors").symlink_to(model_dir / "model.safetensors")
    (gemma / "config.json").write_text(json.dumps({**cfg, "model_type": "gemma"}))
    with pytest.raises(InvalidModel, match="scales its token embeddings"):
        PromptEmbedder.from_pretrained(bank, gemma)


def test_the_example_runs_up_to_the_engine_call(setups, tmp_path, monkeypatch, capsys):
    """examples/serve_vllm.py with vLLM's entry points replaced by recorders: what it hands the
    engine decodes to PEFT's inputs_embeds."""
    peft_model, bank, model_dir = setups("llama", "float32")
    monkeypatch.setattr(sys, "argv", ["serve_vllm.py", str(bank), str(model_dir), "--task", "2", "--dry-run"])
    runpy.run_path(str(ROOT / "examples" / "serve_vllm.py"), run_name="__main__")
    sent = json.loads(capsys.readouterr().out)
    ids = sent["input_ids"]
    ref, _ = peft_inputs_embeds(peft_model, input_ids=torch.tensor([ids]), task_ids=torch.tensor([2]))
    assert torch.equal(decode_like_vllm(sent["request"], 24), ref[0])
    assert sent["offline"] == {"shape": list(ref[0].shape), "dtype": "torch.float32"}
