"""Honest dependencies: every module mptkit imports at run time, at the top of a module or
inside a function, is the standard library, mptkit itself, or a declared dependency; optional ones
only from an extra and behind a clear message; and every declared runtime dependency is used.
(.ci/bare_install.py proves the same by running every command in an install without the test
extra.)"""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions

import tomllib

from tests.support import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
#: declared but not imported by name, with the reason
USED_INDIRECTLY = {"numpy": "torch's Tensor.numpy(), the bridge to tensor bytes (torch does not depend on numpy)"}


def _name(req: str) -> str:
    return re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0].lower().replace("_", "-")


def _imports() -> dict[str, set[str]]:
    """Top-level module names imported anywhere in the package -> the files importing them."""
    out: dict[str, set[str]] = {}
    for path in (ROOT / "mptkit").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            for n in names:
                out.setdefault(n.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return out


def _distribution(module: str) -> str | None:
    dists = packages_distributions().get(module)
    return dists[0].lower().replace("_", "-") if dists else None


def test_every_runtime_import_is_declared():
    declared = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    optional = {
        _name(r)
        for extra, reqs in PYPROJECT["project"]["optional-dependencies"].items()
        if extra != "test"
        for r in reqs
    }
    undeclared = {}
    for module, files in _imports().items():
        if module == "mptkit" or module in sys.stdlib_module_names:
            continue
        dist = _distribution(module)
        assert dist is not None, f"{module} (imported in {sorted(files)}) is not installed: what provides it?"
        if dist not in declared and dist not in optional:
            undeclared[module] = sorted(files)
    assert not undeclared, f"imported at run time but not in pyproject's dependencies: {undeclared}"


def test_every_declared_dependency_is_used():
    imported = {_distribution(m) for m in _imports() if m not in sys.stdlib_module_names and m != "mptkit"}
    for req in PYPROJECT["project"]["dependencies"]:
        name = _name(req)
        assert name in imported or name in USED_INDIRECTLY, (
            f"{name} is a runtime dependency that mptkit never imports: use it or move it to the test extra"
        )
    assert "safetensors" not in {_name(r) for r in PYPROJECT["project"]["dependencies"]}  # the tests' reference only


def test_the_check_sees_imports_inside_functions():
    assert "mptkit/_similarity.py" in _imports()["matplotlib"]  # imported lazily, for --plot
    assert "mptkit/_schema.py" in _imports()["referencing"]


def test_the_readme_set_up_installs_as_users_do():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    setup = re.search(r"## Set up on a fresh machine.*?```sh\n(.*?)```", readme, flags=re.S).group(1)
    assert "pip install torch==2.13.0 && pip install . &&" in setup  # non-editable, no test extra
    run = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "bare_install.py" in run
