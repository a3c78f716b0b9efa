"""Options shared by the Python API and the CLI, defined once (as mergekit defines its merge options
once for both): PEFT task types, and the adapter_config.json fields a user can supply
for a source that carries no config. The API checks values with these definitions; the CLI builds
its ``click`` options from them (:mod:`mptkit.cli._app`), so a choice or a rule never exists twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from .errors import UsageError

#: Hub transfers (``--timeout``, ``--deadline``; :mod:`mptkit.hub._http`): seconds a server may send
#: less than 1 kB before it is given up, and seconds all of one command's transfers may take
HUB_TIMEOUT = 30.0
HUB_DEADLINE = 3600.0


@cache
def task_types() -> tuple[str, ...]:
    """PEFT's task types, from ``schemas/adapter_config.schema.json`` (the one list of them)."""
    from ._schema import load_schema

    return tuple(t for t in load_schema("adapter_config")["properties"]["task_type"]["enum"] if t is not None)


@dataclass(frozen=True)
class ConfigField:
    """One adapter_config.json field a user may set: its CLI flag, help, and allowed values."""

    key: str
    flag: str
    help: str
    kind: type = str
    minimum: int | None = None
    maximum: int | None = None

    def check(self, value: Any) -> Any:
        if value is None:
            return None
        if self.key == "task_type":
            upper = str(value).upper()
            if upper not in task_types():
                raise UsageError(f"{self.flag} {value!r} is not one of {', '.join(task_types())}")
            return upper
        if self.kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise UsageError(f"{self.flag} must be an integer, found {value!r}")
            if (self.minimum is not None and value < self.minimum) or (
                self.maximum is not None and value > self.maximum
            ):
                span = f"{self.minimum} to {self.maximum}" if self.maximum is not None else f"at least {self.minimum}"
                raise UsageError(f"{self.flag} must be {span}, found {value}")
            return value
        if not isinstance(value, str) or not value:
            raise UsageError(f"{self.flag} must be a non-empty string, found {value!r}")
        return value


#: the config fields a user can supply (``config=`` in the API, these flags in the CLI)
CONFIG_FIELDS: tuple[ConfigField, ...] = (
    ConfigField(
        "task_type", "--task-type", "PEFT task type, needed for an adapter folder when the source has no config."
    ),
    ConfigField("num_virtual_tokens", "--num-virtual-tokens", "Virtual tokens per submodule.", int, 1),
    ConfigField(
        "num_transformer_submodules",
        "--num-transformer-submodules",
        "1 (causal LM) or 2 (seq2seq: encoder and decoder halves).",
        int,
        1,
        2,
    ),
    ConfigField("base_model_name_or_path", "--base-model", "base_model_name_or_path for the adapter config."),
)


def config_fields(config: Mapping[str, Any] | None) -> dict:
    """``config`` checked against :data:`CONFIG_FIELDS`, None values dropped. Keys are
    adapter_config.json field names; an unknown key is a :class:`UsageError`."""
    known = {f.key: f for f in CONFIG_FIELDS}
    out = {}
    for key, value in (config or {}).items():
        if key not in known:
            raise UsageError(f"unknown config field {key!r}; expected one of {', '.join(known)}")
        checked = known[key].check(value)
        if checked is not None:
            out[key] = checked
    return out
