"""Text for people: what ``inspect``, ``pull``, the editing commands and ``similarity`` print.
Every function takes the plain data the Python API returns (``mptkit._info.summary``'s dict, a
result bank, ``mptkit._similarity.similarity``'s dict) and returns lines; the CLI only prints them.
Text that came from a file or a server goes through :func:`printable`."""

from __future__ import annotations

from ._text import clean as printable, plural, spans


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
    row = lambda k, v: lines.append(f"  {k:<17}{printable(str(v))}")
    row("kind", s["kind"])
    row("dtype", s["dtype"])
    if s["num_virtual_tokens"]:
        sub = s["num_transformer_submodules"]
        tt = f", {s['task_type']}" if s["task_type"] else ""
        row(
            "prompt length N",
            f"{s['N']} = {plural(s['num_virtual_tokens'], 'virtual token')} x {plural(sub, 'submodule')}{tt}",
        )
    else:
        row("prompt length N", f"{s['N']} (virtual tokens x submodules unknown: no config)")
    row("hidden size d", s["d"])
    if s["kind"] != "shared-only":
        row("tasks T", s["num_tasks"])
        row("rank r", s["rank"])
        names = s["task_names"]
        if names:
            shown = ", ".join(f"{i}:{n}" for i, n in enumerate(names[:12]))
            row("task names", shown + (f", ... ({len(names)} in all)" if len(names) > 12 else ""))
        else:
            row("task names", f"none ({_indices(s['num_tasks'])})")
        row("parameters", f"shared {p['shared']:,} + per task {p['per_task']:,} x {s['num_tasks']} = {p['total']:,}")
        sep = p["as_separate_prompts"]
        ratio = sep / p["total"]
        one = s["num_tasks"] == 1
        row(
            "vs full prompts",
            f"{plural(s['num_tasks'], 'separate prompt')} would hold {sep:,}: "
            f"{'saving' if p['saving'] >= 0 else 'costing'} {abs(p['saving']) * 100:.1f}% ({ratio:.2f}x)"
            + (" (one task: the factors cost more than the prompt they make)" if one and p["saving"] < 0 else ""),
        )
    else:
        row("parameters", f"{p['shared']:,} (shared prompt only)")
    if s["base_model"]:
        row("base model", s["base_model"])
    if s["metadata"]:
        row("metadata", ", ".join(f"{k}={v[:40]}" for k, v in s["metadata"].items()))
    for i, e in enumerate(s["provenance"]):
        args = " ".join(f"{k}={v}" for k, v in (e.get("arguments") or {}).items())
        srcs = ", ".join(
            f"{x.get('name', '?')} ({'read ranges ' if x.get('scheme') == 'ranges' else ''}{x['sha256'][:12]})"
            for x in e.get("sources", [])
        )
        row(
            "provenance" if i == 0 else "",
            f"{i + 1}. {e['operation']} {args}".rstrip()
            + (f" from {srcs}" if srcs else "")
            + (f" [mptkit {e['mptkit_version']}]" if e.get("mptkit_version") else ""),
        )
    if s.get("peft_versions"):
        from ._peftfields import loadable_text

        row("loads in", loadable_text(s["peft_versions"]))
    if s.get("init_file"):
        from ._peftfields import init_file_text

        row("as init file", init_file_text(s["init_file"]) + " (prompt_tuning_init_state_dict_path)")
    for n in s["notes"]:
        row("note", n)
    if s.get("serving"):
        from ._info import serving_sentence

        row("warning", serving_sentence(s["serving"]))
    if "values" in s:
        v = s["values"]
        bad = ", ".join(f"{k} {n}" for k, n in v["nonfinite"].items())
        row("non-finite", bad)
        row("|shared|", f"{v['prompt_embeddings_norm']:.6g}")
        for i, cells in enumerate(_value_table(v["tasks"], bool(s["task_names"]))):
            row("per task" if i == 0 else "", cells)
    return "\n".join(lines)


def _indices(n: int) -> str:
    return "task 0" if n == 1 else f"tasks 0 to {n - 1}"


def _value_table(tasks: list, named: bool) -> list[str]:
    """inspect --values' per-task table: a header and one row per task, every column aligned."""
    head = ["task"] + (["name"] if named else []) + ["|prompt|", "|cols|", "|rows|", "non-finite"]
    rows = [
        [str(t["task"])]
        + ([printable(t["name"])] if named else [])
        + [f"{t[k]:.6g}" for k in ("prompt_norm", "cols_norm", "rows_norm")]
        + [f"NON-FINITE {n}" if (n := t["nonfinite_cols"] + t["nonfinite_rows"]) else ""]
        for t in tasks
    ]
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    left = {1, len(head) - 1} if named else {len(head) - 1}  # names and notes align left, numbers right
    fmt = lambda r: "  ".join(x.ljust(w) if c in left else x.rjust(w) for c, (x, w) in enumerate(zip(r, widths)))
    return [fmt(head).rstrip(), *(fmt(r).rstrip() for r in rows)]


def one_line(s: dict) -> str:
    """A one-line summary from :func:`mptkit._info.summary`'s dict."""
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
    if s.get("rank"):
        parts.append(f"r={s['rank']}")
    parts.append(s["dtype"])
    parts.append(f"{s['parameters']['total']:,} parameters")
    if s.get("base_model"):
        parts.append(f"base {s['base_model']}")
    return ", ".join(parts)


def edit_report(bank, output, labels=()) -> list[str]:
    """What an editing command says it wrote, and what it kept, changed and found, in the sources'
    own terms (their task indices and names); ``labels`` name the sources as the user did."""
    entry = bank.provenance[-1] if bank.provenance else {}
    op, args, results = entry.get("operation"), entry.get("arguments") or {}, entry.get("results") or {}
    src = labels[0] if labels else "the source"
    head = f"wrote {output}: {plural(bank.num_tasks, 'task')}"
    if bank.task_names:
        head += f" ({_listing(bank.task_names)})"
    lines = [head + f", rank {bank.rank}, {bank.dtype}"]
    lines += [f"  {x}" for x in _changes(op, args, results, bank, src, labels)]
    return [printable(x) for x in lines]


def _listing(names, limit: int = 12) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _tasks(idx, names=None, limit: int = 24) -> str:
    """``task 2 (rte)``, ``tasks 2, 0 (rte, sst2)``, ``tasks 0-3``; at most ``limit`` runs of
    indices, then how many tasks there are in all (a report stays one line, whatever the bank)."""
    idx = list(idx)
    runs = spans(idx).split(", ")
    listed = ", ".join(runs[:limit]) + (f", ... ({len(idx):,} in all)" if len(runs) > limit else "")
    shown = f"{'task' if len(idx) == 1 else 'tasks'} {listed}"
    return shown + (f" ({_listing(list(names))})" if names else "")


def _changes(op, args, results, bank, src, labels) -> list[str]:
    T = bank.num_tasks
    out: list[str] = []
    if op == "slice":
        idx = args["tasks"]
        out.append(
            f"kept {_tasks(idx, args.get('names'))} of {src}"
            + ("" if idx == list(range(len(idx))) else f", now {_tasks(range(len(idx)))}")
        )
    elif op == "remove":
        dropped = args["tasks"]
        gone = set(dropped)
        kept = [i for i in range(T + len(dropped)) if i not in gone]
        out.append(
            f"removed {_tasks(dropped, args.get('names'))} of {src}; kept {_tasks(kept)}"
            + ("" if kept == list(range(len(kept))) else f", now {_tasks(range(len(kept)))}")
        )
    elif op == "rename":
        for old, new in (args.get("renames") or {}).items():
            out.append(f"renamed task {old!r} -> {new!r}" if not str(old).isdigit() else f"named task {old} {new!r}")
        if "names" in args:
            out.append(f"named {_tasks(range(T))}: {_listing(args['names'])}")
    elif op == "add":
        out.append(
            f"added task {T - 1}"
            + (f" ({args['name']})" if args.get("name") else "")
            + ": "
            + _origin(args, src, labels)
        )
    elif op == "merge":
        parts = [
            f"{_tasks(range(a, a + n))} from {f['source']}" + ("" if a == 0 else f" (its {spans(range(n))})")
            for f in results.get("from", [])
            for a, n in [f["tasks"]]
        ]
        if parts:
            out.append("; ".join(parts))
    elif op == "rank":
        if args.get("rank") == "auto":
            out.append(
                f"rank {args.get('from_rank')} -> {bank.rank} (auto: each task's smallest rank within "
                f"--max-error {args.get('max_error'):g})"
            )
        else:
            out.append(f"rank {args.get('from_rank')} -> {args.get('rank')}")
    if results.get("named"):
        named = {int(k): v for k, v in results["named"].items()}
        groups = [
            (f["source"], f["tasks"][0], [k for k in sorted(named) if f["tasks"][0] <= k < sum(f["tasks"])])
            for f in results.get("from", [])
        ] or [(src, 0, sorted(named))]
        for who, start, pos in groups:
            if pos:
                out.append(
                    f"{who} named none of its tasks: its {_tasks([k - start for k in pos])} "
                    f"{'is' if len(pos) == 1 else 'are'} named {_listing([named[k] for k in pos])} here "
                    "(rename them with mptkit rename)"
                )
    if "seed" in results:
        out.append(f"random seed {results['seed']}")
    for pos, r in (results.get("renamed") or {}).items():
        origin = _source_of(int(pos), results)
        out.append(
            f"renamed duplicate: task {pos} {r['from']!r}"
            + (f" (task {origin[1]} of {origin[0]})" if origin else "")
            + f" -> {r['to']!r}"
        )
    for pos, r in (results.get("refit") or {}).items():
        at = f"rank {r['rank']}, " if "rank" in r else ""
        out.append(f"refit task {pos} ({r['task']} of {r['source']}): {at}relative error {r['relative_error']:.3g}")
    if results.get("exact_rank"):
        need = results["exact_rank"]
        out.append(
            f"the refit is a fit at rank {results.get('rank', bank.rank)}; an output rank of {need} makes it "
            f"exact (run again with --rank {need})"
        )
    errors, ranks = results.get("relative_error") or {}, results.get("rank") or {}
    if any(errors.values()) or ranks:
        for name, e in errors.items():
            at = f"rank {ranks[name]}, " if name in ranks else ""
            out.append(f"task {name}: {at}relative error {e:.3g}")
    return out


def _source_of(pos: int, results: dict):
    """(source, its task index) of output task ``pos`` of a merge, from its results' ``from``."""
    for f in results.get("from", []):
        start, n = f["tasks"]
        if start <= pos < start + n:
            return f["source"], pos - start
    return None


def _origin(args, src, labels) -> str:
    init = args.get("init") or ""
    if "from" in args:
        other = labels[1] if len(labels) > 1 else args["from"]
        task = args.get("task")
        k = args.get("source_task")
        return f"task {task}" + (f" ({k})" if k is not None and str(k) != str(task) else "") + f" of {other}"
    if init == "average":
        return f"the mean of the factors of {src}'s tasks"
    if init.startswith("exact:"):
        return f"a copy of task {init.partition(':')[2]} of {src}"
    if init == "random":
        return "fresh random factors, N(0, 0.02)"
    return init


def similarity_table(result: dict) -> list[str]:
    """The cosine matrix as a table, with each task's nearest other task."""
    names = [n if len(n) <= 10 else n[:9] + "~" for n in result["task_names"]]
    width = max(6, *(len(n) for n in names))
    lines = [" " * width + "".join(f" {n:>{max(6, len(n))}}" for n in names) + "   nearest"]
    for i, n in enumerate(names):
        cells = "".join(
            f" {'-' if v is None else format(v, '.3f'):>{max(6, len(names[j]))}}"
            for j, v in enumerate(result["matrix"][i])
        )
        near = result["nearest"][i]
        lines.append(f"{n:<{width}}{cells}   " + (f"{near['task']} ({near['cosine']:.3f})" if near else "-"))
    return [printable(x) for x in lines]


def similarity_top(result: dict) -> list[str]:
    """Each task's nearest tasks, for banks too large for a T x T table."""
    width = min(24, max(4, *(len(n) for n in result["task_names"])))
    lines = [f"{'task':<{width}}  nearest (cosine)"]
    for name, row in zip(result["task_names"], result["top"]):
        shown = name if len(name) <= width else name[: width - 1] + "~"
        lines.append(f"{shown:<{width}}  " + (", ".join(f"{t['task']} {t['cosine']:.3f}" for t in row) or "-"))
    return [printable(x) for x in lines]


def derive_report(out, path, src) -> str:
    """What ``derive`` says it wrote."""
    args = out.provenance[-1]["arguments"]
    mode = args["mode"]
    what = {
        "exact": f"task {args.get('task')}" + (f" ({args['task_name']})" if "task_name" in args else ""),
        "average": f"the mean of the factors of {plural(args.get('num_source_tasks') or 0, 'task')}",
        "shared": "the shared prompt"
        + (f" + {plural(args['num_tasks'], 'fresh task')} (seed {args['seed']})" if "num_tasks" in args else ""),
    }[mode]
    shape = f"N={out.num_tokens}, d={out.token_dim}" + ("" if out.shared_only else f", T={out.num_tasks}, r={out.rank}")
    return printable(f"wrote {path}: {what} of {src} ({shape}, {out.dtype})")


def config_report(output, repairs, dropped, peft_version: str | None, folder: bool = True) -> list[str]:
    """What writing ``output`` changed in its config so that PEFT loads it: the ``repairs`` of a
    source initialisation, the fields PEFT ``peft_version`` lacks (``dropped``); for a bare file
    written with ``peft_version``, what that PEFT does with it as an init file."""
    import os

    config = os.path.join(os.fspath(output), "adapter_config.json")
    lines = []
    if repairs:
        lines.append(
            f"  repaired {config} so that PEFT loads it without a source file or tokenizer: {'; '.join(repairs)}"
        )
    if dropped:
        from ._peftfields import RELEASES

        them = "it" if len(dropped) == 1 else "them"
        why = (
            f"PEFT {peft_version} lacks {them}" if peft_version else f"no PEFT release up to {RELEASES[-1]} has {them}"
        )
        where = f"{config} for PEFT {peft_version}" if peft_version else config
        lines.append(f"  wrote {where}: dropped {', '.join(dropped)} ({why})")
    if peft_version and not folder:
        from ._peftfields import init_file_note

        note = init_file_note(peft_version)
        lines += [f"  note: {note}"] if note else []
    return lines


def export_report(adapter, path, src) -> str:
    """What ``export`` says it wrote."""
    args, cfg = adapter.provenance[-1]["arguments"], adapter.config
    name = f" ({args['task_name']})" if "task_name" in args else ""
    return printable(
        f"wrote {path}: task {args['task']}{name} of {src} as a PROMPT_TUNING adapter "
        f"({cfg['num_virtual_tokens']} virtual tokens x {cfg['num_transformer_submodules']}, "
        f"d={adapter.prompt.shape[1]}, {adapter.prompt.dtype})"
    )


def table_report(report: dict, src) -> str:
    """What ``export --tasks/--all`` says it wrote."""
    names = report["task_names"]
    shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
    if report["format"] == "tgis":
        files = " and ".join(f"{f} (rows {a}-{b - 1})" for f, (a, b) in report["files"].items())
        return printable(
            f"wrote {report['output']}: a TGIS prefix store of {plural(len(names), 'prefix', 'prefixes')} from {src} "
            f"({shown}), each a folder holding {files}, {report['dtype']}; serve it with PREFIX_STORE_PATH="
            f"{report['output']} and prefix_id=<task name>"
        )
    if report["format"] == "adapters":
        line = f"wrote {report['output']}: {plural(len(names), 'PROMPT_TUNING adapter')} of {src} ({shown})"
        renamed = report.get("folders") or {}
        if renamed:
            pairs = ", ".join(f"{n!r} -> {f}" for n, f in list(renamed.items())[:5])
            line += (
                f"\n  {plural(len(renamed), 'task name')} cannot be a folder name, so tasks.json maps "
                f"{'it' if len(renamed) == 1 else 'them'} to a folder: {pairs}"
                + (f", ... ({len(renamed)} in all)" if len(renamed) > 5 else "")
            )
        return printable(line) if not renamed else "\n".join(printable(x) for x in line.split("\n"))
    T, N, d = report["num_tasks"], report["N"], report["d"]
    half = f", {report['half']} half" if report.get("half") in ("encoder", "decoder") else ""
    files = " + ".join(report["written"])
    return printable(f"wrote {files}: prompt table ({T}, {N}, {d}) {report['dtype']}{half} of {src} ({shown})")


def explain_text(r: dict) -> list[str]:
    """What ``explain`` prints: per virtual token, the nearest tokens (their decoded text) and cosines."""
    e = r["embedding"]
    lines = [
        f"{r['bank']}: nearest tokens of {r['base_model']}'s input embedding ({e['key']}, "
        f"{e['shape'][0]:,} x {e['shape'][1]}, {e['dtype']}) by cosine, top {r['top']}"
    ]
    parts = []
    if "positions" in r:
        name = f" ({r['name']})" if r.get("name") not in (None, str(r.get("task"))) else ""
        parts.append((f"task {r['task']}{name}", r["positions"]))
    if "shared" in r:
        parts.append(("shared prompt", r["shared"]["positions"]))
    for title, positions in parts:
        lines.append(f"{title}:")
        for p in positions:
            label = f"{p['position']}" + (f" ({p['half']})" if p.get("half") else "")
            cells = ", ".join(f"{_token(n)} {n['cosine']:.3f}" for n in p["nearest"])
            lines.append(f"  {label:<13} {cells}")
    return [printable(x) for x in lines]


def _token(n: dict) -> str:
    """A token as its decoded text, quoted so that spaces show (its vocabulary entry when it decodes to nothing)."""
    text = n.get("text") or n.get("token")
    return repr(text) if text else f"<id {n['id']}>"
