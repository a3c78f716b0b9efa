"""PyTorch pickles (``.bin``/``.pt``/``.pth``), read with ``torch.load(weights_only=True)`` only.

Full unpickling can run arbitrary code, so it is never used: a pickle that names anything but
tensors and plain containers is refused with :class:`~mptkit.errors.UnsafeFile`.

A pickle is the one form that must be unpickled whole to find anything in it. What a hostile one
can make mptkit hold is bounded before and after: a zip checkpoint's members are checked before
anything is inflated (``torch.save`` stores them uncompressed; a 1.2 MB deflate bomb once inflated
to 1.4 GB), its tensor data is memory-mapped, not read, and the bank's tensors are sized by the
storage really in the file before they are copied (a 1.8 kB pickle of
``zeros(1).expand(20000, 25000)`` once became 2 GB): a view bigger than its storage, a sparse, meta
or quantized tensor is refused.
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile

from ..errors import InvalidBank, UnsafeFile
from ._safetensors import check_regular_file, sniff

#: most bytes of the pickle program inside a zip checkpoint (a whole model's is a few MB)
MAX_PICKLE_BYTES = 64_000_000
#: entries of a pickle that wrap the state dict (DeepSpeed's "module", Lightning's "state_dict", ...)
WRAPPER_ENTRIES = ("module", "state_dict", "model", "model_state_dict")
#: most members of a zip checkpoint (one per storage; a whole model has a few thousand)
MAX_MEMBERS = 500_000


def load(path: str):
    """The object a weights-only pickle holds (tensor data memory-mapped for zip checkpoints), and
    whether it was memory-mapped; or a clear error."""
    check_regular_file(path)
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise InvalidBank(f"{path}: cannot read the file ({e.strerror or e})") from None
    if size == 0:
        raise InvalidBank(f"{path}: the file is empty (0 bytes); expected a PyTorch checkpoint")
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        if len(head) >= 9 and head[8:9] == b"{":
            raise InvalidBank(f"{path}: this is a safetensors file under a pickle name (rename it to .safetensors)")
        what = sniff(head)
        raise InvalidBank(f"{path}: not a PyTorch checkpoint" + (f"; it is {what}" if what else " (unknown content)"))
    is_zip = head.startswith(b"PK\x03\x04")
    if is_zip:
        if not _has_zip_end(path, size):
            raise InvalidBank(
                f"{path}: the file ends early: its zip archive has no end record (a truncated download? "
                "download it again)"
            )
        _check_members(path)
    import torch

    try:
        with warnings.catch_warnings():  # e.g. torch's note on pickle protocols: not the user's business
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        lines = str(e).strip().splitlines()
        detail = next((ln.strip() for ln in lines if "GLOBAL" in ln), "")
        if detail:
            raise UnsafeFile(
                f"{path}: refused: the pickle asks to load objects other than tensors ({detail[:160]}); "
                "mptkit loads weights only and never runs code from a file"
            ) from None
        detail = next((ln.strip() for ln in lines if "Unsupported" in ln or "truncated" in ln), "")
        raise UnsafeFile(
            f"{path}: refused: the pickle is not a PyTorch checkpoint of plain tensors, or is corrupt"
            + (f" ({detail[:160]})" if detail else "")
            + "; mptkit loads weights only and never runs code from a file"
        ) from None
    except EOFError:
        raise InvalidBank(f"{path}: the file ends early (a truncated download? download it again)") from None
    except MemoryError:
        raise InvalidBank(
            f"{path}: unpickling it needs more memory than there is (it claims storages larger than the file)"
        ) from None
    except (RuntimeError, zipfile.BadZipFile, ValueError, OSError, KeyError, TypeError) as e:
        msg = _first_sentence(str(e)) or type(e).__name__
        if "unexpected EOF" in msg or "truncated" in msg:
            raise InvalidBank(f"{path}: the file ends early ({msg}); a truncated download? download it again") from None
        raise InvalidBank(f"{path}: not a readable PyTorch checkpoint: it is corrupt or truncated ({msg})") from None
    except Exception as e:  # torch raises many types for hostile input; never a traceback
        raise InvalidBank(
            f"{path}: not a readable PyTorch checkpoint: it is corrupt or truncated ({type(e).__name__})"
        ) from None
    return obj, is_zip


def read(path: str) -> dict:
    """``{name: torch.Tensor}`` of a weights-only pickle's top-level state dict (tensors still
    memory-mapped for a zip checkpoint), or a clear error."""
    obj, _ = load(path)
    found = state_dicts(obj)
    if not found:
        raise InvalidBank(f"{path}: expected a dict of tensors (a state dict), found a {type(obj).__name__}")
    return found[0][1]


def state_dicts(obj) -> list[tuple[str, dict]]:
    """The state dicts a loaded pickle may be: the object itself, and the dicts under wrapper
    entries (DeepSpeed's ``{"module": ...}``, ``{"state_dict": ...}``, ``{"model": ...}``, one level
    inside another), each as ``(where, {name: tensor})`` with non-tensor entries left out."""
    import torch

    out, todo = [], [("", obj)]
    while todo:
        where, d = todo.pop(0)
        if not isinstance(d, dict):
            continue
        tensors = {k: v for k, v in d.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        out.append((where, tensors))
        if where.count("[") < 2:
            todo += [(f"{where}[{k!r}]", d[k]) for k in WRAPPER_ENTRIES if isinstance(d.get(k), dict)]
    return out


def check_tensor(path: str, name: str, t) -> None:
    """Refuse a tensor that is not plain dense data in its own storage, before anything copies it."""
    import torch

    if t.layout != torch.strided:
        raise InvalidBank(
            f"{path}: tensor {name!r} is a {str(t.layout).removeprefix('torch.')} tensor; a prompt "
            "bank holds dense tensors"
        )
    if t.is_meta:
        raise InvalidBank(f"{path}: tensor {name!r} is a meta tensor: it has a shape but no data")
    if t.is_quantized:
        raise InvalidBank(f"{path}: tensor {name!r} is quantized ({t.dtype}); a prompt bank holds float tensors")
    need = t.numel() * t.element_size()
    have = t.untyped_storage().nbytes() - t.storage_offset() * t.element_size()
    if need > have:
        raise InvalidBank(
            f"{path}: tensor {name!r} is a view of shape {list(t.shape)} (strides {list(t.stride())}, "
            f"{need:,} bytes) over a storage of only {max(have, 0):,} bytes; a saved bank's tensors hold their own "
            "data (this one would be blown up in memory)"
        )


def _check_members(path: str) -> None:
    """A zip checkpoint as ``torch.save`` writes it: every member stored, not compressed (checked
    from the central directory, before anything is inflated), and a pickle program of sane size."""
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise InvalidBank(
            f"{path}: not a readable PyTorch checkpoint: the zip archive is corrupt ({_first_sentence(str(e))})"
        ) from None
    if len(infos) > MAX_MEMBERS:
        raise InvalidBank(
            f"{path}: the zip archive has {len(infos):,} members, more than the {MAX_MEMBERS:,} mptkit reads"
        )
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise InvalidBank(
                f"{path}: member {info.filename[:80]!r} is compressed ({info.compress_size:,} bytes that would inflate "
                f"to {info.file_size:,}); torch.save stores every member uncompressed, and mptkit does not inflate "
                "archives (save the checkpoint again with torch.save)"
            )
        if info.filename.endswith(".pkl") and info.file_size > MAX_PICKLE_BYTES:
            raise InvalidBank(
                f"{path}: its pickle {info.filename[:80]!r} is {info.file_size:,} bytes, more than the "
                f"{MAX_PICKLE_BYTES:,} mptkit unpickles (a whole model's is a few MB)"
            )


def _has_zip_end(path: str, size: int) -> bool:
    """Whether the last 64 kB of the file hold a zip end-of-central-directory record."""
    with open(path, "rb") as f:
        f.seek(max(0, size - (1 << 16) - 22))
        return b"PK\x05\x06" in f.read()


def _first_sentence(text: str) -> str:
    """The first line of an exception message, up to its first sentence end, at most 160 characters."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    cut = line.find(". ")
    return (line[: cut + 1] if cut > 0 else line)[:160]
