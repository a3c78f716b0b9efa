"""Recipe files (``mptkit build RECIPE.yaml``): YAML read safely, with the line of every value, and
checked against ``schemas/recipe.schema.json``; and the YAML mptkit writes back (locks, cards).

Reading is bounded whatever the file holds: at most :data:`MAX_BYTES` are read (a 1 GB file is
refused after its first megabyte), composing stops after :data:`MAX_NODES` nodes nested at most
:data:`MAX_DEPTH` deep, and aliases are expanded within a budget of :data:`MAX_VALUES` values (a
"billion laughs" recipe is refused at the budget, never expanded). PyYAML composes the nodes with
their marks (lines); no constructor runs, so no tag can build an object: a scalar becomes text, an
integer, a finite float, true/false or null, and anything else is refused with its line.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from ._schema import located_problems
from .errors import UsageError

#: the most bytes a recipe may have (recipes are a few hundred bytes; a lock a few kB)
MAX_BYTES = 1 << 20
#: YAML nodes composed, values after aliases are expanded, and nesting depth
MAX_NODES = 20_000
MAX_VALUES = 20_000
MAX_DEPTH = 40
_SIMPLE_TAGS = ("str", "int", "float", "bool", "null")


@dataclass
class Recipe:
    """A recipe as read: its data (plain JSON values) and the line of each value and key."""

    path: str
    data: dict
    lines: dict = field(default_factory=dict)  # path tuple -> 1-based line of the value
    keys: dict = field(default_factory=dict)  # path tuple -> 1-based line of its key

    def line(self, path=()) -> int:
        path = tuple(path)
        while path and path not in self.lines and path not in self.keys:
            path = path[:-1]
        return self.keys.get(path) or self.lines.get(path, 1)

    def where(self, path=()) -> str:
        """``recipe.yaml line 7, sources[1].tasks[0]``"""
        name = field_name(path)
        if not self.lines:  # a recipe recorded in provenance: no file, no lines
            return f"{self.path}, {name}" if name else self.path
        return f"{self.path} line {self.line(path)}" + (f", {name}" if name else "")

    def error(self, path, message: str, cls=UsageError):
        """An error (exit status 2) that names the recipe, the line and the field."""
        return cls(f"{self.where(path)}: {message}")

    def get(self, path, default=None):
        value = self.data
        for p in path:
            try:
                value = value[p]
            except (KeyError, IndexError, TypeError):
                return default
        return value


def field_name(path) -> str:
    """``("sources", 1, "tasks", 0)`` -> ``sources[1].tasks[0]``"""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def read_recipe(path: str | os.PathLike) -> Recipe:
    """The recipe at ``path``, checked against the schema; a :class:`UsageError` naming the line
    and the field for anything wrong, after reading at most :data:`MAX_BYTES` + 1 bytes."""
    shown = os.fspath(path)
    try:
        with open(shown, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
            size = os.fstat(f.fileno()).st_size
    except IsADirectoryError:
        raise UsageError(f"{shown}: a folder, not a recipe file (a YAML file naming sources)") from None
    except FileNotFoundError:
        raise UsageError(f"{shown}: no such recipe file") from None
    except OSError as e:
        raise UsageError(f"{shown}: cannot read the recipe ({e.strerror or e})") from None
    if len(raw) > MAX_BYTES:
        line = raw[:MAX_BYTES].count(b"\n") + 1
        total = f" (it has {size:,} bytes)" if size > MAX_BYTES else ""
        raise UsageError(
            f"{shown} line {line:,}: the file goes on past the {MAX_BYTES >> 20} MB a recipe may have{total}; "
            "a recipe is a short YAML file naming its sources"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UsageError(
            f"{shown} line {line}: not UTF-8 text (byte {e.start}); a recipe is a YAML text file"
        ) from None
    return parse_recipe(text, shown)


def parse_recipe(text: str, shown: str = "recipe") -> Recipe:
    """A recipe from YAML ``text`` (``shown`` names it in messages); see :func:`read_recipe`."""
    data, lines, keys = load_yaml(text, shown)
    recipe = Recipe(shown, data, lines, keys)
    if data is None:
        raise UsageError(f"{shown} line 1: the recipe is empty; it needs at least `sources:` (a list of banks)")
    if not isinstance(data, dict):
        what = {list: "a list", str: "text", bool: "true/false"}.get(type(data), "a number")
        raise UsageError(f"{shown} line 1: expected a mapping (sources:, rank:, output: ...), found {what}")
    problems = located_problems("recipe", data, subject="field")
    if problems:
        where, message = problems[0]
        for label in (f"field '{field_name(where)}': ", f"{field_name(where)}: "):  # the line names the field
            message = message.removeprefix(label)
        raise recipe.error(where, message)
    return recipe


# -- YAML, bounded -------------------------------------------------------------------------------
class _Stop(Exception):
    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line, self.message = line, message


def _loader_class():
    import yaml

    class Loader(yaml.SafeLoader):
        """PyYAML's safe composer, counting nodes and depth as it goes."""

        def __init__(self, stream):
            super().__init__(stream)
            self.nodes = self.depth = 0

        def compose_node(self, parent, index):
            self.nodes += 1
            self.depth += 1
            try:
                if self.nodes > MAX_NODES or self.depth > MAX_DEPTH:
                    line = self.peek_event().start_mark.line + 1
                    if self.depth > MAX_DEPTH:
                        raise _Stop(line, f"nested more than {MAX_DEPTH} levels deep; a recipe is a short YAML file")
                    raise _Stop(line, f"more than {MAX_NODES:,} YAML values; a recipe is a short YAML file")
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    return Loader


def load_yaml(text: str, shown: str):
    """``(data, lines, keys)`` from one YAML document, bounded (see the module doc)."""
    import yaml

    loader = _loader_class()(text)
    try:
        node = loader.get_single_node()
    except _Stop as e:
        raise UsageError(f"{shown} line {e.line}: {e.message}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        what = " ".join(x for x in (e.context, e.problem) if x)
        raise UsageError(f"{shown} line {line}: not valid YAML ({what})") from None
    except yaml.YAMLError as e:  # the reader: a character YAML does not allow
        pos = getattr(e, "position", 0) or 0
        raise UsageError(
            f"{shown} line {text.count(chr(10), 0, pos) + 1}: not valid YAML ({str(e).splitlines()[0]})"
        ) from None
    finally:
        loader.dispose()
    if node is None:
        return None, {}, {}
    lines: dict = {}
    keys: dict = {}
    walker = _Walker(shown, lines, keys)
    try:
        data = walker.value(node, (), 0)
    except _Stop as e:
        raise UsageError(f"{shown} line {e.line}: {e.message}") from None
    return data, lines, keys


class _Walker:
    """Nodes to plain values, expanding aliases within :data:`MAX_VALUES`."""

    def __init__(self, shown: str, lines: dict, keys: dict):
        from yaml.constructor import SafeConstructor

        self.shown, self.lines, self.keys = shown, lines, keys
        self.left = MAX_VALUES
        self.scalars = SafeConstructor()

    def value(self, node, path: tuple, depth: int):
        import yaml

        line = node.start_mark.line + 1
        self.left -= 1
        if self.left < 0:
            raise _Stop(
                line,
                f"the YAML expands to more than {MAX_VALUES:,} values (aliases repeating aliases); "
                "a recipe is a short YAML file",
            )
        if depth > MAX_DEPTH:
            raise _Stop(line, f"nested more than {MAX_DEPTH} levels deep (through aliases)")
        self.lines.setdefault(path, line)
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, line)
        if node.tag not in ("tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"):
            shown = node.tag.replace("tag:yaml.org,2002:", "!!")
            raise _Stop(
                line, f"a YAML {shown} value; a recipe holds only lists, mappings, text, numbers, true/false and null"
            )
        if isinstance(node, yaml.SequenceNode):
            return [self.value(v, (*path, i), depth + 1) for i, v in enumerate(node.value)]
        out: dict = {}
        for k, v in node.value:
            kline = k.start_mark.line + 1
            if not isinstance(k, yaml.ScalarNode) or k.tag.endswith(":merge"):
                raise _Stop(kline, "a key must be a plain word (no lists, mappings or << merges as keys)")
            key = k.value
            if key in out:
                raise _Stop(kline, f"{key!r} is given twice in this mapping")
            self.keys.setdefault((*path, key), kline)
            out[key] = self.value(v, (*path, key), depth + 1)
        return out

    def scalar(self, node, line: int):
        kind = node.tag.rsplit(":", 1)[-1] if node.tag.startswith("tag:yaml.org,2002:") else None
        if kind not in _SIMPLE_TAGS:
            shown = node.tag.replace("tag:yaml.org,2002:", "!!")
            raise _Stop(
                line,
                f"{node.value[:40]!r} reads as a YAML {shown} value; a recipe holds only text, numbers, "
                "true/false and null (quote it to make it text)",
            )
        if kind == "str":
            return node.value
        if kind == "int" and len(node.value) > 30:
            raise _Stop(line, f"the number {node.value[:40]}... is too long")
        value = getattr(self.scalars, f"construct_yaml_{kind}")(node)
        if kind == "float" and not math.isfinite(value):
            raise _Stop(line, f"{node.value!r} is not a finite number")
        return value


# -- writing -------------------------------------------------------------------------------------
def dump_yaml(data) -> str:
    """``data`` as block-style YAML, keys in their order (what locks and cards hold)."""
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def unpinned(data: dict) -> dict:
    """The recipe as provenance records it: without ``output`` (where it was written does not
    change what it is) and without pins (recorded beside it)."""
    out = {k: v for k, v in data.items() if k != "output"}
    out["sources"] = [{k: v for k, v in s.items() if k != "pin"} for s in data["sources"]]
    return out


def pinned(data: dict, pins: list) -> dict:
    """The recipe with ``pins[i]`` (None: none) on source ``i``: a lock."""
    out = dict(data)
    out["sources"] = [{**s, **({"pin": p} if p is not None else {})} for s, p in zip(data["sources"], pins)]
    return out


def pins_of(recipe: dict, sources: list[dict]) -> list:
    """The pins a build's provenance records (its sources, each with the recipe source it belongs
    to), one per recipe source, as :func:`pinned` takes them; a ``ValueError`` when they do not fit."""
    pins: list = [None] * len(recipe.get("sources") or [])
    for src in sources:
        i = src.get("source")
        if not isinstance(i, int) or not 0 <= i < len(pins) or "sha256" not in src:
            raise ValueError("which recipe source each resolved file belongs to")
        if "prompts" in recipe["sources"][i]:
            pins[i] = [*(pins[i] or []), {"path": src.get("path", src.get("name")), "sha256": src["sha256"]}]
        else:
            hub = src.get("hub") or {}
            pins[i] = {"sha256": src["sha256"], **({"commit": hub["commit"], "file": hub["file"]} if hub else {})}
    return pins


#: the first line of every lock mptkit writes (and the sign that --lock may replace the file)
LOCK_HEADER = "# mptkit lock: this recipe with every source pinned (mptkit build --lock)"


def lock_text(lock: dict, recipe_path: str) -> str:
    return (
        f"{LOCK_HEADER}\n# from {os.path.basename(recipe_path)}; building from it gives the same bytes\n"
        + dump_yaml(lock)
    )


def lock_path(recipe_path: str) -> str:
    """``recipe.yaml`` -> ``recipe.lock.yaml`` (``.yml`` likewise; any other name gets ``.lock.yaml``)."""
    base, ext = os.path.splitext(recipe_path)
    return base + ".lock" + (ext if ext.lower() in (".yaml", ".yml") else ext + ".yaml")
