"""``derive`` and ``export``."""

from __future__ import annotations

import click

from ._app import (
    adapter_option,
    config_options,
    dtype_option,
    echo_lines,
    echo_repairs,
    emit_json,
    force_option,
    json_option,
    main,
    output_options,
    quiet_option,
    say,
)


@main.command()
@click.argument("src")
@click.option(
    "--mode",
    required=True,
    type=click.Choice(("average", "exact", "shared")),
    help=("exact: task --task's factors; average: each factor's mean over tasks; shared: the shared prompt alone."),
)
@click.option("--task", help="exact: the task, a 0-based index or a name.")
@click.option(
    "--num-tasks", type=int, help="shared: add this many fresh N(0, 0.02) factor pairs (needed for a folder)."
)
@click.option("--num-ranks", type=int, help="shared: rank of the fresh factors (default: the source's rank, else 1).")
@click.option("--seed", type=int, help="shared: seed for the fresh factors (default: drawn and recorded).")
@dtype_option("Cast the output (default: the source's dtype).")
@config_options
@adapter_option
@output_options
@json_option
def derive(src, mode, task, num_tasks, num_ranks, seed, dtype, clamp, config, adapter, output, force, as_json):
    """Derive a new task's starting point from SRC, as PEFT's own initialisation would.

    \b
      mptkit derive examples/bank --mode exact --task 2 -o task2.safetensors
      mptkit derive examples/bank --mode average -o avg/
      mptkit derive examples/bank --mode shared --num-tasks 3 --seed 0 -o fresh/
    """
    from .._derive import derive as run
    from .._io import load, save
    from .._render import derive_report
    from ..formats import check_output

    bank = load(src, adapter=adapter)
    check_output(bank.with_config(config), output, force=force)  # before the arithmetic
    out = run(
        bank,
        mode,
        task=task,
        num_tasks=num_tasks,
        num_ranks=num_ranks,
        seed=seed,
        dtype=dtype,
        config=config,
        clamp=clamp,
    )
    path = save(out, output, force=force)  # out keeps the source: save protects it
    entry = out.provenance[-1]
    if as_json:
        emit_json(
            {
                "output": str(path),
                "mode": mode,
                "arguments": entry["arguments"],
                "dtype": out.dtype,
                "N": out.num_tokens,
                "d": out.token_dim,
                "num_tasks": out.num_tasks,
                "r": out.rank,
                "task_names": out.task_names,
                "provenance": entry,
            }
        )
        return
    say(derive_report(out, path, src))
    echo_repairs(bank.with_config(config), path)


@main.command()
@click.argument("src")
@click.option("--task", help="One task (index or name): a PEFT PROMPT_TUNING adapter folder.")
@click.option(
    "--tasks",
    help="Several tasks (0,3,5-7 or names): a prompt table (OUT.npy, OUT.safetensors) or a folder of adapters.",
)
@click.option("--all", "all_", is_flag=True, help="Every task (as --tasks).")
@click.option(
    "--half",
    type=click.Choice(("encoder", "decoder", "both")),
    help=("Tables of seq2seq banks: which half of each prompt (default encoder, what generate uses)."),
)
@dtype_option("Stored dtype (default float32, as PEFT computes; .npy tables: float32 or float16).")
@config_options
@adapter_option
@force_option
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(),
    help=("A folder (PEFT adapter, or one per task), OUT.npy (+ OUT.tasks.json) or OUT.safetensors (prompt_table)."),
)
@quiet_option
@json_option
def export(src, task, tasks, all_, half, dtype, clamp, config, adapter, output, force, as_json):
    """Write tasks' full prompts: one task as a plain PEFT PROMPT_TUNING adapter folder; several as a
    prompt table for serving engines, one row per task, or a folder of adapters.

    \b
      mptkit export examples/bank --task 1 -o task1-prompt/
      mptkit export examples/bank --all -o table.npy        # (tasks, N, d) float32 + table.tasks.json
      mptkit export examples/bank --tasks 0,2 -o table.safetensors
      mptkit export examples/bank --all -o prompts/          # prompts/<task>/ per task
    """
    from .._bank import input_paths
    from .._export import export as run, export_adapters, export_table, folder_target, save_adapter
    from .._io import load
    from .._render import export_report, table_report
    from .._tables import output_kind
    from ..errors import UsageError

    if sum(map(bool, (task is not None, tasks is not None, all_))) != 1:
        raise UsageError("give one of --task K (one adapter), --tasks SEL or --all (a table or a folder of adapters)")
    kind = "folder" if task is not None else output_kind(output)  # --task: an adapter folder (folder_target checks)
    if half and kind == "folder":
        raise UsageError(
            "--half applies to prompt tables (.npy, .safetensors); an adapter folder holds the whole prompt"
        )
    bank = load(src, adapter=adapter)
    if task is not None:  # one task: a PROMPT_TUNING adapter folder, as it always was (a table takes --tasks)
        folder_target(output, force, input_paths(bank))  # before the arithmetic
        result = run(bank, task, dtype=dtype, config=config, clamp=clamp)
        path = save_adapter(result, output, force=force, inputs=input_paths(bank))
        entry = result.provenance[-1]
        if as_json:
            emit_json(
                {
                    "output": str(path),
                    "arguments": entry["arguments"],
                    "dtype": result.prompt.dtype,
                    "N": result.prompt.shape[0],
                    "d": result.prompt.shape[1],
                    "config": result.config,
                    "provenance": entry,
                }
            )
            return
        say(export_report(result, path, src))
        return
    sel = "all" if all_ else tasks
    if kind == "folder":
        report = export_adapters(
            bank.with_config(config), sel, output, dtype=dtype, force=force, inputs=input_paths(bank), clamp=clamp
        )
    else:
        report = export_table(
            bank.with_config(config),
            sel,
            output,
            half=half,
            dtype=dtype,
            force=force,
            inputs=input_paths(bank),
            clamp=clamp,
        )
    if as_json:
        emit_json(report)
        return
    say(table_report(report, src))


@main.command()
@click.argument("prompts", nargs=-1, required=True, metavar="PROMPTS...")
@click.option(
    "--rank",
    "rank_",
    metavar="R|auto",
    required=True,
    help=("The factors' rank, or auto: each task's smallest rank whose relative error is at most --max-error."),
)
@click.option("--max-error", type=float, help="The largest relative error a task may get (needed with --rank auto).")
@click.option("--shared", metavar="BANK", help="Keep this bank's shared prompt; fit only the new tasks' factors.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the start's small perturbation.")
@dtype_option("Stored dtype (default float32).")
@config_options
@output_options
@quiet_option
@json_option
def decompose(prompts, rank_, max_error, shared, seed, dtype, clamp, config, output, force, as_json):
    """Turn single-task prompts into one MPT bank: a shared prompt and per-task factors.

    PROMPTS are PEFT PROMPT_TUNING adapter folders (task names from the folder names), folders of
    them, or prompt tables (.npy with its OUT.tasks.json sidecar or without, .safetensors with
    prompt_table). This is a parameter-space fit: the starting point for the MPT paper's
    distillation, not a replacement for it.

    \b
      mptkit decompose sst2/ mnli/ qqp/ --rank 1 -o bank/
      mptkit decompose table.npy --rank auto --max-error 0.05 -o bank.safetensors
      mptkit decompose new-task/ --shared bank/ --rank 2 -o more.safetensors
    """
    from .._bank import input_paths
    from .._decompose import check_output, decompose as run
    from .._fit import check_rank
    from .._io import load, save
    from .._render import edit_report
    from .._tables import read_prompts

    rank_ = check_rank(rank_, max_error)
    source = read_prompts(prompts)
    base = load(shared) if shared else None
    inputs = [*prompts, *(input_paths(base) if base else [])]
    check_output(source, output, rank_, shared=base, config=config, force=force, inputs=inputs)  # before the work
    bank = run(source, rank_, max_error=max_error, seed=seed, shared=base, dtype=dtype, config=config, clamp=clamp)
    save(bank, output, force=force, inputs=inputs)
    results = bank.provenance[-1]["results"]
    if as_json:
        emit_json(
            {
                "output": str(output),
                "num_tasks": bank.num_tasks,
                "task_names": bank.task_names,
                "rank": bank.rank,
                "dtype": bank.dtype,
                "N": bank.num_tokens,
                "d": bank.token_dim,
                **results,
            }
        )
        return
    echo_lines(edit_report(bank, output))
