"""Where a prompt bank sits inside the checkpoints that training tools write.

PEFT's ``save_pretrained`` stores the three bank tensors under their own names. Everything else
holds them under the prompt encoder's names, inside a larger state dict:

- a whole model (``torch.save(peft_model.state_dict())``, ``save_model`` of Trainer/accelerate,
  a sharded ``model.safetensors.index.json`` folder): ``[wrapper.]prompt_encoder.<adapter>.``
  ``embedding.weight`` / ``prefix_task_cols`` / ``prefix_task_rows``, under any wrapper prefix
  (``base_model.model.``, ``module.`` of DDP/DeepSpeed, ``_orig_mod.`` of torch.compile,
  ``_fsdp_wrapped_module.``, ...); every other tensor is ignored and never read;
- a prompt encoder's own ``state_dict()`` (PEFT's ``MultitaskPromptEmbedding`` or
  :class:`mptkit.serve._runtime.TaskPrompts`): ``embedding.weight``, ``prefix_task_cols``,
  ``prefix_task_rows``;
- a PEFT folder of several adapters (``X/`` beside the default one at the root), and a Trainer
  ``output_dir`` of ``checkpoint-<step>/`` folders.

This module only finds names; :mod:`mptkit.formats` reads the bytes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .._strictjson import JsonProblem, parse_json
from ..errors import InvalidBank, UsageError

KEYS = ("prompt_embeddings", "prefix_task_cols", "prefix_task_rows")
#: a prompt encoder's parameter names -> the bank's
ENCODER_PARTS = {
    "embedding.weight": "prompt_embeddings",
    "prefix_task_cols": "prefix_task_cols",
    "prefix_task_rows": "prefix_task_rows",
}
_IN_MODEL = re.compile(
    r"^(?P<prefix>(?:.+\.)?)prompt_encoder\.(?P<adapter>[^.]+)\."
    r"(?P<part>embedding\.weight|prefix_task_cols|prefix_task_rows)$"
)
#: prefixes that wrappers put before a module's own names
_WRAPPER = re.compile(
    r"^(?P<prefix>(?:(?:module|_orig_mod|_fsdp_wrapped_module|_checkpoint_wrapped_module|model)\.)*)"
    r"(?P<part>embedding\.weight|prefix_task_cols|prefix_task_rows)$"
)
#: the names whole-model saves use
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
WHOLE_MODEL_FILES = ("model.safetensors", "pytorch_model.bin")
CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
#: most bytes of a JSON side file (index, config) read; PEFT's configs are ~1 kB, an index of the
#: largest models ~10 MB
MAX_INDEX_BYTES = 64_000_000


@dataclass
class Found:
    """One bank inside a state dict: ``keys`` maps each bank tensor name to its name in the file."""

    adapter: str | None  # the adapter's name; None for a bank under its own names
    keys: dict[str, str]
    form: str  # "bank", "prompt encoder", "whole model"
    prefix: str = ""

    @property
    def label(self) -> str:
        if self.form == "bank":
            return "the bank's own names"
        if self.adapter is None:
            return f"{self.prefix}{{embedding.weight, prefix_task_cols, prefix_task_rows}}"
        return f"{self.prefix}prompt_encoder.{self.adapter}.*"


def find_banks(names: Iterable[str]) -> dict[str | None, Found]:
    """The banks among tensor ``names``, by adapter name (None for the bank's own names or a prompt
    encoder's state dict)."""
    names = list(names)
    bank = {None: Found(None, {k: k for k in KEYS if k in names}, "bank")}
    if "prompt_embeddings" in names:
        return bank
    found: dict[str | None, Found] = {}
    for name in names:
        m = _IN_MODEL.match(name)
        if m:
            adapter, prefix = m.group("adapter"), m.group("prefix")
            f = found.setdefault(adapter, Found(adapter, {}, "whole model", prefix))
            if f.prefix != prefix:
                raise InvalidBank(
                    f"the state dict holds prompt encoder {adapter!r} twice, under {f.prefix!r} and "
                    f"{prefix!r}; save one model's state dict"
                )
            f.keys[ENCODER_PARTS[m.group("part")]] = name
    if found:
        return found
    encoder = {}
    for name in names:
        m = _WRAPPER.match(name)
        if m:
            encoder.setdefault(m.group("prefix"), {})[ENCODER_PARTS[m.group("part")]] = name
    # embedding.weight alone is any embedding layer: a prompt encoder's state dict has its factors too
    encoder = {p: k for p, k in encoder.items() if "prefix_task_cols" in k}
    if len(encoder) == 1:
        ((prefix, keys),) = encoder.items()
        return {None: Found(None, keys, "prompt encoder", prefix)}
    return bank if bank[None].keys else {}  # factors without a shared prompt: the schema says what is missing


def choose(banks: dict[str | None, Found], adapter: str | None, where: str) -> Found | None:
    """The bank ``adapter`` names (or the only one); a :class:`UsageError` listing them when there
    are several and none is named, or the named one is not there. None when there is no bank."""
    if not banks:
        if adapter is not None:
            raise UsageError(f"{where} holds no adapter named {adapter!r} (no prompt encoder at all)")
        return None
    if adapter is None:
        if len(banks) == 1:
            return next(iter(banks.values()))
        raise UsageError(
            f"{where} holds {len(banks)} adapters ({', '.join(map(str, banks))}); choose one with --adapter NAME"
        )
    if adapter in banks:
        return banks[adapter]
    if len(banks) == 1 and None in banks and adapter == "default":
        return banks[None]
    listed = ", ".join("default" if k is None else k for k in banks)
    raise UsageError(f"{where} holds no adapter named {adapter!r}; it holds: {listed}")


# -- folders -------------------------------------------------------------------------------------
def read_json_file(path: Path, shown: str | None = None, *, max_bytes: int = MAX_INDEX_BYTES):
    """A side file's JSON (an index, an adapter config), refusing what is not a regular file (a FIFO
    would block), a file over ``max_bytes`` (read no further: a sparse 1 GiB config once took
    2 GB), and JSON that :func:`mptkit._schema.parse_json` refuses."""
    shown = shown or str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise InvalidBank(f"{shown}: cannot read it ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        import stat

        if not stat.S_ISREG(st.st_mode):
            raise InvalidBank(f"{shown}: not a regular file (a pipe, socket or device?); expected a JSON file")
        if st.st_size > max_bytes:
            raise InvalidBank(
                f"{shown}: the file is {st.st_size:,} bytes, more than the {max_bytes:,} mptkit reads "
                "for a JSON side file (it is not one a training tool wrote)"
            )
        data = os.pread(fd, max_bytes + 1, 0)
    except OSError as e:
        raise InvalidBank(f"{shown}: cannot read it ({e.strerror or e})") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise InvalidBank(f"{shown}: the file grew past {max_bytes:,} bytes while being read")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidBank(f"{shown}: not UTF-8 text; expected a JSON object") from None
    try:
        return parse_json(text)
    except JsonProblem as e:
        raise InvalidBank(f"{shown}: {e}") from None


@dataclass
class Shards:
    """A sharded whole-model folder: the index, and which shard holds each tensor."""

    index: Path
    weight_map: dict[str, str]
    files: list[str] = field(default_factory=list)


def read_index(path: Path) -> Shards:
    """``model.safetensors.index.json`` (or ``pytorch_model.bin.index.json``): its weight map, with
    every shard a plain file name in the same folder (a name that would leave it is refused)."""
    obj = read_json_file(path)
    wm = obj.get("weight_map") if isinstance(obj, dict) else None
    if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
        raise InvalidBank(f'{path}: expected a JSON object with a "weight_map" of tensor names to shard file names')
    files = sorted(set(wm.values()))
    for f in files:
        if f in ("", ".", "..") or "/" in f or "\\" in f or "\0" in f:
            raise InvalidBank(f"{path}: shard name {f[:80]!r} is not a file name in the index's folder")
    return Shards(path, wm, files)


def checkpoints(folder: Path) -> list[tuple[int, str]]:
    """Trainer's ``checkpoint-<step>/`` sub-folders, newest (highest step) first."""
    out = []
    try:
        with os.scandir(folder) as it:
            for e in it:
                m = CHECKPOINT_DIR.match(e.name)
                if m and e.is_dir():
                    out.append((int(m.group(1)), e.name))
    except OSError:
        return []
    return sorted(out, reverse=True)


def trainer_output_error(folder: Path, found: list[tuple[int, str]]) -> UsageError:
    step, newest = found[0]
    others = ", ".join(n for _, n in found[1:4]) + (", ..." if len(found) > 4 else "")
    return UsageError(
        f"{folder} is a Trainer output_dir: it holds checkpoints, not a bank; give the newest one, "
        f"{folder / newest} (step {step})" + (f"; it also holds {others}" if others else "")
    )


def named_adapters(folder: Path, config_name: str) -> dict[str, Path]:
    """PEFT's named adapters: sub-folders ``X/`` holding a multitask prompt tuning
    ``adapter_config.json`` (Trainer checkpoints and other PEFT types are not adapters of this bank)."""
    out = {}
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return out
    for e in entries:
        if CHECKPOINT_DIR.match(e.name) or e.name.startswith(".") or not e.is_dir():
            continue
        cfg = Path(e.path) / config_name
        try:
            if not cfg.is_file():
                continue
            obj = read_json_file(cfg, max_bytes=1_000_000)
        except InvalidBank:
            continue
        if isinstance(obj, dict) and obj.get("peft_type") == "MULTITASK_PROMPT_TUNING":
            out[e.name] = Path(e.path)
    return out
