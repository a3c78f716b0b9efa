"""The whole MPT transfer workflow with mptkit and PEFT, on a tiny T5 built from a config.

1. Source training: a multitask prompt bank for 4 source tasks (PEFT's MULTITASK_PROMPT_TUNING).
2. Derive a target task's starting point offline: `average` and `exact` (mptkit._derive).
3. Load it into PEFT two ways (adapter folder, or PEFT's prompt_tuning_init_state_dict_path) and
   check it equals PEFT's own online initialisation from the source.
4. Fine-tune the target prompt and run the model with task_ids.
5. Serve the source bank's prompts with mptkit.serve._runtime, and export one task as plain prompt tuning.

    python examples/transfer_workflow.py [WORKDIR]      # about 10 s on a laptop CPU

The CLI does steps 2 and 5 as well:
    mptkit derive WORKDIR/source --mode average -o WORKDIR/average
    mptkit derive WORKDIR/source --mode exact --task 2 -o WORKDIR/task2.safetensors
    mptkit export WORKDIR/source --task 2 -o WORKDIR/task2-prompt
"""

import os
import sys
import tempfile

import torch
from peft import MultitaskPromptTuningConfig, PeftModel, TaskType, get_peft_model
from transformers import T5Config, T5ForConditionalGeneration

import mptkit
from mptkit import derive
from mptkit.serve import TaskPrompts

V, TASKS, RANK = 6, 4, 2


def base_model():
    torch.manual_seed(0)  # the same "pretrained" weights every time
    return T5ForConditionalGeneration(
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
    ).eval()


def batch(task_ids):
    """Synthetic data: each task shifts its tokens by its id (so tasks differ)."""
    x = (torch.randint(2, 100, (len(task_ids), 10)) + task_ids[:, None] * 5).clamp(max=127)
    return x, x.flip(1)


def train(model, steps, task_sampler, lr=0.05):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        task_ids = task_sampler()
        x, y = batch(task_ids)
        loss = model(input_ids=x, labels=y, task_ids=task_ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def prompt_params(model):
    enc = model.prompt_encoder["default"]
    return [enc.embedding.weight, enc.prefix_task_cols, enc.prefix_task_rows]


def main(work: str) -> None:
    # 1. source training with PEFT -----------------------------------------------------------
    source = get_peft_model(
        base_model(),
        MultitaskPromptTuningConfig(
            task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=V, num_tasks=TASKS, num_ranks=RANK
        ),
    )
    loss = train(source, 12, lambda: torch.randint(0, TASKS, (8,)))
    source_dir = os.path.join(work, "source")
    source.save_pretrained(source_dir)
    print(f"1. source bank: {TASKS} tasks, rank {RANK}, saved by PEFT to {source_dir} (loss {loss:.3f})")

    # 2. derive offline ------------------------------------------------------------------------
    bank = mptkit.load(source_dir)
    source_file = os.path.join(source_dir, "adapter_model.safetensors")
    avg_file = os.path.join(work, "average.safetensors")
    mptkit.save(derive(bank, "average"), avg_file, force=True)  # a bare state dict
    exact_dir = os.path.join(work, "task2")
    mptkit.save(derive(bank, "exact", task=2), exact_dir, force=True)  # an adapter folder
    print(f"2. derived: {avg_file} (average of {TASKS} tasks), {exact_dir} (task 2)")

    # 3. load into PEFT, and compare with PEFT's own online initialisation ---------------------
    def mpt(**init):
        return MultitaskPromptTuningConfig(
            task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=V, num_tasks=1, num_ranks=RANK, **init
        )

    served = PeftModel.from_pretrained(base_model(), exact_dir)  # for inference: no source file needed
    online_exact = get_peft_model(
        base_model(),
        mpt(
            prompt_tuning_init="EXACT_SOURCE_TASK",
            prompt_tuning_init_state_dict_path=source_file,
            prompt_tuning_init_task=2,
        ),
    )
    same = all(torch.equal(a, b) for a, b in zip(prompt_params(served), prompt_params(online_exact)))
    # for training, PEFT starts from a state dict file (it loads prompt adapters only for inference)
    target = get_peft_model(
        base_model(), mpt(prompt_tuning_init="AVERAGE_SOURCE_TASKS", prompt_tuning_init_state_dict_path=avg_file)
    )
    online_avg = get_peft_model(
        base_model(), mpt(prompt_tuning_init="AVERAGE_SOURCE_TASKS", prompt_tuning_init_state_dict_path=source_file)
    )
    gap = max(
        (a.double() - b.double()).abs().max().item() for a, b in zip(prompt_params(target), prompt_params(online_avg))
    )
    print(
        f"3. PEFT loads them: exact task 2 is bit-identical to PEFT's online init: {same}; the average differs "
        f"from PEFT's float32 mean by at most {gap:.1e} (mptkit sums in float64, rounds once)"
    )
    assert same

    # 4. fine-tune the target task and run it with task_ids ------------------------------------
    loss = train(target, 8, lambda: torch.full((8,), 0))  # the target model has one task, id 0
    target.eval()
    x, _ = batch(torch.zeros(2, dtype=torch.long))
    with torch.no_grad():
        out = target.generate(input_ids=x, task_ids=torch.zeros(2, dtype=torch.long), max_new_tokens=5)
    trained_dir = os.path.join(work, "target")
    target.save_pretrained(trained_dir)  # its config still names avg_file as the init path...
    mptkit.save(mptkit.load(trained_dir), os.path.join(work, "target-clean"), force=True)  # ...this one does not
    print(f"4. target task fine-tuned (loss {loss:.3f}); generate with task_ids=[0, 0] -> {out.tolist()}")

    # 5. serve the source bank with mptkit's runtime module; export one task ------------------
    prompts = TaskPrompts.from_bank(source_dir).eval()
    task_ids = torch.tensor([3, 1, 1, 0])
    tokens = torch.arange(prompts.num_tokens).expand(len(task_ids), -1)
    with torch.no_grad():
        equal = torch.equal(prompts(task_ids), source.prompt_encoder["default"](tokens, task_ids))
    pt_dir = os.path.join(work, "task2-prompt")
    mptkit.save(mptkit.export(bank, 2), pt_dir, force=True)
    print(
        f"5. runtime prompts equal PEFT's for task_ids {task_ids.tolist()}: {equal}; "
        f"task 2 exported as a PROMPT_TUNING adapter to {pt_dir}"
    )
    assert equal


if __name__ == "__main__":
    if len(sys.argv) > 1:
        os.makedirs(sys.argv[1], exist_ok=True)
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(tmp)
