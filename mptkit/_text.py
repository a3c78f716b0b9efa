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


def _json_escape(c: str) -> str:
    n = ord(c)
    if n <= 0xFFFF:
        return f"\\u{n:04x}"
    n -= 0x10000
    return f"\\u{0xD800 + (n >> 10):04x}\\u{0xDC00 + (n & 0x3FF):04x}"


def json_text(obj) -> str:
    """``obj`` as indented JSON that is safe to print: tokens redacted, and every character Python
    does not call printable (C1 controls such as U+009B, lone surrogates from file names that are
    not UTF-8, bidirectional overrides) written as a ``\\uXXXX`` escape, which JSON readers decode
    back to the same text. Other non-ASCII text stays as it is."""
    import json

    text = redact(json.dumps(obj, indent=2, ensure_ascii=False, default=str))
    if text.isascii():
        return text
    return "".join(c if c.isprintable() or c == "\n" else _json_escape(c) for c in text)


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 task``, ``2 tasks`` (``many`` for irregular plurals)."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def spans(indices) -> str:
    """Indices as ranges, in the order given: ``[0, 1, 2, 5, 3]`` -> ``0-2, 5, 3``."""
    out: list[str] = []
    items = list(indices)
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[j] + 1:
            j += 1
        out.append(str(items[i]) if j == i else f"{items[i]}-{items[j]}" if j > i + 1 else f"{items[i]}, {items[j]}")
        i = j + 1
    return ", ".join(out)
