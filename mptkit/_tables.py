"""Prompt tables and single-task prompts: the files serving engines read, and the inputs of
``decompose``.

A prompt table is one full prompt per task, (tasks, N, d): TensorRT-LLM's ``--prompt_table_path``
reads exactly such a ``.npy`` (its NeMo converter writes one) and picks a row per request
(``--prompt_tasks``). Written here as

- ``OUT.npy`` (float32 or float16; numpy has no bfloat16) with a sidecar ``OUT.tasks.json``: the row
  -> task name mapping, which half of a seq2seq prompt the rows hold, the source, its provenance;
- ``OUT.safetensors``: one tensor ``prompt_table``, the same facts in the metadata
  (``mptkit.task_names``, ``mptkit.provenance``, ``mptkit.prompt_table``).

Both stream, a chunk of tasks at a time, and are written atomically. :func:`read_prompts` reads
them back, and PEFT ``PROMPT_TUNING`` adapter folders (or a folder of such folders), as a lazy
stack of prompts.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ._bank import Source
from ._rows import Chain, Prompts, TableRows
from ._schema import META_PROVENANCE, META_TASK_NAMES
from ._tensor import Array
from .errors import InvalidBank, OutputError, UsageError
from .formats import _atomic as atomic, _peft as peft, _safetensors as st

TABLE_KEY = "prompt_table"
META_TABLE = "mptkit.prompt_table"
SIDECAR_SUFFIX = ".tasks.json"
#: a folder of adapters written by ``export --tasks``: the tasks' order
MANIFEST = "tasks.json"
_NPY_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8"}


def sidecar_path(path: str | os.PathLike) -> Path:
    """``table.npy`` -> ``table.tasks.json``."""
    p = Path(path)
    return p.with_name(p.name[: -len(".npy")] + SIDECAR_SUFFIX) if p.name.lower().endswith(".npy") else p


#: what a prompt table may be written as (any other suffix is refused with a suggestion)
TABLE_FILES = {".npy": "npy", ".safetensors": "safetensors"}


def output_kind(path: str | os.PathLike) -> str:
    """ "npy", "safetensors" or "folder" (the suffix rule of :func:`mptkit.formats._targets.output_kind`)."""
    from .formats._targets import output_kind as kind

    return kind(path, files=TABLE_FILES)


def write_table(
    path: str | os.PathLike,
    chunks,
    *,
    shape: tuple,
    dtype: str,
    info: dict,
    names: list[str],
    provenance: list[dict],
    force: bool = False,
    inputs=(),
) -> list[Path]:
    """Stream ``chunks`` (raw little-endian bytes of consecutive tasks' prompts, in ``dtype``) into a
    table of ``shape`` at ``path`` (``.npy`` + sidecar, or ``.safetensors``). Returns what was written."""
    target, kind = Path(path), output_kind(path)
    if os.fspath(path).startswith("hf://"):
        raise OutputError(f"{path}: outputs are local paths; use `mptkit push` to upload to the Hub")
    if kind == "npy" and dtype not in _NPY_DTYPES:
        raise UsageError(
            f"{target}: a .npy table cannot hold {'bfloat16' if dtype == 'BF16' else dtype} (numpy has no "
            "bfloat16 type); "
            "use --dtype float32 or float16, or write a .safetensors table"
        )
    inputs = [os.fspath(p) for p in inputs]
    written = [target] + ([sidecar_path(target)] if kind == "npy" else [])
    for p in written:
        atomic.check_target(p, folder=False, force=force, inputs=inputs)
    expected = math.prod(shape) * {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}[dtype]
    with contextlib.ExitStack() as stack:
        if kind == "npy":
            side = stack.enter_context(atomic.atomic_file(written[1], replace=force))
            side.write(
                json.dumps({**info, "tasks": names, "provenance": provenance}, indent=2, ensure_ascii=False).encode(
                    "utf-8"
                )
                + b"\n"
            )
        f = stack.enter_context(atomic.atomic_file(target, replace=force))
        if kind == "npy":
            import numpy as np

            np.lib.format.write_array_header_1_0(
                f, {"descr": _NPY_DTYPES[dtype], "fortran_order": False, "shape": tuple(shape)}
            )
        else:
            meta = {
                "format": "pt",
                META_TASK_NAMES: json.dumps(names, ensure_ascii=False),
                META_PROVENANCE: json.dumps(provenance, ensure_ascii=False, sort_keys=True),
                META_TABLE: json.dumps(info, ensure_ascii=False, sort_keys=True),
            }
            head, _ = st.header_bytes({TABLE_KEY: (dtype, tuple(shape))}, meta)
            f.write(head)
        done = 0
        for raw in chunks:
            f.write(raw)
            done += len(raw)
        if done != expected:  # a bug, not the user's mistake: never leave a short table behind
            raise RuntimeError(f"prompt table: wrote {done} bytes of data, expected {expected}")
    return written


# -- reading single-task prompts -----------------------------------------------------------------
@dataclass
class _TaskPrompt:
    """Task ``k`` of a bank, as a prompt to decompose (computed when read)."""

    bank: object
    k: int

    @property
    def shape(self):
        return (self.bank.num_tokens, self.bank.token_dim)

    def prompt(self, dtype):
        import torch

        from ._numerics import task_prompts

        t = self.bank.tensors
        f32 = torch.float32
        prompt = task_prompts(
            t["prompt_embeddings"].to_torch(dtype=f32).unsqueeze(0),
            t["prefix_task_cols"].rows([self.k]).to_torch(dtype=f32),
            t["prefix_task_rows"].rows([self.k]).to_torch(dtype=f32),
        )[0]
        return prompt.to(dtype)


def read_prompts(paths) -> Prompts:
    """Single-task prompts from PEFT PROMPT_TUNING adapter folders (or folders of them), prompt
    tables (``.npy`` with or without its sidecar, ``.safetensors`` with ``prompt_table``),
    ``.safetensors`` files holding one ``prompt_embeddings``, and MPT banks (each task's full
    prompt). Every prompt must have one shape."""
    out = Prompts(Chain(), [], [])
    configs = []
    for path in paths:
        arrays, names, source, config = _read_one(Path(os.fspath(path)))
        where = os.fspath(path)
        for a, n in [(arrays, names[0])] if isinstance(arrays, TableRows) else zip(arrays, names):
            if out.arrays and a.shape != out.arrays[0].shape:
                raise UsageError(
                    f"{path}: prompt {n!r} is {a.shape[0]} x {a.shape[1]} (N x d), but {out.where[0]}'s "
                    f"are {out.shape[0]} x {out.shape[1]}: one bank needs one prompt length and hidden size"
                )
            out.arrays.extend(a if isinstance(a, TableRows) else [a])
        out.names += names
        out.where += [where] * len(names)
        out.sources += source
        configs.append(config)
    if not out.arrays:
        raise UsageError("no prompts given: name PROMPT_TUNING adapter folders or prompt tables")
    known = [c for c in configs if c]
    out.config = {k: v for k, v in known[0].items() if all(c.get(k) == v for c in known)} if known else None
    return out


def _read_one(p: Path):
    if _is_bank(p):  # an MPT bank: its tasks' full prompts
        from ._io import load

        bank = load(p)
        names = bank.task_names or [f"task{k}" for k in range(bank.num_tasks)]
        return (
            [_TaskPrompt(bank, k) for k in range(bank.num_tasks)],
            names,
            [bank.source],
            dict((bank.config or {}).items()),
        )
    if p.is_dir():
        if (p / peft.CONFIG_NAME).exists():
            return _read_adapter(p, p.name)
        subs = _adapter_subfolders(p)
        if not subs:
            raise InvalidBank(
                f"{p}: neither a PROMPT_TUNING adapter folder (no {peft.CONFIG_NAME}) nor a folder of them"
            )
        arrays, names, sources, configs = [], [], [], []
        for sub in subs:
            a, n, s, c = _read_adapter(sub, sub.name)
            arrays += a
            names += n
            sources += s
            configs.append(c)
        return arrays, names, sources, configs[0] if all(c == configs[0] for c in configs) else None
    if not p.exists():
        raise InvalidBank(f"{p}: no such file or folder")
    if p.name.lower().endswith(".npy"):
        return _read_npy(p)
    if p.name.lower().endswith(".safetensors"):
        return _read_safetensors(p)
    raise UsageError(f"{p}: not a prompt input: give PROMPT_TUNING adapter folders, .npy or .safetensors prompt tables")


def _is_bank(p: Path) -> bool:
    """Whether ``p`` holds an MPT bank (a MULTITASK_PROMPT_TUNING folder, a bank's .safetensors, a pickle)."""
    if p.is_dir():
        cfg = p / peft.CONFIG_NAME
        if not cfg.is_file():
            return False
        config = peft.read_config(cfg)
        return isinstance(config, dict) and config.get("peft_type") == "MULTITASK_PROMPT_TUNING"
    name = p.name.lower()
    if name.endswith((".bin", ".pt", ".pth")):
        return True
    if name.endswith(".safetensors") and p.is_file():
        return "prefix_task_cols" in st.read_header(str(p)).tensors
    return False


def _adapter_subfolders(p: Path) -> list[Path]:
    subs = {q.name: q for q in p.iterdir() if q.is_dir() and (q / peft.CONFIG_NAME).exists()}
    manifest = p / MANIFEST
    if manifest.is_file():
        from .formats._checkpoints import read_json_file

        order = read_json_file(manifest).get("tasks") if isinstance(read_json_file(manifest), dict) else None
        if isinstance(order, list) and sorted(map(str, order)) == sorted(subs):
            return [subs[str(n)] for n in order]
    return [subs[n] for n in sorted(subs)]


def _read_adapter(p: Path, name: str):
    config = peft.read_config(p / peft.CONFIG_NAME)
    kind = config.get("peft_type") if isinstance(config, dict) else None
    if kind != "PROMPT_TUNING":
        raise InvalidBank(
            f"{p}: a {kind or 'non-PEFT'} adapter, not PROMPT_TUNING (decompose takes single-task "
            "prompt-tuning adapters or prompt tables)"
        )
    data = p / peft.SAFETENSORS_NAME
    if data.exists():
        header = st.read_header(str(data))
        if "prompt_embeddings" not in header.tensors:
            raise InvalidBank(
                f"{data}: no tensor 'prompt_embeddings' (found {', '.join(sorted(header.tensors))[:200]})"
            )
        arr = header.array("prompt_embeddings")
        size = header.file_size
    elif (p / "adapter_model.bin").exists():
        from .formats import _pickle as pickle

        data = p / "adapter_model.bin"
        try:
            tensors = pickle.read(str(data))
        except ValueError as e:  # a tensor of a dtype no prompt holds
            raise InvalidBank(f"{data}: {e}") from None
        if "prompt_embeddings" not in tensors:
            raise InvalidBank(f"{data}: no tensor 'prompt_embeddings'")
        arr, size = tensors["prompt_embeddings"], data.stat().st_size
    else:
        raise InvalidBank(f"{p}: no {peft.SAFETENSORS_NAME} or adapter_model.bin")
    _check_prompt(arr, data)
    v, s = config.get("num_virtual_tokens"), config.get("num_transformer_submodules") or 1
    if isinstance(v, int) and v * s != arr.shape[0]:
        raise InvalidBank(
            f"{p}: adapter_config.json says {v} virtual tokens x {s} submodule(s) = {v * s} rows, "
            f"but 'prompt_embeddings' has {arr.shape[0]}"
        )
    keep = (
        "task_type",
        "num_virtual_tokens",
        "num_transformer_submodules",
        "base_model_name_or_path",
        "num_layers",
        "num_attention_heads",
        "token_dim",
    )
    return [arr], [name], [Source(str(p), "peft-adapter", str(data), size)], {k: config.get(k) for k in keep}


def _read_npy(p: Path):
    import numpy as np

    try:
        with open(p, "rb") as f:
            version = np.lib.format.read_magic(f)
            shape, fortran, dtype = (
                np.lib.format.read_array_header_1_0(f) if version == (1, 0) else np.lib.format.read_array_header_2_0(f)
            )
            offset = f.tell()
    except (OSError, ValueError) as e:
        raise InvalidBank(f"{p}: not a readable .npy file ({e})") from None
    names_of = {"<f4": "F32", "<f2": "F16", "<f8": "F64"}
    st_dtype = names_of.get(dtype.str)
    if st_dtype is None or fortran or len(shape) not in (2, 3):
        raise InvalidBank(
            f"{p}: expected a C-order float32/float16/float64 array of shape (tasks, N, d) or (N, d), "
            f"found {dtype.str} {'Fortran-order ' if fortran else ''}shape {tuple(shape)}"
        )
    shape = (1, *shape) if len(shape) == 2 else tuple(shape)
    need = offset + math.prod(shape) * np.dtype(dtype).itemsize
    size = p.stat().st_size
    if size < need:
        raise InvalidBank(f"{p}: the file ends early: its header promises {need} bytes, it has {size}")
    table = Array.from_file(str(p), offset, st_dtype, shape)
    side = sidecar_path(p)
    names, config = [f"task{i}" for i in range(shape[0])] if shape[0] > 1 else [p.name[:-4]], None
    if side.is_file():
        from .formats._checkpoints import read_json_file

        info = read_json_file(side)
        listed = info.get("tasks") if isinstance(info, dict) else None
        if not (isinstance(listed, list) and len(listed) == shape[0] and all(isinstance(n, str) for n in listed)):
            raise InvalidBank(f"{side}: expected a list of {shape[0]} task names under 'tasks'")
        names, config = listed, _table_config(info)
    return (
        TableRows(table),
        names,
        [Source(str(p), "npy", str(p), size)],
        config,
    )


def _read_safetensors(p: Path):
    header = st.read_header(str(p))
    meta = header.metadata or {}
    if TABLE_KEY in header.tensors:
        table = header.array(TABLE_KEY)
        if len(table.shape) != 3:
            raise InvalidBank(f"{p}: tensor '{TABLE_KEY}' should be (tasks, N, d), found shape {list(table.shape)}")
        _check_prompt(table.rows([0]).reshape(table.shape[1:]), p)
        names = [f"task{i}" for i in range(table.shape[0])]
        with contextlib.suppress(ValueError, TypeError):
            listed = json.loads(meta.get(META_TASK_NAMES, "null"))
            if isinstance(listed, list) and len(listed) == table.shape[0]:
                names = [str(n) for n in listed]
        config = None
        with contextlib.suppress(ValueError, TypeError):
            config = _table_config(json.loads(meta.get(META_TABLE, "null")))
        return TableRows(table), names, [Source(str(p), "safetensors", str(p), header.file_size)], config
    if set(header.tensors) == {"prompt_embeddings"}:
        arr = header.array("prompt_embeddings")
        _check_prompt(arr, p)
        return [arr], [p.name[: -len(".safetensors")]], [Source(str(p), "safetensors", str(p), header.file_size)], None
    raise InvalidBank(
        f"{p}: not a prompt table: expected a tensor '{TABLE_KEY}' (tasks, N, d) or one "
        f"'prompt_embeddings' (N, d), found {', '.join(sorted(header.tensors))[:200] or 'no tensors'}"
    )


def _check_prompt(arr: Array, where) -> None:
    if len(arr.shape) != 2 or arr.dtype not in ("F32", "F16", "BF16", "F64") or 0 in arr.shape:
        raise InvalidBank(
            f"{where}: expected a floating-point prompt of shape (N, d), found {arr.dtype} {list(arr.shape)}"
        )


def _table_config(info) -> dict | None:
    """The adapter config a table's sidecar or metadata records, when its rows are whole prompts."""
    if not isinstance(info, dict) or info.get("half") not in (None, "both", "all"):
        return None
    cfg = info.get("config")
    return dict(cfg) if isinstance(cfg, dict) else None
