"""A safetensors file on the Hub read by byte ranges: the header first, then only the ranges an
operation needs (a task's rows of ``prefix_task_cols`` and ``prefix_task_rows`` are contiguous).

:class:`RemoteFile` is the reader behind the :class:`~mptkit._tensor.Segment` objects of a bank
opened this way: every range names the commit the revision was resolved to once (a branch that
moves meanwhile cannot mix two banks), and each answer is checked (:func:`mptkit.hub._http.get_bytes`).
Ranges an operation asks for together are fetched together, neighbours merged across small gaps;
fetched ranges are kept in memory for the rest of the process (never in the HF cache, where they
would pass for whole files), keyed by the file's commit and path.

Hand-written rather than the client's ``HfApi.parse_safetensors_file_metadata`` (measured): that
reads a whole answer into memory (2.3 GB for a 1.2 GB file from a server that ignores ``Range``),
reads 100 kB to find a header of a few hundred bytes, and has no way to read tensor data.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ..formats import _safetensors as st
from . import _client as client, _http as http
from ._refs import HubRef, endpoint

#: first bytes read to find the header (most bank headers are shorter)
PROBE = 16 << 10
#: ranges closer than this are fetched as one (the gap's bytes are read and dropped)
GAP = 4 << 10
#: most gap bytes read in one prefetch
GAP_BUDGET = 32 << 10
#: fetched bytes kept in memory per file; prefetches larger than this are read straight into place
KEEP = 64 << 20
#: ranges up to this size read one by one are kept too (within KEEP): a task's rows, or the shared
#: prompt, which an arithmetic command reads twice (the finite check first, then the work; at 1 MB
#: a 16 MB shared prompt was fetched twice)
KEEP_EACH = 32 << 20
#: a range transfer that takes longer than this shows a progress bar (on a terminal)
BAR_DELAY = 1.0


@dataclass(frozen=True)
class Where:
    """One file of one commit, and how to ask for it."""

    ref: HubRef  # what the user named (for messages)
    commit: str
    name: str  # the file's path in the repo
    size: int  # as listed
    sha256: str | None  # the LFS sha256 the Hub lists (provenance; a partial read cannot check it)
    token: str | None = None

    @property
    def url(self) -> str:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(self.ref.repo_id, self.name, revision=self.commit, endpoint=endpoint())

    @property
    def shown(self) -> str:
        return str(HubRef(self.ref.repo_id, self.ref.revision, self.name))


class RemoteFile:
    """Byte ranges of a file on the Hub, as a :class:`~mptkit._tensor.Segment` reader."""

    def __init__(self, where: Where, limits: http.Limits):
        self.where, self.limits = where, limits
        self._kept: list[tuple[int, bytes]] = []  # (offset, data), fetched ranges
        self._kept_bytes = 0
        self._lock = threading.Lock()
        #: bytes received from the server, and requests sent (for tests and benchmarks)
        self.received = 0
        self.requests = 0

    def __repr__(self) -> str:
        return f"RemoteFile({self.where.shown}@{self.where.commit[:12]})"

    # -- the reader protocol ----------------------------------------------------------------------
    def read_into(self, offset: int, out) -> None:
        out = memoryview(out).cast("B")
        n = len(out)
        hit = self._find(offset, n)
        if hit is not None:
            out[:] = hit
            return
        self.fetch(offset, n, out)
        if n <= KEEP_EACH and self._kept_bytes + n <= KEEP:  # read again by some operations (KEEP_EACH)
            with self._lock:
                self._kept.append((offset, bytes(out)))
                self._kept_bytes += n

    def copy_to(self, offset: int, length: int, f) -> None:
        hit = self._find(offset, length)
        if hit is not None:
            f.write(hit)
            return
        self._transfer(offset, length, f.write)

    def prefetch(self, spans) -> None:
        """Fetch the ranges ``spans`` will need, neighbours together, and keep them (up to
        :data:`KEEP`). Ranges with no neighbour near are left to be read straight into place."""
        todo = sorted((o, n) for o, n in spans if n and self._find(o, n) is None)
        if len(todo) < 2 or sum(n for _, n in todo) > KEEP - self._kept_bytes:
            return
        merged, spent = [list(todo[0])], 0
        for o, n in todo[1:]:
            last = merged[-1]
            gap = o - (last[0] + last[1])
            if gap <= 0 or (gap <= GAP and spent + gap <= GAP_BUDGET):
                spent += max(gap, 0)
                last[1] = max(last[1], o + n - last[0])
            else:
                merged.append([o, n])
        if len(merged) == len(todo):
            return  # nothing to merge: each range is read where it is needed
        for o, n in merged:
            buf = bytearray(n)
            self.fetch(o, n, buf)
            with self._lock:
                self._kept.append((o, buf))
                self._kept_bytes += n

    # -- transfers ------------------------------------------------------------------------------
    def fetch(self, offset: int, length: int, out) -> None:
        """Bytes ``offset`` to ``offset + length`` into the buffer ``out``: one checked range request."""
        out = memoryview(out).cast("B")
        pos = 0

        def into(chunk: bytes) -> None:
            nonlocal pos
            out[pos : pos + len(chunk)] = chunk
            pos += len(chunk)

        self._transfer(offset, length, into)

    def _transfer(self, offset: int, length: int, write) -> None:
        w = self.where
        if offset < 0 or offset + length > w.size:
            raise ValueError(f"bytes {offset}-{offset + length} are outside {w.shown} ({w.size} bytes)")
        bar = _bar(w, length)

        def sink(chunk: bytes) -> None:
            write(chunk)
            self.received += len(chunk)
            if bar is not None:
                bar.update(len(chunk))

        try:
            with (
                http.limited(self.limits),
                client.errors(
                    w.ref, f"read bytes {offset}-{offset + length - 1} of {w.name} (commit {w.commit[:12]})", w.token
                ),
            ):
                self.requests += 1
                http.get_bytes(w.url, w.token, commit=w.commit, start=offset, length=length, total=w.size, sink=sink)
        finally:
            if bar is not None:
                bar.close()

    def _find(self, offset: int, n: int):
        with self._lock:
            for o, data in self._kept:
                if o <= offset and offset + n <= o + len(data):
                    return memoryview(data)[offset - o : offset - o + n]
        return None

    # -- the header -----------------------------------------------------------------------------
    def header(self) -> st.Header:
        """The file's safetensors header (one range request, two for a header over :data:`PROBE`),
        checked as a local file's is, with tensors that read through this file."""
        w = self.where
        first = min(w.size, PROBE)
        head = bytearray(first)
        if first:
            self.fetch(0, first, head)
        n = st.header_length(w.shown, bytes(head), w.size)
        raw = bytearray(head[8 : 8 + n])
        if len(raw) < n:
            rest = bytearray(n - len(raw))
            self.fetch(len(head), len(rest), rest)
            raw += rest
        h = st.parse_header(w.shown, bytes(raw), w.size)
        if len(head) > h.data_start:  # the probe's bytes past the header are data: keep them
            with self._lock:
                self._kept.append((h.data_start, head[h.data_start :]))
        return RemoteHeader(h.path, h.tensors, h.metadata, h.data_start, h.file_size, self)


@dataclass
class RemoteHeader(st.Header):
    reader: RemoteFile | None = None

    def array(self, name: str):
        from .._tensor import Array, Segment, itemsize

        info = self.tensors[name]
        n = itemsize(info["dtype"])
        for s in info["shape"]:
            n *= s
        return Array(
            info["dtype"], info["shape"], [Segment(self.data_start + info["data_offsets"][0], n, reader=self.reader)]
        )


def _bar(w: Where, total: int):
    """A progress bar for one range transfer, shown only if it lasts over :data:`BAR_DELAY` (and
    only where the client shows its bars: on a terminal, not with --quiet)."""
    import sys

    from huggingface_hub.utils import are_progress_bars_disabled, tqdm as hf_tqdm

    if are_progress_bars_disabled() or not sys.stderr.isatty() or total < (1 << 20):
        return None
    return hf_tqdm(total=total, unit="B", unit_scale=True, desc=f"{w.name} (ranges)", delay=BAR_DELAY, leave=False)
