"""Export one task as a plain PEFT ``PROMPT_TUNING`` adapter.

Task K's full prompt ``prompt_embeddings * (prefix_task_cols[K] @ prefix_task_rows[K])`` is
computed as PEFT's ``MultitaskPromptEmbedding`` computes it (matmul of the task's factors, then the
elementwise product, in float32: PEFT's prompt encoder holds float32 parameters whatever the file's
dtype) and stored in float32 unless ``dtype`` says otherwise. The folder holds
``adapter_config.json`` (``peft_type: PROMPT_TUNING``, fields as PEFT writes them) and
``adapter_model.safetensors`` with the one key ``prompt_embeddings``, so anything that serves
ordinary prompt tuning serves the task.

Under PEFT, a causal LM gives the same logits with the exported adapter as with the bank and
``task_ids=[K]``. For seq2seq (two submodules) PEFT's PROMPT_TUNING puts only the encoder half of
the prompt in front of the input, as MPT's ``generate`` does; MPT's ``forward`` also prepends the
decoder half to the decoder input, which plain prompt tuning never does.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import numerics
from .bank import KEYS, PromptBank, select_tasks
from .errors import OutputError, UsageError
from .formats import atomic, peft
from .formats import safetensors as st
from .schema import META_PROVENANCE
from .options import storage_dtype
from .tensor import Array

#: adapter_config.json fields of MULTITASK_PROMPT_TUNING that PROMPT_TUNING does not have
MPT_ONLY_FIELDS = ("num_ranks", "num_tasks", "prompt_tuning_init_state_dict_path", "prompt_tuning_init_task")


@dataclass
class PromptTuningAdapter:
    """A PEFT PROMPT_TUNING adapter in memory: the (N, d) prompt and its adapter_config.json."""

    prompt: Array
    config: dict
    provenance: list[dict] = field(default_factory=list)
    #: a task head PEFT saved beside the bank (modules_to_save), written back unchanged
    extras: dict[str, Array] = field(default_factory=dict)


def task_prompt(bank: PromptBank, task: int | str, *, device=None, dtype=None):
    """Task ``task``'s full prompt (N, d) as a torch tensor, computed in ``dtype`` (default float32,
    or float64 for a float64 bank) with PEFT's order of operations."""
    import torch

    k = select_tasks(bank, [task], allow_ranges=False)[0]
    if dtype is None:
        dtype = torch.float64 if bank.dtype == "F64" else torch.float32
    pe = bank.tensors["prompt_embeddings"].to_torch(device, dtype)
    cols = bank.tensors["prefix_task_cols"].rows([k]).to_torch(device, dtype)
    rows = bank.tensors["prefix_task_rows"].rows([k]).to_torch(device, dtype)
    return numerics.task_prompts(pe.unsqueeze(0), cols, rows)[0]  # pe (1, N, d): PEFT's embedding(indices)


def export(bank: PromptBank, task: int | str, *, dtype: str | None = None, config: dict | None = None) -> PromptTuningAdapter:
    """Task ``task`` (index or name) of ``bank`` as a PROMPT_TUNING adapter. ``dtype`` (one of
    :data:`mptkit.options.DTYPES`) is the stored dtype (default float32). ``config`` sets adapter_config.json
    fields (task_type, num_virtual_tokens, ...) for a bank that carries none."""

    if bank.shared_only:
        raise UsageError(f"{bank.where} holds only the shared prompt: there is no task to export")
    stored = storage_dtype(dtype, "F32")
    k = select_tasks(bank, [task], allow_ranges=False)[0]
    bank = bank.with_config(config)
    full = peft.complete_config(bank.config, num_tokens=bank.num_tokens, token_dim=bank.token_dim,
                                num_tasks=bank.num_tasks, num_ranks=bank.rank, where=bank.where)
    for key in MPT_ONLY_FIELDS:
        full.pop(key, None)
    full["peft_type"] = "PROMPT_TUNING"
    full.setdefault("prompt_tuning_init_text", None)
    prompt = task_prompt(bank, k).to(numerics.torch_dtype(stored))
    args = {"task": k}
    if bank.task_names:
        args["task_name"] = bank.task_names[k]
    if dtype:
        args["dtype"] = dtype
    entry = bank.provenance_entry("export", args, reads=[bank.tensors["prompt_embeddings"],
                                                         *(bank.tensors[key].rows([k]) for key in KEYS[1:])])
    return PromptTuningAdapter(Array.from_torch(prompt), full, [*bank.provenance, entry], dict(bank.extras))


def save_adapter(adapter: PromptTuningAdapter, path: str | os.PathLike, *, force: bool = False,
                 inputs: tuple = ()) -> Path:
    """Write ``adapter`` as a PEFT adapter folder at ``path``, atomically."""
    target = Path(path)
    if os.fspath(path).startswith("hf://"):
        raise OutputError(f"{path}: outputs are local paths; use `mptkit push` to upload to the Hub")
    if os.fspath(path).lower().endswith(".safetensors"):
        raise OutputError(
            f"{target}: export writes a PEFT PROMPT_TUNING adapter folder; name a folder, not a .safetensors file"
        )
    atomic.check_target(target, folder=True, force=force, inputs=[os.fspath(p) for p in inputs])
    meta = {"format": "pt"}
    if adapter.provenance:
        meta[META_PROVENANCE] = json.dumps(adapter.provenance, ensure_ascii=False, sort_keys=True)
    with atomic.atomic_dir(target, replace=force) as tmp:
        with open(tmp / peft.SAFETENSORS_NAME, "xb") as f:
            st.write(f, {"prompt_embeddings": adapter.prompt, **adapter.extras}, meta)
        (tmp / peft.CONFIG_NAME).write_text(peft.config_text(adapter.config), encoding="utf-8")
    return target
