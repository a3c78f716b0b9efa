"""The ``mptkit`` command group and what its commands share: error handling (one sentence, exit 2;
``--debug`` for the traceback), ``--json``, ``-o/--output``/``--force``, and the config options
built from :data:`mptkit.options.CONFIG_FIELDS`. Commands only parse, call the Python API and
print (:mod:`mptkit.render` holds the text)."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import sys

import click

from .._version import __version__
from ..errors import MptkitError
from ..text import clean

_DEBUG_ENV = "MPTKIT_DEBUG"
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
            f"limit (ulimit -v, RLIMIT_AS) is {_address_space() >> 20} MB; raise it (e.g. ulimit -v unlimited)")

    def exec_module(self, module):  # never reached: create_module refuses
        raise ImportError("torch")


def _address_space() -> int:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return (1 << 62) if soft == resource.RLIM_INFINITY else soft


_GUARD = _TorchGuard()


class _Group(click.Group):
    """Turns mptkit errors into one line and exit 2; anything unexpected into one line and exit 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MptkitError as e:
            if _debug(ctx):
                raise
            for line in e.problems:
                click.echo(clean(f"mptkit: error: {line}"), err=True)
            ctx.exit(e.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, KeyboardInterrupt):
            raise
        except ImportError as e:  # a broken or partial install, or a library that cannot load here
            if _debug(ctx):
                raise
            what = e.name or "a module mptkit needs"
            click.echo(clean(f"mptkit: error: cannot import {what} ({_one_line(e)}); reinstall it "
                             "(pip install --force-reinstall mptkit, with torch installed first)"), err=True)
            ctx.exit(2)
        except Exception as e:  # a bug, not the user's mistake: still no traceback by default
            if _debug(ctx):
                raise
            click.echo(clean(f"mptkit: internal error: {type(e).__name__}: {e} (run with --debug for the traceback)"),
                       err=True)
            ctx.exit(1)

    def list_commands(self, ctx):
        return list(self.commands)  # in the order they are defined, which is the order of the README


def _one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def _debug(ctx) -> bool:
    return bool((ctx.obj or {}).get("debug")) or os.environ.get(_DEBUG_ENV) == "1"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="mptkit")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def main(ctx, debug):
    """Inspect, validate, derive, edit and share multitask prompt tuning (MPT) prompt banks.

    A bank is a .safetensors file, a PEFT adapter folder, a .bin/.pt pickle (weights only), or
    hf://owner/repo[@rev][/path]. Outputs ending in .safetensors are bare state dicts; any other
    output path is a PEFT adapter folder.
    """
    ctx.ensure_object(dict)["debug"] = debug
    if _GUARD not in sys.meta_path:
        sys.meta_path.insert(0, _GUARD)
    from ..progress import disable

    disable(False)  # each command starts with bars on (where stderr is a terminal); --quiet/--json turn them off
    if debug:
        os.environ[_DEBUG_ENV] = "1"  # library code (hub transfers) keeps its logs too


def _no_bars(ctx, param, value):
    if value:
        from ..progress import disable

        disable()  # bars are for people at a terminal: never beside --json output, off with --quiet
    return value


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, callback=_no_bars, help="Print JSON for scripts.")(f)


def quiet_option(f):
    return click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_no_bars, help=(
        "No progress bars (they are off anyway without a terminal, and with HF_HUB_DISABLE_PROGRESS_BARS=1)."))(f)


def force_option(f):
    return click.option("--force", is_flag=True, help="Replace an existing output.")(f)


def output_options(f):
    f = force_option(f)
    f = click.option("-o", "--output", required=True, type=click.Path(), help=(
        "Output: a path ending in .safetensors (bare state dict) or a folder (PEFT adapter)."))(f)
    return f


def adapter_option(f):
    """``--adapter NAME``, for every command that reads a bank: which adapter of an input that holds
    several (a PEFT folder with named adapters, a state dict with several prompt encoders)."""
    return click.option("--adapter", metavar="NAME", help=(
        "Which adapter to read when an input holds several (a PEFT folder with named adapters, "
        "a state dict with prompt_encoder.A and .B)."))(f)


def echo_repairs(bank, output) -> None:
    """Say what an adapter-folder output's config had to lose so that PEFT loads it."""
    from ..formats import folder_repairs

    fixed = folder_repairs(bank, output)
    if fixed:
        click.echo(clean(f"  repaired {os.path.join(os.fspath(output), 'adapter_config.json')} so that PEFT loads it "
                         f"without a source file or tokenizer: {'; '.join(fixed)}"))


def dtype_option(help: str):
    from ..options import DTYPES

    return click.option("--dtype", type=click.Choice(DTYPES), help=help)


_TASKS_HELP = "Tasks: indices, ranges and names, e.g. 0,3,5-7 or sst2,mnli."


def tasks_option(extra: str = "", required: bool = True):
    return click.option("--tasks", required=required, help=_TASKS_HELP + (" " + extra if extra else ""))


def config_options(f):
    """The adapter_config.json fields (:data:`mptkit.options.CONFIG_FIELDS`) as options, collected
    into one ``config`` dict argument for the API's ``config=``/``with_config``."""
    import functools

    from ..options import CONFIG_FIELDS, task_types

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        kwargs["config"] = {fd.key: kwargs.pop("cfg_" + fd.key) for fd in CONFIG_FIELDS}
        return f(*args, **kwargs)

    for fd in reversed(CONFIG_FIELDS):
        if fd.key == "task_type":
            opt = click.option(fd.flag, "cfg_" + fd.key, metavar="[" + "|".join(task_types()) + "]", help=fd.help,
                               callback=_checked(fd))
        elif fd.kind is int:
            opt = click.option(fd.flag, "cfg_" + fd.key, type=click.IntRange(fd.minimum, fd.maximum), help=fd.help)
        else:
            opt = click.option(fd.flag, "cfg_" + fd.key, help=fd.help)
        wrapper = opt(wrapper)
    return wrapper


def _checked(field):
    def callback(ctx, param, value):
        try:
            return field.check(value)
        except MptkitError as e:
            raise click.BadParameter(e.message) from None
    return callback


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


def echo_lines(lines) -> None:
    for line in lines:
        click.echo(line)
