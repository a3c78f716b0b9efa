"""Array: a torch-free handle on tensor bytes.

An :class:`Array` is a dtype, a shape and a list of byte segments, each either a range of a file or
an in-memory buffer. Selecting rows along the first dimension or concatenating arrays only edits the
segment list, so commands that move bytes (inspect, exact derivation, slice, merge) never read more
of a bank than they write, and never import torch. Arithmetic converts to torch with
:meth:`Array.to_torch`, which imports torch on first use.
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

from ._dtypes import code_of_torch, itemsize, torch_dtype
from .errors import InvalidBank, OutOfMemory

CHUNK_BYTES = 8 << 20
#: bytes asked of a segment's reader at once when writing (a range request each, for a remote file)
READER_CHUNK_BYTES = 64 << 20


@dataclass(frozen=True)
class Segment:
    """``length`` bytes at ``offset`` of ``path`` (a file), of ``buffer`` (memory), or of
    ``reader``: any object with ``read_into(offset, out)`` that fills the writable buffer ``out``
    with the bytes at ``offset`` (a file on the Hub read by range requests, say), and optionally
    ``prefetch([(offset, length), ...])``, told first which ranges an operation will read, and
    ``copy_to(offset, length, f)``, which writes the bytes to the binary file ``f``."""

    offset: int
    length: int
    path: str | None = None
    buffer: memoryview | None = None
    reader: object | None = None


class Array:
    """Dtype + shape + byte segments (C order). Cheap to slice by rows and to concatenate."""

    __slots__ = ("dtype", "shape", "segments", "_starts")

    def __init__(self, dtype: str, shape: Sequence[int], segments: Sequence[Segment]):
        self.dtype = dtype
        self.shape = tuple(int(s) for s in shape)
        self.segments = tuple(segments)
        self._starts: list[int] | None = None  # where each segment starts in the array's bytes (on first use)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str, offset: int, dtype: str, shape: Sequence[int]) -> Array:
        n = math.prod(shape) * itemsize(dtype)
        return cls(dtype, shape, [Segment(offset, n, path=os.fspath(path))])

    @classmethod
    def from_bytes(cls, data, dtype: str, shape: Sequence[int]) -> Array:
        view = memoryview(data).cast("B")
        expected = math.prod(shape) * itemsize(dtype)
        if len(view) != expected:
            raise ValueError(f"{len(view)} bytes for {dtype}{list(shape)}, expected {expected}")
        return cls(dtype, shape, [Segment(0, len(view), buffer=view)])

    @classmethod
    def from_torch(cls, tensor) -> Array:
        """Wrap a torch tensor's bytes (moved to the CPU, made contiguous)."""
        import torch

        dtype = code_of_torch(tensor.dtype)
        if dtype is None:
            raise ValueError(f"unsupported torch dtype {tensor.dtype}")
        t = tensor.detach().to("cpu").contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b""
        return cls.from_bytes(raw, dtype, tuple(t.shape))

    # -- properties ---------------------------------------------------------------------------
    @property
    def itemsize(self) -> int:
        return itemsize(self.dtype)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    @property
    def row_nbytes(self) -> int:
        return math.prod(self.shape[1:]) * self.itemsize

    def __repr__(self) -> str:
        return f"Array({self.dtype}, {list(self.shape)})"

    # -- byte-level operations ----------------------------------------------------------------
    def rows(self, indices: Sequence[int]) -> Array:
        """The rows ``indices`` of the first dimension, in that order (lazy: no data is read)."""
        step = self.row_nbytes
        out: list[Segment] = []
        for i in indices:
            if not 0 <= i < self.shape[0]:
                raise IndexError(f"row {i} out of range for shape {list(self.shape)}")
            out.extend(self._byte_range(i * step, step))
        return Array(self.dtype, (len(indices), *self.shape[1:]), _coalesce(out))

    def reshape(self, shape: Sequence[int]) -> Array:
        if math.prod(shape) != self.numel:
            raise ValueError(f"cannot reshape {list(self.shape)} to {list(shape)}")
        return Array(self.dtype, shape, self.segments)

    @staticmethod
    def cat(arrays: Sequence[Array]) -> Array:
        """Concatenate along the first dimension (same dtype and trailing shape)."""
        first = arrays[0]
        for a in arrays[1:]:
            if a.dtype != first.dtype or a.shape[1:] != first.shape[1:]:
                raise ValueError(f"cannot concatenate {a!r} to {first!r}")
        segs = [s for a in arrays for s in a.segments]
        return Array(first.dtype, (sum(a.shape[0] for a in arrays), *first.shape[1:]), _coalesce(segs))

    def _byte_range(self, start: int, length: int) -> list[Segment]:
        """The segments covering ``length`` bytes at ``start``. The first is found by bisection over
        the segments' starts: a selection from an array of many segments (one a task, after an
        earlier selection) costs O(log S) a row, not O(S), which made selections quadratic."""
        import bisect

        if self._starts is None:
            starts, pos = [], 0
            for seg in self.segments:
                starts.append(pos)
                pos += seg.length
            self._starts = starts
        out = []
        end = start + length
        for i in range(max(0, bisect.bisect_right(self._starts, start) - 1), len(self.segments)):
            seg, pos = self.segments[i], self._starts[i]
            if pos >= end:
                break
            lo, hi = max(start, pos), min(end, pos + seg.length)
            if lo < hi:
                out.append(Segment(seg.offset + lo - pos, hi - lo, seg.path, seg.buffer, seg.reader))
        return out

    def write_to(self, f) -> int:
        """Write the bytes to the binary file ``f``; file-to-file ranges go through the kernel
        (``os.copy_file_range``) without passing through Python, where the OS allows it."""
        f.flush()
        out_fd = f.fileno()
        _prefetch(self.segments)
        with _Inputs() as inputs:
            for seg in self.segments:
                if seg.buffer is not None:
                    f.write(seg.buffer[seg.offset : seg.offset + seg.length])
                    f.flush()
                    continue
                if seg.reader is not None and hasattr(seg.reader, "copy_to"):
                    seg.reader.copy_to(seg.offset, seg.length, f)  # streamed straight into f
                    f.flush()
                    continue
                if seg.reader is not None:
                    buf = bytearray(min(seg.length, READER_CHUNK_BYTES))
                    for lo in range(0, seg.length, len(buf)):
                        view = memoryview(buf)[: min(len(buf), seg.length - lo)]
                        seg.reader.read_into(seg.offset + lo, view)
                        f.write(view)
                    f.flush()
                    continue
                fd = inputs.fd(seg.path)
                try:
                    done = _copy_range(fd, out_fd, seg.offset, seg.length)
                except EOFError:
                    raise _changed(seg.path) from None
                if done < seg.length:  # kernel copy not possible here: stream through memory
                    for lo in range(done, seg.length, CHUNK_BYTES):
                        n = min(CHUNK_BYTES, seg.length - lo)
                        data = os.pread(fd, n, seg.offset + lo)
                        if len(data) != n:
                            raise _changed(seg.path)
                        f.write(data)
                    f.flush()
        return self.nbytes

    def read(self) -> bytes | memoryview:
        """All bytes (one buffer)."""
        if len(self.segments) == 1 and self.segments[0].buffer is not None:
            s = self.segments[0]
            return s.buffer[s.offset : s.offset + s.length]
        buf = self._allocate()
        self.read_into(buf)
        return buf

    def _allocate(self) -> bytearray:
        """A buffer for all the bytes; one sentence saying what and how big where memory is short."""
        try:
            return bytearray(self.nbytes)
        except MemoryError:
            raise self.too_big() from None

    def too_big(self) -> OutOfMemory:
        """The error for this array not fitting in memory: its file, dtype, shape and size."""
        where = next((s.path for s in self.segments if s.path), None)
        return OutOfMemory(
            f"{where + ': ' if where else ''}a tensor of shape {list(self.shape)} ({self.dtype}) is "
            f"{size_text(self.nbytes)} ({self.nbytes:,} bytes), more than {memory_limit_text()}"
        )

    def read_into(self, buf) -> int:
        """Fill the start of the writable buffer ``buf`` with the bytes (read straight into it, no
        intermediate copies); returns how many bytes were written."""
        out = memoryview(buf).cast("B")
        if len(out) < self.nbytes:
            raise ValueError(f"buffer of {len(out)} bytes is smaller than {self!r} ({self.nbytes} bytes)")
        pos = 0
        _prefetch(self.segments)
        with _Inputs() as inputs:
            for seg in self.segments:
                if seg.buffer is not None:
                    out[pos : pos + seg.length] = seg.buffer[seg.offset : seg.offset + seg.length]
                    pos += seg.length
                    continue
                if seg.reader is not None:
                    seg.reader.read_into(seg.offset, out[pos : pos + seg.length])
                    pos += seg.length
                    continue
                fd = inputs.fd(seg.path)
                done = 0
                while done < seg.length:
                    n = os.preadv(fd, [out[pos + done : pos + seg.length]], seg.offset + done)
                    if n <= 0:
                        raise _changed(seg.path)
                    done += n
                pos += seg.length
        return pos

    def to_torch(self, device=None, dtype=None):
        """A torch tensor holding a copy of the data (torch is imported here)."""
        import torch

        tdtype = torch_dtype(self.dtype)
        if self.numel == 0:
            t = torch.empty(self.shape, dtype=tdtype)
        else:
            raw = self.read()
            if not isinstance(raw, bytearray):
                raw = bytearray(raw)
            t = torch.frombuffer(raw, dtype=torch.uint8).view(tdtype).reshape(self.shape)
        if device is not None or dtype is not None:
            try:
                t = t.to(device=device, dtype=dtype)
            except (MemoryError, RuntimeError) as e:
                if isinstance(e, RuntimeError) and "allocate" not in str(e):
                    raise
                raise self.too_big() from None
        return t


def size_text(nbytes: int) -> str:
    """``17.2 GB``, ``512 MB``, ``3 kB`` (powers of 1000, as disks and ``ls -lh --si`` count)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes} bytes"


def memory_limit_text() -> str:
    """The memory this process may use, in words: its address-space limit (``ulimit -v``) when
    one is set, else the memory the system says is available."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        return f"this process may address ({size_text(soft)}: its limit, ulimit -v)"
    try:
        with open("/proc/meminfo") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
        return f"this machine has available ({size_text(kb * 1024)})"
    except (OSError, StopIteration, ValueError, IndexError):
        return "this machine has available"


class _Inputs:
    """The source files an operation reads, each opened once and all closed at the end."""

    def __init__(self):
        self._fds: dict[str, int] = {}

    def __enter__(self) -> _Inputs:
        return self

    def __exit__(self, *exc) -> None:
        for fd in self._fds.values():
            os.close(fd)

    def fd(self, path: str) -> int:
        if path not in self._fds:
            try:
                self._fds[path] = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise InvalidBank(
                    f"{path}: cannot read the input any more ({e.strerror or e}); was it moved or deleted?"
                ) from None
        return self._fds[path]


def _changed(path: str) -> InvalidBank:
    return InvalidBank(f"{path}: the file ended early: it changed while being read (its header promised more data)")


def _copy_range(src_fd: int, dst_fd: int, offset: int, length: int) -> int:
    """Copy ``length`` bytes at ``offset`` of ``src_fd`` to ``dst_fd``'s current position with
    ``os.copy_file_range``; returns how many bytes were copied (0 where it is unsupported)."""
    copy = getattr(os, "copy_file_range", None)
    if copy is None:
        return 0
    done = 0
    try:
        while done < length:
            n = copy(src_fd, dst_fd, min(length - done, 1 << 30), offset + done)
            if n == 0:
                raise EOFError("source file ended early (it changed while being read?)")
            done += n
    except OSError as e:
        if done == 0 and e.errno in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF):
            return 0
        raise
    return done


def _prefetch(segments: Sequence[Segment]) -> None:
    """Tell each reader that has ``prefetch`` every range about to be read from it, so it can
    fetch neighbouring ranges together."""
    spans: dict[int, tuple[object, list[tuple[int, int]]]] = {}
    for s in segments:
        if s.reader is not None and hasattr(s.reader, "prefetch"):
            spans.setdefault(id(s.reader), (s.reader, []))[1].append((s.offset, s.length))
    for reader, wanted in spans.values():
        reader.prefetch(wanted)


def _coalesce(segments: Sequence[Segment]) -> list[Segment]:
    """Merge neighbouring segments that continue each other in the same file or buffer."""
    out: list[Segment] = []
    for s in segments:
        if s.length == 0:
            continue
        if out:
            p = out[-1]
            same = (
                (p.path is not None and p.path == s.path)
                or (p.buffer is not None and p.buffer is s.buffer)
                or (p.reader is not None and p.reader is s.reader)
            )
            if same and p.offset + p.length == s.offset:
                out[-1] = Segment(p.offset, p.length + s.length, p.path, p.buffer, p.reader)
                continue
        out.append(s)
    return out
