"""PEFT adapter folders: ``adapter_config.json`` + ``adapter_model.safetensors`` (or ``.bin``).

- ``peft-adapter``: a MULTITASK_PROMPT_TUNING folder (or one of several named adapters, ``X/`` beside
  the default one) is a bank; a PROMPT_TUNING folder, or a folder of them, holds single prompts
  (what ``decompose`` reads). Writes a bank as a folder ``PeftModel.from_pretrained`` loads.
- ``prompt-tuning``: writes one task's full prompt as a plain PROMPT_TUNING adapter.
- ``adapters``: writes several tasks' prompts as one PROMPT_TUNING adapter per task, in subfolders
  named by task (names that cannot be folder names get ``task<i>``; ``tasks.json`` maps them).
- ``folder``: the fallback for any other folder: says what it is not (and which Trainer checkpoint
  to give instead of a Trainer ``output_dir``).
"""

from __future__ import annotations

import json
from pathlib import Path

from .._bank import KEYS, PromptBank, Source
from .._schema import META_PROVENANCE
from ..errors import InvalidBank, OutputError, UsageError
from . import _bankfile, _checkpoints as checkpoints, _peft as peft, _safetensors as st, _torchpickle
from ._bankcheck import metadata_for, replaceable_bank
from ._objects import bank_prompts
from ._registry import Format
from ._targets import safe_names

#: a folder of adapters lists its tasks (and the subfolder of each) here, in order
MANIFEST = "tasks.json"


def _adapters(p: Path) -> dict[str, Path]:
    """The adapters a folder holds: ``default`` at its root (where a config is), and named ones."""
    cfg = p / peft.CONFIG_NAME
    found = {"default": p} if (cfg.exists() or cfg.is_symlink()) else {}
    for name, sub in checkpoints.named_adapters(p, peft.CONFIG_NAME).items():
        found.setdefault(name, sub)
    return found


def recognise(p: Path) -> bool:
    return p.is_dir() and bool(_adapters(p))


def read_bank(p: Path, shown: str, *, kind: str | None = None, adapter: str | None = None) -> PromptBank:
    """A PEFT adapter folder, or one of its named adapters."""
    adapters = _adapters(p)
    listed = ", ".join(f"{n} ({'the folder itself' if f == p else f.name + '/'})" for n, f in adapters.items())
    if adapter is None and len(adapters) > 1:
        raise UsageError(f"{shown} holds {len(adapters)} adapters: {listed}; choose one with --adapter NAME")
    if adapter is not None and adapter not in adapters:
        raise UsageError(f"{shown} holds no adapter named {adapter!r}; it holds: {listed}")
    name = adapter or next(iter(adapters))
    folder = adapters[name]
    bank = _read_adapter(folder, shown if folder == p else str(folder), kind)
    if len(adapters) > 1:
        bank.notes.append(f"the folder holds {len(adapters)} adapters: {listed}; read {name!r} (--adapter)")
    steps = checkpoints.checkpoints(p) if folder == p else []
    if steps:
        bank.notes.append(
            f"the folder also holds {len(steps)} Trainer checkpoint(s) (newest: {steps[0][1]}); "
            "this is the adapter saved at its root"
        )
    return bank


def _read_adapter(p: Path, shown: str, kind: str | None) -> PromptBank:
    cfg_path = p / peft.CONFIG_NAME
    config = peft.read_config(cfg_path)
    if isinstance(config, dict) and config.get("peft_type") not in (None, "MULTITASK_PROMPT_TUNING"):
        raise InvalidBank(
            f'{cfg_path}: field peft_type: expected "MULTITASK_PROMPT_TUNING", '
            f"found {json.dumps(config.get('peft_type'))}"
            " (this adapter is not a multitask prompt tuning bank)"
        )
    weights = [p / peft.SAFETENSORS_NAME, p / peft.BIN_NAME]
    common = {"kind": kind, "config": config, "config_file": str(cfg_path)}
    if weights[0].exists():
        return _bankfile.read_bank(weights[0], shown, fmt="peft-adapter", **common)
    if weights[1].exists():
        return _torchpickle.read_bank(weights[1], shown, fmt="peft-adapter (.bin)", **common)
    raise InvalidBank(f"{p}: the adapter folder has no {peft.SAFETENSORS_NAME} or {peft.BIN_NAME}")


# -- prompts --------------------------------------------------------------------------------------
def read_prompts(p: Path):
    """An MPT folder's tasks' full prompts, a PROMPT_TUNING folder's prompt, or the prompts of a
    folder of PROMPT_TUNING folders (in ``tasks.json``'s order, else by name)."""
    cfg = p / peft.CONFIG_NAME
    if cfg.is_file():
        config = peft.read_config(cfg)
        if isinstance(config, dict) and config.get("peft_type") == "MULTITASK_PROMPT_TUNING":
            return bank_prompts(read_bank(p, str(p)))
        return _read_prompt_adapter(p, p.name)
    arrays, names, sources, configs = [], [], [], []
    for name, sub in _subfolders(p):
        a, n, s, c = _read_prompt_adapter(sub, name)
        arrays += a
        names += n
        sources += s
        configs.append(c)
    return arrays, names, sources, configs[0] if all(c == configs[0] for c in configs) else None


def _holds_adapters(p: Path) -> bool:
    try:
        return p.is_dir() and any(q.is_dir() and (q / peft.CONFIG_NAME).exists() for q in p.iterdir())
    except OSError:
        return False


def _subfolders(p: Path) -> list[tuple[str, Path]]:
    """(task name, folder) of every adapter in a folder of adapters, in the manifest's order."""
    subs = {q.name: q for q in p.iterdir() if q.is_dir() and (q / peft.CONFIG_NAME).exists()}
    manifest = p / MANIFEST
    if manifest.is_file():
        listed = checkpoints.read_json_file(manifest)
        order = listed.get("tasks") if isinstance(listed, dict) else None
        folders = listed.get("folders", order) if isinstance(listed, dict) else None
        if (
            isinstance(order, list)
            and isinstance(folders, list)
            and len(order) == len(folders)
            and sorted(map(str, folders)) == sorted(subs)
        ):
            return [(str(n), subs[str(f)]) for n, f in zip(order, folders)]
    return [(n, subs[n]) for n in sorted(subs)]


def _read_prompt_adapter(p: Path, name: str):
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
    elif (p / peft.BIN_NAME).exists():
        from . import _pickle as pickle

        data = p / peft.BIN_NAME
        try:
            tensors = pickle.read(str(data))
        except ValueError as e:  # a tensor of a dtype no prompt holds
            raise InvalidBank(f"{data}: {e}") from None
        if "prompt_embeddings" not in tensors:
            raise InvalidBank(f"{data}: no tensor 'prompt_embeddings'")
        arr, size = tensors["prompt_embeddings"], data.stat().st_size
    else:
        raise InvalidBank(f"{p}: no {peft.SAFETENSORS_NAME} or {peft.BIN_NAME}")
    _bankfile.check_prompt(arr, data)
    v, s = config.get("num_virtual_tokens"), config.get("num_transformer_submodules") or 1
    if isinstance(v, int) and v * s != arr.shape[0]:
        raise InvalidBank(
            f"{p}: adapter_config.json says {v} virtual tokens x {s} submodule(s) = {v * s} rows, "
            f"but 'prompt_embeddings' has {arr.shape[0]}"
        )
    # the whole config: a bank made from these prompts keeps the fields their PEFT writes
    return [arr], [name], [Source(str(p), "peft-adapter", str(data), size)], dict(config)


# -- writing --------------------------------------------------------------------------------------
def _bank_config(bank: PromptBank, num_tasks: int, num_ranks: int) -> dict:
    """The bank's adapter_config.json (:func:`mptkit.formats._peft.complete_config`)."""
    return peft.complete_config(
        bank.config,
        num_tokens=bank.num_tokens,
        token_dim=bank.token_dim,
        num_tasks=num_tasks,
        num_ranks=num_ranks,
        where=bank.where,
    )[0]


def check_bank(bank: PromptBank, target: Path) -> None:
    """A folder needs task factors and a config that can be completed (task_type, the split of N)."""
    if bank.shared_only:
        raise OutputError(
            f"{target}: an adapter folder needs task factors, but this bank holds only the shared prompt "
            "(write a .safetensors file, or give --num-tasks to add fresh factors)"
        )
    _bank_config(bank, max(bank.num_tasks, 1), bank.rank or 1)


def write_bank(bank: PromptBank, folder: Path, target: Path) -> None:
    config = _bank_config(bank, bank.num_tasks, bank.rank)
    tensors = {k: bank.tensors[k] for k in KEYS if k in bank.tensors}
    with open(folder / peft.SAFETENSORS_NAME, "xb") as f:
        st.write(f, {**tensors, **bank.extras}, metadata_for(bank, with_config=False))
    (folder / peft.CONFIG_NAME).write_text(peft.config_text(config), encoding="utf-8")


def write_prompt_adapter(adapter, folder: Path, target: Path | None = None) -> None:
    """One PROMPT_TUNING adapter (a :class:`~mptkit.formats.PromptTuningAdapter`) into ``folder``."""
    meta = {"format": "pt"}
    if adapter.provenance:
        meta[META_PROVENANCE] = json.dumps(adapter.provenance, ensure_ascii=False, sort_keys=True)
    with open(folder / peft.SAFETENSORS_NAME, "xb") as f:
        st.write(f, {"prompt_embeddings": adapter.prompt, **adapter.extras}, meta)
    (folder / peft.CONFIG_NAME).write_text(peft.config_text(adapter.config), encoding="utf-8")


def check_adapters(table, target: Path) -> None:
    if table.half_given:
        raise UsageError(
            "--half applies to prompt tables (.npy, .safetensors); an adapter folder holds the whole prompt"
        )
    table.adapter_config()


def write_adapters(table, folder: Path, target: Path) -> None:
    """One PROMPT_TUNING adapter per task of a :class:`~mptkit.formats.PromptTable`, each in a
    subfolder named by :func:`~mptkit.formats._targets.safe_names`, and ``tasks.json`` listing the
    tasks (and their folders, where a name could not be one) in order."""
    folders = safe_names(table.names)
    for i, sub in enumerate(folders):
        (folder / sub).mkdir()
        write_prompt_adapter(table.adapter(i), folder / sub)
    manifest = {"tasks": table.names}
    if folders != table.names:
        manifest["folders"] = folders
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# -- any other folder ------------------------------------------------------------------------------
def not_a_bank_folder(p: Path, shown: str, *, kind=None, adapter=None):
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


def not_a_prompt_folder(p: Path):
    raise InvalidBank(f"{p}: neither a PROMPT_TUNING adapter folder (no {peft.CONFIG_NAME}) nor a folder of them")


FORMAT = Format(
    name="peft-adapter",
    description="a PEFT adapter folder (adapter_config.json + adapter_model.safetensors or .bin)",
    label="a PEFT adapter folder",
    recognise=recognise,
    read_bank=read_bank,
    read_prompts=read_prompts,
    writes="bank",
    folder=True,
    write=write_bank,
    check=check_bank,
    replaceable=replaceable_bank,
)
PROMPT_TUNING = Format(
    name="prompt-tuning",
    description="one task's full prompt as a plain PEFT PROMPT_TUNING adapter folder",
    label="a PROMPT_TUNING adapter folder",
    writes="adapter",
    folder=True,
    write=write_prompt_adapter,
)
ADAPTERS = Format(
    name="adapters",
    description="one PROMPT_TUNING adapter folder per task, and tasks.json listing them in order",
    label="one PROMPT_TUNING adapter per task",
    recognise=_holds_adapters,
    read_prompts=read_prompts,
    writes="prompts",
    folder=True,
    write=write_adapters,
    check=check_adapters,
)
FOLDER = Format(
    name="folder",
    description="any other folder: not a bank (says what it is instead)",
    recognise=lambda p: p.is_dir(),
    read_bank=not_a_bank_folder,
    read_prompts=not_a_prompt_folder,
    fallback=True,
)
