"""A recipe's sources, opened and checked before any work (:mod:`mptkit._recipe`): each bank
loaded (headers only; ``hf://`` at the commit its pin names), its tasks and renames checked with the
operations' own rules, prompts read, pins compared, shared prompts compared, the output's task names
checked. Every refusal names the recipe's line and field."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from ._bank import KEYS, PromptBank, select_tasks
from ._recipefile import Recipe
from ._tensor import Array
from ._text import plural
from .errors import MptkitError


@dataclass
class Part:
    """One recipe source, opened (tensors still where they are)."""

    index: int
    kind: str  # "bank" or "prompts"
    bank: PromptBank | None = None  # bank sources: as loaded
    tasks: list[int] | None = None  # the tasks taken, validated
    prompts: object = None  # prompts sources: mptkit._tables.Prompts
    names: list[str] = field(default_factory=list)  # the output names of its tasks ([]: unnamed)
    count: int = 0  # how many tasks it gives
    _pin: object = None

    @property
    def pin(self):
        """What a lock records for this source: ``{"sha256"[, "commit", "file"]}`` for a bank (a
        local file is hashed once; the Hub lists its sha256), ``[{"path", "sha256"}, ...]`` for prompts."""
        if self._pin is None:
            if self.kind == "prompts":
                self._pin = [{"path": src.path, "sha256": src.sha256} for src in self.prompts.sources]
            elif self.bank.source.remote:
                hub, src = self.bank.source.remote, self.bank.source
                self._pin = {"sha256": hub.get("sha256") or src.sha256, "commit": hub["commit"],
                             "file": hub.get("file") or os.path.basename(src.data_file)}  # fmt: skip
            else:
                self._pin = {"sha256": self.bank.source.sha256}
        return self._pin

    def entries(self) -> list[dict]:
        """How the build's provenance names this source as resolved."""
        if self.kind == "bank":
            src = self.bank.source
            name = os.path.basename(os.path.normpath(src.path)) or src.path
            return [{"source": self.index, "name": name, "path": src.path, "sha256": self.pin["sha256"],
                     "scheme": "file", **({"hub": dict(src.remote)} if src.remote else {})}]  # fmt: skip
        return [
            {"source": self.index, "name": os.path.basename(os.path.normpath(p["path"])), "path": p["path"],
             "sha256": p["sha256"], "scheme": "file"}
            for p in self.pin
        ]  # fmt: skip


def open_part(recipe: Recipe, i: int, spec: dict) -> Part:
    if "prompts" in spec:
        return open_prompts(recipe, i, spec)
    from ._edit import rename, slice_tasks
    from ._io import load

    at = ("sources", i)
    path, pin = spec["bank"], spec.get("pin")
    opened = path
    if pin and pin.get("commit") and path.startswith("hf://"):
        from .hub import HubRef, parse_ref

        try:
            ref = parse_ref(path)
        except MptkitError as e:
            raise recipe.error((*at, "bank"), e.message) from None
        opened = str(HubRef(ref.repo_id, pin["commit"], ref.path))  # the pinned commit, wherever the branch is
    try:
        bank = load(opened, adapter=spec.get("adapter"))
    except MptkitError as e:
        raise recipe.error((*at, "bank"), e.message) from None
    if opened != path:  # provenance names the source as the recipe does, with the commit it resolved to
        bank.source.path = path
        bank.source.remote["revision"] = parse_ref(path).revision or "main"
    if bank.shared_only:
        raise recipe.error((*at, "bank"), f"{path} holds only a shared prompt, no tasks")
    s = Part(i, "bank", bank=bank)
    if pin is not None and pin["sha256"] != s.pin["sha256"]:
        raise recipe.error(
            (*at, "pin"),
            f"{path} moved: its sha256 is now {s.pin['sha256'][:16]}..., pinned {pin['sha256'][:16]}... "
            "(build from the recipe itself to take the new version)",
        )
    # the operations' own checks, on a copy that reads and hashes nothing (its digest stands in)
    dry = replace(bank, source=replace(bank.source, digest="0" * 64, digest_scheme="file", remote=None))
    if "tasks" in spec:
        taken: dict[int, int] = {}
        for k, item in enumerate(spec["tasks"]):
            try:
                idx = select_tasks(bank, [item])
            except MptkitError as e:
                raise recipe.error((*at, "tasks", k), e.message) from None
            for t in idx:
                if t in taken:
                    also = f"sources[{i}].tasks[{taken[t]}]"
                    raise recipe.error((*at, "tasks", k), f"task {t} ({bank.names()[t]}) is taken twice (also {also})")
                taken[t] = k
        s.tasks = list(taken)
        dry = slice_tasks(dry, s.tasks)
    for old in spec.get("rename", {}):
        try:
            dry.task_index(old)
        except MptkitError as e:
            raise recipe.error((*at, "rename", old), e.message) from None
    if "rename" in spec:
        try:
            dry = rename(dry, spec["rename"])
        except MptkitError as e:
            raise recipe.error((*at, "rename"), e.message) from None
    s.names, s.count = (list(dry.task_names) if dry.task_names else []), dry.num_tasks
    return s


def open_prompts(recipe: Recipe, i: int, spec: dict) -> Part:
    from .formats import read_prompts

    at = ("sources", i, "prompts")
    paths = [spec["prompts"]] if isinstance(spec["prompts"], str) else list(spec["prompts"])
    for k, path in enumerate(paths):
        try:
            read_prompts([path])
        except MptkitError as e:
            raise recipe.error(at if isinstance(spec["prompts"], str) else (*at, k), e.message) from None
    try:
        prompts = read_prompts(paths)
    except MptkitError as e:
        raise recipe.error(at, e.message) from None
    names = spec.get("names") or prompts.names
    if len(names) != len(prompts.arrays):
        raise recipe.error(
            ("sources", i, "names"),
            f"{plural(len(names), 'name')} for {plural(len(prompts.arrays), 'prompt')} ({', '.join(prompts.names)})",
        )
    s = Part(i, "prompts", prompts=prompts, names=list(names), count=len(names))
    if "pin" in spec:
        _check_file_pins(recipe, i, spec["pin"], s.pin)
    return s


def _check_file_pins(recipe: Recipe, i: int, pins: list, now: list) -> None:
    """Each pinned prompt file is still there, in its place, with its sha256; no file was added."""
    for k, want in enumerate(pins):
        have = now[k] if k < len(now) else None
        at = ("sources", i, "pin", k)
        if have is None or os.path.basename(have["path"]) != os.path.basename(want["path"]):
            found = f"; {have['path']} is in its place" if have else ""
            raise recipe.error(at, f"{want['path']} (sha256 {want['sha256'][:16]}...) is missing{found}")
        if want["sha256"] != have["sha256"]:
            raise recipe.error(
                at,
                f"{have['path']} moved: its sha256 is now {have['sha256'][:16]}..., pinned {want['sha256'][:16]}... "
                "(build from the recipe itself to take the new version)",
            )
    if len(now) > len(pins):
        raise recipe.error(("sources", i, "pin"), f"{now[len(pins)]['path']} was not there when the lock was written")


def output_dtype(recipe: Recipe, banks: list[Part]) -> str | None:
    from ._dtypes import storage_dtype

    if "dtype" in recipe.data:
        return storage_dtype(recipe.data["dtype"])
    for s in banks[1:]:
        if s.bank.dtype != banks[0].bank.dtype:
            raise recipe.error(
                ("sources", s.index, "bank"),
                f"{s.bank.where} is {s.bank.dtype} but {banks[0].bank.where} is {banks[0].bank.dtype}; "
                "say which dtype the output has (dtype: float32, bfloat16, float16 or float64)",
            )
    return None


def compare_shared(recipe: Recipe, kept: Part, banks: list[Part], dtype: str | None) -> bool:
    """Whether another bank's shared prompt differs from the kept one (a refit), after checking
    that the banks combine at all; refused when they differ and the recipe does not say ``shared:``."""
    from ._combine import check_compatible
    from ._numerics import cast, describe_difference

    if len(banks) == 1:
        return False
    out_dtype = dtype or kept.bank.dtype
    base = cast(shared_prompt(kept), out_dtype)
    base_bytes = bytes(base.read())
    differ = False
    for s in banks:
        if s is kept:
            continue
        try:
            check_compatible([kept.bank, s.bank], out_dtype)
        except MptkitError as e:
            raise recipe.error(("sources", s.index, "bank"), e.message) from None
        other = cast(shared_prompt(s), out_dtype)
        if bytes(other.read()) == base_bytes:
            continue
        differ = True
        if "shared" not in recipe.data:
            raise recipe.error(
                ("sources", s.index, "bank"),
                f"its shared prompt differs from sources[{kept.index}]'s ({describe_difference(base, other)}); "
                f"say which to keep (shared: {kept.index}) and the other banks' tasks are re-expressed "
                "under it (a fit)",
            )
    return differ


def shared_prompt(part: Part) -> Array:
    """The bank's shared prompt; one on the Hub is read now and kept in memory (every later step
    reads it again: the merge compares it, decompose fits onto it, the write copies it; ranges over
    1 MB are not kept by the remote reader, so each would fetch it anew)."""
    arr = part.bank.tensors["prompt_embeddings"]
    if any(seg.reader is not None for seg in arr.segments):
        arr = part.bank.tensors["prompt_embeddings"] = Array.from_bytes(bytes(arr.read()), arr.dtype, arr.shape)
    return arr


def check_prompts(recipe: Recipe, s: Part, kept: Part, rank) -> None:
    from ._combine import check_compatible
    from ._decompose import output_config

    N, d = s.prompts.shape
    bank = kept.bank
    if (N, d) != (bank.num_tokens, bank.token_dim):
        raise recipe.error(
            ("sources", s.index, "prompts"),
            f"the prompts are {N} x {d} (N x d), the shared prompt of sources[{kept.index}] is "
            f"{bank.num_tokens} x {bank.token_dim}",
        )
    stand_in = PromptBank(shapes(bank.dtype, 1, N, 1, d), None, output_config(s.prompts, bank))
    try:
        check_compatible([bank, stand_in], bank.dtype)
    except MptkitError as e:
        raise recipe.error(("sources", s.index, "prompts"), e.message) from None
    r = prompt_rank(recipe.data["sources"][s.index], rank, bank)
    if r != "auto" and r > min(N, d):
        raise recipe.error(("sources", s.index), f"rank {r} is more than min(N, d) = {min(N, d)}")


def prompt_rank(spec: dict, rank, kept: PromptBank):
    own = spec.get("rank")
    if isinstance(own, dict):
        return "auto"
    if own is not None:
        return own
    return rank if isinstance(rank, int) else kept.rank


def prompt_error(spec: dict):
    own = spec.get("rank")
    return own["max_error"] if isinstance(own, dict) else None


def check_names(recipe: Recipe, sources: list[Part]) -> None:
    """The output's names, as merge gives them (``task<i>`` for an unnamed bank's tasks when
    another names its own): all different, each clash named at the source that repeats it."""
    from ._edit import check_names as check_task_names, default_names

    if not any(s.names for s in sources):
        return
    start, seen = 0, {}
    for s in sources:
        if not s.names:
            s.names = default_names(s.count, start)
        for n in s.names:
            if n in seen:
                field = "rename" if "rename" in recipe.data["sources"][s.index] else "tasks"
                if s.kind == "prompts":
                    field = "names" if "names" in recipe.data["sources"][s.index] else "prompts"
                where = (
                    ("sources", s.index, field) if field in recipe.data["sources"][s.index] else ("sources", s.index)
                )
                raise recipe.error(
                    where, f"task name {n!r} is also sources[{seen[n]}]'s; rename one of them (rename: {{{n}: ...}})"
                )
            seen[n] = s.index
        start += s.count
    check_task_names([n for s in sources for n in s.names], f"{recipe.path}: the output's task names")


def shapes(dtype: str, T: int, N: int, r: int, d: int) -> dict[str, Array]:
    """Tensors of these shapes that hold nothing (for the checks made before any work)."""
    shape = {"prompt_embeddings": (N, d), "prefix_task_cols": (T, N, r), "prefix_task_rows": (T, r, d)}
    return {k: Array(dtype, shape[k], []) for k in KEYS}
