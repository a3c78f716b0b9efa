"""``build`` (a bank from a recipe), ``verify`` (rebuild from provenance and compare) and ``diff``."""

from __future__ import annotations

import click

from ._app import bank_json, emit_json, main, say
from ._opts import adapter_option, clamp_option, force_option, json_option, peft_version_option, quiet_option


@main.command()
@click.argument("recipe", metavar="RECIPE.yaml")
@click.option(
    "-o",
    "--output",
    help=(
        "Where the bank goes (instead of the recipe's output:): a .safetensors file, a folder, or "
        "hf://owner/repo to push it with a card carrying the recipe and its lock."
    ),
)
@force_option
@peft_version_option
@clamp_option
@click.option("--plan", "plan_only", is_flag=True, help="Print the steps and the bytes each reads; write nothing.")
@click.option("--lock", is_flag=True, help="Also write RECIPE.lock.yaml: the recipe with every source pinned.")
@quiet_option
@json_option
def build(recipe, output, force, peft_version, clamp, plan_only, lock, as_json):
    """Build a bank from a YAML recipe: banks (local or hf://, only the chosen tasks read), renamed,
    single-task prompts fitted onto the kept shared prompt, merged, re-ranked, cast.

    Everything a step could refuse is checked first (one sentence naming the recipe's line); the
    output's provenance records the recipe and every source as resolved (commit, sha256), which
    --lock writes beside the recipe, and from which `mptkit verify` rebuilds the bank.

    \b
      mptkit build recipe.yaml --plan
      mptkit build recipe.yaml -o merged/ --lock
      mptkit build recipe.lock.yaml -o again/        # the same bytes, or names the source that moved
    """
    import os

    from .._recipe import check_lock, plan, run, write_lock, write_output
    from .._recipefile import LOCK_HEADER, lock_path, read_recipe
    from .._render import size
    from ..errors import UsageError

    r = read_recipe(recipe)
    if peft_version:  # as the recipe's peft_version: (recorded in the provenance, so verify rebuilds it)
        r.data["peft_version"] = peft_version
    if clamp:  # as the recipe's clamp: true
        r.data["clamp"] = True
    locked = lock_path(recipe)
    if lock and os.path.exists(recipe) and _first_line(recipe) == LOCK_HEADER:
        raise UsageError(f"{recipe} is already a lock; --lock writes one from a recipe")
    p = plan(r, output=output, force=force)
    if plan_only:
        if as_json:
            emit_json({"recipe": recipe, "output": p.output, "steps": p.steps,
                       "reads": sum(s["reads"] for s in p.steps), "task_names": p.names or None})  # fmt: skip
            return
        say(f"plan for {recipe} (nothing computed or written; the sources' headers were read):")
        for i, s in enumerate(p.steps, 1):
            say(f"  {i}. {s['step']}" + (f": reads {size(s['reads'])}" if s["reads"] else ""))
        say(f"  in all: reads {size(sum(s['reads'] for s in p.steps))}")
        return
    if p.output is None:
        raise UsageError(f"{recipe}: no output: give -o OUT, or output: in the recipe")
    planned = check_lock(p, locked) if lock else None  # before the work
    bank = run(p)
    done = write_output(p, bank)
    pushed = done.get("pushed")
    where = f"{pushed['repo']}@{pushed['revision']} (commit {str(pushed['commit'])[:12]})" if pushed else p.output
    wrote_lock = str(write_lock(p, planned)) if planned else None
    entry = bank.provenance[-1]
    if as_json:
        emit_json(bank_json(bank, p.output, pushed=pushed, lock=wrote_lock))
        return
    names = ", ".join(bank.task_names or []) or "unnamed"
    say(f"built {where} from {recipe}: {bank.num_tasks} tasks ({names}), rank {bank.rank}, {bank.dtype}")
    for src in entry["sources"]:
        hub = src.get("hub")
        at = f" (commit {hub['commit'][:12]})" if hub else ""
        say(f"  source {src['source']}: {src['path']}{at}, sha256 {src['sha256'][:12]}")
    if p.peft_version:
        dropped = f"; dropped {', '.join(p.dropped)}" if p.dropped else ""
        say(f"  config as PEFT {p.peft_version} writes it{dropped}")
    if wrote_lock:
        say(f"  wrote {wrote_lock} (the recipe with every source pinned)")


def _first_line(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline(200).rstrip("\n")
    except OSError:
        return ""


@main.command()
@click.argument("bank")
@click.option(
    "--root",
    type=click.Path(file_okay=False),
    help="Read the sources' relative paths from this folder (default: the current folder).",
)
@json_option
def verify(bank, root, as_json):
    """Rebuild BANK from its recorded provenance and compare it byte for byte.

    The last step (build, derive, slice, remove, rename, merge, add, rank, convert, export, decompose
    or pull) is run again on its sources, read from where it recorded them and checked against their
    sha256. Exit 0: identical; 1: different (the tasks that differ, and by how much); 2: cannot
    rebuild (a source missing or changed, provenance that lacks what is needed).
    """
    from .._verify import describe, verify as run

    report = run(bank, root=root)
    if as_json:
        emit_json(report)
    else:
        for line in describe(report):
            say(line)
    return 0 if report["identical"] else 1


@main.command()
@click.argument("a")
@click.argument("b")
@adapter_option
@json_option
def diff(a, b, adapter, as_json):
    """Compare two banks: configs field by field, task names, shapes, dtypes, the shared prompt, and
    each task (matched by name, else by index): identical, same prompt, differs (relative error of
    the full prompt, max abs difference), renamed, only in A, only in B.

    Identical tasks are decided on bytes (no prompt computed). Exit 0: the same; 1: different;
    2: trouble (a bank cannot be read).
    """
    from .._diff import diff as run
    from .._io import load

    banks = [load(x, adapter=adapter) for x in (a, b)]
    report = run(*banks)
    report["a"], report["b"] = a, b
    if as_json:
        emit_json(report)
    else:
        for line in diff_text(report, banks):
            say(line)
    return 0 if report["same"] else 1


def diff_text(r: dict, banks) -> list[str]:
    """The diff as a table, for people."""
    from .._render import size

    def shape(bank):
        return f"{bank.num_tasks} tasks, N={bank.num_tokens}, d={bank.token_dim}, rank {bank.rank}, {bank.dtype}"

    lines = [f"A: {r['a']} ({shape(banks[0])})", f"B: {r['b']} ({shape(banks[1])})"]
    for c in r["config"]:
        lines.append(f"config {c['field']}: {_show(c['a'], c.get('only_in') == 'b')} | "
                     f"{_show(c['b'], c.get('only_in') == 'a')}")  # fmt: skip
    for t in r["tensors"]:
        lines.append(f"tensor {t['tensor']}: {_layout(t['a'])} | {_layout(t['b'])}")
    if r["task_names"] is not None:
        lines.append(f"task names: {_names(r['task_names']['a'])} | {_names(r['task_names']['b'])}")
    sh = r["shared"]
    lines.append("shared prompt: " + sh["status"] + _errors(sh))
    if r["tasks"]:
        width = max(4, *(len(str(t["task"])) for t in r["tasks"]))
        lines.append(f"{'task':<{width}}  {'A':>3}  {'B':>3}  {'status':<12}  {'relative error':>14}  max abs diff")
        for t in r["tasks"]:
            err = f"{t['relative_error']:>14.3g}" if t.get("relative_error") is not None else " " * 14
            mad = f"  {t['max_abs_diff']:.3g}" if t.get("max_abs_diff") is not None else ""
            status = t["status"] + (f" -> {t['renamed_to']}" if t.get("renamed_to") else "")
            a = "" if t["a"] is None else t["a"]
            b = "" if t["b"] is None else t["b"]
            lines.append(f"{t['task']:<{width}}  {a:>3}  {b:>3}  {status:<12}  {err}{mad}".rstrip())
    verdict = "same" if r["same"] else "different"
    lines.append(f"{verdict}: {size(r['bytes_compared'])} compared, {r['prompts_computed']} full prompts computed")
    return lines


def _show(value, missing: bool) -> str:
    return "(absent)" if missing else repr(value)


def _layout(x) -> str:
    return "(absent)" if x is None else f"{x['shape']} {x['dtype']}"


def _names(names) -> str:
    return "(unnamed)" if not names else ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")


def _errors(d: dict) -> str:
    if d.get("relative_error") is None:
        return ""
    return f" (relative error {d['relative_error']:.3g}, max abs difference {d['max_abs_diff']:.3g})"
