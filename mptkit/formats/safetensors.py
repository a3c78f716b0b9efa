"""safetensors, read header first and written as a stream, without torch or the safetensors package.

The reader parses the 8-byte header length and the JSON header itself so that every way a file can
be broken gets a diagnosis naming the file (an empty file, a truncated download, a git-lfs pointer,
an HTML error page, a pickle under the wrong name, a header that is not JSON, offsets past the end),
and so that it never allocates more than the file holds. Tensor data stays on disk as
:class:`~mptkit.tensor.Array` segments until someone reads it.

The writer produces the same bytes as ``safetensors.torch.save_file`` for the same tensors and
metadata (tensor order, offsets, header padding), streaming each tensor in chunks.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from typing import BinaryIO, Mapping

from ..errors import InvalidBank
from ..tensor import DTYPES, Array, safetensors_layout_key

#: safetensors' own limit on the header size
MAX_HEADER_BYTES = 100_000_000


@dataclass
class Header:
    path: str
    tensors: dict[str, dict]  # name -> {"dtype", "shape", "data_offsets"}
    metadata: dict | None
    data_start: int
    file_size: int

    def array(self, name: str) -> Array:
        info = self.tensors[name]
        return Array.from_file(self.path, self.data_start + info["data_offsets"][0], info["dtype"], info["shape"])


def sniff(head: bytes) -> str | None:
    """Name what a file that is not safetensors looks like, from its first bytes."""
    stripped = head.lstrip()
    low = stripped[:64].lower()
    if head.startswith(b"version https://git-lfs"):
        return "a git-lfs pointer file, not the tensor data (fetch the real file with `git lfs pull` or download it again)"
    if low.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        return "an HTML page, not tensor data (an error page saved as a file? download it again)"
    if head.startswith(b"PK\x03\x04"):
        return "a PyTorch checkpoint (zip) under a .safetensors name (rename it to .bin or .pt, or convert it)"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle under a .safetensors name (rename it to .bin or .pt, or convert it)"
    if stripped.startswith((b"{", b"[")):
        return "a JSON text file, not a safetensors file"
    return None


def read_header(path: str) -> Header:
    """Parse and check a safetensors header; raise :class:`InvalidBank` with a diagnosis."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(min(size, 8 + MAX_HEADER_BYTES, 1 << 16))
            if size == 0:
                raise InvalidBank(f"{path}: the file is empty (0 bytes); expected a safetensors file")
            what = sniff(head)
            if size < 8:
                raise InvalidBank(
                    f"{path}: the file is only {size} bytes; a safetensors file starts with an 8-byte header length"
                    + (f" (it looks like {what})" if what else "")
                )
            (n,) = struct.unpack("<Q", head[:8])
            if what and (n > size - 8 or n > MAX_HEADER_BYTES):
                raise InvalidBank(f"{path}: this is {what}")
            if n > MAX_HEADER_BYTES:
                raise InvalidBank(
                    f"{path}: the header length field says {n} bytes, more than safetensors allows "
                    f"({MAX_HEADER_BYTES}); the file is not a valid safetensors file"
                )
            if n > size - 8:
                raise InvalidBank(
                    f"{path}: the header length field says {n} bytes but only {size - 8} bytes follow it "
                    "(a truncated download, or not a safetensors file)"
                )
            if n < 2:
                raise InvalidBank(f"{path}: the header is {n} bytes long; expected a JSON object")
            raw = head[8 : 8 + n] if len(head) >= 8 + n else (head[8:] + f.read(8 + n - len(head)))
    except OSError as e:
        raise InvalidBank(f"{path}: cannot read the file ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidBank(f"{path}: the header is not valid UTF-8 (byte {e.start + 8} of the file)") from None
    try:
        obj = json.loads(text)
    except RecursionError:
        raise InvalidBank(f"{path}: the header JSON is nested too deeply") from None
    except ValueError as e:
        raise InvalidBank(f"{path}: the header is not valid JSON ({e.msg} at byte {e.pos + 8})") from None
    if not isinstance(obj, dict):
        raise InvalidBank(f"{path}: the header must be a JSON object, found a JSON {type(obj).__name__}")
    meta = obj.pop("__metadata__", None)
    if meta is not None and not isinstance(meta, dict):
        raise InvalidBank(f"{path}: __metadata__ must be a JSON object of strings, found {type(meta).__name__}")
    header = Header(path, obj, meta, 8 + n, size)
    problems = layout_problems(header)
    if problems:
        raise InvalidBank(f"{path}: {problems[0]}", [f"{path}: {p}" for p in problems])
    return header


def layout_problems(header: Header) -> list[str]:
    """Entries that cannot be read: bad dtype or shape, offsets that disagree with the shape,
    overlap, or point past the end of the file. (Which tensors a bank needs is the schema's job.)"""
    problems = []
    data_len = header.file_size - header.data_start
    spans = []
    for name, info in header.tensors.items():
        if not isinstance(info, dict):
            problems.append(f"tensor '{name}': expected an object with dtype, shape and data_offsets, found {json.dumps(info)[:60]}")
            continue
        dtype, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPES:
            problems.append(f"tensor '{name}': unknown dtype {json.dumps(dtype)[:40]} (expected one of {', '.join(DTYPES)})")
            continue
        if not (isinstance(shape, list) and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
            problems.append(f"tensor '{name}': shape must be a list of non-negative integers, found {json.dumps(shape)[:60]}")
            continue
        if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) and not isinstance(o, bool) for o in offs)):
            problems.append(f"tensor '{name}': data_offsets must be two integers [begin, end], found {json.dumps(offs)[:60]}")
            continue
        begin, end = offs
        nbytes = math.prod(shape) * DTYPES[dtype][0]
        if begin < 0 or end < begin:
            problems.append(f"tensor '{name}': data_offsets {offs} are not an increasing byte range")
        elif end - begin != nbytes:
            problems.append(
                f"tensor '{name}': data_offsets {offs} hold {end - begin} bytes but {dtype}{shape} needs {nbytes}"
            )
        elif end > data_len:
            problems.append(
                f"tensor '{name}': data ends at byte {end} of the data section but the file holds only "
                f"{data_len} data bytes (a truncated download?)"
            )
        else:
            spans.append((begin, end, name))
    spans.sort()
    for (b1, e1, n1), (b2, e2, n2) in zip(spans, spans[1:]):
        if b2 < e1:
            problems.append(f"tensors '{n1}' and '{n2}' overlap (bytes {b2}-{min(e1, e2)} of the data section)")
    return problems


def header_bytes(entries: Mapping[str, tuple[str, tuple]], metadata: Mapping[str, str] | None) -> tuple[bytes, list[str]]:
    """The header safetensors writes for ``{name: (dtype, shape)}`` and the tensors' order."""
    order = sorted(entries, key=lambda k: safetensors_layout_key(k, entries[k][0]))
    obj: dict = {}
    if metadata:
        keys = sorted(metadata, key=lambda k: (k != "format", k))
        obj["__metadata__"] = {k: metadata[k] for k in keys}
    pos = 0
    for name in order:
        dtype, shape = entries[name]
        n = math.prod(shape) * DTYPES[dtype][0]
        obj[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + n]}
        pos += n
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, order


def write(f: BinaryIO, tensors: Mapping[str, Array], metadata: Mapping[str, str] | None) -> int:
    """Stream ``tensors`` into the open binary file ``f``; return the number of bytes written."""
    head, order = header_bytes({k: (a.dtype, a.shape) for k, a in tensors.items()}, metadata)
    f.write(head)
    total = len(head)
    for name in order:
        for piece in tensors[name].iter_bytes():
            f.write(piece)
            total += len(piece)
    return total
