"""``convert``: any form mptkit reads (a whole-model, wrapped, sharded or prompt-encoder state dict,
a pickle, a named adapter, an adapter folder or a bare file) to a PEFT adapter folder or a bare
``.safetensors`` bank. The tensors are the source's bytes, unchanged, unless ``dtype`` casts them
(torch is imported only then); the provenance says "convert" and what the source was."""

from __future__ import annotations

from ._bank import PromptBank
from ._dtypes import storage_dtype
from ._numerics import cast, clamping


def convert(
    bank: PromptBank, *, dtype: str | None = None, config: dict | None = None, clamp: bool = False
) -> PromptBank:
    """``bank`` with a "convert" provenance entry (its source's form, and the dtype when cast), in
    ``dtype`` ("float32", "bfloat16", ...; default: as stored), with the user's adapter_config.json
    ``config`` fields (task_type, num_virtual_tokens, ...) for a folder output from a source that
    carries no config. Values beyond a narrower ``dtype``'s range are refused, or with ``clamp``
    stored as its largest value (:func:`mptkit._numerics.in_range`). Save it with :func:`mptkit.save`."""
    target = storage_dtype(dtype, bank.dtype)
    with clamping(clamp):  # the same handles when not cast
        tensors = {k: cast(a, target, f"{bank.where}: tensor {k!r}") for k, a in bank.tensors.items()}
    args: dict = {"from": bank.source.format if bank.source else "memory"}
    if target != bank.dtype:
        args["dtype"] = dtype
        if clamp:
            args["clamp"] = True
    entry = bank.provenance_entry("convert", args)
    out = bank.with_tensors(tensors, bank.task_names, provenance=[*bank.provenance, entry])
    return out.with_config(config)
