"""Prompt tables: one full prompt per task, (tasks, N, d), the files serving engines read.
TensorRT-LLM's ``--prompt_table_path`` reads exactly such a ``.npy`` (its NeMo converter writes one)
and picks a row per request (``--prompt_tasks``). Two formats:

- ``npy``: ``OUT.npy`` (float32, float16 or float64; numpy has no bfloat16) with a sidecar
  ``OUT.tasks.json``: the row -> task name mapping, which half of a seq2seq prompt the rows hold,
  the source, its provenance. A ``.npy`` without a sidecar reads too (rows named ``task<i>``).
- ``safetensors-table``: ``OUT.safetensors`` holding one tensor ``prompt_table``, the same facts in
  its metadata (``mptkit.task_names``, ``mptkit.provenance``, ``mptkit.prompt_table``).

Both are written a chunk of tasks at a time (the prompts are computed as they are written) and read
back as lazy single-task prompts (what ``decompose`` takes).
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

from .._bank import Source
from .._dtypes import BY_CODE, code_of_numpy, shown
from .._schema import META_PROVENANCE, META_TASK_NAMES
from .._tensor import Array
from ..errors import InvalidBank, UsageError
from . import _safetensors as st
from ._bankfile import check_prompt
from ._checkpoints import read_json_file
from ._registry import Format

TABLE_KEY = "prompt_table"
META_TABLE = "mptkit.prompt_table"
SIDECAR_SUFFIX = ".tasks.json"


def sidecar_path(path) -> Path:
    """``table.npy`` -> ``table.tasks.json``."""
    p = Path(path)
    return p.with_name(p.name[: -len(".npy")] + SIDECAR_SUFFIX) if p.name.lower().endswith(".npy") else p


def _table_config(info) -> dict | None:
    """The adapter config a table's sidecar or metadata records, when its rows are whole prompts."""
    if not isinstance(info, dict) or info.get("half") not in (None, "both", "all"):
        return None
    cfg = info.get("config")
    return dict(cfg) if isinstance(cfg, dict) else None


def _rows(table: Array, shape):
    """The table's prompts, each made when asked for (:class:`mptkit._rows.TableRows`)."""
    from .._rows import TableRows

    return TableRows(table.reshape(shape))


def _stream(table, f) -> None:
    """Write the table's rows, chunk by chunk; never leave a short table behind."""
    expected = math.prod(table.shape) * BY_CODE[table.dtype].itemsize
    done = 0
    for raw in table.chunks():
        f.write(raw)
        done += len(raw)
    if done != expected:  # a bug, not the user's mistake
        raise RuntimeError(f"prompt table: wrote {done} bytes of data, expected {expected}")


# -- .npy --------------------------------------------------------------------------------------------
def read_npy(p: Path):
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
    code = code_of_numpy(dtype.str)
    if code is None or not BY_CODE[code].floating or fortran or len(shape) not in (2, 3):
        raise InvalidBank(
            f"{p}: expected a C-order float32/float16/float64 array of shape (tasks, N, d) or (N, d), "
            f"found {dtype.str} {'Fortran-order ' if fortran else ''}shape {tuple(shape)}"
        )
    shape = (1, *shape) if len(shape) == 2 else tuple(shape)
    need = offset + math.prod(shape) * np.dtype(dtype).itemsize
    size = p.stat().st_size
    if size < need:
        raise InvalidBank(f"{p}: the file ends early: its header promises {need} bytes, it has {size}")
    table = Array.from_file(str(p), offset, code, shape)
    side = sidecar_path(p)
    names, config = [f"task{i}" for i in range(shape[0])] if shape[0] > 1 else [p.name[:-4]], None
    if side.is_file():
        info = read_json_file(side)
        listed = info.get("tasks") if isinstance(info, dict) else None
        if not (isinstance(listed, list) and len(listed) == shape[0] and all(isinstance(n, str) for n in listed)):
            raise InvalidBank(f"{side}: expected a list of {shape[0]} task names under 'tasks'")
        names, config = listed, _table_config(info)
    return _rows(table, shape), names, [Source(str(p), "npy", str(p), size)], config


def check_npy(table, target: Path) -> None:
    if BY_CODE[table.dtype].numpy is None:
        raise UsageError(
            f"{target}: a .npy table cannot hold {shown(table.dtype)} (numpy has no bfloat16 type); "
            "use --dtype float32 or float16, or write a .safetensors table"
        )


def npy_sidecar(table, target: Path) -> tuple[Path, bytes]:
    side = {**table.info, "tasks": table.names, "provenance": table.provenance}
    return sidecar_path(target), json.dumps(side, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"


def write_npy(table, f, target: Path) -> None:
    import numpy as np

    descr = BY_CODE[table.dtype].numpy
    np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": tuple(table.shape)})
    _stream(table, f)


# -- .safetensors ------------------------------------------------------------------------------------
def _is_table(p: Path) -> bool:
    if p.is_dir() or not p.name.lower().endswith(".safetensors"):
        return False
    try:
        return TABLE_KEY in st.read_header(str(p)).tensors
    except InvalidBank:
        return False  # the safetensors reader says what is wrong with it


def read_st_table(p: Path):
    header = st.read_header(str(p))
    meta = header.metadata or {}
    table = header.array(TABLE_KEY)
    if len(table.shape) != 3:
        raise InvalidBank(f"{p}: tensor '{TABLE_KEY}' should be (tasks, N, d), found shape {list(table.shape)}")
    check_prompt(table.rows([0]).reshape(table.shape[1:]), p)
    names = [f"task{i}" for i in range(table.shape[0])]
    with contextlib.suppress(ValueError, TypeError):
        listed = json.loads(meta.get(META_TASK_NAMES, "null"))
        if isinstance(listed, list) and len(listed) == table.shape[0]:
            names = [str(n) for n in listed]
    config = None
    with contextlib.suppress(ValueError, TypeError):
        config = _table_config(json.loads(meta.get(META_TABLE, "null")))
    return _rows(table, table.shape), names, [Source(str(p), "safetensors", str(p), header.file_size)], config


def write_st_table(table, f, target: Path) -> None:
    meta = {
        "format": "pt",
        META_TASK_NAMES: json.dumps(table.names, ensure_ascii=False),
        META_PROVENANCE: json.dumps(table.provenance, ensure_ascii=False, sort_keys=True),
        META_TABLE: json.dumps(table.info, ensure_ascii=False, sort_keys=True),
    }
    head, _ = st.header_bytes({TABLE_KEY: (table.dtype, tuple(table.shape))}, meta)
    f.write(head)
    _stream(table, f)


NPY = Format(
    name="npy",
    description="a prompt table: OUT.npy (tasks, N, d) and OUT.tasks.json naming its rows",
    label="a prompt table, with OUT.tasks.json",
    recognise=lambda p: not p.is_dir() and p.name.lower().endswith(".npy"),
    read_prompts=read_npy,
    writes="prompts",
    suffixes=(".npy",),
    write=write_npy,
    sidecar=npy_sidecar,
    check=check_npy,
)
SAFETENSORS_TABLE = Format(
    name="safetensors-table",
    description="a prompt table: OUT.safetensors holding prompt_table (tasks, N, d), names in its metadata",
    label="a prompt table",
    recognise=_is_table,
    read_prompts=read_st_table,
    writes="prompts",
    suffixes=(".safetensors",),
    write=write_st_table,
)
