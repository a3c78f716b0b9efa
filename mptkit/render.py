"""Text for people: what ``inspect``, ``pull``, the editing commands and ``similarity`` print.
Every function takes the plain data the Python API returns (``mptkit.info.summary``'s dict, a
result bank, ``mptkit.similarity.similarity``'s dict) and returns lines; the CLI only prints them.
Text that came from a file or a server goes through :func:`printable`."""

from __future__ import annotations

from .text import clean as printable


def size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def summary_text(s: dict) -> str:
    p = s["parameters"]
    lines = [f"{s['path']}  ({s['format']}, {size(s['file_size'])})"]
    row = lambda k, v: lines.append(f"  {k:<17}{printable(str(v))}")  # noqa: E731
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
        srcs = ", ".join(f"{x.get('name', '?')} ({'read ranges ' if x.get('scheme') == 'ranges' else ''}{x['sha256'][:12]})"
                         for x in e.get("sources", []))
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


def one_line(s: dict) -> str:
    """A one-line summary from :func:`mptkit.info.summary`'s dict."""
    parts = [s["kind"]]
    if s["kind"] != "shared-only":
        names = s.get("task_names")
        shown = f" ({', '.join(names[:6])}{', ...' if len(names) > 6 else ''})" if names else ""
        parts.append(f"T={s['num_tasks']}{shown}")
    n = f"N={s['N']}"
    if s.get("num_virtual_tokens") and s.get("num_transformer_submodules"):
        n += f" ({s['num_virtual_tokens']}x{s['num_transformer_submodules']})"
    parts.append(n)
    parts.append(f"d={s['d']}")
    if s.get("r"):
        parts.append(f"r={s['r']}")
    parts.append(s["dtype"])
    parts.append(f"{s['parameters']['total']:,} parameters")
    if s.get("base_model"):
        parts.append(f"base {s['base_model']}")
    return ", ".join(parts)


def edit_report(bank, output) -> list[str]:
    """What an editing command says it wrote, and what the operation found (its provenance results)."""
    results = (bank.provenance[-1].get("results") or {}) if bank.provenance else {}
    names = bank.names()
    shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
    lines = [f"wrote {output}: {bank.num_tasks} task(s) ({shown}), rank {bank.rank}, {bank.dtype}"]
    if "seed" in results:
        lines.append(f"  random seed {results['seed']}")
    if results.get("named"):
        lines.append("  unnamed tasks were named " + ", ".join(f"{i}={n}" for i, n in results["named"].items()))
    for pos, r in (results.get("renamed") or {}).items():
        lines.append(f"  renamed duplicate: task {pos} {r['from']!r} -> {r['to']!r}")
    for pos, r in (results.get("refit") or {}).items():
        at = f"rank {r['rank']}, " if "rank" in r else ""
        lines.append(f"  refit task {pos} ({r['task']} from {r['source']}): {at}relative error {r['relative_error']:.3g}")
    errors, ranks = results.get("relative_error") or {}, results.get("rank") or {}
    if any(errors.values()) or ranks:
        for name, e in errors.items():
            at = f"rank {ranks[name]}, " if name in ranks else ""
            lines.append(f"  task {name}: {at}relative error {e:.3g}")
    return [printable(x) for x in lines]


def similarity_table(result: dict) -> list[str]:
    """The cosine matrix as a table, with each task's nearest other task."""
    names = [n if len(n) <= 10 else n[:9] + "~" for n in result["tasks"]]
    width = max(6, *(len(n) for n in names))
    lines = [" " * width + "".join(f" {n:>{max(6, len(n))}}" for n in names) + "   nearest"]
    for i, n in enumerate(names):
        cells = "".join(f" {'-' if v is None else format(v, '.3f'):>{max(6, len(names[j]))}}"
                        for j, v in enumerate(result["matrix"][i]))
        near = result["nearest"][i]
        lines.append(f"{n:<{width}}{cells}   " + (f"{near['task']} ({near['cosine']:.3f})" if near else "-"))
    return [printable(x) for x in lines]


def similarity_top(result: dict) -> list[str]:
    """Each task's nearest tasks, for banks too large for a T x T table."""
    width = min(24, max(4, *(len(n) for n in result["tasks"])))
    lines = [f"{'task':<{width}}  nearest (cosine)"]
    for name, row in zip(result["tasks"], result["top"]):
        shown = name if len(name) <= width else name[: width - 1] + "~"
        lines.append(f"{shown:<{width}}  " + (", ".join(f"{t['task']} {t['cosine']:.3f}" for t in row) or "-"))
    return [printable(x) for x in lines]


def derive_report(out, path, src) -> str:
    """What ``derive`` says it wrote."""
    args = out.provenance[-1]["arguments"]
    mode = args["mode"]
    what = {"exact": f"task {args.get('task')}" + (f" ({args['task_name']})" if "task_name" in args else ""),
            "average": f"the mean of {args.get('num_source_tasks')} tasks' factors",
            "shared": "the shared prompt" + (f" + {args['num_tasks']} fresh task(s) (seed {args['seed']})"
                                             if "num_tasks" in args else "")}[mode]
    shape = f"N={out.num_tokens}, d={out.token_dim}" + ("" if out.shared_only else f", T={out.num_tasks}, r={out.rank}")
    return printable(f"wrote {path}: {what} of {src} ({shape}, {out.dtype})")


def export_report(adapter, path, src) -> str:
    """What ``export`` says it wrote."""
    args, cfg = adapter.provenance[-1]["arguments"], adapter.config
    name = f" ({args['task_name']})" if "task_name" in args else ""
    return printable(f"wrote {path}: task {args['task']}{name} of {src} as a PROMPT_TUNING adapter "
                     f"({cfg['num_virtual_tokens']} virtual tokens x {cfg['num_transformer_submodules']}, "
                     f"d={adapter.prompt.shape[1]}, {adapter.prompt.dtype})")


def table_report(report: dict, src) -> str:
    """What ``export --tasks/--all`` says it wrote."""
    names = report["tasks"]
    shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
    if "shape" not in report:
        return printable(f"wrote {report['written'][0]}: {len(names)} PROMPT_TUNING adapter(s) of {src} ({shown})")
    T, N, d = report["shape"]
    half = f", {report['half']} half" if report.get("half") in ("encoder", "decoder") else ""
    files = " + ".join(report["written"])
    return printable(f"wrote {files}: prompt table ({T}, {N}, {d}) {report['dtype']}{half} of {src} ({shown})")
