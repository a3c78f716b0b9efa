"""Reading and writing prompt banks.

``read(path)`` takes a local ``.safetensors`` file, a PEFT adapter folder or a
``.bin``/``.pt``/``.pth`` pickle (weights only) and returns a :class:`~mptkit.bank.PromptBank`
whose tensors are still on disk. ``save(bank, path)`` writes a bare state dict (path ending in
``.safetensors``) or a PEFT adapter folder (any other path), atomically. This package knows only
local files: ``hf://`` references are resolved above it (:mod:`mptkit.io`, :mod:`mptkit.hub`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..bank import KEYS, PromptBank, Source, input_paths
from ..errors import InvalidBank, OutputError
from ..schema import (
    META_CONFIG,
    META_PROVENANCE,
    META_TASK_NAMES,
    check_config,
    check_metadata,
    check_tensors,
    config_shape_problems,
)
from ..tensor import Array
from . import atomic, peft, targets
from . import safetensors as st

PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
#: said when an adapter's metadata is exactly what PEFT's save_pretrained writes
PEFT_METADATA_NOTE = (
    'no task names or provenance: the metadata is {"format": "pt"} as PEFT\'s save_pretrained writes it, '
    "and PEFT drops any that mptkit stored (name the tasks with `mptkit rename --names`)")


def read(path: str | os.PathLike, *, kind: str | None = None) -> PromptBank:
    """Read a bank from a local path (headers only; tensor data stays on disk). Every problem found
    is listed in the raised :class:`InvalidBank`'s ``problems``. ``kind`` forces a schema ("bank",
    "task", "shared"); by default a file holding only ``prompt_embeddings`` is checked as
    shared-only. (:func:`mptkit.load` also takes ``hf://`` references.)"""
    name = os.fspath(path)
    p = Path(name)
    if p.is_dir():
        return _load_folder(p, kind)
    if not p.exists():
        raise InvalidBank(f"{name}: no such file or folder")
    if p.suffix.lower() in PICKLE_SUFFIXES:
        return _load_pickle(p, name, "pickle", kind)
    return _load_safetensors(p, name, "safetensors", kind)


def _load_safetensors(p: Path, shown: str, fmt: str, kind: str | None, config: dict | None = None,
                      config_file: str | None = None) -> PromptBank:
    return from_header(st.read_header(str(p)), shown=shown, fmt=fmt, kind=kind, config=config, config_file=config_file)


def from_header(header: st.Header, *, shown: str, fmt: str, kind: str | None = None, config: dict | None = None,
                config_file: str | None = None) -> PromptBank:
    """A bank from a parsed safetensors header (a local file's, or a remote one read with range
    requests by :mod:`mptkit.hub`), checked against the schemas and ``config``."""
    p = header.path
    tensors = {k: {"dtype": v["dtype"], "shape": v["shape"]} for k, v in header.tensors.items()}
    heads, notes = _set_aside_heads(tensors, config_file)
    problems = [f"{p}: {x}" for x in check_tensors(tensors, kind)]
    meta = header.metadata or {}
    problems += [f"{p}: {x}" for x in check_metadata(meta)]
    names, provenance, hints = _decode_meta(meta) if not problems else (None, [], {})
    if config is None and hints:
        config = dict(hints)
    problems += _config_problems(config, config_file, tensors, names, p)
    if problems:
        raise InvalidBank(problems[0], problems)
    arrays = {k: header.array(k) for k in tensors}
    extras = {k: header.array(k) for k in heads}
    other = {k: v for k, v in meta.items() if k not in ("format", META_TASK_NAMES, META_PROVENANCE, META_CONFIG)}
    source = Source(shown, fmt, str(p), header.file_size)
    if fmt == "peft-adapter" and meta == {"format": "pt"} and tensors.get("prefix_task_cols", {}).get("shape", [0])[0] > 1:
        notes.append(PEFT_METADATA_NOTE)
    return PromptBank(arrays, names, config, provenance, other, source, notes, extras)


def _load_pickle(p: Path, shown: str, fmt: str, kind: str | None, config: dict | None = None,
                 config_file: str | None = None) -> PromptBank:
    from . import pickle as pk

    raw = pk.read(str(p))
    arrays, tensors, problems = {}, {}, []
    for k, t in raw.items():
        try:
            arrays[k] = Array.from_torch(t)
            tensors[k] = {"dtype": arrays[k].dtype, "shape": list(arrays[k].shape)}
        except ValueError:
            tensors[k] = {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
    heads, notes = _set_aside_heads(tensors, config_file)
    extras = {k: arrays.pop(k) for k in heads if k in arrays}
    problems += [f"{p}: {x}" for x in check_tensors(tensors, kind)]
    problems += _config_problems(config, config_file, tensors, None, p)
    if problems:
        raise InvalidBank(problems[0], problems)
    return PromptBank(arrays, None, config, [], {}, Source(shown, fmt, str(p), p.stat().st_size), notes, extras)


def _set_aside_heads(tensors: dict, config_file) -> tuple[list[str], list[str]]:
    """PEFT saves the task head of classification and QA adapters (``modules_to_save``) beside the
    prompt bank, as ``base_model.*`` tensors, and needs it back to load the adapter. It is not part
    of the bank: take those names out of ``tensors`` (in place) so the bank is checked alone, and
    return them with a note. The head travels unchanged into adapter-folder outputs."""
    heads = sorted(k for k in tensors if k.startswith("base_model.")) if config_file is not None else []
    for k in heads:
        del tensors[k]
    if not heads:
        return [], []
    shown = ", ".join(heads[:4]) + (f", ... ({len(heads)} in all)" if len(heads) > 4 else "")
    return heads, [f"the adapter also holds a task head saved by PEFT's modules_to_save ({shown}); it is not part "
                   "of the prompt bank: adapter-folder outputs carry it unchanged, .safetensors outputs leave it out"]


def _load_folder(p: Path, kind: str | None) -> PromptBank:
    cfg_path = p / peft.CONFIG_NAME
    weights = [p / peft.SAFETENSORS_NAME, p / peft.BIN_NAME]
    if not cfg_path.is_file():
        found = sorted(x.name for x in p.iterdir())[:8]
        raise InvalidBank(
            f"{p}: not a PEFT adapter folder: {peft.CONFIG_NAME} is missing (found: {', '.join(found) or 'nothing'})"
        )
    config = peft.read_config(cfg_path)
    if isinstance(config, dict) and config.get("peft_type") not in (None, "MULTITASK_PROMPT_TUNING"):
        raise InvalidBank(
            f"{cfg_path}: field peft_type: expected \"MULTITASK_PROMPT_TUNING\", found {json.dumps(config.get('peft_type'))}"
            " (this adapter is not a multitask prompt tuning bank)"
        )
    if weights[0].is_file():
        return _load_safetensors(weights[0], str(p), "peft-adapter", kind, config, str(cfg_path))
    if weights[1].is_file():
        return _load_pickle(weights[1], str(p), "peft-adapter (.bin)", kind, config, str(cfg_path))
    raise InvalidBank(f"{p}: the adapter folder has no {peft.SAFETENSORS_NAME} or {peft.BIN_NAME}")


def _config_problems(config, config_file, tensors, names, data_file=None) -> list[str]:
    problems = []
    if config_file is not None:
        problems += [f"{config_file}: {x}" for x in check_config(config)]
        if problems:
            return problems
    if isinstance(config, dict):
        where = config_file or f"{data_file}: __metadata__ key '{META_CONFIG}'"
        problems += [f"{where}: {x}" for x in config_shape_problems(config, tensors)]
    cols = tensors.get("prefix_task_cols", {}).get("shape")
    if names is not None and cols and len(cols) == 3 and len(names) != cols[0]:
        problems.append(f"{data_file}: __metadata__ key '{META_TASK_NAMES}' lists {len(names)} names "
                        f"but the bank has T={cols[0]} tasks")
    return problems


def _decode_meta(meta: dict):
    names = json.loads(meta[META_TASK_NAMES]) if META_TASK_NAMES in meta else None
    prov = json.loads(meta[META_PROVENANCE]) if META_PROVENANCE in meta else []
    hints = json.loads(meta[META_CONFIG]) if META_CONFIG in meta else {}
    return names, prov, hints


# -- writing -------------------------------------------------------------------------------------
def is_file_output(path: str | os.PathLike) -> bool:
    """True for a bank-file output (``.safetensors``), False for a folder; an :class:`OutputError`
    for any other path (:func:`mptkit.formats.targets.output_kind`)."""
    return targets.output_kind(path) == "file"


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


def check_output(bank: PromptBank, path: str | os.PathLike, *, force: bool = False, inputs: tuple = ()) -> None:
    """Refuse an output that :func:`save` would refuse, before any work is done: a path that is not
    a ``.safetensors`` file or a folder, a Hub reference, an existing output without ``force`` (or,
    with it, one that is not a bank), the working directory, an input (``inputs``, or a file
    ``bank`` reads), a file where a folder is wanted (and the reverse), a folder that cannot be
    written, or a folder whose adapter config cannot be completed from ``bank.config``."""
    _, folder = _target(bank, path, force, inputs)
    if folder:
        peft.complete_config(bank.config, num_tokens=bank.num_tokens, token_dim=bank.token_dim,
                             num_tasks=max(bank.num_tasks, 1), num_ranks=bank.rank or 1, where=bank.where)


def save(bank: PromptBank, path: str | os.PathLike, *, force: bool = False, inputs: tuple = ()) -> Path:
    """Write ``bank`` to ``path``: a bare ``.safetensors`` state dict, or else a PEFT adapter folder.
    ``inputs`` are paths that must not be overwritten (the sources). Returns the path written."""
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
    where = bank.where
    config = peft.complete_config(bank.config, num_tokens=bank.num_tokens, token_dim=bank.token_dim,
                                  num_tasks=bank.num_tasks, num_ranks=bank.rank, where=where)
    with atomic.atomic_dir(target, replace=force) as tmp:
        with open(tmp / peft.SAFETENSORS_NAME, "xb") as f:
            st.write(f, {**tensors, **bank.extras}, metadata_for(bank, with_config=False))
        (tmp / peft.CONFIG_NAME).write_text(peft.config_text(config), encoding="utf-8")
    return target
