"""The README stays short and points into the docs; the docs site is whole; every repository path
a page mentions exists (a test or benchmark that moves takes its mention along)."""

import re

from tests.docs.docpages import DOCS, ROOT, Page, nav_files, pages

README_MAX_LINES = 300
#: a repository path in backticks or a link: `tests/...`, `benchmarks/run.py`, `schemas/...`
REPO_PATH = re.compile(r"(?<![\w/.-])((?:tests|benchmarks|examples|schemas|docs|\.ci)/[\w.*/-]*)")
#: a module run from the repository root: `python -m benchmarks.run`
MODULE_RUN = re.compile(r"python -m ((?:benchmarks|tests)(?:\.\w+)+)")


def test_the_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move what is not set-up, commands or tour to docs/"


def test_the_nav_holds_every_page_once():
    nav = nav_files()
    assert len(nav) == len(set(nav)), nav
    assert set(nav) == {p.name for p in DOCS.glob("*.md")}, "mkdocs.yml's nav and docs/*.md differ"
    assert nav[0] == "index.md"


def test_the_readme_links_every_page_and_every_link_resolves():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [t for t in targets if "://" not in t]
    assert all((ROOT / t).exists() for t in local), [t for t in local if not (ROOT / t).exists()]
    linked = {t.removeprefix("docs/") for t in local if t.startswith("docs/")}
    assert set(nav_files()) <= linked, f"pages the README never links: {set(nav_files()) - linked}"


def test_every_repository_path_a_page_mentions_exists():
    missing = []
    for page in [*pages(), Page(ROOT / "benchmarks" / "README.md")]:
        for path in REPO_PATH.findall(page.text):
            path = path.rstrip(".")
            if not any(ROOT.glob(path.rstrip("/"))):
                missing.append(f"{page.name}: {path}")
        for module in MODULE_RUN.findall(page.text):
            if not (ROOT / (module.replace(".", "/") + ".py")).is_file():
                missing.append(f"{page.name}: python -m {module}")
    assert not missing, "\n".join(missing)


def test_the_path_check_can_fail():
    assert REPO_PATH.findall("see `tests/no_such_test.py` and (benchmarks/run.py), not WORK/tests/x") == [
        "tests/no_such_test.py",
        "benchmarks/run.py",
    ]
    assert not any(ROOT.glob("tests/no_such_test.py"))
    assert MODULE_RUN.findall("`python -m benchmarks.run --quick`, python -m pytest") == ["benchmarks.run"]
