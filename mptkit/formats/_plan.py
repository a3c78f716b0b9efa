"""The one output plan: every output mptkit writes goes through :func:`plan` and :meth:`Output.write`.

``plan(path, kind, ...)`` turns an output path, the kind of object that will be written there
(``"bank"``, ``"adapter"``, ``"prompts"``, ``"image"``, ...), ``--force`` and the inputs into a
checked :class:`Output`, before any work is done:

- the writer: the registered format (:mod:`mptkit.formats._registry`) that writes this kind of
  object under this name: by suffix (``.safetensors``, ``.npy``, ``.png``), a folder for a path
  with no suffix (or ending in ``/``), or by name (``format=``); any other suffix, ``-`` or a near
  miss is refused with a suggestion (:func:`mptkit.formats._targets.output_kind`);
- the target (:func:`mptkit.formats._targets.check_target`): not the working directory, not an
  input or inside or around one (compared by what the file system says, device and inode), not an
  existing output without ``force``, with it only something this format may replace, writable;
- the object itself, where a stand-in of it is given (``like=``): what the format cannot hold
  (a folder's config that cannot be completed, bfloat16 in a ``.npy``).

:meth:`Output.write` checks again (cheaply; the world may have changed during the work), writes
into a temporary file or folder beside the target and installs it atomically
(:mod:`mptkit.formats._atomic`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from . import _atomic as atomic, _registry as registry, _targets as targets
from ._registry import Format


def kind_of(obj) -> str:
    kind = getattr(type(obj), "output_kind", None)
    if not isinstance(kind, str):
        raise TypeError(f"mptkit does not know how to write a {type(obj).__name__}")
    return kind


def inputs_of(obj) -> list[str]:
    """The files and folders ``obj`` was read from (no output may land on them)."""
    paths = getattr(obj, "source_paths", None)
    return list(paths()) if callable(paths) else []


@dataclass
class Output:
    """A checked output: where, the format that writes it, what ``--force`` allows, the inputs it
    must not touch. Made by :func:`plan`; :meth:`write` writes an object there."""

    path: Path
    format: Format
    force: bool
    inputs: list[str] = field(default_factory=list)
    #: files written beside the output (a .npy table's .tasks.json), known once an object is given
    extra: list[Path] = field(default_factory=list)
    _checked: object = None

    @property
    def folder(self) -> bool:
        return self.format.folder

    @property
    def written(self) -> list[Path]:
        """Every path this output writes (the output, then the files beside it)."""
        return [self.path, *self.extra]

    def write(self, obj) -> Path:
        """Write ``obj`` here, atomically; returns the output's path."""
        fmt = self.format
        if kind_of(obj) != fmt.writes:
            raise TypeError(f"{self.path}: planned for {fmt.writes} objects, given a {kind_of(obj)}")
        inputs = [*self.inputs, *inputs_of(obj)]
        _check(self.path, fmt, self.force, inputs)  # again: the work may have taken a while
        if fmt.check is not None and obj is not self._checked:
            fmt.check(obj, self.path)
        side = fmt.sidecar(obj, self.path) if fmt.sidecar else None
        if side is not None:
            _check_file(side[0], self.force, inputs)
            self.extra = [side[0]]
        if fmt.folder:
            with atomic.atomic_dir(self.path, replace=self.force) as tmp:
                fmt.write(obj, tmp, self.path)
            return self.path
        with contextlib.ExitStack() as stack:
            if side is not None:
                stack.enter_context(atomic.atomic_file(side[0], replace=self.force)).write(side[1])
            fmt.write(obj, stack.enter_context(atomic.atomic_file(self.path, replace=self.force)), self.path)
        return self.path


def plan(
    path: str | os.PathLike,
    kind: str,
    *,
    format: str | None = None,
    force: bool = False,
    inputs=(),
    like=None,
) -> Output:
    """A checked :class:`Output` for writing an object of ``kind`` at ``path`` (see the module
    doc). ``format`` names the writer instead of the suffix; ``inputs`` are paths that must not be
    overwritten (besides what ``like`` was read from); ``like`` is the object, or a stand-in with
    its shapes and config, checked against the format before any work."""
    fmt = choose(path, kind, format)
    target = Path(path)
    ins = [os.fspath(p) for p in inputs] + (inputs_of(like) if like is not None else [])
    _check(target, fmt, force, ins)
    out = Output(target, fmt, force, ins)
    if like is not None:
        if fmt.check is not None:
            fmt.check(like, target)
        out._checked = like
        side = fmt.sidecar(like, target) if fmt.sidecar else None
        if side is not None:
            _check_file(side[0], force, ins)
            out.extra = [side[0]]
    return out


def choose(path: str | os.PathLike, kind: str, format: str | None = None) -> Format:
    """The registered format that writes ``kind`` at ``path`` (or the one named ``format``)."""
    candidates = registry.writers(kind)
    if not candidates:
        raise TypeError(f"no registered format writes {kind} objects")
    if format is not None:
        fmt = next((f for f in candidates if f.name == format), None)
        if fmt is None:
            names = ", ".join(f.name for f in candidates)
            raise UsageError(f"--format {format}: not a format for this output; choose one of {names}")
        if fmt.folder:
            targets.output_kind(path, files={})
        else:
            targets.output_kind(
                path, files=dict.fromkeys(fmt.suffixes, fmt.name), folders=False, labels={fmt.name: fmt.label}
            )
        return fmt
    by_suffix = [f for f in candidates if f.by_suffix]
    files = {s: f.name for f in by_suffix if not f.folder for s in f.suffixes}
    folder = next((f for f in by_suffix if f.folder), None)
    labels = {f.name: f.label for f in by_suffix if not f.folder}
    labels["folder"] = folder.label if folder else ""
    got = targets.output_kind(path, files=files, folders=folder is not None, labels=labels)
    return folder if got == "folder" else next(f for f in by_suffix if f.name == got)


def _check(target: Path, fmt: Format, force: bool, inputs) -> None:
    targets.check_target(target, folder=fmt.folder, force=force, inputs=inputs, replaceable=fmt.replaceable)


def _check_file(path: Path, force: bool, inputs) -> None:
    targets.check_target(path, folder=False, force=force, inputs=inputs)


def save(obj, path: str | os.PathLike, *, format: str | None = None, force: bool = False, inputs=()) -> Path:
    """Write ``obj`` (a bank, an adapter, a prompt table, an image, ...) to ``path`` through the
    plan; returns the path written."""
    return plan(path, kind_of(obj), format=format, force=force, inputs=inputs, like=obj).write(obj)
