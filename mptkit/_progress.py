"""Progress bars for work that can take more than about a second (fits, similarity, averages,
value statistics, decompositions, prompt tables): tqdm on stderr, and only where stderr is a
terminal, so that a pipe, a log file or ``--json`` output never sees one.

They are off with ``HF_HUB_DISABLE_PROGRESS_BARS=1`` (the setting every Hugging Face tool reads)
and when the CLI is given ``--quiet`` or ``--json`` (:func:`disable`). Bars are cleared when the
work ends (``leave=False``): what stays on the terminal is the command's report.

Long loops update their bar at least every chunk, and every chunk of arithmetic is bounded (in
bytes), so Ctrl-C (KeyboardInterrupt, raised between Python operations) stops any of them within
a fraction of a second.
"""

from __future__ import annotations

import os
import sys

_OFF_VALUES = {"1", "ON", "YES", "TRUE"}
_disabled = False


def disable(flag: bool = True) -> None:
    """Turn every bar of this process off (the CLI's ``--quiet`` and ``--json``)."""
    global _disabled
    _disabled = bool(flag)


def enabled() -> bool:
    """Whether a bar would be shown now."""
    if _disabled or os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "").strip().upper() in _OFF_VALUES:
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


class _Silent:
    """What :func:`bar` returns when no bar is shown: the same calls, doing nothing."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, n: float = 1) -> None:
        return None

    def set_postfix_str(self, text: str) -> None:
        return None


def bar(total: float, desc: str, unit: str = "task", unit_scale: bool = False):
    """A context manager with ``update(n)``: a tqdm bar on stderr when :func:`enabled`, else a
    silent stand-in."""
    if not enabled():
        return _Silent()
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=unit_scale,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
        mininterval=0.2,
    )
