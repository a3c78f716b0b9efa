"""The options commands share, defined once: ``--json``, ``--quiet``, ``-o/--output``, ``--force`` and
``--peft-version``,
``--adapter``, ``--dtype``, ``--tasks``, the adapter_config.json fields (from
:data:`mptkit._options.CONFIG_FIELDS`) and the Hub's ``--timeout``/``--deadline``."""

from __future__ import annotations

import click

from ..errors import MptkitError


def _no_bars(ctx, param, value):
    if value:
        from .._progress import disable

        disable()  # bars are for people at a terminal: never beside --json output, off with --quiet
    return value


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, callback=_no_bars, help="Print JSON for scripts.")(f)


def quiet_option(f):
    return click.option(
        "-q",
        "--quiet",
        is_flag=True,
        expose_value=False,
        callback=_no_bars,
        help=("No progress bars (they are off anyway without a terminal, and with HF_HUB_DISABLE_PROGRESS_BARS=1)."),
    )(f)


def force_option(f):
    return click.option(
        "--force",
        is_flag=True,
        help=("Replace an existing output, if it is a bank (or an empty folder); anything else is never replaced."),
    )(f)


def peft_version_option(f):
    """``--peft-version X``, for every command that writes an adapter folder: its adapter_config.json
    has exactly the fields PEFT X writes (:meth:`mptkit.PromptBank.for_peft`)."""
    from .._peftfields import check_version

    return click.option(
        "--peft-version",
        metavar="X.Y.Z",
        callback=_checked(lambda v: v if v is None else check_version(v), "--peft-version "),
        help=(
            "Write an adapter folder's config as PEFT X.Y.Z writes it (its fields only; the others are dropped "
            "and named). Default: the fields the source's config has (or, without one, the installed PEFT's)."
        ),
    )(f)


def output_options(f):
    f = peft_version_option(f)
    f = force_option(f)
    f = click.option(
        "-o",
        "--output",
        required=True,
        type=click.Path(),
        help=(
            "Output: a path ending in .safetensors (bare state dict), or a folder without a suffix or ending "
            "in / (PEFT adapter)."
        ),
    )(f)
    return f


def adapter_option(f):
    """``--adapter NAME``, for every command that reads a bank: which adapter of an input that holds
    several (a PEFT folder with named adapters, a state dict with several prompt encoders)."""
    return click.option(
        "--adapter",
        metavar="NAME",
        help=(
            "Which adapter to read when an input holds several (a PEFT folder with named adapters, "
            "a state dict with prompt_encoder.A and .B)."
        ),
    )(f)


def dtype_option(help: str):
    """``--dtype`` and, with it, ``--clamp``."""
    from .._dtypes import USER_NAMES as DTYPES

    return lambda f: click.option("--dtype", type=click.Choice(DTYPES), help=help)(clamp_option(f))


def clamp_option(f):
    return click.option(
        "--clamp",
        is_flag=True,
        help=(
            "Store values beyond the output dtype's range (float16: 65504) as its largest value, with their "
            "sign; without it they are refused (they would become Inf)."
        ),
    )(f)


_TASKS_HELP = "Tasks: indices, ranges and names, e.g. 0,3,5-7 or sst2,mnli."


def tasks_option(extra: str = "", required: bool = True):
    return click.option("--tasks", required=required, help=_TASKS_HELP + (" " + extra if extra else ""))


def config_options(f):
    """The adapter_config.json fields (:data:`mptkit._options.CONFIG_FIELDS`) as options, collected
    into one ``config`` dict argument for the API's ``config=``/``with_config``."""
    import functools

    from .._options import CONFIG_FIELDS, task_types

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        kwargs["config"] = {fd.key: kwargs.pop("cfg_" + fd.key) for fd in CONFIG_FIELDS}
        return f(*args, **kwargs)

    for fd in reversed(CONFIG_FIELDS):
        if fd.key == "task_type":
            opt = click.option(
                fd.flag,
                "cfg_" + fd.key,
                metavar="[" + "|".join(task_types()) + "]",
                help=fd.help,
                callback=_checked(fd.check),
            )
        elif fd.kind is int:
            opt = click.option(fd.flag, "cfg_" + fd.key, type=click.IntRange(fd.minimum, fd.maximum), help=fd.help)
        else:
            opt = click.option(fd.flag, "cfg_" + fd.key, help=fd.help)
        wrapper = opt(wrapper)
    return wrapper


def _checked(check, flag: str = ""):
    """A click callback from a check of the API's (value -> value, or an MptkitError)."""

    def callback(ctx, param, value):
        try:
            return check(value)
        except MptkitError as e:
            raise click.BadParameter(e.message.removeprefix(flag)) from None

    return callback


def limit_options(f):
    """--timeout and --deadline for Hub transfers (:mod:`mptkit.hub._http`); without them the
    environment variables and the API's defaults apply."""
    from .._options import HUB_DEADLINE, HUB_TIMEOUT

    f = click.option(
        "--deadline",
        type=float,
        metavar="SECONDS",
        help=(
            f"Hub transfers: give up when they take longer than this in all (default {HUB_DEADLINE:g}, or "
            "MPTKIT_HUB_DEADLINE)."
        ),
    )(f)
    f = click.option(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help=(
            f"Hub transfers: give up on a server that sends less than 1 kB in this many seconds (default "
            f"{HUB_TIMEOUT:g}, or MPTKIT_HUB_TIMEOUT)."
        ),
    )(f)
    return f
