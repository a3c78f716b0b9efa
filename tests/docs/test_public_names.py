"""The docs use only the public Python API, and a documented name cannot disappear unnoticed.

Every ``mptkit.x``/``mptkit.serve.x``/``mptkit.hub.x``/``mptkit.formats.x`` name that README.md or a
docs page mentions (in prose, tables or code, and every name a Python block imports) must resolve
through the modules' ``__all__``; no page names an internal (``_``) module. The README's Changelog
is checked the other way round: each old path it lists is no longer public, each new one is. The
Python API page lists the whole public surface.
"""

import pytest

import mptkit
from tests.docs.docpages import DOCS, PRIVATE, changelog_rows, name_problem, pages, python_names, without_changelog


def documented_name_problems(page) -> list[str]:
    python_blocks = [text for _, lang, text in page.blocks() if lang == "python"]
    text = without_changelog(page)
    found = [p for n in python_names(text, python_blocks) if (p := name_problem(n))]
    found += [f"{m}: an internal module" for m in PRIVATE.findall(page.text)]
    return found


def test_the_checker_knows_public_from_not():
    assert name_problem("mptkit.derive") is None
    assert name_problem("mptkit.serve.TaskPrompts.from_bank") is None
    assert name_problem("mptkit.hub.pull") is None
    assert name_problem("mptkit.__version__") is None
    assert "not in mptkit.__all__" in name_problem("mptkit.no_such_name")
    assert "not in mptkit.formats.__all__" in name_problem("mptkit.formats.annotations")  # exists, not public
    assert "private" in name_problem("mptkit._export.save_adapter")
    assert "has no attribute" in name_problem("mptkit.derive.exact")  # a function now, not a module
    assert name_problem("mptkit.errors.MptkitError") is None and name_problem("mptkit.MptkitError") is None
    assert PRIVATE.findall("see `mptkit/formats/_atomic.py` and mptkit._io") == [
        "mptkit/formats/_atomic",
        "mptkit._io",
    ]
    assert python_names("x `mptkit.task_names` y", ["from mptkit.serve import prepend"]) == ["mptkit.serve.prepend"]


def test_a_documented_name_that_disappears_fails(monkeypatch):
    """Take ``similarity`` out of the public API: the pages that document it now fail the check."""
    assert not [p for page in pages() for p in documented_name_problems(page)]
    monkeypatch.setattr(mptkit, "__all__", [n for n in mptkit.__all__ if n != "similarity"])
    found = [p for page in pages() for p in documented_name_problems(page)]
    assert found and all(p.startswith("mptkit.similarity") for p in found), found


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.name)
def test_the_page_names_only_public_python_names(page):
    found = documented_name_problems(page)
    assert not found, f"{page.name}:\n" + "\n".join(found)


def test_the_changelog_is_true():
    rows = changelog_rows()
    assert len(rows) >= 15
    for before, now in rows:
        assert before, (before, now)
        for name in before:
            assert name_problem(name), f"the Changelog says {name} is gone, but it is still public"
        for name in now:
            assert name_problem(name) is None, name_problem(name)


def test_the_python_api_page_lists_every_public_name():
    text = (DOCS / "python-api.md").read_text(encoding="utf-8")
    missing = [f"mptkit.{n}" for n in mptkit.__all__ if f"mptkit.{n}" not in text]
    for sub in ("serve", "hub", "formats"):
        module = getattr(mptkit, sub)
        missing += [f"mptkit.{sub}.{n}" for n in module.__all__ if f"mptkit.{sub}.{n}" not in text]
    assert not missing, f"public names docs/python-api.md never mentions: {missing}"
