"""docs/seeing.md runs as written: its ```sh lines exit 0 and its ```python blocks print what their
``# text`` comments promise, in a folder holding a copy of examples/ (the docs helper's runner for
every page takes this over when it lands)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "seeing.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def test_every_block_of_the_page_runs(tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    ran = []
    for lang, text in FENCE.findall(PAGE.read_text(encoding="utf-8")):
        if lang in ("sh", "bash"):
            for line in filter(None, map(str.strip, text.splitlines())):
                r = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True)
                assert r.returncode == 0, (line, r.stderr)
                ran.append(line)
        elif lang == "python":
            r = subprocess.run([sys.executable, "-c", text], cwd=tmp_path, env=env, capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            promised = re.findall(r"^print\(.*\)\s+# (.+)$", text, flags=re.M)
            assert r.stdout.splitlines() == promised
            ran.append("python")
    assert ran == ["mptkit report examples/bank -o report.html", "python"]
    assert (tmp_path / "report.html").stat().st_size > 10_000 and (tmp_path / "report-from-python.html").exists()
    assert (ROOT / "docs" / "images" / "report.png").read_bytes().startswith(b"\x89PNG")
