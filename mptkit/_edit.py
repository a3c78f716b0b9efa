"""Editing prompt banks: names, slice, remove, merge, add, rank change.

Every function takes and returns :class:`~mptkit._bank.PromptBank` objects and never touches paths;
each result carries its sources' provenance plus one entry for the operation (operation, arguments,
the sources' sha256, mptkit version, and what the operation found: renamed duplicates, per-task
fit errors). Slice, remove and merge of banks with one dtype, rank and shared prompt only move bytes
(:meth:`Array.rows`, :meth:`Array.cat`) and never import torch; rank padding, dtype conversion,
refits, rank reduction and new factors import torch inside the function that needs it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from . import _fit as fit
from ._bank import PromptBank, select_tasks
from ._combine import (
    convert as convert_tensors,
    need_tasks as _need_tasks,
)
from ._finite import require_finite
from ._schema import check
from ._tensor import Array
from .errors import UsageError


# -- names ---------------------------------------------------------------------------------------
def check_names(names: Sequence[str], where: str = "task names") -> None:
    """Raise a :class:`UsageError` unless ``names`` obey ``metadata.schema.json#/$defs/task_names``."""
    dups = [n for n, c in Counter(names).items() if c > 1]
    if dups:
        raise UsageError(
            f"{where}: {', '.join(map(repr, dups))} given more than once; task names must all be different"
        )
    problems = check("metadata", list(names), pointer="/$defs/task_names")
    if problems:
        raise UsageError(f"{where}: {problems[0]}")


def default_names(count: int, start: int = 0) -> list[str]:
    """Names given to unnamed tasks when a bank must name them all: ``task0``, ``task1``..."""
    return [f"task{i}" for i in range(start, start + count)]


def set_names(bank: PromptBank, names: Sequence[str] | str) -> PromptBank:
    """Name every task (``["a", "b"]`` or ``"a,b"``), in task order."""
    names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    _need_tasks(bank)
    if len(names) != bank.num_tasks:
        raise UsageError(f"{len(names)} names given for {bank.num_tasks} tasks ({bank.where}); give one name per task")
    check_names(names)
    return _result(bank, bank.tensors, names, "rename", {"names": names}, [bank])


def rename(bank: PromptBank, mapping: dict | Sequence[tuple]) -> PromptBank:
    """Rename tasks: ``{old: new}`` or ``[(old, new), ...]``, old an index or a name. In a bank that
    names no tasks, the tasks not renamed are named ``task<index>`` (reported in the provenance)."""
    pairs = list(mapping.items()) if isinstance(mapping, dict) else [tuple(p) for p in mapping]
    if not pairs:
        raise UsageError("nothing to rename: give OLD=NEW pairs or --names a,b,c")
    _need_tasks(bank)
    names = list(bank.task_names) if bank.task_names else default_names(bank.num_tasks)
    seen: dict[int, str] = {}
    for old, new in pairs:
        k = bank.task_index(old)
        if k in seen:
            raise UsageError(f"task {k} ({bank.names()[k]}) is renamed twice ({seen[k]!r} and {new!r})")
        seen[k] = new
        names[k] = new
    check_names(names)
    results = {} if bank.task_names else {"named": {str(i): n for i, n in enumerate(names) if i not in seen}}
    args = {"renames": {bank.names()[k]: new for k, new in seen.items()}}
    return _result(bank, bank.tensors, names, "rename", args, [bank], results)


# -- slice, remove -------------------------------------------------------------------------------
def slice_tasks(bank: PromptBank, tasks) -> PromptBank:
    """Keep the selected tasks, in the order given (bytes are copied as they are)."""
    idx = select_tasks(bank, tasks, unique=True)
    names = [bank.task_names[i] for i in idx] if bank.task_names else None
    args = {"tasks": idx, **({"names": names} if names else {})}
    taken = bank.task_rows(idx)
    return _result(bank, taken, names, "slice", args, [bank], reads=taken.values())


def remove_tasks(bank: PromptBank, tasks) -> PromptBank:
    """Drop the selected tasks; the others keep their order and bytes."""
    drop = set(select_tasks(bank, tasks, unique=True))
    keep = [i for i in range(bank.num_tasks) if i not in drop]
    if not keep:
        raise UsageError(f"removing {_spec(tasks)} would leave no tasks in {bank.where} (it has {bank.num_tasks})")
    names = [bank.task_names[i] for i in keep] if bank.task_names else None
    args = {"tasks": sorted(drop), **({"names": [bank.task_names[i] for i in sorted(drop)]} if names else {})}
    return _result(bank, bank.task_rows(keep), names, "remove", args, [bank])


# -- rank ----------------------------------------------------------------------------------------
def change_rank(bank: PromptBank, rank: int | str, *, max_error: float | None = None) -> PromptBank:
    """Change every task's rank. A larger rank zero-pads (exact). A smaller one keeps a task's
    non-zero components when they are few enough (exact), and otherwise fits the rank-``rank``
    factors whose full prompt is nearest the original (:mod:`mptkit._fit`; exact when the factor
    product already has rank <= ``rank``). ``rank="auto"`` gives each task its smallest rank whose
    relative error is at most ``max_error`` (the output rank is the largest of those); with a
    number, ``max_error`` refuses a larger error. Per-task errors (and ranks) go into the provenance."""
    _need_tasks(bank)
    rank = fit.check_rank(rank, max_error, bank)
    args = {"rank": rank, "from_rank": bank.rank, **({"max_error": max_error} if max_error is not None else {})}
    names = bank.names()
    if rank != "auto" and rank >= bank.rank:
        tensors = convert_tensors(bank, bank.dtype, rank)
        results = {"relative_error": dict.fromkeys(names, 0.0)}
        return _result(bank, tensors, bank.task_names, "rank", args, [bank], results)
    require_finite(bank, "rank", prompts=True)
    cols, rows, ranks, errors = fit.reduce_rank(
        bank.tensors["prompt_embeddings"],
        bank.tensors["prefix_task_cols"],
        bank.tensors["prefix_task_rows"],
        rank,
        max_error=max_error,
    )
    results = {
        "relative_error": dict(zip(names, errors)),
        **({"rank": dict(zip(names, ranks))} if rank == "auto" else {}),
    }
    fit.check_errors([(bank.where, n, e) for n, e in zip(names, errors)], max_error, "rank")
    tensors = {
        "prompt_embeddings": bank.tensors["prompt_embeddings"],
        "prefix_task_cols": Array.from_torch(cols),
        "prefix_task_rows": Array.from_torch(rows),
    }
    return _result(bank, tensors, bank.task_names, "rank", args, [bank], results)


# -- helpers -------------------------------------------------------------------------------------
def _result(
    bank: PromptBank,
    tensors,
    names,
    operation: str,
    args: dict,
    sources,
    results: dict | None = None,
    provenance: list | None = None,
    reads=None,
) -> PromptBank:
    """A new bank (no source: it lives in memory) with one more provenance entry (``reads``: the
    source arrays read, when not all of them)."""
    entry = bank.provenance_entry(operation, args, sources, reads)
    if results:
        entry["results"] = results
    prov = list(bank.provenance if provenance is None else provenance) + [entry]
    return bank.with_tensors(dict(tensors), list(names) if names else None, provenance=prov, source=None)


def _spec(tasks) -> str:
    return repr(tasks) if isinstance(tasks, str) else repr(",".join(map(str, tasks)))
