"""Multitask prompts for question answering and feature extraction, where PEFT cannot serve them.

PEFT's PeftModelForQuestionAnswering and PeftModelForFeatureExtraction never pass `task_ids` to
the prompt encoder, so a MULTITASK_PROMPT_TUNING adapter fails there ("task_ids cannot be None").
mptkit.serve._runtime serves the prompts itself: `TaskPrompts` computes each row's task prompt and
`prepend` puts it in front of any Hugging Face model's input embeddings (and extends the attention
mask and token type ids).

    python examples/runtime_question_answering.py      # a tiny BERT built from a config; seconds

Steps: make a bank for a 32-wide encoder with PEFT; show PEFT's QA wrapper failing; answer with
mptkit's prompts for a batch of mixed tasks; train the prompts for a few steps (the model stays
frozen) and save them as a bank; extract features with the same prompts.
"""

import os
import sys
import tempfile

import torch
from peft import MultitaskPromptTuningConfig, get_peft_model
from transformers import BertConfig, BertForQuestionAnswering, BertModel

import mptkit
from mptkit.serve._runtime import TaskPrompts, prepend

CONFIG = BertConfig(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
)


def qa_model():
    torch.manual_seed(0)
    return BertForQuestionAnswering(CONFIG).eval()


def main(work: str) -> None:
    # a bank for this 32-wide encoder, made and saved by PEFT (3 tasks, 8 virtual tokens, rank 1)
    def mpt(task_type):
        return MultitaskPromptTuningConfig(task_type=task_type, num_virtual_tokens=8, num_tasks=3, num_ranks=1)

    torch.manual_seed(0)
    bank_dir = os.path.join(work, "bank")
    get_peft_model(BertModel(CONFIG), mpt("FEATURE_EXTRACTION")).save_pretrained(bank_dir)

    input_ids = torch.randint(5, 100, (4, 12))
    attention_mask = torch.ones_like(input_ids)
    token_type_ids = torch.cat([torch.zeros(4, 5), torch.ones(4, 7)], dim=1).long()  # question | context

    peft_qa = get_peft_model(qa_model(), mpt("QUESTION_ANS"))
    try:
        peft_qa(input_ids=input_ids, attention_mask=attention_mask)
    except ValueError as e:
        print(f"PEFT's QA wrapper: {type(e).__name__}: {e}")

    # mptkit: the prompts in front of the plain model's input embeddings
    model = qa_model()
    prompts = TaskPrompts.from_bank(bank_dir).cache()  # cached: every task's prompt materialised
    task_ids = prompts.task_ids([0, 2, 2, 1])
    P = prompts.num_tokens
    with torch.no_grad():
        out = model(
            **prepend(
                model,
                prompts(task_ids),
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
            )
        )
    start, end = out.start_logits[:, P:], out.end_logits[:, P:]  # drop the prompt positions
    print(
        f"answer spans for task_ids {task_ids.tolist()}: {list(zip(start.argmax(1).tolist(), end.argmax(1).tolist()))}"
    )

    # train the prompts only (the model stays frozen), then save them as a bank
    prompts.uncache().requires_grad_(True)
    model.requires_grad_(False)
    opt = torch.optim.Adam(prompts.parameters(), lr=0.05)
    gold_start, gold_end = torch.tensor([6, 7, 8, 9]), torch.tensor([8, 9, 10, 11])
    for step in range(10):
        out = model(
            **prepend(
                model,
                prompts(task_ids),
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
            ),
            start_positions=gold_start + P,
            end_positions=gold_end + P,
        )
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        if step in (0, 9):
            print(f"step {step:2d}: loss {out.loss.item():.3f}")
    trained = os.path.join(work, "bank-trained")
    mptkit.save(prompts.to_bank(), trained, force=True)
    print(f"trained prompts saved to {trained} ({mptkit.load(trained).num_tasks} tasks)")

    # feature extraction: the same prompts in front of a plain encoder
    torch.manual_seed(0)
    encoder = BertModel(CONFIG).eval()
    served = TaskPrompts.from_bank(trained)
    with torch.no_grad():
        hidden = encoder(
            **prepend(encoder, served(task_ids), input_ids=input_ids, attention_mask=attention_mask)
        ).last_hidden_state[:, P:]
    print(f"features: {tuple(hidden.shape)} (batch, tokens, hidden), prompts excluded")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        os.makedirs(sys.argv[1], exist_ok=True)
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(tmp)
