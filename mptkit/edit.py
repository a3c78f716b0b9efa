"""Editing prompt banks: names, slice, remove, merge, add, rank change.

Every function takes and returns :class:`~mptkit.bank.PromptBank` objects and never touches paths;
each result carries its sources' provenance plus one entry for the operation (operation, arguments,
the sources' sha256, mptkit version, and what the operation found: renamed duplicates, per-task
fit errors). Slice, remove and merge of banks with one dtype, rank and shared prompt only move bytes
(:meth:`Array.rows`, :meth:`Array.cat`) and never import torch; rank padding, dtype conversion,
refits, rank reduction and new factors import torch inside the function that needs it.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import replace
from typing import Sequence

from .bank import PromptBank, select_tasks
from .combine import (check_compatible as _check_compatible, exact_hint, exact_refit_rank,
                      labeller as _labeller, need_tasks as _need_tasks, output_rank)
from .errors import IncompatibleBanks, UsageError
from .schema import check
from . import fit, numerics
from .tensor import Array


# -- names ---------------------------------------------------------------------------------------
def check_names(names: Sequence[str], where: str = "task names") -> None:
    """Raise a :class:`UsageError` unless ``names`` obey ``metadata.schema.json#/$defs/task_names``."""
    dups = [n for n, c in Counter(names).items() if c > 1]
    if dups:
        raise UsageError(f"{where}: {', '.join(map(repr, dups))} given more than once; task names must all be different")
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
    taken = _take(bank, idx)
    return _result(bank, taken, names, "slice", args, [bank], reads=taken.values())


def remove_tasks(bank: PromptBank, tasks) -> PromptBank:
    """Drop the selected tasks; the others keep their order and bytes."""
    drop = set(select_tasks(bank, tasks, unique=True))
    keep = [i for i in range(bank.num_tasks) if i not in drop]
    if not keep:
        raise UsageError(f"removing {_spec(tasks)} would leave no tasks in {bank.where} (it has {bank.num_tasks})")
    names = [bank.task_names[i] for i in keep] if bank.task_names else None
    args = {"tasks": sorted(drop), **({"names": [bank.task_names[i] for i in sorted(drop)]} if names else {})}
    return _result(bank, _take(bank, keep), names, "remove", args, [bank])


# -- merge ---------------------------------------------------------------------------------------
def merge(banks: Sequence[PromptBank], *, dtype: str | None = None, rename_duplicates: bool = False,
          refit: bool = False, max_error: float | None = None, rank: int | str | None = None,
          allow_mismatch: bool = False) -> PromptBank:
    """Concatenate the banks' tasks. They must share N and d (and the config's split of N into
    virtual tokens x submodules where known), and, where their configs say, task_type, base model
    and num_transformer_submodules (``allow_mismatch`` combines them anyway, keeping the first
    bank's config); different dtypes need ``dtype``; smaller ranks are zero-padded to ``rank``
    (default: the largest; a refit is exact once ``rank`` reaches :func:`exact_refit_rank`). The shared prompts must be equal bit for bit, unless ``refit``: then
    the first bank's shared prompt is kept and the other banks' tasks are re-expressed under it
    (:mod:`mptkit.fit`), each task's relative error reported; ``max_error`` refuses a larger one, and
    with ``rank="auto"`` each re-expressed task gets its smallest rank within ``max_error``. ``rank`` R
    sets the output rank (at least every bank's). Duplicate names are an error unless
    ``rename_duplicates`` (suffixes ``-2``, ...)."""
    banks = list(banks)
    check_merge_options(len(banks), refit=refit, max_error=max_error, rank=rank)
    rank = fit.check_rank(rank, max_error) if rank is not None else None
    out_dtype = _check_compatible(banks, dtype, allow_mismatch)
    names, renamed, named = _merged_names(banks, rename_duplicates)
    parts, results = _combine(banks, out_dtype, refit, max_error, rank)
    if renamed:
        results["renamed"] = renamed
    if named:
        results["named"] = named
    results["from"] = [{"source": _labeller(banks)(b), "tasks": [sum(x.num_tasks for x in banks[:i]), b.num_tasks]}
                       for i, b in enumerate(banks)]
    args = {"dtype": out_dtype, "rename_duplicates": rename_duplicates, "refit": refit,
            **({"max_error": max_error} if max_error is not None else {}),
            **({"rank": rank} if rank is not None else {}), **({"allow_mismatch": True} if allow_mismatch else {})}
    first = replace(banks[0], config=next((b.config for b in banks if b.config), None))
    return _result(first, parts, names, "merge", args, banks, results,
                   provenance=[e for b in banks for e in b.provenance])


def check_merge_options(num_banks: int, *, refit: bool = False, max_error: float | None = None,
                        rank: int | str | None = None) -> None:
    """The rules :func:`merge`'s options obey, checkable before any bank is read."""
    if num_banks < 2:
        raise UsageError(f"merge needs at least two banks, found {num_banks}")
    if max_error is not None and not refit:
        raise UsageError("--max-error applies only with --refit")
    if rank is not None and fit.check_rank(rank, max_error) == "auto" and not refit:
        raise UsageError("--rank auto applies only with --refit (it picks the rank of each re-expressed task)")


def _merged_names(banks: Sequence[PromptBank], rename_duplicates: bool):
    """The merged bank's names (None when no bank names its tasks), {position: renamed duplicate},
    and {position: name given to a task of a bank that names none}."""
    if not any(b.task_names for b in banks):
        return None, {}, {}
    label = _labeller(banks)
    names, start, named = [], 0, {}
    for b in banks:
        if b.task_names:
            names += list(b.task_names)
        else:
            invented = default_names(b.num_tasks, start)
            named.update({str(start + k): n for k, n in enumerate(invented)})
            names += invented
        start += b.num_tasks
    counts = Counter(names)
    dups = [n for n, c in counts.items() if c > 1]
    if dups and not rename_duplicates:
        where = {n: [label(b) for b in banks if n in (b.task_names or [])] for n in dups[:3]}
        listing = "; ".join(f"{n!r} in {', '.join(w) if w else 'two banks'}" for n, w in where.items())
        raise IncompatibleBanks(f"task names clash: {listing}; rename them first (mptkit rename) or pass --rename-duplicates")
    renamed, taken = {}, set(names)
    seen: set[str] = set()
    for i, n in enumerate(names):
        if n in seen:
            j = 2
            while f"{n}-{j}" in taken:
                j += 1
            names[i] = f"{n}-{j}"
            taken.add(names[i])
            renamed[str(i)] = {"from": n, "to": names[i]}
        seen.add(names[i])
    check_names(names, "merged task names")
    for pos, r in renamed.items():
        if pos in named:
            named[pos] = r["to"]
    return names, renamed, named


def _combine(banks: Sequence[PromptBank], out_dtype: str, refit: bool, max_error: float | None,
             out_rank: int | str | None = None):
    """The merged tensors and the refit report. Bytes only when dtype, rank and shared prompt agree.
    ``out_rank``: the output rank (default the largest; "auto": each refit task's smallest rank
    within ``max_error``, the output rank then being the largest of all)."""
    auto, label = out_rank == "auto", _labeller(banks)
    rank = output_rank(banks, None if auto else out_rank, label)
    converted = [_convert(b, out_dtype, rank) for b in banks]
    pe0 = converted[0]["prompt_embeddings"]
    base = bytes(pe0.read())
    differing = [i for i in range(1, len(banks)) if bytes(converted[i]["prompt_embeddings"].read()) != base]
    results: dict = {}
    if differing and not refit:
        i = differing[0]
        raise IncompatibleBanks(
            f"the shared prompts differ: {label(banks[i])}'s prompt_embeddings is not {label(banks[0])}'s "
            f"({numerics.describe_difference(pe0, converted[i]['prompt_embeddings'])}); its tasks' prompts would change. "
            f"Pass --refit to re-express them under the first bank's shared prompt: "
            f"{exact_hint(exact_refit_rank(pe0, converted[i]['prompt_embeddings'], banks[i].rank), rank)}")
    top = rank  # the output rank; "auto" refits may need more than the inputs
    if differing:
        errors = {}
        for i in differing:
            cols, rows, ranks, errs = _refit(pe0, converted[i], ("auto" if auto else rank, max_error))
            converted[i] = {"prompt_embeddings": pe0, "prefix_task_cols": cols, "prefix_task_rows": rows}
            offset = sum(b.num_tasks for b in banks[:i])
            names = banks[i].names()
            for k, e in enumerate(errs):
                errors[str(offset + k)] = {"source": label(banks[i]), "task": names[k], "relative_error": e,
                                           **({"rank": ranks[k]} if auto else {})}
        results["refit"] = errors
        worst = max(errors.values(), key=lambda x: x["relative_error"])
        needs = [exact_refit_rank(pe0, banks[i].tensors["prompt_embeddings"], banks[i].rank) for i in differing]
        need = None if None in needs else max(needs)
        top = results["rank"] = max(c["prefix_task_cols"].shape[2] for c in converted)
        if need is not None and need > top and worst["relative_error"] > 0:
            results["exact_rank"] = need
        if max_error is not None and worst["relative_error"] > max_error:
            exact = (f"; an output rank of {need} (--rank {need}) makes this refit exact" if need and need > rank else "")
            raise IncompatibleBanks(
                f"refit error too large: task {worst['task']} of {worst['source']} is re-expressed with relative "
                f"error {worst['relative_error']:.3g}, above --max-error {max_error:g}{exact}; nothing was written")
    converted = [c if c["prefix_task_cols"].shape[2] == top else _pad(c, top) for c in converted]
    parts = {
        "prompt_embeddings": pe0,
        "prefix_task_cols": Array.cat([c["prefix_task_cols"] for c in converted]),
        "prefix_task_rows": Array.cat([c["prefix_task_rows"] for c in converted]),
    }
    return parts, results


def _pad(tensors: dict[str, Array], rank: int) -> dict[str, Array]:
    cols, rows = numerics.pad_rank(tensors["prefix_task_cols"].to_torch(), tensors["prefix_task_rows"].to_torch(), rank)
    return {**tensors, "prefix_task_cols": Array.from_torch(cols), "prefix_task_rows": Array.from_torch(rows)}


def _convert(bank: PromptBank, dtype: str, rank: int) -> dict[str, Array]:
    """The bank's tensors in ``dtype`` with factors zero-padded to ``rank`` (bytes when neither changes)."""
    t = dict(bank.tensors)
    if bank.dtype == dtype and bank.rank == rank:
        return t
    tdtype = numerics.torch_dtype(dtype)
    cols, rows = numerics.pad_rank(t["prefix_task_cols"].to_torch(dtype=tdtype), t["prefix_task_rows"].to_torch(dtype=tdtype), rank)
    return {"prompt_embeddings": numerics.cast(t["prompt_embeddings"], dtype), "prefix_task_cols": Array.from_torch(cols),
            "prefix_task_rows": Array.from_torch(rows)}


def _refit(pe_new: Array, tensors: dict[str, Array], rank):
    """Re-express every task of ``tensors`` under ``pe_new``: new factors, ranks, relative errors."""
    cols, rows, ranks, errors = fit.refit(pe_new, tensors["prompt_embeddings"], tensors["prefix_task_cols"],
                                          tensors["prefix_task_rows"], rank[0], max_error=rank[1])
    return Array.from_torch(cols), Array.from_torch(rows), ranks, errors


# -- rank ----------------------------------------------------------------------------------------
def change_rank(bank: PromptBank, rank: int | str, *, max_error: float | None = None) -> PromptBank:
    """Change every task's rank. A larger rank zero-pads (exact). A smaller one keeps a task's
    non-zero components when they are few enough (exact), and otherwise fits the rank-``rank``
    factors whose full prompt is nearest the original (:mod:`mptkit.fit`; exact when the factor
    product already has rank <= ``rank``). ``rank="auto"`` gives each task its smallest rank whose
    relative error is at most ``max_error`` (the output rank is the largest of those); with a
    number, ``max_error`` refuses a larger error. Per-task errors (and ranks) go into the provenance."""
    _need_tasks(bank)
    rank = fit.check_rank(rank, max_error, bank)
    args = {"rank": rank, "from_rank": bank.rank, **({"max_error": max_error} if max_error is not None else {})}
    names = bank.names()
    if rank != "auto" and rank >= bank.rank:
        tensors = _convert(bank, bank.dtype, rank)
        results = {"relative_error": {n: 0.0 for n in names}}
        return _result(bank, tensors, bank.task_names, "rank", args, [bank], results)
    cols, rows, ranks, errors = fit.reduce_rank(bank.tensors["prompt_embeddings"], bank.tensors["prefix_task_cols"],
                                                bank.tensors["prefix_task_rows"], rank, max_error=max_error)
    results = {"relative_error": dict(zip(names, errors)), **({"rank": dict(zip(names, ranks))} if rank == "auto" else {})}
    fit.check_errors([(bank.where, n, e) for n, e in zip(names, errors)], max_error, "rank")
    tensors = {"prompt_embeddings": bank.tensors["prompt_embeddings"],
               "prefix_task_cols": Array.from_torch(cols), "prefix_task_rows": Array.from_torch(rows)}
    return _result(bank, tensors, bank.task_names, "rank", args, [bank], results)


# -- add -----------------------------------------------------------------------------------------
def add_task(bank: PromptBank, name: str | None, *, init: str | None = None, seed: int | None = None,
             source: PromptBank | None = None, source_task: int | str | None = None,
             refit: bool = False, max_error: float | None = None, rank: int | str | None = None,
             allow_mismatch: bool = False) -> PromptBank:
    """Append one task named ``name``. Its factors come from ``init``: ``"average"`` (the mean of
    the bank's cols and of its rows, as PEFT's AVERAGE_SOURCE_TASKS computes them), ``"exact:K"``
    (a copy of task K), ``"random"`` (PEFT's N(0, 0.02); ``seed`` makes it reproducible), or from
    ``source``'s task ``source_task`` under the same rules as :func:`merge` (shared prompt,
    ``refit``, ``rank``, config checks and ``allow_mismatch``; its dtype follows this bank's).
    In a bank that names no tasks ``name`` may be None (the bank stays unnamed); naming the new
    task there names the others ``task<index>``, reported in the provenance (``named``)."""
    _need_tasks(bank)
    check_add_options(init=init, source=source, seed=seed, refit=refit, max_error=max_error, rank=rank)
    rank = fit.check_rank(rank, max_error) if rank is not None else None
    if name is None and bank.task_names:
        raise UsageError(f"{bank.where} names its tasks; give the new one a name (--name)")
    if name is None:
        names, results = None, {}
    else:
        names = list(bank.task_names) if bank.task_names else default_names(bank.num_tasks)
        if name in names:
            raise UsageError(f"task name {name!r} is already used by task {names.index(name)} of {bank.where}")
        names.append(name)
        check_names(names)
        results = {} if bank.task_names else {"named": {str(i): n for i, n in enumerate(names[:-1])}}
    if source is not None:
        if source_task is None:
            if source.num_tasks != 1:
                raise UsageError(f"{source.where} has {source.num_tasks} tasks; name one: --from {source.where}:TASK")
            source_task = 0
        k = source.task_index(source_task)
        single = replace(source, tensors=_take(source, [k]), task_names=None)
        _check_compatible([bank, single], bank.dtype, allow_mismatch)
        parts, found = _combine([bank, single], bank.dtype, refit, max_error, rank)
        results.update(found)
        origin = os.path.basename(os.path.normpath(source.source.path)) if source.source else "a bank in memory"
        args = {"name": name, "from": origin, "task": source.names()[k], "source_task": k, "refit": refit,
                **({"rank": rank} if rank is not None else {})}
        return _result(bank, parts, names, "add", args, [bank, source], results,
                       reads=[*bank.tensors.values(), *single.tensors.values()])
    output_rank([bank], rank, _labeller([bank]))
    kind, _, ref = init.partition(":")
    if kind == "exact" and ref:
        k = bank.task_index(ref)
        one = _take(bank, [k])
        tensors = {"prompt_embeddings": one["prompt_embeddings"],
                   "prefix_task_cols": Array.cat([bank.tensors["prefix_task_cols"], one["prefix_task_cols"]]),
                   "prefix_task_rows": Array.cat([bank.tensors["prefix_task_rows"], one["prefix_task_rows"]])}
        args = {"name": name, "init": f"exact:{k}", **({"rank": rank} if rank is not None else {})}
        return _result(bank, _padded(bank, tensors, rank), names, "add", args, [bank], results)
    if init not in ("average", "random"):
        raise UsageError(f"--init must be average, exact:K or random, found {init!r}")
    cols, rows = bank.tensors["prefix_task_cols"], bank.tensors["prefix_task_rows"]
    args = {"name": name, "init": init, **({"rank": rank} if rank is not None else {})}
    if init == "average":  # the same float64 mean as `derive --mode average`
        new_c, new_r = numerics.mean_over_tasks(cols, cols.dtype), numerics.mean_over_tasks(rows, rows.dtype)
    else:
        if seed is None:
            seed = numerics.draw_seed()
        args["seed"] = results["seed"] = seed
        new_c, new_r = numerics.fresh_factors(1, bank.num_tokens, bank.rank, bank.token_dim, seed, bank.dtype)
    tensors = {"prompt_embeddings": bank.tensors["prompt_embeddings"],
               "prefix_task_cols": Array.cat([cols, new_c]),
               "prefix_task_rows": Array.cat([rows, new_r])}
    return _result(bank, _padded(bank, tensors, rank), names, "add", args, [bank], results)


def _padded(bank: PromptBank, tensors: dict[str, Array], rank: int | None) -> dict[str, Array]:
    """``tensors`` (of ``bank``'s rank) zero-padded to ``rank`` (exact)."""
    if rank is None or rank == bank.rank:
        return tensors
    return _convert(bank.with_tensors(tensors, None), bank.dtype, rank)


def check_add_options(*, init=None, source=None, seed=None, refit: bool = False, max_error: float | None = None,
                      rank: int | str | None = None) -> None:
    """The rules :func:`add_task`'s options obey, checkable before any bank is read."""
    if (init is None) == (source is None):
        raise UsageError("give exactly one of --init (average, exact:K, random) and --from OTHER[:TASK]")
    if seed is not None and init != "random":
        raise UsageError("--seed applies only to --init random")
    if (refit or max_error is not None) and source is None:
        raise UsageError("--refit and --max-error apply only with --from")
    if max_error is not None and not refit:
        raise UsageError("--max-error applies only with --refit")
    if rank is not None and fit.check_rank(rank, max_error) == "auto" and (source is None or not refit):
        raise UsageError("--rank auto applies only with --from and --refit (the rank of the re-expressed task)")


# -- helpers -------------------------------------------------------------------------------------
def _take(bank: PromptBank, idx: list[int]) -> dict[str, Array]:
    return {"prompt_embeddings": bank.tensors["prompt_embeddings"],
            "prefix_task_cols": bank.tensors["prefix_task_cols"].rows(idx),
            "prefix_task_rows": bank.tensors["prefix_task_rows"].rows(idx)}


def _result(bank: PromptBank, tensors, names, operation: str, args: dict, sources, results: dict | None = None,
            provenance: list | None = None, reads=None) -> PromptBank:
    """A new bank (no source: it lives in memory) with one more provenance entry (``reads``: the
    source arrays read, when not all of them)."""
    entry = bank.provenance_entry(operation, args, sources, reads)
    if results:
        entry["results"] = results
    prov = list(bank.provenance if provenance is None else provenance) + [entry]
    return bank.with_tensors(dict(tensors), list(names) if names else None, provenance=prov, source=None)


def _spec(tasks) -> str:
    return repr(tasks) if isinstance(tasks, str) else repr(",".join(map(str, tasks)))
