"""The examples of README.md and of every docs page run, in order, as a reader would type them, and
print what the page says.

Pages do not share a folder: each page (README.md first, then docs/ in mkdocs.yml's nav order) runs
in a fresh folder holding a copy of ``examples/`` (what a fresh clone gives a reader), against a
fresh loopback Hub (tests.fakehub stands in for huggingface.co, so ``push``/``pull``/``hf://``
blocks run too). So a reader can follow any page on its own, and a page may not lean on files an
earlier page made; within a page, blocks run in order and share the folder.

- ```sh``` / ```bash``` blocks: every line is a command (bash) and must exit 0. The set-up blocks
  that create a virtual environment and pip-install are CI's job (``.ci/run`` runs the README's
  literally); here only their ``mptkit`` commands run.
- ```text``` blocks: ``$ command`` lines, each followed by the output the page promises (stdout and
  stderr, as a terminal shows them). The output must match line for line; a line ``  ...`` stands
  for any number of lines. An output starting ``mptkit: error:`` promises exit status 2, any other 0.
- ```python``` blocks: run as a script (exit 0). A ``print(...)  # text`` line promises that ``text``
  is printed, in that order.
- Blocks in any other language (```console for a shell's startup file, another engine) are shown,
  not run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.docpages import ROOT, RUN, pages


def _commands_of_setup(line: str) -> str | None:
    """A set-up line (venv, pip): its mptkit commands only, chained; None when it has none."""
    if "pip install" not in line and "venv" not in line:
        return line
    parts = [p.strip() for p in line.split("&&")]
    keep = [p for p in parts if p.startswith("mptkit ")]
    return " && ".join(keep) or None


def _matches(expected: list[str], actual: list[str]) -> bool:
    """Line-for-line equality where an expected ``...`` line stands for any run of lines."""
    if not expected:
        return not actual
    if expected[0].strip() == "...":
        return any(_matches(expected[1:], actual[i:]) for i in range(len(actual) + 1))
    return bool(actual) and expected[0].rstrip() == actual[0].rstrip() and _matches(expected[1:], actual[1:])


def _transcript(text: str) -> list[tuple[str, list[str]]]:
    """A text block's ``(command, expected output lines)`` pairs."""
    out: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            out.append((line[2:], []))
        elif out:
            out[-1][1].append(line)
    return out


_PRINT = re.compile(r"^\s*print\(.*\)\s+#\s?(.*)$")


@pytest.fixture
def world(hub, tmp_path):
    """A fresh reader's folder (a copy of examples/), the loopback Hub's endpoint, and an environment
    in which ``mptkit`` and ``python`` are this interpreter's."""
    work = tmp_path / "reader"
    work.mkdir()
    shutil.copytree(ROOT / "examples", work / "examples")
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "200"
    hub.require_token = env["HF_TOKEN"] = "hf_ReadmeReaderToken0123456789"  # a reader is logged in
    env.pop("MPTKIT_DEBUG", None)
    return work, env


def _run(cmd: str, work: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", cmd], cwd=work, env=env, capture_output=True, text=True, timeout=300)


def test_the_pages_have_examples_of_every_kind():
    blocks = [(lang, text) for page in pages() for _, lang, text in page.blocks()]
    assert {"sh", "text", "python"} <= {lang for lang, _ in blocks}
    assert sum(1 for lang, text in blocks if lang == "text" and "$ " in text) >= 10


def test_every_text_block_is_a_transcript():
    """A ```text block that holds no ``$ command`` would run nothing: a table belongs in a table."""
    for page in pages():
        for lineno, lang, text in page.blocks():
            if lang == "text":
                assert text.startswith("$ "), f"{page.name} line {lineno}: a text block starts with its `$ command`"


def test_the_matcher_can_fail():
    assert _matches(["a", "  ...", "c"], ["a", "x", "y", "c"])
    assert not _matches(["a", "b"], ["a", "c"])
    assert not _matches(["a"], ["a", "extra"])


def _run_page(page, work: Path, env: dict) -> int:
    """Run every block of ``page`` in ``work``, in order; the number of commands and scripts run."""
    ran = 0
    for lineno, lang, text in page.blocks():
        where = f"{page.name} line {lineno}"
        if lang in ("sh", "bash"):
            for line in text.splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                cmd = _commands_of_setup(line)
                if cmd is None:
                    continue
                r = _run(cmd, work, env)
                assert r.returncode == 0, f"{where}: `{cmd}` exited {r.returncode}:\n{r.stdout}{r.stderr}"
                ran += 1
        elif lang == "text":
            for cmd, expected in _transcript(text):
                r = _run(cmd, work, env)
                want = 2 if expected and expected[0].startswith("mptkit: error:") else 0
                actual = (r.stdout + r.stderr).splitlines()
                assert r.returncode == want, f"{where}: `{cmd}` exited {r.returncode}, expected {want}:\n" + "\n".join(
                    actual
                )
                assert _matches(expected, actual), (
                    f"{where}: `{cmd}` printed\n" + "\n".join(actual) + "\nbut the page shows\n" + "\n".join(expected)
                )
                ran += 1
        elif lang == "python":
            script = work / f"{page.path.stem}_block_{lineno}.py"
            script.write_text(text, encoding="utf-8")
            r = subprocess.run(
                [sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True, timeout=600
            )
            assert r.returncode == 0, f"{where}: the Python block failed:\n{r.stderr[-3000:]}"
            printed = r.stdout.splitlines()
            pos = 0
            for line in text.splitlines():
                m = _PRINT.match(line)
                if not m:
                    continue
                want = m.group(1).strip()
                found = next((i for i in range(pos, len(printed)) if printed[i].strip() == want), None)
                assert found is not None, f"{where}: `{line.strip()}` should print {want!r}; printed:\n{r.stdout}"
                pos = found + 1
            ran += 1
    return ran


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.name)
def test_page_examples_run_in_order(page, world):
    work, env = world
    ran = _run_page(page, work, env)
    assert ran or not any(lang in RUN for _, lang, _ in page.blocks()), f"{page.name}: its blocks ran nothing"
