"""Export tasks' full prompts: one task as a plain PEFT ``PROMPT_TUNING`` adapter, several as a
prompt table for serving engines or as a folder of such adapters (:class:`~mptkit.formats.PromptTable`;
the formats in :mod:`mptkit.formats` write them).

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

from . import _numerics as numerics
from ._bank import PromptBank, select_tasks
from ._dtypes import storage_dtype, torch_dtype
from ._finite import require_finite
from ._peftfields import PT
from ._tensor import Array
from .errors import UsageError
from .formats import PromptTable, PromptTuningAdapter, _peft as peft
from .formats._objects import bank_paths


def task_prompt(bank: PromptBank, task: int | str, *, device=None, dtype=None):
    """Task ``task``'s full prompt (N, d) as a torch tensor, computed in ``dtype`` (default float32,
    or float64 for a float64 bank) with PEFT's order of operations."""
    import torch

    k = select_tasks(bank, [task], allow_ranges=False)[0]
    if dtype is None:
        dtype = torch.float64 if bank.dtype == "F64" else torch.float32
    pe, cols, rows = (a.to_torch(device, dtype) for a in bank.task_rows([k]).values())
    return numerics.task_prompts(pe.unsqueeze(0), cols, rows)[0]  # pe (1, N, d): PEFT's embedding(indices)


def export(
    bank: PromptBank, task: int | str, *, dtype: str | None = None, config: dict | None = None, clamp: bool = False
) -> PromptTuningAdapter:
    """Task ``task`` (index or name) of ``bank`` as a PROMPT_TUNING adapter. ``dtype`` (one of
    :data:`mptkit._dtypes.USER_NAMES`) is the stored dtype (default float32); prompt values beyond
    its range are refused, or with ``clamp`` stored as its largest value. ``config`` sets
    adapter_config.json fields (task_type, num_virtual_tokens, ...) for a bank that carries none.
    A NaN/Inf among the values the prompt is computed from is refused (:mod:`mptkit._finite`)."""

    bank.require_tasks("to export")
    stored = storage_dtype(dtype, "F32")
    k = select_tasks(bank, [task], allow_ranges=False)[0]
    bank = bank.with_config(config)
    full = adapter_config(bank)
    require_finite(bank, "export", [k], prompts=True)
    with numerics.clamping(clamp):
        prompt = numerics.in_range(task_prompt(bank, k), stored, f"{bank.where}: the full prompt of task {k}")
    prompt = prompt.to(torch_dtype(stored))
    args = {"task": k}
    if bank.task_names:
        args["task_name"] = bank.task_names[k]
    if dtype:
        args["dtype"] = dtype
    if clamp:
        args["clamp"] = True
    entry = bank.provenance_entry("export", args, reads=list(bank.task_rows([k]).values()))
    return PromptTuningAdapter(
        Array.from_torch(prompt), full, [*bank.provenance, entry], dict(bank.extras), bank_paths(bank)
    )


def adapter_config(bank: PromptBank) -> dict:
    """The adapter_config.json of a PROMPT_TUNING adapter holding one of ``bank``'s tasks: the
    fields the bank's PEFT writes for PROMPT_TUNING (:func:`mptkit.formats._peft.complete_config`)."""
    return peft.complete_config(
        bank.config,
        num_tokens=bank.num_tokens,
        token_dim=bank.token_dim,
        num_tasks=bank.num_tasks,
        num_ranks=bank.rank,
        where=bank.where,
        peft_type=PT,
    )[0]


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
    tasks="all",
    *,
    half: str | None = None,
    dtype: str | None = None,
    config: dict | None = None,
    clamp: bool = False,
) -> PromptTable:
    """The tasks ``tasks`` (indices, ranges, names, or "all") of ``bank`` as a
    :class:`~mptkit.formats.PromptTable`: each task's prompt computed as PEFT's MPT module computes
    it (float32), the rows of ``half`` (seq2seq banks: "encoder" by default, "decoder", "both"),
    stored in ``dtype`` (default float32). Nothing is computed until it is written:
    ``mptkit.save(table, "table.npy")`` (+ ``table.tasks.json``), ``"table.safetensors"``, or a
    folder (one PROMPT_TUNING adapter per task, whole prompts, with ``config``'s fields). A NaN/Inf
    among the values is refused now; prompt values beyond ``dtype``'s range are refused as they are
    computed (nothing is written), or with ``clamp`` stored as its largest value."""
    import torch

    bank.require_tasks("to export")
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
    entry = bank.provenance_entry("export", args, reads=list(bank.task_rows(idx).values()))
    whole = which in (None, "both")
    info = {
        "shape": [len(idx), N, d],
        "dtype": stored,
        "half": which,
        "num_transformer_submodules": bank.num_submodules,
        "source": entry["sources"][0]["name"] if entry["sources"] else None,
        **({"config": peft.config_hints(bank.config)} if whole and bank.config else {}),
    }
    compute = torch.float64 if bank.dtype == "F64" else torch.float32
    tdtype = torch_dtype(stored)
    step = max(1, TABLE_CHUNK_BYTES // (4 * bank.num_tokens * d))

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

    with_config = bank.with_config(config)
    return PromptTable(
        names=names,
        shape=(len(idx), N, d),
        dtype=stored,
        info=info,
        provenance=[*bank.provenance, entry],
        chunks=chunks,
        adapter=lambda i: export(bank, idx[i], dtype=dtype, config=config, clamp=clamp),
        adapter_config=lambda: adapter_config(with_config),
        sources=bank_paths(bank),
        bank=bank,
        rows=rows,
        half_given=half is not None,
    )
