"""What formats read and write besides banks: single-task prompts, a PROMPT_TUNING adapter, a table
of tasks' full prompts, an image, a copy of files. Operations make these; the output plan
(:mod:`mptkit.formats._plan`) writes them by their ``output_kind``.

Each object that came from files lists them in ``source_paths()``: no output may land on them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from .._bank import PromptBank, Source
from .._tensor import Array


def array_paths(arrays: Iterable[Array]) -> list[str]:
    """The files the handles ``arrays`` read from."""
    return sorted({seg.path for a in arrays for seg in a.segments if seg.path})


def bank_paths(bank: PromptBank) -> list[str]:
    """Every local file or folder ``bank`` was read from, or reads bytes from."""
    return bank.source_paths()


@dataclass
class PromptTuningAdapter:
    """A PEFT PROMPT_TUNING adapter in memory: the (N, d) prompt and its adapter_config.json."""

    output_kind: ClassVar[str] = "adapter"
    prompt: Array
    config: dict
    provenance: list[dict] = field(default_factory=list)
    #: a task head PEFT saved beside the bank (modules_to_save), written back unchanged
    extras: dict[str, Array] = field(default_factory=dict)
    #: the files the prompt was computed from
    sources: list[str] = field(default_factory=list)

    def source_paths(self) -> list[str]:
        return [*self.sources, *array_paths([self.prompt, *self.extras.values()])]


@dataclass
class PromptTable:
    """Full prompts of several tasks, (tasks, N, d) in ``dtype``, computed when written: a prompt
    table for serving engines, or one PROMPT_TUNING adapter per task.

    ``chunks()`` yields the raw little-endian bytes of consecutive tasks' prompts; ``adapter(i)``
    is the table's task ``i`` as a :class:`PromptTuningAdapter`; ``info`` is what a table records
    beside its rows (shape, dtype, which half of a seq2seq prompt, source, config)."""

    output_kind: ClassVar[str] = "prompts"
    names: list[str]
    shape: tuple[int, int, int]
    dtype: str
    info: dict
    provenance: list[dict]
    chunks: Callable[[], Iterable[bytes]]
    adapter: Callable[[int], PromptTuningAdapter]
    #: the PROMPT_TUNING config every adapter of the table gets (raises if it cannot be completed)
    adapter_config: Callable[[], dict]
    sources: list[str] = field(default_factory=list)
    #: whether a half of seq2seq prompts was asked for (a folder of adapters holds whole prompts)
    half_given: bool = False
    #: the bank the prompts come from (formats that need more than the rows read it)
    bank: PromptBank | None = None
    #: the rows of each prompt the table holds (a slice of N)
    rows: slice | None = None

    def source_paths(self) -> list[str]:
        return list(self.sources)


@dataclass
class Image:
    """A picture drawn when written: ``render(fmt)`` returns its bytes in the format the output's
    suffix names ("png", "svg", "pdf", ...)."""

    output_kind: ClassVar[str] = "image"
    render: Callable[[str], bytes]
    formats: tuple[str, ...] = ()

    def source_paths(self) -> list[str]:
        return []


@dataclass
class Report:
    """A self-contained HTML page (``mptkit report``): its bytes, and what they hold (``info``)."""

    output_kind: ClassVar[str] = "report"
    page: bytes
    info: dict = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)

    def source_paths(self) -> list[str]:
        return list(self.sources)


@dataclass
class RecipeLock:
    """A recipe with every source pinned (``mptkit build --lock``): its YAML text, and the recipe it
    was made from (which it must not overwrite)."""

    output_kind: ClassVar[str] = "lock"
    text: str
    recipe: str

    def source_paths(self) -> list[str]:
        return [self.recipe]


@dataclass
class FileCopy:
    """Files copied as they are into an output folder (a bank pulled from the Hub)."""

    output_kind: ClassVar[str] = "files"
    files: list[Path]

    def source_paths(self) -> list[str]:
        return [str(p) for p in self.files]


# -- single-task prompts (what decompose reads) --------------------------------------------------
@dataclass
class Prompts:
    """K single-task prompts of one shape, each an (N, d) :class:`Array` (still on disk)."""

    arrays: Sequence  # (N, d) prompts: a Chain of lists and TableRows (mptkit._rows)
    names: list[str]
    sources: list[Source]
    #: adapter_config.json fields the inputs agree on (task_type, num_virtual_tokens, ...; every field
    #: of a PROMPT_TUNING config, so that a bank made from them keeps the fields their PEFT writes)
    config: dict | None = None
    where: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.arrays[0].shape) if self.arrays else (0, 0)

    def read(self, idx, dtype=None):
        """The prompts ``idx`` as one torch tensor (k, N, d) (float64 by default); a bank's task is
        its full prompt, computed as PEFT computes it (float32). A table's run of prompts is one read."""
        import torch

        from .._rows import Chain, TableRows

        dtype, parts = dtype or torch.float64, []
        for part, local in self.arrays.runs(idx) if isinstance(self.arrays, Chain) else [(self.arrays, idx)]:
            if isinstance(part, TableRows):
                parts.append(part.table.rows(list(local)).to_torch(dtype=dtype))
                continue
            items = [part[i] for i in local]
            parts.append(
                torch.stack([a.prompt(dtype) if isinstance(a, TaskPrompt) else a.to_torch(dtype=dtype) for a in items])
            )
        return parts[0] if len(parts) == 1 else torch.cat(parts)


@dataclass
class TaskPrompt:
    """Task ``k`` of a bank, as a prompt to decompose (computed when read)."""

    bank: PromptBank
    k: int

    @property
    def shape(self):
        return (self.bank.num_tokens, self.bank.token_dim)

    def prompt(self, dtype):
        import torch

        from .._numerics import task_prompts

        f32 = torch.float32
        pe, cols, rows = (a.to_torch(dtype=f32) for a in self.bank.task_rows([self.k]).values())
        return task_prompts(pe.unsqueeze(0), cols, rows)[0].to(dtype)


def bank_prompts(bank: PromptBank):
    """A bank's tasks as prompts: ``(arrays, names, sources, config)`` as readers return them."""
    names = bank.task_names or [f"task{k}" for k in range(bank.num_tasks)]
    return [TaskPrompt(bank, k) for k in range(bank.num_tasks)], names, [bank.source], dict(bank.config or {})
