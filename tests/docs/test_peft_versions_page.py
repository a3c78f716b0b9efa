"""docs/peft-versions.md's examples run, in order, in a folder holding a copy of examples/, and print
what the page shows (the README's rules: ```text blocks are ``$ command`` lines and their output,
``  ...`` standing for any lines; ```console blocks are not run)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.test_readme_examples import FENCE, _matches, _transcript

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "peft-versions.md"


def test_the_peft_versions_page_runs(tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "200"}
    ran = 0
    for block in FENCE.finditer(PAGE.read_text(encoding="utf-8")):
        lang, text = block.group(1), block.group(2)
        assert lang in ("text", "console"), f"a {lang} block: run it here"
        if lang != "text":
            continue
        for cmd, expected in _transcript(text):
            r = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
            actual = (r.stdout + r.stderr).splitlines()
            assert r.returncode == (2 if expected[0].startswith("mptkit: error:") else 0), (cmd, actual)
            assert _matches(expected, actual), f"`{cmd}` printed\n" + "\n".join(actual)
            ran += 1
    assert ran == 7
