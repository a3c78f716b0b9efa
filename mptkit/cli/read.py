"""``validate`` and ``inspect``."""

from __future__ import annotations

import sys

import click

from .app import adapter_option, emit_json, fail, json_option, main, say


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--values", is_flag=True, help="Also read the data and report NaN/Inf per tensor and per task.")
@adapter_option
@json_option
def validate(paths, values, adapter, as_json):
    """Check that every PATH is a valid prompt bank; list every problem (exit 2 if any)."""
    from ..io import validate as run

    reports = [run(p, values=values, adapter=adapter) for p in paths]
    if as_json:
        emit_json(reports if len(reports) > 1 else reports[0])
    else:
        for r in reports:
            for line in r.get("warnings", []):
                say(f"mptkit: warning: {line}", err=True)
            if r["valid"]:
                say(f"{r['path']}: valid ({r['kind']})")
            else:
                fail(r["problems"], as_json=False)
    if not all(r["valid"] for r in reports):
        sys.exit(2)


@main.command()
@click.argument("path")
@click.option("--values", is_flag=True, help="Also read the data: per-task norms and non-finite counts.")
@adapter_option
@json_option
def inspect(path, values, adapter, as_json):
    """Describe a bank: shapes, tasks, parameter counts, metadata, provenance (header only).

    For hf://owner/repo[@rev][/path] only the safetensors header (range requests) and
    adapter_config.json are fetched; --values downloads the bank.
    """
    from ..info import summary, value_stats
    from ..io import load
    from ..render import summary_text

    if path.startswith("hf://") and not values and adapter is None:
        from ..hub import remote_summary

        info = remote_summary(path)
    else:
        bank = load(path, adapter=adapter)
        info = summary(bank)
        if values:
            info["values"] = value_stats(bank)
    if as_json:
        emit_json(info)
        return
    say(summary_text(info))
