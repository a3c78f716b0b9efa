"""Combining banks: ``merge`` (the tasks of several banks in one) and ``add`` (one more task, from
the bank itself or from another bank). What combining checks and computes lives in
:mod:`mptkit._combine`; both take and return :class:`~mptkit._bank.PromptBank` objects."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

from . import _fit as fit, _numerics as numerics
from ._bank import PromptBank
from ._combine import (
    check_compatible as _check_compatible,
    combine as _combine,
    convert as _convert,
    labeller as _labeller,
    need_tasks as _need_tasks,
    output_rank,
)
from ._edit import _result, check_names, default_names
from ._peftfields import common_dialect
from ._tensor import Array
from .errors import IncompatibleBanks, UsageError


def merge(
    banks: Sequence[PromptBank],
    *,
    dtype: str | None = None,
    rename_duplicates: bool = False,
    refit: bool = False,
    max_error: float | None = None,
    rank: int | str | None = None,
    allow_mismatch: bool = False,
    clamp: bool = False,
) -> PromptBank:
    """Concatenate the banks' tasks. They must share N and d (and the config's split of N into
    virtual tokens x submodules where known), and, where their configs say, task_type, base model
    and num_transformer_submodules (``allow_mismatch`` combines them anyway, keeping the first
    bank's config); different dtypes need ``dtype``; smaller ranks are zero-padded to ``rank``
    (default: the largest; a refit is exact once ``rank`` reaches :func:`exact_refit_rank`). The
    shared prompts must be equal bit for bit, unless ``refit``: then the first bank's shared prompt
    is kept and the other banks' tasks are re-expressed under it (:mod:`mptkit._fit`), each task's
    relative error reported; ``max_error`` refuses a larger one, and with ``rank="auto"`` each
    re-expressed task gets its smallest rank within ``max_error``. ``rank`` R
    sets the output rank (at least every bank's). Duplicate names are an error unless
    ``rename_duplicates`` (suffixes ``-2``, ...). Values beyond a narrower ``dtype``'s range are
    refused, or with ``clamp`` stored as its largest value."""
    banks = list(banks)
    check_merge_options(len(banks), refit=refit, max_error=max_error, rank=rank)
    rank = fit.check_rank(rank, max_error) if rank is not None else None
    out_dtype = _check_compatible(banks, dtype, allow_mismatch)
    names, renamed, named = _merged_names(banks, rename_duplicates)
    with numerics.clamping(clamp):
        parts, results = _combine(banks, out_dtype, refit, max_error, rank)
    if renamed:
        results["renamed"] = renamed
    if named:
        results["named"] = named
    results["from"] = [
        {"source": _labeller(banks)(b), "tasks": [sum(x.num_tasks for x in banks[:i]), b.num_tasks]}
        for i, b in enumerate(banks)
    ]
    args = {
        "dtype": out_dtype,
        "rename_duplicates": rename_duplicates,
        "refit": refit,
        **({"max_error": max_error} if max_error is not None else {}),
        **({"rank": rank} if rank is not None else {}),
        **({"allow_mismatch": True} if allow_mismatch else {}),
        **({"clamp": True} if clamp else {}),
    }
    # the fields every source's PEFT writes (a 0.10 bank merged with a 0.21 one loads in 0.10)
    first = replace(banks[0], config=common_dialect(b.config for b in banks))
    return _result(
        first, parts, names, "merge", args, banks, results, provenance=[e for b in banks for e in b.provenance]
    )


def check_merge_options(
    num_banks: int, *, refit: bool = False, max_error: float | None = None, rank: int | str | None = None
) -> None:
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
        raise IncompatibleBanks(
            f"task names clash: {listing}; rename them first (mptkit rename) or pass --rename-duplicates"
        )
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


def add_task(
    bank: PromptBank,
    name: str | None,
    *,
    init: str | None = None,
    seed: int | None = None,
    source: PromptBank | None = None,
    source_task: int | str | None = None,
    refit: bool = False,
    max_error: float | None = None,
    rank: int | str | None = None,
    allow_mismatch: bool = False,
    clamp: bool = False,
) -> PromptBank:
    """Append one task named ``name``. Its factors come from ``init``: ``"average"`` (the mean of
    the bank's cols and of its rows, as PEFT's AVERAGE_SOURCE_TASKS computes them), ``"exact:K"``
    (a copy of task K), ``"random"`` (PEFT's N(0, 0.02); ``seed`` makes it reproducible), or from
    ``source``'s task ``source_task`` under the same rules as :func:`merge` (shared prompt,
    ``refit``, ``rank``, config checks and ``allow_mismatch``; its dtype follows this bank's).
    In a bank that names no tasks ``name`` may be None (the bank stays unnamed); naming the new
    task there names the others ``task<index>``, reported in the provenance (``named``). ``clamp``:
    values of ``source`` beyond this bank's dtype's range are stored as its largest value (refused
    without it)."""
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
        if refit:  # named by its own index and name (the one-task copy below has neither)
            from ._finite import require_finite

            require_finite(source, "the refit", [k], prompts=True)
        single = replace(source, tensors=source.task_rows([k]), task_names=None)
        _check_compatible([bank, single], bank.dtype, allow_mismatch)
        with numerics.clamping(clamp):
            parts, found = _combine([bank, single], bank.dtype, refit, max_error, rank)
        results.update(found)
        origin = os.path.basename(os.path.normpath(source.source.path)) if source.source else "a bank in memory"
        args = {
            "name": name,
            "from": origin,
            "task": source.names()[k],
            "source_task": k,
            "refit": refit,
            **({"max_error": max_error} if max_error is not None else {}),
            **({"rank": rank} if rank is not None else {}),
            **({"clamp": True} if clamp else {}),
        }
        return _result(
            bank,
            parts,
            names,
            "add",
            args,
            [bank, source],
            results,
            reads=[*bank.tensors.values(), *single.tensors.values()],
        )
    output_rank([bank], rank, _labeller([bank]))
    kind, _, ref = init.partition(":")
    if kind == "exact" and ref:
        k = bank.task_index(ref)
        one = bank.task_rows([k])
        tensors = {
            "prompt_embeddings": one["prompt_embeddings"],
            "prefix_task_cols": Array.cat([bank.tensors["prefix_task_cols"], one["prefix_task_cols"]]),
            "prefix_task_rows": Array.cat([bank.tensors["prefix_task_rows"], one["prefix_task_rows"]]),
        }
        args = {"name": name, "init": f"exact:{k}", **({"rank": rank} if rank is not None else {})}
        return _result(bank, _padded(bank, tensors, rank), names, "add", args, [bank], results)
    if init not in ("average", "random"):
        raise UsageError(f"--init must be average, exact:K or random, found {init!r}")
    cols, rows = bank.tensors["prefix_task_cols"], bank.tensors["prefix_task_rows"]
    args = {"name": name, "init": init, **({"rank": rank} if rank is not None else {})}
    if init == "average":  # the same float64 mean as `derive --mode average`
        from ._finite import require_finite

        require_finite(bank, "add --init average")
        new_c = numerics.mean_over_tasks(cols, cols.dtype, f"{bank.where}: the mean of 'prefix_task_cols'")
        new_r = numerics.mean_over_tasks(rows, rows.dtype, f"{bank.where}: the mean of 'prefix_task_rows'")
    else:
        if seed is None:
            seed = numerics.draw_seed()
        args["seed"] = results["seed"] = seed
        new_c, new_r = numerics.fresh_factors(1, bank.num_tokens, bank.rank, bank.token_dim, seed, bank.dtype)
    tensors = {
        "prompt_embeddings": bank.tensors["prompt_embeddings"],
        "prefix_task_cols": Array.cat([cols, new_c]),
        "prefix_task_rows": Array.cat([rows, new_r]),
    }
    return _result(bank, _padded(bank, tensors, rank), names, "add", args, [bank], results)


def _padded(bank: PromptBank, tensors: dict[str, Array], rank: int | None) -> dict[str, Array]:
    """``tensors`` (of ``bank``'s rank) zero-padded to ``rank`` (exact)."""
    if rank is None or rank == bank.rank:
        return tensors
    return _convert(bank.with_tensors(tensors, None), bank.dtype, rank)


def check_add_options(
    *,
    init=None,
    source=None,
    seed=None,
    refit: bool = False,
    max_error: float | None = None,
    rank: int | str | None = None,
) -> None:
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
