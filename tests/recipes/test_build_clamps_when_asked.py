"""``clamp: true`` in a recipe (or ``build --clamp``) is ``--clamp`` of the other commands: a cast to
float16 of values beyond its range is refused without it (one sentence, exit 2, nothing written) and
stores float16's largest finite value with it; ``verify`` rebuilds the clamped bank."""

from __future__ import annotations

import torch

import mptkit
from tests.recipes.recipeutil import make_bank, tensors_of, write


def test_a_cast_beyond_float16_is_refused_or_clamped(world, cli):
    pe = mptkit.load("qa").tensors["prompt_embeddings"].to_torch().clone()
    pe[0, 0] = 1e5  # finite, beyond float16's 65504
    mptkit.save(make_bank(pe, 2, 2, ["wide1", "wide2"], 4), world / "wide")
    write("recipe.yaml", "sources:\n  - bank: wide\ndtype: float16\n")
    r = cli("build", "recipe.yaml", "-o", "built")
    assert r.exit_code == 2 and "beyond float16's range" in r.output and "65504" in r.output, r.output
    assert not (world / "built").exists()
    r = cli("build", "recipe.yaml", "-o", "built", "--clamp")
    assert r.exit_code == 0, r.output
    assert tensors_of("built")["prompt_embeddings"][0, 0].item() == 65504.0
    assert cli("verify", "built").exit_code == 0
    write("clamped.yaml", "sources:\n  - bank: wide\ndtype: float16\nclamp: true\n")
    assert cli("build", "clamped.yaml", "-o", "again").exit_code == 0
    a, b = tensors_of("built"), tensors_of("again")
    assert all(torch.equal(a[k], b[k]) for k in a)
