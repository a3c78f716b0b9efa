"""Text that came from a file or a server, made safe to print: secrets redacted, control characters
escaped. Every message mptkit prints passes through :func:`clean` (the CLI applies it to each line
it writes), so a task name, a config field, an ETag or a server's error text can never carry a
terminal escape sequence or a secret onto the user's screen or into a log.

Secrets are redacted in every form they can take on the way to the screen (:func:`_forms`): as
given, stripped of the white space a CRLF token file leaves, escaped as :func:`printable`, ``repr``
and JSON escape them, URL-quoted, and cut short by a truncation (a run of 8 or more of a secret's
first or last characters). The secrets are those given, the tokens in the environment, every
credential mptkit sent (:func:`remember_secret`), anything shaped like a Hugging Face token, and
the user:password part of any URL."""

from __future__ import annotations

import functools
import os
import re

#: what a Hugging Face token looks like (user access tokens, org API tokens)
_TOKEN_SHAPE = re.compile(r"\b(?:hf|api_org)_[A-Za-z0-9]{8,}")
#: the user:password part of a URL (``http://user:pass@mirror``)
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#@\s'\"<>]+@")
#: a secret shorter than this is only redacted whole (a shorter run is too likely to be other text)
_PIECE = 8
_SECRETS: set[str] = set()
REDACTED = "[redacted]"


def remember_secret(value: str | None) -> None:
    """Redact ``value`` (in every form) from everything this process prints from now on: tokens
    given with ``--token`` or ``token=``, credentials mptkit sends, passwords in ``HF_ENDPOINT``."""
    if isinstance(value, str) and len(value.strip()) >= 4:
        _SECRETS.add(value)


def is_secret(value: str) -> bool:
    """Whether ``value`` is one of the secrets :func:`redact` knows (a token, a password)."""
    core = value.strip() if isinstance(value, str) else ""
    return bool(core) and any(core == s.strip() for s in _secrets(()))


@functools.lru_cache(maxsize=256)
def _forms(secret: str) -> tuple[str, ...]:
    """``secret`` as it may appear in printed text, longest first."""
    import json
    from urllib.parse import quote, quote_plus

    cores = {secret, secret.strip(), secret.strip("".join(chr(c) for c in range(33)) + "\x7f")}
    out: set[str] = set()
    for c in cores:
        out |= {c, printable(c), ascii(c)[1:-1], json.dumps(c)[1:-1], quote(c, safe=""), quote_plus(c), quote(c)}
        raw = c.encode("utf-8", "surrogateescape")
        out.add(repr(raw)[2:-1])
    return tuple(sorted((f for f in out if len(f) >= 4), key=len, reverse=True))


def _secrets(given: tuple[str, ...]) -> list[str]:
    env = (os.environ.get("HF_TOKEN") or "", os.environ.get("HUGGING_FACE_HUB_TOKEN") or "")
    return [s for s in (*given, *env, *_SECRETS) if isinstance(s, str) and len(s.strip()) >= 4]


def _cut(text: str, form: str) -> str:
    """``text`` without runs of :data:`_PIECE` or more of ``form``'s first or last characters (a
    secret cut short by a truncation, at the end or the start of what was kept)."""
    if len(form) < _PIECE:
        return text
    head, tail = form[:_PIECE], form[-_PIECE:]
    for piece, forward in ((head, True), (tail, False)):
        start = 0
        while (i := text.find(piece, start)) >= 0:
            if forward:  # extend to the right while the text goes on as the secret does
                j = i + _PIECE
                while j < len(text) and j - i < len(form) and text[j] == form[j - i]:
                    j += 1
                lo, hi = i, j
            else:  # extend to the left while the text goes back as the secret does
                k = i
                back = len(form) - _PIECE
                while k > 0 and back > 0 and text[k - 1] == form[back - 1]:
                    k, back = k - 1, back - 1
                lo, hi = k, i + _PIECE
            text = text[:lo] + REDACTED + text[hi:]
            start = lo + len(REDACTED)
    return text


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` with ``secrets`` (and ``HF_TOKEN``'s value, every remembered credential, anything
    shaped like an ``hf_`` token, and URL passwords) replaced by ``[redacted]``, in every form."""
    forms = sorted({f for s in _secrets(tuple(secrets)) for f in _forms(s)}, key=len, reverse=True)
    for f in forms:
        text = text.replace(f, REDACTED)
    for f in forms:
        text = _cut(text, f)
    text = _URL_USERINFO.sub(lambda m: m.group(1) + REDACTED + "@", text)
    return _TOKEN_SHAPE.sub(REDACTED, text)


def printable(text: str) -> str:
    """``text`` on one line with every character Python does not call printable shown as an escape
    (``\\x1b``, ``\\n``, ``\\x9b``): C0 and C1 controls (ESC, BEL, CSI), DEL, line separators and
    the bidirectional overrides that can reorder what a terminal shows."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def clean(text, secrets: tuple[str, ...] = ()) -> str:
    """What is safe to print of any text: :func:`printable`, with secrets redacted before and after
    the escaping (so that an escaped secret, ``hf_x\\r`` for a token that ended in a carriage
    return, is redacted as well as the raw one)."""
    return redact(printable(redact(str(text), secrets)), secrets)


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
    if not text.isascii():
        text = "".join(c if c.isprintable() or c == "\n" else _json_escape(c) for c in text)
    return redact(text)


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
