"""PEFT adapter folders: ``adapter_config.json`` + ``adapter_model.safetensors`` (or ``.bin``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from ..errors import InvalidBank, UsageError

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

#: the config fields a bare file keeps in its ``mptkit.config`` metadata
HINT_FIELDS = ("task_type", "num_virtual_tokens", "num_transformer_submodules", "base_model_name_or_path",
               "num_layers", "num_attention_heads")


def peft_version() -> str | None:
    from importlib import metadata  # here, not at the top: ~20 ms that inspect and validate never need

    try:
        return metadata.version("peft")
    except metadata.PackageNotFoundError:
        return None


def config_hints(config: Mapping | None) -> dict:
    """The fields of ``config`` worth carrying in a bare file's metadata."""
    return {k: config[k] for k in HINT_FIELDS if config and config.get(k) is not None}


def complete_config(config: Mapping | None, *, num_tokens: int, token_dim: int, num_tasks: int, num_ranks: int,
                    where: str) -> dict:
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
        prompt_tuning_init="RANDOM",
        prompt_tuning_init_state_dict_path=None,
        prompt_tuning_init_task=0,
        inference_mode=True,
    )
    version = peft_version()
    if version and "peft_version" not in (config or {}):
        cfg["peft_version"] = version
    return cfg


def config_text(config: Mapping) -> str:
    """adapter_config.json as PEFT writes it (indent 2, sorted keys, no trailing newline)."""
    return json.dumps(dict(config), indent=2, sort_keys=True)


def read_config(path: str | Path, shown: str | None = None):
    """Parse an adapter_config.json (any JSON value; the schema judges it), or a clear InvalidBank.
    ``shown`` names the file in messages (an hf:// reference, say)."""
    shown = shown or str(path)
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InvalidBank(f"{shown}: not UTF-8 text; expected a JSON object") from None
    except RecursionError:
        raise InvalidBank(f"{shown}: the JSON is nested too deeply") from None
    except json.JSONDecodeError as e:
        raise InvalidBank(f"{shown}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except ValueError as e:  # e.g. an integer with more digits than Python converts
        raise InvalidBank(f"{shown}: not valid JSON ({str(e)[:80]})") from None
    except OSError as e:
        raise InvalidBank(f"{shown}: cannot read it ({e.strerror or e})") from None
    try:  # a \u escape of half a surrogate pair parses, but is no text: it could not be printed or written
        json.dumps(config, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidBank(f"{shown}: holds a \\u escape of a lone UTF-16 surrogate, which is not text") from None
    return config
