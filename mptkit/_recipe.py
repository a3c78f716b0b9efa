"""Banks from recipes (``mptkit build RECIPE.yaml``): a YAML file naming sources, in order, that
the existing operations turn into one bank, as a user would by hand:

    each bank source     load (hf:// by range requests) -> slice_tasks -> rename
    each prompts source  read_prompts -> decompose onto the kept shared prompt -> set_names
    all of them          merge (refit when ``shared:`` keeps one of differing shared prompts)
    then                 change_rank (``rank:``), convert (``dtype:``, one source only)

:func:`plan` opens every source (headers, and the banks' shared prompts, which it compares) and
checks everything a step could refuse before any step runs: a missing source, an unknown task, a
task taken twice, clashing names, shared prompts that differ without ``shared:``, pins that no
longer hold, an output that cannot be written. Each refusal is one sentence naming the recipe's
line and field. :func:`run` then runs the steps; the result's last provenance entry is ``build``:
the recipe (without ``output`` and pins) and every source as resolved (the Hub commit and file
sha256, a local file's sha256), so building from the lock (the recipe with those pins) gives the
same bytes, or stops naming the source that moved.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from ._bank import KEYS, PromptBank, input_paths
from ._dtypes import shown
from ._recipefile import Recipe, lock_text, pinned, unpinned
from ._sources import (
    Part,
    check_names,
    check_prompts,
    compare_shared,
    open_part,
    output_dtype,
    prompt_error,
    prompt_rank,
    shapes,
    shared_prompt,
)
from ._version import __version__
from .errors import MptkitError


@dataclass
class Plan:
    recipe: Recipe
    sources: list[Part]
    shared: int  # the source whose shared prompt the output keeps
    refit: bool  # the banks' shared prompts differ: the others are re-expressed under it
    dtype: str | None  # the output dtype (safetensors name)
    rank: object  # None, an int, or ("auto", max_error)
    output: str | None
    #: write the output's config as this PEFT release writes it (the recipe's peft_version:)
    peft_version: str | None = None
    steps: list[dict] = field(default_factory=list)  # {"step": text, "reads": bytes}
    #: the config fields the output dropped for :attr:`peft_version` (set by :func:`run`)
    dropped: list[str] = field(default_factory=list)
    #: the planned local output (mptkit.plan, checked before the work); None for hf:// or none
    target: object = None

    @property
    def names(self) -> list[str]:
        return [n for s in self.sources for n in s.names]

    def pins(self) -> list:
        return [s.pin for s in self.sources]

    def lock(self) -> dict:
        """The recipe with every source pinned (RECIPE.lock.yaml)."""
        return pinned(self.recipe.data, self.pins())

    def inputs(self) -> list[str]:
        out = input_paths(*(s.bank for s in self.sources if s.bank is not None))
        return out + [p.data_file for s in self.sources if s.prompts for p in s.prompts.sources]


def plan(recipe: Recipe, *, output: str | None = None, force: bool = False, write: bool = True) -> Plan:
    """Open and check everything :func:`run` needs (see the module doc); nothing is computed or
    written. ``output`` replaces the recipe's; with ``write=False`` the plan has no output."""
    data = recipe.data
    sources = [open_part(recipe, i, s) for i, s in enumerate(data["sources"])]
    banks = [s for s in sources if s.kind == "bank"]
    if not banks:
        raise recipe.error(("sources",), "no bank among the sources: prompts are fitted onto a bank's shared prompt")
    shared = data.get("shared", banks[0].index)
    if shared >= len(sources) or sources[shared].kind != "bank":
        raise recipe.error(("shared",), f"source {shared} is not a bank source (banks: {[s.index for s in banks]})")
    kept = sources[shared]
    dtype = output_dtype(recipe, banks)
    refit = compare_shared(recipe, kept, banks, dtype)
    rank = data.get("rank")
    rank = ("auto", rank["max_error"]) if isinstance(rank, dict) else rank
    for s in sources:
        if s.kind == "prompts":
            check_prompts(recipe, s, kept, rank)
    check_names(recipe, sources)
    out = (output if output is not None else data.get("output")) if write else None
    version = data.get("peft_version")
    if version is not None:
        from ._peftfields import check_version

        try:
            check_version(version)
        except MptkitError as e:
            raise recipe.error(("peft_version",), e.message) from None
    p = Plan(recipe, sources, shared, refit, dtype, rank, out, version)
    p.steps = _steps(p)
    if p.output is not None:
        p.target = check_output(p, force)
    return p


def run(p: Plan) -> PromptBank:
    """The bank ``p`` describes, made by the operations (see the module doc). With the recipe's
    ``clamp: true``, values beyond a narrower output dtype's range are stored as its largest finite
    value (``--clamp`` of the commands); else they are refused."""
    from ._convert import convert
    from ._decompose import decompose
    from ._edit import change_rank, rename, set_names, slice_tasks
    from ._merge import merge

    data, kept = p.recipe.data, p.sources[p.shared].bank
    clamp = bool(data.get("clamp", False))
    for s in p.sources:  # the pins first: every step's provenance then names its sources by their whole file
        _ = s.pin
    if any(s.kind == "prompts" for s in p.sources):
        shared_prompt(p.sources[p.shared])  # read once: decompose fits onto it, the write copies it
    dtype_name = shown(p.dtype or kept.dtype)
    parts = []
    for s in p.sources:
        spec = data["sources"][s.index]
        if s.kind == "bank":
            b = s.bank
            if s.tasks is not None:
                b = slice_tasks(b, s.tasks)
            if spec.get("rename"):
                b = rename(b, spec["rename"])
        else:
            b = decompose(s.prompts, prompt_rank(spec, p.rank, kept), max_error=prompt_error(spec),
                          seed=spec.get("seed", 0), shared=kept, dtype=dtype_name, clamp=clamp)  # fmt: skip
            if spec.get("names"):
                b = set_names(b, spec["names"])
        parts.append(b)
    rank = p.rank if isinstance(p.rank, int) else None
    if len(parts) == 1:
        out = convert(parts[0], dtype=dtype_name, clamp=clamp) if p.dtype and p.dtype != parts[0].dtype else parts[0]
    else:
        top = max(b.rank for b in parts)
        first = next(i for i, s in enumerate(p.sources) if s.index == p.shared) if p.refit else 0
        order = [first] + [i for i in range(len(parts)) if i != first]  # merge keeps the first bank's shared prompt
        if first and p.names:  # merge names an unnamed bank's tasks by position: give them the recipe's positions
            parts = [b if b.task_names else set_names(b, s.names) for b, s in zip(parts, p.sources)]
        out = merge([parts[i] for i in order], dtype=dtype_name if p.dtype else None, refit=p.refit, clamp=clamp,
                    rank=rank if rank is not None and rank >= top else None)  # fmt: skip
        if order != sorted(order):  # back into the recipe's order
            starts = [sum(parts[j].num_tasks for j in order[:k]) for k in range(len(order))]
            at = {i: starts[k] for k, i in enumerate(order)}
            out = slice_tasks(out, [at[i] + t for i in range(len(parts)) for t in range(parts[i].num_tasks)])
    if p.rank is not None and (p.rank[0] == "auto" if isinstance(p.rank, tuple) else p.rank != out.rank):
        from ._numerics import clamping

        with clamping(clamp):  # change_rank takes no clamp= of its own: the fit's cast reads this
            auto = isinstance(p.rank, tuple)
            out = change_rank(out, "auto", max_error=p.rank[1]) if auto else change_rank(out, p.rank)
    if p.peft_version:
        from ._peftfields import for_release

        config, p.dropped = for_release(out.config, p.peft_version)
        out = replace(out, config=config)
    entry = {
        "operation": "build",
        "arguments": {"recipe": unpinned(data)},
        "sources": [x for s in p.sources for x in s.entries()],
        "mptkit_version": __version__,
    }
    return replace(out, provenance=[*out.provenance, entry])


def check_output(p: Plan, force: bool):
    """Refuse, before any work, an output the write (or push) would refuse; the planned output
    (:func:`mptkit.plan`) for a local path, None for ``hf://``."""
    kept = p.sources[p.shared].bank
    first = next(s.bank for s in p.sources if s.kind == "bank")
    config = next((s.bank.config for s in p.sources if s.bank is not None and s.bank.config), None)
    if p.refit:
        config = kept.config or config
    r = p.rank if isinstance(p.rank, int) else max(s.bank.rank for s in p.sources if s.bank is not None)
    T = sum(s.count for s in p.sources)
    stand_in = PromptBank(shapes(p.dtype or first.dtype, T, kept.num_tokens, r, kept.token_dim), None, config)
    try:
        if p.output.startswith("hf://"):  # pushed as an adapter folder: its config must be complete
            from .formats import _peft as peft
            from .hub import parse_ref

            parse_ref(p.output, allow_path=False)
            peft.complete_config(config, num_tokens=kept.num_tokens, token_dim=kept.token_dim, num_tasks=T,
                                 num_ranks=r, where=p.recipe.path)  # fmt: skip
            return None
        from .formats import plan as plan_output

        return plan_output(p.output, "bank", force=force, inputs=p.inputs(), like=stand_in)
    except MptkitError as e:
        raise (p.recipe.error(("output",), e.message) if "output" in p.recipe.data else e) from None


# -- the plan, in words --------------------------------------------------------------------------
def _steps(p: Plan) -> list[dict]:
    from ._text import plural

    steps = []
    data, kept = p.recipe.data, p.sources[p.shared].bank
    for s in p.sources:
        spec = data["sources"][s.index]
        if s.kind == "bank":
            b = s.bank
            idx = s.tasks if s.tasks is not None else list(range(b.num_tasks))
            task_bytes = sum(b.tensors[k].row_nbytes for k in KEYS[1:]) * len(idx)
            remote = b.source.remote or {}
            how = " by range requests" if remote.get("partial") else ""
            at = f" (commit {remote['commit'][:12]})" if remote.get("commit") else ""
            what = "all tasks" if s.tasks is None else f"{plural(len(idx), 'task')} of {b.num_tasks}"
            steps.append({"step": f"read {spec['bank']}{at}: {what} and the shared prompt{how}",
                          "reads": task_bytes + b.tensors["prompt_embeddings"].nbytes})  # fmt: skip
            if "rename" in spec:
                pairs = ", ".join(f"{k} -> {v}" for k, v in spec["rename"].items())
                steps.append({"step": f"rename {pairs}", "reads": 0})
        else:
            pr = s.prompts
            r = prompt_rank(spec, p.rank, kept)
            steps.append({
                "step": f"decompose {plural(len(pr.arrays), 'prompt')} ({', '.join(s.names)}) onto the shared "
                f"prompt of sources[{p.shared}] at rank {r}",
                "reads": sum(a.nbytes for a in pr.arrays),
            })  # fmt: skip
    ranks = [
        s.bank.rank if s.kind == "bank" else prompt_rank(data["sources"][s.index], p.rank, kept) for s in p.sources
    ]
    top = max((r for r in ranks if r != "auto"), default=1)
    count = plural(sum(s.count for s in p.sources), "task")
    want = p.rank if isinstance(p.rank, int) else None
    if len(p.sources) > 1:
        how = f", re-expressing tasks under sources[{p.shared}]'s shared prompt (a fit)" if p.refit else ""
        at = max(want, top) if want is not None and want >= top else top
        pad = " (smaller ranks zero-padded)" if len(set(ranks)) > 1 or at != top else ""
        dtype = f", {data['dtype']}" if p.dtype else ""
        steps.append({"step": f"merge {count} at rank {at}{pad}{dtype}{how}", "reads": 0})
    elif p.dtype and p.dtype != kept.dtype:
        steps.append({"step": f"convert to {data['dtype']}", "reads": 0})
    if isinstance(p.rank, tuple):
        steps.append({"step": f"rank auto: each task's smallest rank within relative error {p.rank[1]:g}", "reads": 0})
    elif want is not None and (want < top or (len(p.sources) == 1 and want != top)):
        steps.append(
            {"step": f"rank {want} ({'a fit, its errors recorded' if want < top else 'zero-padded'})", "reads": 0}
        )
    if p.output is not None:
        steps.append({"step": f"{'push to' if p.output.startswith('hf://') else 'write'} {p.output}", "reads": 0})
    return steps


def build(
    recipe: str | os.PathLike | dict,
    *,
    output: str | None = None,
    force: bool = False,
    lock: bool = False,
    write: bool = True,
) -> PromptBank:
    """The bank a recipe (a YAML file, or its data as a dict) describes; see the module doc. It is
    written to ``output`` (default: the recipe's ``output:``; none: only returned), a path or
    ``hf://owner/repo`` (pushed with a card carrying the recipe and its lock); ``force`` replaces an
    existing bank there. ``lock`` also writes ``RECIPE.lock.yaml`` beside a recipe file. With
    ``write=False`` nothing is written: the bank is only returned."""
    from ._recipefile import lock_path, parse_recipe, read_recipe

    if isinstance(recipe, dict):
        from ._recipefile import dump_yaml

        r = parse_recipe(dump_yaml(recipe), "the recipe")
    else:
        r = read_recipe(recipe)
    p = plan(r, output=output, force=force, write=write)
    lock = lock and write
    if lock and isinstance(recipe, dict):
        from .errors import UsageError

        raise UsageError("lock=True writes RECIPE.lock.yaml beside a recipe file; this recipe is a dict")
    planned = check_lock(p, lock_path(os.fspath(recipe))) if lock else None
    bank = run(p)
    if p.output is not None:
        write_output(p, bank)
    if planned is not None:
        write_lock(p, planned)
    return bank


def write_output(p: Plan, bank: PromptBank) -> dict:
    """Write the built bank where the plan says (``mptkit.save``), or push it (``mptkit.hub.push``)."""
    if p.output.startswith("hf://"):
        from .hub import push

        return {"pushed": push(bank, p.output.removeprefix("hf://"))}
    return {"written": str(p.target.write(bank))}


def check_lock(p: Plan, path: str | os.PathLike):
    """The planned lock output (:func:`mptkit.plan`), refused before any work if it cannot be
    written; an existing file there is replaced only if it is a lock mptkit wrote."""
    from .formats import plan as plan_output

    return plan_output(path, "lock", force=True, inputs=[p.recipe.path])


def write_lock(p: Plan, planned) -> Path:
    """Write the plan's lock (the recipe with every source pinned) where :func:`check_lock` planned it."""
    from .formats._objects import RecipeLock

    return planned.write(RecipeLock(lock_text(p.lock(), p.recipe.path), p.recipe.path))
