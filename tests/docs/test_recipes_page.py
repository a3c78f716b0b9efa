"""docs/recipes.md runs, in order, as a reader would type it, and prints what it says (the rules of
tests/test_readme_examples.py: ```sh lines exit 0; ```text blocks hold ``$ command`` lines each
followed by the exact output, ``  ...`` standing for any lines, ``mptkit: error:`` promising exit 2;
```python blocks run, a ``print(...)  # text`` line promising that text). The ```yaml recipe it
shows is the committed ``examples/recipe.yaml``, and every command it names exists."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
PAGE = ROOT / "docs" / "recipes.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
_PRINT = re.compile(r"^\s*print\(.*\)\s+#\s?(.*)$")


def blocks() -> list[tuple[int, str, str]]:
    text = PAGE.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def matches(expected: list[str], actual: list[str]) -> bool:
    if not expected:
        return not actual
    if expected[0].strip() == "...":
        return any(matches(expected[1:], actual[i:]) for i in range(len(actual) + 1))
    return bool(actual) and expected[0].rstrip() == actual[0].rstrip() and matches(expected[1:], actual[1:])


def transcript(text: str) -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            out.append((line[2:], []))
        elif out:
            out[-1][1].append(line)
    return out


@pytest.fixture
def reader(tmp_path):
    work = tmp_path / "reader"
    work.mkdir()
    shutil.copytree(ROOT / "examples", work / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "200"
    env["MPTKIT_CACHE"] = str(tmp_path / "cache")
    env.pop("MPTKIT_DEBUG", None)
    return work, env


def test_the_yaml_shown_is_the_committed_recipe():
    (yaml_block,) = [text for _, lang, text in blocks() if lang == "yaml"]
    assert yaml_block == (ROOT / "examples" / "recipe.yaml").read_text(encoding="utf-8")


def test_the_page_runs_in_order(reader):
    work, env = reader
    ran = 0
    for lineno, lang, text in blocks():
        where = f"docs/recipes.md line {lineno}"
        if lang in ("sh", "bash"):
            for line in filter(None, (x.strip() for x in text.splitlines())):
                r = subprocess.run(["bash", "-c", line], cwd=work, env=env, capture_output=True, text=True, timeout=300)
                assert r.returncode == 0, f"{where}: `{line}` exited {r.returncode}:\n{r.stdout}{r.stderr}"
                ran += 1
        elif lang == "text":
            for cmd, expected in transcript(text):
                r = subprocess.run(["bash", "-c", cmd], cwd=work, env=env, capture_output=True, text=True, timeout=300)
                want = 2 if expected and expected[0].startswith("mptkit: error:") else 0
                actual = (r.stdout + r.stderr).splitlines()
                assert r.returncode == want, f"{where}: `{cmd}` exited {r.returncode}:\n" + "\n".join(actual)
                assert matches(expected, actual), f"{where}: `{cmd}` printed\n" + "\n".join(actual)
                ran += 1
        elif lang == "python":
            script = work / f"block_{lineno}.py"
            script.write_text(text, encoding="utf-8")
            r = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True)
            assert r.returncode == 0, f"{where}: the Python block failed:\n{r.stderr[-3000:]}"
            printed, pos = r.stdout.splitlines(), 0
            for line in text.splitlines():
                m = _PRINT.match(line)
                if m:
                    found = next(
                        (i for i in range(pos, len(printed)) if printed[i].strip() == m.group(1).strip()), None
                    )
                    assert found is not None, f"{where}: `{line.strip()}` should print {m.group(1)!r}:\n{r.stdout}"
                    pos = found + 1
            ran += 1
    assert ran >= 10, ran


def test_every_command_the_page_names_exists():
    from mptkit.cli import main

    text = PAGE.read_text(encoding="utf-8")
    for name in set(re.findall(r"`mptkit (\w+)", text)) | set(re.findall(r"^\$ mptkit (\w+)", text, re.M)):
        assert name in main.commands, name
    assert {"build", "verify", "diff"} <= set(re.findall(r"mptkit (\w+)", text))
