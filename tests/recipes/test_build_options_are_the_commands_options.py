"""Each recipe option is the matching command's option: ``shared:`` keeping one of two differing
shared prompts is ``merge --refit`` with that bank first (then the recipe's order), ``rank:`` is
``rank`` after the merge (``auto`` too), ``dtype:`` is ``merge --dtype`` (or ``convert`` for one
source), an unnamed bank's tasks are named as merge names them; each gives the same bytes."""

from __future__ import annotations

import shlex

import pytest
import torch

import mptkit
from tests.recipes.recipeutil import make_bank, tensors_of, write


def by_hand(cli, *lines):
    for line in lines:
        r = cli(*shlex.split(line))
        assert r.exit_code == 0, (line, r.output)


def same_bank(a, b) -> None:
    ta, tb = tensors_of(a), tensors_of(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k].view(torch.uint8), tb[k].view(torch.uint8)), k
    assert mptkit.load(a).task_names == mptkit.load(b).task_names


CASES = [
    (
        "shared-keeps-the-second-bank",
        "sources:\n  - bank: glue\n    tasks: [sst2, rte]\n  - bank: diffpe\nshared: 1\n",
        ["slice glue --tasks sst2,rte -o g", "merge diffpe g --refit -o m", "slice m --tasks 2,3,0,1 -o hand"],
    ),
    ("rank-down", "sources:\n  - bank: glue\n    tasks: [0-2]\n  - bank: qa\nrank: 1\n",
     ["slice glue --tasks 0-2 -o g", "merge g qa -o m", "rank m --rank 1 -o hand"]),
    ("rank-up", "sources:\n  - bank: glue\n    tasks: [0-2]\n  - bank: qa\nrank: 6\n",
     ["slice glue --tasks 0-2 -o g", "merge g qa --rank 6 -o hand"]),
    ("rank-auto", "sources:\n  - bank: qa\n  - bank: glue\n    tasks: [cola]\nrank: {auto: true, max_error: 0.5}\n",
     ["slice glue --tasks cola -o g", "merge qa g -o m", "rank m --rank auto --max-error 0.5 -o hand"]),
    ("dtype", "sources:\n  - bank: glue\n    tasks: [stsb]\n  - bank: qa\n    tasks: [nq]\ndtype: bfloat16\n",
     ["slice glue --tasks stsb -o g", "slice qa --tasks nq -o q", "merge g q --dtype bfloat16 -o hand"]),
    ("one-source-dtype", "sources:\n  - bank: qa\ndtype: float16\n", ["convert qa --dtype float16 -o hand"]),
    ("unnamed-bank", "sources:\n  - bank: qa\n  - bank: plain.safetensors\n",
     ["merge qa plain.safetensors -o hand"]),
]  # fmt: skip


@pytest.mark.parametrize("name,recipe,steps", CASES, ids=[c[0] for c in CASES])
def test_a_recipe_option_is_the_command_option(name, recipe, steps, world, cli):
    pe = mptkit.load("qa").tensors["prompt_embeddings"].to_torch()
    bare = make_bank(pe, 2, 2, None, 7)
    mptkit.save(mptkit.PromptBank(bare.tensors, None), "plain.safetensors")  # no names, no config
    write("recipe.yaml", recipe)
    r = cli("build", "recipe.yaml", "-o", "built")
    assert r.exit_code == 0, r.output
    by_hand(cli, *steps)
    same_bank("built", "hand")


def test_unnamed_tasks_are_named_by_their_place_when_the_merge_reorders(world, cli):
    """``shared:`` puts the kept bank first for the merge; an unnamed bank's tasks still get the
    names of their place in the recipe (``task<i>``), as a merge in the recipe's order names them."""
    pe2 = mptkit.load("diffpe").tensors["prompt_embeddings"]
    cols = mptkit.load("diffpe").tensors["prefix_task_cols"]
    rows = mptkit.load("diffpe").tensors["prefix_task_rows"]
    mptkit.save(mptkit.PromptBank({"prompt_embeddings": pe2, "prefix_task_cols": cols, "prefix_task_rows": rows}),
                "plain.safetensors")  # fmt: skip
    write("recipe.yaml", "sources:\n  - bank: qa\n  - bank: plain.safetensors\nshared: 1\n")
    r = cli("build", "recipe.yaml", "-o", "built", "--plan", "--json")
    assert r.exit_code == 0, r.output
    assert cli("build", "recipe.yaml", "-o", "built").exit_code == 0
    assert mptkit.load("built").task_names == ["squad", "boolq2", "nq", "task3", "task4"]
