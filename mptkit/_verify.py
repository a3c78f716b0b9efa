"""``mptkit verify``: rebuild a bank from its recorded provenance and compare, byte for byte.

The last provenance entry says which operation made the bank, with its arguments and its sources
(each named by the path the user gave, or an hf:// reference with its commit, and its sha256). The
sources are read again from there (relative paths from ``root``, default the current folder),
their sha256 checked against the recorded one, the operation run again with the recorded
arguments, and the result compared with the bank: the tensors' bytes and the task names. A
``build`` entry rebuilds the whole recipe from the pinned sources.

What it proves: the bank's tensors and task names are exactly what that operation gives from those
sources (unchanged since). What it does not: the adapter config and the provenance text are not
rebuilt, and the sources' own history is checked only by verifying them in turn.
"""

from __future__ import annotations

import os
from pathlib import Path

from ._bank import KEYS, PromptBank, ranges_sha256
from ._diff import task_differences
from ._schema import META_PROVENANCE
from .errors import MptkitError, UsageError

#: the operations verify can run again
OPERATIONS = ("build", "derive", "slice", "remove", "rename", "merge", "add", "rank", "convert", "export",
              "decompose", "pull")  # fmt: skip


def verify(path: str | os.PathLike, *, root: str | os.PathLike | None = None) -> dict:
    """``{"path", "operation", "identical", "differences", "sources"}``; a :class:`UsageError` when
    the bank cannot be rebuilt (a source missing or changed, provenance that lacks what is needed)."""
    shown = os.fspath(path)
    ctx = _Context(shown, os.fspath(root) if root is not None else os.getcwd())
    target = _target(shown)
    if target.get("parts"):  # a folder of exported adapters: each one in turn
        reports = [verify(p, root=ctx.root) for p in target["parts"]]
        return {
            "path": shown,
            "operation": "export",
            "identical": all(r["identical"] for r in reports),
            "differences": [d for r in reports for d in r["differences"]],
            "sources": [s for r in reports for s in r["sources"]],
        }
    prov = target["provenance"]
    if not prov:
        raise UsageError(f"{shown}: records no provenance (made outside mptkit): there is nothing to rebuild it from")
    entry = prov[-1]
    op = entry.get("operation")
    if op not in OPERATIONS:
        raise UsageError(
            f"{shown}: its last step is {op!r}, which verify cannot run again (it can: {', '.join(OPERATIONS)})"
        )
    ctx.entry, ctx.op = entry, op
    differences = _compare(target, _REPLAY[op](ctx, entry.get("arguments") or {}, target), ctx)
    return {"path": shown, "operation": op, "identical": not differences, "differences": differences,
            "sources": ctx.checked}  # fmt: skip


class _Context:
    def __init__(self, shown: str, root: str):
        self.shown, self.root = shown, root
        self.entry: dict = {}
        self.op = ""
        self.checked: list[dict] = []

    def lacks(self, what: str) -> UsageError:
        return UsageError(f"{self.shown}: its {self.op} step's provenance lacks {what}, so it cannot be rebuilt")

    def sources(self, count: int | None = None) -> list[dict]:
        srcs = self.entry.get("sources") or []
        if count is not None and len(srcs) < count:
            raise self.lacks(
                f"its sources (it names {len(srcs)}, the step read {count}: a bank in memory has no file to read again)"
            )
        return srcs

    def path_of(self, src: dict) -> str:
        path = src.get("path")
        if not path:
            raise self.lacks(
                f"where its source {src.get('name', '?')!r} (sha256 {str(src.get('sha256'))[:12]}) was read "
                "(provenance written before mptkit recorded source paths)"
            )
        if path.startswith("hf://") or os.path.isabs(path):
            return path
        return os.path.join(self.root, path)

    def bank(self, src: dict) -> PromptBank:
        """The source bank as it is now, checked against its recorded sha256."""
        from ._io import load

        path = self.path_of(src)
        if src.get("hub"):
            from .hub import HubRef, parse_ref

            ref = parse_ref(src["path"])
            path = str(HubRef(ref.repo_id, src["hub"]["commit"], ref.path))
        elif not os.path.lexists(path):
            raise UsageError(
                f"{self.shown}: the source {src['path']} (sha256 {src['sha256'][:12]}) of its {self.op} step is "
                "missing" + (f" (looked in {self.root})" if not os.path.isabs(src["path"]) else "")
            )
        try:
            bank = load(path, adapter=src.get("adapter"))
        except MptkitError as e:
            raise UsageError(f"{self.shown}: cannot read the source of its {self.op} step again: {e.message}") from None
        self.check(src, bank.source)
        return bank

    def check(self, src: dict, source) -> None:
        """Refuse a source whose bytes are not the recorded ones."""
        if src.get("hub"):
            now = (source.remote or {}).get("sha256") or source.sha256
        elif src.get("scheme") == "ranges":
            now = ranges_sha256(source.data_file, src.get("ranges") or [])
        else:
            now = source.sha256
        if now != src["sha256"]:
            raise UsageError(
                f"{self.shown}: the source {src.get('path') or src.get('name')} of its {self.op} step moved: its "
                f"sha256 is now {now[:12]}..., the provenance recorded {src['sha256'][:12]}..."
            )
        self.checked.append({"path": src.get("path"), "sha256": src["sha256"]})


# -- the target ----------------------------------------------------------------------------------
def _target(shown: str) -> dict:
    """What verify compares: a bank, a PROMPT_TUNING adapter, a prompt table, or a folder of adapters."""
    from .formats import _peft as peft, _safetensors as st
    from .formats._peftdir import MANIFEST
    from .formats._tables import TABLE_KEY, sidecar_path

    p = Path(shown)
    if not shown.startswith("hf://"):
        if p.is_dir() and (p / MANIFEST).is_file() and not (p / peft.CONFIG_NAME).exists():
            return {"parts": sorted(str(q) for q in p.iterdir() if (q / peft.CONFIG_NAME).is_file())}
        config = peft.read_config(p / peft.CONFIG_NAME) if (p / peft.CONFIG_NAME).is_file() else None
        if isinstance(config, dict) and config.get("peft_type") == "PROMPT_TUNING":
            header = st.read_header(str(p / peft.SAFETENSORS_NAME))
            return {"kind": "adapter", "provenance": _provenance(shown, header.metadata),
                    "prompt": header.array("prompt_embeddings")}  # fmt: skip
        if p.name.lower().endswith(".npy"):
            from .formats._checkpoints import read_json_file

            side = read_json_file(sidecar_path(p)) if sidecar_path(p).is_file() else {}
            return {"kind": "table", "provenance": _checked(shown, side.get("provenance") or []), "file": shown}
        if p.name.lower().endswith(".safetensors") and TABLE_KEY in st.read_header(shown).tensors:
            return {"kind": "table", "provenance": _provenance(shown, st.read_header(shown).metadata), "file": shown}
    from ._io import load

    bank = load(shown)
    return {"kind": "bank", "provenance": bank.provenance, "bank": bank}


def _provenance(shown: str, meta: dict | None) -> list:
    from ._strictjson import parse_json

    text = (meta or {}).get(META_PROVENANCE)
    return _checked(shown, parse_json(text)) if text else []


def _checked(shown: str, prov) -> list:
    from ._schema import check

    problems = check("metadata", prov, pointer="/$defs/provenance")
    if problems:
        raise UsageError(f"{shown}: its provenance is not what mptkit writes ({problems[0]})")
    return prov


# -- running a step again ------------------------------------------------------------------------
def _one(ctx: _Context) -> PromptBank:
    return ctx.bank(ctx.sources(1)[0])


def _need(ctx: _Context, args: dict, *keys):
    missing = [k for k in keys if k not in args]
    if missing:
        raise ctx.lacks(f"its argument {missing[0]!r}")
    return [args[k] for k in keys]


def _derive(ctx, args, target):
    from ._derive import derive

    (mode,) = _need(ctx, args, "mode")
    return derive(_one(ctx), mode, task=args.get("task"), num_tasks=args.get("num_tasks"),
                  num_ranks=args.get("num_ranks"), seed=args.get("seed"), dtype=args.get("dtype"))  # fmt: skip


def _edit(name):
    def replay(ctx, args, target):
        from . import _edit as edit

        bank = _one(ctx)
        if name == "slice":
            return edit.slice_tasks(bank, _need(ctx, args, "tasks")[0])
        if name == "remove":
            return edit.remove_tasks(bank, _need(ctx, args, "tasks")[0])
        if name == "rename":
            return edit.set_names(bank, args["names"]) if "names" in args else edit.rename(bank, args["renames"])
        if name == "rank":
            return edit.change_rank(bank, _need(ctx, args, "rank")[0], max_error=args.get("max_error"))
        from ._convert import convert

        return convert(bank, dtype=args.get("dtype"))

    return replay


def _merge(ctx, args, target):
    from ._merge import merge

    count = len((ctx.entry.get("results") or {}).get("from") or ctx.sources())
    banks = [ctx.bank(s) for s in ctx.sources(count)[:count]]
    return merge(
        banks,
        dtype=args.get("dtype"),
        rename_duplicates=args.get("rename_duplicates", False),
        refit=args.get("refit", False),
        max_error=args.get("max_error"),
        rank=args.get("rank"),
        allow_mismatch=True,
    )  # fmt: skip  (it merged once: a config check cannot refuse it now)


def _add(ctx, args, target):
    from ._merge import add_task

    if args.get("rank") == "auto" and "max_error" not in args:
        raise ctx.lacks("its argument 'max_error' (the rank auto chose depends on it)")
    other = "from" in args
    srcs = ctx.sources(2 if other else 1)
    return add_task(ctx.bank(srcs[0]), args.get("name"), init=None if other else args.get("init"),
                    seed=args.get("seed"), source=ctx.bank(srcs[1]) if other else None,
                    source_task=args.get("source_task"), refit=args.get("refit", False),
                    max_error=args.get("max_error"), rank=args.get("rank"), allow_mismatch=True)  # fmt: skip


def _decompose(ctx, args, target):
    from ._decompose import decompose
    from .formats import read_prompts

    rank, seed = _need(ctx, args, "rank", "seed")
    srcs = ctx.sources(1)
    prompt_srcs, shared = (srcs[:-1], ctx.bank(srcs[-1])) if "shared" in args else (srcs, None)
    prompts = read_prompts([ctx.path_of(s) for s in prompt_srcs])
    for s, now in zip(prompt_srcs, prompts.sources):
        ctx.check(s, now)
    dtype = args.get("dtype") or target["bank"].dtype  # decompose stores in the dtype it was given
    return decompose(prompts, rank, max_error=args.get("max_error"), seed=seed, shared=shared, dtype=dtype)


def _pull(ctx, args, target):
    from .hub import partial

    return partial(_one(ctx), _need(ctx, args, "tasks")[0])


def _export(ctx, args, target):
    bank = _one(ctx)
    if target["kind"] == "adapter":
        from ._export import export

        return export(bank, _need(ctx, args, "task")[0], dtype=args.get("dtype")).prompt
    from ._export import export_table

    tasks, half = _need(ctx, args, "tasks", "half")
    return b"".join(export_table(bank, tasks, half=half, dtype=args.get("dtype")).chunks())


def _build(ctx, args, target):
    from ._recipe import plan, run
    from ._recipefile import Recipe, pinned, pins_of

    (recipe,) = _need(ctx, args, "recipe")
    try:
        pins = pins_of(recipe, ctx.sources())
    except ValueError as e:
        raise ctx.lacks(str(e)) from None
    if os.path.realpath(ctx.root) != os.path.realpath(os.getcwd()):
        recipe = dict(recipe, sources=[_rooted(s, ctx.root) for s in recipe["sources"]])
    try:
        bank = run(plan(Recipe("its recorded recipe", pinned(recipe, pins))))
    except MptkitError as e:
        hint = ""
        if "no such file" in e.message:
            hint = f" (relative paths are read from {ctx.root}; --root DIR reads them from another folder)"
        raise UsageError(f"cannot rebuild {ctx.shown}: {e.message}{hint}") from None
    ctx.checked += [{"path": s.get("path"), "sha256": s["sha256"]} for s in ctx.sources()]  # the plan checked the pins
    return bank


def _rooted(spec: dict, root: str) -> dict:
    """A recipe source with its relative paths read from ``root``."""

    def at(path: str) -> str:
        return path if path.startswith("hf://") or os.path.isabs(path) else os.path.join(root, path)

    if "prompts" in spec:
        p = spec["prompts"]
        return {**spec, "prompts": at(p) if isinstance(p, str) else [at(x) for x in p]}
    return {**spec, "bank": at(spec["bank"])}


_REPLAY = {"derive": _derive, "slice": _edit("slice"), "remove": _edit("remove"), "rename": _edit("rename"),
           "rank": _edit("rank"), "convert": _edit("convert"), "merge": _merge, "add": _add,
           "decompose": _decompose, "pull": _pull, "export": _export, "build": _build}  # fmt: skip


# -- comparing -----------------------------------------------------------------------------------
def _table_bytes(path: str) -> bytes:
    from .formats import read_prompts

    prompts = read_prompts([path])
    return b"".join(bytes(a.read()) for a in prompts.arrays)


def _compare(target: dict, rebuilt, ctx: _Context) -> list[dict]:
    if target["kind"] == "table":
        same = _table_bytes(target["file"]) == rebuilt
        return [] if same else [{"what": "the table's prompts", "status": "differs"}]
    if target["kind"] == "adapter":
        from ._diff import prompt_errors

        have, want = target["prompt"], rebuilt
        if have.dtype == want.dtype and have.shape == want.shape and bytes(have.read()) == bytes(want.read()):
            return []
        args = ctx.entry.get("arguments") or {}
        task = args.get("task_name", args.get("task"))
        row = {"what": f"task {task}", "task": task, "status": "differs"}
        if have.shape == want.shape:
            row.update(prompt_errors(want.to_torch().double(), have.to_torch().double()))
        return [row]
    bank = target["bank"]
    out = []
    if bank.task_names != rebuilt.task_names:
        out.append({"what": "the task names", "status": "differs", "a": bank.task_names, "b": rebuilt.task_names})
    layout = {k: (a.dtype, a.shape) for k, a in bank.tensors.items() if k in KEYS}
    again = {k: (a.dtype, a.shape) for k, a in rebuilt.tensors.items() if k in KEYS}
    if layout != again:
        return [*out, {"what": "the tensors' shapes or dtypes", "status": "differs", "a": str(layout), "b": str(again)}]
    pe_a, pe_b = bank.tensors["prompt_embeddings"], rebuilt.tensors["prompt_embeddings"]
    if bytes(pe_a.read()) != bytes(pe_b.read()):
        out.append({"what": "the shared prompt", "status": "differs"})
    if not bank.shared_only:
        for row in task_differences(rebuilt, bank):
            out.append({"what": f"task {row['task']}", **row})
    return out


def describe(report: dict) -> list[str]:
    """What verify says, a line each."""
    if report["identical"]:
        n = len(report["sources"])
        return [f"verified {report['path']}: identical to what its {report['operation']} step gives from its "
                f"{n} source{'s' if n != 1 else ''} (sha256 checked)"]  # fmt: skip
    lines = [f"{report['path']} differs from what its {report['operation']} step gives:"]
    for d in report["differences"]:
        extra = ""
        if d.get("relative_error") is not None:
            extra = f": relative error {d['relative_error']:.3g}, max abs difference {d['max_abs_diff']:.3g}"
        status = (
            "differ" if d["status"] == "differs" and d["what"].endswith(("names", "dtypes", "prompts")) else d["status"]
        )
        lines.append(f"  {d['what']} {status}{extra}")
    return lines
