"""The errors mptkit raises for user mistakes.

Each one carries a single sentence that names the file, the tensor or field, what was expected and
what was found. The CLI prints it and exits with ``exit_code`` (2 for every user mistake); Python
callers catch :class:`MptkitError`.
"""

from __future__ import annotations

__all__ = [
    "MptkitError",
    "InvalidBank",
    "UnsafeFile",
    "UsageError",
    "IncompatibleBanks",
    "OutputError",
    "InvalidModel",
    "OutOfMemory",
    "HubError",
]


class MptkitError(Exception):
    """Base class: a problem with the user's input, arguments or environment (exit status 2)."""

    exit_code = 2

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.message = message
        #: every problem found, for commands that list them all (``validate``)
        self.problems = list(problems) if problems else [message]


class InvalidBank(MptkitError):
    """A file or folder is not a readable, consistent prompt bank."""


class UnsafeFile(InvalidBank):
    """A pickle that would run code or load non-tensor objects when unpickled."""


class UsageError(MptkitError):
    """Arguments that do not fit the bank: an unknown task, a missing option, an empty selection."""


class IncompatibleBanks(MptkitError):
    """Banks that cannot be combined as asked (different N or d, differing shared prompts...)."""


class OutputError(MptkitError):
    """The output cannot be written: it exists without --force, is the input, or the disk refused."""


class OutOfMemory(MptkitError):
    """An input or a result needs more memory than the process may have (its ``ulimit -v``, or
    the memory available); the message says what, and how big."""


class InvalidModel(MptkitError):
    """A base model's files cannot give what was asked: no input-embedding tensor, no tokenizer.json,
    a hidden size that does not fit the bank."""


class HubError(MptkitError):
    """A Hugging Face Hub transfer failed: missing repo, revision or file, server error, offline."""
