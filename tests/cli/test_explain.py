"""``mptkit explain``: the nearest vocabulary tokens of each virtual token, decoded with the base
model's tokenizer.json (built offline with the tokenizers library)."""

from __future__ import annotations

import json

import pytest
import torch

from mptkit._schema import check
from tests.support import basemodels
from tests.support.banks import write_bank
from tests.support.commands import one_error

ROWS = [5, 17, 42, 88, 3]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    base = basemodels.build("gpt2")
    return base.get_input_embeddings().weight.detach().clone(), basemodels.save(
        base, tmp_path_factory.mktemp("m") / "gpt2"
    )


def exact_bank(path, E, rows=ROWS, names=("first", "second")):
    """A bank whose shared prompt is the rows ``rows`` of ``E`` and whose task factors multiply to
    ones, so each task's full prompt is exactly those rows too."""
    T, N, d = len(names), len(rows), E.shape[1]
    return write_bank(path, E[rows].clone(), torch.ones(T, N, 1), torch.ones(T, 1, d), list(names))


def test_a_prompt_of_exact_rows_is_explained_as_those_tokens(cli, model, tmp_path):
    E, folder = model
    bank = exact_bank(tmp_path / "bank.safetensors", E)
    r = cli("explain", bank, "--task", "second", "--base-model", folder, "--top", "3", "--shared", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert check("output", out, pointer="/$defs/explain") == []  # schemas/output.schema.json
    assert out["task"] == 1 and out["name"] == "second" and out["embedding"]["key"] == "transformer.wte.weight"
    for positions in (out["positions"], out["shared"]["positions"]):
        assert [p["position"] for p in positions] == list(range(len(ROWS)))
        for p, row in zip(positions, ROWS):
            first = p["nearest"][0]
            assert (first["id"], first["token"], first["text"]) == (row, f"w{row}", f"w{row}")
            assert first["cosine"] == pytest.approx(1.0, abs=1e-6)
            assert len(p["nearest"]) == 3 and all(n["cosine"] < 0.999 for n in p["nearest"][1:])
            cos = torch.nn.functional.cosine_similarity(E[row][None], E).topk(3)
            assert [n["id"] for n in p["nearest"]] == cos.indices.tolist()
    text = cli("explain", bank, "--task", "0", "--base-model", folder / "model.safetensors")
    assert text.exit_code == 0
    lines = text.stdout.splitlines()
    assert lines[1] == "task 0 (first):" and lines[2].split()[:3] == ["0", "'w5'", "1.000,"]


def test_prompts_whose_squares_overflow_float32_keep_their_cosines(cli, model, tmp_path):
    """Rows of 1e20 times the embedding rows are finite, but their squared norms overflow float32:
    each is still its row's token at cosine 1.0 (the norms once came out infinite, every cosine 0)."""
    E, folder = model
    scale = 1e20 / float(E[ROWS].abs().max())
    bank = write_bank(tmp_path / "huge.safetensors", E[ROWS] * scale, torch.ones(1, 5, 1), torch.ones(1, 1, E.shape[1]))
    r = cli("explain", bank, "--task", "0", "--base-model", folder, "--top", "2", "--json")
    assert r.exit_code == 0, r.output
    for p, row in zip(json.loads(r.stdout)["positions"], ROWS):
        assert p["nearest"][0]["id"] == row and p["nearest"][0]["cosine"] == pytest.approx(1.0, abs=1e-6)


def test_blocks_of_the_vocabulary_give_the_same_answer(cli, model, tmp_path, monkeypatch):
    """Memory is bounded by a block of rows: with blocks of 8 rows (12 blocks) the answer is the one
    of a single block, and no block read is larger."""
    from mptkit import _explain
    from mptkit.formats import _embeddings

    E, folder = model
    bank = exact_bank(tmp_path / "bank.safetensors", E)
    whole = json.loads(cli("explain", bank, "--task", "0", "--base-model", folder, "--top", "4", "--json").stdout)
    sizes = []
    real = _embeddings.InputEmbeddings.block

    def block(self, start, stop):
        sizes.append(stop - start)
        return real(self, start, stop)

    monkeypatch.setattr(_embeddings.InputEmbeddings, "block", block)
    monkeypatch.setattr(_explain, "BLOCK_BYTES", 8 * 24 * 4)
    small = json.loads(cli("explain", bank, "--task", "0", "--base-model", folder, "--top", "4", "--json").stdout)
    assert max(sizes) == 8 and sum(sizes) == basemodels.VOCAB
    assert [[n["id"] for n in p["nearest"]] for p in small["positions"]] == [
        [n["id"] for n in p["nearest"]] for p in whole["positions"]
    ]


def test_seq2seq_positions_name_their_half(cli, tmp_path):
    base = basemodels.build("t5")
    folder = basemodels.save(base, tmp_path / "t5")
    E = base.get_input_embeddings().weight.detach()
    bank = exact_bank(tmp_path / "b.safetensors", E, rows=[1, 2, 3, 4])
    meta_cfg = {"num_virtual_tokens": 2, "num_transformer_submodules": 2, "task_type": "SEQ_2_SEQ_LM"}
    from mptkit import load, save

    save(load(bank).with_config(meta_cfg), tmp_path / "folder")
    r = cli("explain", tmp_path / "folder", "--task", "0", "--base-model", folder, "--top", "1", "--json")
    assert r.exit_code == 0, r.output
    assert [(p["half"], p["nearest"][0]["id"]) for p in json.loads(r.stdout)["positions"]] == [
        ("encoder", 1),
        ("encoder", 2),
        ("decoder", 3),
        ("decoder", 4),
    ]


def test_missing_embedding_missing_tokenizer_and_another_width_are_one_sentence(cli, model, tmp_path):
    E, folder = model
    bank = exact_bank(tmp_path / "bank.safetensors", E)
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("explain", bank, "--task", "0", "--base-model", empty)
    assert "model.safetensors" in one_error(r, "no model.safetensors", where=empty)
    no_tok = tmp_path / "no-tok"
    no_tok.mkdir()
    (no_tok / "model.safetensors").symlink_to(folder / "model.safetensors")
    one_error(cli("explain", bank, "--task", "0", "--base-model", no_tok), "no tokenizer.json", where=no_tok)
    bad_tok = tmp_path / "bad-tok"
    bad_tok.mkdir()
    (bad_tok / "model.safetensors").symlink_to(folder / "model.safetensors")
    (bad_tok / "tokenizer.json").write_text('{"not": "a tokenizer"}')
    one_error(cli("explain", bank, "--task", "0", "--base-model", bad_tok), "not a tokenizer.json")
    wide = write_bank(tmp_path / "wide.safetensors", torch.randn(3, 32), torch.ones(1, 3, 1), torch.ones(1, 1, 32))
    one_error(cli("explain", wide, "--task", "0", "--base-model", folder), "d=32", "24 wide")
    from safetensors.torch import save_file

    other = tmp_path / "other"
    other.mkdir()
    save_file({"h.0.weight": torch.randn(4, 4)}, str(other / "model.safetensors"))
    one_error(
        cli("explain", bank, "--task", "0", "--base-model", other), "no input-embedding tensor", "--embedding-key"
    )
    r = cli("explain", bank, "--base-model", folder)
    one_error(r, "--task K", "--shared")
    one_error(cli("explain", bank, "--task", "0", "--base-model", folder, "--top", "0"), "--top")
