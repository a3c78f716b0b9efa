"""The ``mptkit`` command line: parse, call the Python API, print. No logic of its own.

Every user mistake is an :class:`~mptkit.errors.MptkitError`: one sentence on stderr, exit status 2,
no traceback (``--debug`` shows it). Commands that write take ``-o/--output`` and ``--force``.
"""

from __future__ import annotations

import json
import os
import sys

import click

from . import __version__
from .errors import MptkitError

_DEBUG_ENV = "MPTKIT_DEBUG"


class _Group(click.Group):
    """Turns mptkit errors into one line and exit 2; anything unexpected into one line and exit 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MptkitError as e:
            if _debug(ctx):
                raise
            for line in e.problems:
                click.echo(f"mptkit: error: {line}", err=True)
            ctx.exit(e.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, KeyboardInterrupt):
            raise
        except Exception as e:  # a bug, not the user's mistake: still no traceback by default
            if _debug(ctx):
                raise
            click.echo(
                f"mptkit: internal error: {type(e).__name__}: {e} (run with --debug for the traceback)", err=True
            )
            ctx.exit(1)

    def list_commands(self, ctx):
        return list(self.commands)  # in the order they are defined, which is the order of the README


def _debug(ctx) -> bool:
    return bool((ctx.obj or {}).get("debug")) or os.environ.get(_DEBUG_ENV) == "1"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="mptkit")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def main(ctx, debug):
    """Inspect, validate, derive, edit and share multitask prompt tuning (MPT) prompt banks.

    A bank is a .safetensors file, a PEFT adapter folder, a .bin/.pt pickle (weights only), or
    hf://owner/repo[@rev][/path]. Outputs ending in .safetensors are bare state dicts; any other
    output path is a PEFT adapter folder.
    """
    ctx.ensure_object(dict)["debug"] = debug


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(f)


def output_options(f):
    f = click.option("--force", is_flag=True, help="Replace an existing output.")(f)
    f = click.option("-o", "--output", required=True, type=click.Path(), help=(
        "Output: a path ending in .safetensors (bare state dict) or a folder (PEFT adapter)."))(f)
    return f


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


# -- validate ------------------------------------------------------------------------------------
@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--values", is_flag=True, help="Also read the data and report NaN/Inf per tensor and per task.")
@json_option
def validate(paths, values, as_json):
    """Check that every PATH is a valid prompt bank; list every problem (exit 2 if any)."""
    from .info import validate as run

    reports = [run(p, values=values) for p in paths]
    if as_json:
        emit_json(reports if len(reports) > 1 else reports[0])
    else:
        for r in reports:
            if r["valid"]:
                click.echo(f"{r['path']}: valid ({r['kind']})")
            else:
                for line in r["problems"]:
                    click.echo(f"mptkit: error: {line}", err=True)
    if not all(r["valid"] for r in reports):
        sys.exit(2)


# -- inspect -------------------------------------------------------------------------------------
@main.command()
@click.argument("path")
@click.option("--values", is_flag=True, help="Also read the data: per-task norms and non-finite counts.")
@json_option
def inspect(path, values, as_json):
    """Describe a bank: shapes, tasks, parameter counts, metadata, provenance (header only)."""
    from .info import summary, value_stats
    from .formats import load

    bank = load(path)
    info = summary(bank)
    if values:
        info["values"] = value_stats(bank)
    if as_json:
        emit_json(info)
        return
    click.echo(_render_summary(info))


def _render_summary(s: dict) -> str:
    p = s["parameters"]
    lines = [f"{s['path']}  ({s['format']}, {_size(s['file_size'])})"]
    row = lambda k, v: lines.append(f"  {k:<17}{v}")  # noqa: E731
    row("kind", s["kind"])
    row("dtype", s["dtype"])
    if s["num_virtual_tokens"]:
        sub = s["num_transformer_submodules"]
        tt = f", {s['task_type']}" if s["task_type"] else ""
        row("prompt length N", f"{s['N']} = {s['num_virtual_tokens']} virtual tokens x {sub} submodule(s){tt}")
    else:
        row("prompt length N", f"{s['N']} (virtual tokens x submodules unknown: no config)")
    row("hidden size d", s["d"])
    if s["kind"] != "shared-only":
        row("tasks T", s["num_tasks"])
        row("rank r", s["r"])
        names = s["task_names"]
        if names:
            shown = ", ".join(f"{i}:{n}" for i, n in enumerate(names[:12]))
            row("task names", shown + (f", ... ({len(names)} in all)" if len(names) > 12 else ""))
        else:
            row("task names", f"none (tasks are indices 0-{s['num_tasks'] - 1})")
        row("parameters", f"shared {p['shared']:,} + per task {p['per_task']:,} x {s['num_tasks']} = {p['total']:,}")
        sep = p["as_separate_prompts"]
        ratio = sep / p["total"]
        row("vs full prompts", f"{s['num_tasks']} separate prompts would hold {sep:,}: "
            f"{'saving' if p['saving'] >= 0 else 'costing'} {abs(p['saving']) * 100:.1f}% ({ratio:.2f}x)")
    else:
        row("parameters", f"{p['shared']:,} (shared prompt only)")
    if s["base_model"]:
        row("base model", s["base_model"])
    if s["metadata"]:
        row("metadata", ", ".join(f"{k}={v[:40]}" for k, v in s["metadata"].items()))
    for i, e in enumerate(s["provenance"]):
        args = " ".join(f"{k}={v}" for k, v in (e.get("arguments") or {}).items())
        srcs = ", ".join(f"{x.get('name', '?')} ({x['sha256'][:12]})" for x in e.get("sources", []))
        row("provenance" if i == 0 else "", f"{i + 1}. {e['operation']} {args}".rstrip()
            + (f" from {srcs}" if srcs else "") + (f" [mptkit {e['mptkit_version']}]" if e.get("mptkit_version") else ""))
    for n in s["notes"]:
        row("note", n)
    if "values" in s:
        v = s["values"]
        bad = ", ".join(f"{k} {n}" for k, n in v["nonfinite"].items())
        row("non-finite", bad)
        row("|shared|", f"{v['prompt_embeddings_norm']:.6g}")
        for t in v["tasks"]:
            nf = t["nonfinite_cols"] + t["nonfinite_rows"]
            label = f"{t['task']:>3} {t['name']:<16}" if s["task_names"] else f"{t['task']:>3}"
            row("per task" if t["task"] == 0 else "", f"{label} |prompt| {t['prompt_norm']:.6g}  "
                f"|cols| {t['cols_norm']:.6g}  |rows| {t['rows_norm']:.6g}" + (f"  NON-FINITE {nf}" if nf else ""))
    return "\n".join(lines)


# -- derive, export (issue 3) --------------------------------------------------------------------


# -- editing: rename, slice, remove, merge, add, rank, similarity (issue 4) ----------------------


# -- hub: pull, push (issue 5) -------------------------------------------------------------------


if __name__ == "__main__":  # pragma: no cover
    main()
