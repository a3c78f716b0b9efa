"""PEFT adapter folders: ``adapter_config.json`` + ``adapter_model.safetensors`` (or ``.bin``)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from ..errors import UsageError
from ._checkpoints import read_json_file

CONFIG_NAME = "adapter_config.json"
SAFETENSORS_NAME = "adapter_model.safetensors"
BIN_NAME = "adapter_model.bin"

#: what PEFT's MultitaskPromptTuningConfig writes when nothing else is known
PEFT_DEFAULTS: dict = {
    "auto_mapping": None,
    "base_model_name_or_path": None,
    "inference_mode": True,
    "modules_to_save": None,
    "num_attention_heads": None,
    "num_layers": None,
    "num_ranks": 1,
    "num_tasks": 1,
    "num_transformer_submodules": None,
    "num_virtual_tokens": None,
    "peft_type": "MULTITASK_PROMPT_TUNING",
    "prompt_tuning_init": "RANDOM",
    "prompt_tuning_init_state_dict_path": None,
    "prompt_tuning_init_task": 0,
    "prompt_tuning_init_text": None,
    "revision": None,
    "task_type": None,
    "token_dim": None,
    "tokenizer_kwargs": None,
    "tokenizer_name_or_path": None,
}

#: PEFT's configs are ~1 kB; more than this is not one
MAX_CONFIG_BYTES = 1_000_000
#: the initialisations that make PEFT read prompt_tuning_init_state_dict_path at every load
SOURCE_INITS = ("AVERAGE_SOURCE_TASKS", "EXACT_SOURCE_TASK", "ONLY_SOURCE_SHARED")
#: what an adapter mptkit writes says about its initialisation: it needs no file and no tokenizer
#: to load (a stale TEXT field makes PEFT's config refuse itself, e.g. tokenizer_kwargs without TEXT)
CLEAN_INIT = {
    "prompt_tuning_init": "RANDOM",
    "prompt_tuning_init_state_dict_path": None,
    "prompt_tuning_init_task": 0,
    "prompt_tuning_init_text": None,
    "tokenizer_name_or_path": None,
    "tokenizer_kwargs": None,
}

#: the config fields a bare file keeps in its ``mptkit.config`` metadata (and a prompt table in its
#: sidecar): what says which model and task a prompt is for and how its N rows split
HINT_FIELDS = (
    "task_type",
    "num_virtual_tokens",
    "num_transformer_submodules",
    "base_model_name_or_path",
    "num_layers",
    "num_attention_heads",
)
#: the config fields a PROMPT_TUNING adapter's prompt carries into decompose (what the inputs agree on)
PROMPT_FIELDS = (*HINT_FIELDS, "token_dim")


def peft_version() -> str | None:
    from importlib import metadata  # here, not at the top: ~20 ms that inspect and validate never need

    try:
        return metadata.version("peft")
    except metadata.PackageNotFoundError:
        return None


def config_hints(config: Mapping | None) -> dict:
    """The fields of ``config`` worth carrying in a bare file's metadata."""
    return {k: config[k] for k in HINT_FIELDS if config and config.get(k) is not None}


def complete_config(
    config: Mapping | None, *, num_tokens: int, token_dim: int, num_tasks: int, num_ranks: int, where: str
) -> dict:
    """An adapter_config.json for these shapes: PEFT's defaults, the known fields, the shapes, and
    ``prompt_tuning_init: RANDOM`` with no init path (so the adapter never re-reads a source file)."""
    cfg = dict(PEFT_DEFAULTS)
    cfg.update(config or {})
    task_type = cfg.get("task_type")
    v, s = cfg.get("num_virtual_tokens"), cfg.get("num_transformer_submodules")
    if s is None and v is not None and task_type is not None:
        s = num_tokens // v if v and num_tokens % v == 0 else (2 if task_type == "SEQ_2_SEQ_LM" else 1)
    if v is None and s:
        v = num_tokens // s if num_tokens % s == 0 else None
    missing = []
    if task_type is None:
        missing.append("--task-type")
    if v is None:
        missing.append("--num-virtual-tokens (or --num-transformer-submodules)")
    if missing:
        raise UsageError(
            f"{where} carries no adapter_config.json, so an adapter folder needs "
            + " and ".join(missing)
            + f" (N = {num_tokens} virtual tokens in all); or write a .safetensors file instead"
        )
    if v * s != num_tokens:
        raise UsageError(
            f"num_virtual_tokens x num_transformer_submodules = {v} x {s} = {v * s}, but the prompt has "
            f"N = {num_tokens} rows ({where})"
        )
    cfg.update(
        num_virtual_tokens=v,
        num_transformer_submodules=s,
        token_dim=token_dim,
        num_tasks=num_tasks,
        num_ranks=num_ranks,
        peft_type="MULTITASK_PROMPT_TUNING",
        inference_mode=True,
        **CLEAN_INIT,
    )
    version = peft_version()
    if version and "peft_version" not in (config or {}):
        cfg["peft_version"] = version
    return cfg


def repairs(config: Mapping | None) -> list[str]:
    """What :func:`complete_config` changes in ``config`` so that PEFT loads the adapter without a
    source file or a tokenizer: one phrase per field (empty when nothing needed repair)."""
    out = []
    for key, clean in CLEAN_INIT.items():
        if (
            config
            and key in config
            and config[key] != clean
            and not (key == "prompt_tuning_init_task" and not config[key])
        ):
            out.append(f"{key} {json.dumps(config[key], ensure_ascii=False)[:80]} -> {json.dumps(clean)}")
    return out


def load_time_warnings(config, folder: str) -> list[str]:
    """What PEFT reads, or refuses, when it loads an adapter with this config: the
    prompt_tuning_init_state_dict_path that a source initialisation re-reads at every load (and
    whether it exists, checked with stat only: mptkit never reads it), the tokenizer a TEXT
    initialisation loads for training, and the TEXT fields PEFT's config refuses."""
    if not isinstance(config, dict):
        return []
    init, path = config.get("prompt_tuning_init"), config.get("prompt_tuning_init_state_dict_path")
    tok = config.get("tokenizer_name_or_path")
    out = []
    if init in SOURCE_INITS:
        if path is None:
            out.append(
                f"prompt_tuning_init is {init} but prompt_tuning_init_state_dict_path is null: PEFT refuses to "
                "load this adapter (mptkit's outputs say RANDOM)"
            )
        else:
            there = "exists" if os.path.exists(path) else "does not exist from here, so loading fails"
            out.append(
                f"prompt_tuning_init is {init}: PEFT re-reads prompt_tuning_init_state_dict_path {path!r} every "
                f"time it loads this adapter (resolved from the directory PEFT runs in; that file {there}); "
                "mptkit's outputs say RANDOM with a null path"
            )
    elif path is not None:
        out.append(f"prompt_tuning_init_state_dict_path {path!r} is set but unused (prompt_tuning_init is {init})")
    if init == "TEXT":
        if not tok or config.get("prompt_tuning_init_text") is None:
            out.append(
                "prompt_tuning_init is TEXT without tokenizer_name_or_path and prompt_tuning_init_text: PEFT "
                "refuses to load this adapter"
            )
        else:
            there = "a local folder" if os.path.isdir(tok) else "not a local folder (a Hub model id?)"
            out.append(
                f"prompt_tuning_init is TEXT: PEFT loads tokenizer {tok!r} when this adapter is loaded for "
                f"training (is_trainable=True); it is {there}"
            )
    elif config.get("tokenizer_kwargs"):
        out.append(f"tokenizer_kwargs is set but prompt_tuning_init is {init}: PEFT refuses to load this adapter")
    return [f"warning: {folder}: {w}" for w in out]


def config_text(config: Mapping) -> str:
    """adapter_config.json as PEFT writes it (indent 2, sorted keys, no trailing newline)."""
    return json.dumps(dict(config), indent=2, sort_keys=True)


def read_config(path: str | Path, shown: str | None = None):
    """Parse an adapter_config.json (any JSON value; the schema judges it), or a clear InvalidBank:
    not a regular file (a FIFO would block), over :data:`MAX_CONFIG_BYTES`, not UTF-8, not strict
    JSON, nested too deeply. ``shown`` names the file in messages (an hf:// reference, say)."""
    return read_json_file(Path(path), shown or str(path), max_bytes=MAX_CONFIG_BYTES)
