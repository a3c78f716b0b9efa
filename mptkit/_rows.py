"""The prompts ``decompose`` reads (:class:`mptkit.formats.Prompts`), as sequences that make an
object for a prompt only when asked: a table of T prompts is one :class:`~mptkit._tensor.Array`
(T, N, d), not T arrays (100,000 tiny prompts once cost 440 bytes each before any arithmetic), and a
run of its prompts is read at once."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from ._tensor import Array


class TableRows(Sequence):
    """The prompts of a (T, N, d) table: item i is its (N, d) :class:`Array`, made when asked for."""

    def __init__(self, table: Array):
        self.table = table

    def __len__(self) -> int:
        return self.table.shape[0]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self.table.rows([i % len(self)]).reshape(self.table.shape[1:])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.table.shape[1:])


class Chain(Sequence):
    """Several sequences of prompts as one, without copying them."""

    def __init__(self):
        self.parts: list[Sequence] = []
        self.starts: list[int] = []
        self.count = 0

    def extend(self, part: Sequence) -> None:
        if len(part):
            self.parts.append(part)
            self.starts.append(self.count)
            self.count += len(part)

    def append(self, item) -> None:
        self.extend([item])

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -self.count <= i < self.count:
            raise IndexError(i)
        i %= self.count
        k = bisect.bisect_right(self.starts, i) - 1
        return self.parts[k][i - self.starts[k]]

    def runs(self, idx):
        """``idx`` as (part, [indices in that part]) runs, in order: consecutive indices of one part together."""
        out: list = []
        for i in idx:
            k = bisect.bisect_right(self.starts, i) - 1
            if out and out[-1][0] is self.parts[k]:
                out[-1][1].append(i - self.starts[k])
            else:
                out.append((self.parts[k], [i - self.starts[k]]))
        return out
