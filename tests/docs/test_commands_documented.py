"""The docs stay true about the CLI: every `mptkit ...` line that README.md or a docs page shows (in a
block or quoted in prose) names a real command and real options, and together they show every
command."""

import re
import shlex

import click
import pytest

from mptkit.cli import main
from tests.docs.docpages import pages


def command_lines(text: str) -> list[str]:
    """The ``mptkit ...`` command lines of a page: in its sh/bash/text blocks (a text block's
    ``$ command`` lines only) and quoted in backticks in its prose and tables."""
    lines = []
    for lang, block in re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S):
        if lang not in ("", "sh", "bash", "text"):
            continue
        for line in block.splitlines():
            line = line.strip()
            if lang == "text" and not line.startswith("$ "):  # program output, not a command
                continue
            line = line.removeprefix("$ ")
            for part in re.split(r"&&", line):
                part = part.split("#", 1)[0].strip()
                if part.startswith("mptkit "):
                    lines.append(part)
    # the command table and the prose quote commands in backticks
    lines += list(re.findall(r"`(mptkit [^`]+)`", text))
    return lines


def _options(cmd: click.Command) -> set[str]:
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}


def problems(line: str) -> tuple[str | None, list[str]]:
    """The command a documented line runs (None for `mptkit COMMAND --help` and the like) and what
    is wrong with it."""
    words = shlex.split(re.sub(r"[\[\]|]", " ", line.replace("...", "")))[1:]
    while words and words[0] in ("--debug",):
        words = words[1:]
    if not words or not re.match(r"[a-z]", words[0]):  # `mptkit COMMAND --help`, a table row
        return None, []
    name = words[0]
    if name not in main.commands:
        return None, [f"`{line}`: mptkit has no command {name!r}"]
    known = _options(main.commands[name])
    bad = []
    for w in words[1:]:
        flag = w.split("=", 1)[0]
        if flag.startswith("-") and not re.fullmatch(r"-\d.*", flag) and flag not in known:
            bad.append(f"`{line}`: `mptkit {name}` has no option {flag}")
    return name, bad


def test_the_check_can_fail():
    assert problems("mptkit derive BANK --mode exact --task K -o OUT") == ("derive", [])
    assert problems("mptkit derive BANK --no-such-option")[1]
    assert problems("mptkit frobnicate BANK")[1]
    assert command_lines("```sh\nmptkit inspect a && mptkit validate a  # b\n```\n`mptkit rank X`") == [
        "mptkit inspect a",
        "mptkit validate a",
        "mptkit rank X",
    ]


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.name)
def test_every_command_and_option_on_the_page_exists(page):
    found = []
    for line in command_lines(page.text):
        found += problems(line)[1]
    assert not found, f"{page.name}:\n" + "\n".join(found)


def test_the_docs_show_every_command():
    lines = [line for page in pages() for line in command_lines(page.text)]
    assert len(lines) > 20
    seen = {problems(line)[0] for line in lines} - {None}
    assert seen == set(main.commands), f"commands no page shows: {set(main.commands) - seen}"
