"""mptkit.serve._runtime.TaskPrompts against PEFT's MultitaskPromptEmbedding, and prepend() on HF models."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import mptkit
from mptkit._derive import derive
from mptkit.errors import UsageError
from mptkit.serve._runtime import TaskPrompts, prepend
from tests.support import ROOT
from tests.support.banks import DTYPES, random_bank, tiny_base_model

KINDS = ("seq2seq", "causal")


def peft_loaded(kind, folder):
    from peft import PeftModel

    return PeftModel.from_pretrained(tiny_base_model(kind), str(folder)).eval()


def batches(T, gen):
    """Random batches of task ids: repeated ids, one id for every row, every task, a single row."""
    yield torch.randint(0, T, (9,), generator=gen)  # repeats
    yield torch.full((6,), T - 1)  # one task throughout
    yield torch.randperm(T, generator=gen)  # every task once, shuffled
    yield torch.arange(T).repeat(3)  # every task, repeated
    yield torch.tensor([1])  # a single row


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("kind", KINDS)
def test_prompts_equal_peft(peft_banks, kind, dtype):
    folder = peft_banks(kind, dtype)
    enc = peft_loaded(kind, folder).prompt_encoder["default"]
    ours = TaskPrompts.from_bank(folder)
    cached = TaskPrompts.from_bank(folder, cached=True)
    T, N = ours.num_tasks, ours.num_tokens
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for task_ids in batches(T, gen):
            B = len(task_ids)
            indices = torch.arange(N).unsqueeze(0).expand(B, -1)
            ref = enc(indices, task_ids)
            assert ref.shape == (B, N, 24)
            for module in (ours, cached):
                assert torch.equal(module(task_ids), ref)
                assert torch.equal(module(indices, task_ids), ref)
            # PEFT's broadcast: one task id for a batch of B rows
            one = task_ids[:1]
            ref1 = enc(indices, one)
            assert torch.equal(ours(indices, one), ref1) and torch.equal(cached(indices, one), ref1)
        # indices other than 0..N-1 (PEFT's forward allows them): the same as PEFT too
        weird = torch.randint(0, N, (4, N), generator=gen)
        tids = torch.tensor([0, 2, 0, 1])
        assert torch.equal(ours(weird, tids), enc(weird, tids))
        assert torch.equal(cached(weird, tids), enc(weird, tids))


@pytest.mark.parametrize("kind", KINDS)
def test_stands_where_peft_module_stands(peft_banks, kind):
    """PEFT's model with mptkit's module as its prompt encoder gives the same logits."""
    folder = peft_banks(kind)
    model = peft_loaded(kind, folder)
    ids = torch.randint(2, 96, (5, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    task_ids = torch.tensor([2, 0, 2, 1, 1])
    kw = {"labels": ids[:, :4]} if kind == "seq2seq" else {}  # (PEFT fails with decoder_input_ids alone)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, task_ids=task_ids, **kw).logits
        state = {k: v.clone() for k, v in model.prompt_encoder["default"].state_dict().items()}
        ours = TaskPrompts.from_bank(folder)
        assert dict(ours.state_dict().items()).keys() == state.keys()
        model.prompt_encoder["default"] = ours
        got = model(input_ids=ids, attention_mask=mask, task_ids=task_ids, **kw).logits
        model.prompt_encoder["default"] = ours.cache()
        got_cached = model(input_ids=ids, attention_mask=mask, task_ids=task_ids, **kw).logits
    assert torch.equal(got, ref) and torch.equal(got_cached, ref)


def test_prepend_gives_peft_logits_causal(peft_banks):
    """A plain causal LM with prepend(): PEFT's logits with task_ids, bit for bit."""
    folder = peft_banks("causal")
    model = peft_loaded("causal", folder)
    base = tiny_base_model("causal").eval()
    ids = torch.randint(2, 96, (4, 6), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    task_ids = torch.tensor([1, 1, 0, 2])
    prompts = TaskPrompts.from_bank(folder)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, task_ids=task_ids).logits
        kwargs = prepend(base, prompts(task_ids), input_ids=ids, attention_mask=mask)
        got = base(**kwargs).logits
    assert kwargs["inputs_embeds"].shape == (4, prompts.num_tokens + 6, 24)
    assert (
        kwargs["attention_mask"].shape == (4, prompts.num_tokens + 6) and kwargs["attention_mask"].dtype == mask.dtype
    )
    assert torch.equal(got, ref)


def test_prepend_token_type_ids_and_errors():
    emb = torch.nn.Embedding(10, 4)

    class M:
        def get_input_embeddings(self):
            return emb

    ids = torch.tensor([[1, 2, 3]])
    tt = torch.tensor([[0, 1, 1]])
    out = prepend(M(), torch.zeros(1, 2, 4), input_ids=ids.expand(2, -1), token_type_ids=tt.expand(2, -1))
    assert out["inputs_embeds"].shape == (2, 5, 4) and "attention_mask" not in out
    assert out["token_type_ids"].tolist() == [[0, 0, 0, 1, 1]] * 2
    with pytest.raises(UsageError, match="exactly one"):
        prepend(M(), torch.zeros(1, 2, 4))
    with pytest.raises(UsageError, match="do not fit"):
        prepend(M(), torch.zeros(1, 2, 5), input_ids=ids)


def test_from_derived_bank_and_names(tmp_path):
    src = mptkit.load(random_bank(tmp_path / "b.safetensors", T=4, names=["a", "b", "c", "d"]))
    full = TaskPrompts.from_bank(src)
    one = TaskPrompts.from_bank(derive(src, "exact", task="c"))  # in memory, never saved
    assert one.num_tasks == 1 and one.task_names == ["c"]
    with torch.no_grad():
        assert torch.equal(one(torch.tensor([0, 0])), full(full.task_ids(["c", 2])))
    assert full.task_ids(["d", 0, "1"]).tolist() == [3, 0, 1]
    with pytest.raises(UsageError, match="names: a, b, c, d"):
        full.task_ids(["zz"])
    with pytest.raises(UsageError, match="has 4 tasks|have 4 tasks"):
        full.task_ids([4])
    with pytest.raises(UsageError, match="only the shared prompt"):
        TaskPrompts.from_bank(derive(src, "shared"))


def test_dtype_device_and_cache_follow(tmp_path):
    path = random_bank(tmp_path / "b.safetensors", T=3, dtype=torch.bfloat16)
    m = TaskPrompts.from_bank(path, dtype=torch.float64, device="cpu", cached=True)
    assert m.prefix_task_cols.dtype == torch.float64 and m.cached
    tids = torch.tensor([2, 0])
    with torch.no_grad():
        a = m(tids)
        m.float()  # the cache is rebuilt in the new dtype
        b = m(tids)
        c = m.uncache()(tids)
    assert a.dtype == torch.float64 and b.dtype == torch.float32 and torch.equal(b, c)


def test_training_gradients(tmp_path):
    """With requires_grad_, gradients reach all three tensors (the cache is bypassed)."""
    m = TaskPrompts.from_bank(random_bank(tmp_path / "b.safetensors", T=3), cached=True).requires_grad_(True)
    m(torch.tensor([0, 2, 2])).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    assert m.prefix_task_cols.grad[1].abs().sum() == 0  # task 1 was not in the batch


def test_to_bank_round_trip(tmp_path, example_bank):
    m = TaskPrompts.from_bank(example_bank)
    out = tmp_path / "again"
    mptkit.save(m.to_bank(), out)
    again = TaskPrompts.from_bank(out)
    tids = torch.arange(m.num_tasks)
    with torch.no_grad():
        assert torch.equal(again(tids), m(tids))
    assert again.num_virtual_tokens == 6 and again.num_transformer_submodules == 2


def test_import_mptkit_does_not_import_torch():
    from tests.support.commands import loaded_by

    r, mods = loaded_by("import mptkit, mptkit._derive, mptkit._export, mptkit._edit, mptkit._similarity")
    assert r.returncode == 0 and "torch" not in mods, (mods, r.stderr)
    r, mods = loaded_by("import mptkit.serve._runtime")  # the probe sees torch where it is imported
    assert "torch" in mods


@pytest.mark.parametrize("script", ["transfer_workflow.py", "runtime_question_answering.py"])
def test_examples_run(script, tmp_path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    if script == "transfer_workflow.py":
        assert "bit-identical to PEFT's online init: True" in r.stdout
        assert "runtime prompts equal PEFT's" in r.stdout and ": True;" in r.stdout
    else:
        assert "task_ids cannot be None" in r.stdout and "features: (4, 12, 32)" in r.stdout
