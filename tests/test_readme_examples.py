"""The README's examples run, in order, as a reader would type them, and print what the README says.

One temporary folder holds a copy of ``examples/`` and every file the examples create; a loopback
Hub (tests/hubserver.py) stands in for huggingface.co, so ``push``/``pull``/``hf://`` blocks run too.

- ```sh``` / ```bash``` blocks: every line is a command (bash) and must exit 0. The set-up blocks
  that create a virtual environment and pip-install are CI's job (``.ci/run`` runs them literally);
  here only their ``mptkit`` commands run.
- ```text``` blocks: ``$ command`` lines, each followed by the output the README promises (stdout and
  stderr, as a terminal shows them). The output must match line for line; a line ``  ...`` stands
  for any number of lines. An output starting ``mptkit: error:`` promises exit status 2, any other 0.
- ```python``` blocks: run as a script (exit 0). A ``print(...)  # text`` line promises that ``text``
  is printed, in that order.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def readme_blocks() -> list[tuple[int, str, str]]:
    """``(line number, language, text)`` of every fenced block, in order."""
    return [(README.count("\n", 0, m.start()) + 1, m.group(1), m.group(2)) for m in FENCE.finditer(README)]


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
def world(hub, tmp_path, monkeypatch):
    """The reader's folder (a copy of examples/), the loopback Hub's endpoint, and an environment
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


def test_the_readme_has_examples_of_every_kind():
    langs = [lang for _, lang, _ in readme_blocks()]
    assert {"sh", "text", "python"} <= set(langs), langs
    assert sum(1 for _, lang, text in readme_blocks() if lang == "text" and "$ " in text) >= 4


def test_the_matcher_can_fail():
    assert _matches(["a", "  ...", "c"], ["a", "x", "y", "c"])
    assert not _matches(["a", "b"], ["a", "c"])
    assert not _matches(["a"], ["a", "extra"])


def test_readme_examples_run_in_order(world):
    work, env = world
    ran = 0
    for lineno, lang, text in readme_blocks():
        where = f"README.md line {lineno}"
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
                    f"{where}: `{cmd}` printed\n" + "\n".join(actual) + "\nbut the README shows\n" + "\n".join(expected)
                )
                ran += 1
        elif lang == "python":
            script = work / f"readme_block_{lineno}.py"
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
    assert ran >= 30, ran
