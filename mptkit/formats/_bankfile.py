"""The ``.safetensors`` bank: a bare state dict with PEFT's three keys (what PEFT's
``prompt_tuning_init_state_dict_path`` takes), task names, provenance and config hints in its
metadata. Read side, any safetensors file: a bank, a prompt encoder's state dict or a whole model's
(only the prompt encoder's tensors are read), a file holding one ``prompt_embeddings`` (a single
prompt, for ``decompose``). This reader is the fallback for every file no other format claims."""

from __future__ import annotations

from pathlib import Path

from .._bank import KEYS, PromptBank, Source
from .._dtypes import BY_CODE, FLOAT_CODES
from ..errors import InvalidBank, UsageError
from . import _checkpoints as checkpoints, _safetensors as st
from ._bankcheck import finish, info, metadata_for, replaceable_bank, set_aside_heads
from ._registry import Format

SUFFIX = ".safetensors"
#: said when an adapter's metadata is exactly what PEFT's save_pretrained writes
PEFT_METADATA_NOTE = (
    'no task names or provenance: the metadata is {"format": "pt"} as PEFT\'s save_pretrained writes it, '
    "and PEFT drops any that mptkit stored (name the tasks with `mptkit rename --names`)"
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
        tensors = {k: info(header.tensors[v]) for k, v in found.keys.items()}
        note = (
            f"read {len(tensors)} tensors ({found.label}) from {header.path}, a {found.form} state dict of "
            f"{len(header.tensors):,} tensors; no other tensor was read"
        )
        fmt = f"{found.form} safetensors" if fmt == "safetensors" else fmt
        return finish(
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
    tensors = {k: info(v) for k, v in header.tensors.items()}
    heads, notes = set_aside_heads(tensors, config_file)
    bad = next((k for k in heads if header.tensors[k]["dtype"] not in BY_CODE), None)
    if bad is not None:
        raise InvalidBank(
            f"{header.path}: tensor {bad!r} (a task head) is {header.tensors[bad]['dtype']}, a dtype mptkit "
            f"cannot carry into an output (expected one of {', '.join(BY_CODE)})"
        )
    bank = finish(
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


def read_bank(
    p: Path,
    shown: str,
    *,
    kind: str | None = None,
    adapter: str | None = None,
    fmt: str = "safetensors",
    config: dict | None = None,
    config_file: str | None = None,
) -> PromptBank:
    return from_header(
        st.read_header(str(p)), shown=shown, fmt=fmt, kind=kind, config=config, config_file=config_file, adapter=adapter
    )


def read_prompts(p: Path):
    """A bank's tasks' full prompts, or the one prompt of a file holding only ``prompt_embeddings``."""
    from ._objects import bank_prompts

    if not p.name.lower().endswith(SUFFIX):
        raise UsageError(f"{p}: not a prompt input: give PROMPT_TUNING adapter folders, .npy or .safetensors tables")
    header = st.read_header(str(p))
    if "prefix_task_cols" in header.tensors:
        return bank_prompts(from_header(header, shown=str(p), fmt="safetensors"))
    if set(header.tensors) == {"prompt_embeddings"}:
        arr = header.array("prompt_embeddings")
        check_prompt(arr, p)
        return [arr], [p.name[: -len(SUFFIX)]], [Source(str(p), "safetensors", str(p), header.file_size)], None
    found = ", ".join(sorted(header.tensors))[:200] or "no tensors"
    raise InvalidBank(
        f"{p}: not a prompt table: expected a tensor 'prompt_table' (tasks, N, d) or one "
        f"'prompt_embeddings' (N, d), found {found}"
    )


def check_prompt(arr, where) -> None:
    """A single prompt must be a non-empty floating-point (N, d) matrix."""
    if len(arr.shape) != 2 or arr.dtype not in FLOAT_CODES or 0 in arr.shape:
        raise InvalidBank(
            f"{where}: expected a floating-point prompt of shape (N, d), found {arr.dtype} {list(arr.shape)}"
        )


def write(bank: PromptBank, f, target: Path) -> None:
    tensors = {k: bank.tensors[k] for k in KEYS if k in bank.tensors}
    st.write(f, tensors, metadata_for(bank, with_config=True))


FORMAT = Format(
    name="safetensors",
    description="a bare .safetensors state dict with PEFT's keys (any safetensors file is read)",
    label="a bare state dict",
    recognise=lambda p: not p.is_dir(),
    read_bank=read_bank,
    read_prompts=read_prompts,
    fallback=True,
    writes="bank",
    suffixes=(SUFFIX,),
    write=write,
    replaceable=replaceable_bank,
)
