"""PyTorch pickles (``.bin``/``.pt``/``.pth``), read with ``torch.load(weights_only=True)`` only.

Full unpickling can run arbitrary code, so it is never used: a pickle that names anything but
tensors and plain containers is refused with :class:`~mptkit.errors.UnsafeFile`.
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile

from ..errors import InvalidBank, UnsafeFile
from .safetensors import check_regular_file, sniff


def read(path: str) -> dict:
    """``{name: torch.Tensor}`` from a weights-only pickle, or a clear error."""
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
    if head.startswith(b"PK\x03\x04") and not _has_zip_end(path, size):
        raise InvalidBank(
            f"{path}: the file ends early: its zip archive has no end record (a truncated download? "
            "download it again)"
        )
    import torch

    try:
        with warnings.catch_warnings():  # e.g. torch's note on pickle protocols: not the user's business
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
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
    except (RuntimeError, zipfile.BadZipFile, ValueError, OSError, KeyError, TypeError) as e:
        msg = _first_sentence(str(e)) or type(e).__name__
        if "unexpected EOF" in msg or "truncated" in msg:
            raise InvalidBank(f"{path}: the file ends early ({msg}); a truncated download? download it again") from None
        raise InvalidBank(f"{path}: not a readable PyTorch checkpoint: it is corrupt or truncated ({msg})") from None
    except Exception as e:  # torch raises many types for hostile input; never a traceback
        raise InvalidBank(f"{path}: not a readable PyTorch checkpoint: it is corrupt or truncated ({type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise InvalidBank(f"{path}: expected a dict of tensors, found a {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise InvalidBank(f"{path}: entry {str(bad[0])[:60]!r} is not a named tensor; expected a dict of tensors")
    return obj


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
