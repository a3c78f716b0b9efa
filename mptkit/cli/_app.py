"""The ``mptkit`` command group and what its commands share: error handling, ``--json``,
``-o/--output``/``--force``, and the config options built from :data:`mptkit._options.CONFIG_FIELDS`.
Commands only parse, call the Python API and print (:mod:`mptkit._render` holds the text).

Exit status: 0 on success; 2 for every user mistake (an :class:`~mptkit.errors.MptkitError`, and
click's usage errors), printed as ``mptkit: error: ...`` lines on stderr, or with ``--json`` as
``{"error": ..., "problems": [...]}`` on stdout; 130 on Ctrl-C, with one sentence saying whether the
output was completed; 1 only for a bug. ``--debug`` adds the traceback and changes no exit status.
Everything printed passes through :func:`mptkit._text.clean` (:func:`say`, :func:`emit_json`)."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import traceback

import click

from .._text import clean, json_text
from .._version import __version__
from ..errors import MptkitError
from ._streams import (
    StreamError,
    echo,
    escape_unencodable,
    from_click_echo,
    is_allocation_failure,
    leave,
    memory_sentence,
    os_error_sentence,
    stream_failed,
)

_DEBUG_ENV = "MPTKIT_DEBUG"
EXIT_USER, EXIT_BUG, EXIT_INTERRUPTED = 2, 1, 130
#: address space torch needs to import and work: under ~650 MB its import aborts the process
#: (std::bad_alloc, exit 134) or OpenBLAS exits it, before any Python code could catch anything
TORCH_ADDRESS_SPACE = 1 << 30


class _TorchGuard(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Refuses ``import torch`` with one sentence (exit 2) when the address-space limit
    (``ulimit -v``, RLIMIT_AS) is too small for it. Only the import itself fails: an availability
    check (``importlib.util.find_spec``) still finds a module, and commands that never import torch
    (inspect, validate, derive exact, slice, ...) run under any limit."""

    def find_spec(self, name, path=None, target=None):
        if name != "torch" or _address_space() >= TORCH_ADDRESS_SPACE:
            return None
        return importlib.machinery.ModuleSpec(name, self)

    def create_module(self, spec):
        raise MptkitError(
            f"this command needs torch, which needs about {TORCH_ADDRESS_SPACE >> 20} MB of address space, but the "
            f"limit (ulimit -v, RLIMIT_AS) is {_address_space() >> 20} MB; raise it (e.g. ulimit -v unlimited)"
        )

    def exec_module(self, module):  # never reached: create_module refuses
        raise ImportError("torch")


def _address_space() -> int:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return (1 << 62) if soft == resource.RLIM_INFINITY else soft


_GUARD = _TorchGuard()


class _Group(click.Group):
    """Runs a command; turns every way it can end into one exit status and one style of message."""

    _json = False

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:  # a caller that handles the outcome itself
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            self._run(args, prog_name, complete_var, **extra)
        except SystemExit as e:
            if args is None:  # the process's own command line (the console script, python -m mptkit)
                leave(e.code)
            raise

    def _run(self, args, prog_name, complete_var, **extra):
        argv = list(sys.argv[1:] if args is None else args)
        prog_name = prog_name or "mptkit"  # also under python -m mptkit
        words = argv[: argv.index("--")] if "--" in argv else argv
        self._json = "--json" in words
        escape_unencodable()
        try:
            self._outcome(argv, prog_name, complete_var, words, **extra)
        except StreamError as e:  # stdout went away or refused a write: never reported on stdout
            sys.exit(stream_failed(e))

    def _outcome(self, argv, prog_name, complete_var, words, **extra):
        try:
            try:
                rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
            except OSError as e:  # click's own output (--help, --version) to a stream that failed
                raise StreamError(e, False) from None
            except SystemExit:  # click ends a broken pipe of its own output (--help) with status 1
                if type(sys.stdout).__name__ == "_PacifyFlushWrapper":
                    raise StreamError(BrokenPipeError(32, "Broken pipe"), False) from None
                raise
        except click.exceptions.NoArgsIsHelpError as e:
            echo(e.ctx.get_help())
            sys.exit(0)
        except click.ClickException as e:  # usage errors: our style, exit 2
            self._debug_traceback(e, "--debug" in words)
            hint = f" (see '{e.ctx.command_path} --help')" if getattr(e, "ctx", None) is not None else ""
            fail([e.format_message().rstrip(".") + hint], as_json=self._json)
            sys.exit(EXIT_USER)
        except click.exceptions.Abort:  # Ctrl-C (click turns KeyboardInterrupt into Abort)
            fail([interrupted_sentence()], as_json=self._json, kind="interrupted")
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MptkitError as e:
            self._debug_traceback(e, _debug(ctx))
            fail(e.problems, as_json=self._json)
            ctx.exit(e.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, KeyboardInterrupt, StreamError):
            raise
        except (OSError, MemoryError) as e:  # the file system or the memory, not mptkit, said no
            if isinstance(e, OSError) and from_click_echo(e):  # click printing a command's --help
                raise from_click_echo(e) from None
            self._debug_traceback(e, _debug(ctx))
            fail([os_error_sentence(e) if isinstance(e, OSError) else memory_sentence(e)], as_json=self._json)
            ctx.exit(EXIT_USER)
        except ImportError as e:  # a broken or partial install, or a library that cannot load here
            self._debug_traceback(e, _debug(ctx))
            what = e.name or "a module mptkit needs"
            fail(
                [
                    f"cannot import {what} ({_one_line(e)}); reinstall it "
                    "(pip install --force-reinstall mptkit, with torch installed first)"
                ],
                as_json=self._json,
            )
            ctx.exit(EXIT_USER)
        except Exception as e:  # a bug, not the user's mistake
            self._debug_traceback(e, _debug(ctx))
            if is_allocation_failure(e):  # torch's allocator says RuntimeError where Python says MemoryError
                fail([memory_sentence(e)], as_json=self._json)
                ctx.exit(EXIT_USER)
            fail(
                [
                    f"internal error: {type(e).__name__}: {e} (a bug in mptkit; "
                    + ("the traceback is above)" if _debug(ctx) else "run with --debug for the traceback)")
                ],
                as_json=self._json,
            )
            ctx.exit(EXIT_BUG)

    @staticmethod
    def _debug_traceback(e: BaseException, debug: bool) -> None:
        if debug:
            traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)

    def list_commands(self, ctx):
        return list(self.commands)  # in the order they are defined, which is the order of the README


def fail(problems, *, as_json: bool, kind: str = "error") -> None:
    """Print problems as ``mptkit: error: ...`` lines on stderr, or with ``as_json`` as one JSON
    object on stdout."""
    problems = [str(p) for p in problems] or ["unknown error"]
    if as_json:
        emit_json({"error": problems[0], "problems": problems})
        return
    for line in problems:
        prefix = "mptkit: error: " if kind == "error" else "mptkit: "
        echo(clean(prefix + line), err=True)


def interrupted_sentence() -> str:
    """What Ctrl-C stopped: an output half-written (so not written), one completed, or nothing."""
    atomic = sys.modules.get("mptkit.formats._atomic")
    progress = dict(getattr(atomic, "progress", {}) or {})
    writing = [p for p, state in progress.items() if state == "writing"]
    written = [p for p, state in progress.items() if state == "written"]
    if writing:
        return f"interrupted: {writing[-1]} was not written (nothing there changed)"
    if written:
        return f"interrupted after {written[-1]} was completely written (the output is complete)"
    return "interrupted before any output was written"


def _one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def _debug(ctx) -> bool:
    return bool((ctx.obj or {}).get("debug")) or os.environ.get(_DEBUG_ENV) == "1"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="mptkit")
@click.option("--debug", is_flag=True, help="Also show the traceback of an error (exit statuses stay the same).")
@click.pass_context
def main(ctx, debug):
    """Inspect, validate, derive, edit and share multitask prompt tuning (MPT) prompt banks.

    A bank is a .safetensors file, a PEFT adapter folder, a .bin/.pt pickle (weights only), or
    hf://owner/repo[@rev][/path]. An output ending in .safetensors is a bare state dict; one with no
    suffix (or ending in /) is a PEFT adapter folder; other suffixes are refused.

    Exit status: 0 success, 2 a user error (one line on stderr; JSON on stdout with --json), 130
    interrupted, 1 a bug. Shell completion: eval "$(_MPTKIT_COMPLETE=bash_source mptkit)".
    """
    ctx.ensure_object(dict)["debug"] = debug
    if _GUARD not in sys.meta_path:
        sys.meta_path.insert(0, _GUARD)
    from .._progress import disable

    disable(False)  # each command starts with bars on (where stderr is a terminal); --quiet/--json turn them off
    if debug:
        os.environ[_DEBUG_ENV] = "1"  # library code (hub transfers) keeps its logs too


def for_peft(bank, peft_version: str | None):
    """``bank`` with the config PEFT ``peft_version`` writes (``--peft-version``; as it is without
    one), and the fields of its config an adapter folder of it drops."""
    from .. import _peftfields as fields

    if peft_version:
        return bank.for_peft(peft_version), fields.for_release(bank.config, peft_version)[1]
    dialect = fields.has_dialect(bank.config)
    return bank, fields.build_config(bank.config, {"peft_type": fields.MPT})[1] if dialect else []


def echo_repairs(bank, out, peft_version: str | None = None, dropped=()) -> None:
    """Say what an output's config (``out``, a planned output) had to lose so that PEFT loads it: a
    source initialisation's fields, the fields ``dropped`` (PEFT ``peft_version`` lacks them, or no
    release has them); for a bare file written for ``peft_version``, what that PEFT does with it."""
    from .._render import config_report
    from ..formats import _peft as peft

    fixed = peft.repairs(bank.config) if out.folder else []
    echo_lines(config_report(out.path, fixed, list(dropped) if out.folder else [], peft_version, out.folder))


def bank_json(bank, output=None, **extra) -> dict:
    """The JSON every command that writes a bank prints (one set of keys for one set of things,
    ``schemas/output.schema.json``): where it went, its shapes, and the operation's provenance
    entry (its arguments, and what it found as ``results``)."""
    entry = bank.provenance[-1] if bank.provenance else {}
    return {
        **({"output": str(output)} if output is not None else {}),
        "N": bank.num_tokens,
        "d": bank.token_dim,
        "num_tasks": bank.num_tasks,
        "rank": bank.rank,
        "dtype": bank.dtype,
        "task_names": bank.task_names,
        "operation": entry.get("operation"),
        "arguments": entry.get("arguments", {}),
        "results": entry.get("results", {}),
        **extra,
        "provenance": entry,
    }


def emit_json(obj) -> None:
    """``obj`` as JSON on stdout, with control characters escaped and tokens redacted."""
    echo(json_text(obj))


def say(text: str, err: bool = False) -> None:
    """Print ``text`` (one line or several), each line made safe by :func:`mptkit._text.clean`."""
    for line in str(text).split("\n"):
        echo(clean(line), err=err)


def echo_lines(lines) -> None:
    for line in lines:
        say(line)
