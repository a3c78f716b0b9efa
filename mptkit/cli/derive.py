"""``derive`` and ``export``."""

from __future__ import annotations

import click

from .app import (adapter_option, config_options, dtype_option, echo_repairs, emit_json, force_option, json_option, main,
                  output_options, say)


@main.command()
@click.argument("src")
@click.option("--mode", required=True, type=click.Choice(("average", "exact", "shared")), help=(
    "exact: task --task's factors; average: each factor's mean over tasks; shared: the shared prompt alone."))
@click.option("--task", help="exact: the task, a 0-based index or a name.")
@click.option("--num-tasks", type=int, help="shared: add this many fresh N(0, 0.02) factor pairs (needed for a folder).")
@click.option("--num-ranks", type=int, help="shared: rank of the fresh factors (default: the source's rank, else 1).")
@click.option("--seed", type=int, help="shared: seed for the fresh factors (default: drawn and recorded).")
@dtype_option("Cast the output (default: the source's dtype).")
@config_options
@adapter_option
@output_options
@json_option
def derive(src, mode, task, num_tasks, num_ranks, seed, dtype, config, adapter, output, force, as_json):
    """Derive a new task's starting point from SRC, as PEFT's own initialisation would.

    \b
      mptkit derive examples/bank --mode exact --task 2 -o task2.safetensors
      mptkit derive examples/bank --mode average -o avg/
      mptkit derive examples/bank --mode shared --num-tasks 3 --seed 0 -o fresh/
    """
    from ..derive import derive as run
    from ..formats import check_output
    from ..io import load, save
    from ..render import derive_report

    bank = load(src, adapter=adapter)
    check_output(bank.with_config(config), output, force=force)  # before the arithmetic
    out = run(bank, mode, task=task, num_tasks=num_tasks, num_ranks=num_ranks, seed=seed, dtype=dtype, config=config)
    path = save(out, output, force=force)  # out keeps the source: save protects it
    entry = out.provenance[-1]
    if as_json:
        emit_json({"output": str(path), "mode": mode, "arguments": entry["arguments"], "dtype": out.dtype,
                   "N": out.num_tokens, "d": out.token_dim, "num_tasks": out.num_tasks, "r": out.rank,
                   "task_names": out.task_names, "provenance": entry})
        return
    say(derive_report(out, path, src))
    echo_repairs(bank.with_config(config), path)


@main.command()
@click.argument("src")
@click.option("--task", required=True, help="The task to export, a 0-based index or a name.")
@dtype_option("Stored dtype (default float32, as PEFT computes).")
@config_options
@adapter_option
@force_option
@click.option("-o", "--output", required=True, type=click.Path(), help="Output: a PEFT adapter folder.")
@json_option
def export(src, task, dtype, config, adapter, output, force, as_json):
    """Write one task's full prompt (--task) as a plain PEFT PROMPT_TUNING adapter folder.

    \b
      mptkit export examples/bank --task 1 -o task1-prompt/
    """
    from ..bank import input_paths
    from ..export import export as run, save_adapter
    from ..io import load
    from ..render import export_report

    bank = load(src, adapter=adapter)
    _check_export_output(output, force, input_paths(bank))  # before the arithmetic
    result = run(bank, task, dtype=dtype, config=config)
    path = save_adapter(result, output, force=force, inputs=input_paths(bank))
    entry = result.provenance[-1]
    if as_json:
        emit_json({"output": str(path), "arguments": entry["arguments"], "dtype": result.prompt.dtype,
                   "N": result.prompt.shape[0], "d": result.prompt.shape[1], "config": result.config,
                   "provenance": entry})
        return
    say(export_report(result, path, src))


def _check_export_output(output, force, inputs) -> None:
    """export writes a PROMPT_TUNING adapter folder: any other output is refused before the work."""
    from pathlib import Path

    from ..formats import atomic, targets

    if targets.output_kind(output, files={}) == "folder":
        atomic.check_target(Path(output), folder=True, force=force, inputs=inputs)
