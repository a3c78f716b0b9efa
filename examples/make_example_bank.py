"""Make examples/bank/: a small, real multitask prompt tuning bank saved by PEFT itself.

A tiny T5 (seq2seq, so the prompt has 2 transformer submodules) is built from a config (no weights
are downloaded), wrapped with PEFT's MULTITASK_PROMPT_TUNING for 4 source tasks at rank 2, and its
prompt parameters are trained for a few steps on random data with task ids so that every task's
factors differ from PEFT's random initialisation. The result is written with `save_pretrained`.

    python examples/make_example_bank.py            # writes examples/bank/
"""

import os
import shutil
import sys

import torch
from peft import MultitaskPromptTuningConfig, TaskType, get_peft_model
from transformers import T5Config, T5ForConditionalGeneration

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bank")


def main(out: str = OUT) -> None:
    torch.manual_seed(0)
    base = T5ForConditionalGeneration(
        T5Config(
            vocab_size=128,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    config = MultitaskPromptTuningConfig(
        task_type=TaskType.SEQ_2_SEQ_LM,
        num_virtual_tokens=6,
        num_tasks=4,
        num_ranks=2,
    )
    model = get_peft_model(base, config)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for _ in range(30):
        task_ids = torch.randint(0, 4, (8,))
        x = torch.randint(2, 128, (8, 10)) + task_ids[:, None]  # each task sees its own token shift
        x = x.clamp(max=127)
        loss = model(input_ids=x, labels=x.flip(1), task_ids=task_ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)
    os.remove(os.path.join(out, "README.md"))  # PEFT's empty model-card template
    print(f"wrote {out} (final loss {loss.item():.3f})")


if __name__ == "__main__":
    main(*sys.argv[1:])
