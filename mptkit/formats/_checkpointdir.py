"""Whole-model checkpoints on disk: a sharded save (``model.safetensors.index.json`` or
``pytorch_model.bin.index.json``, the index file or its folder), of which only the shard(s) holding
the prompt encoder are opened, and a folder holding one ``model.safetensors`` or
``pytorch_model.bin`` (Trainer's and accelerate's ``save_model``). Read only."""

from __future__ import annotations

from pathlib import Path

from .._bank import PromptBank, Source
from ..errors import InvalidBank
from . import _bankfile, _checkpoints as checkpoints, _safetensors as st, _torchpickle
from ._bankcheck import finish, info
from ._registry import Format

INDEXES = (checkpoints.SAFETENSORS_INDEX, checkpoints.BIN_INDEX)


def _index_of(p: Path) -> Path | None:
    if p.is_dir():
        return next((p / i for i in INDEXES if (p / i).exists()), None)
    return p if p.name.lower().endswith(".index.json") else None


def read_sharded(p: Path, shown: str, *, kind: str | None = None, adapter: str | None = None) -> PromptBank:
    """A sharded whole model: only the shard(s) holding the prompt encoder are opened."""
    index = _index_of(p)
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
                    tensors[k], arrays[k] = info(header.tensors[v]), header.array(v)
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
    return finish(
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


def _whole_file(p: Path) -> Path | None:
    return next((p / w for w in checkpoints.WHOLE_MODEL_FILES if (p / w).exists()), None) if p.is_dir() else None


def read_whole(p: Path, shown: str, *, kind: str | None = None, adapter: str | None = None) -> PromptBank:
    f = _whole_file(p)
    reader = _torchpickle.read_bank if f.name.endswith(".bin") else _bankfile.read_bank
    return reader(f, shown, kind=kind, adapter=adapter)


SHARDED = Format(
    name="sharded",
    description="a sharded whole-model save (its index file or folder); only the prompt encoder's shards are opened",
    recognise=lambda p: _index_of(p) is not None,
    read_bank=read_sharded,
)
WHOLE_MODEL = Format(
    name="whole-model",
    description="a folder holding one whole-model model.safetensors or pytorch_model.bin",
    recognise=lambda p: _whole_file(p) is not None,
    read_bank=read_whole,
)
