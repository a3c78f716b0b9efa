"""safetensors, read header first and written as a stream, without torch or the safetensors package.

The reader parses the 8-byte header length and the JSON header itself so that every way a file can
be broken gets a diagnosis naming the file (an empty file, a truncated download, a git-lfs pointer,
an HTML error page, a pickle under the wrong name, a header that is not JSON, offsets past the end),
and so that it never allocates more than the file holds. Tensor data stays on disk as
:class:`~mptkit._tensor.Array` segments until someone reads it.

The writer produces the same bytes as ``safetensors.torch.save_file`` for the same tensors and
metadata (tensor order, offsets, header padding), streaming each tensor in chunks.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import BinaryIO

from .._dtypes import BY_CODE, HEADER_BITS, itemsize, layout_key
from .._strictjson import MAX_JSON_VALUES, JsonProblem, count_json_values, parse_json
from .._tensor import Array
from ..errors import InvalidBank

#: safetensors' own limit on the header size
MAX_HEADER_BYTES = 100_000_000
#: most tensors one header may list (a whole-model file of the largest models has a few thousand
#: per shard) and most __metadata__ keys (PEFT writes 1, mptkit 4)
MAX_TENSORS = 200_000
MAX_METADATA_KEYS = 10_000
#: most dimensions a tensor may have here (a bank's have 2 or 3; whole models' up to 5)
MAX_DIMS = 8
_U64_MAX = (1 << 64) - 1
#: most problems listed for one header (a hostile header can hold millions of entries)
MAX_PROBLEMS = 20


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
    stripped = head.removeprefix(b"\xef\xbb\xbf").lstrip()  # a UTF-8 byte-order mark, then spaces
    low = stripped[:64].lower()
    # a real header length has zero high bytes; text has none, so it cannot be mistaken for text
    texty = len(head) >= 8 and all(c >= 32 or c in b"\t\n\r" for c in head[:8])
    if head.startswith(b"version https://git-lfs"):
        return (
            "a git-lfs pointer file, not the tensor data (fetch the real file with `git lfs pull` or download it again)"
        )
    if low.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        return "an HTML page, not tensor data (an error page saved as a file? download it again)"
    if head.startswith(b"PK\x03\x04"):
        return "a PyTorch checkpoint (zip) under a .safetensors name (rename it to .bin or .pt, or convert it)"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05") and head[2:3] != b"\x00":
        return "a Python pickle under a .safetensors name (rename it to .bin or .pt, or convert it)"
    if stripped.startswith((b"{", b"[")) and (texty or len(head) < 8):
        return "a JSON text file, not a safetensors file"
    return None


def check_regular_file(path: str) -> None:
    """Refuse pipes, sockets and devices before opening them (opening a FIFO waits for a writer;
    a pipe's size reads as 0 and it cannot be read twice, as lazy tensors need)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise InvalidBank(f"{path}: cannot read the file ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        raise InvalidBank(f"{path}: not a regular file (a pipe, socket or device?); save the bank to a file first")


def read_header(path: str) -> Header:
    """Parse and check a safetensors header; raise :class:`InvalidBank` with a diagnosis."""
    path = os.fspath(path)
    check_regular_file(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(min(size, 8 + MAX_HEADER_BYTES, 1 << 16))
            n = header_length(path, head, size)
            raw = head[8 : 8 + n] if len(head) >= 8 + n else os.pread(f.fileno(), n, 8)
            if len(raw) != n:
                raise InvalidBank(f"{path}: the file ended early: it changed while being read")
    except OSError as e:
        raise InvalidBank(f"{path}: cannot read the file ({e.strerror or e})") from None
    return parse_header(path, raw, size)


def header_length(path: str, head: bytes, size: int) -> int:
    """The header length a file of ``size`` bytes declares in its first bytes ``head``, checked
    against the size (a local file, or one on the Hub read by range requests)."""
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
    return n


def parse_header(path: str, raw: bytes, file_size: int) -> Header:
    """Check the JSON header ``raw`` of a safetensors file of ``file_size`` bytes (named ``path`` in
    messages). Everything safetensors refuses is refused (a key twice in one object, ``-0``,
    NaN, a lone surrogate, offsets that do not tile the data; metadata values that are not strings are
    the schema's to report, with the bank's other problems), and so is what
    would cost memory the file did not bring: the JSON values are counted before any is built (a
    95 MB header of 1.38 million tensors once took 1.3 GB and 44 s), and the tensor and metadata
    counts are capped."""
    n = count_json_values(raw)
    if n > MAX_JSON_VALUES:
        raise InvalidBank(
            f"{path}: the header holds up to {n:,} JSON values (counting ':', ',', '[' and '{{'), more "
            f"than the {MAX_JSON_VALUES:,} mptkit reads (at most {MAX_TENSORS:,} tensors); it is not a "
            "checkpoint mptkit can read"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidBank(f"{path}: the header is not valid UTF-8 (byte {e.start + 8} of the file)") from None
    try:
        obj = parse_json(text)
    except JsonProblem as e:
        why = str(e)
        raise InvalidBank(
            f"{path}: the header is {why}"
            if why.startswith("not valid JSON")
            else f"{path}: the header is refused: {why}"
        ) from None
    if not isinstance(obj, dict):
        raise InvalidBank(f"{path}: the header must be a JSON object, found a JSON {type(obj).__name__}")
    meta = obj.pop("__metadata__", None)
    if meta is not None and not isinstance(meta, dict):
        raise InvalidBank(f"{path}: __metadata__ must be a JSON object of strings, found {type(meta).__name__}")
    if len(obj) > MAX_TENSORS:
        raise InvalidBank(f"{path}: the header lists {len(obj):,} tensors, more than the {MAX_TENSORS:,} mptkit reads")
    if meta and len(meta) > MAX_METADATA_KEYS:
        raise InvalidBank(
            f"{path}: __metadata__ holds {len(meta):,} keys, more than the {MAX_METADATA_KEYS:,} mptkit reads"
        )
    header = Header(path, obj, meta, 8 + len(raw), file_size)
    problems = layout_problems(header)
    if len(problems) > MAX_PROBLEMS:
        problems = problems[:MAX_PROBLEMS] + [f"... and {len(problems) - MAX_PROBLEMS} more problems like these"]
    if problems:
        raise InvalidBank(f"{path}: {problems[0]}", [f"{path}: {p}" for p in problems])
    return header


def _nbits(shape: list, dtype: str) -> int | None:
    """The tensor's size in bits, or None where safetensors' unsigned 64-bit arithmetic overflows
    (it multiplies the dimensions in order, then by the dtype's bits, and refuses an overflow even
    when a later dimension is 0)."""
    n = 1
    for s in shape:
        n *= s
        if n > _U64_MAX:
            return None
    n *= HEADER_BITS[dtype]
    return None if n > _U64_MAX else n


def layout_problems(header: Header) -> list[str]:
    """Entries that cannot be read, or that safetensors (and so PEFT) would refuse: bad dtype or
    shape, offsets that disagree with the shape or point past the end of the file, overlaps, gaps
    between tensors, bytes after the last tensor. (Which tensors a bank needs is the schema's job.)"""
    problems = []
    data_len = header.file_size - header.data_start
    spans = []
    for name, info in header.tensors.items():
        if not isinstance(info, dict):
            problems.append(
                f"tensor {_nm(name)}: expected an object with dtype, shape and data_offsets, found {_short(info)}"
            )
            continue
        dtype, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in HEADER_BITS:
            problems.append(
                f"tensor {_nm(name)}: unknown dtype {_short(dtype, 40)} (expected one of {', '.join(BY_CODE)}, "
                "or another safetensors dtype)"
            )
            continue
        if not (
            isinstance(shape, list) and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
        ):
            problems.append(f"tensor {_nm(name)}: shape must be a list of non-negative integers, found {_short(shape)}")
            continue
        if len(shape) > MAX_DIMS:
            problems.append(f"tensor {_nm(name)}: shape has {len(shape)} dimensions; mptkit reads at most {MAX_DIMS}")
            continue
        nbits = _nbits(shape, dtype)
        if nbits is None:
            problems.append(
                f"tensor {_nm(name)}: shape {_short(shape)} of {dtype} is too large (its size overflows "
                "64 bits, which safetensors refuses)"
            )
            continue
        if nbits % 8:
            problems.append(f"tensor {_nm(name)}: {dtype}{_short(shape)} is not a whole number of bytes")
            continue
        if not (
            isinstance(offs, list)
            and len(offs) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
        ):
            problems.append(f"tensor {_nm(name)}: data_offsets must be two integers [begin, end], found {_short(offs)}")
            continue
        begin, end = offs
        nbytes = nbits // 8
        if begin < 0 or end < begin:
            problems.append(f"tensor {_nm(name)}: data_offsets {_short(offs)} are not an increasing byte range")
        elif end - begin != nbytes:
            problems.append(
                f"tensor {_nm(name)}: data_offsets {_short(offs)} hold {_short(end - begin)} bytes but "
                f"{dtype}{_short(shape)} needs {_short(nbytes)}"
            )
        elif end > data_len:
            problems.append(
                f"tensor {_nm(name)}: data ends at byte {_short(end)} of the data section but the file holds only "
                f"{data_len} data bytes (a truncated download?)"
            )
        else:
            spans.append((begin, end, name))
    if problems:
        return problems
    # safetensors requires the tensors to tile the data section exactly, in offset order
    spans.sort()
    pos, prev = 0, None
    for begin, end, name in spans:
        if begin < pos:
            problems.append(
                f"tensors {_nm(prev)} and {_nm(name)} overlap (bytes {begin}-{min(pos, end)} of the data section)"
            )
        elif begin > pos:
            problems.append(
                f"tensor {_nm(name)} starts at byte {begin} of the data section but the data before it ends at "
                f"byte {pos}; safetensors refuses a gap between tensors"
            )
        if end >= pos:
            pos, prev = end, name
    if pos < data_len:
        problems.append(
            f"the file has {data_len - pos} bytes after the last tensor's data (data section of {data_len} bytes, "
            f"tensors end at byte {pos}); safetensors refuses bytes no tensor covers"
        )
    return problems


def _nm(name: str) -> str:
    """A tensor name for a message: quoted, and shortened or escaped when it is long or odd."""
    return f"'{name}'" if len(name) <= 80 and name.isprintable() else _short(name, 80)


def _short(value, limit: int = 60) -> str:
    """``value`` as JSON, cut to ``limit`` characters (headers can hold anything)."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except ValueError:  # an integer too long to print
        text = "a huge number"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def header_bytes(
    entries: Mapping[str, tuple[str, tuple]], metadata: Mapping[str, str] | None
) -> tuple[bytes, list[str]]:
    """The header safetensors writes for ``{name: (dtype, shape)}`` and the tensors' order."""
    order = sorted(entries, key=lambda k: layout_key(k, entries[k][0]))
    obj: dict = {}
    if metadata:
        keys = sorted(metadata, key=lambda k: (k != "format", k))
        obj["__metadata__"] = {k: metadata[k] for k in keys}
    pos = 0
    for name in order:
        dtype, shape = entries[name]
        n = math.prod(shape) * itemsize(dtype)
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
        total += tensors[name].write_to(f)
    return total
