"""The ``mptkit`` command line: parse, call the Python API, print.

Every user mistake is an :class:`~mptkit.errors.MptkitError`: one sentence on stderr, exit status 2,
no traceback (``--debug`` shows it). Commands that write take ``-o/--output`` and ``--force``.
The commands live in one module per group and register themselves on :data:`main` in the order
the README shows them.
"""

# isort: skip_file
from ._app import main

# each module registers its commands on ``main`` when imported, in the order the help lists them
from . import _read, _derive, _edit, _convert, _explain, _recipes, _hub, _report  # noqa: F401

__all__ = ["main"]
