"""Read PEFT's adapter_config.json fields from the wheels of every release and compare them with
mptkit's table (mptkit/_peftfields.py): how the table was made, and how to extend it when PEFT
releases again.

    python tests/peft_versions/fields_from_wheels.py [--wheels DIR] [--versions 0.6.0,0.22.0]

Downloads each ``peft==X`` wheel (``pip download --no-deps``, once, into ``--wheels``) and parses,
without importing anything, the dataclass fields of ``PeftConfigMixin``, ``PeftConfig`` and
``PromptLearningConfig`` (``peft/config.py``), ``PromptTuningConfig``
(``peft/tuners/prompt_tuning/config.py``) and ``MultitaskPromptTuningConfig``
(``peft/tuners/multitask_prompt_tuning/config.py``), following their base classes. Prints the
fields each release adds or drops and every disagreement with the table; exits 1 on any.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import zipfile
from pathlib import Path

FILES = ("peft/config.py", "peft/tuners/prompt_tuning/config.py", "peft/tuners/multitask_prompt_tuning/config.py")
CLASSES = {"PROMPT_TUNING": "PromptTuningConfig", "MULTITASK_PROMPT_TUNING": "MultitaskPromptTuningConfig"}


def classes(source: str) -> dict:
    """class name -> (base names, {field: default source text}) for every class in ``source``."""
    out = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        own = {}
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            if "ClassVar" in ast.unparse(stmt.annotation):
                continue
            value, default = stmt.value, None
            if isinstance(value, ast.Call) and ast.unparse(value.func) == "field":
                kw = {k.arg: k.value for k in value.keywords}
                default = ast.unparse(kw["default"]) if "default" in kw else None
            elif value is not None:
                default = ast.unparse(value)
            own[stmt.target.id] = default
        out[node.name] = ([ast.unparse(b) for b in node.bases], own)
    return out


def fields_in(wheel: Path) -> dict[str, dict[str, str]]:
    """adapter type -> {field: default} as the wheel's config classes define them."""
    found = {}
    with zipfile.ZipFile(wheel) as z:
        for name in FILES:
            if name in z.namelist():
                found.update(classes(z.read(name).decode()))

    def walk(cls):
        bases, own = found[cls]
        out = {}
        for b in bases:
            if b in found:
                out.update(walk(b))
        return {**out, **own}

    return {kind: walk(cls) for kind, cls in CLASSES.items()}


def default_text(value) -> str:
    return "None" if value is None else repr(value)


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from mptkit import _peftfields as table

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheels", type=Path, default=Path.home() / ".cache" / "mptkit" / "peft-wheels")
    ap.add_argument("--versions", default=",".join(table.RELEASES))
    args = ap.parse_args()
    args.wheels.mkdir(parents=True, exist_ok=True)
    problems, previous = [], {}
    for version in args.versions.split(","):
        wheel = args.wheels / f"peft-{version}-py3-none-any.whl"
        if not wheel.exists():
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--quiet",
                    "--no-deps",
                    f"peft=={version}",
                    "-d",
                    args.wheels,
                ],
                check=True,
            )
        got = fields_in(wheel)
        for kind, defined in got.items():
            before = previous.get(kind, {})
            added, gone = sorted(set(defined) - set(before)), sorted(set(before) - set(defined))
            if added or gone:
                print(f"{version:8} {kind:24} +{', '.join(added) or '-'}  -{', '.join(gone) or '-'}")
            previous[kind] = defined
            ours = set(table.fields_of(version, kind))
            if ours != set(defined):
                problems.append(f"{version} {kind}: the table says {sorted(ours ^ set(defined))} differently")
            for key in ours & set(defined):
                theirs = defined[key].split(".")[-1].strip("'\"") if defined[key] else "None"
                mine = table.BY_KEY[key].default
                if theirs != (str(mine) if not isinstance(mine, str) else mine):
                    problems.append(f"{version} {kind}: {key} defaults to {defined[key]}, the table says {mine!r}")
    for p in problems:
        print("DIFFERS", p)
    print(f"{len(args.versions.split(','))} releases read; {'no' if not problems else len(problems)} disagreements")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
