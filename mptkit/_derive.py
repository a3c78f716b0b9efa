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

from ._bank import PromptBank, select_tasks
from ._dtypes import storage_dtype
from ._numerics import cast, clamping, draw_seed, fresh_factors, mean_over_tasks
from .errors import UsageError

MODES = ("average", "exact", "shared")


def derive(
    bank: PromptBank,
    mode: str,
    *,
    task: int | str | None = None,
    num_tasks: int | None = None,
    num_ranks: int | None = None,
    seed: int | None = None,
    dtype: str | None = None,
    config: dict | None = None,
    clamp: bool = False,
) -> PromptBank:
    """A new bank from ``bank`` by ``mode`` ("average", "exact" or "shared"); see the module doc.

    ``task`` (exact only) is a 0-based index or a task name. ``num_tasks``/``num_ranks``/``seed``
    (shared only) add fresh factors. ``dtype`` (one of :data:`mptkit._dtypes.USER_NAMES`) casts the output;
    by default it keeps the source's dtype. ``config`` holds adapter_config.json fields to set on
    the output (task_type, num_virtual_tokens, ...), for sources that carry none. Values beyond a
    narrower ``dtype``'s range are refused, or with ``clamp`` stored as its largest value.
    """
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if mode != "exact" and task is not None:
        raise UsageError(f"a task (--task) applies to mode exact only, not to mode {mode}")
    if mode != "shared":
        for name, value in (("--num-tasks", num_tasks), ("--num-ranks", num_ranks), ("--seed", seed)):
            if value is not None:
                raise UsageError(f"{name} applies to mode shared only (mode {mode} gives one task)")
    out_dtype = storage_dtype(dtype, bank.dtype)
    with clamping(clamp):
        if mode == "exact":
            out = exact(bank, task, out_dtype)
        elif mode == "average":
            out = average(bank, out_dtype)
        else:
            out = shared(bank, out_dtype, num_tasks=num_tasks, num_ranks=num_ranks, seed=seed)
    if dtype is not None:
        out.provenance[-1]["arguments"]["dtype"] = dtype
    if clamp and out_dtype != bank.dtype:
        out.provenance[-1]["arguments"]["clamp"] = True
    return out.with_config(config)


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
        "prompt_embeddings": cast(bank.tensors["prompt_embeddings"], dtype, _what(bank, "prompt_embeddings")),
        **{
            key: cast(a, dtype, _what(bank, key, k))
            for key, a in bank.task_rows([k]).items()
            if key != "prompt_embeddings"
        },
    }
    args = {"mode": "exact", "task": k}
    if bank.task_names:
        args["task_name"] = bank.task_names[k]
    names = [bank.task_names[k]] if bank.task_names else None
    reads = list(bank.task_rows([k]).values())
    return _result(bank, tensors, names, args, reads)


def average(bank: PromptBank, dtype: str | None = None) -> PromptBank:
    """The mean of each factor over all tasks (a one-task bank, unnamed)."""
    bank.require_tasks("whose factors to average")
    from ._finite import require_finite

    require_finite(bank, "the average")
    dtype = dtype or bank.dtype
    tensors = {
        "prompt_embeddings": cast(bank.tensors["prompt_embeddings"], dtype, _what(bank, "prompt_embeddings")),
        "prefix_task_cols": mean_over_tasks(
            bank.tensors["prefix_task_cols"], dtype, f"{bank.where}: the mean of 'prefix_task_cols'"
        ),
        "prefix_task_rows": mean_over_tasks(
            bank.tensors["prefix_task_rows"], dtype, f"{bank.where}: the mean of 'prefix_task_rows'"
        ),
    }
    return _result(bank, tensors, None, {"mode": "average", "num_source_tasks": bank.num_tasks})


def shared(
    bank: PromptBank,
    dtype: str | None = None,
    *,
    num_tasks: int | None = None,
    num_ranks: int | None = None,
    seed: int | None = None,
) -> PromptBank:
    """The shared prompt alone, or with ``num_tasks`` fresh N(0, 0.02) factor pairs of rank
    ``num_ranks`` (default: the source's rank, else 1, PEFT's default)."""
    dtype = dtype or bank.dtype
    tensors = {"prompt_embeddings": cast(bank.tensors["prompt_embeddings"], dtype, _what(bank, "prompt_embeddings"))}
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
        if r > min(bank.num_tokens, bank.token_dim):
            raise UsageError(
                f"--num-ranks {r} is more than {bank.where} can use: min(N, d) = min({bank.num_tokens}, "
                f"{bank.token_dim}) = {min(bank.num_tokens, bank.token_dim)} already makes any product exact"
            )
        if seed is None:
            seed = draw_seed()
        tensors["prefix_task_cols"], tensors["prefix_task_rows"] = fresh_factors(
            num_tasks, bank.num_tokens, r, bank.token_dim, seed, dtype
        )
        args.update(num_tasks=num_tasks, num_ranks=r, seed=seed)
    out = _result(bank, tensors, None, args, [bank.tensors["prompt_embeddings"]])
    if out.config is not None and out.shared_only:
        for key in ("num_tasks", "num_ranks"):
            out.config.pop(key, None)
    return out


# -- helpers ------------------------------------------------------------------------------------
def _what(bank: PromptBank, tensor: str, task: int | None = None) -> str:
    """How a cast's message names a tensor (and the task it belongs to)."""
    name = bank.task_names[task] if bank.task_names and task is not None else task
    return f"{bank.where}: tensor {tensor!r}" + ("" if task is None else f" of task {name}")


def _result(bank: PromptBank, tensors: dict, names, args: dict, reads=None) -> PromptBank:
    entry = bank.provenance_entry("derive", args, reads=reads)
    return bank.with_tensors(tensors, names, provenance=[*bank.provenance, entry])
