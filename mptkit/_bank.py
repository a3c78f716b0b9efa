"""PromptBank: the three tensors (as lazy :class:`~mptkit._tensor.Array` handles), task names,
config and provenance. Operations take banks and return new ones; they never touch paths."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar

from ._tensor import Array
from ._text import plural
from ._version import __version__
from .errors import InvalidBank, UsageError

KEYS = ("prompt_embeddings", "prefix_task_cols", "prefix_task_rows")


#: how a source is named in provenance: "file", the sha256 of the whole tensor file; "ranges", the
#: sha256 of the byte ranges an operation read (the header first), listed beside it
DIGEST_SCHEMES = ("file", "ranges")


@dataclass
class Source:
    """Where a bank was read from."""

    path: str  # what the user named (a file, a folder or an hf:// reference)
    format: str  # "safetensors", "peft-adapter", "peft-adapter (.bin)", "pickle"
    data_file: str  # the file holding the tensors
    file_size: int
    #: a sha256 of the tensor file known without reading it (e.g. the LFS sha256 a Hub download was
    #: checked against), with what it covers (only "file" digests name the whole file)
    digest: str | None = None
    digest_scheme: str = "file"
    #: for a bank on the Hub: repo, commit, file, its LFS sha256, and whether it was read by ranges
    #: ("partial": only the bytes an operation needed, not checked against the sha256)
    remote: dict | None = None
    #: the adapter chosen among several (``load(..., adapter=)``), so that it can be read again
    adapter: str | None = None

    @property
    def sha256(self) -> str:
        """sha256 of the whole tensor file: the known digest, else computed once and cached
        (:func:`file_sha256`)."""
        if self.digest is None or self.digest_scheme != "file":
            self.digest, self.digest_scheme = file_sha256(self.data_file), "file"
        return self.digest

    def provenance(self, reads=None) -> dict:
        """How provenance names this source: ``{"sha256", "scheme"[, "ranges"], "path"}``, ``path``
        being what the user named (a path as typed, or an hf:// reference), and ``adapter`` the one
        chosen, so that ``mptkit verify`` can read it again. The whole file's
        sha256 when it costs nothing more (known, cached, or the operation read at least half of
        the file: ``reads`` None means all of it); otherwise the sha256 of the header and of the
        byte ranges the :class:`~mptkit._tensor.Array` handles in ``reads`` cover, so that taking one
        task out of a 10 GB bank never reads the other 10 GB to name its source. A bank on the Hub
        adds ``"hub"``: repo, revision, commit, file, its LFS sha256, and whether it was read by
        ranges."""
        out = self._digest(reads)
        out["path"] = self.path
        if self.adapter:
            out["adapter"] = self.adapter
        if self.remote:
            out["hub"] = dict(self.remote)
        return out

    def _digest(self, reads) -> dict:
        if self.digest is not None and self.digest_scheme == "file":
            return {"sha256": self.digest, "scheme": "file"}
        if self.remote:  # no local file to hash by ranges: what main read is all there is
            return {"sha256": self.sha256, "scheme": "file"}
        cached = cached_sha256(self.data_file)
        ranges = None if reads is None or cached else _ranges_read(self.data_file, reads)
        if cached or ranges is None or 2 * sum(n for _, n in ranges) >= self.file_size:
            self.digest, self.digest_scheme = cached or file_sha256(self.data_file), "file"
            return {"sha256": self.digest, "scheme": "file"}
        return {
            "sha256": ranges_sha256(self.data_file, ranges),
            "scheme": "ranges",
            "ranges": [list(r) for r in ranges],
        }


def _ranges_read(path: str, reads):
    """The file ranges (offset, length), sorted and merged, that ``reads`` (Arrays) cover in
    ``path``, plus its safetensors header; None when that is not a safetensors file or nothing in
    ``reads`` comes from it (then the whole file counts as read)."""
    import struct

    spans = [(seg.offset, seg.length) for arr in reads for seg in arr.segments if seg.path == path]
    if not spans:
        return None
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
    except (OSError, struct.error):
        return None
    spans.append((0, 8 + n))
    merged: list[list[int]] = []
    for off, ln in sorted(spans):
        if merged and off <= merged[-1][0] + merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], off + ln - merged[-1][0])
        elif ln:
            merged.append([off, ln])
    return [tuple(m) for m in merged]


def ranges_sha256(path: str, ranges) -> str:
    """sha256 of the bytes of ``ranges`` of ``path``, concatenated in order."""
    h = hashlib.sha256()
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            for off, ln in ranges:
                for lo in range(0, ln, 8 << 20):
                    n = min(8 << 20, ln - lo)
                    data = os.pread(fd, n, off + lo)
                    if len(data) != n:
                        raise InvalidBank(f"{path}: the file ended early: it changed while being read")
                    h.update(data)
        finally:
            os.close(fd)
    except OSError as e:
        raise InvalidBank(
            f"{path}: cannot read the input any more ({e.strerror or e}); was it moved or deleted?"
        ) from None
    return h.hexdigest()


def _hash_cache_dir() -> str:
    base = os.environ.get("MPTKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "mptkit"
    )
    return os.path.join(base, "sha256")


def _cache_entry(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError as e:
        raise InvalidBank(
            f"{path}: cannot read the input any more ({e.strerror or e}); was it moved or deleted?"
        ) from None
    ident = f"{os.path.realpath(path)}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}"
    # surrogateescape: a file name that is not UTF-8 hashes by its bytes
    return os.path.join(_hash_cache_dir(), hashlib.sha1(ident.encode("utf-8", "surrogateescape")).hexdigest())


def cached_sha256(path: str) -> str | None:
    """The sha256 of ``path`` if the cache holds it for the file as it is now, else None."""
    try:
        with open(_cache_entry(path), encoding="ascii") as f:
            cached = f.read().strip()
    except OSError:
        return None
    return cached if re.fullmatch(r"[0-9a-f]{64}", cached) else None


def file_sha256(path: str, *, known: str | None = None) -> str:
    """sha256 of a file. Hashing a multi-GB bank costs a full read, so the digest is remembered
    under the file's identity (device, inode, size, mtime in ns), as git's index does: a changed
    file gets a new key. ``MPTKIT_CACHE`` (or ``$XDG_CACHE_HOME/mptkit``) holds the cache; a cache
    that cannot be written is simply not used. ``known``: the digest, computed while the file was
    written (a verified download), remembered without reading the file again."""
    entry = _cache_entry(path)
    if known is not None:
        _remember(entry, known)
        return known
    cached = cached_sha256(path)
    if cached:
        return cached
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(8 << 20):
                h.update(chunk)
    except OSError as e:
        raise InvalidBank(
            f"{path}: cannot read the input any more ({e.strerror or e}); was it moved or deleted?"
        ) from None
    digest = h.hexdigest()
    _remember(entry, digest)
    return digest


def _remember(entry: str, digest: str) -> None:
    try:
        os.makedirs(os.path.dirname(entry), exist_ok=True)
        tmp = f"{entry}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="ascii") as f:
            f.write(digest)
        os.replace(tmp, entry)
    except OSError:
        pass


@dataclass
class PromptBank:
    #: what the output plan calls this kind of object (:func:`mptkit.save`)
    output_kind: ClassVar[str] = "bank"
    tensors: dict[str, Array]
    task_names: list[str] | None = None
    #: adapter_config.json fields known for this bank (from a folder, or from a bare file's
    #: ``mptkit.config`` metadata); None when unknown
    config: dict | None = None
    provenance: list[dict] = field(default_factory=list)
    #: other safetensors metadata (not ``format``, not mptkit's keys), kept as is
    metadata: dict[str, str] = field(default_factory=dict)
    source: Source | None = None
    #: notes for the user from reading (e.g. names PEFT dropped); printed by inspect/validate
    notes: list[str] = field(default_factory=list)
    #: tensors an adapter folder holds beside the bank (a task head saved by PEFT's
    #: modules_to_save); carried unchanged into adapter-folder outputs
    extras: dict[str, Array] = field(default_factory=dict)

    # -- shapes -------------------------------------------------------------------------------
    @property
    def shared_only(self) -> bool:
        return "prefix_task_cols" not in self.tensors

    @property
    def num_tasks(self) -> int:
        """T (0 for a shared-only state dict)."""
        return 0 if self.shared_only else self.tensors["prefix_task_cols"].shape[0]

    @property
    def rank(self) -> int | None:
        return None if self.shared_only else self.tensors["prefix_task_cols"].shape[2]

    @property
    def num_tokens(self) -> int:
        """N = num_virtual_tokens x num_transformer_submodules."""
        return self.tensors["prompt_embeddings"].shape[0]

    @property
    def token_dim(self) -> int:
        return self.tensors["prompt_embeddings"].shape[1]

    @property
    def dtype(self) -> str:
        return self.tensors["prompt_embeddings"].dtype

    @property
    def where(self) -> str:
        """What messages call this bank: the path it was read from, else "the bank"."""
        return self.source.path if self.source else "the bank"

    @property
    def num_submodules(self) -> int | None:
        from ._schema import num_submodules

        return num_submodules(self.config) if self.config else None

    @property
    def num_virtual_tokens(self) -> int | None:
        return (self.config or {}).get("num_virtual_tokens")

    def source_paths(self) -> list[str]:
        """Every local file or folder this bank was read from, or still reads bytes from: where no
        output may land."""
        segments = [s.path for a in (*self.tensors.values(), *self.extras.values()) for s in a.segments if s.path]
        return [*input_paths(self), *sorted(set(segments))]

    def require_tasks(self, purpose: str) -> None:
        """A :class:`UsageError` when the bank holds only the shared prompt: ``purpose`` says what
        the tasks were needed for ("to export", "to compare", ...)."""
        if self.shared_only:
            raise UsageError(f"{self.where} holds only the shared prompt: there are no tasks {purpose}")

    def task_rows(self, idx: Sequence[int]) -> dict[str, Array]:
        """The shared prompt and the factors of the tasks ``idx`` (lazy handles, in that order)."""
        return {
            "prompt_embeddings": self.tensors["prompt_embeddings"],
            "prefix_task_cols": self.tensors["prefix_task_cols"].rows(idx),
            "prefix_task_rows": self.tensors["prefix_task_rows"].rows(idx),
        }

    def names(self) -> list[str]:
        """Task names, or their indices as strings where the bank names none."""
        return list(self.task_names) if self.task_names else [str(i) for i in range(self.num_tasks)]

    # -- tasks --------------------------------------------------------------------------------
    def task_index(self, ref: int | str) -> int:
        """A 0-based index from an index or a name; a clear error when neither fits."""
        return select_tasks(self, str(ref), allow_ranges=False)[0]

    def with_tensors(self, tensors: dict[str, Array], task_names: list[str] | None, **changes) -> PromptBank:
        """A new bank with these tensors (config numbers follow the shapes)."""
        cfg = dict(self.config) if self.config else None
        out = replace(self, tensors=tensors, task_names=task_names, config=cfg, notes=[], **changes)
        if cfg is not None:
            cfg["token_dim"] = out.token_dim
            if not out.shared_only:
                cfg["num_tasks"] = out.num_tasks
                cfg["num_ranks"] = out.rank
        return out

    def with_config(self, config: dict | None) -> PromptBank:
        """This bank with the user's adapter_config.json ``config`` fields set (task_type,
        num_virtual_tokens, num_transformer_submodules, base_model_name_or_path; checked by
        :func:`mptkit._options.config_fields`), for outputs from a source that carries no config."""
        from ._options import config_fields

        fields = config_fields(config)
        return replace(self, config={**(self.config or {}), **fields}) if fields else self

    def for_peft(self, version: str | None) -> PromptBank:
        """This bank with the config PEFT ``version`` writes, or as it is (:func:`~mptkit._peftfields.for_release`)."""
        from ._peftfields import for_release

        return replace(self, config=for_release(self.config, version)[0]) if version else self

    def provenance_entry(self, operation: str, arguments: dict, sources: Sequence[PromptBank] = (), reads=None) -> dict:
        """One provenance record for an operation on ``sources`` (self when empty). ``reads``: the
        source :class:`~mptkit._tensor.Array` handles the operation read, when it read only part of
        its sources (see :meth:`Source.provenance`); None means all of them."""
        srcs = []
        for b in sources or [self]:
            if b.source is not None:
                name = os.path.basename(os.path.normpath(b.source.path)) or b.source.path
                srcs.append({"name": name, **b.source.provenance(reads)})
        return {"operation": operation, "arguments": arguments, "sources": srcs, "mptkit_version": __version__}


def input_paths(*banks: PromptBank | None) -> list[str]:
    """The local files and folders ``banks`` were read from: where no output may land."""
    out: list[str] = []
    for b in banks:
        if b is not None and b.source is not None:
            out.append(b.source.data_file)
            if not b.source.path.startswith("hf://"):
                out.append(b.source.path)  # an adapter folder, not only the file inside it
    return out


_RANGE = re.compile(r"^([0-9]+)-([0-9]+)$")


def select_tasks(
    bank: PromptBank, spec: str | Sequence[int | str], allow_ranges: bool = True, unique: bool = False
) -> list[int]:
    """Task indices from ``"0,3,5-7"``, names (``"sst2,mnli"``), or a list of indices/names, in the
    order given. Unknown or out-of-range entries are a :class:`UsageError` that lists the tasks;
    with ``unique``, so is a task selected twice."""
    bank.require_tasks("to select from")
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    if not items or any(i == "" for i in items):
        raise UsageError(f"empty task selection {spec!r}; give indices (0,3,5-7) or names")
    T, names = bank.num_tasks, bank.task_names or []
    position: dict[str, int] | None = None  # name -> index, built on the first name: lookups stay O(1)
    out: list[int] = []
    for item in items:
        if isinstance(item, int) or (isinstance(item, str) and item.isascii() and item.isdigit()):  # not "²"
            idx = int(item)
            if not 0 <= idx < T:
                raise UsageError(
                    f"task {idx} is out of range: {bank.where} has {plural(T, 'task')} ({_task_list(bank)})"
                )
            out.append(idx)
            continue
        m = _RANGE.match(item) if allow_ranges else None
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            if a > b or b >= T:
                raise UsageError(
                    f"task range {item} does not fit: {bank.where} has {plural(T, 'task')} ({_task_list(bank)})"
                )
            out.extend(range(a, b + 1))
            continue
        if position is None:
            position = {}
            for i, n in enumerate(names):
                position.setdefault(n, i)  # the first of a repeated name, as list.index found it
        if item in position:
            out.append(position[item])
            continue
        raise UsageError(
            f"unknown task {item!r}: {bank.where} has {plural(T, 'task')} ({_task_list(bank)})"
            + _did_you_mean(item, names)
        )
    if unique and len(set(out)) != len(out):
        seen: set[int] = set()
        k = next(i for i in out if i in seen or seen.add(i))
        shown = spec if isinstance(spec, str) else ",".join(map(str, spec))
        what = f"task {k} ({bank.task_names[k]})" if bank.task_names else f"task {k}"
        raise UsageError(f"{what} is listed more than once in the selection {shown!r}")
    return out


def _did_you_mean(item: str, names: Sequence[str]) -> str:
    """`` (did you mean 'mnli'?)`` for the names nearest ``item`` (case ignored), else ""."""
    import difflib

    lower: dict[str, str] = {}
    for n in names:
        lower.setdefault(n.lower(), n)
    near = difflib.get_close_matches(item.lower(), list(lower), n=3, cutoff=0.6)
    if not near:
        return ""
    return " (did you mean " + " or ".join(repr(lower[n]) for n in near) + "?)"


def _task_list(bank: PromptBank) -> str:
    if bank.task_names:
        shown = bank.task_names[:20]
        more = f", ... {len(bank.task_names) - 20} more" if len(bank.task_names) > 20 else ""
        return "named " + ", ".join(shown) + more
    span = "index 0" if bank.num_tasks == 1 else f"indices 0 to {bank.num_tasks - 1}"
    return f"{span}; it names none"
