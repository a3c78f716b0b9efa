"""Reading a base model's input-embedding matrix alone (mptkit.formats._embeddings): found by the
config and the names transformers saves it under, in whole and sharded checkpoints, read lazily."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from mptkit._io import load_embeddings
from mptkit.errors import InvalidModel
from tests.support import basemodels


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root, made = tmp_path_factory.mktemp("embeddings"), {}

    def get(arch, sharded=False, dtype=torch.float32):
        key = (arch, sharded, dtype)
        if key not in made:
            model = basemodels.build(arch, dtype)
            folder = basemodels.save(model, root / f"{arch}-{sharded}-{str(dtype)[6:]}", sharded=sharded)
            made[key] = (model, folder)
        return made[key]

    return get


@pytest.mark.parametrize("sharded", [False, True], ids=["whole", "sharded"])
@pytest.mark.parametrize("arch", ["gpt2", "llama", "t5"])
def test_finds_the_input_embedding_of_each_architecture(saved, arch, sharded):
    model, folder = saved(arch, sharded)
    want = model.get_input_embeddings().weight.detach()
    for src in (folder, folder / ("model.safetensors.index.json" if sharded else "model.safetensors")):
        emb = load_embeddings(src)
        assert emb.key == basemodels.EMBEDDING_KEYS[arch] and emb.key in emb.why
        assert (emb.vocab_size, emb.hidden_size) == tuple(want.shape)
        assert emb.is_encoder_decoder == (arch == "t5")
        assert torch.equal(emb.load(), want)
        assert emb.tokenizer() == str(folder / "tokenizer.json")
    if sharded:  # the index, and the one shard that holds the tensor: no other shard is opened
        index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
        assert [p for p in emb.opened if p.split("/")[-1].startswith("model-")] == [str(folder / index[emb.key])]


def test_bfloat16_rows_on_demand_read_only_those_rows(saved):
    model, folder = saved("llama", dtype=torch.bfloat16)
    emb = load_embeddings(folder)
    assert emb.dtype == "BF16"
    reads = []
    real = emb.array.segments[0]

    class Counting:  # the Array's bytes through a reader that records every range it is asked for
        def read_into(self, offset, out):
            reads.append(len(out))
            with open(real.path, "rb") as f:
                f.seek(offset)
                f.readinto(out)

    from mptkit._tensor import Array, Segment

    emb.array = Array(emb.array.dtype, emb.array.shape, [Segment(real.offset, real.length, reader=Counting())])
    want = model.get_input_embeddings().weight.detach()
    assert torch.equal(emb.rows([5, 9, 5, 6]), want[[5, 9, 5, 6]])
    assert sum(reads) == 3 * 24 * 2  # rows 5, 6 and 9, once each
    reads.clear()
    assert torch.equal(emb.block(10, 20), want[10:20]) and reads == [10 * 24 * 2]


def test_a_local_file_is_mapped_not_read(saved):
    model, folder = saved("gpt2")
    emb = load_embeddings(folder)
    mapped = emb.mapped()
    assert mapped is not None and torch.equal(mapped, model.get_input_embeddings().weight.detach())
    mapped[0, 0] = 123.0  # a private copy-on-write page: the file is never written
    assert torch.equal(load_embeddings(folder).load()[0], model.get_input_embeddings().weight.detach()[0])


def _file(tmp_path, tensors: dict, config: dict | None = None):
    folder = tmp_path / "m"
    folder.mkdir(exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_tied_output_embedding_unknown_prefixes_and_a_named_key(tmp_path):
    e = torch.randn(10, 4)
    folder = _file(tmp_path, {"lm_head.weight": e, "h.0.w": torch.randn(4, 4)}, {"tie_word_embeddings": True})
    emb = load_embeddings(folder)
    assert emb.key == "lm_head.weight" and "ties" in emb.why and torch.equal(emb.load(), e)
    folder = _file(tmp_path, {"backbone.tok.embed_tokens.weight": e, "h.0.w": torch.randn(4, 4)})
    assert load_embeddings(folder).key == "backbone.tok.embed_tokens.weight"
    folder = _file(tmp_path, {"a.embed_tokens.weight": e, "b.wte.weight": e.clone()})
    with pytest.raises(InvalidModel, match="several tensors look like an input embedding .*--embedding-key"):
        load_embeddings(folder)
    assert load_embeddings(folder, embedding_key="b.wte.weight").key == "b.wte.weight"
    with pytest.raises(InvalidModel, match=r"no tensor named 'c\.weight'"):
        load_embeddings(folder, embedding_key="c.weight")


@pytest.mark.parametrize(
    "tensors,config,words",
    [
        ({"h.0.w": torch.randn(4, 4)}, None, "no input-embedding tensor"),
        ({"model.embed_tokens.weight": torch.randn(10)}, None, "shape [10]"),
        ({"model.embed_tokens.weight": torch.zeros(10, 4, dtype=torch.int8)}, None, "I8 (a quantized checkpoint?)"),
        (
            {"model.embed_tokens.weight": torch.randn(10, 4)},
            {"hidden_size": 8},
            "config.json says the hidden size is 8",
        ),
    ],
)
def test_what_cannot_be_an_input_embedding_is_one_sentence(tmp_path, tensors, config, words):
    folder = _file(tmp_path, tensors, config)
    with pytest.raises(InvalidModel) as e:
        load_embeddings(folder)
    assert words in e.value.message and len(e.value.problems) == 1


def test_missing_models_and_pickles_are_one_sentence(tmp_path):
    with pytest.raises(InvalidModel, match="no such file or folder"):
        load_embeddings(tmp_path / "nothing")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(InvalidModel, match="no model.safetensors or model.safetensors.index.json.*pytorch_model.bin"):
        load_embeddings(tmp_path / "bin")
