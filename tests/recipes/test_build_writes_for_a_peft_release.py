"""``peft_version:`` in a recipe (or ``build --peft-version``) is ``--peft-version`` of the other
commands: the built folder's adapter_config.json has exactly the fields that PEFT release writes, the
build names the fields it dropped, the recipe in the provenance carries it so that ``verify``
rebuilds the same bytes, and a release mptkit cannot write for is the recipe's sentence, exit 2."""

from __future__ import annotations

import json

from mptkit import _peftfields as fields
from tests.recipes.recipeutil import write
from tests.support.banks import load_tensors


def config(folder):
    return json.loads((folder / "adapter_config.json").read_text())


RECIPE = "sources:\n  - bank: glue\n    tasks: [0-2]\n  - bank: qa\n"


def test_the_recipe_field_writes_what_that_peft_writes_and_verify_agrees(world, cli):
    write("recipe.yaml", RECIPE + "peft_version: 0.6.2\n")
    r = cli("build", "recipe.yaml", "-o", "built")
    assert r.exit_code == 0, r.output
    assert set(config(world / "built")) == set(fields.fields_of("0.6.2"))
    lacks = sorted(set(config(world / "glue")) - set(fields.fields_of("0.6.2")))
    assert lacks and f"config as PEFT 0.6.2 writes it; dropped {', '.join(lacks)}" in r.output
    v = cli("verify", "built")
    assert v.exit_code == 0, v.output
    # the tensors are the ones a build without the field gives
    assert cli("build", "recipe.yaml", "-o", "plain").exit_code == 0  # the recipe's field, again
    write("plain.yaml", RECIPE)
    assert cli("build", "plain.yaml", "-o", "current").exit_code == 0
    a, b = load_tensors(world / "built"), load_tensors(world / "current")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    assert set(config(world / "current")) == set(config(world / "glue"))


def test_the_option_sets_the_field_and_verify_rebuilds_it(world, cli):
    write("recipe.yaml", RECIPE)
    r = cli("build", "recipe.yaml", "-o", "built", "--peft-version", "0.13.2")
    assert r.exit_code == 0, r.output
    assert set(config(world / "built")) == set(fields.fields_of("0.13.2"))
    assert cli("verify", "built").exit_code == 0


def test_a_release_mptkit_cannot_write_for_is_the_recipes_sentence(world, cli):
    write("recipe.yaml", RECIPE + "peft_version: 0.5.0\n")
    r = cli("build", "recipe.yaml", "-o", "built")
    assert r.exit_code == 2 and "line 5" in r.output and "PEFT added MULTITASK_PROMPT_TUNING in 0.6.0" in r.output
    assert not (world / "built").exists()
    r = cli("build", "recipe.yaml", "-o", "built", "--peft-version", "latest")
    assert r.exit_code == 2 and "is not a PEFT release mptkit knows" in r.output
    assert not (world / "built").exists()
