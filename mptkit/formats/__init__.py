"""Reading and writing prompt banks.

``read(path)`` takes a local ``.safetensors`` file, a PEFT adapter folder or a
``.bin``/``.pt``/``.pth`` pickle (weights only) and returns a :class:`~mptkit._bank.PromptBank`
whose tensors are still on disk. ``save(bank, path)`` writes a bare state dict (path ending in
``.safetensors``) or a PEFT adapter folder (any other path), atomically. This package knows only
local files: ``hf://`` references are resolved above it (:mod:`mptkit._io`, :mod:`mptkit.hub`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .. import _peftfields as fields
from .._bank import KEYS, PromptBank, input_paths
from .._schema import META_CONFIG, META_PROVENANCE, META_TASK_NAMES
from ..errors import InvalidBank, OutputError
from . import _atomic as atomic, _peft as peft, _safetensors as st, _targets as targets
from ._read import PICKLE_SUFFIXES, from_header, read

__all__ = [
    "PICKLE_SUFFIXES",
    "from_header",
    "read",
    "save",
    "check_output",
    "metadata_for",
    "folder_repairs",
    "folder_config",
]


# -- writing -------------------------------------------------------------------------------------
def is_file_output(path: str | os.PathLike) -> bool:
    """True for a bank-file output (``.safetensors``), False for a folder; an :class:`OutputError`
    for any other path (:func:`mptkit.formats._targets.output_kind`)."""
    return targets.output_kind(path) == "file"


def folder_repairs(bank: PromptBank, path: str | os.PathLike) -> list[str]:
    """What saving ``bank`` as an adapter folder at ``path`` changes in its config so that PEFT
    loads it (RANDOM init, no init path, no stale TEXT fields); empty for a ``.safetensors`` output."""
    return [] if is_file_output(path) else peft.repairs(bank.config)


def folder_config(bank: PromptBank, *, peft_version: str | None = None) -> tuple[dict, list[str]]:
    """The adapter_config.json an adapter folder of ``bank`` gets, and the fields of the bank's
    config it drops (those PEFT ``peft_version`` does not know): see
    :func:`mptkit._peftfields.build_config`."""
    return peft.complete_config(
        bank.config,
        num_tokens=bank.num_tokens,
        token_dim=bank.token_dim,
        num_tasks=max(bank.num_tasks, 1),
        num_ranks=bank.rank or 1,
        where=bank.where,
        peft_version=peft_version,
    )


def metadata_for(bank: PromptBank, *, with_config: bool) -> dict[str, str]:
    meta = {"format": "pt"}
    meta.update(bank.metadata)
    if bank.task_names:
        meta[META_TASK_NAMES] = json.dumps(bank.task_names, ensure_ascii=False)
    if bank.provenance:
        meta[META_PROVENANCE] = json.dumps(_valid_text(bank.provenance), ensure_ascii=False, sort_keys=True)
    hints = peft.config_hints(bank.config)
    if with_config and hints:
        meta[META_CONFIG] = json.dumps(hints, sort_keys=True)
    return meta


def _valid_text(obj):
    """``obj`` with every string made valid UTF-8: a file name that is not (``os.fsdecode`` keeps
    its bytes as lone surrogates) is recorded with those bytes escaped (``bad\\udcff``), since
    safetensors (and JSON parsers) refuse a header that is not UTF-8."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
            return obj
        except UnicodeEncodeError:
            return obj.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(obj, dict):
        return {_valid_text(k): _valid_text(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_valid_text(v) for v in obj]
    return obj


def replaceable_bank(target: Path, folder: bool) -> str | None:
    """What ``force`` may replace for a bank output: an empty folder, or a file or folder that holds
    nothing but a bank's files and that mptkit reads as a bank; else why not."""
    why = targets.replaceable_output(target, folder)
    if why or (folder and not any(target.iterdir())):
        return why
    try:
        read(target)
    except InvalidBank as e:
        return f"is not a bank mptkit reads ({e.message})"
    return None


def _target(bank: PromptBank, path, force: bool, inputs) -> tuple[Path, bool]:
    """The output path and whether it is a folder, after refusing what must never be written."""
    folder = not is_file_output(path)
    target = Path(path)
    srcs = [*inputs, *input_paths(bank)]
    srcs += sorted({seg.path for a in bank.tensors.values() for seg in a.segments if seg.path})  # every file read
    atomic.check_target(target, folder=folder, force=force, inputs=srcs, replaceable=replaceable_bank)
    return target, folder


def check_output(
    bank: PromptBank,
    path: str | os.PathLike,
    *,
    force: bool = False,
    inputs: tuple = (),
    peft_version: str | None = None,
) -> None:
    """Refuse an output that :func:`save` would refuse, before any work is done: a path that is not
    a ``.safetensors`` file or a folder, a Hub reference, an existing output without ``force`` (or,
    with it, one that is not a bank), the working directory, an input (``inputs``, or a file
    ``bank`` reads), a file where a folder is wanted (and the reverse), a folder that cannot be
    written, or a folder whose adapter config cannot be completed from ``bank.config`` (or
    ``peft_version`` is not a PEFT release mptkit writes for)."""
    if peft_version is not None:
        fields.check_version(peft_version)
    _, folder = _target(bank, path, force, inputs)
    if folder:
        folder_config(bank, peft_version=peft_version)


def save(
    bank: PromptBank,
    path: str | os.PathLike,
    *,
    force: bool = False,
    inputs: tuple = (),
    peft_version: str | None = None,
) -> Path:
    """Write ``bank`` to ``path``: a bare ``.safetensors`` state dict, or else a PEFT adapter folder.
    ``inputs`` are paths that must not be overwritten (the sources). A folder's adapter_config.json
    keeps the fields of the bank's own config (so the PEFT that wrote the source loads it), or, with
    ``peft_version``, has exactly the fields that PEFT release writes. Returns the path written."""
    if peft_version is not None:
        fields.check_version(peft_version)
    target, folder = _target(bank, path, force, inputs)
    tensors = {k: bank.tensors[k] for k in KEYS if k in bank.tensors}
    if not folder:
        with atomic.atomic_file(target, replace=force) as f:
            st.write(f, tensors, metadata_for(bank, with_config=True))
        return target
    if bank.shared_only:
        raise OutputError(
            f"{target}: an adapter folder needs task factors, but this bank holds only the shared prompt "
            "(write a .safetensors file, or give --num-tasks to add fresh factors)"
        )
    config, _ = folder_config(bank, peft_version=peft_version)
    with atomic.atomic_dir(target, replace=force) as tmp:
        with open(tmp / peft.SAFETENSORS_NAME, "xb") as f:
            st.write(f, {**tensors, **bank.extras}, metadata_for(bank, with_config=False))
        (tmp / peft.CONFIG_NAME).write_text(peft.config_text(config), encoding="utf-8")
    return target
