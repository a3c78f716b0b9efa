"""``derive`` and ``export``."""

from __future__ import annotations

import click

from ._app import bank_json, echo_lines, echo_repairs, emit_json, for_peft, main, say
from ._opts import (
    adapter_option,
    config_options,
    dtype_option,
    force_option,
    json_option,
    output_options,
    peft_version_option,
    quiet_option,
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
def derive(
    src, mode, task, num_tasks, num_ranks, seed, dtype, clamp, config, adapter, output, force, peft_version, as_json
):
    """Derive a new task's starting point from SRC, as PEFT's own initialisation would.

    \b
      mptkit derive examples/bank --mode exact --task 2 -o task2.safetensors
      mptkit derive examples/bank --mode average -o avg/
      mptkit derive examples/bank --mode shared --num-tasks 3 --seed 0 -o fresh/
    """
    from .._derive import derive as run
    from .._io import load, plan
    from .._render import derive_report

    bank, dropped = for_peft(load(src, adapter=adapter), peft_version)
    target = plan(output, "bank", force=force, like=bank.with_config(config))  # before the arithmetic
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
    path = target.write(out)  # out keeps the source: the plan protects it
    if as_json:
        emit_json(bank_json(out, path))
        return
    say(derive_report(out, path, src))
    echo_repairs(bank.with_config(config), target, peft_version, dropped)


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
@click.option(
    "--format",
    "fmt",
    metavar="NAME",
    help=(
        "Write the tasks in this registered format rather than by the output's suffix; tgis: a TGIS prefix "
        "store (PREFIX_STORE_PATH), a folder per task holding decoder.pt (causal) or encoder.pt/decoder.pt "
        "(seq2seq, by --half)."
    ),
)
@config_options
@adapter_option
@peft_version_option
@force_option
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(),
    help=(
        "A folder (PEFT adapter, one per task, or a TGIS store with --format tgis), OUT.npy (+ OUT.tasks.json) "
        "or OUT.safetensors (prompt_table)."
    ),
)
@quiet_option
@json_option
def export(src, task, tasks, all_, half, dtype, clamp, fmt, config, adapter, peft_version, output, force, as_json):
    """Write tasks' full prompts: one task as a plain PEFT PROMPT_TUNING adapter folder; several as a
    prompt table for serving engines, one row per task, or a folder of adapters.

    \b
      mptkit export examples/bank --task 1 -o task1-prompt/
      mptkit export examples/bank --all -o table.npy        # (tasks, N, d) float32 + table.tasks.json
      mptkit export examples/bank --tasks 0,2 -o table.safetensors
      mptkit export examples/bank --all -o prompts/          # prompts/<task>/ per task
      mptkit export examples/bank --all --format tgis -o prefixes/   # PREFIX_STORE_PATH for TGIS
    """
    from .._bank import input_paths
    from .._export import export as run, export_table
    from .._io import load, plan
    from .._render import export_report, table_report
    from ..errors import UsageError

    if sum(map(bool, (task is not None, tasks is not None, all_))) != 1:
        raise UsageError("give one of --task K (one adapter), --tasks SEL or --all (a table or a folder of adapters)")
    if task is not None and half and fmt is None:
        raise UsageError(
            "--half applies to prompt tables (.npy, .safetensors); an adapter folder holds the whole prompt"
        )
    bank, dropped = for_peft(load(src, adapter=adapter), peft_version)
    if task is not None and fmt is None:  # one task: a PROMPT_TUNING adapter folder (a table takes --tasks)
        target = plan(output, "adapter", force=force, inputs=input_paths(bank))  # before the arithmetic
        result = run(bank, task, dtype=dtype, config=config, clamp=clamp)
        path = target.write(result)
        entry = result.provenance[-1]
        if as_json:
            emit_json(
                {
                    "output": str(path),
                    "N": result.prompt.shape[0],
                    "d": result.prompt.shape[1],
                    "num_tasks": 1,
                    "dtype": result.prompt.dtype,
                    "task_names": [entry["arguments"]["task_name"]] if "task_name" in entry["arguments"] else None,
                    "operation": entry["operation"],
                    "arguments": entry["arguments"],
                    "config": result.config,
                    "provenance": entry,
                }
            )
            return
        say(export_report(result, path, src))
        echo_repairs(bank, target, peft_version, dropped)
        return
    sel = "all" if all_ else (tasks if tasks is not None else [task])  # --format with --task: a table of one
    table = export_table(  # computed when written
        bank.with_config(config), sel, half=half, dtype=dtype, config=config, clamp=clamp
    )
    target = plan(output, "prompts", format=fmt, force=force, like=table)  # before the arithmetic
    writes_config = target.format.name == "adapters"  # the one prompts format writing adapter_config.json
    if peft_version and not writes_config:
        what = (target.format.label or target.format.name).split(",")[0]
        raise UsageError(f"--peft-version applies to adapter folders; {what} has no adapter_config.json")
    warned = [] if target.format.warnings is None else target.format.warnings(table)
    for line in warned:
        if not as_json:
            say(f"mptkit: warning: {line}", err=True)
    target.write(table)
    report = _table_result(table, target)
    if warned:
        report["warnings"] = warned
    if as_json:
        emit_json(report)
        return
    say(table_report(report, src))
    if writes_config:
        echo_repairs(bank, target, peft_version, dropped)


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
def decompose(prompts, rank_, max_error, shared, seed, dtype, clamp, config, output, force, peft_version, as_json):
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
    from .._decompose import decompose as run, stand_in
    from .._fit import check_rank
    from .._io import load, plan
    from .._render import edit_report
    from ..formats import read_prompts

    rank_ = check_rank(rank_, max_error)
    source = read_prompts(prompts)
    base = load(shared) if shared else None
    inputs = [*prompts, *(input_paths(base) if base else [])]
    like, dropped = for_peft(stand_in(source, rank_, shared=base, config=config), peft_version)
    target = plan(output, "bank", force=force, inputs=inputs, like=like)  # before the work
    bank = run(source, rank_, max_error=max_error, seed=seed, shared=base, dtype=dtype, config=config, clamp=clamp)
    bank = bank.for_peft(peft_version)
    target.write(bank)
    if as_json:
        emit_json(bank_json(bank, output))
        return
    echo_lines(edit_report(bank, output))
    echo_repairs(bank, target, peft_version, dropped)


def _table_result(table, target) -> dict:
    """What ``export --tasks/--all`` reports: the files written, the table's shape and names (and,
    for a folder of adapters, the folders names could not be, and the first adapter's provenance)."""
    from ..formats._targets import safe_names

    T, N, d = table.shape
    entry = table.provenance[-1]
    out = {
        "output": str(target.path),
        "written": [str(p) for p in target.written],
        "format": target.format.name,
        "N": N,
        "d": d,
        "num_tasks": T,
        "dtype": table.dtype,
        "task_names": table.names,
        "half": table.info["half"],
        "operation": entry["operation"],
        "arguments": entry["arguments"],
    }
    if target.format.name == "tgis":
        from ..formats._tgis import files_of

        out["files"] = {f: [r.start, r.stop] for f, r in files_of(table).items()}
    if target.format.name == "adapters":
        renamed = {n: f for n, f in zip(table.names, safe_names(table.names)) if n != f}
        out["folders"] = renamed
        entry = table.adapter(0).provenance[-1] if table.names else None
    return {**out, "provenance": entry}
