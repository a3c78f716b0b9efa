"""Reading banks from local paths: the forms :func:`read` recognises and how each is read."""

from __future__ import annotations

import json
import os
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
from .._tensor import DTYPES
from ..errors import InvalidBank, UsageError
from . import _checkpoints as checkpoints, _peft as peft, _safetensors as st

PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
#: said when an adapter's metadata is exactly what PEFT's save_pretrained writes
PEFT_METADATA_NOTE = (
    'no task names or provenance: the metadata is {"format": "pt"} as PEFT\'s save_pretrained writes it, '
    "and PEFT drops any that mptkit stored (name the tasks with `mptkit rename --names`)"
)
PICKLE_NOTE = (
    "{file} is a pickle: the whole file had to be unpickled (torch.load, weights only{mapped}) to find "
    "the bank among its {n} tensors; every other form is read header first"
)


def read(path: str | os.PathLike, *, kind: str | None = None, adapter: str | None = None) -> PromptBank:
    """Read a bank from a local path (headers only; tensor data stays on disk). Every problem found
    is listed in the raised :class:`InvalidBank`'s ``problems``. ``kind`` forces a schema ("bank",
    "task", "shared"); by default a file holding only ``prompt_embeddings`` is checked as
    shared-only. ``adapter`` picks one of several adapters (a PEFT folder with named adapters, a
    state dict with several prompt encoders). (:func:`mptkit.load` also takes ``hf://`` references.)"""
    name = os.fspath(path)
    p = Path(name)
    if p.is_dir():
        return _load_folder(p, name, kind, adapter)
    if not p.exists():
        raise InvalidBank(f"{name}: no such file or folder")
    if p.name.lower().endswith(".index.json"):
        return _load_sharded(p, name, kind, adapter)
    if p.suffix.lower() in PICKLE_SUFFIXES:
        return _load_pickle(p, name, "pickle", kind, adapter=adapter)
    return _load_safetensors(p, name, "safetensors", kind, adapter=adapter)


def _load_safetensors(
    p: Path,
    shown: str,
    fmt: str,
    kind: str | None,
    config: dict | None = None,
    config_file: str | None = None,
    adapter: str | None = None,
) -> PromptBank:
    return from_header(
        st.read_header(str(p)), shown=shown, fmt=fmt, kind=kind, config=config, config_file=config_file, adapter=adapter
    )


def from_header(
    header: st.Header,
    *,
    shown: str,
    fmt: str,
    kind: str | None = None,
    config: dict | None = None,
    config_file: str | None = None,
    adapter: str | None = None,
) -> PromptBank:
    """A bank from a parsed safetensors header (a local file's, or a remote one read with range
    requests by :mod:`mptkit.hub`), checked against the schemas and ``config``. In a whole-model
    or prompt-encoder state dict only the bank's tensors are looked at."""
    found = checkpoints.choose(checkpoints.find_banks(header.tensors), adapter, shown)
    if found is not None and found.form != "bank":
        tensors = {k: _info(header.tensors[v]) for k, v in found.keys.items()}
        note = (
            f"read {len(tensors)} tensors ({found.label}) from {header.path}, a {found.form} state dict of "
            f"{len(header.tensors):,} tensors; no other tensor was read"
        )
        fmt = f"{found.form} safetensors" if fmt == "safetensors" else fmt
        return _finish(
            tensors,
            lambda: ({k: header.array(v) for k, v in found.keys.items()}, {}),
            header.metadata,
            config,
            config_file,
            kind,
            header.path,
            Source(shown, fmt, header.path, header.file_size),
            [note],
        )
    tensors = {k: _info(v) for k, v in header.tensors.items()}
    heads, notes = _set_aside_heads(tensors, config_file)
    bad = next((k for k in heads if header.tensors[k]["dtype"] not in DTYPES), None)
    if bad is not None:
        raise InvalidBank(
            f"{header.path}: tensor {bad!r} (a task head) is {header.tensors[bad]['dtype']}, a dtype mptkit "
            f"cannot carry into an output (expected one of {', '.join(DTYPES)})"
        )
    bank = _finish(
        tensors,
        lambda: ({k: header.array(k) for k in tensors}, {k: header.array(k) for k in heads}),
        header.metadata,
        config,
        config_file,
        kind,
        header.path,
        Source(shown, fmt, header.path, header.file_size),
        notes,
    )
    meta = header.metadata or {}
    if fmt == "peft-adapter" and meta == {"format": "pt"} and bank.num_tasks > 1:
        bank.notes.append(PEFT_METADATA_NOTE)
    return bank


def _info(entry) -> dict:
    return {"dtype": entry["dtype"], "shape": entry["shape"]}


def _finish(
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
    problems += _config_problems(config, config_file, tensors, names, data_file)
    if problems:
        raise InvalidBank(problems[0], problems)
    if config_file is not None:
        notes = notes + peft.load_time_warnings(config, config_file)
    other = {k: v for k, v in meta.items() if k not in ("format", META_TASK_NAMES, META_PROVENANCE, META_CONFIG)}
    arrays, extras = arrays()
    return PromptBank(arrays, names, config, provenance, other, source, notes, extras)


def _load_pickle(
    p: Path,
    shown: str,
    fmt: str,
    kind: str | None,
    config: dict | None = None,
    config_file: str | None = None,
    adapter: str | None = None,
) -> PromptBank:
    from . import _pickle as pk

    obj, members = pk.load(str(p))
    candidates = pk.state_dicts(obj)
    if not candidates:
        raise InvalidBank(f"{p}: expected a dict of tensors (a state dict), found a {type(obj).__name__}")
    where, sd, found = candidates[0][0], candidates[0][1], None
    for w, d in candidates:
        banks = checkpoints.find_banks(d)
        if banks:
            where, sd = w, d
            found = checkpoints.choose(banks, adapter, shown)
            break
    else:
        checkpoints.choose({}, adapter, shown)
    picked = {k: sd[v] for k, v in found.keys.items()} if found and found.form != "bank" else dict(sd)
    heads, notes = _set_aside_heads(dict.fromkeys(picked), config_file)
    arrays, tensors = {}, {}
    for k, t in picked.items():
        try:  # a zip checkpoint's tensors stay in the file, read when needed like a safetensors bank's
            arrays[k] = pk.array(str(p), found.keys.get(k, k) if found else k, t, members)
            tensors[k] = {"dtype": arrays[k].dtype, "shape": list(arrays[k].shape)}
        except ValueError:
            tensors[k] = {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
    count = len(sd)
    del obj, candidates, sd, picked
    extras = {k: arrays.pop(k) for k in heads if k in arrays}
    for k in heads:
        tensors.pop(k, None)
    inside = f" (under {where})" if where else ""
    if found is not None and found.form != "bank":
        fmt = f"{found.form} pickle" if fmt == "pickle" else fmt
        notes.append(f"read {found.label}{inside} from {p}")
    mapped = ", its tensor data left in the file" if members is not None else ""
    notes.append(PICKLE_NOTE.format(file=p.name, mapped=mapped, n=f"{count:,}"))
    return _finish(
        tensors,
        lambda: (arrays, extras),
        None,
        config,
        config_file,
        kind,
        str(p),
        Source(shown, fmt, str(p), p.stat().st_size),
        notes,
    )


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
    return heads, [
        f"the adapter also holds a task head saved by PEFT's modules_to_save ({shown}); it is not part "
        "of the prompt bank: adapter-folder outputs carry it unchanged, .safetensors outputs leave it out"
    ]


def _load_folder(p: Path, shown: str, kind: str | None, adapter: str | None) -> PromptBank:
    """A PEFT adapter folder (or one of its named adapters), a whole-model save, a sharded one; a
    Trainer output_dir is refused with the checkpoint to give instead."""
    cfg = p / peft.CONFIG_NAME
    adapters = {"default": p} if (cfg.exists() or cfg.is_symlink()) else {}
    for name, sub in checkpoints.named_adapters(p, peft.CONFIG_NAME).items():
        adapters.setdefault(name, sub)
    if adapters:
        listed = ", ".join(f"{n} ({'the folder itself' if f == p else f.name + '/'})" for n, f in adapters.items())
        if adapter is None and len(adapters) > 1:
            raise UsageError(f"{shown} holds {len(adapters)} adapters: {listed}; choose one with --adapter NAME")
        if adapter is not None and adapter not in adapters:
            raise UsageError(f"{shown} holds no adapter named {adapter!r}; it holds: {listed}")
        name = adapter or next(iter(adapters))
        folder = adapters[name]
        bank = _load_adapter(folder, shown if folder == p else str(folder), kind)
        if len(adapters) > 1:
            bank.notes.append(f"the folder holds {len(adapters)} adapters: {listed}; read {name!r} (--adapter)")
        steps = checkpoints.checkpoints(p) if folder == p else []
        if steps:
            bank.notes.append(
                f"the folder also holds {len(steps)} Trainer checkpoint(s) (newest: {steps[0][1]}); "
                "this is the adapter saved at its root"
            )
        return bank
    for index, loader in ((checkpoints.SAFETENSORS_INDEX, _load_sharded), (checkpoints.BIN_INDEX, _load_sharded)):
        if (p / index).exists():
            return loader(p / index, shown, kind, adapter)
    for whole in checkpoints.WHOLE_MODEL_FILES:
        if (p / whole).exists():
            load = _load_pickle if whole.endswith(".bin") else _load_safetensors
            return load(p / whole, shown, "pickle" if whole.endswith(".bin") else "safetensors", kind, adapter=adapter)
    found = checkpoints.checkpoints(p)
    if found:
        raise checkpoints.trainer_output_error(p, found)
    names = sorted(x.name for x in p.iterdir())[:8]
    hint = ""
    if peft.SAFETENSORS_NAME in names or peft.BIN_NAME in names:
        hint = "; to read the weights alone, give the file itself"
    raise InvalidBank(
        f"{p}: not a PEFT adapter folder: {peft.CONFIG_NAME} is missing (found: {', '.join(names) or 'nothing'}){hint}"
    )


def _load_adapter(p: Path, shown: str, kind: str | None) -> PromptBank:
    cfg_path = p / peft.CONFIG_NAME
    config = peft.read_config(cfg_path)
    if isinstance(config, dict) and config.get("peft_type") not in (None, "MULTITASK_PROMPT_TUNING"):
        raise InvalidBank(
            f'{cfg_path}: field peft_type: expected "MULTITASK_PROMPT_TUNING", '
            f"found {json.dumps(config.get('peft_type'))}"
            " (this adapter is not a multitask prompt tuning bank)"
        )
    weights = [p / peft.SAFETENSORS_NAME, p / peft.BIN_NAME]
    if weights[0].exists():
        return _load_safetensors(weights[0], shown, "peft-adapter", kind, config, str(cfg_path))
    if weights[1].exists():
        return _load_pickle(weights[1], shown, "peft-adapter (.bin)", kind, config, str(cfg_path))
    raise InvalidBank(f"{p}: the adapter folder has no {peft.SAFETENSORS_NAME} or {peft.BIN_NAME}")


def _load_sharded(index: Path, shown: str, kind: str | None, adapter: str | None) -> PromptBank:
    """A sharded whole model: only the shard(s) holding the prompt encoder are opened."""
    shards = checkpoints.read_index(index)
    found = checkpoints.choose(checkpoints.find_banks(shards.weight_map), adapter, shown)
    if found is None:
        raise InvalidBank(
            f"{index}: none of the {len(shards.weight_map):,} tensors it lists is a prompt encoder's "
            "(prompt_encoder.<adapter>.embedding.weight, prefix_task_cols, prefix_task_rows)"
        )
    files = {k: index.parent / shards.weight_map[v] for k, v in found.keys.items()}
    opened = sorted({f.name for f in files.values()})
    tensors, arrays, size = {}, {}, 0
    if index.name == checkpoints.BIN_INDEX:
        from . import _pickle as pk

        for f in opened:
            obj, members = pk.load(str(index.parent / f))
            sd = next((d for _, d in pk.state_dicts(obj) if any(v in d for v in found.keys.values())), {})
            for k, v in found.keys.items():
                if files[k].name == f and v in sd:
                    arrays[k] = pk.array(str(index.parent / f), v, sd[v], members)
                    tensors[k] = {"dtype": arrays[k].dtype, "shape": list(arrays[k].shape)}
            size += (index.parent / f).stat().st_size
    else:
        for f in opened:
            header = st.read_header(str(index.parent / f))
            for k, v in found.keys.items():
                if files[k].name == f and v in header.tensors:
                    tensors[k], arrays[k] = _info(header.tensors[v]), header.array(v)
            size += header.file_size
    missing = [v for k, v in found.keys.items() if k not in arrays]
    if missing:
        raise InvalidBank(
            f"{index}: names {files[next(k for k, v in found.keys.items() if v == missing[0])].name} as "
            f"the shard holding {missing[0]!r}, but that shard does not hold it"
        )
    note = (
        f"read {found.label} from {', '.join(opened)}: {len(opened)} of the {len(shards.files)} shards "
        f"{index.name} lists; the others were not opened"
    )
    first = str(files.get("prompt_embeddings", next(iter(files.values()))))
    return _finish(
        tensors,
        lambda: (arrays, {}),
        None,
        None,
        None,
        kind,
        first,
        Source(shown, "sharded " + found.form, first, size),
        [note],
    )


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
        problems.append(
            f"{data_file}: __metadata__ key '{META_TASK_NAMES}' lists {len(names)} names "
            f"but the bank has T={cols[0]} tasks"
        )
    return problems
