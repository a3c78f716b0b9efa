"""mptkit: inspect, validate, derive, edit and share multitask prompt tuning (MPT) prompt banks.

Importing mptkit is cheap: torch is imported only by the functions that do arithmetic.
"""

from ._version import __version__  # noqa: E402

from .bank import PromptBank, select_tasks  # noqa: E402
from .errors import MptkitError  # noqa: E402
from .io import load, save  # noqa: E402

__all__ = ["__version__", "PromptBank", "MptkitError", "load", "save", "select_tasks"]
