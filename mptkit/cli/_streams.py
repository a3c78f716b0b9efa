"""How the CLI meets its surroundings: the terminal or pipe it prints to, the file system and the
memory it works in. Each way these can fail is one sentence, never an "internal error":

- stdout closed by a reader that has had enough (``mptkit inspect ... | head -1``): a quiet exit
  with status 141 (128 + SIGPIPE), as a C tool killed by SIGPIPE leaves it;
- stdout that refuses a write (a full disk, ``> /dev/full``): one sentence on stderr, exit 2, also
  with ``--json`` (whose JSON cannot go to a stdout that fails);
- a stdout or stderr whose encoding cannot show a character (latin-1, with non-Latin task names):
  the character is printed as an escape (``\\u65e5``), and the command succeeds;
- an OSError no reader or writer turned into a sentence (a file, a folder or a link that vanished
  or changed while mptkit used it): the path and the system's reason, exit 2;
- MemoryError, and torch's own allocation failure: how many bytes were asked for, where known, and
  the memory this process may use (its ``ulimit -v``, or the memory available), exit 2.
"""

from __future__ import annotations

import errno
import io
import os
import re
import sys

import click

#: exit status after the reader of stdout went away (the status a process killed by SIGPIPE leaves)
EXIT_PIPE = 141


class StreamError(Exception):
    """Writing to stdout (or stderr) failed; raised by :func:`echo` so the CLI can tell it apart
    from every other error (it must not be reported on the stream that failed)."""

    def __init__(self, error: OSError, err: bool):
        super().__init__(str(error))
        self.error, self.err = error, err


def from_click_echo(e: OSError) -> StreamError | None:
    """``e`` as a :class:`StreamError` when click's own ``echo`` raised it (the help, the
    version), else None."""
    tb = e.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "echo" and os.sep + "click" + os.sep in code.co_filename:
            return StreamError(e, bool(tb.tb_frame.f_locals.get("err")))
        tb = tb.tb_next
    return None


def echo(text: str, err: bool = False) -> None:
    """``click.echo``, with a failure of the stream raised as :class:`StreamError`."""
    try:  # the stream itself, not click's re-wrapping of an ASCII one (which prints "?" for the escapes)
        click.echo(text, file=sys.stderr if err else sys.stdout)
    except OSError as e:
        raise StreamError(e, err) from None


def escape_unencodable() -> None:
    """Make stdout and stderr print what their encoding cannot show as backslash escapes, instead
    of failing with UnicodeEncodeError (a latin-1 or ASCII terminal, a pipe with PYTHONIOENCODING)."""
    for stream in (sys.stdout, sys.stderr):
        if not isinstance(stream, io.TextIOWrapper):
            continue
        encoding = (stream.encoding or "").lower().replace("_", "-")
        if encoding.startswith("utf") or stream.errors in ("backslashreplace", "surrogateescape"):
            continue
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, io.UnsupportedOperation):
            pass


def stream_failed(e: StreamError) -> int:
    """Say (on stderr, if it still works) that stdout failed, and silence the stream so that the
    interpreter's last flush cannot fail again; the exit status."""
    _silence(sys.stderr if e.err else sys.stdout)
    if isinstance(e.error, BrokenPipeError) or e.error.errno == errno.EPIPE:
        _silence(sys.stdout)
        return EXIT_PIPE
    if not e.err:
        reason = e.error.strerror or type(e.error).__name__
        try:
            click.echo(f"mptkit: error: cannot write to standard output: {reason}", err=True)
        except OSError:
            pass
    return 2


def _silence(stream) -> None:
    """Point ``stream``'s file descriptor at /dev/null and drop what it buffered."""
    try:
        fd = stream.fileno()
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)
    except OSError:
        pass


def leave(code) -> None:
    """End the process now that the command is done: run the exit handlers, flush the streams and
    exit without tearing the interpreter down, which costs 0.4-0.5 s once torch is imported (its
    modules' finalisation; measured: ``python -c "import torch"`` takes 1.45 s, 0.9 s this way).
    Without torch loaded, or for an exit status that is not a number, a normal exit."""
    import atexit

    run_handlers = getattr(atexit, "_run_exitfuncs", None)
    if "torch" not in sys.modules or run_handlers is None or not isinstance(code, (int, type(None))):
        return
    status = code or 0
    run_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # as Python's own exit does when a stream cannot be flushed
            status = status or 120
    os._exit(status)


def os_error_sentence(e: OSError) -> str:
    """An OSError that reached the CLI, as one sentence naming the path(s) and the reason."""
    where = " -> ".join(os.fsdecode(p) for p in (e.filename, e.filename2) if p is not None)
    reason = e.strerror or type(e).__name__
    changed = (errno.ENOENT, errno.ENOTDIR, errno.ESTALE, errno.ELOOP, errno.EISDIR)
    hint = "; it changed while mptkit was working with it (moved, deleted or replaced?)" if e.errno in changed else ""
    return f"{where + ': ' if where else ''}{reason}{hint}"


_ASKED = (
    re.compile(r"tried to allocate (\d+) bytes"),  # torch's CPU allocator
    re.compile(r"Unable to allocate ([\d.]+ [KMGTP]?i?B)"),  # numpy
)


def memory_sentence(e: BaseException) -> str:
    """A MemoryError (or torch's failed allocation) as one sentence: what was asked, if said, and
    what this process may have."""
    from .._tensor import memory_limit_text

    asked = ""
    for pattern in _ASKED:
        m = pattern.search(str(e))
        if m:
            value = m.group(1)
            asked = f" (an allocation of {int(value):,} bytes)" if value.isdigit() else f" (an allocation of {value})"
            break
    return f"out of memory{asked}: the work needs more memory than {memory_limit_text()}"


def is_allocation_failure(e: BaseException) -> bool:
    """Whether ``e`` is torch's CPU allocator failing (a RuntimeError, not a MemoryError)."""
    return isinstance(e, RuntimeError) and "DefaultCPUAllocator" in str(e) and "allocate" in str(e)
