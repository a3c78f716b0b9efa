"""What every bank format shares: a read bank is checked against the schemas and its config before
it is returned (:func:`finish`), a task head PEFT saved beside it is set aside, and a written bank's
safetensors metadata says its names, provenance and config hints (:func:`metadata_for`)."""

from __future__ import annotations

import json
from pathlib import Path

from .._bank import PromptBank, Source
from .._schema import (
    META_CONFIG,
    META_PROVENANCE,
    META_TASK_NAMES,
    check_config,
    check_metadata,
    check_tensors,
    config_shape_problems,
    decode_metadata,
)
from ..errors import InvalidBank
from . import _peft as peft, _registry as registry, _targets as targets


def info(entry) -> dict:
    """A header entry's dtype and shape (what the schemas check)."""
    return {"dtype": entry["dtype"], "shape": entry["shape"]}


def finish(
    tensors: dict, arrays, meta, config, config_file, kind, data_file: str, source: Source, notes: list[str]
) -> PromptBank:
    """Check ``tensors`` (name -> dtype and shape), the metadata and the config; the bank, with the
    ``(arrays, extras)`` that ``arrays()`` makes once everything checked out."""
    problems = [f"{data_file}: {x}" for x in check_tensors(tensors, kind)]
    meta = meta or {}
    problems += [f"{data_file}: {x}" for x in check_metadata(meta)]
    names, provenance, hints = decode_metadata(meta) if not problems else (None, [], {})
    if config is None and hints:
        config = dict(hints)
    problems += config_problems(config, config_file, tensors, names, data_file)
    if problems:
        raise InvalidBank(problems[0], problems)
    if config_file is not None:
        notes = notes + peft.load_time_warnings(config, config_file)
    other = {k: v for k, v in meta.items() if k not in ("format", META_TASK_NAMES, META_PROVENANCE, META_CONFIG)}
    arrays, extras = arrays()
    return PromptBank(arrays, names, config, provenance, other, source, notes, extras)


def set_aside_heads(tensors: dict, config_file) -> tuple[list[str], list[str]]:
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
    return heads, [
        f"the adapter also holds a task head saved by PEFT's modules_to_save ({shown}); it is not part "
        "of the prompt bank: adapter-folder outputs carry it unchanged, .safetensors outputs leave it out"
    ]


def config_problems(config, config_file, tensors, names, data_file=None) -> list[str]:
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
        problems.append(
            f"{data_file}: __metadata__ key '{META_TASK_NAMES}' lists {len(names)} names "
            f"but the bank has T={cols[0]} tasks"
        )
    return problems


# -- writing -------------------------------------------------------------------------------------
def metadata_for(bank: PromptBank, *, with_config: bool) -> dict[str, str]:
    """The safetensors ``__metadata__`` of a written bank: PEFT's ``format``, the bank's other
    metadata, its task names and provenance, and (for a bare file) its config hints."""
    meta = {"format": "pt"}
    meta.update(bank.metadata)
    if bank.task_names:
        meta[META_TASK_NAMES] = json.dumps(bank.task_names, ensure_ascii=False)
    if bank.provenance:
        meta[META_PROVENANCE] = json.dumps(valid_text(bank.provenance), ensure_ascii=False, sort_keys=True)
    hints = peft.config_hints(bank.config)
    if with_config and hints:
        meta[META_CONFIG] = json.dumps(hints, sort_keys=True)
    return meta


def valid_text(obj):
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
        return {valid_text(k): valid_text(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [valid_text(v) for v in obj]
    return obj


def replaceable_bank(target: Path, folder: bool) -> str | None:
    """What ``force`` may replace for a bank output: an empty folder, or a file or folder that holds
    nothing but a bank's files and that mptkit reads as a bank; else why not."""
    why = targets.replaceable_output(target, folder)
    if why or (folder and not any(target.iterdir())):
        return why
    try:
        registry.read_bank(target)
    except InvalidBank as e:
        return f"is not a bank mptkit reads ({e.message})"
    return None
