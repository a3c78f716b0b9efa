"""The pages a reader sees (README.md, then docs/ in mkdocs.yml's nav order), their fenced blocks,
and the checks the docs tests share: which ``mptkit...`` Python names a page mentions and whether
each is public."""

from __future__ import annotations

import ast
import importlib
import re
import types
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
#: the languages whose blocks run (others, such as ```console, are shown, not run)
RUN = ("sh", "bash", "text", "python")


@dataclass(frozen=True)
class Page:
    path: Path

    @property
    def name(self) -> str:
        return str(self.path.relative_to(ROOT))

    @property
    def text(self) -> str:
        return self.path.read_text(encoding="utf-8")

    def blocks(self) -> list[tuple[int, str, str]]:
        """``(line number, language, text)`` of every fenced block, in order."""
        t = self.text
        return [(t.count("\n", 0, m.start()) + 1, m.group(1), m.group(2)) for m in FENCE.finditer(t)]


class _Loader(yaml.SafeLoader):
    """mkdocs.yml may hold tags such as ``!!python/name:`` (material's extensions); read them as None."""


_Loader.add_multi_constructor("", lambda loader, suffix, node: None)


def mkdocs_config() -> dict:
    return yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_Loader)


def nav_files(nav=None) -> list[str]:
    """The docs pages in mkdocs.yml's nav, in order (sections flattened)."""
    nav = mkdocs_config()["nav"] if nav is None else nav
    out: list[str] = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        if isinstance(value, list):
            out += nav_files(value)
        elif isinstance(value, str) and value.endswith(".md"):
            out.append(value)
    return out


def pages() -> list[Page]:
    """README.md first, then every page of the docs in nav order."""
    return [Page(ROOT / "README.md"), *(Page(DOCS / f) for f in nav_files())]


# -- Python names --------------------------------------------------------------------------------
#: the documented subpackages (every other module of mptkit is internal, its name starting with _)
PUBLIC_SUBPACKAGES = ("formats", "hub", "serve", "errors")
#: ``mptkit.x.y`` in prose or code; not inside a path or file name (``completions/mptkit.fish``)
NAME = re.compile(r"(?<![\w/.-])mptkit(?:\.[A-Za-z_]\w*)+")
#: a private module named by its dotted name or its path: ``mptkit._export``, ``mptkit/formats/_atomic.py``
PRIVATE = re.compile(r"(?<![\w-])mptkit(?:[./][A-Za-z]\w*)*[./]_(?!_)\w+")


def metadata_keys() -> set[str]:
    """The safetensors metadata keys mptkit writes (``mptkit.task_names``, ...): strings, not names."""
    from mptkit import _schema

    return {v for k, v in vars(_schema).items() if k.startswith("META_") and isinstance(v, str)}


def _import_names(code: str) -> list[str]:
    """``mptkit...`` names a Python block imports (``from mptkit.serve import TaskPrompts``)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "mptkit":
            out += [f"{node.module}.{a.name}" for a in node.names if a.name != "*"]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.split(".")[0] == "mptkit"]
    return out


def python_names(text: str, python_blocks: list[str] = ()) -> list[str]:
    """Every ``mptkit...`` Python name ``text`` mentions (prose, tables and code), and those its
    Python blocks import; metadata keys left out."""
    keys = metadata_keys()
    found = [n for n in NAME.findall(text) if n not in keys]
    for code in python_blocks:
        found += _import_names(code)
    return list(dict.fromkeys(found))


def name_problem(dotted: str) -> str | None:
    """None when ``dotted`` (``mptkit.derive``, ``mptkit.serve.TaskPrompts.from_bank``) is public:
    every module on the way lists the next name in its ``__all__`` (or, for ``mptkit`` itself, names
    a public subpackage), and every attribute after that exists and is not private. Otherwise why
    not, in words."""
    import mptkit

    parts = dotted.split(".")
    if parts[0] != "mptkit":
        return f"{dotted}: not an mptkit name"
    obj: object = mptkit
    for i, part in enumerate(parts[1:], start=1):
        here = ".".join(parts[:i])
        so_far = ".".join(parts[: i + 1])
        dunder = part.startswith("__") and part.endswith("__")
        if part.startswith("_") and not dunder:
            return f"{so_far}: a private name (internal modules and names start with _)"
        if isinstance(obj, types.ModuleType):
            public = set(getattr(obj, "__all__", ()))
            if obj is mptkit:
                public |= set(PUBLIC_SUBPACKAGES)
            if not hasattr(obj, "__all__"):
                return f"{so_far}: {here} has no __all__, so nothing in it is documented as public"
            if part not in public and not dunder:
                return f"{so_far}: {part!r} is not in {here}.__all__"
            try:
                obj = (
                    importlib.import_module(so_far)
                    if obj is mptkit and part in PUBLIC_SUBPACKAGES
                    else getattr(obj, part)
                )
            except (AttributeError, ImportError) as e:
                return f"{so_far}: {here} lists it but it does not resolve ({e})"
        else:
            if not hasattr(obj, part):
                return f"{so_far}: {here} has no attribute {part!r}"
            obj = getattr(obj, part)
    return None


def without_changelog(page: Page) -> str:
    """The page's text less the README's Changelog section (which names the old paths on purpose)."""
    text = page.text
    if page.path.name != "README.md":
        return text
    head, sep, rest = text.partition("\n## Changelog\n")
    if not sep:
        return text
    nxt = re.search(r"^## ", rest, flags=re.M)
    return head + ("\n" + rest[nxt.start() :] if nxt else "")


def changelog_rows() -> list[tuple[list[str], list[str]]]:
    """The README Changelog table's rows: (names before, names now), each the backticked
    ``mptkit...`` names of its cell."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.partition("\n## Changelog\n")[2]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) < 2 or set(cells[0]) <= set("- ") or cells[0] == "before":
            continue
        names = [[m for m in re.findall(r"`([^`]+)`", c) if NAME.fullmatch(m)] for c in cells[:2]]
        rows.append((names[0], names[1]))
    return rows
