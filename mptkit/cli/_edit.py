"""The editing commands: ``rename``, ``slice``, ``remove``, ``merge``, ``add``, ``rank``, ``similarity``."""

from __future__ import annotations

import os

import click

from ._app import bank_json, echo_lines, echo_repairs, emit_json, for_peft, main, say
from ._opts import (
    adapter_option,
    clamp_option,
    config_options,
    dtype_option,
    force_option,
    json_option,
    output_options,
    quiet_option,
    tasks_option,
)

_REFIT_HELP = (
    "Re-express the tasks of banks whose shared prompt differs from the first's: a fit at the output "
    "rank, exact at a high enough rank (the report names it; at most min(N, d))."
)
_RANK_HELP = (
    "The output rank (default: the largest input rank); smaller ranks are zero-padded, which is exact. "
    "A higher rank can make a --refit exact."
)
_MISMATCH_HELP = (
    "Combine banks whose task_type, base model or num_transformer_submodules differ (refused by "
    "default); the output keeps the first bank's config and task head."
)


def _check_out(bank, output, force, sources, config):
    """The planned output, refused before any work if it cannot be written (existing, not a bank,
    an input, unwritable, a folder whose config is incomplete)."""
    from .._bank import input_paths
    from .._io import plan

    return plan(output, "bank", force=force, inputs=input_paths(*sources), like=bank.with_config(config))


def _edit_one(src, adapter, output, force, as_json, config, operation, peft_version=None) -> None:
    """The one-bank edits: read ``src`` (for PEFT ``peft_version``), refuse the output before the
    work, apply ``operation`` (bank -> bank), write and report."""
    from .._io import load

    bank, dropped = for_peft(load(src, adapter=adapter), peft_version)
    target = _check_out(bank, output, force, [bank], config)
    _save_edit(operation(bank), target, as_json, config, [src], (peft_version, dropped))


def _save_edit(bank, target, as_json, config, labels=(), peft=(None, ())) -> None:
    """Write an edited bank to the planned output ``target`` (with the --task-type/... ``config``
    fields, for a folder output from a bare file) and say what was written and what the operation
    found, naming the sources by ``labels`` (what the user typed)."""
    from .._render import edit_report

    bank = bank.with_config(config)
    output = target.path
    target.write(bank)
    if as_json:
        emit_json(bank_json(bank, output))
        return
    echo_lines(edit_report(bank, output, labels))
    echo_repairs(bank, target, *peft)


@main.command()
@click.argument("src")
@click.argument("pairs", nargs=-1, metavar="[OLD=NEW]...")
@click.option("--names", help="Name every task, in order: a,b,c.")
@config_options
@adapter_option
@output_options
@json_option
def rename(src, pairs, names, config, adapter, output, force, peft_version, as_json):
    """Rename tasks (OLD is an index or a name), or name them all with --names."""
    from .. import _edit as edit
    from ..errors import UsageError

    if bool(pairs) == bool(names):
        raise UsageError("give OLD=NEW pairs or --names a,b,c (one of the two)")
    bad = [p for p in pairs if "=" not in p]
    if bad:
        raise UsageError(f"{bad[0]!r} is not OLD=NEW (e.g. 0=sst2 or sst2=sst-2)")
    _edit_one(
        src,
        adapter,
        output,
        force,
        as_json,
        config,
        lambda bank: edit.set_names(bank, names) if names else edit.rename(bank, [p.split("=", 1) for p in pairs]),
        peft_version,
    )


@main.command("slice")
@click.argument("src")
@tasks_option("Kept in the order given.")
@config_options
@adapter_option
@output_options
@json_option
def slice_(src, tasks, config, adapter, output, force, peft_version, as_json):
    """Keep only the listed tasks (their bytes are copied unchanged)."""
    from .. import _edit as edit

    _edit_one(src, adapter, output, force, as_json, config, lambda bank: edit.slice_tasks(bank, tasks), peft_version)


@main.command()
@click.argument("src")
@tasks_option()
@config_options
@adapter_option
@output_options
@json_option
def remove(src, tasks, config, adapter, output, force, peft_version, as_json):
    """Drop the listed tasks (the others' bytes are copied unchanged)."""
    from .. import _edit as edit

    _edit_one(src, adapter, output, force, as_json, config, lambda bank: edit.remove_tasks(bank, tasks), peft_version)


@main.command()
@click.argument("banks", nargs=-1, required=True, metavar="A B [C ...]")
@dtype_option("Convert every bank to this dtype (needed when they differ).")
@click.option("--rename-duplicates", is_flag=True, help="Suffix clashing task names (-2, -3...) instead of failing.")
@click.option("--refit", is_flag=True, help=_REFIT_HELP)
@click.option("--max-error", type=float, help="With --refit: fail if a task's relative error exceeds this.")
@click.option(
    "--rank",
    "rank_",
    metavar="R|auto",
    help=_RANK_HELP + (" auto (with --refit --max-error E): each re-expressed task's smallest rank within E."),
)
@click.option("--allow-mismatch", is_flag=True, help=_MISMATCH_HELP)
@config_options
@adapter_option
@output_options
@quiet_option
@json_option
def merge(
    banks,
    dtype,
    clamp,
    rename_duplicates,
    refit,
    max_error,
    rank_,
    allow_mismatch,
    config,
    adapter,
    output,
    force,
    peft_version,
    as_json,
):
    """Concatenate the tasks of two or more banks (same N and d, task type, base model and
    submodules; smaller ranks are zero-padded to --rank, default the largest).

    A target trained with PEFT from a source bank also changes the shared prompt, so merging it back
    needs --refit; that is a fit at the output rank, and exact at a rank the message names (--rank).
    """
    from .. import _merge
    from .._io import load

    _merge.check_merge_options(len(banks), refit=refit, max_error=max_error, rank=rank_)  # before loading anything
    loaded, dropped = zip(*(for_peft(load(b, adapter=adapter), peft_version) for b in banks))
    loaded, dropped = list(loaded), sorted({k for d in dropped for k in d})
    target = _check_out(next((b for b in loaded if b.config), loaded[0]), output, force, loaded, config)
    out = _merge.merge(
        loaded,
        dtype=dtype,
        rename_duplicates=rename_duplicates,
        refit=refit,
        max_error=max_error,
        rank=rank_,
        allow_mismatch=allow_mismatch,
        clamp=clamp,
    )
    _save_edit(out, target, as_json, config, banks, (peft_version, dropped))


@main.command()
@click.argument("src")
@click.option("--name", help="The new task's name (needed when the bank names its tasks).")
@click.option("--init", help="average | exact:K | random: how to make the new task's factors.")
@click.option("--seed", type=int, help="With --init random: the random seed (recorded in the provenance).")
@click.option("--from", "from_", metavar="OTHER[:TASK]", help="Copy a task of another bank (same shared prompt).")
@click.option("--refit", is_flag=True, help="With --from: " + _REFIT_HELP[0].lower() + _REFIT_HELP[1:])
@click.option("--max-error", type=float, help="With --refit: fail if the relative error exceeds this.")
@click.option(
    "--rank",
    "rank_",
    metavar="R|auto",
    help=_RANK_HELP + (" auto (with --refit --max-error E): the new task's smallest rank within E."),
)
@click.option("--allow-mismatch", is_flag=True, help="With --from: " + _MISMATCH_HELP)
@clamp_option
@config_options
@adapter_option
@output_options
@quiet_option
@json_option
def add(
    src,
    name,
    init,
    seed,
    from_,
    refit,
    max_error,
    rank_,
    allow_mismatch,
    clamp,
    config,
    adapter,
    output,
    force,
    peft_version,
    as_json,
):
    """Append one task, initialised from the bank itself or taken from another bank (--from)."""
    from .. import _merge
    from .._io import load

    _merge.check_add_options(init=init, source=from_, seed=seed, refit=refit, max_error=max_error, rank=rank_)
    if allow_mismatch and not from_:
        from ..errors import UsageError

        raise UsageError("--allow-mismatch applies only with --from")
    bank, dropped = for_peft(load(src, adapter=adapter), peft_version)
    other, task, other_path = None, None, None
    if from_:
        other_path, task = split_task_ref(from_)
        other = load(other_path, adapter=adapter)
    sources = [b for b in (bank, other) if b is not None]
    target = _check_out(bank, output, force, sources, config)
    out = _merge.add_task(
        bank,
        name,
        init=init,
        seed=seed,
        source=other,
        source_task=task,
        refit=refit,
        max_error=max_error,
        rank=rank_,
        allow_mismatch=allow_mismatch,
        clamp=clamp,
    )
    labels = [src] + ([other_path] if other_path else [])
    _save_edit(out, target, as_json, config, labels, (peft_version, dropped))


def split_task_ref(ref: str):
    """``OTHER[:TASK]`` -> (OTHER, TASK or None); a path that exists, or hf://..., keeps its colons."""
    if os.path.exists(ref):
        return ref, None
    path, sep, task = ref.rpartition(":")
    if not sep or not task or "/" in task or os.sep in task or path in ("", "hf"):
        return ref, None
    return path, task


@main.command()
@click.argument("src")
@click.option(
    "--rank",
    "rank_",
    metavar="R|auto",
    required=True,
    help=("The new rank r, or auto: each task's smallest rank whose relative error is at most --max-error."),
)
@click.option("--max-error", type=float, help="The largest relative error a task may get (needed with --rank auto).")
@config_options
@adapter_option
@output_options
@quiet_option
@json_option
def rank(src, rank_, max_error, config, adapter, output, force, peft_version, as_json):
    """Change the factors' rank: larger zero-pads (exact); smaller fits each task (errors reported)."""
    from .. import _edit as edit
    from .._fit import check_rank

    check_rank(rank_, max_error)  # before loading anything
    change = lambda bank: edit.change_rank(bank, rank_, max_error=max_error)
    _edit_one(src, adapter, output, force, as_json, config, change, peft_version)


@main.command()
@click.argument("src")
@tasks_option("Default: all.", required=False)
@click.option(
    "--top",
    type=click.IntRange(min=1),
    help=("Show each task's K nearest tasks instead of the table (the default above 20 tasks, with K=3)."),
)
@click.option("--plot", type=click.Path(), help="Also draw a heatmap to this image (needs matplotlib).")
@adapter_option
@force_option
@quiet_option
@json_option
def similarity(src, tasks, top, plot, adapter, force, as_json):
    """Cosine similarity between the tasks' full prompts (which source task is nearest?).

    The whole T x T matrix is built only for the table (20 tasks or fewer), --json without --top, and
    --plot, and for at most 2,048 tasks; --top K lists each task's K nearest, in memory that grows
    with T x K.
    """
    from .._bank import input_paths, select_tasks
    from .._io import load, plan
    from .._render import similarity_table, similarity_top
    from .._similarity import heatmap, require_matplotlib, similarity as run

    bank = load(src, adapter=adapter)
    if plot:  # before the work: matplotlib, an existing image without --force, an unwritable folder
        require_matplotlib()
        target = plan(plot, "image", force=force, inputs=input_paths(bank))
    count = len(select_tasks(bank, tasks, unique=True)) if tasks is not None else bank.num_tasks
    table = not as_json and top is None and count <= 20
    result = run(bank, tasks, top=top, matrix=bool(plot) or table or (as_json and top is None))
    if plot:
        target.write(heatmap(result, title=f"task similarity: {src}"))
    if as_json:
        emit_json(result)
        return
    echo_lines(similarity_table(result) if table else similarity_top(result))
    if plot:
        say(f"wrote {plot}")
