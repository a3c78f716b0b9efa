"""The Recipes page shows the committed example recipe (its blocks run with every page's, in
tests/docs/test_examples_run.py)."""

from tests.docs.docpages import DOCS, ROOT, Page


def test_the_yaml_shown_is_the_committed_recipe():
    (yaml_block,) = [text for _, lang, text in Page(DOCS / "recipes.md").blocks() if lang == "yaml"]
    assert yaml_block == (ROOT / "examples" / "recipe.yaml").read_text(encoding="utf-8")
