"""The ``mptkit`` command line: parse, call the Python API, print.

Every user mistake is an :class:`~mptkit.errors.MptkitError`: one sentence on stderr, exit status 2,
no traceback (``--debug`` shows it). Commands that write take ``-o/--output`` and ``--force``.
The commands live in one module per group and register themselves on :data:`main` in the order
the README shows them.
"""

from .app import main
from . import read, derive, edit, convert, hub  # noqa: E402,F401  (registers the commands, in this order)

__all__ = ["main"]
