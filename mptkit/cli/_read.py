"""``validate`` and ``inspect``."""

from __future__ import annotations

import sys

import click

from ._app import emit_json, fail, main, say
from ._opts import adapter_option, json_option, limit_options


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--values", is_flag=True, help="Also read the data and report NaN/Inf per tensor and per task.")
@adapter_option
@json_option
def validate(paths, values, adapter, as_json):
    """Check that every PATH is a valid prompt bank; list every problem (exit 2 if any)."""
    from .._io import validate as run

    reports = [run(p, values=values, adapter=adapter) for p in paths]
    if as_json:
        emit_json(reports if len(reports) > 1 else reports[0])
    else:
        for r in reports:
            for line in r.get("warnings", []):
                say(f"mptkit: warning: {line}", err=True)
            if r.get("serving"):
                from .._info import serving_sentence

                say(f"mptkit: warning: {serving_sentence(r['serving'])}", err=True)
            if r["valid"]:
                say(f"{r['path']}: valid ({r['kind']})")
            else:
                fail(r["problems"], as_json=False)
    if not all(r["valid"] for r in reports):
        sys.exit(2)


@main.command()
@click.argument("path")
@click.option("--values", is_flag=True, help="Also read the data: per-task norms and non-finite counts.")
@click.option(
    "--tasks", help="With --values: only these tasks (0,3,5-7 or names); an hf:// bank then sends only their bytes."
)
@adapter_option
@limit_options
@json_option
def inspect(path, values, tasks, adapter, timeout, deadline, as_json):
    """Describe a bank: shapes, tasks, parameter counts, metadata, provenance (header only).

    For hf://owner/repo[@rev][/path] only the safetensors header (range requests) and
    adapter_config.json are fetched; --values reads the tensors (with --tasks, only those tasks').
    """
    from .._info import summary, value_stats
    from .._io import load
    from .._render import summary_text

    if tasks is not None and not values:
        raise click.UsageError("--tasks selects the tasks whose values --values reads; give --values too")
    if path.startswith("hf://"):
        from ..hub import open_bank, remote_summary
        from ..hub._http import limits

        if not values:
            info = remote_summary(path, adapter=adapter, timeout=timeout, deadline=deadline)
        else:
            bank = open_bank(path, adapter=adapter, limits=limits(timeout, deadline))
            info = summary(bank)
    else:
        bank = load(path, adapter=adapter)
        info = summary(bank)
    if values:
        info["values"] = _values(bank, tasks, value_stats)
    if as_json:
        emit_json(info)
        return
    say(summary_text(info))


def _values(bank, tasks, value_stats) -> dict:
    """value_stats of the whole bank, or of the tasks ``tasks`` alone (labelled with their own indices)."""
    if tasks is None:
        return value_stats(bank)
    from .._bank import select_tasks

    idx = select_tasks(bank, tasks, unique=True)
    t = bank.task_rows(idx)
    names = bank.names()
    sub = bank.with_tensors(t, [names[i] for i in idx] if bank.task_names else None)
    stats = value_stats(sub)
    for entry in stats["tasks"]:
        entry["task"] = idx[entry["task"]]
        entry["name"] = names[entry["task"]]
    return stats
