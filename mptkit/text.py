"""Text that came from a file or a server, made safe to print: tokens redacted, control characters
escaped. Every message mptkit prints passes through :func:`clean` (the CLI applies it to each line
it writes), so a task name, a config field, an ETag or a server's error text can never carry a
terminal escape sequence or a secret onto the user's screen or into a log."""

from __future__ import annotations

import os
import re

#: what a Hugging Face token looks like (user access tokens, org API tokens)
_TOKEN_SHAPE = re.compile(r"\b(?:hf|api_org)_[A-Za-z0-9]{8,}")


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` with ``secrets`` (and ``HF_TOKEN``'s value, and anything shaped like an ``hf_``
    token) replaced by ``[redacted]``."""
    for s in (*secrets, os.environ.get("HF_TOKEN") or "", os.environ.get("HUGGING_FACE_HUB_TOKEN") or ""):
        if s and len(s) >= 4:
            text = text.replace(s, "[redacted]")
    return _TOKEN_SHAPE.sub("[redacted]", text)


def printable(text: str) -> str:
    """``text`` on one line with every character Python does not call printable shown as an escape
    (``\\x1b``, ``\\n``, ``\\x9b``): C0 and C1 controls (ESC, BEL, CSI), DEL, line separators and
    the bidirectional overrides that can reorder what a terminal shows."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def clean(text, secrets: tuple[str, ...] = ()) -> str:
    """:func:`redact`, then :func:`printable`: what is safe to print of any text."""
    return printable(redact(str(text), secrets))
