"""The README stays true: every `mptkit ...` line it shows names a real command and real options."""

import re
import shlex
from pathlib import Path

import click

from mptkit.cli import main

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def _readme_command_lines():
    lines = []
    for lang, block in re.findall(r"```(\w*)\n(.*?)```", README, flags=re.S):
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
    lines += list(re.findall(r"`(mptkit [^`]+)`", README))
    return lines


def _options(cmd: click.Command) -> set[str]:
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}


def test_every_command_and_option_in_the_readme_exists():
    lines = _readme_command_lines()
    assert len(lines) > 20  # the tour shows every command
    seen = set()
    for line in lines:
        words = shlex.split(re.sub(r"[\[\]|]", " ", line.replace("...", "")))[1:]
        while words and words[0] in ("--debug",):
            words = words[1:]
        if not words or not re.match(r"[a-z]", words[0]):  # `mptkit COMMAND --help`, a table row
            continue
        name = words[0]
        assert name in main.commands, f"README shows `{line}` but mptkit has no command {name!r}"
        seen.add(name)
        known = _options(main.commands[name])
        for w in words[1:]:
            flag = w.split("=", 1)[0]
            if flag.startswith("-") and not re.fullmatch(r"-\d.*", flag):
                assert flag in known, f"README shows `{line}` but `mptkit {name}` has no option {flag}"
    assert seen == set(main.commands), f"commands the README never shows: {set(main.commands) - seen}"
