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
    if debug:
        os.environ[_DEBUG_ENV] = "1"  # library code (hub transfers) keeps its logs too


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
    """Describe a bank: shapes, tasks, parameter counts, metadata, provenance (header only).

    For hf://owner/repo[@rev][/path] only the safetensors header (range requests) and
    adapter_config.json are fetched; --values downloads the bank.
    """
    from .info import summary, value_stats
    from .formats import load

    if path.startswith("hf://") and not values:
        from .hub import remote_summary

        info = remote_summary(path)
    else:
        bank = load(path)
        info = summary(bank)
        if values:
            info["values"] = value_stats(bank)
    if as_json:
        emit_json(info)
        return
    click.echo(_render_summary(info))


def _printable(text: str) -> str:
    """Text from a file, with control characters escaped (no terminal escape sequences, one line)."""
    return text if text.isprintable() else "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _render_summary(s: dict) -> str:
    p = s["parameters"]
    lines = [f"{s['path']}  ({s['format']}, {_size(s['file_size'])})"]
    row = lambda k, v: lines.append(f"  {k:<17}{_printable(str(v))}")  # noqa: E731
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
TASK_TYPES = ("SEQ_2_SEQ_LM", "CAUSAL_LM", "SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION")
OUTPUT_DTYPES = ("float32", "bfloat16", "float16")


def config_options(f):
    """adapter_config.json fields for outputs whose source carries no config."""
    f = click.option("--base-model", help="base_model_name_or_path for the adapter config.")(f)
    f = click.option("--num-transformer-submodules", type=click.IntRange(1, 2),
                     help="1 (causal LM) or 2 (seq2seq: encoder and decoder halves).")(f)
    f = click.option("--num-virtual-tokens", type=click.IntRange(1), help="Virtual tokens per submodule.")(f)
    f = click.option("--task-type", callback=_task_type, metavar="[" + "|".join(TASK_TYPES) + "]",
                     help="PEFT task type, needed for an adapter folder when the source has no config.")(f)
    return f


def _task_type(ctx, param, value):
    if value is None or value.upper() in TASK_TYPES:
        return value.upper() if value else None
    raise click.BadParameter(f"{value!r} is not one of {', '.join(TASK_TYPES)}")


def _config_fields(task_type, num_virtual_tokens, num_transformer_submodules, base_model) -> dict:
    fields = {"task_type": task_type, "num_virtual_tokens": num_virtual_tokens,
              "num_transformer_submodules": num_transformer_submodules, "base_model_name_or_path": base_model}
    return {k: v for k, v in fields.items() if v is not None}


def _check_output(bank, output, force, fields, src) -> None:
    """Refuse a bad output before any arithmetic: it exists (no --force), is the input, or is a
    folder whose config cannot be completed."""
    from pathlib import Path

    from .bank import input_paths
    from .formats import atomic, is_file_output, peft

    folder = not is_file_output(output)
    atomic.check_target(Path(output), folder=folder, force=force, inputs=input_paths(bank))
    if folder:
        peft.complete_config({**(bank.config or {}), **fields}, num_tokens=bank.num_tokens, token_dim=bank.token_dim,
                             num_tasks=1, num_ranks=1, where=bank.source.path if bank.source else src)


@main.command()
@click.argument("src")
@click.option("--mode", required=True, type=click.Choice(("average", "exact", "shared")), help=(
    "exact: task --task's factors; average: each factor's mean over tasks; shared: the shared prompt alone."))
@click.option("--task", help="exact: the task, a 0-based index or a name.")
@click.option("--num-tasks", type=int, help="shared: add this many fresh N(0, 0.02) factor pairs (needed for a folder).")
@click.option("--num-ranks", type=int, help="shared: rank of the fresh factors (default: the source's rank, else 1).")
@click.option("--seed", type=int, help="shared: seed for the fresh factors (default: drawn and recorded).")
@click.option("--dtype", type=click.Choice(OUTPUT_DTYPES), help="Cast the output (default: the source's dtype).")
@config_options
@output_options
@json_option
def derive(src, mode, task, num_tasks, num_ranks, seed, dtype, task_type, num_virtual_tokens,
           num_transformer_submodules, base_model, output, force, as_json):
    """Derive a new task's starting point from SRC, as PEFT's own initialisation would.

    \b
      mptkit derive examples/bank --mode exact --task 2 -o task2.safetensors
      mptkit derive examples/bank --mode average -o avg/
      mptkit derive examples/bank --mode shared --num-tasks 3 --seed 0 -o fresh/
    """
    from .derive import derive as run
    from .formats import load, save

    fields = _config_fields(task_type, num_virtual_tokens, num_transformer_submodules, base_model)
    bank = load(src)
    _check_output(bank, output, force, fields, src)
    out = run(bank, mode, task=task, num_tasks=num_tasks, num_ranks=num_ranks, seed=seed, dtype=dtype, config=fields)
    path = save(out, output, force=force)  # out keeps the source: save protects it
    entry = out.provenance[-1]
    if as_json:
        emit_json({"output": str(path), "mode": mode, "arguments": entry["arguments"], "dtype": out.dtype,
                   "N": out.num_tokens, "d": out.token_dim, "num_tasks": out.num_tasks, "r": out.rank,
                   "task_names": out.task_names, "provenance": entry})
        return
    args = entry["arguments"]
    what = {"exact": f"task {args.get('task')}" + (f" ({args['task_name']})" if "task_name" in args else ""),
            "average": f"the mean of {args.get('num_source_tasks')} tasks' factors",
            "shared": "the shared prompt" + (f" + {args['num_tasks']} fresh task(s) (seed {args['seed']})"
                                             if "num_tasks" in args else "")}[mode]
    shape = f"N={out.num_tokens}, d={out.token_dim}" + ("" if out.shared_only else f", T={out.num_tasks}, r={out.rank}")
    click.echo(f"wrote {path}: {what} of {src} ({shape}, {out.dtype})")


@main.command()
@click.argument("src")
@click.option("--task", required=True, help="The task to export, a 0-based index or a name.")
@click.option("--dtype", type=click.Choice(OUTPUT_DTYPES), help="Stored dtype (default float32, as PEFT computes).")
@config_options
@click.option("--force", is_flag=True, help="Replace an existing output.")
@click.option("-o", "--output", required=True, type=click.Path(), help="Output: a PEFT adapter folder.")
@json_option
def export(src, task, dtype, task_type, num_virtual_tokens, num_transformer_submodules, base_model, output, force,
           as_json):
    """Write one task's full prompt (--task) as a plain PEFT PROMPT_TUNING adapter folder.

    \b
      mptkit export examples/bank --task 1 -o task1-prompt/
    """
    from .bank import input_paths
    from .export import export as run, save_adapter
    from .formats import load

    fields = _config_fields(task_type, num_virtual_tokens, num_transformer_submodules, base_model)
    bank = load(src)
    adapter = run(bank, task, dtype=dtype, config=fields)
    path = save_adapter(adapter, output, force=force, inputs=input_paths(bank))
    entry = adapter.provenance[-1]
    cfg = adapter.config
    if as_json:
        emit_json({"output": str(path), "arguments": entry["arguments"], "dtype": adapter.prompt.dtype,
                   "N": adapter.prompt.shape[0], "d": adapter.prompt.shape[1], "config": cfg, "provenance": entry})
        return
    name = f" ({entry['arguments']['task_name']})" if "task_name" in entry["arguments"] else ""
    click.echo(f"wrote {path}: task {entry['arguments']['task']}{name} of {src} as a PROMPT_TUNING adapter "
               f"({cfg['num_virtual_tokens']} virtual tokens x {cfg['num_transformer_submodules']}, "
               f"d={adapter.prompt.shape[1]}, {adapter.prompt.dtype})")



# -- editing: rename, slice, remove, merge, add, rank, similarity (issue 4) ----------------------
def _save_edit(bank, output, force, sources, as_json, config) -> None:
    """Write an edited bank and say what was written and what the operation found. ``config``:
    the --task-type/--num-virtual-tokens/... options, for a folder output from a bare file."""
    from .bank import input_paths
    from .formats import save

    fields = _config_fields(**config)
    if fields:
        bank.config = {**(bank.config or {}), **fields}

    save(bank, output, force=force, inputs=input_paths(*sources))
    results = (bank.provenance[-1].get("results") or {}) if bank.provenance else {}
    if as_json:
        emit_json({"output": str(output), "num_tasks": bank.num_tasks, "task_names": bank.task_names,
                   "rank": bank.rank, "dtype": bank.dtype, **results})
        return
    names = bank.names()
    shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
    click.echo(f"wrote {output}: {bank.num_tasks} task(s) ({shown}), rank {bank.rank}, {bank.dtype}")
    if "seed" in results:
        click.echo(f"  random seed {results['seed']}")
    if results.get("named"):
        click.echo("  unnamed tasks were named " + ", ".join(f"{i}={n}" for i, n in results["named"].items()))
    for pos, r in (results.get("renamed") or {}).items():
        click.echo(f"  renamed duplicate: task {pos} {r['from']!r} -> {r['to']!r}")
    for pos, r in (results.get("refit") or {}).items():
        click.echo(f"  refit task {pos} ({r['task']} from {r['source']}): relative error {r['relative_error']:.3g}")
    errors = results.get("relative_error") or {}
    if any(errors.values()):
        for name, e in errors.items():
            click.echo(f"  task {name}: relative error {e:.3g}")


@main.command()
@click.argument("src")
@click.argument("pairs", nargs=-1, metavar="[OLD=NEW]...")
@click.option("--names", help="Name every task, in order: a,b,c.")
@config_options
@output_options
@json_option
def rename(src, pairs, names, output, force, as_json, **config):
    """Rename tasks (OLD is an index or a name), or name them all with --names."""
    from . import edit
    from .errors import UsageError
    from .formats import load

    if bool(pairs) == bool(names):
        raise UsageError("give OLD=NEW pairs or --names a,b,c (one of the two)")
    bad = [p for p in pairs if "=" not in p]
    if bad:
        raise UsageError(f"{bad[0]!r} is not OLD=NEW (e.g. 0=sst2 or sst2=sst-2)")
    bank = load(src)
    out = edit.set_names(bank, names) if names else edit.rename(bank, [p.split("=", 1) for p in pairs])
    _save_edit(out, output, force, [bank], as_json, config)


_TASKS_HELP = "Tasks: indices, ranges and names, e.g. 0,3,5-7 or sst2,mnli."


@main.command("slice")
@click.argument("src")
@click.option("--tasks", required=True, help=_TASKS_HELP + " Kept in the order given.")
@config_options
@output_options
@json_option
def slice_(src, tasks, output, force, as_json, **config):
    """Keep only the listed tasks (their bytes are copied unchanged)."""
    from . import edit
    from .formats import load

    bank = load(src)
    _save_edit(edit.slice_tasks(bank, tasks), output, force, [bank], as_json, config)


@main.command()
@click.argument("src")
@click.option("--tasks", required=True, help=_TASKS_HELP)
@config_options
@output_options
@json_option
def remove(src, tasks, output, force, as_json, **config):
    """Drop the listed tasks (the others' bytes are copied unchanged)."""
    from . import edit
    from .formats import load

    bank = load(src)
    _save_edit(edit.remove_tasks(bank, tasks), output, force, [bank], as_json, config)


_DTYPE_CHOICE = click.Choice(["float32", "bfloat16", "float16", "float64"])


@main.command()
@click.argument("banks", nargs=-1, required=True, metavar="A B [C ...]")
@click.option("--dtype", type=_DTYPE_CHOICE, help="Convert every bank to this dtype (needed when they differ).")
@click.option("--rename-duplicates", is_flag=True, help="Suffix clashing task names (-2, -3...) instead of failing.")
@click.option("--refit", is_flag=True, help="Re-express the tasks of banks whose shared prompt differs from the first's.")
@click.option("--max-error", type=float, help="With --refit: fail if a task's relative error exceeds this.")
@config_options
@output_options
@json_option
def merge(banks, dtype, rename_duplicates, refit, max_error, output, force, as_json, **config):
    """Concatenate the tasks of two or more banks (same N and d; ranks are zero-padded)."""
    from . import edit
    from .errors import UsageError
    from .formats import load

    if len(banks) < 2:
        raise UsageError("merge needs at least two banks")
    if max_error is not None and not refit:
        raise UsageError("--max-error applies only with --refit")
    loaded = [load(b) for b in banks]
    out = edit.merge(loaded, dtype=dtype, rename_duplicates=rename_duplicates, refit=refit, max_error=max_error)
    _save_edit(out, output, force, loaded, as_json, config)


@main.command()
@click.argument("src")
@click.option("--name", required=True, help="The new task's name.")
@click.option("--init", help="average | exact:K | random: how to make the new task's factors.")
@click.option("--seed", type=int, help="With --init random: the random seed (recorded in the provenance).")
@click.option("--from", "from_", metavar="OTHER[:TASK]", help="Copy a task of another bank (same shared prompt).")
@click.option("--refit", is_flag=True, help="With --from: re-express the task if the shared prompts differ.")
@click.option("--max-error", type=float, help="With --refit: fail if the relative error exceeds this.")
@config_options
@output_options
@json_option
def add(src, name, init, seed, from_, refit, max_error, output, force, as_json, **config):
    """Append one task, initialised from the bank itself or taken from another bank."""
    from . import edit
    from .errors import UsageError
    from .formats import load

    if (refit or max_error is not None) and not from_:
        raise UsageError("--refit and --max-error apply only with --from")
    if max_error is not None and not refit:
        raise UsageError("--max-error applies only with --refit")
    bank = load(src)
    other, task = None, None
    if from_:
        other_path, task = _split_task_ref(from_)
        other = load(other_path)
    out = edit.add_task(bank, name, init=init, seed=seed, source=other, source_task=task, refit=refit,
                        max_error=max_error)
    _save_edit(out, output, force, [b for b in (bank, other) if b is not None], as_json, config)


def _split_task_ref(ref: str):
    """``OTHER[:TASK]`` -> (OTHER, TASK or None); a path that exists, or hf://..., keeps its colons."""
    if os.path.exists(ref):
        return ref, None
    path, sep, task = ref.rpartition(":")
    if not sep or not task or "/" in task or os.sep in task or path in ("", "hf"):
        return ref, None
    return path, task


@main.command()
@click.argument("src")
@click.option("--rank", "rank_", type=click.IntRange(min=1), required=True, help="The new rank r.")
@config_options
@output_options
@json_option
def rank(src, rank_, output, force, as_json, **config):
    """Change the factors' rank: larger zero-pads (exact); smaller fits each task (errors reported)."""
    from . import edit
    from .formats import load

    bank = load(src)
    _save_edit(edit.change_rank(bank, rank_), output, force, [bank], as_json, config)


@main.command()
@click.argument("src")
@click.option("--tasks", help=_TASKS_HELP + " Default: all.")
@click.option("--plot", type=click.Path(), help="Also draw a heatmap to this image (needs matplotlib).")
@click.option("--force", is_flag=True, help="Replace an existing --plot image.")
@json_option
def similarity(src, tasks, plot, force, as_json):
    """Cosine similarity between the tasks' full prompts (which source task is nearest?)."""
    from .bank import input_paths
    from .formats import load
    from .similarity import plot_heatmap, similarity as run

    bank = load(src)
    result = run(bank, tasks)
    if plot:
        plot_heatmap(result, plot, force=force, title=f"task similarity: {src}", inputs=input_paths(bank))
    if as_json:
        emit_json(result)
        return
    names = [n if len(n) <= 10 else n[:9] + "~" for n in result["tasks"]]
    width = max(6, *(len(n) for n in names))
    click.echo(" " * width + "".join(f" {n:>{max(6, len(n))}}" for n in names) + "   nearest")
    for i, n in enumerate(names):
        cells = "".join(f" {'-' if v is None else format(v, '.3f'):>{max(6, len(names[j]))}}"
                        for j, v in enumerate(result["matrix"][i]))
        near = result["nearest"][i]
        click.echo(f"{n:<{width}}{cells}   " + (f"{near['task']} ({near['cosine']:.3f})" if near else "-"))
    if plot:
        click.echo(f"wrote {plot}")



# -- hub: pull, push (issue 5) -------------------------------------------------------------------
def hub_options(f):
    f = click.option("-q", "--quiet", is_flag=True,
                     help="No progress bars (they are off anyway without a terminal).")(f)
    f = click.option("--token", metavar="TOKEN", help="Hugging Face token (default: HF_TOKEN or the login cache).")(f)
    return f


@main.command()
@click.argument("repo", metavar="REPO[@REV]")
@click.option("-o", "--output", type=click.Path(), help="Copy the bank into this plain folder (default: keep it in the HF cache).")
@click.option("--force", is_flag=True, help="Replace an existing --output folder.")
@click.option("--revision", help="Branch, tag or commit (default: main).")
@hub_options
@json_option
def pull(repo, output, force, revision, token, quiet, as_json):
    """Download the bank in REPO (owner/repo or hf://owner/repo[@rev][/path]), validate it, and say where it is.

    Only the bank's files are fetched: adapter_config.json with adapter_model.safetensors (or .bin),
    or a single .safetensors file.

    \b
      mptkit pull owner/bank
      mptkit pull owner/bank@v1 -o bank/
    """
    from .hub import one_line, pull as run
    from .info import summary

    bank, got = run(repo, output, revision=revision, force=force, token=token, quiet=quiet)
    local = got.path if output is None else bank.source.path
    s = summary(bank)
    if as_json:
        emit_json({"ref": str(got.ref), "repo": got.ref.repo_id, "revision": got.ref.revision or "main",
                   "commit": got.commit, "path": local, "files": got.files, "from_cache_only": got.cached_only,
                   "summary": s})
        return
    how = " from the local cache (offline)" if got.cached_only else ""
    click.echo(f"pulled {got.ref} (commit {got.commit[:12]}){how} into {local}"
               + (" (the HF cache)" if output is None else ""))
    click.echo(f"  {one_line(s)}")


@main.command()
@click.argument("src")
@click.argument("repo", metavar="REPO")
@click.option("--private", is_flag=True, help="Create the repo as private (an existing repo keeps its visibility).")
@click.option("--revision", help="Branch to commit to (created from main if missing).")
@click.option("-m", "--message", help="Commit message.")
@click.option("--create-pr", is_flag=True, help="Open a pull request instead of committing to the branch.")
@config_options
@hub_options
@json_option
def push(src, repo, private, revision, message, create_pr, task_type, num_virtual_tokens, num_transformer_submodules,
         base_model, token, quiet, as_json):
    """Upload SRC to the model repo REPO (owner/repo) as a PEFT adapter folder with a model card.

    The bank is validated first. An adapter folder is uploaded byte for byte; a bare .safetensors file
    is written as an adapter folder first (its config must be known: --task-type, --num-virtual-tokens).

    \b
      mptkit push bank/ owner/my-bank
      mptkit push bank.safetensors owner/my-bank --task-type SEQ_2_SEQ_LM --num-virtual-tokens 10 --private
    """
    from .formats import load
    from .hub import push as run

    bank = load(src)
    fields = _config_fields(task_type, num_virtual_tokens, num_transformer_submodules, base_model)
    if fields:
        bank.config = {**(bank.config or {}), **fields}
    out = run(bank, repo, private=private, revision=revision, message=message, create_pr=create_pr, token=token,
              quiet=quiet)
    if as_json:
        emit_json(out)
        return
    if out["pr_url"]:
        click.echo(f"opened a pull request on {out['repo']}: {out['pr_url']}")
    elif out["changed"]:
        click.echo(f"pushed {src} to {out['repo']}@{out['revision']} (commit {out['commit'][:12]}): "
                   f"{', '.join(out['files'])}")
    else:
        click.echo(f"{out['repo']}@{out['revision']} already holds this bank and card (commit "
                   f"{str(out['commit'])[:12]}); nothing to push")



if __name__ == "__main__":  # pragma: no cover
    main()
