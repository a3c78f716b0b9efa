"""The house: data flows one way (cli -> operations -> io -> hub -> formats -> bank -> numerics,
schema, tensor, errors), so no module imports one above it and there is no import circle; and no
module grows past about 400 lines.

Every import of every module counts, also those inside functions (a lazy import is still an arrow).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import ROOT

PACKAGE = ROOT / "mptkit"

#: every module, lowest first: a module may import only modules listed before it
LAYERS = [
    "mptkit._version",
    "mptkit.errors",
    "mptkit._peftfields",
    "mptkit._text",
    "mptkit._progress",
    "mptkit._strictjson",
    "mptkit._dtypes",
    "mptkit._tensor",
    "mptkit._schema",
    "mptkit._recipefile",
    "mptkit._options",
    "mptkit._numerics",
    "mptkit._bank",
    "mptkit._rows",
    "mptkit._info",
    "mptkit._finite",
    "mptkit.formats._safetensors",
    "mptkit.formats._objects",
    "mptkit.formats._registry",
    "mptkit.formats._targets",
    "mptkit.formats._temps",
    "mptkit.formats._atomic",
    "mptkit.formats._plan",
    "mptkit.formats._checkpoints",
    "mptkit.formats._embeddings",
    "mptkit.formats._peft",
    "mptkit.formats._pickle_scan",
    "mptkit.formats._pickle",
    "mptkit.formats._bankcheck",
    "mptkit.formats._bankfile",
    "mptkit.formats._torchpickle",
    "mptkit.formats._checkpointdir",
    "mptkit.formats._tables",
    "mptkit.formats._peftdir",
    "mptkit.formats._files",
    "mptkit.formats._tgis",
    "mptkit.formats",
    "mptkit.hub._refs",
    "mptkit.hub._wire",
    "mptkit.hub._http",
    "mptkit.hub._client",
    "mptkit.hub._cache",
    "mptkit.hub._remote",
    "mptkit.hub._transfer",
    "mptkit.hub._load",
    "mptkit.hub._basemodel",
    "mptkit.hub._card",
    "mptkit.hub._push",
    "mptkit.hub",
    "mptkit._io",
    "mptkit._anderson",
    "mptkit._als",
    "mptkit._fit",
    "mptkit._derive",
    "mptkit._combine",
    "mptkit._edit",
    "mptkit._merge",
    "mptkit._export",
    "mptkit._similarity",
    "mptkit._explain",
    "mptkit._convert",
    "mptkit._decompose",
    "mptkit._diff",
    "mptkit._sources",
    "mptkit._recipe",
    "mptkit._verify",
    "mptkit._report_html",
    "mptkit._report_large",
    "mptkit._report",
    "mptkit._pictures",
    "mptkit.serve._runtime",
    "mptkit.serve._embedder",
    "mptkit.serve",
    "mptkit._render",
    "mptkit.cli._streams",
    "mptkit.cli._app",
    "mptkit.cli._opts",
    "mptkit.cli._read",
    "mptkit.cli._derive",
    "mptkit.cli._edit",
    "mptkit.cli._convert",
    "mptkit.cli._recipes",
    "mptkit.cli._explain",
    "mptkit.cli._hub",
    "mptkit.cli._report",
    "mptkit.cli",
    "mptkit.__main__",
    "mptkit",
]
MAX_LINES = 420


def _modules() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _imports(name: str, path: Path) -> set[str]:
    """The mptkit modules ``name`` imports (``from . import x`` counts x when x is a module)."""
    modules = _modules()
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "mptkit"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "mptkit":
                continue
            submodules = {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules}
            out |= submodules
            if len(submodules) < len(node.names):  # names taken from the module itself
                out.add(target)
    out.discard(name)
    return out


def test_every_module_has_a_place_in_the_layers():
    missing = sorted(set(_modules()) - set(LAYERS))
    assert not missing, f"add these modules to LAYERS in tests/house/test_architecture.py: {missing}"


def test_no_module_imports_upwards_so_there_is_no_circle():
    rank = {m: i for i, m in enumerate(LAYERS)}
    upward = []
    for name, path in _modules().items():
        for target in _imports(name, path):
            if target in rank and rank[target] >= rank[name]:
                upward.append(f"{name} imports {target}")
    assert not upward, "imports that point up the layers (or form a circle):\n" + "\n".join(sorted(upward))


def test_the_check_sees_lazy_imports(tmp_path):
    """The checker itself can fail: an import inside a function is found."""
    probe = PACKAGE / "formats" / "_torchpickle.py"
    assert "mptkit.formats._pickle" in _imports("mptkit.formats._torchpickle", probe)  # imported inside read_bank


def test_no_module_is_much_over_400_lines():
    long = {n: len(p.read_text(encoding="utf-8").splitlines()) for n, p in _modules().items()}
    over = {n: k for n, k in long.items() if k > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines (split them by job): {over}"
