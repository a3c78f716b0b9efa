"""PyTorch pickles (``.bin``/``.pt``/``.pth``), read with ``torch.load(weights_only=True)`` only.

Full unpickling can run arbitrary code, so it is never used: a pickle that names anything but
tensors and plain containers is refused with :class:`~mptkit.errors.UnsafeFile`.
"""

from __future__ import annotations

import os
import pickle
import zipfile

from ..errors import InvalidBank, UnsafeFile
from .safetensors import sniff


def read(path: str) -> dict:
    """``{name: torch.Tensor}`` from a weights-only pickle, or a clear error."""
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
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        detail = next((ln.strip() for ln in first if "GLOBAL" in ln or "Unsupported" in ln), "")
        raise UnsafeFile(
            f"{path}: refused: the pickle asks to load objects other than tensors"
            + (f" ({detail[:160]})" if detail else "")
            + "; mptkit loads weights only and never runs code from a file"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, TypeError) as e:
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise InvalidBank(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt? {msg})") from None
    except Exception as e:  # torch raises many types for hostile input; never a traceback
        raise InvalidBank(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise InvalidBank(f"{path}: expected a dict of tensors, found a {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise InvalidBank(f"{path}: entry {str(bad[0])[:60]!r} is not a named tensor; expected a dict of tensors")
    return obj
