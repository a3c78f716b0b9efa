"""PyTorch pickles (``.bin``/``.pt``/``.pth``): a bank, a prompt encoder's state dict, a whole model's,
or one wrapped by DeepSpeed/Lightning (``{"module": ...}``), read with ``torch.load(weights_only=True)``
only (:mod:`mptkit.formats._pickle` refuses anything that would run code). Read only."""

from __future__ import annotations

from pathlib import Path

from .._bank import PromptBank, Source
from ..errors import InvalidBank
from . import _checkpoints as checkpoints
from ._bankcheck import finish, set_aside_heads
from ._registry import Format

SUFFIXES = (".bin", ".pt", ".pth")
NOTE = (
    "{file} is a pickle: the whole file had to be unpickled (torch.load, weights only{mapped}) to find "
    "the bank among its {n} tensors; every other form is read header first"
)


def read_bank(
    p: Path,
    shown: str,
    *,
    kind: str | None = None,
    adapter: str | None = None,
    fmt: str = "pickle",
    config: dict | None = None,
    config_file: str | None = None,
) -> PromptBank:
    from . import _pickle as pk

    obj, members = pk.load(str(p))
    candidates = pk.state_dicts(obj)
    if not candidates:
        raise InvalidBank(f"{p}: expected a dict of tensors (a state dict), found a {type(obj).__name__}")
    where, sd, found = candidates[0][0], candidates[0][1], None
    for w, d in candidates:
        banks = checkpoints.find_banks(d)
        if banks:
            where, sd = w, d
            found = checkpoints.choose(banks, adapter, shown)
            break
    else:
        checkpoints.choose({}, adapter, shown)
    picked = {k: sd[v] for k, v in found.keys.items()} if found and found.form != "bank" else dict(sd)
    heads, notes = set_aside_heads(dict.fromkeys(picked), config_file)
    arrays, tensors = {}, {}
    for k, t in picked.items():
        try:  # a zip checkpoint's tensors stay in the file, read when needed like a safetensors bank's
            arrays[k] = pk.array(str(p), found.keys.get(k, k) if found else k, t, members)
            tensors[k] = {"dtype": arrays[k].dtype, "shape": list(arrays[k].shape)}
        except ValueError:
            tensors[k] = {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
    count = len(sd)
    del obj, candidates, sd, picked
    extras = {k: arrays.pop(k) for k in heads if k in arrays}
    for k in heads:
        tensors.pop(k, None)
    inside = f" (under {where})" if where else ""
    if found is not None and found.form != "bank":
        fmt = f"{found.form} pickle" if fmt == "pickle" else fmt
        notes.append(f"read {found.label}{inside} from {p}")
    mapped = ", its tensor data left in the file" if members is not None else ""
    notes.append(NOTE.format(file=p.name, mapped=mapped, n=f"{count:,}"))
    return finish(
        tensors,
        lambda: (arrays, extras),
        None,
        config,
        config_file,
        kind,
        str(p),
        Source(shown, fmt, str(p), p.stat().st_size),
        notes,
    )


FORMAT = Format(
    name="pickle",
    description="a PyTorch pickle (.bin/.pt/.pth) holding a bank, a prompt encoder or a whole model; read only",
    recognise=lambda p: not p.is_dir() and p.suffix.lower() in SUFFIXES,
    read_bank=read_bank,
)
