"""A base model's input embedding from the loopback Hub (tests/fakehub, which counts the bytes it
sends): found and read by range requests, so a command moves the safetensors header, the tensor and
at most 64 kB more (plus the index of a sharded checkpoint), whatever the checkpoint's size. The
checkpoint is a tiny Llama's real tensors beside 40 MB of filler (a hole on disk)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mptkit.errors
import mptkit.hub
from mptkit.serve import PromptEmbedder
from tests.fakehub import Blob
from tests.support import basemodels
from tests.support.banks import sparse_safetensors
from tests.support.commands import one_error

SLACK = 64 << 10
FILLER = (40 << 20) // 4  # F32 values of filler per file
KEY = "model.embed_tokens.weight"


def sparse_model(path: Path, real: dict[str, torch.Tensor], filler: dict[str, int]) -> int:
    """A safetensors file holding ``real`` F32 tensors (their bytes) and ``filler`` F32 tensors of that
    many values (a hole on disk), in name order; returns the header's length (8 + its JSON)."""
    shapes = {**{k: list(t.shape) for k, t in real.items()}, **{k: [n] for k, n in filler.items()}}
    assert all(t.dtype == torch.float32 for t in real.values())
    data = {k: t.contiguous().view(torch.uint8).numpy().tobytes() for k, t in real.items()}
    return sparse_safetensors(path, {k: ("F32", shapes[k]) for k in sorted(shapes)}, data=data)["data_start"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The tiny Llama's files, whole and sharded, and what a Hub serves for each."""
    root = tmp_path_factory.mktemp("remote-model")
    base = basemodels.build("llama")
    real = {k: v.detach().clone() for k, v in base.state_dict().items()}
    config = json.dumps(base.config.to_dict()).encode()
    tok = basemodels.tokenizer_json(root / "tokenizer.json").read_bytes()
    whole = root / "model.safetensors"
    head = sparse_model(whole, real, {"model.filler.weight": FILLER})
    emb = {KEY: real.pop(KEY)}
    shard1, shard2 = root / "model-00001-of-00002.safetensors", root / "model-00002-of-00002.safetensors"
    head1 = sparse_model(shard1, emb, {"model.filler_a.weight": FILLER})
    sparse_model(shard2, real, {"model.filler_b.weight": FILLER})
    weight_map = {KEY: shard1.name, "model.filler_a.weight": shard1.name}
    weight_map.update(dict.fromkeys([*real, "model.filler_b.weight"], shard2.name))
    index = json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}).encode()
    return {
        "base": base,
        "embedding": emb[KEY],
        "whole": {"config.json": config, "model.safetensors": Blob.file(whole), "tokenizer.json": tok},
        "sharded": {
            "config.json": config,
            "model.safetensors.index.json": index,
            shard1.name: Blob.file(shard1),
            shard2.name: Blob.file(shard2),
            "tokenizer.json": tok,
        },
        "header": {"whole": head, "sharded": head1},
        "index": len(index),
        "config": len(config),
        "tokenizer": len(tok),
    }


@pytest.mark.parametrize("form", ["whole", "sharded"])
def test_finding_and_loading_the_matrix_moves_only_its_bytes(hub, model, form):
    hub.commit("owner/llama", model[form])
    hub.clear()
    emb = _load("hf://owner/llama")
    assert emb.key == KEY and emb.why.startswith(KEY)
    found = hub.bytes_sent(r"/resolve/")
    bound = model["header"][form] + model["config"] + (model["index"] if form == "sharded" else 0) + SLACK
    assert found <= bound  # the header, the config (and the index): no tensor data yet beyond the probe
    assert torch.equal(emb.load(), model["embedding"])
    moved = hub.bytes_sent(r"/resolve/")
    tensor = model["embedding"].numel() * 4
    assert tensor + model["header"][form] <= moved <= bound + tensor
    assert hub.bytes_sent(r"tokenizer\.json") == 0  # not asked for
    assert hub.bytes_sent(r"00002-of-00002") == 0  # the other shard is never opened


def _load(ref):
    from mptkit._io import load_embeddings

    return load_embeddings(ref)


def test_rows_on_demand_read_those_rows(hub, model):
    hub.commit("owner/llama", model["whole"])
    emb = _load("hf://owner/llama")
    hub.clear()
    got = emb.rows([7, 3, 7])
    assert torch.equal(got, model["embedding"][[7, 3, 7]])
    assert hub.bytes_sent(r"/resolve/") <= 2 * 24 * 4 + SLACK  # two rows (the probe may already hold some)


def test_prompt_embeddings_from_hub_bank_and_model_equal_the_local_ones(hub, model, tmp_path):
    peft_model = basemodels.mpt(model["base"], "causal")
    peft_model.save_pretrained(str(tmp_path / "bank"))
    files = {p.name: p.read_bytes() for p in (tmp_path / "bank").iterdir()}
    hub.commit("owner/bank", files)
    hub.commit("owner/llama", model["sharded"])
    hub.clear()
    emb = PromptEmbedder.from_pretrained("hf://owner/bank", "hf://owner/llama")
    ids = torch.tensor([[4, 8, 15, 16, 23, 42]])
    ref, _ = basemodels.peft_inputs_embeds(peft_model, input_ids=ids, task_ids=torch.tensor([1]))
    assert torch.equal(emb(1, ids[0]), ref[0])
    assert torch.equal(emb.batch([1, 1], ids.repeat(2, 1)), ref.repeat(2, 1, 1))
    model_bytes = hub.bytes_sent(r"/resolve/.*(safetensors|config\.json)$")
    tensor = model["embedding"].numel() * 4
    bound = model["header"]["sharded"] + model["config"] + model["index"] + tensor + SLACK
    assert model_bytes <= bound + hub.bytes_sent(r"owner/bank/resolve/")


def test_explain_reads_the_embedding_and_the_tokenizer_only(hub, model, cli, tmp_path):
    from tests.support.banks import write_bank

    E = model["embedding"]
    write_bank(tmp_path / "bank.safetensors", E[[9, 2, 77]].clone(), torch.ones(1, 3, 1), torch.ones(1, 1, 24))
    hub.commit("owner/llama", model["whole"])
    hub.clear()
    r = cli("explain", tmp_path / "bank.safetensors", "--task", "0", "--base-model", "hf://owner/llama", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [p["nearest"][0]["token"] for p in out["positions"]] == ["w9", "w2", "w77"]
    tensor = E.numel() * 4
    assert hub.bytes_sent(r"tokenizer\.json") == model["tokenizer"]
    assert (
        hub.bytes_sent(r"/resolve/") <= model["header"]["whole"] + tensor + model["tokenizer"] + model["config"] + SLACK
    )


def test_a_model_in_the_hf_cache_is_read_there_and_offline(hub, model, monkeypatch):
    """A model that huggingface_hub downloaded whole is read from the cache (no weights move); with
    HF_HUB_OFFLINE=1 the cached snapshot is the only source."""
    from huggingface_hub import snapshot_download

    hub.commit("owner/llama", model["whole"])
    snapshot_download("owner/llama", endpoint=hub.url, cache_dir=mptkit.hub.cache_dir())
    hub.clear()
    emb = _load("hf://owner/llama")
    assert torch.equal(emb.load(), model["embedding"])
    assert hub.bytes_sent(r"\.safetensors$") == 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.clear()
    emb = _load("hf://owner/llama")
    assert emb.where == "hf://owner/llama" and torch.equal(emb.load(), model["embedding"])
    assert emb.tokenizer().endswith("tokenizer.json") and not hub.requests
    with pytest.raises(mptkit.errors.HubError, match="HF_HUB_OFFLINE is set"):
        _load("hf://owner/other")


def test_hostile_sizes_and_missing_files_are_one_sentence_before_any_download(hub, model, cli, tmp_path):
    from tests.support.banks import write_bank

    bank = write_bank(tmp_path / "b.safetensors", torch.randn(3, 24), torch.ones(1, 3, 1), torch.ones(1, 1, 24))
    hub.commit("owner/big-tok", {**model["whole"], "tokenizer.json": Blob.pattern(300 << 20, b"{")})
    hub.clear()
    r = cli("explain", bank, "--task", "0", "--base-model", "hf://owner/big-tok")
    assert "a tokenizer.json has; refused" in one_error(r, "tokenizer.json is listed at")
    assert hub.bytes_sent(r"tokenizer\.json") == 0
    hub.commit("owner/no-weights", {"config.json": model["whole"]["config.json"], "pytorch_model.bin": b"x" * 10})
    r = cli("explain", bank, "--task", "0", "--base-model", "hf://owner/no-weights")
    one_error(r, "no model.safetensors", "pytorch_model.bin")
    r = cli("explain", bank, "--task", "0", "--base-model", "hf://owner/missing")
    assert r.exit_code == 2 and "owner/missing" in r.stderr
