"""Export tasks' full prompts: one task as a plain PEFT ``PROMPT_TUNING`` adapter, several as a
prompt table for serving engines (:mod:`mptkit._tables`) or as a folder of such adapters.

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
decoder half to the decoder input, which plain prompt tuning never does. A table of a seq2seq bank
holds the encoder half by default (what ``generate`` uses), or the decoder half, or both.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import _numerics as numerics
from ._bank import KEYS, PromptBank, select_tasks
from ._finite import require_finite
from ._options import storage_dtype
from ._schema import META_PROVENANCE
from ._tensor import Array
from .errors import UsageError
from .formats import _atomic as atomic, _peft as peft, _safetensors as st, _targets as targets

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


def export(
    bank: PromptBank, task: int | str, *, dtype: str | None = None, config: dict | None = None, clamp: bool = False
) -> PromptTuningAdapter:
    """Task ``task`` (index or name) of ``bank`` as a PROMPT_TUNING adapter. ``dtype`` (one of
    :data:`mptkit._options.DTYPES`) is the stored dtype (default float32); prompt values beyond its
    range are refused, or with ``clamp`` stored as its largest value. ``config`` sets
    adapter_config.json fields (task_type, num_virtual_tokens, ...) for a bank that carries none.
    A NaN/Inf among the values the prompt is computed from is refused (:mod:`mptkit._finite`)."""

    if bank.shared_only:
        raise UsageError(f"{bank.where} holds only the shared prompt: there is no task to export")
    stored = storage_dtype(dtype, "F32")
    k = select_tasks(bank, [task], allow_ranges=False)[0]
    bank = bank.with_config(config)
    full = peft.complete_config(
        bank.config,
        num_tokens=bank.num_tokens,
        token_dim=bank.token_dim,
        num_tasks=bank.num_tasks,
        num_ranks=bank.rank,
        where=bank.where,
    )
    for key in MPT_ONLY_FIELDS:
        full.pop(key, None)
    full["peft_type"] = "PROMPT_TUNING"
    full.setdefault("prompt_tuning_init_text", None)
    require_finite(bank, "export", [k], prompts=True)
    with numerics.clamping(clamp):
        prompt = numerics.in_range(task_prompt(bank, k), stored, f"{bank.where}: the full prompt of task {k}")
    prompt = prompt.to(numerics.torch_dtype(stored))
    args = {"task": k}
    if bank.task_names:
        args["task_name"] = bank.task_names[k]
    if dtype:
        args["dtype"] = dtype
    if clamp:
        args["clamp"] = True
    entry = bank.provenance_entry(
        "export", args, reads=[bank.tensors["prompt_embeddings"], *(bank.tensors[key].rows([k]) for key in KEYS[1:])]
    )
    return PromptTuningAdapter(Array.from_torch(prompt), full, [*bank.provenance, entry], dict(bank.extras))


def save_adapter(
    adapter: PromptTuningAdapter, path: str | os.PathLike, *, force: bool = False, inputs: tuple = ()
) -> Path:
    """Write ``adapter`` as a PEFT adapter folder at ``path``, atomically."""
    target = folder_target(path, force, inputs)
    with atomic.atomic_dir(target, replace=force) as tmp:
        _write_adapter(adapter, tmp)
    return target


def folder_target(path, force: bool, inputs=()) -> Path:
    """``path`` as an adapter-folder output, refused before any work if it cannot be one (a Hub
    reference, a file suffix, an existing output without ``force``, an input, ...)."""
    targets.output_kind(path, files={})
    target = Path(path)
    atomic.check_target(target, folder=True, force=force, inputs=[os.fspath(p) for p in inputs])
    return target


def _write_adapter(adapter: PromptTuningAdapter, folder: Path) -> None:
    meta = {"format": "pt"}
    if adapter.provenance:
        meta[META_PROVENANCE] = json.dumps(adapter.provenance, ensure_ascii=False, sort_keys=True)
    with open(folder / peft.SAFETENSORS_NAME, "xb") as f:
        st.write(f, {"prompt_embeddings": adapter.prompt, **adapter.extras}, meta)
    (folder / peft.CONFIG_NAME).write_text(peft.config_text(adapter.config), encoding="utf-8")


# -- several tasks: prompt tables and folders of adapters ----------------------------------------
HALVES = ("encoder", "decoder", "both")
#: float32 prompts computed at a time for a table
TABLE_CHUNK_BYTES = 64 << 20


def table_rows(bank: PromptBank, half: str | None) -> tuple[slice, str | None]:
    """The rows of each prompt a table holds, and the half they are (None: the whole prompt of a
    one-submodule bank, or of one whose split is unknown)."""
    v, s = bank.num_virtual_tokens, bank.num_submodules
    if half is not None and half not in HALVES:
        raise UsageError(f"--half must be one of {', '.join(HALVES)}, found {half!r}")
    if s != 2 or not v:
        if half not in (None, "both"):
            known = "has one transformer submodule" if s == 1 else "does not say how its N rows split (no config)"
            raise UsageError(f"--half {half}: {bank.where} {known}, so its prompts have no encoder and decoder halves")
        return slice(0, bank.num_tokens), None
    half = half or "encoder"
    return {"encoder": slice(0, v), "decoder": slice(v, 2 * v), "both": slice(0, 2 * v)}[half], half


def export_table(
    bank: PromptBank,
    tasks,
    path,
    *,
    half: str | None = None,
    dtype: str | None = None,
    force: bool = False,
    inputs=(),
    clamp: bool = False,
) -> dict:
    """Write the tasks ``tasks`` (indices, ranges, names, or "all") of ``bank`` as a prompt table at
    ``path`` (``.npy`` + sidecar, or ``.safetensors``): each task's prompt computed as PEFT's MPT
    module computes it (float32), the rows of ``half``, stored in ``dtype`` (default float32).
    Returns what was written (paths, shape, names, the provenance entry)."""
    import torch

    from ._tables import output_kind, write_table

    if bank.shared_only:
        raise UsageError(f"{bank.where} holds only the shared prompt: there are no tasks to export")
    idx = list(range(bank.num_tasks)) if tasks == "all" else select_tasks(bank, tasks, unique=True)
    stored = storage_dtype(dtype, "F32")
    rows, which = table_rows(bank, half)
    require_finite(bank, "export", idx, prompts=True)
    N, d = rows.stop - rows.start, bank.token_dim
    names = [bank.task_names[k] if bank.task_names else f"task{k}" for k in idx]
    args = {
        "tasks": idx,
        **({"names": names} if bank.task_names else {}),
        "half": which,
        **({"dtype": dtype} if dtype else {}),
        **({"clamp": True} if clamp else {}),
    }
    cols_a, rows_a = bank.tensors["prefix_task_cols"], bank.tensors["prefix_task_rows"]
    entry = bank.provenance_entry(
        "export", args, reads=[bank.tensors["prompt_embeddings"], cols_a.rows(idx), rows_a.rows(idx)]
    )
    provenance = [*bank.provenance, entry]
    whole = which in (None, "both")
    info = {
        "shape": [len(idx), N, d],
        "dtype": stored,
        "half": which,
        "num_transformer_submodules": bank.num_submodules,
        "source": entry["sources"][0]["name"] if entry["sources"] else None,
        **({"config": _prompt_config(bank)} if whole and bank.config else {}),
    }
    compute = torch.float64 if bank.dtype == "F64" else torch.float32
    tdtype = numerics.torch_dtype(stored)
    step = max(1, TABLE_CHUNK_BYTES // (4 * bank.num_tokens * d))
    if output_kind(path) == "folder":
        raise UsageError(f"{path}: a prompt table is a .npy or .safetensors file (a folder gets one adapter per task)")

    def chunks():
        from . import _progress as progress

        pe = bank.tensors["prompt_embeddings"].to_torch(dtype=compute)
        with progress.bar(len(idx), "export") as bar:
            for lo in range(0, len(idx), step):
                ks = idx[lo : lo + step]
                c, r = cols_a.rows(ks).to_torch(dtype=compute), rows_a.rows(ks).to_torch(dtype=compute)
                full = numerics.task_prompts(pe.unsqueeze(0), c, r)[:, rows]  # PEFT's order of operations
                with numerics.clamping(clamp):  # checked chunk by chunk: a refusal leaves nothing written
                    full = numerics.in_range(full, stored, f"{bank.where}: the full prompts of tasks {ks[0]}-{ks[-1]}")
                yield full.to(tdtype).contiguous().view(torch.uint8).numpy().tobytes()
                bar.update(len(ks))

    written = write_table(
        path,
        chunks(),
        shape=(len(idx), N, d),
        dtype=stored,
        info=info,
        names=names,
        provenance=provenance,
        force=force,
        inputs=inputs,
    )
    return {
        "written": [str(p) for p in written],
        "shape": [len(idx), N, d],
        "dtype": stored,
        "half": which,
        "tasks": names,
        "provenance": entry,
    }


def export_adapters(
    bank: PromptBank,
    tasks,
    path,
    *,
    dtype: str | None = None,
    config: dict | None = None,
    force: bool = False,
    inputs=(),
    clamp: bool = False,
) -> dict:
    """One PEFT PROMPT_TUNING adapter per task of ``tasks``, in subfolders of ``path`` named by
    task (``task<i>`` for an unnamed bank), with a ``tasks.json`` listing their order."""
    from ._tables import MANIFEST

    if bank.shared_only:
        raise UsageError(f"{bank.where} holds only the shared prompt: there are no tasks to export")
    idx = list(range(bank.num_tasks)) if tasks == "all" else select_tasks(bank, tasks, unique=True)
    names = [bank.task_names[k] if bank.task_names else f"task{k}" for k in idx]
    target = folder_target(path, force, inputs)
    adapters = [export(bank, k, dtype=dtype, config=config, clamp=clamp) for k in idx]  # every task checked first
    with atomic.atomic_dir(target, replace=force) as tmp:
        for name, adapter in zip(names, adapters):
            (tmp / name).mkdir()
            _write_adapter(adapter, tmp / name)
        (tmp / MANIFEST).write_text(json.dumps({"tasks": names}, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return {"written": [str(target)], "tasks": names, "provenance": adapters[0].provenance[-1] if adapters else None}


def _prompt_config(bank: PromptBank) -> dict:
    keep = (
        "task_type",
        "num_virtual_tokens",
        "num_transformer_submodules",
        "base_model_name_or_path",
        "num_layers",
        "num_attention_heads",
    )
    return {k: bank.config[k] for k in keep if bank.config.get(k) is not None}
