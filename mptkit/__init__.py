"""mptkit: inspect, validate, derive, edit, export and share multitask prompt tuning (MPT) prompt banks.

This module is the public Python API: every name in :data:`__all__` (and the subpackages
:mod:`mptkit.formats`, :mod:`mptkit.hub` and :mod:`mptkit.serve`) is documented and kept; every
module whose name starts with ``_`` is internal and may change. Names are imported on first use, so
``import mptkit`` stays cheap: torch is imported only by the functions that do arithmetic.
"""

from __future__ import annotations

import importlib

from ._version import __version__
from .errors import (
    HubError,
    IncompatibleBanks,
    InvalidBank,
    InvalidModel,
    MptkitError,
    OutOfMemory,
    OutputError,
    UnsafeFile,
    UsageError,
)

#: public name -> the internal module that defines it (imported on first use)
_LAZY = {
    # banks: reading, writing, looking inside
    "PromptBank": "_bank",
    "select_tasks": "_bank",
    "Array": "_tensor",
    "load": "_io",
    "save": "_io",
    "plan": "_io",
    "validate": "_io",
    "load_embeddings": "_io",
    "summary": "_info",
    "value_stats": "_info",
    # operations: banks in, banks (or prompts, tables) out
    "derive": "_derive",
    "convert": "_convert",
    "rename": "_edit",
    "set_names": "_edit",
    "slice_tasks": "_edit",
    "remove_tasks": "_edit",
    "merge": "_merge",
    "add_task": "_merge",
    "change_rank": "_edit",
    "similarity": "_similarity",
    "heatmap": "_similarity",
    "explain": "_explain",
    "report": "_report",
    "card_images": "_pictures",
    "export": "_export",
    "export_table": "_export",
    "read_prompts": "formats",
    "decompose": "_decompose",
    # what operations return besides banks (mptkit.save writes each)
    "PromptTuningAdapter": "formats",
    "PromptTable": "formats",
    "Prompts": "formats",
    "Image": "formats",
    "Report": "formats",
    # recipes: build, verify, diff
    "read_recipe": "_recipefile",
    "build": "_recipe",
    "verify": "_verify",
    "diff": "_diff",
    "weighted_lowrank_fit": "_fit",
    "fit_tasks": "_fit",
    # serving (torch)
    "TaskPrompts": "serve._runtime",
    "prepend": "serve._runtime",
    "PromptEmbedder": "serve._embedder",
    # progress bars
    "disable_progress": "_progress",
}
#: public names defined under another name inside their module
_RENAMED = {"disable_progress": "disable"}
_SUBPACKAGES = ("formats", "hub", "serve", "cli")

__all__ = [
    "__version__",
    "MptkitError",
    "InvalidBank",
    "UnsafeFile",
    "UsageError",
    "IncompatibleBanks",
    "OutputError",
    "HubError",
    "InvalidModel",
    "OutOfMemory",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        value = getattr(module, _RENAMED.get(name, name))
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'mptkit' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *__all__, *_SUBPACKAGES})
