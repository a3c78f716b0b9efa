"""The registry of formats: every way mptkit reads a path or writes an output is one :class:`Format`,
registered once (:func:`register`). Readers are found by what a path looks like
(:func:`find_reader`), writers by the kind of object written and the output's suffix (the output
plan, :mod:`mptkit.formats._plan`).

A format module defines one ``FORMAT`` (or a few) and ``mptkit/formats/__init__.py`` registers it
with one line; a plugin calls :func:`mptkit.formats.register` the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError


@dataclass(frozen=True)
class Format:
    """One format. Reading: ``recognise(path)`` says (cheaply: a suffix, a file name, a sniff of the
    first bytes) whether ``path`` is in this format; ``read_bank(path, shown, kind=, adapter=)``
    returns a :class:`~mptkit.PromptBank` and ``read_prompts(path)`` a
    :class:`~mptkit.formats.Prompts` (a format that reads banks gives each task's full prompt
    without one). Writing: ``writes`` names the kind of object written (``"bank"``, ``"adapter"``,
    ``"prompts"``, ``"image"``, ...: an object says its kind in ``output_kind``); ``suffixes`` the
    output names it takes (``folder=True``: a folder, no suffix); ``write(obj, out, target)`` writes
    into ``out``, the open temporary file (or the temporary folder) that the output plan installs
    atomically at ``target``; ``sidecar(obj, path)`` gives another small file written beside the output
    (``(path, bytes)``) or None; ``check(obj, path)`` refuses, before any work, an object (or a
    stand-in of it) that this format cannot hold; ``warnings(obj)`` lists what the format will write
    but a reader of it may refuse (said before the work, not refused); ``replaceable(path, folder)``
    says what ``--force`` may replace (None: it may). A format with ``by_suffix=False`` is only
    written when asked for by name (``format=``/``--format``)."""

    name: str
    description: str
    #: what an output in this format is, in a few words ("a bare state dict"), for messages
    label: str = ""
    recognise: Callable[[Path], bool] | None = None
    read_bank: Callable[..., Any] | None = None
    read_prompts: Callable[[Path], Any] | None = None
    #: tried only after every other format (the safetensors reader takes any other file)
    fallback: bool = False
    writes: str | None = None
    suffixes: tuple[str, ...] = ()
    folder: bool = False
    by_suffix: bool = True
    write: Callable[[Any, Any], None] | None = None
    sidecar: Callable[[Any, Path], tuple[Path, bytes] | None] | None = None
    check: Callable[[Any, Path], None] | None = None
    warnings: Callable[[Any], list[str]] | None = None
    replaceable: Callable[[Path, bool], str | None] | None = None


_FORMATS: list[Format] = []


def register(fmt: Format) -> Format:
    """Add ``fmt`` (a :class:`Format`) to the registry and return it. A name is registered once:
    registering another format under a name already taken is an error (unregister it first)."""
    if not isinstance(fmt, Format):
        raise TypeError(f"register() takes a mptkit.formats.Format, not {type(fmt).__name__}")
    if any(f.name == fmt.name for f in _FORMATS):
        raise UsageError(f"a format named {fmt.name!r} is already registered")
    if fmt.writes and not fmt.write:
        raise TypeError(f"format {fmt.name!r} says it writes {fmt.writes!r} objects but has no write()")
    _FORMATS.append(fmt)
    return fmt


def unregister(name: str) -> None:
    """Remove the format named ``name`` (a plugin's, say); unknown names are ignored."""
    _FORMATS[:] = [f for f in _FORMATS if f.name != name]


def formats() -> tuple[Format, ...]:
    """Every registered format: specific ones in registration order, then the fallbacks."""
    return tuple([f for f in _FORMATS if not f.fallback] + [f for f in _FORMATS if f.fallback])


def get(name: str) -> Format:
    for f in _FORMATS:
        if f.name == name:
            return f
    raise UsageError(f"unknown format {name!r}; registered formats: {', '.join(f.name for f in _FORMATS)}")


def find_reader(path: Path, want: str) -> Format | None:
    """The first format that recognises ``path`` and reads ``want`` ("bank" or "prompts"; a bank
    reader also gives prompts)."""
    for f in formats():
        can = f.read_bank is not None or (want == "prompts" and f.read_prompts is not None)
        if can and f.recognise is not None and f.recognise(path):
            return f
    return None


def writers(kind: str) -> list[Format]:
    """The formats that write objects of ``kind``, in registration order."""
    return [f for f in formats() if f.writes == kind]


# -- reading through the registry ----------------------------------------------------------------
def read_bank(path, *, kind: str | None = None, adapter: str | None = None):
    """A bank from a local path, read by the first format that recognises it (headers only: tensor
    data stays on disk). ``kind`` forces a schema ("bank", "task", "shared"); ``adapter`` picks one
    of several adapters."""
    import os

    from ..errors import InvalidBank

    name = os.fspath(path)
    p = Path(name)
    if not p.is_dir() and not p.exists():
        raise InvalidBank(f"{name}: no such file or folder")
    fmt = find_reader(p, "bank")
    if fmt is None:
        raise InvalidBank(f"{name}: no registered format reads it")
    return fmt.read_bank(p, name, kind=kind, adapter=adapter)


def read_prompts(paths):
    """Single-task prompts from every path (PEFT PROMPT_TUNING adapter folders or folders of them,
    prompt tables, files holding one ``prompt_embeddings``, and MPT banks: each task's full
    prompt), as one :class:`~mptkit.formats.Prompts`; every prompt must have one shape."""
    import os

    from .._peftfields import PT, as_type
    from .._rows import Chain, TableRows
    from ..errors import InvalidBank
    from ._objects import Prompts, bank_prompts

    out = Prompts(Chain(), [], [])
    configs = []
    for path in paths:
        p = Path(os.fspath(path))
        if not p.is_dir() and not p.exists():
            raise InvalidBank(f"{p}: no such file or folder")
        fmt = find_reader(p, "prompts")
        if fmt is None:
            raise UsageError(
                f"{p}: not a prompt input: give PROMPT_TUNING adapter folders, .npy or .safetensors tables"
            )
        found = fmt.read_prompts(p) if fmt.read_prompts else bank_prompts(fmt.read_bank(p, str(p)))
        arrays, names, sources, config = found
        for a, n in [(arrays, names[0])] if isinstance(arrays, TableRows) and names else zip(arrays, names):
            if out.arrays and a.shape != out.arrays[0].shape:
                raise UsageError(
                    f"{path}: prompt {n!r} is {a.shape[0]} x {a.shape[1]} (N x d), but {out.where[0]}'s "
                    f"are {out.shape[0]} x {out.shape[1]}: one bank needs one prompt length and hidden size"
                )
            out.arrays.extend(a if isinstance(a, TableRows) else [a])
        out.names += names
        out.where += [os.fspath(path)] * len(names)
        out.sources += sources
        configs.append(as_type(config, PT))  # a bank's config as its PEFT writes one prompt's
    if not out.arrays:
        raise UsageError("no prompts given: name PROMPT_TUNING adapter folders or prompt tables")
    known = [c for c in configs if c]
    out.config = {k: v for k, v in known[0].items() if all(k in c and c[k] == v for c in known)} if known else None
    return out
