"""The ``mptkit`` command group and what its commands share: error handling (one sentence, exit 2;
``--debug`` for the traceback), ``--json``, ``-o/--output``/``--force``, and the config options
built from :data:`mptkit.options.CONFIG_FIELDS`. Commands only parse, call the Python API and
print (:mod:`mptkit.render` holds the text)."""

from __future__ import annotations

import json
import os

import click

from .._version import __version__
from ..errors import MptkitError
from ..text import clean

_DEBUG_ENV = "MPTKIT_DEBUG"


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
        except Exception as e:  # a bug, not the user's mistake: still no traceback by default
            if _debug(ctx):
                raise
            click.echo(clean(f"mptkit: internal error: {type(e).__name__}: {e} (run with --debug for the traceback)"),
                       err=True)
            ctx.exit(1)

    def list_commands(self, ctx):
        return list(self.commands)  # in the order they are defined, which is the order of the README


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
    if debug:
        os.environ[_DEBUG_ENV] = "1"  # library code (hub transfers) keeps its logs too


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(f)


def force_option(f):
    return click.option("--force", is_flag=True, help="Replace an existing output.")(f)


def output_options(f):
    f = force_option(f)
    f = click.option("-o", "--output", required=True, type=click.Path(), help=(
        "Output: a path ending in .safetensors (bare state dict) or a folder (PEFT adapter)."))(f)
    return f


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


def limit_options(f):
    """--timeout and --deadline for Hub transfers (:mod:`mptkit.hub.http`); without them the
    environment variables and the API's defaults apply."""
    from ..options import HUB_DEADLINE, HUB_TIMEOUT

    f = click.option("--deadline", type=float, metavar="SECONDS", help=(
        f"Hub transfers: give up when they take longer than this in all (default {HUB_DEADLINE:g}, or "
        "MPTKIT_HUB_DEADLINE)."))(f)
    f = click.option("--timeout", type=float, metavar="SECONDS", help=(
        f"Hub transfers: give up on a server that sends less than 1 kB in this many seconds (default "
        f"{HUB_TIMEOUT:g}, or MPTKIT_HUB_TIMEOUT)."))(f)
    return f


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


def echo_lines(lines) -> None:
    for line in lines:
        click.echo(line)
