"""PyTorch pickles (``.bin``/``.pt``/``.pth``), read with ``torch.load(weights_only=True)`` only.

Full unpickling can run arbitrary code, so it is never used: a pickle that names anything but
tensors and plain containers is refused with :class:`~mptkit.errors.UnsafeFile`.

A pickle is the one form that must be unpickled whole to find anything in it. What a hostile one
can make mptkit hold, or spend, is bounded before torch sees it: a zip checkpoint's member count
and central directory are read from its end record (O(1): 300,000 tiny storages once cost 34 s and
1.1 GB before they were refused), its members are checked before anything is inflated
(``torch.save`` stores them uncompressed; a 1.2 MB deflate bomb once inflated to 1.4 GB), and its
pickle program is sized and scanned first by a C-speed pass that builds nothing (:class:`_Scan`:
it counts the storages and tensors and notes which storage each tensor uses).

A zip checkpoint's tensors are then described by torch on the meta device (no data read, nothing
mapped) and read from the file like a safetensors bank's: each tensor an
:class:`~mptkit._tensor.Array` of its storage member's bytes, read when needed by ``pread``. So a
storage member shorter than its tensor is refused (it was read with the neighbouring zip bytes as
values), and a file truncated while mptkit works is one sentence (a memory-mapped read of it killed
the process with SIGBUS). Tensors are sized by the storage really in the file before anything is
copied (a 1.8 kB pickle of ``zeros(1).expand(20000, 25000)`` once became 2 GB): a view bigger than
its storage, a sparse, meta or quantized tensor is refused. A legacy (pre-zip) pickle is loaded
into memory as before, after the same caps.
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile

from .._dtypes import code_of_torch, itemsize as itemsize_of
from .._tensor import Array
from ..errors import InvalidBank, UnsafeFile
from . import _pickle_scan as scan
from ._pickle_scan import MAX_MEMBERS, MAX_PICKLE_BYTES  # noqa: F401  (re-exported)
from ._safetensors import check_regular_file, sniff

#: entries of a pickle that wrap the state dict (DeepSpeed's "module", Lightning's "state_dict", ...)
WRAPPER_ENTRIES = ("module", "state_dict", "model", "model_state_dict")


def load(path: str):
    """``(obj, members)``: the object a weights-only pickle holds and, for a zip checkpoint, its
    :class:`~mptkit.formats._pickle_scan.Members` (its tensors are then meta tensors whose bytes
    :func:`array` reads from the file); None for a pickle loaded into memory. Or a clear error."""
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
    if not head.startswith(b"PK\x03\x04"):  # a legacy pickle: capped, then loaded into memory
        scan.scan(path, None)
        return _torch_load(path, map_location="cpu"), None
    members = scan.zip_members(path, size)
    found = scan.scan(path, members)
    if members.big_endian:  # torch swaps the bytes as it reads them (on the meta device it crashes: SIGSEGV)
        return _torch_load(path, map_location="cpu"), None
    try:
        obj = _torch_load(path, map_location="meta", fallback=True)
    except _MetaFailed:  # a tensor torch cannot describe without its data (a quantized one, say)
        obj = None
    if obj is not None and found is not None and scan.attach(obj, found, WRAPPER_ENTRIES):
        return obj, members
    return _torch_load(path, map_location="cpu"), None  # torch reads the data itself (and checks it)


class _MetaFailed(Exception):
    pass


def _torch_load(path: str, *, map_location: str, fallback: bool = False):
    import torch

    try:
        with warnings.catch_warnings():  # e.g. torch's note on pickle protocols: not the user's business
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
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
        msg = scan.first_sentence(str(e)) or type(e).__name__
        if fallback:  # on the meta device: torch judges the file again, reading its data
            raise _MetaFailed() from None
        if "unexpected EOF" in msg or "truncated" in msg:
            raise InvalidBank(f"{path}: the file ends early ({msg}); a truncated download? download it again") from None
        raise InvalidBank(f"{path}: not a readable PyTorch checkpoint: it is corrupt or truncated ({msg})") from None
    except Exception as e:  # torch raises many types for hostile input; never a traceback
        if fallback:
            raise _MetaFailed() from None
        raise InvalidBank(
            f"{path}: not a readable PyTorch checkpoint: it is corrupt or truncated ({type(e).__name__})"
        ) from None


def array(path: str, name: str, t, members) -> Array:
    """Tensor ``t`` (named ``name`` in ``path``) as an :class:`~mptkit._tensor.Array`, checked first
    (:func:`check_tensor`). A meta tensor of a zip checkpoint is the bytes of its storage member,
    read from the file when needed; its member must hold exactly the storage the pickle describes
    (a shorter one was read with the neighbouring zip bytes as values). A ValueError for a dtype a
    bank cannot hold."""
    check_tensor(path, name, t)
    if not t.is_meta:
        return Array.from_torch(t)
    ref = getattr(t, "_mptkit_storage", None)
    dtype = code_of_torch(t.dtype)
    if ref is None or dtype is None:
        raise ValueError(f"unsupported tensor {t.dtype}")
    found = members.data(ref.key)
    need = ref.numel * ref.itemsize if ref.itemsize else t.untyped_storage().nbytes()
    if found is None:
        raise InvalidBank(f"{path}: tensor {name!r} views storage {ref.key!r}, which the zip archive does not hold")
    start, have = found
    if have != need:
        raise InvalidBank(
            f"{path}: tensor {name!r} views storage {ref.key!r}, whose member holds {have:,} bytes, but the pickle "
            f"describes a storage of {need:,} bytes ({ref.numel:,} elements): the archive is corrupt (torch.load "
            "refuses it too)"
        )
    itemsize = itemsize_of(dtype)
    if t.is_contiguous():
        return Array.from_file(path, start + t.storage_offset() * itemsize, dtype, tuple(t.shape))
    return _strided(path, name, t, dtype, start)


def _strided(path: str, name: str, t, dtype: str, start: int) -> Array:
    """A tensor that is not one C-ordered run of its storage: the span of the storage it covers,
    read and rearranged in memory."""
    import torch

    itemsize = itemsize_of(dtype)
    extent = t.storage_offset() + 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride())) if t.numel() else 0
    data = bytearray(extent * itemsize)
    with open(path, "rb") as f:
        got = os.preadv(f.fileno(), [data], start) if data else 0
    if got != len(data):
        raise InvalidBank(f"{path}: the file ended early: it changed while tensor {name!r} was read")
    flat = torch.frombuffer(data, dtype=torch.uint8).view(t.dtype) if data else torch.empty(0, dtype=t.dtype)
    return Array.from_torch(flat.as_strided(tuple(t.shape), t.stride(), t.storage_offset()).contiguous())


def read(path: str) -> dict:
    """``{name: Array}`` of a weights-only pickle's top-level state dict (tensor data left in the
    file for a zip checkpoint), or a clear error."""
    obj, members = load(path)
    found = state_dicts(obj)
    if not found:
        raise InvalidBank(f"{path}: expected a dict of tensors (a state dict), found a {type(obj).__name__}")
    return {k: array(path, k, t, members) for k, t in found[0][1].items()}


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
    if t.is_meta and getattr(t, "_mptkit_storage", None) is None:  # (torch describes a zip's tensors as meta)
        raise InvalidBank(f"{path}: tensor {name!r} is a meta tensor: it has a shape but no data")
    if t.is_quantized:
        raise InvalidBank(f"{path}: tensor {name!r} is quantized ({t.dtype}); a prompt bank holds float tensors")
    reach = 1 + sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride())) if t.numel() else 0
    need = max(t.numel(), reach) * t.element_size()  # its values, and the furthest element it views
    have = t.untyped_storage().nbytes() - t.storage_offset() * t.element_size()
    if need > have or t.storage_offset() < 0:
        raise InvalidBank(
            f"{path}: tensor {name!r} is a view of shape {list(t.shape)} (strides {list(t.stride())}, "
            f"{need:,} bytes) over a storage of only {max(have, 0):,} bytes; a saved bank's tensors hold their own "
            "data (this one would be blown up in memory)"
        )
