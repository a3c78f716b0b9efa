"""Derivations: a new task's starting point from a source bank, computed offline.

Each mode gives what PEFT's own online initialisation (``prompt_tuning_init`` with
``prompt_tuning_init_state_dict_path``) gives from the same source, as a file that loads without the
source:

- ``exact``: task K's factors (``cols[K:K+1]``, ``rows[K:K+1]``) with the shared prompt, as
  EXACT_SOURCE_TASK. Bytes are copied; torch is not imported (unless ``dtype`` casts).
- ``average``: the mean over tasks of each factor separately (the factors are averaged, not their
  products), as AVERAGE_SOURCE_TASKS. The sums are accumulated in float64 over bounded chunks of
  tasks (memory does not grow with T) and rounded once to the output dtype, so every element is at
  least as close to the exact mean as PEFT's mean (which rounds in the source dtype). The result
  names no task; its provenance says where it came from.
- ``shared``: the shared prompt alone, as ONLY_SOURCE_SHARED reads it. With ``num_tasks`` K it also
  gets K fresh factor pairs drawn as PEFT draws them (normal, mean 0, std 0.02), reproducible with
  ``seed`` (a seed is drawn and recorded in the provenance when none is given). An adapter folder
  needs task factors, so a folder output of this mode needs ``num_tasks``.
"""

from __future__ import annotations

import secrets

from .bank import PromptBank, select_tasks
from .errors import UsageError
from .tensor import CHUNK_BYTES, DTYPE_BY_NAME, Array, torch_dtype_name

MODES = ("average", "exact", "shared")
#: the --dtype choices
OUTPUT_DTYPES = ("float32", "bfloat16", "float16")
#: PEFT's MultitaskPromptEmbedding draws fresh factors from N(0, INIT_STD)
INIT_STD = 0.02
#: bytes of source data read at a time when averaging
AVERAGE_CHUNK_BYTES = 8 * CHUNK_BYTES


def derive(bank: PromptBank, mode: str, *, task: int | str | None = None, num_tasks: int | None = None,
           num_ranks: int | None = None, seed: int | None = None, dtype: str | None = None,
           config: dict | None = None) -> PromptBank:
    """A new bank from ``bank`` by ``mode`` ("average", "exact" or "shared"); see the module doc.

    ``task`` (exact only) is a 0-based index or a task name. ``num_tasks``/``num_ranks``/``seed``
    (shared only) add fresh factors. ``dtype`` ("float32", "bfloat16", "float16") casts the output;
    by default it keeps the source's dtype. ``config`` holds adapter_config.json fields to set on
    the output (task_type, num_virtual_tokens, ...), for sources that carry none.
    """
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if dtype is not None and dtype not in OUTPUT_DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; expected one of {', '.join(OUTPUT_DTYPES)}")
    if mode != "exact" and task is not None:
        raise UsageError(f"a task (--task) applies to mode exact only, not to mode {mode}")
    if mode != "shared":
        for name, value in (("--num-tasks", num_tasks), ("--num-ranks", num_ranks), ("--seed", seed)):
            if value is not None:
                raise UsageError(f"{name} applies to mode shared only (mode {mode} gives one task)")
    out_dtype = DTYPE_BY_NAME[dtype] if dtype else bank.dtype
    if mode == "exact":
        out = exact(bank, task, out_dtype)
    elif mode == "average":
        out = average(bank, out_dtype)
    else:
        out = shared(bank, out_dtype, num_tasks=num_tasks, num_ranks=num_ranks, seed=seed)
    if dtype is not None:
        out.provenance[-1]["arguments"]["dtype"] = dtype
    if config:
        out.config = {**(out.config or {}), **{k: v for k, v in config.items() if v is not None}}
    return out


def exact(bank: PromptBank, task: int | str | None, dtype: str | None = None) -> PromptBank:
    """Task ``task``'s factors and the shared prompt (a one-task bank); keeps the task's name."""
    if task is None:
        raise UsageError(
            f"mode exact needs a task (--task): an index 0 to {max(bank.num_tasks - 1, 0)}"
            + (" or a name" if bank.task_names else "")
        )
    k = select_tasks(bank, [task], allow_ranges=False)[0]
    dtype = dtype or bank.dtype
    tensors = {
        "prompt_embeddings": cast(bank.tensors["prompt_embeddings"], dtype),
        "prefix_task_cols": cast(bank.tensors["prefix_task_cols"].rows([k]), dtype),
        "prefix_task_rows": cast(bank.tensors["prefix_task_rows"].rows([k]), dtype),
    }
    args = {"mode": "exact", "task": k}
    if bank.task_names:
        args["task_name"] = bank.task_names[k]
    names = [bank.task_names[k]] if bank.task_names else None
    return _result(bank, tensors, names, args)


def average(bank: PromptBank, dtype: str | None = None) -> PromptBank:
    """The mean of each factor over all tasks (a one-task bank, unnamed)."""
    if bank.shared_only:
        raise UsageError(f"{bank.where} holds only the shared prompt: there are no task factors to average")
    dtype = dtype or bank.dtype
    tensors = {
        "prompt_embeddings": cast(bank.tensors["prompt_embeddings"], dtype),
        "prefix_task_cols": mean_over_tasks(bank.tensors["prefix_task_cols"], dtype),
        "prefix_task_rows": mean_over_tasks(bank.tensors["prefix_task_rows"], dtype),
    }
    return _result(bank, tensors, None, {"mode": "average", "num_source_tasks": bank.num_tasks})


def shared(bank: PromptBank, dtype: str | None = None, *, num_tasks: int | None = None,
           num_ranks: int | None = None, seed: int | None = None) -> PromptBank:
    """The shared prompt alone, or with ``num_tasks`` fresh N(0, 0.02) factor pairs of rank
    ``num_ranks`` (default: the source's rank, else 1, PEFT's default)."""
    dtype = dtype or bank.dtype
    tensors = {"prompt_embeddings": cast(bank.tensors["prompt_embeddings"], dtype)}
    args: dict = {"mode": "shared"}
    if num_tasks is None:
        if num_ranks is not None or seed is not None:
            raise UsageError("--num-ranks and --seed shape fresh task factors; give --num-tasks too")
    else:
        if num_tasks < 1:
            raise UsageError(f"--num-tasks must be at least 1, found {num_tasks}")
        r = num_ranks if num_ranks is not None else (bank.rank or 1)
        if r < 1:
            raise UsageError(f"--num-ranks must be at least 1, found {r}")
        if seed is None:
            seed = secrets.randbits(63)
        tensors["prefix_task_cols"], tensors["prefix_task_rows"] = fresh_factors(
            num_tasks, bank.num_tokens, r, bank.token_dim, seed, dtype)
        args.update(num_tasks=num_tasks, num_ranks=r, seed=seed)
    out = _result(bank, tensors, None, args)
    if out.config is not None and out.shared_only:
        for key in ("num_tasks", "num_ranks"):
            out.config.pop(key, None)
    return out


# -- arithmetic (torch imported here, and only here) ----------------------------------------------
def cast(arr: Array, dtype: str) -> Array:
    """``arr`` in ``dtype`` (the same handle when it already is)."""
    if arr.dtype == dtype:
        return arr
    import torch

    return Array.from_torch(arr.to_torch().to(getattr(torch, torch_dtype_name(dtype))))


def mean_over_tasks(arr: Array, dtype: str) -> Array:
    """The mean along dim 0, keeping it (``(1, ...)``), rounded once to ``dtype``.

    Tasks are read in chunks of at most :data:`AVERAGE_CHUNK_BYTES` into one reused buffer, and
    each task is added in place to a float64 accumulator of one task's size (the conversion
    happens inside the add, so the float64 working set is that accumulator alone, and it stays in
    cache); the sum is divided by T once."""
    import torch

    T, row = arr.shape[0], arr.row_nbytes
    step = max(1, min(T, AVERAGE_CHUNK_BYTES // max(row, 1)))
    src = getattr(torch, torch_dtype_name(arr.dtype))
    acc = torch.zeros(arr.shape[1:], dtype=torch.float64)
    buf = bytearray(step * row)
    for lo in range(0, T, step):
        hi = min(T, lo + step)
        n = arr.rows(range(lo, hi)).read_into(buf)
        chunk = torch.frombuffer(buf, dtype=torch.uint8, count=n).view(src).view(hi - lo, *arr.shape[1:])
        for t in range(hi - lo):
            acc.add_(chunk[t])
        del chunk
    mean = (acc / T).to(getattr(torch, torch_dtype_name(dtype)))
    return Array.from_torch(mean.unsqueeze(0))


def fresh_factors(num_tasks: int, num_tokens: int, rank: int, token_dim: int, seed: int, dtype: str):
    """(cols, rows) drawn as PEFT draws them: ``torch.normal(0, 0.02)``, cols then rows, in float32,
    from a generator seeded with ``seed``; then cast to ``dtype``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    cols = torch.normal(0.0, INIT_STD, size=(num_tasks, num_tokens, rank), generator=g)
    rows = torch.normal(0.0, INIT_STD, size=(num_tasks, rank, token_dim), generator=g)
    return cast(Array.from_torch(cols), dtype), cast(Array.from_torch(rows), dtype)


# -- helpers ------------------------------------------------------------------------------------
def _result(bank: PromptBank, tensors: dict, names, args: dict) -> PromptBank:
    entry = bank.provenance_entry("derive", args)
    return bank.with_tensors(tensors, names, provenance=[*bank.provenance, entry])
