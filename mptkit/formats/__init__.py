"""Formats: how banks and prompts are read from local paths, and how every output is written.

Each format is one module registered below, one line each: a :class:`Format` says how a path in it
is recognised, what is read from it (a bank, or single-task prompts) and what it writes (the kind of
object, the suffixes). A plugin registers its own the same way (:func:`register`). Every output goes
through one plan (:func:`plan`, :func:`save`): the writer chosen by the kind of object and the
output's suffix (or ``format=``), the target checked before any work, the write atomic. This
package knows only local files: ``hf://`` references are resolved above it (:mod:`mptkit.hub`).
"""

from __future__ import annotations

from . import _bankfile, _checkpointdir, _files, _peftdir, _tables, _tgis, _torchpickle
from ._objects import FileCopy, Image, Prompts, PromptTable, PromptTuningAdapter, Report
from ._plan import Output, plan, save
from ._registry import Format, formats, get, read_bank, read_prompts, register, unregister

__all__ = [
    "Format",
    "register",
    "unregister",
    "formats",
    "get",
    "plan",
    "Output",
    "save",
    "read_bank",
    "read_prompts",
    "Prompts",
    "PromptTuningAdapter",
    "PromptTable",
    "Image",
    "Report",
    "FileCopy",
]

# the built-in formats, one line each (readers are tried in this order; fallbacks last)
register(_peftdir.FORMAT)  # PEFT adapter folders: MULTITASK_PROMPT_TUNING banks, PROMPT_TUNING prompts
register(_checkpointdir.SHARDED)  # sharded whole-model saves (index file or folder)
register(_checkpointdir.WHOLE_MODEL)  # a folder holding model.safetensors or pytorch_model.bin
register(_torchpickle.FORMAT)  # .bin/.pt/.pth pickles, weights only
register(_tables.NPY)  # prompt tables: .npy + .tasks.json
register(_tables.SAFETENSORS_TABLE)  # prompt tables: .safetensors holding prompt_table
register(_peftdir.PROMPT_TUNING)  # one task's prompt as a PROMPT_TUNING adapter folder
register(_peftdir.ADAPTERS)  # several tasks' prompts as a folder of PROMPT_TUNING adapters
register(_tgis.FORMAT)  # several tasks' prompts as a TGIS prefix store (--format tgis)
register(_files.IMAGE)  # pictures (.png, .svg, .pdf, ...)
register(_files.HTML)  # web pages (a report)
register(_files.LOCK)  # recipe locks (mptkit build --lock)
register(_files.COPY)  # files copied into a folder (a pulled bank)
register(_bankfile.FORMAT)  # any other file: a safetensors bank, encoder or whole model (fallback)
register(_peftdir.FOLDER)  # any other folder: says what it is not (fallback)
