"""Tiny base models built from configs with transformers (no downloads), saved as a whole-model
``model.safetensors`` and as a sharded checkpoint, each with a ``tokenizer.json`` built offline
with the tokenizers library; and PEFT MPT models over them."""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB, HIDDEN = 96, 24
#: architecture -> the tensor transformers saves the input embedding under
EMBEDDING_KEYS = {"gpt2": "transformer.wte.weight", "llama": "model.embed_tokens.weight", "t5": "shared.weight"}


def build(arch: str, dtype: torch.dtype = torch.float32, seed: int = 1234):
    """A tiny model of ``arch`` ("gpt2", "llama": causal; "t5": seq2seq) in ``dtype``."""
    torch.manual_seed(seed)
    if arch == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=VOCAB, n_embd=HIDDEN, n_layer=1, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=1
            )
        )
    elif arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=VOCAB,
                hidden_size=HIDDEN,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=4,
                num_key_value_heads=2,
                tie_word_embeddings=False,
                bos_token_id=1,
                eos_token_id=2,
                pad_token_id=0,
            )
        )
    elif arch == "t5":
        from transformers import T5Config, T5ForConditionalGeneration

        model = T5ForConditionalGeneration(
            T5Config(
                vocab_size=VOCAB,
                d_model=HIDDEN,
                d_kv=6,
                d_ff=48,
                num_layers=1,
                num_heads=4,
                decoder_start_token_id=0,
                pad_token_id=0,
                eos_token_id=1,
            )
        )
    else:
        raise ValueError(arch)
    return model.to(dtype).eval()


def tokenizer_json(path: Path, vocab: int = VOCAB) -> Path:
    """A word-level tokenizer whose token i is ``w<i>``, written to ``path``."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))
    return path


def save(model, folder: Path, *, sharded: bool = False, tokenizer: bool = True) -> Path:
    """``save_pretrained`` (whole, or in shards of a few kB: one tensor or two per shard)."""
    if sharded:
        model.save_pretrained(str(folder), max_shard_size="8KB")
        assert (folder / "model.safetensors.index.json").exists()
    else:
        model.save_pretrained(str(folder))
        assert (folder / "model.safetensors").exists()
    if tokenizer:
        tokenizer_json(folder / "tokenizer.json")
    return folder


def mpt(base, kind: str, *, num_tasks: int = 3, num_ranks: int = 2, num_virtual_tokens: int = 5, seed: int = 0):
    """A PEFT MPT model over ``base`` with random, distinct task factors (PEFT's prompt encoder is
    float32 whatever the base model's dtype)."""
    from peft import MultitaskPromptTuningConfig, get_peft_model

    cfg = MultitaskPromptTuningConfig(
        task_type={"causal": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM"}[kind],
        num_virtual_tokens=num_virtual_tokens,
        num_tasks=num_tasks,
        num_ranks=num_ranks,
    )
    model = get_peft_model(base, cfg).eval()
    enc = model.prompt_encoder["default"]
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        enc.embedding.weight.copy_(torch.randn(enc.embedding.weight.shape, generator=g))
        enc.prefix_task_cols.copy_(
            torch.randn(enc.prefix_task_cols.shape, generator=g) * (1 + torch.arange(num_tasks)[:, None, None])
        )
        enc.prefix_task_rows.copy_(torch.randn(enc.prefix_task_rows.shape, generator=g) / 3)
    return model


def peft_inputs_embeds(model, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """PEFT's own ``inputs_embeds`` for ``model(**kwargs)`` (caught on the way into the base model)
    and the logits it returns."""
    got = {}

    def catch(module, args, kw):
        got["x"] = kw["inputs_embeds"].detach().clone()

    handle = model.base_model.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        with torch.no_grad():
            logits = model(**kwargs).logits
    finally:
        handle.remove()
    return got["x"], logits
